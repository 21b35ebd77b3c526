//! The L7 redirect between the endpoint programs and the agent's proxies: packet marks and the
//! routing table that delivers redirected packets locally (see docs/l7.md).
//!
//! A redirected packet gets [`MARK_TO_PROXY`] from the endpoint program (and, for a connection's
//! first packet, the proxy's listener as its socket, `bpf_sk_assign`). The node has a rule
//! `fwmark MARK_TO_PROXY/MARK_MASK lookup ROUTE_TABLE` and a route `local default dev lo` in that
//! table, so the stack delivers the packet to the socket instead of forwarding it.
//!
//! The proxy's own connections to the real destination carry a mark too (`SO_MARK`): the
//! destination's ingress policy sees it and does not redirect them again.

/// The bits of `skb->mark` the redirect uses.
pub const MARK_MASK: u32 = 0x0000_0f00;
/// Set by the endpoint programs on packets handed to a proxy.
pub const MARK_TO_PROXY: u32 = 0x0000_0a00;
/// The upstream connection of an ingress proxy: the destination's ingress policy was enforced by
/// the proxy; the program lets it through (and opens its policy conntrack entry for the replies).
pub const MARK_FROM_INGRESS_PROXY: u32 = 0x0000_0b00;
/// The upstream connection of an egress proxy; the client's identity is in the upper 16 bits
/// ([`upstream_egress_mark`]): the destination's ingress policy is checked for that identity.
pub const MARK_FROM_EGRESS_PROXY: u32 = 0x0000_0c00;

/// The `SO_MARK` of an egress proxy's upstream connection for a client of `identity` (None when
/// the identity does not fit in 16 bits: such a client is not a local pod).
pub const fn upstream_egress_mark(identity: u32) -> Option<u32> {
    if identity > 0xffff {
        None
    } else {
        Some(identity << 16 | MARK_FROM_EGRESS_PROXY)
    }
}

/// The identity carried by an egress proxy's upstream mark.
pub const fn mark_identity(mark: u32) -> u32 {
    mark >> 16
}

/// A packet the to-pod program of a pod's host-side veth (tc egress, where no socket can be
/// assigned) sent back into the node through the same veth's ingress, to be redirected to a
/// proxy there (datapath::stack_redirect). Never seen on a packet from a pod: a packet crossing network
/// namespaces loses its mark.
pub const MARK_BOUNCED: u32 = 0x0000_0e00;

/// `SO_MARK` of the proxies' listeners (setting a mark needs CAP_NET_ADMIN): the endpoint
/// programs hand flows only to a listener carrying it, never to another process's socket that
/// happens to hold the port.
pub const MARK_LISTENER: u32 = 0x0000_0d00;

/// The routing table holding `local default dev lo` for marked packets.
pub const ROUTE_TABLE: u32 = 2005;
/// The priority of the `fwmark` rule (before the main table's 32766).
pub const RULE_PRIORITY: u32 = 9;

/// Where the proxies listen: the loopback address (IPv4, network byte order), never reachable
/// from pods directly; the endpoint programs look the listener up there.
pub const LISTEN_V4: [u8; 4] = [127, 0, 0, 1];
/// Where the proxies listen for IPv6 flows: `::1` (network byte order).
pub const LISTEN_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_distinct_and_carry_the_identity() {
        let marks = [
            MARK_TO_PROXY,
            MARK_FROM_INGRESS_PROXY,
            MARK_FROM_EGRESS_PROXY,
            MARK_LISTENER,
            MARK_BOUNCED,
        ];
        for (i, a) in marks.iter().enumerate() {
            assert_eq!(a & MARK_MASK, *a);
            assert!(marks[i + 1..].iter().all(|b| b != a));
        }
        let m = upstream_egress_mark(65_535).unwrap();
        assert_eq!(m & MARK_MASK, MARK_FROM_EGRESS_PROXY);
        assert_eq!(mark_identity(m), 65_535);
        assert_eq!(upstream_egress_mark(1 << 24), None);
        assert_ne!(MARK_TO_PROXY, MARK_FROM_INGRESS_PROXY);
        assert_eq!(MARK_TO_PROXY & MARK_MASK, MARK_TO_PROXY);
    }
}
