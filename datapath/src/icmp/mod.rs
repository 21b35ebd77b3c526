//! ICMP / ICMPv6 errors about translated flows, shared by every hook that translates (the XDP LB,
//! the NodePort tc programs, the pod path): the quoted packet is parsed once here, looked up in
//! the existing conntrack and SNAT maps (no state of its own), and the error rewritten in place
//! (outer addresses, the quoted IP header and ports, every checksum) so that it reaches the
//! host that sent the quoted packet, as that host sent it. [`reply`] builds the LB's own
//! "fragmentation needed" / "packet too big"; [`skb`] is the tc side.
//!
//! Which errors: ICMP destination unreachable (3, fragmentation needed included), time exceeded
//! (11) and parameter problem (12); ICMPv6 destination unreachable (1), packet too big (2), time
//! exceeded (3) and parameter problem (4), ICMP inside IPv4 and ICMPv6 inside IPv6 only. The
//! quoted packet must be TCP or UDP, not a later
//! fragment, its ports inside the packet, IPv6 without extension headers, and the error must be
//! addressed to the quoted packet's source (an error always goes to the sender of what it
//! quotes). Anything else passes untouched.
//!
//! Two directions (the exact rules are in docs/edge-lb.md, "ICMP errors"):
//! - an error from the backend side, quoting a translated packet as the backend saw it: the
//!   quoted packet reversed is an `OXI_SNAT` key (backend → LB address:SNAT port, or backend →
//!   client for DNAT-only flows). It becomes quoted client → frontend, outer frontend → client
//!   ([`to_client`]).
//! - an error from the client side, quoting a reply the client got from the frontend: the quoted
//!   packet reversed is an `OXI_CONNTRACK` key (client → frontend). With a SNAT port it becomes
//!   quoted backend → LB address:port, outer LB address → backend ([`to_snat_backend`]); without
//!   one (DNAT to a local backend, the pod path) quoted backend → client, outer source kept,
//!   destination the backend ([`to_dnat_backend`]); DSR flows are tunnelled to the backend
//!   unchanged by the hook (the backend owns the frontend address).
pub mod reply;
pub mod skb;

use crate::{
    csum::Delta,
    headers::*,
    maps::{OXI_BACKENDS, OXI_CONNTRACK, OXI_SNAT},
    nat::last4,
    parse::{Flow, ptr_at},
};
use abi::lb::{Addr, Backend, CtEntry, FlowKey, SnatEntry, v4_mapped};

/// The ICMP / ICMPv6 error header before the quoted packet: type, code, checksum, 4 bytes.
pub const ICMP_HLEN: usize = 8;

/// The packet an error quotes, and what the error's outer header becomes. In declared order:
/// its addresses are 4-aligned for crate::words.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Quoted {
    /// The quoted packet's addresses, ports and protocol, as it was sent.
    pub key: FlowKey,
    /// Offsets (from the frame's start) of the quoted IP header and its TCP / UDP header.
    pub ip_off: usize,
    pub l4_off: usize,
    /// Offset of the quoted TCP / UDP checksum; 0 when it is not in the packet.
    pub csum_off: usize,
    /// The outer header's new source and destination (set by [`to_client`] and co.).
    pub outer_src: Addr,
    pub outer_dst: Addr,
}

/// True for the error types translated (see the module doc).
#[inline(always)]
pub fn translated_type(v6: bool, ty: u8) -> bool {
    if v6 {
        matches!(ty, 1..=4)
    } else {
        matches!(ty, 3 | 11 | 12)
    }
}

/// Parses the packet quoted by the ICMP error `f` (parsed, `f.icmp_error`) into `q`. False when
/// the error is not one this module translates (see the module doc).
#[inline(never)]
pub fn parse_quoted(start: usize, end: usize, f: &Flow, q: &mut Quoted) -> bool {
    try_parse(start, end, f, q).is_some()
}

#[inline(always)]
fn try_parse(start: usize, end: usize, f: &Flow, q: &mut Quoted) -> Option<()> {
    let h = ptr_at::<IcmpHdr>(start, end, f.l4_off)?;
    // ICMP inside IPv4, ICMPv6 inside IPv6: the other pairings are no error either family knows.
    let icmp = if f.v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
    if f.key.proto != icmp || !translated_type(f.v6, unsafe { (*h).ty }) {
        return None;
    }
    // The IP packet's end: bytes past it (an Ethernet trailer) are no part of the quote.
    let msg_end = f.l3_off + f.l3_len;
    let ip_off = f.l4_off + ICMP_HLEN;
    let (l4_off, proto) = if f.v6 {
        let ip = ptr_at::<Ipv6Hdr>(start, end, ip_off)?;
        unsafe {
            if (*ip).version_tc_flow[0] >> 4 != 6 {
                return None;
            }
            q.key.src = (*ip).src;
            q.key.dst = (*ip).dst;
            (ip_off + IPV6_HLEN, (*ip).nexthdr)
        }
    } else {
        let ip = ptr_at::<Ipv4Hdr>(start, end, ip_off)?;
        unsafe {
            let vihl = (*ip).version_ihl;
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if vihl >> 4 != 4 || ihl < IPV4_HLEN || u16::from_be((*ip).frag_off) & 0x1fff != 0 {
                return None;
            }
            q.key.src = v4_mapped((*ip).src);
            q.key.dst = v4_mapped((*ip).dst);
            (ip_off + ihl, (*ip).proto)
        }
    };
    let csum = match proto {
        IPPROTO_TCP => TCP_CSUM_OFF,
        IPPROTO_UDP => UDP_CSUM_OFF,
        _ => return None,
    };
    if l4_off + 4 > msg_end || q.key.src != f.key.dst {
        return None;
    }
    let p = ptr_at::<Ports>(start, end, l4_off)?;
    unsafe {
        q.key.sport = (*p).src;
        q.key.dport = (*p).dst;
    }
    q.key.proto = proto;
    q.key._pad = [0; 3];
    q.ip_off = ip_off;
    q.l4_off = l4_off;
    let at = l4_off + csum;
    q.csum_off = if at + 2 <= msg_end && ptr_at::<u16>(start, end, at).is_some() {
        at
    } else {
        0
    };
    Some(())
}

/// Fills `k` with the quoted packet's reverse (the tuple of the flow's other direction).
#[inline(always)]
fn reversed(q: &Quoted, k: &mut FlowKey) {
    k.src = q.key.dst;
    k.dst = q.key.src;
    k.sport = q.key.dport;
    k.dport = q.key.sport;
    k.proto = q.key.proto;
    k._pad = [0; 3];
}

/// The `OXI_SNAT` entry of a backend-side error (the quoted packet reversed is its key). `k` is
/// scratch space for the key.
#[inline(always)]
pub fn reply_entry(q: &Quoted, k: &mut FlowKey) -> Option<&'static SnatEntry> {
    reversed(q, k);
    // SAFETY: read-only use of an LRU value.
    unsafe { OXI_SNAT.get(&*k) }
}

/// The conntrack entry and backend of a client-side error (the quoted packet reversed is the
/// client → frontend key), when the backend still belongs to the entry's service.
#[inline(always)]
pub fn flow_entry(q: &Quoted, k: &mut FlowKey) -> Option<(&'static CtEntry, &'static Backend)> {
    reversed(q, k);
    // SAFETY: read-only use of LRU / hash values.
    let c = unsafe { OXI_CONNTRACK.get(&*k) }?;
    // A free slot's service id (0) is no entry's.
    let b = OXI_BACKENDS.get(c.backend_id)?;
    (b.service_id == c.service_id).then_some((c, b))
}

/// Backend side: the quote becomes client → frontend, the outer header frontend → client.
#[inline(always)]
pub fn to_client(q: &mut Quoted, e: &SnatEntry, new: &mut FlowKey) {
    new.src = e.client;
    new.sport = e.client_port;
    new.dst = e.vip;
    new.dport = e.vip_port;
    q.outer_src = e.vip;
    q.outer_dst = e.client;
}

/// Client side, SNAT'ed flow: the quote becomes backend → `lb`:`port` (the LB / node address and
/// the flow's SNAT port), the outer header `lb` → backend.
#[inline(always)]
pub fn to_snat_backend(q: &mut Quoted, b: &Backend, lb: &Addr, port: u16, new: &mut FlowKey) {
    new.src = b.addr;
    new.sport = b.port;
    new.dst = *lb;
    new.dport = port;
    q.outer_src = *lb;
    q.outer_dst = b.addr;
}

/// Client side, DNAT-only flow: the quote becomes `addr`:`port` (the backend) → client, the
/// outer destination the backend; the outer source is kept.
#[inline(always)]
pub fn to_dnat_backend(q: &mut Quoted, f: &Flow, addr: &Addr, port: u16, new: &mut FlowKey) {
    new.src = *addr;
    new.sport = port;
    new.dst = q.key.dst;
    new.dport = q.key.dport;
    q.outer_src = f.key.src;
    q.outer_dst = *addr;
}

/// Rewrites the error `f` in place: outer addresses to `q.outer_src` / `q.outer_dst`, the quoted
/// addresses and ports to `new`'s, with the outer IPv4 header checksum, the quoted IPv4 header
/// checksum, the quoted TCP / UDP checksum (when quoted; an IPv4 UDP 0 stays 0) and the ICMP
/// checksum (ICMPv6: pseudo-header included) updated incrementally. Every checksum stays as right
/// as it was, and the sum over the whole IP packet is unchanged (a CHECKSUM_COMPLETE skb's
/// `csum` stays valid). Fails, changing nothing, when a header is outside `[start, end)`.
#[inline(never)]
pub fn translate(start: usize, end: usize, f: &Flow, q: &Quoted, new: &FlowKey) -> Result<(), ()> {
    let old = &q.key;
    let icmp_csum = ptr_at::<u16>(start, end, f.l4_off + 2).ok_or(())?;
    let ports = ptr_at::<Ports>(start, end, q.l4_off).ok_or(())?;
    let l4_csum = if q.csum_off != 0 {
        Some(ptr_at::<u16>(start, end, q.csum_off).ok_or(())?)
    } else {
        None
    };
    // The addresses first (their own frames keep this one's stack small); they report the
    // change to the ICMP checksum (low 16 bits) and to the quoted TCP / UDP one (next 16).
    let d = if f.v6 {
        addrs_v6(start, end, f, q, new)
    } else {
        addrs_v4(start, end, f, q, new)
    };
    if d < 0 {
        return Err(());
    }
    // `ic`: the ICMP checksum's change; `l4`: the quoted TCP / UDP checksum's.
    let mut ic = Delta::new();
    let mut l4 = Delta::new();
    ic.add_folded(d as u16);
    l4.add_folded((d >> 16) as u16);
    ic.word(old.sport, new.sport);
    ic.word(old.dport, new.dport);
    l4.word(old.sport, new.sport);
    l4.word(old.dport, new.dport);
    unsafe {
        if let Some(c) = l4_csum {
            let stored = *c;
            let udp = old.proto == IPPROTO_UDP;
            if !(udp && !f.v6 && stored == 0) {
                let mut n = l4.apply(stored);
                if udp && n == 0 {
                    n = 0xffff;
                }
                ic.word(stored, n);
                *c = n;
            }
        }
        (*ports).src = new.sport;
        (*ports).dst = new.dport;
        *icmp_csum = ic.apply(*icmp_csum);
    }
    Ok(())
}

/// The changes of [`translate`]'s address rewrite packed for the caller: the ICMP checksum's
/// (bits 0-15) and the quoted TCP / UDP checksum's (bits 16-31), or -1 (nothing changed).
#[inline(always)]
fn packed(ic: &Delta, l4: &Delta) -> i64 {
    ic.folded() as i64 | (l4.folded() as i64) << 16
}

/// IPv6: outer and quoted addresses (ICMPv6's pseudo-header is the outer addresses).
#[inline(never)]
fn addrs_v6(start: usize, end: usize, f: &Flow, q: &Quoted, new: &FlowKey) -> i64 {
    let (Some(outer), Some(inner)) = (
        ptr_at::<Ipv6Hdr>(start, end, f.l3_off),
        ptr_at::<Ipv6Hdr>(start, end, q.ip_off),
    ) else {
        return -1;
    };
    let mut l4 = Delta::new();
    unsafe {
        if !(l4.addr16(&(*inner).src, &new.src) && l4.addr16(&(*inner).dst, &new.dst)) {
            return -1;
        }
        let mut ic = l4;
        if !(ic.addr16(&(*outer).src, &q.outer_src) && ic.addr16(&(*outer).dst, &q.outer_dst)) {
            return -1;
        }
        (*outer).src = q.outer_src;
        (*outer).dst = q.outer_dst;
        (*inner).src = new.src;
        (*inner).dst = new.dst;
        packed(&ic, &l4)
    }
}

/// IPv4: outer addresses (and its header checksum), quoted addresses and the quoted header's
/// checksum (covered by the ICMP checksum, so its change is counted there too).
#[inline(never)]
fn addrs_v4(start: usize, end: usize, f: &Flow, q: &Quoted, new: &FlowKey) -> i64 {
    let (Some(outer), Some(inner)) = (
        ptr_at::<Ipv4Hdr>(start, end, f.l3_off),
        ptr_at::<Ipv4Hdr>(start, end, q.ip_off),
    ) else {
        return -1;
    };
    let (ns, nd) = (last4(&new.src), last4(&new.dst));
    let (os, od) = (last4(&q.outer_src), last4(&q.outer_dst));
    let mut ih = Delta::new();
    let mut oh = Delta::new();
    unsafe {
        ih.bytes(&(*inner).src, &ns);
        ih.bytes(&(*inner).dst, &nd);
        oh.bytes(&(*outer).src, &os);
        oh.bytes(&(*outer).dst, &od);
        let mut ic = ih;
        let l4 = ih;
        let old_check = (*inner).check;
        let new_check = ih.apply(old_check);
        ic.word(old_check, new_check);
        (*inner).check = new_check;
        (*inner).src = ns;
        (*inner).dst = nd;
        (*outer).check = oh.apply((*outer).check);
        (*outer).src = os;
        (*outer).dst = od;
        packed(&ic, &l4)
    }
}
