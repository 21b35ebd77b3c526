//! NodePort / LoadBalancer / externalIPs from outside the cluster: the maps of the tc programs on
//! the node's external devices (`oxilium_nodeport_ingress` / `oxilium_nodeport_egress`).
//!
//! Those programs share the edge LB's maps ([`crate::lb`]): frontends are looked up in
//! `OXI_SERVICES` with [`crate::lb::SCOPE_EXTERNAL`], backends are chosen through `OXI_TABLES` and
//! pinned in `OXI_CONNTRACK`, and every reply translation (SNAT replies from remote backends as
//! well as DNAT replies from local backends) is an `OXI_SNAT` entry keyed by the reply's flow.
//! The maps here add what only a Kubernetes node knows:
//!
//! - `OXI_NP_ENDPOINTS`: the pods of this node (local backends are DNAT'ed and delivered straight
//!   to their veth, keeping the client's address; any other backend is remote and gets SNAT);
//! - `OXI_NP_SOURCE_RANGES`: loadBalancerSourceRanges, an LPM trie over (service id, client);
//! - `OXI_NP_STATS`: the NodePort programs' own counters.
use crate::lb::Addr;

pub const MAX_ENDPOINTS: u32 = 65_536;
pub const MAX_SOURCE_RANGES: u32 = 65_536;

/// Pin names, relative to the agent's pin folder.
pub mod names {
    pub const ENDPOINTS: &str = "OXI_NP_ENDPOINTS";
    pub const SOURCE_RANGES: &str = "OXI_NP_SOURCE_RANGES";
    pub const STATS: &str = "OXI_NP_STATS";
    /// Every pinned NodePort map (the shared LB maps are in `crate::lb::names::PINNED`).
    pub const PINNED: [&str; 3] = [ENDPOINTS, SOURCE_RANGES, STATS];
}

/// A pod on this node: where a packet DNAT'ed to it is redirected (the host side of its veth)
/// and the Ethernet addresses it is sent with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// ifindex of the host-side veth (in the node's namespace).
    pub ifindex: u32,
    pub flags: u32,
    /// The pod's own MAC (destination of delivered frames).
    pub mac: [u8; 6],
    /// The host-side veth's MAC (source of delivered frames).
    pub node_mac: [u8; 6],
}

/// The data of an `OXI_NP_SOURCE_RANGES` key (after the LPM prefix length): the service id in
/// network byte order (so the id is the first 32 bits of every prefix), then the client address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RangeData {
    pub service_id_be: u32,
    pub addr: Addr,
}

/// Bits of a range prefix that cover the service id.
pub const RANGE_ID_BITS: u32 = 32;

/// Value of a source-range entry. A service with ranges has one entry of [`RANGE_DENY`] with
/// prefix length [`RANGE_ID_BITS`] (every client of that service) and one [`RANGE_ALLOW`] entry
/// per range: the longest match decides, and a service without entries is open to everyone.
pub const RANGE_DENY: u8 = 0;
pub const RANGE_ALLOW: u8 = 1;

/// Prefix length of a range entry for a client prefix of `bits` bits of a 16-byte address
/// (IPv4 prefixes count from the IPv4-mapped form: add 96).
pub const fn range_prefix_len(addr_bits: u32) -> u32 {
    RANGE_ID_BITS + addr_bits
}

/// Indexes of `OXI_NP_STATS` (per-CPU [`crate::lb::Counter`]s). The shared reasons of
/// `OXI_STATS` (fwd_snat, rev_snat, no_backend, fib_pass, ...) are counted as well.
pub mod reason {
    /// New or established flow DNAT'ed to a pod of this node and redirected to its veth.
    pub const LOCAL: u32 = 0;
    /// DNAT + SNAT to a backend on another node.
    pub const REMOTE: u32 = 1;
    /// Reply of a local backend restored to the service address (egress).
    pub const REV_DNAT: u32 = 2;
    /// Reply of a remote backend restored to service → client (ingress).
    pub const REV_SNAT: u32 = 3;
    /// Client outside the service's loadBalancerSourceRanges (dropped).
    pub const SOURCE_RANGE: u32 = 4;
    /// Backend of another address family than the packet (dropped).
    pub const FAMILY: u32 = 5;
    /// A checksum / store helper failed (dropped).
    pub const ERROR: u32 = 6;
    /// DSR: encapsulated towards a backend on another node (which answers the client itself).
    pub const DSR: u32 = 7;
    /// DSR, receiving node: a tunnelled packet for a pod of this node, decapsulated, DNAT'ed to
    /// the port the outer header carries and delivered to the pod.
    pub const DSR_IN: u32 = 8;
    /// Sent on by the XDP acceleration (a remote backend's flow or its reply), besides its
    /// `remote` / `dsr` / `rev_snat` count.
    pub const XDP: u32 = 9;
    pub const COUNT: u32 = 10;
    pub const NAMES: [&str; COUNT as usize] = [
        "local",
        "remote",
        "rev_dnat",
        "rev_snat",
        "source_range",
        "family",
        "error",
        "dsr",
        "dsr_in",
        "xdp",
    ];
}

#[cfg(feature = "user")]
crate::pod!(Endpoint, RangeData);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(size_of::<Endpoint>(), 20);
        assert_eq!(size_of::<RangeData>(), 20);
        assert_eq!(range_prefix_len(128), 160);
    }
}
