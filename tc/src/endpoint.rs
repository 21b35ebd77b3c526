//! The endpoint programs of the cluster network (see datapath::endpoint): attached by the agent
//! to the host side of every pod veth its CNI plugin makes. They share the pod fallback's maps
//! ([`crate::pod::Maps`]) and `OXI_ENDPOINTS`, and write their events (policy verdicts, drops,
//! translations) like every other program.
use crate::pod::Maps;
use abi::event::{PROG_TC_ENDPOINT_FROM_POD, PROG_TC_ENDPOINT_TO_POD};
use aya_ebpf::{macros::classifier, programs::TcContext};
use datapath::endpoint::{from_pod, to_pod};

/// tc ingress of a pod's host-side veth (packets leaving the pod).
#[classifier]
pub fn oxilium_endpoint_from_pod(ctx: TcContext) -> i32 {
    crate::begin(&ctx, PROG_TC_ENDPOINT_FROM_POD);
    let action = from_pod::<Maps>(&ctx);
    datapath::events::end();
    if datapath::proxy::redirected(&ctx) {
        // Assigned to a proxy's socket: straight to the stack, no other filter in between.
        return action;
    }
    crate::pass_on(action)
}

/// tc egress of a pod's host-side veth (packets to the pod).
#[classifier]
pub fn oxilium_endpoint_to_pod(ctx: TcContext) -> i32 {
    crate::begin(&ctx, PROG_TC_ENDPOINT_TO_POD);
    let mut action = to_pod::<Maps>(&ctx);
    if action == aya_ebpf::bindings::TC_ACT_OK {
        // SAFETY: reading a field of the program's own skb.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        action = datapath::bandwidth::to_pod(&ctx, ifindex);
    }
    datapath::events::end();
    crate::pass_on(action)
}

/// tc ingress of the node's external devices, before the NodePort program (TCX, first): a TCP
/// packet of a flow an L7 proxy of this node holds for a local pod is marked for the proxy's
/// socket (datapath::stack_redirect::mark_established). Always hands on to the next program
/// (TC_ACT_UNSPEC: TCX_NEXT). A program of its own: the NodePort program's frames leave no
/// stack for the call.
#[classifier]
pub fn oxilium_l7_netdev(ctx: TcContext) -> i32 {
    if let Some(s) = datapath::skb::parse_tc(&ctx, false) {
        datapath::stack_redirect::mark_established(&ctx, &s.flow);
    }
    aya_ebpf::bindings::TC_ACT_UNSPEC
}
