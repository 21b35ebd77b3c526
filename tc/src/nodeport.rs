//! The NodePort programs and their own maps (see datapath::nodeport::NodePortMaps for why the maps
//! are defined here). Names are abi::nodeport::names; the shared LB maps come from datapath::maps.
use aya_ebpf::{
    btf_maps::{HashMap, LpmTrie, PerCpuArray},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use datapath::nodeport::{
    EndpointMap, NodePortMaps, NodePortStatsMap, SourceRangeMap, egress, ingress,
};

#[btf_map]
static OXI_NP_ENDPOINTS: EndpointMap = HashMap::new();
#[btf_map]
static OXI_NP_SOURCE_RANGES: SourceRangeMap = LpmTrie::new();
#[btf_map]
static OXI_NP_STATS: NodePortStatsMap = PerCpuArray::new();

struct Maps;

impl NodePortMaps for Maps {
    #[inline(always)]
    fn endpoints() -> &'static EndpointMap {
        &OXI_NP_ENDPOINTS
    }
    #[inline(always)]
    fn source_ranges() -> &'static SourceRangeMap {
        &OXI_NP_SOURCE_RANGES
    }
    #[inline(always)]
    fn stats() -> &'static NodePortStatsMap {
        &OXI_NP_STATS
    }
}

/// tc ingress of the node's external devices: client → NodePort / LoadBalancer / externalIP
/// translated to a backend, remote backends' replies restored.
#[classifier]
pub fn oxilium_nodeport_ingress(ctx: TcContext) -> i32 {
    ingress::<Maps>(&ctx)
}

/// tc egress of the node's external devices: local backends' replies restored.
#[classifier]
pub fn oxilium_nodeport_egress(ctx: TcContext) -> i32 {
    egress::<Maps>(&ctx)
}
