//! The endpoint programs on the host side of every pod veth the CNI plugin made (tc/:
//! `oxilium_endpoint_from_pod` on its ingress, `oxilium_endpoint_to_pod` on its egress).
//!
//! From the pod, in order:
//! 1. service translation: the pod fallback of [`crate::podlb::from_pod`] (a packet to a
//!    `SCOPE_INTERNAL` frontend the socket LB did not translate at connect());
//! 2. the source endpoint's egress policy ([`crate::policy::egress`]); a flow it redirects to an
//!    L7 proxy ([`crate::proxy`]) goes to the node's stack here; then the pod's egress rate
//!    ([`crate::bandwidth`]);
//! 3. delivery: a destination in `OXI_ENDPOINTS` (a pod of this node) has its TTL / hop limit
//!    decremented like a routed packet (one at its last hop goes to the stack instead, which
//!    answers "time exceeded"), gets the destination endpoint's to-pod work done here ([`to_pod`]:
//!    reply translation, and its ingress policy
//!    hook), its MACs set and is handed straight into the destination pod's namespace with
//!    bpf_redirect_peer (its host veth's egress is skipped, the stack is not crossed). Anything
//!    else goes on (TC_ACT_OK) to the node's routing: other nodes, the host, outside.
//!
//! To the pod ([`to_pod`]): what the stack routes to the pod (from the host, other nodes,
//! outside): the pod's ingress policy ([`crate::policy::ingress`]), then reply translation
//! ([`crate::podlb::to_pod`]). A flow the ingress policy hands to an L7 proxy is sent back to
//! the veth's ingress ([`crate::stack_redirect`]), where the from-pod program redirects it.
use crate::{
    bandwidth,
    headers::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
    podlb::{self, PodMaps},
    policy, proxy,
    skb::set_macs,
    stack_redirect,
};
use abi::{
    endpoint::{EndpointInfo, EndpointKey, MAX_ENDPOINTS},
    lb::{Addr, v4_mapped},
};
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::HashMap,
    helpers::generated::bpf_redirect_peer,
    macros::btf_map,
    programs::TcContext,
};

/// Pod address → local endpoint (abi::endpoint::names::ENDPOINTS).
#[btf_map]
pub static OXI_ENDPOINTS: HashMap<EndpointKey, EndpointInfo, { MAX_ENDPOINTS as usize }> =
    HashMap::new();

/// tc ingress of a pod's host-side veth (packets leaving the pod).
#[inline(always)]
pub fn from_pod<M: PodMaps>(ctx: &TcContext) -> i32 {
    // Sent back by this veth's to-pod hook to be handed to a proxy: not the pod's packet, only
    // the destination's ingress check (at tc ingress now) is done again.
    if stack_redirect::bounced(ctx) {
        return policy::ingress(ctx, true);
    }
    let r = podlb::from_pod::<M>(ctx);
    if r != TC_ACT_OK {
        return r;
    }
    // The source endpoint's egress policy, on the translated packet (the backend chosen).
    let r = policy::egress(ctx);
    if r != TC_ACT_OK {
        return r;
    }
    // Handed to an L7 proxy by the egress policy: the node's stack delivers it.
    if proxy::redirected(ctx) {
        return TC_ACT_OK;
    }
    // The source pod's egress rate.
    let r = bandwidth::from_pod(ctx);
    if r != TC_ACT_OK {
        return r;
    }
    let Some(dst) = destination(ctx) else {
        return TC_ACT_OK;
    };
    // SAFETY: read-only lookup; the value is copied.
    let Some(ep) = (unsafe { OXI_ENDPOINTS.get(&EndpointKey { addr: dst }) }).copied() else {
        return TC_ACT_OK;
    };
    // A hop, as the stack would count it; a packet at its last hop goes to the stack, which
    // drops it and answers "time exceeded".
    if decrement_ttl(ctx).is_err() {
        return TC_ACT_OK;
    }
    // The destination's own to-pod program is skipped by the redirect: its work is done here.
    let r = deliver::<M>(ctx, true);
    if r != TC_ACT_OK {
        return r;
    }
    // Handed to an L7 proxy by the destination's ingress policy.
    if proxy::redirected(ctx) {
        return TC_ACT_OK;
    }
    let r = bandwidth::to_pod(ctx, ep.ifindex);
    if r != TC_ACT_OK {
        return r;
    }
    if set_macs(ctx, &ep.mac, &ep.node_mac).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: plain helper call; TC_ACT_REDIRECT on success, TC_ACT_SHOT otherwise.
    unsafe { bpf_redirect_peer(ep.ifindex, 0) as i32 }
}

/// tc egress of a pod's host-side veth (packets to the pod).
#[inline(always)]
pub fn to_pod<M: PodMaps>(ctx: &TcContext) -> i32 {
    deliver::<M>(ctx, false)
}

/// The to-pod work: on the pod's tc egress, or (`at_ingress`) the to-pod half of a local
/// delivery in the sender's from-pod program.
#[inline(always)]
fn deliver<M: PodMaps>(ctx: &TcContext, at_ingress: bool) -> i32 {
    // The destination endpoint's ingress policy, before reply translation (the packet still
    // carries the backend's address, the one the policy conntrack knows).
    let r = policy::ingress(ctx, at_ingress);
    if r != TC_ACT_OK {
        return r;
    }
    podlb::to_pod::<M>(ctx)
}

/// Decrements the IPv4 TTL (the header checksum follows, bpf_l3_csum_replace) or the IPv6 hop
/// limit of the frame; Err, changing nothing, when it is 1 or less (or the header is short).
#[inline(always)]
fn decrement_ttl(ctx: &TcContext) -> Result<(), ()> {
    let proto: u16 = ctx.load(12).map_err(|_| ())?;
    match u16::from_be(proto) {
        ETH_P_IP => {
            // TTL and protocol: one 16-bit word of the header checksum, TTL its first byte.
            let off = ETH_HLEN + 8;
            let old: u16 = ctx.load(off).map_err(|_| ())?;
            let bytes = old.to_ne_bytes();
            if bytes[0] <= 1 {
                return Err(());
            }
            let new = u16::from_ne_bytes([bytes[0] - 1, bytes[1]]);
            ctx.l3_csum_replace(ETH_HLEN + 10, old as u64, new as u64, 2)
                .map_err(|_| ())?;
            ctx.store(off, &new, 0).map_err(|_| ())
        }
        ETH_P_IPV6 => {
            let off = ETH_HLEN + 7;
            let hops: u8 = ctx.load(off).map_err(|_| ())?;
            if hops <= 1 {
                return Err(());
            }
            ctx.store(off, &(hops - 1), 0).map_err(|_| ())
        }
        _ => Err(()),
    }
}

/// The IP destination of an Ethernet frame (IPv4 as IPv4-mapped); None for anything else.
#[inline(always)]
fn destination(ctx: &TcContext) -> Option<Addr> {
    let proto: u16 = ctx.load(12).ok()?;
    match u16::from_be(proto) {
        ETH_P_IP => Some(v4_mapped(ctx.load::<[u8; 4]>(ETH_HLEN + 16).ok()?)),
        ETH_P_IPV6 => ctx.load::<[u8; 16]>(ETH_HLEN + 24).ok(),
        _ => None,
    }
}
