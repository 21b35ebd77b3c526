//! The tc side of ICMP error translation (NodePort on the external devices, the DSR receiving
//! node, the pod path): the hooks call these once `skb::parse_tc` has returned an ICMP error.
//! The error (never a GSO skb, at most 576 / 1280 bytes) is made linear up to the deepest header
//! read and rewritten by direct packet access ([`super::translate`]); its checksums stay right
//! and its total sum unchanged, so any checksum state the skb is in stays valid.
use super::{
    flow_entry, parse_quoted, reply, reply_entry, to_client, to_dnat_backend, to_snat_backend,
    translate,
};
use crate::{
    encap,
    fib::{self, Route},
    headers::*,
    lb,
    maps::{OXI_SNAT, Scratch},
    nodeport::NodePortMaps,
    parse::{Flow, ptr_at},
    skb::{PULL_MAX, set_macs, transmit},
    stats,
};
use abi::lb::{Addr, FAMILY_V6, reason};
use abi::nodeport::Endpoint;
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::generated::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};

/// Makes the error's headers linear and parses what it quotes into `s.quoted`. False: not an
/// error translated here.
#[inline(never)]
pub fn prepare(ctx: &TcContext, s: &mut Scratch) -> bool {
    let len = ctx.len();
    let _ = ctx.pull_data(len.min(PULL_MAX));
    parse_quoted(ctx.data(), ctx.data_end(), &s.flow, &mut s.quoted)
}

/// A backend-side error (it quotes a translated packet as the backend saw it): rewritten in
/// place to reach the client (outer header `s.quoted.outer_src` → `outer_dst`). False when it
/// quotes no translated flow, or the rewrite failed (nothing changed then).
#[inline(never)]
pub fn backend_side(ctx: &TcContext, s: &mut Scratch) -> bool {
    let Some(e) = reply_entry(&s.quoted, &mut s.reply) else {
        return false;
    };
    to_client(&mut s.quoted, e, &mut s.rewrite);
    translate(ctx.data(), ctx.data_end(), &s.flow, &s.quoted, &s.rewrite).is_ok()
}

/// Counts an error passed untouched (`icmp_error`) and lets it go on.
#[inline(always)]
pub fn pass(bytes: u64) -> i32 {
    stats::reason(reason::ICMP_ERROR, bytes);
    TC_ACT_OK as i32
}

#[inline(always)]
fn translated(bytes: u64) {
    stats::reason(reason::ICMP_XLATE, bytes);
}

/// NodePort, tc ingress of an external device: a remote backend's error about a SNAT'ed packet
/// goes to the client; a client's error about a reply it got from a frontend goes to the
/// backend (rewritten to the node's SNAT address and port, DNAT'ed to a pod of this node, or
/// tunnelled to a DSR backend's node with the backend port, like the flow's packets).
#[inline(never)]
pub fn nodeport_ingress<M: NodePortMaps>(ctx: &TcContext, s: &mut Scratch, bytes: u64) -> i32 {
    if !prepare(ctx, s) {
        return pass(bytes);
    }
    if backend_side(ctx, s) {
        translated(bytes);
        return transmit(ctx, s.flow.v6, &s.quoted.outer_src, &s.quoted.outer_dst);
    }
    let Some((c, b)) = flow_entry(&s.quoted, &mut s.reply) else {
        return pass(bytes);
    };
    let f = &s.flow;
    if (b.family == FAMILY_V6) != f.v6 {
        return pass(bytes);
    }
    let Some(node) = lb::lb_addr(f.v6) else {
        return pass(bytes);
    };
    // SAFETY: read-only lookup of a value the agent writes whole.
    let local = unsafe { M::endpoints().get(&b.addr) };
    if c.snat_port != 0 {
        to_snat_backend(&mut s.quoted, b, node, c.snat_port, &mut s.rewrite);
    } else if let Some(ep) = local {
        to_dnat_backend(&mut s.quoted, f, &b.addr, b.port, &mut s.rewrite);
        return to_pod(ctx, s, ep, bytes);
    } else {
        // DSR: the backend's node takes the tunnel off and DNATs the error (`tunnelled`).
        if !encap::encap_skb(ctx, f, node, &b.addr, b.port) {
            return TC_ACT_SHOT as i32;
        }
        translated(bytes);
        return transmit(ctx, f.v6, node, &b.addr);
    }
    if translate(ctx.data(), ctx.data_end(), f, &s.quoted, &s.rewrite).is_err() {
        return pass(bytes);
    }
    translated(bytes);
    transmit(ctx, f.v6, &s.quoted.outer_src, &s.quoted.outer_dst)
}

/// Translates as `s.rewrite` / `s.quoted` say and redirects to the pod's veth.
#[inline(always)]
fn to_pod(ctx: &TcContext, s: &Scratch, ep: &Endpoint, bytes: u64) -> i32 {
    if translate(ctx.data(), ctx.data_end(), &s.flow, &s.quoted, &s.rewrite).is_err() {
        return pass(bytes);
    }
    if set_macs(ctx, &ep.mac, &ep.node_mac).is_err() {
        return TC_ACT_SHOT as i32;
    }
    translated(bytes);
    unsafe { bpf_redirect(ep.ifindex, 0) as i32 }
}

/// NodePort DSR, receiving node: the inner packet of a tunnel to `backend` (a pod of this node,
/// `ep`) carrying `port` is a client's error about a reply the pod sent through the DSR path
/// (quoting frontend → client): DNAT'ed to the pod if the pod's reply entry for that client and
/// frontend exists, else dropped (its destination, another node's address, is not ours).
#[inline(never)]
pub fn tunnelled(
    ctx: &TcContext,
    s: &mut Scratch,
    backend: &Addr,
    port: u16,
    ep: &Endpoint,
) -> i32 {
    let bytes = ctx.len() as u64;
    if !prepare(ctx, s) {
        return pass(bytes);
    }
    let q = &s.quoted;
    let k = &mut s.reply;
    k.src = *backend;
    k.dst = q.key.dst;
    k.sport = port;
    k.dport = q.key.dport;
    k.proto = q.key.proto;
    k._pad = [0; 3];
    // SAFETY: read-only use of an LRU value.
    let known = unsafe { OXI_SNAT.get(&*k) }
        .is_some_and(|e| e.vip == q.key.src && e.vip_port == q.key.sport);
    if !known {
        return pass(bytes);
    }
    to_dnat_backend(&mut s.quoted, &s.flow, backend, port, &mut s.rewrite);
    to_pod(ctx, s, ep, bytes)
}

/// Where a translated error goes from a hook that lets packets continue (tc egress, the pod
/// path): on its way (TC_ACT_OK), counted.
#[inline(always)]
pub fn continue_translated(bytes: u64) -> i32 {
    translated(bytes);
    TC_ACT_OK as i32
}

/// The pod path, packets leaving a pod: the pod's error about a reply it got from a service
/// (quoting frontend → pod) goes to the backend, DNAT'ed (the pod path never SNATs).
#[inline(never)]
pub fn from_pod(ctx: &TcContext, s: &mut Scratch, bytes: u64) -> i32 {
    if !prepare(ctx, s) {
        return TC_ACT_OK as i32;
    }
    let Some((c, b)) = flow_entry(&s.quoted, &mut s.reply) else {
        return TC_ACT_OK as i32;
    };
    if c.snat_port != 0 || (b.family == FAMILY_V6) != s.flow.v6 {
        return TC_ACT_OK as i32;
    }
    to_dnat_backend(&mut s.quoted, &s.flow, &b.addr, b.port, &mut s.rewrite);
    if translate(ctx.data(), ctx.data_end(), &s.flow, &s.quoted, &s.rewrite).is_err() {
        return TC_ACT_OK as i32;
    }
    continue_translated(bytes)
}

/// Packets at most this long once wrapped are not checked by [`encap_too_big`] (IPv6's minimum
/// link MTU).
pub const MIN_CHECKED: usize = 1280;

/// DSR at tc: the usable MTU (the route's towards `dst`, from bpf_fib_lookup, minus the tunnel's
/// `hlen` bytes) when the flow's packet would not fit once wrapped; 0 when it fits or the route
/// is unknown (sending decides then). A GSO skb is judged by its segments: the encapsulation
/// shrinks `gso_size` by `hlen`, so each segment keeps its size on the wire (inner headers +
/// `gso_size`) and fits if that size does; any other packet grows by `hlen`.
#[inline(never)]
pub fn encap_too_big(ctx: &TcContext, f: &Flow, src: &Addr, dst: &Addr, hlen: usize) -> u16 {
    let skb = ctx.skb.skb;
    // SAFETY: reads of the program's own context.
    let (gso, ingress) = unsafe { ((*skb).gso_size as usize, (*skb).ingress_ifindex) };
    let len = if gso != 0 {
        let l4 = if f.key.proto == IPPROTO_TCP {
            // Two bytes (data offset, flags): a one-byte read's bound check is one the
            // verifier cannot use.
            match ptr_at::<[u8; 2]>(ctx.data(), ctx.data_end(), f.l4_off + 12) {
                Some(d) => ((unsafe { (*d)[0] } >> 4) as usize) * 4,
                None => return 0,
            }
        } else {
            UDP_HLEN
        };
        gso + (f.l4_off - f.l3_off) + l4
    } else {
        f.l3_len + hlen
    };
    // Small packets skip the lookup (a FIB lookup costs as much as a whole fast path): no link
    // carries less than IPv6's minimum MTU between nodes.
    if len <= MIN_CHECKED || len > 0xffff {
        return 0;
    }
    match fib::lookup(skb as *mut _, ingress, f.v6, src, dst, len as u16) {
        Route::TooBig(mtu) if mtu as usize > hlen => (mtu as usize - hlen) as u16,
        _ => 0,
    }
}

/// Answers the flow's packet (too big by [`encap_too_big`]: `mtu` is the usable MTU) with ICMP
/// "fragmentation needed" (IPv4 with DF; without DF it is dropped, `too_big`) or ICMPv6 "packet
/// too big", from the frontend back to the client, out of the device it came in on (MACs
/// swapped): the skb is cut to the quote (bpf_skb_change_tail, which also ends a GSO skb's GSO
/// state), the IP + ICMP headers inserted after the L2 header (bpf_skb_adjust_room) and written
/// like the XDP LB's ([`super::reply`]).
#[inline(never)]
pub fn too_big(ctx: &TcContext, f: &Flow, mtu: u16) -> i32 {
    let bytes = ctx.len() as u64;
    if !f.v6 && !f.df {
        stats::reason(reason::TOO_BIG, bytes);
        return TC_ACT_SHOT as i32;
    }
    let v6 = f.v6;
    // The L2 length as a constant the verifier can bound (the tag flag, not the stored offset).
    let l2 = if f.vlan {
        ETH_HLEN + VLAN_HLEN
    } else {
        ETH_HLEN
    };
    let quote = reply::quote_len(v6, f.l3_len);
    let hl = reply::headers_len(v6);
    let skb = ctx.skb.skb;
    // SAFETY: helpers on the program's own skb.
    let ok = l2 == f.l3_off
        && unsafe { bpf_skb_change_tail(skb, (l2 + quote) as u32, 0) } == 0
        && ctx.adjust_room(hl as i32, BPF_ADJ_ROOM_MAC, 0).is_ok()
        && ctx.pull_data((l2 + hl + quote) as u32).is_ok();
    if !ok {
        stats::reason(reason::ERROR, bytes);
        return TC_ACT_SHOT as i32;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(eth) = ptr_at::<[u8; 12]>(start, end, 0) else {
        return TC_ACT_SHOT as i32;
    };
    unsafe {
        let o = *eth;
        let mut n = o;
        let mut i = 0;
        while i < 6 {
            n[i] = o[6 + i];
            n[6 + i] = o[i];
            i += 1;
        }
        *eth = n;
    }
    if reply::write(start, end, l2, v6, &f.key.dst, &f.key.src, quote, mtu).is_err() {
        stats::reason(reason::ERROR, bytes);
        return TC_ACT_SHOT as i32;
    }
    stats::reason(reason::ICMP_TOO_BIG, bytes);
    // SAFETY: as above.
    unsafe { bpf_redirect((*skb).ingress_ifindex, 0) as i32 }
}
