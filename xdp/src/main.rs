//! oxilium's XDP program: service translation at the NIC. Client → VIP packets are sent to a
//! backend by SNAT (rewrite) or DSR (IP-in-IP encapsulation); replies to SNAT'ed flows are
//! reverse-translated; everything else passes untouched. See docs/edge-lb.md for the edge cases.
#![no_std]
#![no_main]

mod encap;
mod icmp;
mod nexthop;
mod nodeport;
mod partial;

use abi::lb::{Addr, FAMILY_V6, FlowKey, MODE_DSR, ServiceValue, SnatEntry, reason};
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::bpf_redirect,
    macros::xdp,
    programs::XdpContext,
};
use datapath::{
    events,
    fib::Route,
    headers::{EthHdr, IPPROTO_TCP, IPPROTO_UDP},
    lb::{self, FlowService, Target},
    maps, nat,
    parse::{self, Flow, Fragment, Parsed, ptr_at},
    stats, words,
};

#[xdp]
pub fn oxilium_lb(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u32;
    events::begin(
        abi::event::PROG_XDP_LB,
        unsafe { (*ctx.ctx).ingress_ifindex },
        bytes,
    );
    let action = lb_packet(&ctx);
    events::end();
    action
}

#[inline(always)]
fn lb_packet(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let bytes = (end - start) as u64;
    let Some(s) = maps::scratch() else {
        return XDP_PASS;
    };
    let f = &mut s.flow;
    match parse::parse(start, end, end - start, f) {
        Parsed::Ip => {}
        Parsed::NotIp => return XDP_PASS,
        Parsed::Malformed => return count(reason::MALFORMED, bytes, XDP_PASS),
    }
    if f.icmp_error {
        return match icmp::error(ctx, s, bytes) {
            icmp::TUNNEL => icmp::tunnel_error(ctx, s, bytes),
            action => action,
        };
    }
    if f.key.proto != IPPROTO_TCP && f.key.proto != IPPROTO_UDP {
        return count(reason::PASS, bytes, XDP_PASS);
    }
    if f.frag != Fragment::No {
        // No ports in later fragments: never translate, never let one reach a VIP's route.
        if lb::is_vip(&f.key.dst) {
            return count(reason::FRAGMENT, bytes, XDP_DROP);
        }
        return count(reason::PASS, bytes, XDP_PASS);
    }
    let f = &s.flow;
    // An established flow's service comes with its conntrack entry (lb::flow_service: by id,
    // no frontend hash), except towards the LB's own address, where SNAT replies arrive.
    let t = &mut s.target;
    let fast = if lb::to_lb_addr(f) {
        FlowService::Other
    } else {
        lb::flow_service(&f.key)
    };
    let (svc, r) = match fast {
        FlowService::Found(svc, e) => {
            if lb::use_entry(f, svc, e, bytes, t, lb::clock()) {
                (svc, 0)
            } else {
                // Expired, closed or stale: a new selection, as for a flow without an entry.
                (svc, lb::select(f, svc, bytes, t))
            }
        }
        other => match lb::service(&f.key) {
            Some(svc) if matches!(other, FlowService::NoEntry) => {
                (svc, lb::select_new(f, svc, bytes, t))
            }
            Some(svc) => (svc, lb::select(f, svc, bytes, t)),
            None => {
                if let Some(e) = lb::snat_reply(f) {
                    return reply(ctx, f, &mut s.rewrite, e, bytes);
                }
                return count(reason::PASS, bytes, XDP_PASS);
            }
        },
    };
    if r != 0 {
        return count(r, bytes, XDP_DROP);
    }
    send(ctx, f, t, &mut s.rewrite, svc, bytes, 0)
}

#[inline(always)]
fn count(r: u32, bytes: u64, action: u32) -> u32 {
    if action == XDP_DROP {
        stats::drop(r, bytes);
    } else {
        stats::reason(r, bytes);
    }
    action
}

/// Sends a client → VIP packet to the backend chosen in `t` (lb::use_entry or lb::select): a
/// flow without a SNAT port of a DSR service is encapsulated (the outer header carrying
/// `dsr_port`, see datapath::encap), any other is rewritten to LB address:SNAT port
/// ([`transmit`]).
#[inline(always)]
fn send(
    ctx: &XdpContext,
    f: &Flow,
    t: &Target,
    new: &mut FlowKey,
    svc: &ServiceValue,
    bytes: u64,
    dsr_port: u16,
) -> u32 {
    let b = &t.backend;
    let Some(lb_src) = lb::lb_addr(b.family == FAMILY_V6) else {
        return count(reason::ERROR, bytes, XDP_DROP);
    };
    stats::service(svc.id, bytes);
    stats::backend(t.backend_id, bytes);
    if t.snat_port == 0 {
        if svc.mode != MODE_DSR {
            // Pinned while the service was in DSR mode: no SNAT port to reuse.
            return count(reason::NO_BACKEND, bytes, XDP_DROP);
        }
        let r = tunnel(ctx, f, lb_src, t, dsr_port);
        return match r {
            r if r & SENT != 0 => count(reason::FWD_DSR, bytes, r & 0xffff),
            r if r & encap::TOO_BIG != 0 => icmp::too_big(ctx, f, r as u16, bytes),
            r => count(r, bytes, XDP_DROP),
        };
    }
    // SAFETY: the scratch space's key, a map value's and the target's addresses: 4-aligned.
    unsafe {
        words::copy_addr(&mut new.src, lb_src);
        words::copy_addr(&mut new.dst, &b.addr);
    }
    new.sport = t.snat_port;
    new.dport = b.port;
    new.proto = f.key.proto;
    if rewrite(ctx, f, new).is_err() {
        return count(reason::MALFORMED, bytes, XDP_DROP);
    }
    count(
        reason::FWD_SNAT,
        bytes,
        transmit(ctx, f, &new.src, &new.dst, Some(t)),
    )
}

/// What [`tunnel`] returns with the XDP action in the low 16 bits once the packet is sent.
const SENT: u32 = 1 << 17;

/// DSR: encapsulates the packet `src` → `t`'s backend carrying `port` (crate::encap) and sends
/// it to the next hop (crate::nexthop: cached while `t.now` is set). Returns [`SENT`] | the XDP
/// action, `encap::TOO_BIG` | the usable MTU (the packet unchanged), or the drop reason. A frame
/// of its own: the FIB lookup's arguments take stack.
#[inline(never)]
fn tunnel(ctx: &XdpContext, f: &Flow, src: &Addr, t: &Target, port: u16) -> u32 {
    let dst = &t.backend.addr;
    let route = match encap::next_hop(ctx, f, src, dst, port, Some(t)) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match encap::encap(ctx, f, src, dst, port) {
        0 => SENT | transmit_via(ctx, f, &route),
        r => r,
    }
}

/// Backend → LB (SNAT reply): restore VIP → client and send it back towards the client.
#[inline(always)]
fn reply(ctx: &XdpContext, f: &Flow, new: &mut FlowKey, e: &SnatEntry, bytes: u64) -> u32 {
    // SAFETY: as in [`send`].
    unsafe {
        words::copy_addr(&mut new.src, &e.vip);
        words::copy_addr(&mut new.dst, &e.client);
    }
    new.sport = e.vip_port;
    new.dport = e.client_port;
    new.proto = f.key.proto;
    if rewrite(ctx, f, new).is_err() {
        return count(reason::MALFORMED, bytes, XDP_DROP);
    }
    stats::service(e.service_id, bytes);
    count(
        reason::REV_SNAT,
        bytes,
        transmit(ctx, f, &new.src, &new.dst, None),
    )
}

/// Rewrites the flow's addresses and ports (datapath::nat), keeping the checksum seed of a
/// CHECKSUM_PARTIAL skb right in generic mode (see [`partial`]). A frame of its own: the
/// verifier sums the stack of a call chain.
#[inline(never)]
fn rewrite(ctx: &XdpContext, f: &Flow, new: &FlowKey) -> Result<(), ()> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let seed = partial::partial_seed(start, end, f);
    nat::rewrite(start, end, f, new)?;
    if let Some(s) = seed {
        partial::fix_seed(start, end, f, new, s).ok_or(())?;
    }
    Ok(())
}

/// Sends a translated packet to its next hop: [`transmit_via`] the route from `src` to `dst`
/// (crate::nexthop: `t` is the flow's target when `dst` is its backend, `None` for no cache).
#[inline(never)]
fn transmit(ctx: &XdpContext, f: &Flow, src: &Addr, dst: &Addr, t: Option<&Target>) -> u32 {
    let route = nexthop::route(ctx, src, dst, 0, t);
    transmit_via(ctx, f, &route)
}

/// Sends a translated packet by `route`: MACs from the FIB, XDP_TX on the same interface (always
/// for VLAN-tagged frames: the tag belongs to the ingress trunk), XDP_REDIRECT otherwise.
/// Without a resolved neighbour the packet goes up the stack, which resolves it and forwards.
#[inline(always)]
fn transmit_via(ctx: &XdpContext, f: &Flow, route: &Route) -> u32 {
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    match *route {
        Route::Via {
            ifindex,
            smac,
            dmac,
        } => {
            let Some(eth) = ptr_at::<EthHdr>(ctx.data(), ctx.data_end(), 0) else {
                return XDP_DROP;
            };
            unsafe {
                (*eth).src = smac;
                (*eth).dst = dmac;
            }
            if ifindex == ingress || f.vlan {
                XDP_TX
            } else {
                unsafe { bpf_redirect(ifindex, 0) as u32 }
            }
        }
        Route::NoNeighbour | Route::None => {
            stats::reason(reason::FIB_PASS, 0);
            XDP_PASS
        }
        Route::TooBig(_) => XDP_DROP,
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
