//! Bounds-checked parsing of Ethernet (+ one VLAN tag), IPv4 / IPv6 (+ extension headers) and the
//! TCP / UDP ports, over the packet window [start, end) of any hook (XDP or tc direct access).
//!
//! Only the headers must lie in the window: lengths the headers state are checked against the
//! packet's length `len`, which for tc may exceed the window (a GSO / GRO skb whose payload sits
//! in page fragments: tc makes only the headers linear, never the whole packet). XDP passes
//! `end - start`.
use crate::headers::*;
use crate::words;
use abi::lb::FlowKey;
use core::{
    mem::size_of,
    ptr::{addr_of, addr_of_mut},
};

/// Headers are only looked for in the first `MAX_HDR_OFF` bytes (IPv6 extension headers beyond that
/// make the packet count as malformed). The bound also lets the verifier accept offsets that were
/// stored in (and read back from) the per-CPU scratch map.
pub const MAX_HDR_OFF: usize = 512;

/// A pointer to a `T` at `off` in the packet, or `None` when it would cross the end.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, off: usize) -> Option<*mut T> {
    if off > MAX_HDR_OFF || start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not a fragment.
    No,
    /// The first fragment: ports present, but the rest of the datagram follows separately.
    First,
    /// A later fragment: no L4 header.
    Later,
}

/// What the parser found. Offsets are from the start of the packet. The key comes first and the
/// whole is 8-byte aligned, so the key and its addresses take word stores (crate::words).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Flow {
    /// Addresses, ports (network byte order; 0 without ports) and the upper-layer protocol
    /// (after IPv6 extension headers).
    pub key: FlowKey,
    /// Length of the L2 header (Ethernet, plus 4 with a VLAN tag).
    pub l3_off: usize,
    pub l4_off: usize,
    /// Length of the IP packet (header + payload) as its header states; excludes L2 trailer padding.
    pub l3_len: usize,
    pub vlan: bool,
    pub v6: bool,
    pub frag: Fragment,
    /// IPv4: the identification field (as in the packet); IPv6: 0.
    pub ip_id: u16,
    /// IPv4: "don't fragment" set; IPv6: always (routers never fragment IPv6).
    pub df: bool,
    /// An ICMP / ICMPv6 error message (destination unreachable, time exceeded, ...).
    pub icmp_error: bool,
    /// TCP: the flags byte (FIN, SYN, RST, ACK, ...; see `abi::ct`), else 0.
    pub tcp_flags: u8,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 or IPv6.
    NotIp,
    /// IP, but a header is cut short or inconsistent.
    Malformed,
    /// `Flow` filled in.
    Ip,
}

/// Parses the packet of `len` bytes, of which [start, end) is readable, into `f`.
#[inline(always)]
pub fn parse(start: usize, end: usize, len: usize, f: &mut Flow) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(start, end, 0) else {
        return Parsed::Malformed;
    };
    let mut proto = u16::from_be(unsafe { (*eth).proto });
    let mut l3_off = ETH_HLEN;
    let mut vlan = false;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let Some(v) = ptr_at::<VlanHdr>(start, end, ETH_HLEN) else {
            return Parsed::Malformed;
        };
        proto = u16::from_be(unsafe { (*v).proto });
        l3_off += VLAN_HLEN;
        vlan = true;
    }
    f.l3_off = l3_off;
    f.vlan = vlan;
    let ok = match proto {
        ETH_P_IP => parse_v4(start, end, len, f),
        ETH_P_IPV6 => parse_v6(start, end, len, f),
        _ => return Parsed::NotIp,
    };
    if ok.is_some() && parse_l4(start, end, f) {
        Parsed::Ip
    } else {
        Parsed::Malformed
    }
}

#[inline(always)]
fn parse_v4(start: usize, end: usize, len: usize, f: &mut Flow) -> Option<()> {
    let l3_off = f.l3_off;
    let ip = ptr_at::<Ipv4Hdr>(start, end, l3_off)?;
    let (vihl, frag_off, proto, src, dst, tot_len, id) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be((*ip).frag_off),
            (*ip).proto,
            (*ip).src,
            (*ip).dst,
            u16::from_be((*ip).tot_len) as usize,
            (*ip).id,
        )
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < IPV4_HLEN || tot_len < ihl || l3_off + tot_len > len {
        return None;
    }
    let offset = frag_off & 0x1fff;
    let more = frag_off & 0x2000 != 0;
    let frag = if offset != 0 {
        Fragment::Later
    } else if more {
        Fragment::First
    } else {
        Fragment::No
    };
    // SAFETY: the key's addresses are 8-aligned (see `Flow`).
    unsafe {
        words::set_v4_mapped(addr_of_mut!(f.key.src), src);
        words::set_v4_mapped(addr_of_mut!(f.key.dst), dst);
    }
    f.key.proto = proto;
    f.l4_off = l3_off + ihl;
    f.l3_len = tot_len;
    f.v6 = false;
    f.frag = frag;
    f.ip_id = id;
    f.df = frag_off & 0x4000 != 0;
    Some(())
}

/// IPv6: walks up to four extension headers (hop-by-hop, routing, destination options, fragment).
#[inline(always)]
fn parse_v6(start: usize, end: usize, len: usize, f: &mut Flow) -> Option<()> {
    let l3_off = f.l3_off;
    let ip = ptr_at::<Ipv6Hdr>(start, end, l3_off)?;
    let (vtf, mut next, plen) = unsafe {
        (
            (*ip).version_tc_flow[0],
            (*ip).nexthdr,
            u16::from_be((*ip).payload_len) as usize,
        )
    };
    if vtf >> 4 != 6 || l3_off + IPV6_HLEN + plen > len {
        return None;
    }
    let mut off = l3_off + IPV6_HLEN;
    let mut frag = Fragment::No;
    for _ in 0..4 {
        match next {
            0 | 43 | 60 => {
                let h = ptr_at::<Ipv6ExtHdr>(start, end, off)?;
                let (n, hlen) = unsafe { ((*h).nexthdr, (*h).len) };
                next = n;
                off += (hlen as usize + 1) * 8;
            }
            44 => {
                let h = ptr_at::<Ipv6FragHdr>(start, end, off)?;
                let (n, fo) = unsafe { ((*h).nexthdr, u16::from_be((*h).frag_off)) };
                next = n;
                off += size_of::<Ipv6FragHdr>();
                frag = if fo >> 3 != 0 {
                    Fragment::Later
                } else {
                    Fragment::First
                };
            }
            _ => break,
        }
    }
    // A fifth extension header: more than the parser walks (docs/edge-lb.md: malformed).
    if matches!(next, 0 | 43 | 44 | 60) {
        return None;
    }
    // SAFETY: header fields within the bounds checked above; the key's addresses are 8-aligned.
    unsafe {
        words::copy_addr_from_header(addr_of_mut!(f.key.src), addr_of!((*ip).src));
        words::copy_addr_from_header(addr_of_mut!(f.key.dst), addr_of!((*ip).dst));
    }
    f.key.proto = next;
    f.l4_off = off;
    f.l3_len = IPV6_HLEN + plen;
    f.v6 = true;
    f.frag = frag;
    f.ip_id = 0;
    f.df = true;
    Some(())
}

/// Reads the ports of TCP / UDP and classifies ICMP errors. Returns false when the L4 header the
/// packet claims to carry is cut short.
#[inline(always)]
fn parse_l4(start: usize, end: usize, f: &mut Flow) -> bool {
    // The flow lives in per-CPU scratch space: clear what the previous packet left first.
    f.key.sport = 0;
    f.key.dport = 0;
    f.icmp_error = false;
    f.tcp_flags = 0;
    if f.frag == Fragment::Later {
        return true;
    }
    match f.key.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let need = if f.key.proto == IPPROTO_TCP {
                TCP_HLEN
            } else {
                UDP_HLEN
            };
            // The header must lie in the IP packet too, not in the frame's trailer.
            if start + f.l4_off + need > end || f.l4_off + need > f.l3_off + f.l3_len {
                return false;
            }
            let Some(p) = ptr_at::<Ports>(start, end, f.l4_off) else {
                return false;
            };
            unsafe {
                f.key.sport = (*p).src;
                f.key.dport = (*p).dst;
            }
            if f.key.proto == IPPROTO_TCP {
                let Some(fl) = ptr_at::<u8>(start, end, f.l4_off + TCP_FLAGS_OFF) else {
                    return false;
                };
                f.tcp_flags = unsafe { *fl };
            }
            true
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if f.l4_off + size_of::<IcmpHdr>() > f.l3_off + f.l3_len {
                return false;
            }
            let Some(h) = ptr_at::<IcmpHdr>(start, end, f.l4_off) else {
                return false;
            };
            let ty = unsafe { (*h).ty };
            f.icmp_error = if f.key.proto == IPPROTO_ICMP {
                matches!(ty, 3 | 4 | 5 | 11 | 12)
            } else {
                matches!(ty, 1..=4)
            };
            true
        }
        _ => true,
    }
}

impl Flow {
    pub const fn new() -> Self {
        Flow {
            key: FlowKey {
                src: [0; 16],
                dst: [0; 16],
                sport: 0,
                dport: 0,
                proto: 0,
                _pad: [0; 3],
            },
            l3_off: 0,
            l4_off: 0,
            l3_len: 0,
            vlan: false,
            v6: false,
            frag: Fragment::No,
            ip_id: 0,
            df: false,
            icmp_error: false,
            tcp_flags: 0,
        }
    }
}

impl Default for Flow {
    fn default() -> Self {
        Self::new()
    }
}
