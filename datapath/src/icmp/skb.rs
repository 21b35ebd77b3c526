//! The tc side of ICMP error translation (NodePort on the external devices, the DSR receiving
//! node, the pod path): the hooks call these once `skb::parse_tc` has returned an ICMP error.
//! The error (never a GSO skb, at most 576 / 1280 bytes) is made linear up to the deepest header
//! read and rewritten by direct packet access ([`super::translate`]); its checksums stay right
//! and its total sum unchanged, so any checksum state the skb is in stays valid.
use super::{
    flow_entry, parse_quoted, reply_entry, to_client, to_dnat_backend, to_snat_backend, translate,
};
use crate::{
    encap, lb,
    maps::{OXI_SNAT, Scratch},
    nodeport::NodePortMaps,
    skb::{PULL_MAX, set_macs, transmit},
    stats,
};
use abi::lb::{Addr, FAMILY_V6, reason};
use abi::nodeport::Endpoint;
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::bpf_redirect,
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
pub fn reply(ctx: &TcContext, s: &mut Scratch) -> bool {
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
    if reply(ctx, s) {
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
    if c.snat_port != 0 {
        to_snat_backend(&mut s.quoted, b, node, c.snat_port, &mut s.rewrite);
    } else if let Some(ep) = unsafe { M::endpoints().get(&b.addr) } {
        // SAFETY (above): read-only lookup of a value the agent writes whole.
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
