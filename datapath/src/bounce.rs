//! The to-pod hook's way to a proxy (docs/l7.md, "The redirect"). A packet that reaches a pod
//! through the node's stack (from another node, natively routed or out of a tunnel; from the
//! node itself; a NodePort flow delivered to a local backend) meets the pod's ingress policy on
//! the to-pod hook, tc egress of the pod's host-side veth, where no socket can be assigned. When
//! that policy hands the flow to a proxy, the packet is sent back into the node through the
//! same veth's ingress ([`to_ingress`]: MACs swapped so the frame is addressed to the veth,
//! [`MARK_BOUNCED`], `bpf_redirect` with `BPF_F_INGRESS`). There the from-pod program sees the
//! mark ([`bounced`]) and runs the destination's ingress check again at tc ingress, which finds
//! the flow's policy conntrack entry (made by the to-pod hook, naming the proxy) and assigns
//! the proxy's listener (crate::proxy). A pod cannot send a packet with the mark: crossing
//! network namespaces clears it.
use abi::proxy::{MARK_BOUNCED, MARK_MASK};
use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_SHOT},
    helpers::generated::bpf_redirect,
    programs::TcContext,
};

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
