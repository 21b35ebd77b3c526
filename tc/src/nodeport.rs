//! The NodePort programs; their own maps are defined here by `datapath::nodeport_maps!` (names in
//! abi::nodeport::names, shared through pins with the XDP acceleration in xdp/); the shared LB maps
//! come from datapath::maps.
use aya_ebpf::{macros::classifier, programs::TcContext};
use datapath::nodeport::{egress, ingress};

datapath::nodeport_maps!();

/// tc ingress of the node's external devices: client → NodePort / LoadBalancer / externalIP
/// translated to a backend, remote backends' replies restored, DSR tunnels to local pods taken off.
#[classifier]
pub fn oxilium_nodeport_ingress(ctx: TcContext) -> i32 {
    ingress::<Maps>(&ctx)
}

/// tc egress of the node's external devices: local backends' replies restored.
#[classifier]
pub fn oxilium_nodeport_egress(ctx: TcContext) -> i32 {
    egress::<Maps>(&ctx)
}
