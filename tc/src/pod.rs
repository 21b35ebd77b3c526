//! The pod programs of `--socket-lb-host-netns-only` and their own maps (see
//! datapath::podlb::PodMaps). Names are abi::sock::names (the socket LB's affinity maps, shared
//! through their pins) and abi::sock::pod::names; the shared LB maps come from datapath::maps.
use aya_ebpf::{
    btf_maps::{Array, LruHashMap, PerCpuArray},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use datapath::{
    podlb::{PodMaps, PodStatsMap, from_pod, to_pod},
    sock::{AffinityMap, AffinityTimeoutMap},
};

#[btf_map]
pub(crate) static OXI_SOCK_AFFINITY: AffinityMap = LruHashMap::new();
#[btf_map]
pub(crate) static OXI_SOCK_AFFINITY_TIMEOUT: AffinityTimeoutMap = Array::new();
#[btf_map]
static OXI_POD_STATS: PodStatsMap = PerCpuArray::new();

pub(crate) struct Maps;

impl PodMaps for Maps {
    #[inline(always)]
    fn affinity() -> &'static AffinityMap {
        &OXI_SOCK_AFFINITY
    }
    #[inline(always)]
    fn affinity_timeout() -> &'static AffinityTimeoutMap {
        &OXI_SOCK_AFFINITY_TIMEOUT
    }
    #[inline(always)]
    fn stats() -> &'static PodStatsMap {
        &OXI_POD_STATS
    }
}

/// tc ingress of a pod's host-side veth (packets leaving the pod): frontends translated.
#[classifier]
pub fn oxilium_pod_ingress(ctx: TcContext) -> i32 {
    crate::begin(&ctx, abi::event::PROG_TC_POD_INGRESS);
    let action = from_pod::<Maps>(&ctx);
    datapath::events::end();
    crate::pass_on(action)
}

/// tc egress of a pod's host-side veth (packets to the pod): replies restored.
#[classifier]
pub fn oxilium_pod_egress(ctx: TcContext) -> i32 {
    crate::begin(&ctx, abi::event::PROG_TC_POD_EGRESS);
    let action = to_pod::<Maps>(&ctx);
    datapath::events::end();
    crate::pass_on(action)
}
