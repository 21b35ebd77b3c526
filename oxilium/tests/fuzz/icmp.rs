//! Today's ICMP behaviour, kept apart so it can be swapped when ICMP errors are reverse-translated
//! (docs/edge-lb.md "Packet edge cases"): an ICMP or ICMPv6 error (ICMP types 3, 4, 5, 11, 12;
//! ICMPv6 types 1-4; told apart by the protocol number, whatever the IP version) passes
//! untouched and is counted `icmp_error`, whatever flow it quotes. Other ICMP goes on as any
//! non-TCP/UDP packet.
use super::model::Expect;
use super::wire::Pkt;
use abi::lb::reason as r;

pub fn is_error(p: &Pkt) -> bool {
    match (p.proto, p.icmp_type) {
        (1, Some(t)) => matches!(t, 3 | 4 | 5 | 11 | 12),
        (58, Some(t)) => matches!(t, 1..=4),
        _ => false,
    }
}

/// The XDP LB (and XDP NodePort) verdict for an ICMP error: passed, counted.
pub fn xdp(p: &Pkt, f: &[u8]) -> Option<Expect> {
    is_error(p).then(|| {
        Expect::verdict(
            super::xdp_lb::XDP_PASS,
            f,
            Some((r::ICMP_ERROR, f.len() as u64)),
        )
    })
}
