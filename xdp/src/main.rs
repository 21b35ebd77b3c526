//! oxilium's XDP program: service translation at the NIC. Client → VIP packets are sent to a
//! backend by SNAT (rewrite) or DSR (IP-in-IP encapsulation); replies to SNAT'ed flows are
//! reverse-translated; everything else passes untouched. See docs/edge-lb.md for the edge cases.
#![no_std]
#![no_main]

mod encap;
mod icmp;
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
    fib::{self, Route},
    headers::{EthHdr, IPPROTO_TCP, IPPROTO_UDP},
    lb::{self, Target},
    maps, nat,
    parse::{self, Flow, Fragment, Parsed, ptr_at},
    stats,
};

#[xdp]
pub fn oxilium_lb(ctx: XdpContext) -> u32 {
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
        return icmp::error(&ctx, s, bytes);
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
    if let Some(svc) = lb::service(&f.key) {
        return forward(&ctx, f, &mut s.target, &mut s.rewrite, svc, bytes);
    }
    if let Some(e) = lb::snat_reply(f) {
        return reply(&ctx, f, &mut s.rewrite, e, bytes);
    }
    count(reason::PASS, bytes, XDP_PASS)
}

#[inline(always)]
fn count(r: u32, bytes: u64, action: u32) -> u32 {
    stats::reason(r, bytes);
    action
}

/// Client → VIP: pick the backend, then rewrite (SNAT) or encapsulate (DSR).
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    f: &Flow,
    t: &mut Target,
    new: &mut FlowKey,
    svc: &ServiceValue,
    bytes: u64,
) -> u32 {
    let r = lb::select(f, svc, bytes, t);
    if r != 0 {
        return count(r, bytes, XDP_DROP);
    }
    send(ctx, f, t, new, svc, bytes, 0)
}

/// Sends a client → VIP packet to the backend chosen in `t`: a flow without a SNAT port of a DSR
/// service is encapsulated (the outer header carrying `dsr_port`, see datapath::encap), any other
/// is rewritten to LB address:SNAT port. Both leave through [`transmit`].
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
        let r = encap::encap(ctx, f, lb_src, &b.addr, dsr_port);
        return match r {
            0 => count(reason::FWD_DSR, bytes, transmit(ctx, f, lb_src, &b.addr, 0)),
            r if r & encap::TOO_BIG != 0 => icmp::too_big(ctx, f, r as u16, bytes),
            r => count(r, bytes, XDP_DROP),
        };
    }
    new.src = *lb_src;
    new.dst = b.addr;
    new.sport = t.snat_port;
    new.dport = b.port;
    new.proto = f.key.proto;
    if rewrite(ctx, f, new).is_err() {
        return count(reason::MALFORMED, bytes, XDP_DROP);
    }
    count(
        reason::FWD_SNAT,
        bytes,
        transmit(ctx, f, &new.src, &new.dst, 0),
    )
}

/// Backend → LB (SNAT reply): restore VIP → client and send it back towards the client.
#[inline(always)]
fn reply(ctx: &XdpContext, f: &Flow, new: &mut FlowKey, e: &SnatEntry, bytes: u64) -> u32 {
    new.src = e.vip;
    new.dst = e.client;
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
        transmit(ctx, f, &new.src, &new.dst, 0),
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

/// Sends a translated packet to its next hop: MACs from the FIB, XDP_TX on the same interface
/// (always for VLAN-tagged frames: the tag belongs to the ingress trunk), XDP_REDIRECT otherwise.
/// Without a resolved neighbour the packet goes up the stack, which resolves it and forwards.
#[inline(never)]
fn transmit(ctx: &XdpContext, f: &Flow, src: &Addr, dst: &Addr, tot_len: u16) -> u32 {
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    match fib::lookup(
        ctx.ctx as *mut _,
        ingress,
        !abi::lb::is_v4_mapped(dst),
        src,
        dst,
        tot_len,
    ) {
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
