//! Conntrack state and timeouts: the pure per-packet decisions of the programs (which state a flow
//! is in after a packet, how long it may stay idle in that state, when the SNAT port of a flow may
//! be given to another), compiled into the eBPF programs and unit-tested here. The state lives in
//! `CtEntry::flags` (the authority) and is mirrored into `SnatEntry::flags` so that a reply only
//! looks up the conntrack entry when the state changes. See docs/edge-lb.md, "Conntrack".

/// Low bits of the flags: the state.
pub const STATE_MASK: u16 = 0x0f;
/// First packet seen, no reply yet (TCP: SYN sent; UDP: unreplied).
pub const NEW: u16 = 0;
/// A reply was seen.
pub const ESTABLISHED: u16 = 1;
/// TCP: a FIN was seen in one direction (half-closed).
pub const FIN: u16 = 2;
/// TCP: a RST was seen, or a FIN in both directions.
pub const CLOSED: u16 = 3;
/// The client sent a FIN.
pub const FIN_FWD: u16 = 1 << 8;
/// The backend sent a FIN.
pub const FIN_REV: u16 = 1 << 9;
/// A RST closed the flow: the backend's socket is gone, its SNAT port free at once.
pub const RST: u16 = 1 << 10;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const PROTO_TCP: u8 = 6;
const NS: u64 = 1_000_000_000;

/// The SNAT port of a closed flow is kept this long after its last packet, then it may be taken
/// over by a new flow: longer than TCP's minimum retransmission timeout (200 ms), so the last
/// ACK or a FIN retransmitted once still reaches the old flow's backend socket.
pub const CLOSED_REUSE_NS: u64 = NS / 4;

/// Idle timeouts per protocol and state, in seconds; 0 means the built-in default
/// ([`DEFAULT_TIMEOUTS`]), so a zeroed config is a valid one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Timeouts {
    /// TCP, SYN seen, no reply yet.
    pub tcp_syn_s: u32,
    /// TCP, reply seen (a service's `conntrack_timeout` overrides it).
    pub tcp_established_s: u32,
    /// TCP, FIN seen in one direction.
    pub tcp_fin_s: u32,
    /// TCP, RST seen or FIN in both directions.
    pub tcp_close_s: u32,
    /// UDP, no reply yet.
    pub udp_s: u32,
    /// UDP, reply seen (a service's `conntrack_timeout` overrides it).
    pub udp_replied_s: u32,
}

/// nf_conntrack's defaults where kube-proxy leaves them, kube-proxy's where it sets them (TCP
/// established 24 h); docs/edge-lb.md gives the reasons.
pub const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    tcp_syn_s: 60,
    tcp_established_s: 86_400,
    tcp_fin_s: 120,
    tcp_close_s: 10,
    udp_s: 30,
    udp_replied_s: 120,
};

#[inline(always)]
pub const fn state(flags: u16) -> u16 {
    flags & STATE_MASK
}

/// The flags after a packet of the flow: `reply` for backend → client, `tcp` the TCP flags
/// (ignored for other protocols).
#[inline(always)]
pub const fn next(flags: u16, proto: u8, tcp: u8, reply: bool) -> u16 {
    let st = state(flags);
    if proto != PROTO_TCP {
        return if reply && st == NEW {
            (flags & !STATE_MASK) | ESTABLISHED
        } else {
            flags
        };
    }
    if restarts(flags, proto, tcp) && !reply {
        return NEW;
    }
    let mut fins = flags & (FIN_FWD | FIN_REV | RST);
    if tcp & TCP_FIN != 0 {
        fins |= if reply { FIN_REV } else { FIN_FWD };
    }
    if tcp & TCP_RST != 0 {
        fins |= RST;
    }
    let st = if fins & RST != 0 || st == CLOSED || fins & (FIN_FWD | FIN_REV) == FIN_FWD | FIN_REV {
        CLOSED
    } else if fins != 0 {
        FIN
    } else if reply && st == NEW {
        ESTABLISHED
    } else {
        st
    };
    fins | st
}

/// A client's SYN (without ACK) on a closing or closed TCP flow: the client reuses its port for
/// a new connection, which is treated as a new flow (new selection, new SNAT port check).
#[inline(always)]
pub const fn restarts(flags: u16, proto: u8, tcp: u8) -> bool {
    let st = state(flags);
    proto == PROTO_TCP && tcp & (TCP_SYN | TCP_ACK) == TCP_SYN && (st == FIN || st == CLOSED)
}

#[inline(always)]
const fn or_default(v: u32, d: u32) -> u32 {
    if v == 0 { d } else { v }
}

/// The idle timeout of a flow in its state, in seconds. `t` is the configured set (`None`: the
/// defaults); `svc_s`, when not 0, overrides the established (TCP) / replied (UDP) timeout.
#[inline(always)]
pub const fn timeout_s(flags: u16, proto: u8, t: Option<&Timeouts>, svc_s: u32) -> u32 {
    let d = &DEFAULT_TIMEOUTS;
    let z = Timeouts {
        tcp_syn_s: 0,
        tcp_established_s: 0,
        tcp_fin_s: 0,
        tcp_close_s: 0,
        udp_s: 0,
        udp_replied_s: 0,
    };
    let t = match t {
        Some(t) => t,
        None => &z,
    };
    let st = state(flags);
    if proto == PROTO_TCP {
        match st {
            NEW => or_default(t.tcp_syn_s, d.tcp_syn_s),
            ESTABLISHED => or_default(svc_s, or_default(t.tcp_established_s, d.tcp_established_s)),
            FIN => or_default(t.tcp_fin_s, d.tcp_fin_s),
            _ => or_default(t.tcp_close_s, d.tcp_close_s),
        }
    } else if st == NEW {
        or_default(t.udp_s, d.udp_s)
    } else {
        or_default(svc_s, or_default(t.udp_replied_s, d.udp_replied_s))
    }
}

/// True when a flow idle for `idle_ns` in its state has expired: its conntrack entry no longer
/// pins a backend and its SNAT port is free. The same rule as ClientIP affinity: idle ≥ timeout.
#[inline(always)]
pub const fn expired(
    flags: u16,
    proto: u8,
    idle_ns: u64,
    t: Option<&Timeouts>,
    svc_s: u32,
) -> bool {
    idle_ns >= timeout_s(flags, proto, t, svc_s) as u64 * NS
}

/// True when the SNAT port of a flow (its state and idle time) may be given to a new flow: the
/// flow expired, was reset, or closed by FINs both ways and quiet for [`CLOSED_REUSE_NS`].
#[inline(always)]
pub const fn reusable(
    flags: u16,
    proto: u8,
    idle_ns: u64,
    t: Option<&Timeouts>,
    svc_s: u32,
) -> bool {
    let closed = proto == PROTO_TCP && state(flags) == CLOSED;
    (closed && (flags & RST != 0 || idle_ns >= CLOSED_REUSE_NS))
        || expired(flags, proto, idle_ns, t, svc_s)
}

/// How long a backend may keep a closed connection's 4-tuple (Linux's TIME_WAIT, 2 × MSL): a new
/// flow given the same SNAT port towards the same backend earlier may have its SYN answered with
/// an ACK of the old connection (PAWS; TCP timestamps are offset per connection), which costs
/// the client a reset and a retransmission.
pub const TIME_WAIT_NS: u64 = 60 * NS;

/// How good a take-over of a flow's SNAT port is (its state and idle time, as [`reusable`]): 0
/// when the port is not free; `u64::MAX` when nothing of the old flow can be left at the backend
/// (reset, expired, UDP, or closed longer than [`TIME_WAIT_NS`] ago); otherwise (closed by FINs,
/// maybe still in TIME_WAIT at the backend) the idle time: the longer, the better.
#[inline(always)]
pub const fn reuse_score(
    flags: u16,
    proto: u8,
    idle_ns: u64,
    t: Option<&Timeouts>,
    svc_s: u32,
) -> u64 {
    if !reusable(flags, proto, idle_ns, t, svc_s) {
        0
    } else if proto != PROTO_TCP
        || flags & RST != 0
        || idle_ns >= TIME_WAIT_NS
        || state(flags) != CLOSED
    {
        u64::MAX
    } else {
        idle_ns
    }
}

/// The state's name, for the CLI.
pub const fn state_name(flags: u16, proto: u8) -> &'static str {
    match (state(flags), proto == PROTO_TCP) {
        (NEW, true) => "syn_sent",
        (NEW, false) => "unreplied",
        (ESTABLISHED, true) => "established",
        (ESTABLISHED, false) => "replied",
        (FIN, _) => "fin",
        _ => "closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const UDP: u8 = 17;
    const S: u64 = NS;

    fn run(proto: u8, packets: &[(u8, bool)]) -> u16 {
        packets
            .iter()
            .fold(NEW, |f, &(tcp, reply)| next(f, proto, tcp, reply))
    }

    #[test]
    fn tcp_handshake_establishes_on_the_reply() {
        assert_eq!(state(run(PROTO_TCP, &[(TCP_SYN, false)])), NEW);
        let f = run(PROTO_TCP, &[(TCP_SYN, false), (TCP_SYN | TCP_ACK, true)]);
        assert_eq!(state(f), ESTABLISHED);
        assert_eq!(state(next(f, PROTO_TCP, TCP_ACK, false)), ESTABLISHED);
    }

    #[test]
    fn rst_closes_from_either_side_and_fins_close_when_both_seen() {
        let est = run(PROTO_TCP, &[(TCP_SYN, false), (TCP_SYN | TCP_ACK, true)]);
        assert_eq!(
            state(next(est, PROTO_TCP, TCP_RST | TCP_ACK, false)),
            CLOSED
        );
        assert_eq!(state(next(est, PROTO_TCP, TCP_RST, true)), CLOSED);
        let half = next(est, PROTO_TCP, TCP_FIN | TCP_ACK, false);
        assert_eq!(state(half), FIN);
        // The client's retransmitted FIN changes nothing; data and ACKs keep the half-close.
        assert_eq!(next(half, PROTO_TCP, TCP_FIN | TCP_ACK, false), half);
        assert_eq!(next(half, PROTO_TCP, TCP_ACK, true), half);
        let closed = next(half, PROTO_TCP, TCP_FIN | TCP_ACK, true);
        assert_eq!(state(closed), CLOSED);
        // Closed stays closed: the last ACK does not revive it.
        assert_eq!(state(next(closed, PROTO_TCP, TCP_ACK, false)), CLOSED);
    }

    #[test]
    fn a_new_syn_on_a_closed_flow_restarts_it() {
        let closed = run(
            PROTO_TCP,
            &[
                (TCP_SYN, false),
                (TCP_SYN | TCP_ACK, true),
                (TCP_RST, false),
            ],
        );
        assert!(restarts(closed, PROTO_TCP, TCP_SYN));
        assert!(!restarts(closed, PROTO_TCP, TCP_ACK));
        assert_eq!(next(closed, PROTO_TCP, TCP_SYN, false), NEW);
        assert_ne!(next(closed, PROTO_TCP, 0, false) & RST, 0);
        let est = run(PROTO_TCP, &[(TCP_SYN, false), (TCP_SYN | TCP_ACK, true)]);
        assert!(!restarts(est, PROTO_TCP, TCP_SYN));
        assert!(!restarts(closed, UDP, TCP_SYN));
    }

    #[test]
    fn udp_is_replied_once_the_backend_answers() {
        assert_eq!(state(run(UDP, &[(0, false), (0, false)])), NEW);
        assert_eq!(state(run(UDP, &[(0, false), (0, true)])), ESTABLISHED);
        // UDP ignores bits that look like TCP flags.
        assert_eq!(
            state(run(UDP, &[(0, false), (0, true), (TCP_RST, false)])),
            ESTABLISHED
        );
    }

    #[test]
    fn timeouts_follow_protocol_and_state() {
        let d = DEFAULT_TIMEOUTS;
        let est = ESTABLISHED;
        assert_eq!(timeout_s(NEW, PROTO_TCP, None, 0), d.tcp_syn_s);
        assert_eq!(timeout_s(est, PROTO_TCP, None, 0), 86_400);
        assert_eq!(timeout_s(FIN | FIN_FWD, PROTO_TCP, None, 0), d.tcp_fin_s);
        assert_eq!(timeout_s(CLOSED, PROTO_TCP, None, 0), d.tcp_close_s);
        assert_eq!(timeout_s(NEW, UDP, None, 0), d.udp_s);
        assert_eq!(timeout_s(est, UDP, None, 0), d.udp_replied_s);
        // A service's timeout overrides the established / replied one only.
        assert_eq!(timeout_s(est, PROTO_TCP, None, 5), 5);
        assert_eq!(timeout_s(est, UDP, None, 5), 5);
        assert_eq!(timeout_s(NEW, PROTO_TCP, None, 5), d.tcp_syn_s);
        // Configured values win; zeros fall back to the defaults.
        let t = Timeouts {
            tcp_established_s: 2,
            ..Default::default()
        };
        assert_eq!(timeout_s(est, PROTO_TCP, Some(&t), 0), 2);
        assert_eq!(timeout_s(NEW, PROTO_TCP, Some(&t), 0), d.tcp_syn_s);
    }

    #[test]
    fn an_idle_established_flow_outlives_the_old_300s() {
        assert!(!expired(ESTABLISHED, PROTO_TCP, 301 * S, None, 0));
        assert!(!expired(ESTABLISHED, PROTO_TCP, 86_399 * S, None, 0));
        assert!(expired(ESTABLISHED, PROTO_TCP, 86_400 * S, None, 0));
        // An unanswered SYN does not hold its port for a day.
        assert!(expired(NEW, PROTO_TCP, 60 * S, None, 0));
    }

    #[test]
    fn closed_ports_are_reusable_after_a_quarter_second_established_ones_not() {
        let fins = CLOSED | FIN_FWD | FIN_REV;
        assert!(!reusable(fins, PROTO_TCP, S / 5, None, 0));
        assert!(reusable(fins, PROTO_TCP, S / 4, None, 0));
        // A reset flow has no socket left at the backend: its port is free at once.
        assert!(reusable(CLOSED | RST, PROTO_TCP, 0, None, 0));
        assert!(!expired(CLOSED, PROTO_TCP, S, None, 0));
        assert!(!reusable(ESTABLISHED, PROTO_TCP, 3600 * S, None, 0));
        assert!(!reusable(FIN | FIN_FWD, PROTO_TCP, 60 * S, None, 0));
        assert!(reusable(FIN | FIN_FWD, PROTO_TCP, 120 * S, None, 0));
        assert!(reusable(NEW, UDP, 30 * S, None, 0));
        assert!(!reusable(ESTABLISHED, UDP, 30 * S, None, 0));
    }

    #[test]
    fn ports_a_backend_may_still_hold_in_time_wait_score_by_idle_time() {
        let fins = CLOSED | FIN_FWD | FIN_REV;
        assert_eq!(reuse_score(fins, PROTO_TCP, S / 5, None, 0), 0);
        assert_eq!(reuse_score(ESTABLISHED, PROTO_TCP, S, None, 0), 0);
        // Closed by FINs: the backend's TIME_WAIT may hold the tuple; older is better.
        let young = reuse_score(fins, PROTO_TCP, S, None, 0);
        let old = reuse_score(fins, PROTO_TCP, 30 * S, None, 0);
        assert!(0 < young && young < old && old < u64::MAX);
        // Nothing can be left at the backend: take it at once.
        assert_eq!(reuse_score(fins, PROTO_TCP, 60 * S, None, 0), u64::MAX);
        assert_eq!(reuse_score(CLOSED | RST, PROTO_TCP, 0, None, 0), u64::MAX);
        assert_eq!(reuse_score(NEW, PROTO_TCP, 60 * S, None, 0), u64::MAX);
        assert_eq!(reuse_score(NEW, UDP, 30 * S, None, 0), u64::MAX);
    }
}
