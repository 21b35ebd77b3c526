//! The L7 redirect of packets that reach a pod through the node's stack (docs/l7.md, "The
//! redirect"): from another node (natively routed or out of a tunnel), from the node itself, a
//! NodePort flow delivered to a local backend. They meet the pod's ingress policy on the to-pod
//! hook, tc egress of the pod's host-side veth, where no socket can be assigned.
//!
//! - A packet the to-pod hook's policy hands to a proxy is sent back into the node through the
//!   same veth's ingress ([`to_ingress`]: MACs swapped so the frame is addressed to the veth,
//!   [`MARK_BOUNCED`], `bpf_redirect` with `BPF_F_INGRESS`). There the from-pod program sees the
//!   mark ([`bounced`]) and runs the destination's ingress check again, at tc ingress: it finds
//!   the flow's policy conntrack entry (made by the to-pod hook, naming the proxy) and assigns
//!   the proxy's listener (crate::proxy). A pod cannot send a packet with the mark: crossing
//!   network namespaces clears it.
//! - Once the proxy holds the connection, the stack's early demultiplexing finds the proxy's
//!   socket (its local address is the pod's) for the flow's later packets as they enter the
//!   node, and a packet with a socket attached is never forwarded: the stack would drop it before
//!   it reaches the pod's veth. So on tc ingress of the node's external devices
//!   (`oxilium_l7_netdev`, before the NodePort program), a TCP packet of such a flow gets
//!   [`MARK_TO_PROXY`] at once ([`mark_established`]), and the fwmark rule delivers it locally to
//!   that socket.
use crate::{endpoint::OXI_ENDPOINTS, parse::Flow, policy::OXI_POLICY_CT};
use abi::{
    endpoint::EndpointKey,
    policy::{CT_TIMEOUT_TCP_NS, DIR_INGRESS, PolicyCtKey, ep_flags},
    proxy::{MARK_BOUNCED, MARK_MASK, MARK_TO_PROXY},
};
use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_SHOT},
    helpers::{bpf_ktime_get_ns, generated::bpf_redirect},
    programs::TcContext,
};

const PROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Sends the packet (on tc egress of a pod's host-side veth) to the same veth's tc ingress:
/// TC_ACT_REDIRECT, or TC_ACT_SHOT. The frame's source MAC on the to-pod hook is the veth's own
/// (the stack's, or the one the NodePort program set), so the swapped frame is addressed to the
/// veth and the stack takes it as its own (PACKET_HOST).
#[inline(never)]
pub fn to_ingress(ctx: &TcContext) -> i32 {
    let Ok(dst) = ctx.load::<[u8; 6]>(0) else {
        return TC_ACT_SHOT;
    };
    let Ok(src) = ctx.load::<[u8; 6]>(6) else {
        return TC_ACT_SHOT;
    };
    if ctx.store(0, &src, 0).is_err() || ctx.store(6, &dst, 0).is_err() {
        return TC_ACT_SHOT;
    }
    ctx.set_mark(MARK_BOUNCED);
    // SAFETY: reading a field of the program's own skb; plain helper call.
    unsafe {
        let ifindex = (*ctx.skb.skb).ifindex;
        bpf_redirect(ifindex, BPF_F_INGRESS as u64) as i32
    }
}

/// True for a packet [`to_ingress`] sent back (read on the from-pod hook).
#[inline(always)]
pub fn bounced(ctx: &TcContext) -> bool {
    // SAFETY: reads a field of the context.
    unsafe { (*ctx.skb.skb).mark & MARK_MASK == MARK_BOUNCED }
}

/// On tc ingress of an external device (before the NodePort program, `f` parsed from `ctx`): a TCP
/// packet to a local endpoint whose policy conntrack entry (live, opened by the endpoint's
/// ingress) names a proxy gets [`MARK_TO_PROXY`], and the entry's last use is refreshed (the
/// to-pod hook, which would refresh it, does not see the packet). A connection's first packet
/// (SYN without ACK) is left alone: it goes on to the to-pod hook, which assigns it to the
/// listener. Anything else is not touched.
#[inline(never)]
pub fn mark_established(ctx: &TcContext, f: &Flow) {
    let k = &f.key;
    if f.v6 || k.proto != PROTO_TCP || f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return;
    }
    // SAFETY: read-only lookup of a value the agent writes whole.
    let Some(ep) = (unsafe { OXI_ENDPOINTS.get(&EndpointKey { addr: k.dst }) }) else {
        return;
    };
    if ep.flags & ep_flags::POLICY == 0 {
        return;
    }
    let key = PolicyCtKey {
        endpoint: ep.id,
        remote: k.src,
        local_port: k.dport,
        remote_port: k.sport,
        proto: k.proto,
        _pad: [0; 3],
    };
    let Some(ct) = OXI_POLICY_CT.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a valid map value pointer; plain helper call.
    unsafe {
        let now = bpf_ktime_get_ns();
        if (*ct).proxy_port == 0
            || (*ct).direction != DIR_INGRESS
            || now.saturating_sub((*ct).last_ns) >= CT_TIMEOUT_TCP_NS
        {
            return;
        }
        (*ct).last_ns = now;
    }
    ctx.set_mark(MARK_TO_PROXY);
}
