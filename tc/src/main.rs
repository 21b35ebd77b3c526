//! oxilium's tc programs.
//! - `oxilium_decap` runs on a DSR backend's ingress: it strips the outer IP header the edge LB
//!   added (IPIP, IPv6-in-IPv6, or mixed) so the inner client → VIP packet is delivered to the VIP
//!   the backend holds locally, and the backend answers the client directly. Only tunnels whose
//!   outer source is a configured LB (`OXI_TUNNEL_SOURCES`, `--tunnel-source`) are taken off;
//!   any other tunnel packet is dropped and counted (`tunnel_refused`).
//! - `oxilium_nodeport_ingress` / `oxilium_nodeport_egress` run on a Kubernetes node's external
//!   devices: NodePort, LoadBalancer and externalIPs from outside (datapath::nodeport).
#![no_std]
#![no_main]

mod endpoint;
mod nodeport;
mod pod;

use abi::lb::{Addr, MAX_TUNNEL_SOURCES, reason};
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::HashMap,
    macros::{btf_map, classifier},
    programs::TcContext,
};
use datapath::{
    encap,
    headers::*,
    parse::{self, Parsed},
    stats,
};

/// Outer source addresses tunnels are accepted from → 1 (see abi::lb::names::TUNNEL_SOURCES).
#[btf_map]
static OXI_TUNNEL_SOURCES: HashMap<Addr, u8, { MAX_TUNNEL_SOURCES as usize }> = HashMap::new();

#[classifier]
pub fn oxilium_decap(ctx: TcContext) -> i32 {
    let action = decap(&ctx);
    datapath::events::end();
    pass_on(action)
}

/// TCX's "no verdict" (`TCX_NEXT`, the value of `TC_ACT_UNSPEC`): the next program on the hook
/// runs, then the device's legacy tc filters (another CNI's, or a chained plugin's such as the
/// CNI `bandwidth` plugin's redirect to its ifb), then the stack. `TC_ACT_OK` from a TCX
/// program would end the hook there and skip them.
const TCX_NEXT: i32 = -1;

/// What a program returns for `action`: a packet it lets through goes on to whatever else the
/// hook holds; drops and redirects are final.
#[inline(always)]
pub(crate) fn pass_on(action: i32) -> i32 {
    if action == TC_ACT_OK {
        TCX_NEXT
    } else {
        action
    }
}

#[inline(always)]
fn decap(ctx: &TcContext) -> i32 {
    // Make the headers we read directly accessible (eth + VLAN + two IPv6 headers + ports).
    let _ = ctx.pull_data(ETH_HLEN as u32 + VLAN_HLEN as u32 + 2 * IPV6_HLEN as u32 + 4);
    begin(ctx, abi::event::PROG_TC_DECAP);
    let (start, end) = (ctx.data(), ctx.data_end());
    // Parsed into the scratch space, where a drop's event finds the tuple.
    let Some(s) = datapath::maps::scratch() else {
        return TC_ACT_OK;
    };
    let f = &mut s.flow;
    if parse::parse(start, end, ctx.len() as usize, f) != Parsed::Ip {
        return TC_ACT_OK;
    }
    if f.key.proto != IPPROTO_IPIP && f.key.proto != IPPROTO_IPV6 {
        return TC_ACT_OK;
    }
    // SAFETY: read-only lookup.
    if unsafe { OXI_TUNNEL_SOURCES.get(&f.key.src) }.is_none() {
        stats::drop(reason::TUNNEL_REFUSED, ctx.len() as u64);
        return TC_ACT_SHOT;
    }
    if !encap::decap_skb(ctx, f) {
        stats::drop(reason::ERROR, 0);
        return TC_ACT_SHOT;
    }
    stats::reason(reason::DECAP, 0);
    TC_ACT_OK
}

/// Starts a packet's events (datapath::events::begin) with the skb's interface and length.
#[inline(always)]
pub(crate) fn begin(ctx: &TcContext, prog: u8) {
    // SAFETY: reading the skb's fields.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    datapath::events::begin(prog, ifindex, ctx.len());
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
