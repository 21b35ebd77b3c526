//! Service translation maps: services, backends, selection tables, conntrack, SNAT and counters.

/// A 16-byte address in network byte order (IPv4 as `::ffff:a.b.c.d`).
pub type Addr = [u8; 16];

/// Pin names of the maps, relative to the agent's pin folder.
pub mod names {
    pub const SERVICES: &str = "OXI_SERVICES";
    /// Service id → frontend and service: the established path's view of `OXI_SERVICES`.
    pub const SERVICE_IDS: &str = "OXI_SERVICE_IDS";
    pub const BACKENDS: &str = "OXI_BACKENDS";
    pub const TABLES: &str = "OXI_TABLES";
    pub const CONNTRACK: &str = "OXI_CONNTRACK";
    pub const SNAT: &str = "OXI_SNAT";
    pub const CONFIG: &str = "OXI_CONFIG";
    pub const STATS: &str = "OXI_STATS";
    pub const SERVICE_STATS: &str = "OXI_SERVICE_STATS";
    pub const BACKEND_STATS: &str = "OXI_BACKEND_STATS";
    /// Per-CPU working space of the programs (not pinned: it holds nothing between packets).
    pub const SCRATCH: &str = "OXI_SCRATCH";
    /// DSR backends: the outer source addresses `oxilium_decap` accepts tunnels from (not
    /// pinned: each agent start fills its own from `--tunnel-source` before attaching).
    pub const TUNNEL_SOURCES: &str = "OXI_TUNNEL_SOURCES";
    /// Every pinned map.
    pub const PINNED: [&str; 10] = [
        SERVICES,
        SERVICE_IDS,
        BACKENDS,
        TABLES,
        CONNTRACK,
        SNAT,
        CONFIG,
        STATS,
        SERVICE_STATS,
        BACKEND_STATS,
    ];
}

pub const MAX_SERVICES: u32 = 65_536;
pub const MAX_BACKENDS: u32 = 262_144;
pub const MAX_CONNTRACK: u32 = 262_144;
/// Largest selection table (Maglev M); also the bound the programs apply to a slot index.
pub const MAX_TABLE_SIZE: u32 = 131_071;
/// Entries of `OXI_TUNNEL_SOURCES` (LB addresses a DSR backend accepts tunnels from).
pub const MAX_TUNNEL_SOURCES: u32 = 256;
/// `BPF_F_INNER_MAP`: lets the inner selection tables have per-service sizes.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Backend selection, per service.
pub const ALG_MAGLEV: u8 = 1;
pub const ALG_RANDOM: u8 = 2;

/// Forwarding mode, per service.
pub const MODE_SNAT: u8 = 1;
pub const MODE_DSR: u8 = 2;

/// Scope of a frontend: who may use it. The edge LB only has external frontends.
pub const SCOPE_EXTERNAL: u8 = 0;

/// Backend states.
pub const BACKEND_ACTIVE: u8 = 0;
pub const BACKEND_TERMINATING: u8 = 1;
pub const BACKEND_QUARANTINED: u8 = 2;
/// Left its service (TCP): in no table, its established flows keep it until they end.
pub const BACKEND_DRAINING: u8 = 3;

/// Address family of a backend.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// (VIP, port, protocol, scope) → [`ServiceValue`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServiceKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index into `OXI_TABLES` and the per-service counters; never 0.
    pub id: u32,
    /// Number of slots in the service's selection table; 0 = no usable backend (packets dropped).
    pub table_size: u32,
    pub algorithm: u8,
    pub mode: u8,
    pub flags: u16,
    /// Idle time after which a conntrack entry no longer pins its backend, in seconds.
    pub ct_timeout_s: u32,
}

/// Service id → the service's frontend and entry (`OXI_SERVICE_IDS`, an array indexed by id): a
/// copy of `OXI_SERVICES` the agent keeps in step with it (written after the service entry,
/// cleared before it is deleted). The XDP program finds an established flow's service here from
/// its conntrack entry's id instead of hashing the frontend; the frontend must match the flow's
/// destination, so an id given to another frontend is never taken for the flow's service. A free
/// slot has `value.id` 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceSlot {
    pub key: ServiceKey,
    pub value: ServiceValue,
}

/// Backend id → backend (`OXI_BACKENDS`, an array indexed by id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub state: u8,
    /// The service this backend belongs to (lets a restarted agent rebuild its id allocation);
    /// 0 in a free slot of `OXI_BACKENDS`.
    pub service_id: u32,
}

/// A flow as seen in one direction. `dir` tells conntrack directions apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Conntrack entry of a client → VIP flow. 40 bytes: with its 40-byte key and the kernel's
/// 48-byte LRU hash element header, an element is 128 bytes, two cache lines (docs/edge-lb.md,
/// "Per-packet cost"); a field more costs a third line on every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    pub backend_id: u32,
    pub service_id: u32,
    /// The conntrack clock (`datapath::lb::clock`) at the latest packet.
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// SNAT mode: the LB-side source port chosen for this flow (network byte order), else 0.
    pub snat_port: u16,
    /// Conntrack state (`crate::ct`: state and FIN bits).
    pub flags: u16,
    /// The service's established / replied timeout override when the flow was last seen (0: the
    /// global one), so that a SNAT port's owner can be judged without its service.
    pub svc_timeout_s: u32,
}

/// SNAT reverse entry, keyed by the reply's [`FlowKey`] (backend → LB address): how to restore the
/// original client ↔ VIP tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SnatEntry {
    pub client: Addr,
    pub vip: Addr,
    /// Network byte order.
    pub client_port: u16,
    /// Network byte order.
    pub vip_port: u16,
    pub service_id: u32,
    pub backend_id: u32,
    /// The flow's conntrack state, mirrored from its `CtEntry` (`crate::ct`).
    pub flags: u16,
    pub _pad: u16,
    pub last_seen_ns: u64,
}

/// Slots of the XDP program's next-hop cache (`OXI_NEXTHOP`, not pinned): backend id modulo this.
pub const NEXTHOP_SLOTS: u32 = 65_536;

/// A resolved next hop towards a backend, cached by the XDP program so that a packet to a backend
/// whose next hop was resolved less than `NEXTHOP_TTL_NS` ago skips `bpf_fib_lookup`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// The destination the entry was resolved for (slots are shared by backend ids).
    pub addr: Addr,
    /// The conntrack clock (datapath::lb::clock) at the lookup; 0: empty.
    pub checked_ns: u64,
    /// The interface the looked-up packet came in on (an input of the lookup).
    pub ingress: u32,
    /// Egress interface.
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// The largest packet (IP total length) the lookup found within the route's MTU; 0: none
    /// checked (a packet that needs the check then looks the route up).
    pub ok_len: u16,
    pub _pad: u16,
}

/// How long a cached next hop is used before it is looked up again: the longest a route, MTU or
/// neighbour change goes unnoticed by established flows.
pub const NEXTHOP_TTL_NS: u64 = 100_000_000;

/// Global settings of the LB datapath (array of one, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbConfig {
    /// Source address used for SNAT and as the outer source of DSR tunnels, per family.
    pub snat_v4: Addr,
    pub snat_v6: Addr,
    /// SNAT source port range, host byte order, inclusive.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// 1 once the agent has written this entry.
    pub ready: u32,
    /// Conntrack idle timeouts per protocol and state (0: the built-in default).
    pub timeouts: crate::ct::Timeouts,
}

/// Packet and byte counter; per-CPU in the maps, summed by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Indexes of `OXI_STATS`: why a packet went where it went.
pub mod reason {
    /// Not for a service (passed untouched).
    pub const PASS: u32 = 0;
    /// Translated to a backend and forwarded (SNAT, client → backend).
    pub const FWD_SNAT: u32 = 1;
    /// Encapsulated to a backend (DSR).
    pub const FWD_DSR: u32 = 2;
    /// Reply reverse-translated (SNAT, backend → client).
    pub const REV_SNAT: u32 = 3;
    /// Headers cut short or malformed.
    pub const MALFORMED: u32 = 4;
    /// IP fragment addressed to a VIP (dropped: no ports to look up).
    pub const FRAGMENT: u32 = 5;
    /// Service has no usable backend (dropped).
    pub const NO_BACKEND: u32 = 6;
    /// No free SNAT port for the flow (dropped).
    pub const SNAT_EXHAUSTED: u32 = 7;
    /// The rewritten packet went to the kernel stack (no neighbour yet for the next hop).
    pub const FIB_PASS: u32 = 8;
    /// ICMP error passed untouched (it quotes no translated flow; see docs/edge-lb.md).
    pub const ICMP_ERROR: u32 = 9;
    /// Packet would exceed the egress MTU after encapsulation and cannot be answered with an ICMP
    /// error (IPv4 without DF; dropped).
    pub const TOO_BIG: u32 = 10;
    /// DSR backend side: tunnel packet decapsulated.
    pub const DECAP: u32 = 11;
    /// No room to grow the packet, or another helper failed (dropped).
    pub const ERROR: u32 = 12;
    /// tc: a packet translated in place while only its headers were linear (a GSO / GRO skb
    /// whose payload stays in page fragments); counted besides its own reason.
    pub const NONLINEAR: u32 = 13;
    /// DSR backend side: a tunnel packet from a source that is not a configured LB
    /// (`--tunnel-source`) (dropped).
    pub const TUNNEL_REFUSED: u32 = 14;
    /// Event, not a disposition: a conntrack entry was created (a new flow; compare with the
    /// map's occupancy to see evictions and expiries).
    pub const CT_NEW: u32 = 15;
    /// Event: a SNAT port of a closed or expired flow was given to a new flow.
    pub const SNAT_REUSE: u32 = 16;
    /// An ICMP / ICMPv6 error quoting a translated flow, reverse-translated and sent to the host
    /// that sent the quoted packet (see docs/edge-lb.md, "ICMP errors").
    pub const ICMP_XLATE: u32 = 17;
    /// A packet too big for the egress MTU once encapsulated (DSR), answered with ICMP
    /// "fragmentation needed" / ICMPv6 "packet too big" carrying the usable MTU (XDP_TX).
    pub const ICMP_TOO_BIG: u32 = 18;
    /// tc: a translated packet whose next hop had no resolved neighbour, handed to the egress
    /// device's neighbour output (bpf_redirect_neigh), which resolves it: not sent up the stack.
    pub const NEIGH_REDIRECT: u32 = 19;
    pub const COUNT: u32 = 20;
    pub const NAMES: [&str; COUNT as usize] = [
        "pass",
        "fwd_snat",
        "fwd_dsr",
        "rev_snat",
        "malformed",
        "fragment",
        "no_backend",
        "snat_exhausted",
        "fib_pass",
        "icmp_error",
        "too_big",
        "decap",
        "error",
        "nonlinear",
        "tunnel_refused",
        "ct_new",
        "snat_reuse",
        "icmp_translated",
        "icmp_too_big_sent",
        "neigh_redirect",
    ];
}

#[cfg(feature = "user")]
crate::pod!(
    ServiceKey,
    ServiceValue,
    ServiceSlot,
    Backend,
    FlowKey,
    CtEntry,
    SnatEntry,
    LbConfig,
    Counter,
    NextHop
);

/// Maps an IPv4 address (network byte order octets) to the 16-byte form.
pub const fn v4_mapped(o: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
    ]
}

/// True when the 16-byte address is an IPv4-mapped address.
pub const fn is_v4_mapped(a: &Addr) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

/// The flow hash the XDP program uses to pick a Maglev slot (and the tests to predict it): a 32-bit
/// mix of the 5-tuple (murmur3 finalizer over folded words), stable across LB boxes.
#[inline(always)]
pub fn flow_hash(k: &FlowKey, seed: u32) -> u32 {
    let mut h: u32 = seed ^ 0x9e37_79b9;
    let mut i = 0;
    while i < 16 {
        let ws = u32::from_ne_bytes([k.src[i], k.src[i + 1], k.src[i + 2], k.src[i + 3]]);
        let wd = u32::from_ne_bytes([k.dst[i], k.dst[i + 1], k.dst[i + 2], k.dst[i + 3]]);
        h = mix(h ^ ws ^ wd.rotate_left(16));
        i += 4;
    }
    h = mix(h ^ (((k.sport as u32) << 16) | k.dport as u32));
    mix(h ^ k.proto as u32)
}

/// The murmur3 32-bit finalizer: a bijective mix of all bits.
#[inline(always)]
pub const fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(size_of::<ServiceSlot>(), 36);
        assert_eq!(size_of::<Backend>(), 24);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<CtEntry>(), 40);
        assert_eq!(size_of::<SnatEntry>(), 56);
        assert_eq!(size_of::<LbConfig>(), 64);
        assert_eq!(size_of::<NextHop>(), 48);
    }

    #[test]
    fn v4_mapping_round_trips() {
        let a = v4_mapped([10, 0, 0, 1]);
        assert!(is_v4_mapped(&a));
        assert_eq!(&a[12..], &[10, 0, 0, 1]);
        assert!(!is_v4_mapped(&[0u8; 16]));
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let k = |src, dst, sport, dport, proto| FlowKey {
            src: v4_mapped(src),
            dst: v4_mapped(dst),
            sport,
            dport,
            proto,
            _pad: [0; 3],
        };
        let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let h = flow_hash(&k(a, b, 1000, 80, 6), 0);
        assert_ne!(h, flow_hash(&k(b, a, 1000, 80, 6), 0));
        assert_ne!(h, flow_hash(&k(a, b, 1001, 80, 6), 0));
        assert_ne!(h, flow_hash(&k(a, b, 1000, 81, 6), 0));
        assert_ne!(h, flow_hash(&k(a, b, 1000, 80, 17), 0));
        assert_ne!(h, flow_hash(&k(a, b, 1000, 80, 6), 1));
    }
}
