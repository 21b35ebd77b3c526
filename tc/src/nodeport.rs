//! The NodePort programs; their own maps are defined here by `datapath::nodeport_maps!` (names in
//! abi::nodeport::names, shared through pins with the XDP acceleration in xdp/); the shared LB maps
//! come from datapath::maps, the ClientIP affinity maps are the pod programs' (crate::pod, shared
//! through their pins with the socket LB).
use aya_ebpf::{macros::classifier, programs::TcContext};
use datapath::{
    affinity::AffinityMaps,
    nodeport::{egress, ingress},
    sock::{AffinityMap, AffinityTimeoutMap},
};

datapath::nodeport_maps!();

impl AffinityMaps for Maps {
    #[inline(always)]
    fn affinity() -> &'static AffinityMap {
        &crate::pod::OXI_SOCK_AFFINITY
    }
    #[inline(always)]
    fn affinity_timeout() -> &'static AffinityTimeoutMap {
        &crate::pod::OXI_SOCK_AFFINITY_TIMEOUT
    }
}

/// tc ingress of the node's external devices: client → NodePort / LoadBalancer / externalIP
/// translated to a backend, remote backends' replies restored, DSR tunnels to local pods taken off.
#[classifier]
pub fn oxilium_nodeport_ingress(ctx: TcContext) -> i32 {
    crate::begin(&ctx, abi::event::PROG_TC_NODEPORT_INGRESS);
    let action = ingress::<Maps>(&ctx);
    datapath::events::end();
    crate::pass_on(action)
}

/// tc egress of the node's external devices: local backends' replies restored.
#[classifier]
pub fn oxilium_nodeport_egress(ctx: TcContext) -> i32 {
    crate::begin(&ctx, abi::event::PROG_TC_NODEPORT_EGRESS);
    let action = egress::<Maps>(&ctx);
    datapath::events::end();
    crate::pass_on(action)
}
