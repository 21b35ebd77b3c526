//! The LB's own "fragmentation needed" (ICMP 3/4, for an IPv4 packet with DF) and "packet too
//! big" (ICMPv6 2/0) for a packet that would exceed the egress MTU once encapsulated: an IP and
//! ICMP header in front of the start of the offending packet, which the hook has already put
//! behind them (the XDP side moves the frame: xdp/src/icmp.rs). Sizes as RFC 1812 §4.3.2.3 and
//! RFC 4443 §2.4 (c): the whole error at most 576 bytes (IPv4) or 1280 (IPv6).
use crate::{
    csum::{self, fold},
    headers::*,
    nat::last4,
    parse::ptr_at,
};
use abi::lb::Addr;

/// The most of the offending packet quoted: 576 − 20 − 8 and 1280 − 40 − 8 bytes.
pub const QUOTE_V4: usize = 548;
pub const QUOTE_V6: usize = 1232;

/// Bytes of the offending IP packet (`l3_len` long) the error quotes: as many as fit, rounded
/// down to whole 32-bit words (the checksum is summed word by word).
#[inline(always)]
pub fn quote_len(v6: bool, l3_len: usize) -> usize {
    let max = if v6 { QUOTE_V6 } else { QUOTE_V4 };
    let n = if l3_len < max { l3_len } else { max };
    n & !3
}

/// Length of the IP + ICMP headers put in front of the quote.
#[inline(always)]
pub fn headers_len(v6: bool) -> usize {
    (if v6 { IPV6_HLEN } else { IPV4_HLEN }) + super::ICMP_HLEN
}

/// One's-complement sum (unfolded) of `len` bytes (a multiple of 4, at most [`QUOTE_V6`]) at
/// `off`, read as 16-bit words in memory order.
#[inline(always)]
fn sum_words(start: usize, end: usize, off: usize, len: usize) -> Option<u32> {
    let mut s: u32 = 0;
    let mut i = 0usize;
    while i < QUOTE_V6 / 4 {
        if i * 4 >= len {
            break;
        }
        let at = start + off + i * 4;
        if at + 4 > end {
            return None;
        }
        let w = unsafe { *(at as *const [u16; 2]) };
        s += w[0] as u32 + w[1] as u32;
        i += 1;
    }
    Some(s)
}

/// Writes, at `l2` (the L2 header's length), the IP header `src` → `dst` and the error carrying
/// `mtu` in front of the `quote` bytes already at `l2 + headers_len(v6)`, checksums included.
/// Inlined: a BPF function takes at most five arguments.
#[inline(always)]
pub fn write(
    start: usize,
    end: usize,
    l2: usize,
    v6: bool,
    src: &Addr,
    dst: &Addr,
    quote: usize,
    mtu: u16,
) -> Result<(), ()> {
    let icmp_off = l2 + if v6 { IPV6_HLEN } else { IPV4_HLEN };
    let icmp_len = super::ICMP_HLEN + quote;
    let body = sum_words(start, end, icmp_off + super::ICMP_HLEN, quote).ok_or(())?;
    let m = mtu.to_be_bytes();
    let (ty, code, rest) = if v6 {
        (2u8, 0u8, [0, 0, m[0], m[1]])
    } else {
        (3, 4, [0, 0, m[0], m[1]])
    };
    let mut s = body
        + u16::from_ne_bytes([ty, code]) as u32
        + u16::from_ne_bytes([rest[0], rest[1]]) as u32
        + u16::from_ne_bytes([rest[2], rest[3]]) as u32;
    let icmp = ptr_at::<[u8; 8]>(start, end, icmp_off).ok_or(())?;
    if v6 {
        let ip = ptr_at::<Ipv6Hdr>(start, end, l2).ok_or(())?;
        // Pseudo-header: addresses, upper-layer length, next header.
        let mut i = 0;
        while i < 16 {
            s += u16::from_ne_bytes([src[i], src[i + 1]]) as u32;
            s += u16::from_ne_bytes([dst[i], dst[i + 1]]) as u32;
            i += 2;
        }
        s += (icmp_len as u16).to_be() as u32 + (IPPROTO_ICMPV6 as u16).to_be() as u32;
        unsafe {
            *ip = Ipv6Hdr {
                version_tc_flow: [0x60, 0, 0, 0],
                payload_len: (icmp_len as u16).to_be(),
                nexthdr: IPPROTO_ICMPV6,
                hop_limit: 64,
                src: *src,
                dst: *dst,
            };
        }
    } else {
        let ip = ptr_at::<Ipv4Hdr>(start, end, l2).ok_or(())?;
        let (sa, da) = (last4(src), last4(dst));
        let tot = ((IPV4_HLEN + icmp_len) as u16).to_be();
        let words: [u16; 10] = [
            u16::from_ne_bytes([0x45, 0]),
            tot,
            0,
            0,
            u16::from_ne_bytes([64, IPPROTO_ICMP]),
            0,
            u16::from_ne_bytes([sa[0], sa[1]]),
            u16::from_ne_bytes([sa[2], sa[3]]),
            u16::from_ne_bytes([da[0], da[1]]),
            u16::from_ne_bytes([da[2], da[3]]),
        ];
        unsafe {
            *ip = Ipv4Hdr {
                version_ihl: 0x45,
                tos: 0,
                tot_len: tot,
                id: 0,
                frag_off: 0,
                ttl: 64,
                proto: IPPROTO_ICMP,
                check: csum::ipv4_header(&words),
                src: sa,
                dst: da,
            };
        }
    }
    let c = (!fold(s)).to_ne_bytes();
    unsafe {
        *icmp = [ty, code, c[0], c[1], rest[0], rest[1], rest[2], rest[3]];
    }
    Ok(())
}
