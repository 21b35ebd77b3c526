//! Datapath events: the records every program writes to the `OXI_EVENTS` ring buffer (drops with
//! their reason, service translations of new flows, policy verdicts of the endpoint programs,
//! optional per-step trace points), their run-time switches (`OXI_EVENT_CONFIG`),
//! the per-flow rate limiter (`OXI_EVENT_LIMIT`) and the events' own counters
//! (`OXI_EVENT_STATS`). The agent drains the ring, names what it can and serves the stream to
//! `oxilium monitor` (see docs/observability.md).
//!
//! A reason code is an index of the counter set [`Event::reason_set`] names, so a drop event and
//! the counter it bumped always agree: [`SET_LB`] is `crate::lb::reason` (`OXI_STATS`),
//! [`SET_NODEPORT`] `crate::nodeport::reason` (`OXI_NP_STATS`), [`SET_POD`]
//! `crate::sock::pod::reason` (`OXI_POD_STATS`).
use crate::lb::Addr;

/// Pin names, relative to the agent's pin folder.
pub mod names {
    pub const EVENTS: &str = "OXI_EVENTS";
    pub const CONFIG: &str = "OXI_EVENT_CONFIG";
    pub const LIMIT: &str = "OXI_EVENT_LIMIT";
    pub const STATS: &str = "OXI_EVENT_STATS";
    pub const PINNED: [&str; 4] = [EVENTS, CONFIG, LIMIT, STATS];
}

/// Default ring size in bytes (a power of two multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;
/// Flows the rate limiter remembers (LRU): the compiled size; the agent sizes the map at load
/// (`--events-max-flows`, one entry where no program writes events).
pub const MAX_LIMITED_FLOWS: u32 = 65_536;
/// Default per-flow rate (events per second) and burst when `EventConfig` leaves them 0.
pub const DEFAULT_FLOW_RATE: u32 = 10;
pub const DEFAULT_FLOW_BURST: u32 = 20;

/// Event kinds.
pub const KIND_DROP: u8 = 1;
/// A new flow of a service got its backend (frontend → backend).
pub const KIND_TRANSLATE: u8 = 2;
/// A policy verdict of an endpoint program: a new flow allowed or audited (written once, when
/// its policy conntrack entry is made), or a packet denied; with both identities, the direction
/// and the kind of map entry that decided ([`MATCH_L3_ONLY`] ...).
pub const KIND_POLICY: u8 = 3;
/// A counted step of a packet (any reason), when trace points are switched on.
pub const KIND_TRACE: u8 = 4;
/// Produced in user space (the L7 proxy), never by a program.
pub const KIND_L7: u8 = 5;

/// Which counter set a reason code indexes.
pub const SET_LB: u8 = 0;
pub const SET_NODEPORT: u8 = 1;
pub const SET_POD: u8 = 2;

/// The program that wrote an event.
pub const PROG_XDP_LB: u8 = 1;
pub const PROG_XDP_NODEPORT: u8 = 2;
pub const PROG_TC_NODEPORT_INGRESS: u8 = 3;
pub const PROG_TC_NODEPORT_EGRESS: u8 = 4;
pub const PROG_TC_POD_INGRESS: u8 = 5;
pub const PROG_TC_POD_EGRESS: u8 = 6;
pub const PROG_TC_DECAP: u8 = 7;
/// The endpoint programs on a pod's host-side veth (datapath::endpoint).
pub const PROG_TC_ENDPOINT_FROM_POD: u8 = 8;
pub const PROG_TC_ENDPOINT_TO_POD: u8 = 9;
pub const PROG_NAMES: [&str; 10] = [
    "unknown",
    "xdp_lb",
    "xdp_nodeport",
    "tc_nodeport_ingress",
    "tc_nodeport_egress",
    "tc_pod_ingress",
    "tc_pod_egress",
    "tc_decap",
    "tc_endpoint_from_pod",
    "tc_endpoint_to_pod",
];

/// Policy verdicts ([`KIND_POLICY`], [`Event::verdict`]).
pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;
pub const VERDICT_AUDIT: u8 = 3;

/// The kind of policy map entry that decided ([`KIND_POLICY`], [`Event::rule`]); the numbers
/// are Hubble's `policy_match_type` where it has one.
/// No entry: the direction is enforced and nothing allows the flow (default deny).
pub const MATCH_NONE: u32 = 0;
/// The peer's own entry, any protocol and port.
pub const MATCH_L3_ONLY: u32 = 1;
/// The peer's own entry for a protocol (and port range).
pub const MATCH_L3_L4: u32 = 2;
/// The wildcard peer's entry for a protocol (and port range).
pub const MATCH_L4_ONLY: u32 = 3;
/// The wildcard peer's entry, any protocol and port (also an unenforced direction).
pub const MATCH_ALL: u32 = 4;
/// Traffic from the local host into a pod, allowed by allow-localhost (no entry looked up).
pub const MATCH_HOST: u32 = 5;
pub const MATCH_NAMES: [&str; 6] = ["none", "L3-Only", "L3-L4", "L4-Only", "all", "localhost"];

/// Bits of [`EventConfig::flags`]. All zero (the map as created) means: drops, translations and
/// policy verdicts on, trace points off, the default rate.
pub const CFG_NO_DROPS: u32 = 1;
pub const CFG_NO_TRANSLATIONS: u32 = 2;
pub const CFG_TRACE: u32 = 4;
pub const CFG_NO_POLICY: u32 = 8;

/// `OXI_EVENT_CONFIG[0]`: switched by the agent at run time, read by every program per event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventConfig {
    pub flags: u32,
    /// Events per second per flow (0: [`DEFAULT_FLOW_RATE`]).
    pub flow_rate: u32,
    /// Events a flow may write at once before the rate applies (0: [`DEFAULT_FLOW_BURST`]).
    pub flow_burst: u32,
    pub _pad: u32,
}

/// Indexes of `OXI_EVENT_STATS` (per-CPU u64).
pub mod stat {
    /// Records written to the ring.
    pub const WRITTEN: u32 = 0;
    /// Records lost because the ring was full (the agent did not drain fast enough).
    pub const RING_FULL: u32 = 1;
    /// Records not written because their flow was over its rate.
    pub const RATE_LIMITED: u32 = 2;
    pub const COUNT: u32 = 3;
    pub const NAMES: [&str; COUNT as usize] = ["written", "ring_full", "rate_limited"];
}

/// One record of the ring (104 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC).
    pub time_ns: u64,
    pub kind: u8,
    pub prog: u8,
    pub reason_set: u8,
    pub proto: u8,
    /// Index of the counter set `reason_set` (drops, trace points); translations: 0.
    pub reason: u32,
    /// The interface the program runs on.
    pub ifindex: u32,
    /// Packet length in bytes.
    pub bytes: u32,
    /// Translations: the service id and backend id chosen (0 when unknown).
    pub service_id: u32,
    pub backend_id: u32,
    /// The packet's tuple as it arrived (ports in network byte order; 0 without ports).
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    /// Translations: the backend's port (network byte order).
    pub backend_port: u16,
    /// Policy events: one of the `VERDICT_*`.
    pub verdict: u8,
    pub tcp_flags: u8,
    /// Translations: the backend's address.
    pub backend: Addr,
    /// Policy events: source and destination identities, the kind of entry that decided
    /// (`MATCH_*`), the direction checked (abi::policy::DIR_*) and the deciding entry's action
    /// (abi::policy::ACTION_*; 0 when none).
    pub src_identity: u32,
    pub dst_identity: u32,
    pub rule: u32,
    pub direction: u8,
    pub action: u8,
    pub _pad: [u8; 2],
}

/// Value of `OXI_EVENT_LIMIT` (keyed by the flow hash): the GCRA's theoretical arrival time of
/// the flow's next event, in ns.
pub type LimitValue = u64;

#[cfg(feature = "user")]
crate::pod!(EventConfig, Event);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(size_of::<Event>(), 104);
        assert_eq!(size_of::<EventConfig>(), 16);
        assert_eq!(DEFAULT_RING_BYTES % 4096, 0);
    }
}
