//! Service translation decisions shared by every hook: frontend lookup, conntrack, backend
//! selection (Maglev or weighted random over the service's table) and SNAT port allocation.
use crate::{
    maps::{
        OXI_BACKENDS, OXI_CONFIG, OXI_CONNTRACK, OXI_SERVICE_IDS, OXI_SERVICES, OXI_SNAT,
        OXI_TABLES,
    },
    parse::Flow,
    stats, words,
};
use abi::ct;
use abi::lb::{
    ALG_RANDOM, Addr, Backend, CtEntry, FlowKey, LbConfig, MAX_TABLE_SIZE, MODE_SNAT,
    SCOPE_EXTERNAL, ServiceKey, ServiceValue, flow_hash, reason,
};
use aya_ebpf::helpers::{bpf_get_prandom_u32, generated::bpf_ktime_get_coarse_ns};

/// The conntrack clock: `CtEntry` / `SnatEntry` stamps and idle times, and the XDP next-hop
/// cache. CLOCK_MONOTONIC as of the last timer tick (`bpf_ktime_get_coarse_ns`): a few ns a read
/// where the precise clock costs tens, and its resolution (one tick, 1–10 ms) is far below any
/// timeout it is compared with. User space reads CLOCK_MONOTONIC, at most a tick ahead: idle
/// times are computed with saturating subtractions everywhere.
#[inline(always)]
pub fn clock() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Where a flow goes.
pub struct Target {
    pub backend_id: u32,
    pub backend: Backend,
    /// SNAT mode: the LB-side source port (network byte order).
    pub snat_port: u16,
    /// [`clock`] at the selection (0: not read); the next-hop cache's clock.
    pub now: u64,
}

impl Target {
    pub const fn new() -> Self {
        Target {
            backend_id: 0,
            backend: Backend {
                addr: [0; 16],
                port: 0,
                family: 0,
                state: 0,
                service_id: 0,
            },
            snat_port: 0,
            now: 0,
        }
    }
}

impl Default for Target {
    fn default() -> Self {
        Self::new()
    }
}

#[inline(always)]
pub fn config() -> Option<&'static LbConfig> {
    OXI_CONFIG.get(0).filter(|c| c.ready == 1)
}

/// The backend of id `id`, unless its slot is free.
#[inline(always)]
pub fn backend(id: u32) -> Option<&'static Backend> {
    OXI_BACKENDS.get(id).filter(|b| b.service_id != 0)
}

/// The service whose frontend is the flow's destination.
#[inline(always)]
pub fn service(k: &FlowKey) -> Option<&'static ServiceValue> {
    let key = ServiceKey {
        addr: k.dst,
        port: k.dport,
        proto: k.proto,
        scope: SCOPE_EXTERNAL,
    };
    unsafe { OXI_SERVICES.get(&key) }
}

/// What [`flow_service`] found.
pub enum FlowService {
    /// The flow's entry and its service.
    Found(&'static ServiceValue, &'static mut CtEntry),
    /// No conntrack entry: a new flow, if its destination is a frontend.
    NoEntry,
    /// An entry whose service is not (or no longer) its frontend's.
    Other,
}

/// The service of a flow that has a conntrack entry, and the entry, found without hashing the
/// frontend: the entry's service id indexes `OXI_SERVICE_IDS`, whose slot holds the frontend and
/// the service entry the agent wrote to `OXI_SERVICES` (abi::lb::ServiceSlot). The slot's frontend
/// must be the flow's destination: then its service is the one [`service`] would find (a removed
/// service's slot is cleared, an id given to another frontend names that frontend), so timeouts,
/// mode and table apply as they are now.
#[inline(always)]
pub fn flow_service(k: &FlowKey) -> FlowService {
    let Some(e) = OXI_CONNTRACK.get_ptr_mut(k) else {
        return FlowService::NoEntry;
    };
    // SAFETY: LRU value; see [`established`].
    let e = unsafe { &mut *e };
    let id = e.service_id;
    let Some(slot) = OXI_SERVICE_IDS.get(id) else {
        return FlowService::Other;
    };
    // The frontend's port, protocol and scope as one word, like the flow's.
    let port = k.dport.to_ne_bytes();
    let want = u32::from_ne_bytes([port[0], port[1], k.proto, SCOPE_EXTERNAL]);
    let sk = &slot.key;
    // SAFETY: a map value's fields at 4-aligned offsets (ServiceKey: addr at 0, port at 16).
    let have = unsafe { core::ptr::read(core::ptr::addr_of!(sk.port) as *const u32) };
    // A free slot's id (0) is no entry's: node masquerade entries have service id 0.
    if id == 0
        || slot.value.id != id
        || have != want
        || !unsafe { words::addr_eq(&sk.addr, &k.dst) }
    {
        return FlowService::Other;
    }
    FlowService::Found(&slot.value, e)
}

/// True when `addr` is a VIP (the agent keeps a port-0 marker entry per VIP).
#[inline(always)]
pub fn is_vip(addr: &Addr) -> bool {
    let key = ServiceKey {
        addr: *addr,
        port: 0,
        proto: 0,
        scope: SCOPE_EXTERNAL,
    };
    unsafe { OXI_SERVICES.get(&key) }.is_some()
}

/// How a new flow reaches the backend chosen for it (decided by the hook, see [`select_with`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NewFlow {
    /// Source rewritten to the LB address and a reserved port (an `OXI_SNAT` entry).
    Snat,
    /// The client's source is kept (DSR, or DNAT to a backend on this node).
    Keep,
    /// The flow is refused: [`select_with`] returns [`REFUSED`].
    Refuse,
}

/// What [`select_with`] returns for a flow its hook refused (outside the `reason` counters).
pub const REFUSED: u32 = reason::COUNT;

/// The backend id in slot `pick % n` of a service's selection table. Slot 0 of the table holds its
/// own size n (the backend ids follow), so a table and its size are replaced together in one
/// update: a reader never combines a new table with an old size.
#[inline(always)]
pub fn table_pick(service_id: u32, pick: u32) -> Option<u32> {
    let n = *OXI_TABLES.get_value(service_id, &0)?;
    if n == 0 || n > MAX_TABLE_SIZE {
        return None;
    }
    OXI_TABLES.get_value(service_id, &(1 + pick % n)).copied()
}

/// Picks the backend of a client → VIP flow into `t`: the conntrack entry's while it is fresh and
/// its backend still exists, else a new selection recorded in conntrack. Returns 0, or the reason
/// to drop the packet. New flows of SNAT services get a SNAT port.
#[inline(always)]
pub fn select(f: &Flow, svc: &ServiceValue, bytes: u64, t: &mut Target) -> u32 {
    select_with(f, svc, bytes, t, |_, svc, _| {
        if svc.mode == MODE_SNAT {
            NewFlow::Snat
        } else {
            NewFlow::Keep
        }
    })
}

/// The configured conntrack timeouts (zeros, before the agent wrote them: the defaults). Read
/// whether or not the SNAT settings are ready: a node without NodePort devices writes only these.
#[inline(always)]
pub fn timeouts() -> Option<&'static ct::Timeouts> {
    OXI_CONFIG.get(0).map(|c| &c.timeouts)
}

/// [`select`], with the hook deciding for each new flow (once its backend is in `t`) whether it
/// needs SNAT, keeps its source, or is refused. `new_flow` must capture nothing (BPF functions
/// take at most five arguments): it gets the flow, the service and the target.
///
/// The conntrack entry is used while its flow has not expired in its state (see `abi::ct`) and
/// is not a client's new SYN on a closed flow; each packet moves its state on.
#[inline(never)]
pub fn select_with<N: Fn(&Flow, &ServiceValue, &Target) -> NewFlow>(
    f: &Flow,
    svc: &ServiceValue,
    bytes: u64,
    t: &mut Target,
    new_flow: N,
) -> u32 {
    let now = clock();
    if established(f, svc, bytes, t, now) {
        return 0;
    }
    let Some(id) = pick(f, svc) else {
        return reason::NO_BACKEND;
    };
    open(f, svc, bytes, t, id, now, new_flow)
}

/// The conntrack part of [`select_with`]: true (and `t` filled, the entry moved on) when the
/// flow has a live entry whose backend still belongs to the service.
#[inline(always)]
pub fn established(f: &Flow, svc: &ServiceValue, bytes: u64, t: &mut Target, now: u64) -> bool {
    let Some(e) = OXI_CONNTRACK.get_ptr_mut(&f.key) else {
        return false;
    };
    // SAFETY: LRU value; concurrent CPUs may race on counters, which only loses counts.
    use_entry(f, svc, unsafe { &mut *e }, bytes, t, now)
}

/// [`established`] with the flow's conntrack entry `e` already looked up.
#[inline(always)]
pub fn use_entry(
    f: &Flow,
    svc: &ServiceValue,
    e: &mut CtEntry,
    bytes: u64,
    t: &mut Target,
    now: u64,
) -> bool {
    let key = &f.key;
    // Never negative: another CPU may have stamped the entry after this one read the clock.
    let idle = now.saturating_sub(e.last_seen_ns);
    let live = !ct::expired(e.flags, key.proto, idle, timeouts(), svc.ct_timeout_s)
        && !ct::restarts(e.flags, key.proto, f.tcp_flags);
    if e.service_id != svc.id || !live {
        return false;
    }
    // A free slot's service id (0) is no service's.
    let Some(b) = OXI_BACKENDS.get(e.backend_id) else {
        return false;
    };
    if b.service_id != svc.id {
        return false;
    }
    e.last_seen_ns = now;
    e.packets += 1;
    e.bytes += bytes;
    e.svc_timeout_s = svc.ct_timeout_s;
    t.backend_id = e.backend_id;
    t.backend = *b;
    t.snat_port = e.snat_port;
    t.now = now;
    let flags = ct::next(e.flags, key.proto, f.tcp_flags, false);
    if flags != e.flags {
        e.flags = flags;
        if e.snat_port != 0 {
            mirror_state(f, t, flags);
        }
    }
    true
}

/// [`select`] for a flow known to have no conntrack entry ([`flow_service`] found none): the
/// selection without looking the entry up again.
#[inline(never)]
pub fn select_new(f: &Flow, svc: &ServiceValue, bytes: u64, t: &mut Target) -> u32 {
    let Some(id) = pick(f, svc) else {
        return reason::NO_BACKEND;
    };
    open(f, svc, bytes, t, id, clock(), |_, svc, _| {
        if svc.mode == MODE_SNAT {
            NewFlow::Snat
        } else {
            NewFlow::Keep
        }
    })
}

/// The service table's backend id for a new flow (random or flow hash, as the service says).
#[inline(always)]
pub fn pick(f: &Flow, svc: &ServiceValue) -> Option<u32> {
    if svc.table_size == 0 {
        return None;
    }
    let pick = if svc.algorithm == ALG_RANDOM {
        unsafe { bpf_get_prandom_u32() }
    } else {
        flow_hash(&f.key, 0)
    };
    table_pick(svc.id, pick)
}

/// Opens a new flow to backend `id` (the table's choice, or an affinity entry's): the hook
/// decides, a SNAT port is taken if asked, and the conntrack entry recorded. Returns 0, the drop
/// reason, or [`REFUSED`].
#[inline(always)]
pub fn open<N: Fn(&Flow, &ServiceValue, &Target) -> NewFlow>(
    f: &Flow,
    svc: &ServiceValue,
    bytes: u64,
    t: &mut Target,
    id: u32,
    now: u64,
    new_flow: N,
) -> u32 {
    let key = &f.key;
    let Some(b) = backend(id) else {
        return reason::NO_BACKEND;
    };
    // The table decides who takes new flows: terminating backends are in it only as the fallback
    // when no active backend is left.
    t.backend_id = id;
    t.backend = *b;
    t.snat_port = 0;
    t.now = now;
    let flags = ct::next(ct::NEW, key.proto, f.tcp_flags, false);
    match new_flow(f, svc, t) {
        NewFlow::Snat => {
            let r = snat_port(f, t, svc.id, now);
            if r != 0 {
                return r;
            }
        }
        NewFlow::Keep => {}
        NewFlow::Refuse => return REFUSED,
    }
    let entry = CtEntry {
        backend_id: id,
        service_id: svc.id,
        last_seen_ns: now,
        packets: 1,
        bytes,
        snat_port: t.snat_port,
        flags,
        svc_timeout_s: svc.ct_timeout_s,
    };
    // A full LRU evicts the least recently used flow; failure here only costs stickiness.
    let _ = OXI_CONNTRACK.insert(key, &entry, 0);
    stats::reason(reason::CT_NEW, 0);
    crate::events::translate(svc.id);
    0
}

/// Copies a flow's new conntrack state into its SNAT entry (backend → LB address:port).
#[inline(never)]
pub(crate) fn mirror_state(f: &Flow, t: &Target, flags: u16) {
    let Some(c) = config() else {
        return;
    };
    // The flag as a 0/1 the verifier can see (a plain bool read lets the compiler index the
    // config by an unbounded byte).
    let v6 = unsafe { core::ptr::read_volatile(&f.v6 as *const bool as *const u8) } & 1;
    let lb = if v6 != 0 { &c.snat_v6 } else { &c.snat_v4 };
    let rkey = FlowKey {
        src: t.backend.addr,
        dst: *lb,
        sport: t.backend.port,
        dport: t.snat_port,
        proto: f.key.proto,
        _pad: [0; 3],
    };
    if let Some(e) = OXI_SNAT.get_ptr_mut(&rkey) {
        // SAFETY: LRU value; a racing writer only delays the state by a packet.
        unsafe { (*e).flags = flags };
    }
}

/// True when the flow's destination is the LB's own address of its family, where SNAT replies
/// come (the XDP program looks their `OXI_SNAT` entry up without trying conntrack first).
#[inline(always)]
pub fn to_lb_addr(f: &Flow) -> bool {
    let Some(c) = OXI_CONFIG.get(0) else {
        return false;
    };
    let a = if f.v6 { &c.snat_v6 } else { &c.snat_v4 };
    // SAFETY: a map value's and the scratch space's addresses: 4-aligned (crate::words).
    unsafe { words::addr_eq(a, &f.key.dst) }
}

/// The LB-side address of a family: SNAT source and DSR tunnel source.
#[inline(always)]
pub fn lb_addr(v6: bool) -> Option<&'static Addr> {
    let c = config()?;
    let a = if v6 { &c.snat_v6 } else { &c.snat_v4 };
    // SAFETY: a map value's address: 4-aligned (crate::words).
    if unsafe { words::is_zero_addr(a) } {
        None
    } else {
        Some(a)
    }
}

mod snat;
pub(crate) use snat::snat_port;
pub use snat::snat_reply;
