//! The endpoint programs of the cluster network (see datapath::endpoint): attached by the agent
//! to the host side of every pod veth its CNI plugin makes. They share the pod fallback's maps
//! ([`crate::pod::Maps`]) and `OXI_ENDPOINTS`.
use crate::pod::Maps;
use aya_ebpf::{macros::classifier, programs::TcContext};
use datapath::endpoint::{from_pod, to_pod};

/// tc ingress of a pod's host-side veth (packets leaving the pod).
#[classifier]
pub fn oxilium_endpoint_from_pod(ctx: TcContext) -> i32 {
    from_pod::<Maps>(&ctx)
}

/// tc egress of a pod's host-side veth (packets to the pod).
#[classifier]
pub fn oxilium_endpoint_to_pod(ctx: TcContext) -> i32 {
    let r = to_pod::<Maps>(&ctx);
    if r != aya_ebpf::bindings::TC_ACT_OK {
        return r;
    }
    // SAFETY: reading a field of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    datapath::bandwidth::to_pod(&ctx, ifindex)
}
