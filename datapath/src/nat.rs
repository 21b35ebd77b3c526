//! In-place address and port rewrite with incremental checksum updates (IPv4 header, TCP/UDP
//! pseudo-header and ports). Works on any hook's direct packet access.
use crate::{csum::Delta, headers::*, parse::Flow, parse::ptr_at};
use abi::lb::{Addr, FlowKey};

/// Rewrites the flow's addresses and ports to those of `new` (its protocol is ignored). Fails (and
/// changes nothing) when a header to update is outside the packet.
#[inline(never)]
pub fn rewrite(start: usize, end: usize, f: &Flow, new: &FlowKey) -> Result<(), ()> {
    let (new_src, new_dst, new_sport, new_dport) = (&new.src, &new.dst, new.sport, new.dport);
    let old = &f.key;
    let csum_off = match old.proto {
        IPPROTO_TCP => TCP_CSUM_OFF,
        IPPROTO_UDP => UDP_CSUM_OFF,
        _ => return Err(()),
    };
    let l4_csum = ptr_at::<u16>(start, end, f.l4_off + csum_off).ok_or(())?;
    let ports = ptr_at::<Ports>(start, end, f.l4_off).ok_or(())?;

    // Pseudo-header (addresses) + ports: the L4 checksum's change.
    let mut l4 = Delta::new();
    l4.word(old.sport, new_sport);
    l4.word(old.dport, new_dport);
    if f.v6 {
        let ip = ptr_at::<Ipv6Hdr>(start, end, f.l3_off).ok_or(())?;
        l4.bytes(&old.src, new_src);
        l4.bytes(&old.dst, new_dst);
        unsafe {
            (*ip).src = *new_src;
            (*ip).dst = *new_dst;
        }
    } else {
        let ip = ptr_at::<Ipv4Hdr>(start, end, f.l3_off).ok_or(())?;
        let (os, od) = (last4(&old.src), last4(&old.dst));
        let (ns, nd) = (last4(new_src), last4(new_dst));
        let mut l3 = Delta::new();
        l3.bytes(&os, &ns);
        l3.bytes(&od, &nd);
        l4.bytes(&os, &ns);
        l4.bytes(&od, &nd);
        unsafe {
            (*ip).check = l3.apply((*ip).check);
            (*ip).src = ns;
            (*ip).dst = nd;
        }
    }
    unsafe {
        let stored = *l4_csum;
        // IPv4 UDP may carry no checksum (0): leave it so.
        if !(f.key.proto == IPPROTO_UDP && !f.v6 && stored == 0) {
            let mut c = l4.apply(stored);
            if f.key.proto == IPPROTO_UDP && c == 0 {
                c = 0xffff;
            }
            *l4_csum = c;
        }
        (*ports).src = new_sport;
        (*ports).dst = new_dport;
    }
    Ok(())
}

#[inline(always)]
pub fn last4(a: &Addr) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}
