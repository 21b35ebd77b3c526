//! The maps, defined once for every program. The agent pins them by name (see abi::lb::names), so
//! the XDP and tc objects share one set and an agent restart finds them again.
use crate::{lb::Target, parse::Flow};
use abi::lb::{
    BPF_F_INNER_MAP, Backend, Counter, CtEntry, FlowKey, LbConfig, MAX_BACKENDS, MAX_CONNTRACK,
    MAX_SERVICES, ServiceKey, ServiceSlot, ServiceValue, SnatEntry, reason,
};
use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};

/// Frontend → service.
#[btf_map]
pub static OXI_SERVICES: HashMap<ServiceKey, ServiceValue, { MAX_SERVICES as usize }> =
    HashMap::new();

/// Service id → frontend and service (abi::lb::ServiceSlot): the XDP program's established path
/// finds a flow's service here by its conntrack entry's id (crate::lb::flow_service). An array:
/// its lookup is inlined, no hash of the frontend.
#[btf_map]
pub static OXI_SERVICE_IDS: Array<ServiceSlot, { MAX_SERVICES as usize }> = Array::new();

/// Backend id → backend; a slot whose `service_id` is 0 is free (crate::lb::backend). An array:
/// its lookup is a bounds check and an offset, where a hash map's hashes the key and walks a
/// bucket, on every packet of an established flow.
#[btf_map]
pub static OXI_BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// Service id → selection table (Maglev lookup table, or the weighted slot list for random): an
/// array of backend ids whose size is the service's `table_size`. Inner maps carry BPF_F_INNER_MAP
/// so each service may have its own size; the agent swaps a whole table in one update.
#[btf_map]
pub static OXI_TABLES: ArrayOfMaps<
    Array<u32, 1, { BPF_F_INNER_MAP as usize }>,
    { MAX_SERVICES as usize },
> = ArrayOfMaps::new();

/// Client → VIP flows and the backend each is pinned to.
#[btf_map]
pub static OXI_CONNTRACK: LruHashMap<FlowKey, CtEntry, { MAX_CONNTRACK as usize }> =
    LruHashMap::new();

/// SNAT replies (backend → LB address) → the original client ↔ VIP tuple.
#[btf_map]
pub static OXI_SNAT: LruHashMap<FlowKey, SnatEntry, { MAX_CONNTRACK as usize }> = LruHashMap::new();

#[btf_map]
pub static OXI_CONFIG: Array<LbConfig, 1> = Array::new();

#[btf_map]
pub static OXI_STATS: PerCpuArray<Counter, { reason::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static OXI_SERVICE_STATS: PerCpuArray<Counter, { MAX_SERVICES as usize }> = PerCpuArray::new();

#[btf_map]
pub static OXI_BACKEND_STATS: PerCpuArray<Counter, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// Per-CPU scratch space for a packet's working state: keeps the 512-byte BPF stack free for the
/// helpers' arguments (the verifier sums the stack of every frame in a call chain). In declared
/// order, so that its flow keys are 8-byte aligned (crate::words).
#[repr(C)]
pub struct Scratch {
    pub flow: Flow,
    pub target: Target,
    pub rewrite: FlowKey,
    /// The key of a reply expected for the packet (built here rather than on the stack).
    pub reply: FlowKey,
    /// A new flow's SNAT entry while its port is chosen.
    pub snat: SnatEntry,
    /// The best take-over candidate while a SNAT port is chosen (`crate::lb::snat_port`): kept
    /// here rather than in registers, so the verifier does not walk every order of candidates.
    pub snat_best: SnatBest,
    /// A frontend key while a SNAT port is chosen (`crate::lb::snat_port`): off the stack, which
    /// the NodePort tc program's call chain has used up.
    pub svc_key: ServiceKey,
    /// The packet an ICMP error quotes (crate::icmp).
    pub quoted: crate::icmp::Quoted,
    /// The program, interface and length of the packet, for its events (crate::events).
    pub ev: crate::events::EventCtx,
    /// The arguments of a FIB lookup (crate::fib).
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
}

const _: () = {
    assert!(core::mem::offset_of!(Scratch, rewrite) % 8 == 0);
    assert!(core::mem::offset_of!(Scratch, reply) % 8 == 0);
    assert!(core::mem::offset_of!(Scratch, svc_key) % 4 == 0);
};

/// See [`Scratch::snat_best`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SnatBest {
    pub score: u64,
    pub port: u16,
    /// 1 when the candidate is still held by the same client flow (no take-over counted).
    pub ours: u16,
    pub _pad: u32,
}

#[btf_map]
pub static OXI_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// This CPU's scratch space.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    OXI_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
