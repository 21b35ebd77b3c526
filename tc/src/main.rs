//! oxilium's tc programs.
//! - `oxilium_decap` runs on a DSR backend's ingress: it strips the outer IP header the edge LB
//!   added (IPIP, IPv6-in-IPv6, or mixed) so the inner client → VIP packet is delivered to the VIP
//!   the backend holds locally, and the backend answers the client directly.
//! - `oxilium_nodeport_ingress` / `oxilium_nodeport_egress` run on a Kubernetes node's external
//!   devices: NodePort, LoadBalancer and externalIPs from outside (datapath::nodeport).
#![no_std]
#![no_main]

mod nodeport;
mod pod;

use abi::lb::reason;
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_DECAP_L3_IPV6, TC_ACT_OK, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    macros::classifier,
    programs::TcContext,
};
use datapath::{
    headers::*,
    parse::{self, Flow, Parsed, ptr_at},
    stats,
};

#[classifier]
pub fn oxilium_decap(ctx: TcContext) -> i32 {
    // Make the headers we read directly accessible (eth + VLAN + two IPv6 headers + ports).
    let _ = ctx.pull_data(ETH_HLEN as u32 + VLAN_HLEN as u32 + 2 * IPV6_HLEN as u32 + 4);
    let (start, end) = (ctx.data(), ctx.data_end());
    let mut f = Flow::new();
    if parse::parse(start, end, &mut f) != Parsed::Ip {
        return TC_ACT_OK;
    }
    let inner_v6 = match f.key.proto {
        IPPROTO_IPIP => false,
        IPPROTO_IPV6 => true,
        _ => return TC_ACT_OK,
    };
    let outer_len = (f.l4_off - f.l3_off) as i32;
    let flags = if inner_v6 {
        BPF_F_ADJ_ROOM_DECAP_L3_IPV6
    } else {
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4
    };
    if ctx
        .adjust_room(-outer_len, BPF_ADJ_ROOM_MAC, flags as u64)
        .is_err()
    {
        stats::reason(reason::ERROR, 0);
        return TC_ACT_SHOT;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let proto_off = if f.vlan { ETH_HLEN + 2 } else { ETH_HLEN - 2 };
    let Some(p) = ptr_at::<u16>(start, end, proto_off) else {
        return TC_ACT_SHOT;
    };
    unsafe { *p = if inner_v6 { ETH_P_IPV6 } else { ETH_P_IP }.to_be() };
    stats::reason(reason::DECAP, 0);
    TC_ACT_OK
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
