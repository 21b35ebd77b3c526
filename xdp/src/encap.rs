//! DSR: IP-in-IP encapsulation towards the backend (IPIP for IPv4, IPv6-in-IPv6, or mixed), the
//! outer source being the LB's own address (header built by datapath::encap). The backend's oxilium
//! tc program strips the outer header.
use crate::nexthop;
use abi::lb::{Addr, reason};
use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use datapath::{
    encap,
    fib::Route,
    headers::*,
    lb::Target,
    parse::{Flow, ptr_at},
    words,
};

/// What [`next_hop`] returns, with the usable MTU in the low 16 bits, for a packet that would
/// exceed the egress MTU once encapsulated.
pub const TOO_BIG: u32 = 1 << 16;

/// Length of the outer header towards `dst` carrying `port` (0: none, see datapath::encap).
#[inline(always)]
fn outer_len(dst: &Addr, port: u16) -> usize {
    // SAFETY: `dst` is a backend address in the scratch space or a map value: 4-aligned.
    if unsafe { words::is_v4_mapped(dst) } {
        encap::outer_v4_len(port)
    } else {
        IPV6_HLEN
    }
}

/// The next hop of the packet once encapsulated towards `dst` (crate::nexthop, `t` as there),
/// its length checked against the route's MTU. Err: the drop reason, or [`TOO_BIG`] | the
/// usable MTU: the route's MTU towards `dst` (bpf_fib_lookup's `mtu_result`) minus the outer
/// header.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    f: &Flow,
    src: &Addr,
    dst: &Addr,
    port: u16,
    t: Option<&Target>,
) -> Result<Route, u32> {
    let hlen = outer_len(dst, port);
    let outer = f.l3_len + hlen;
    if outer > 0xffff {
        return Err(reason::TOO_BIG);
    }
    match nexthop::route(ctx, src, dst, outer as u16, t) {
        Route::TooBig(mtu) => {
            let usable = (mtu as usize).saturating_sub(hlen) as u32;
            Err(TOO_BIG | (usable & 0xffff))
        }
        r => Ok(r),
    }
}

/// Encapsulates the packet in an outer header `src` → `dst` (of `dst`'s family) carrying `port`
/// (0: none, see datapath::encap), after [`next_hop`] checked its length. Returns 0 or the drop
/// reason. Inlined into its one caller (crate::tunnel), whose frame holds the next hop.
#[inline(always)]
pub fn encap(ctx: &XdpContext, f: &Flow, src: &Addr, dst: &Addr, port: u16) -> u32 {
    // SAFETY: as in [`outer_len`].
    let outer_v6 = !unsafe { words::is_v4_mapped(dst) };
    match try_encap(ctx, f, src, dst, outer_v6, port) {
        Ok(()) => 0,
        Err(r) => r,
    }
}

#[inline(always)]
fn try_encap(
    ctx: &XdpContext,
    f: &Flow,
    src: &Addr,
    dst: &Addr,
    outer_v6: bool,
    port: u16,
) -> Result<(), u32> {
    let hlen = if outer_v6 {
        IPV6_HLEN
    } else {
        encap::outer_v4_len(port)
    };
    let inner_len = f.l3_len;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(hlen as i32)) } != 0 {
        return Err(reason::ERROR);
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    // Move the L2 header (MACs, and the VLAN tag if any) to the new front. The MACs are kept so a
    // packet the FIB cannot send yet still reaches the stack as addressed to this host.
    let eth = ptr_at::<EthHdr>(start, end, 0).ok_or(reason::ERROR)?;
    let old = ptr_at::<[u8; 18]>(start, end, hlen).ok_or(reason::ERROR)?;
    let ethertype: u16 = if outer_v6 { ETH_P_IPV6 } else { ETH_P_IP };
    unsafe {
        let o = &*old;
        (*eth).dst = [o[0], o[1], o[2], o[3], o[4], o[5]];
        (*eth).src = [o[6], o[7], o[8], o[9], o[10], o[11]];
        if f.vlan {
            let tag = ptr_at::<VlanHdr>(start, end, ETH_HLEN).ok_or(reason::ERROR)?;
            (*eth).proto = ETH_P_8021Q.to_be();
            (*tag).tci = u16::from_ne_bytes([(*old)[14], (*old)[15]]);
            (*tag).proto = ethertype.to_be();
            // 802.1ad outer tags are rewritten as 802.1Q: one tag is all the parser accepts anyway.
        } else {
            (*eth).proto = ethertype.to_be();
        }
    }
    let proto = encap::inner_proto(f);
    if outer_v6 {
        let ip = ptr_at::<Ipv6Hdr>(start, end, f.l3_off).ok_or(reason::ERROR)?;
        unsafe { *ip = encap::outer_v6(src, dst, inner_len as u16, proto, port) };
        return Ok(());
    }
    let hdr = encap::outer_v4(src, dst, f, encap::outer_id(f), port);
    if port != 0 {
        let ip = ptr_at::<encap::Outer4>(start, end, f.l3_off).ok_or(reason::ERROR)?;
        unsafe { *ip = hdr };
    } else {
        let ip = ptr_at::<Ipv4Hdr>(start, end, f.l3_off).ok_or(reason::ERROR)?;
        unsafe { *ip = hdr.ip };
    }
    Ok(())
}
