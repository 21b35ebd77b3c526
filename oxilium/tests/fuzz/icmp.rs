//! ICMP as docs/edge-lb.md "ICMP errors and the MTU" states it, for the models of every program
//! that translates: which errors are looked at, the quoted packet they carry, the rewrite of a
//! translated error (outer addresses, quoted addresses and ports, every checksum kept exactly as
//! right as it was) and the LB's own "fragmentation needed" / "packet too big". What a program
//! does with them (which maps it asks, where the result goes) stays in its model.
//!
//! An ICMP or ICMPv6 error is told apart by the protocol number, whatever the IP version (ICMP
//! types 3, 4, 5, 11, 12; ICMPv6 types 1-4); an error that is not translated passes untouched,
//! counted `icmp_error`. Only ICMP inside IPv4 (types 3, 11, 12) and ICMPv6 inside IPv6 (types
//! 1-4) are translated.
use super::model::keep_residual;
use super::wire::{Pkt, fold, mapped4, sum};
use abi::lb::FlowKey;

pub fn is_error(p: &Pkt) -> bool {
    match (p.proto, p.icmp_type) {
        (1, Some(t)) => matches!(t, 3 | 4 | 5 | 11 | 12),
        (58, Some(t)) => matches!(t, 1..=4),
        _ => false,
    }
}

/// The packet a translatable error quotes.
#[derive(Clone, Copy, Debug)]
pub struct Quote {
    /// As the quoted packet was sent.
    pub key: FlowKey,
    pub ip_off: usize,
    pub ihl: usize,
    pub l4_off: usize,
    /// The quoted TCP / UDP checksum's offset, when the quote (cut at the IP length) holds it.
    pub csum_off: Option<usize>,
}

impl Quote {
    /// The quoted packet reversed: the key of the flow's other direction.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.key.dst,
            dst: self.key.src,
            sport: self.key.dport,
            dport: self.key.sport,
            proto: self.key.proto,
            _pad: [0; 3],
        }
    }
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// The quote of an error the rules look at: ICMP 3 / 11 / 12 in IPv4, ICMPv6 1-4 in IPv6; the
/// quoted packet of the same family, TCP or UDP, not a later fragment, IPv6 without extension
/// headers, its ports inside the error's IP length; the error addressed to the quoted source.
pub fn quote(f: &[u8], p: &Pkt) -> Option<Quote> {
    let ty = p.icmp_type?;
    let ok = match (p.v6, p.proto) {
        (false, 1) => matches!(ty, 3 | 11 | 12),
        (true, 58) => matches!(ty, 1..=4),
        _ => false,
    };
    if !ok || p.frag == super::wire::Frag::Later {
        return None;
    }
    let msg_end = p.l3_off + p.l3_len;
    let ip_off = p.l4_off + 8;
    let mut key = FlowKey {
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        proto: 0,
        _pad: [0; 3],
    };
    let (ihl, proto) = if p.v6 {
        if ip_off + 40 > f.len() || f[ip_off] >> 4 != 6 {
            return None;
        }
        key.src.copy_from_slice(&f[ip_off + 8..ip_off + 24]);
        key.dst.copy_from_slice(&f[ip_off + 24..ip_off + 40]);
        (40, f[ip_off + 6])
    } else {
        if ip_off + 20 > f.len() || f[ip_off] >> 4 != 4 {
            return None;
        }
        let ihl = (f[ip_off] & 0x0f) as usize * 4;
        if ihl < 20 || be16(f, ip_off + 6) & 0x1fff != 0 {
            return None;
        }
        key.src = mapped4(&f[ip_off + 12..]);
        key.dst = mapped4(&f[ip_off + 16..]);
        (ihl, f[ip_off + 9])
    };
    let csum = match proto {
        6 => 16,
        17 => 6,
        _ => return None,
    };
    let l4_off = ip_off + ihl;
    if l4_off + 4 > msg_end || key.src != p.dst {
        return None;
    }
    key.sport = be16(f, l4_off).to_be();
    key.dport = be16(f, l4_off + 2).to_be();
    key.proto = proto;
    Some(Quote {
        key,
        ip_off,
        ihl,
        l4_off,
        csum_off: (l4_off + csum + 2 <= msg_end).then_some(l4_off + csum),
    })
}

fn addr(a: &[u8; 16], v6: bool) -> &[u8] {
    if v6 { &a[..] } else { &a[12..] }
}

/// The one's-complement checksum `c` after the covered words `from` became `to` (RFC 1624).
fn incremental(c: u16, from: &[u8], to: &[u8]) -> u16 {
    let neg: u64 = from
        .chunks(2)
        .map(|w| !u16::from_be_bytes([w[0], w[1]]) as u64)
        .sum();
    !fold(!c as u64 + neg + sum(to))
}

/// The error `f` (packet `p`, quote `q`) rewritten: outer header `osrc` → `odst`, the quoted
/// packet `new`; every checksum keeps its residual (the ICMP one over the message, ICMPv6's with
/// its pseudo-header; the outer and quoted IPv4 header ones), the quoted TCP / UDP one is updated
/// for the addresses and ports (an IPv4 UDP 0 stays 0, a UDP 0 result is 0xffff). Returns the
/// frame and its checksum field offsets.
pub fn translate(
    f: &[u8],
    p: &Pkt,
    q: &Quote,
    new: &FlowKey,
    osrc: &[u8; 16],
    odst: &[u8; 16],
) -> (Vec<u8>, Vec<usize>) {
    let v6 = p.v6;
    let mut out = f.to_vec();
    let mut fields = Vec::new();
    let msg = p.l4_off..p.l3_off + p.l3_len;
    let pseudo = |s: &[u8; 16], d: &[u8; 16]| {
        if v6 { sum(s) + sum(d) } else { 0 }
    };
    let icmp_was = pseudo(&p.src, &p.dst) + sum(&f[msg.clone()]);
    // Outer header.
    let l3 = p.l3_off;
    if v6 {
        out[l3 + 8..l3 + 24].copy_from_slice(osrc);
        out[l3 + 24..l3 + 40].copy_from_slice(odst);
    } else {
        let ihl = (f[l3] & 0x0f) as usize * 4;
        let was = sum(&f[l3..l3 + ihl]);
        out[l3 + 12..l3 + 16].copy_from_slice(&osrc[12..]);
        out[l3 + 16..l3 + 20].copy_from_slice(&odst[12..]);
        out[l3 + 10..l3 + 12].fill(0);
        let rest = sum(&out[l3..l3 + ihl]);
        keep_residual(&mut out, l3 + 10, rest, fold(was));
        fields.push(l3 + 10);
    }
    // Quoted header.
    let qi = q.ip_off;
    let old = &q.key;
    if v6 {
        out[qi + 8..qi + 24].copy_from_slice(&new.src);
        out[qi + 24..qi + 40].copy_from_slice(&new.dst);
    } else {
        let was = sum(&f[qi..qi + q.ihl]);
        out[qi + 12..qi + 16].copy_from_slice(&new.src[12..]);
        out[qi + 16..qi + 20].copy_from_slice(&new.dst[12..]);
        out[qi + 10..qi + 12].fill(0);
        let rest = sum(&out[qi..qi + q.ihl]);
        keep_residual(&mut out, qi + 10, rest, fold(was));
        fields.push(qi + 10);
    }
    let o = q.l4_off;
    out[o..o + 2].copy_from_slice(&new.sport.to_ne_bytes());
    out[o + 2..o + 4].copy_from_slice(&new.dport.to_ne_bytes());
    if let Some(c) = q.csum_off {
        let stored = be16(f, c);
        let udp = old.proto == 17;
        if !(udp && !v6 && stored == 0) {
            let mut from = Vec::new();
            let mut to = Vec::new();
            for (a, b) in [(&old.src, &new.src), (&old.dst, &new.dst)] {
                from.extend_from_slice(addr(a, v6));
                to.extend_from_slice(addr(b, v6));
            }
            from.extend_from_slice(&f[o..o + 4]);
            to.extend_from_slice(&out[o..o + 4]);
            let mut n = incremental(stored, &from, &to);
            if udp && n == 0 {
                n = 0xffff;
            }
            out[c..c + 2].copy_from_slice(&n.to_be_bytes());
            fields.push(c);
        }
    }
    let ic = p.l4_off + 2;
    out[ic..ic + 2].fill(0);
    let rest = pseudo(osrc, odst) + sum(&out[msg]);
    keep_residual(&mut out, ic, rest, fold(icmp_was));
    fields.push(ic);
    (out, fields)
}

/// The usable MTU of a DSR tunnel over a route of MTU `route` towards `outer_v6` / IPv4
/// (`port_opt`: the IPv4 outer header carries the NodePort DSR port option, 24 bytes).
pub fn usable(route: u32, outer_v6: bool, port_opt: bool) -> u16 {
    let h = match (outer_v6, port_opt) {
        (true, _) => 40,
        (false, true) => 24,
        (false, false) => 20,
    };
    route.saturating_sub(h) as u16
}

/// The LB's answer to the too-big packet `f` (IPv4 with DF, or IPv6): "fragmentation needed"
/// (3/4) / "packet too big" (2/0) carrying `mtu`, from the packet's destination to its source,
/// TTL / hop limit 64, IPv4 identification 0 and DF clear, quoting the packet's first
/// 548 / 1232 bytes rounded down to a multiple of 4; the L2 header kept (a tag included), MACs
/// swapped.
pub fn too_big(f: &[u8], p: &Pkt, mtu: u16) -> Vec<u8> {
    let l2 = p.l3_off;
    let mut out = f[..l2].to_vec();
    out[..6].copy_from_slice(&f[6..12]);
    out[6..12].copy_from_slice(&f[..6]);
    let max = if p.v6 { 1232 } else { 548 };
    let quote = &f[l2..l2 + (p.l3_len.min(max) & !3)];
    let m = mtu.to_be_bytes();
    let mut icmp = if p.v6 {
        vec![2, 0, 0, 0, 0, 0, m[0], m[1]]
    } else {
        vec![3, 4, 0, 0, 0, 0, m[0], m[1]]
    };
    icmp.extend_from_slice(quote);
    let len = icmp.len();
    let pseudo = if p.v6 {
        sum(&p.dst) + sum(&p.src) + len as u64 + 58
    } else {
        0
    };
    let c = !fold(pseudo + sum(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    if p.v6 {
        out.extend_from_slice(&[0x60, 0, 0, 0]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&[58, 64]);
        out.extend_from_slice(&p.dst);
        out.extend_from_slice(&p.src);
    } else {
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&((20 + len) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
        h.extend_from_slice(&p.dst[12..]);
        h.extend_from_slice(&p.src[12..]);
        let c = super::wire::ipv4_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&h);
    }
    out.extend_from_slice(&icmp);
    out
}
