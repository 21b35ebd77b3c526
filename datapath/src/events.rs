//! Datapath events (records in `abi::event`): the one place every program writes them.
//!
//! A program calls [`begin`] on entry (its id, interface and packet length go into the per-CPU
//! scratch space, and the flow key there is cleared so a malformed packet never reports an
//! earlier packet's tuple); the parser then fills the flow. Afterwards the central points call
//! in: [`drop`] beside the drop counters (`crate::stats::drop`, the NodePort and pod drop
//! helpers), [`translate`] where a new flow gets its backend (`crate::lb::open`), [`trace`]
//! beside every counted step (`crate::stats::reason` and the NodePort / pod counters),
//! [`policy_match`] and [`policy`] where the endpoint programs decide a flow (`crate::policy`).
//!
//! The points only note the event in the scratch space; [`end`], called by every program on its
//! way out, writes them (the ring's helpers need stack the deepest points do not have).
//!
//! Events never change a verdict: every function here returns nothing and only reads the packet's
//! state. A record is written only when its kind is switched on (`OXI_EVENT_CONFIG`), its flow is
//! within its rate (a GCRA per flow hash in the LRU `OXI_EVENT_LIMIT`: `flow_rate` events per
//! second after a burst of `flow_burst`) and the ring has room; the lost ones are counted in
//! `OXI_EVENT_STATS`.
use crate::maps::{self, Scratch};
use abi::event::{
    CFG_NO_DROPS, CFG_NO_POLICY, CFG_NO_TRANSLATIONS, CFG_TRACE, DEFAULT_FLOW_BURST,
    DEFAULT_FLOW_RATE, DEFAULT_RING_BYTES, Event, EventConfig, KIND_DROP, KIND_POLICY, KIND_TRACE,
    KIND_TRANSLATE, LimitValue, MAX_LIMITED_FLOWS, stat,
};
use abi::lb::{FlowKey, flow_hash};
use aya_ebpf::{
    btf_maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    helpers::bpf_ktime_get_ns,
    macros::btf_map,
};

/// The node's event ring (its size is set by the agent at load: `--events-ring-bytes`).
#[btf_map]
pub static OXI_EVENTS: RingBuf<Event, { DEFAULT_RING_BYTES as usize }> = RingBuf::new();

#[btf_map]
pub static OXI_EVENT_CONFIG: Array<EventConfig, 1> = Array::new();

/// Flow hash → the theoretical arrival time of its next event (ns). Its size is set by the agent
/// at load (`--events-max-flows`).
#[btf_map]
pub static OXI_EVENT_LIMIT: LruHashMap<u32, LimitValue, { MAX_LIMITED_FLOWS as usize }> =
    LruHashMap::new();

#[btf_map]
pub static OXI_EVENT_STATS: PerCpuArray<u64, { stat::COUNT as usize }> = PerCpuArray::new();

/// Events a packet may leave pending for [`end`]; more are not recorded.
pub const MAX_PENDING: usize = 4;

/// An event recorded while the packet is processed, written by [`end`].
#[derive(Clone, Copy)]
pub struct Pending {
    pub reason: u32,
    pub service_id: u32,
    pub kind: u8,
    pub set: u8,
    /// Policy events: `VERDICT_*`, `DIR_*`, the deciding entry's action and its `MATCH_*`.
    pub verdict: u8,
    pub direction: u8,
    pub action: u8,
    pub rule: u8,
    pub src_identity: u32,
    pub dst_identity: u32,
}

impl Pending {
    #[inline(always)]
    const fn of(kind: u8, set: u8, reason: u32, service_id: u32) -> Pending {
        Pending {
            reason,
            service_id,
            kind,
            set,
            verdict: 0,
            direction: 0,
            action: 0,
            rule: 0,
            src_identity: 0,
            dst_identity: 0,
        }
    }
}

/// Per-packet event context, kept in the scratch space.
#[derive(Clone, Copy)]
pub struct EventCtx {
    pub ifindex: u32,
    pub bytes: u32,
    pub prog: u8,
    /// Events pending in `pending`.
    pub n: u8,
    /// The kind (`MATCH_*`) and action of the policy entry that decided last ([`policy_match`]).
    pub matched: u8,
    pub matched_action: u8,
    pub pending: [Pending; MAX_PENDING],
}

/// Starts a packet: records the program and interface, clears the flow key.
#[inline(always)]
pub fn begin(prog: u8, ifindex: u32, bytes: u32) {
    if let Some(s) = maps::OXI_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch; the program has not taken its references yet.
        unsafe {
            (*s).ev.ifindex = ifindex;
            (*s).ev.bytes = bytes;
            (*s).ev.prog = prog;
            (*s).ev.n = 0;
            (*s).ev.matched = 0;
            (*s).ev.matched_action = 0;
            crate::words::zero_key(core::ptr::addr_of_mut!((*s).flow.key));
        }
    }
}

#[inline(always)]
fn config() -> u32 {
    match OXI_EVENT_CONFIG.get(0) {
        Some(c) => c.flags,
        None => 0,
    }
}

/// A drop of reason `reason` (an index of counter set `set`).
#[inline(always)]
pub fn drop(set: u8, reason: u32) {
    if config() & CFG_NO_DROPS == 0 {
        record(Pending::of(KIND_DROP, set, reason, 0));
    }
}

/// A new flow of service `service_id` got the backend in the scratch space's target.
#[inline(always)]
pub fn translate(service_id: u32) {
    if config() & CFG_NO_TRANSLATIONS == 0 {
        record(Pending::of(KIND_TRANSLATE, 0, 0, service_id));
    }
}

/// A counted step (trace point), when switched on.
#[inline(always)]
pub fn trace(set: u8, reason: u32) {
    if config() & CFG_TRACE != 0 {
        record(Pending::of(KIND_TRACE, set, reason, 0));
    }
}

/// The policy map entry that decides the flow being checked: its kind (`MATCH_*`) and action
/// (`ACTION_*`, 0 for none); read by the next [`policy`].
#[inline(always)]
pub fn policy_match(rule: u32, action: u8) {
    if let Some(s) = maps::OXI_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch; only the event context is written.
        unsafe {
            (*s).ev.matched = rule as u8;
            (*s).ev.matched_action = action;
        }
    }
}

/// A policy verdict (`VERDICT_*`) on the flow in the scratch space, in direction `direction`,
/// between identities `src` and `dst`, decided by the entry [`policy_match`] noted last.
#[inline(always)]
pub fn policy(verdict: u8, direction: u8, src: u32, dst: u32) {
    if config() & CFG_NO_POLICY != 0 {
        return;
    }
    let Some(s) = maps::OXI_SCRATCH.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's scratch, read only.
    let (rule, action) = unsafe { ((*s).ev.matched, (*s).ev.matched_action) };
    let mut p = Pending::of(KIND_POLICY, 0, 0, 0);
    p.verdict = verdict;
    p.direction = direction;
    p.action = action;
    p.rule = rule;
    p.src_identity = src;
    p.dst_identity = dst;
    record(p);
}

/// Keeps an event for [`end`]: the points that report events may run several calls deep, where
/// the verifier's bound on a call chain's stack (512 bytes) leaves no room for the ring's
/// helpers; the program writes them on its way out, one call from its entry.
#[inline(always)]
fn record(p: Pending) {
    let Some(s) = maps::OXI_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch; only the event context is written.
    unsafe {
        let ev = &mut *core::ptr::addr_of_mut!((*s).ev);
        let n = ev.n as usize;
        if n < MAX_PENDING {
            ev.pending[n] = p;
            ev.n = n as u8 + 1;
        }
    }
}

/// Writes the packet's pending events; every program calls it on its way out (after its
/// verdict is decided: nothing here changes it).
#[inline(always)]
pub fn end() {
    let Some(s) = maps::OXI_SCRATCH.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's scratch, read only.
    if unsafe { (*s).ev.n } != 0 {
        flush();
    }
}

#[inline(never)]
fn flush() {
    let Some(s) = maps::OXI_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    for i in 0..MAX_PENDING {
        // SAFETY: this CPU's scratch.
        let (n, p) = unsafe { ((*s).ev.n as usize, (*s).ev.pending[i]) };
        if i >= n {
            break;
        }
        emit(&p);
    }
    // SAFETY: as above.
    unsafe { (*s).ev.n = 0 };
}

#[inline(always)]
fn count(i: u32) {
    if let Some(c) = OXI_EVENT_STATS.get_ptr_mut(i) {
        // SAFETY: this CPU's slot.
        unsafe { *c += 1 };
    }
}

/// True when the flow may write one more event now (GCRA: at most `burst` at once, then one
/// per `1 / rate` seconds).
#[inline(always)]
fn within_rate(key: &FlowKey, now: u64) -> bool {
    let (mut rate, mut burst) = (DEFAULT_FLOW_RATE, DEFAULT_FLOW_BURST);
    if let Some(c) = OXI_EVENT_CONFIG.get(0) {
        if c.flow_rate != 0 {
            rate = c.flow_rate;
        }
        if c.flow_burst != 0 {
            burst = c.flow_burst;
        }
    }
    let interval = 1_000_000_000u64 / rate as u64;
    let tolerance = interval * (burst.saturating_sub(1) as u64);
    let h = flow_hash(key, 0xe7e7);
    match OXI_EVENT_LIMIT.get_ptr_mut(&h) {
        Some(p) => {
            // SAFETY: LRU value; racing CPUs only let an extra event through.
            let tat = unsafe { *p };
            let tat = if tat > now { tat } else { now };
            if tat - now > tolerance {
                return false;
            }
            unsafe { *p = tat + interval };
            true
        }
        None => {
            let _ = OXI_EVENT_LIMIT.insert(&h, &(now + interval), 0);
            true
        }
    }
}

/// Writes one record from the scratch space's flow, event context and (translations) target.
#[inline(always)]
fn emit(pe: &Pending) {
    let kind = pe.kind;
    let Some(s) = maps::OXI_SCRATCH.get_ptr(0) else {
        return;
    };
    let s: *const Scratch = s;
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's scratch, read only; the callers' references into it are not used
    // while this runs.
    let key = unsafe { &(*s).flow.key };
    // A translation is written once per new flow: the per-flow limit has nothing to hold back
    // there (a flood of new flows is bounded by the ring and counted as `ring_full`).
    if kind != KIND_TRANSLATE && !within_rate(key, now) {
        count(stat::RATE_LIMITED);
        return;
    }
    let Some(mut e) = OXI_EVENTS.reserve(0) else {
        count(stat::RING_FULL);
        return;
    };
    let p = e.as_mut_ptr();
    // SAFETY: `p` is the reserved record, every field written before it is submitted (field
    // by field: a whole `Event` built first would take 104 bytes of this frame's stack).
    unsafe {
        let ev = &(*s).ev;
        let t = &(*s).target;
        let translate = kind == KIND_TRANSLATE;
        (*p).time_ns = now;
        (*p).kind = kind;
        (*p).prog = ev.prog;
        (*p).reason_set = pe.set;
        (*p).proto = key.proto;
        (*p).reason = pe.reason;
        (*p).ifindex = ev.ifindex;
        (*p).bytes = ev.bytes;
        (*p).service_id = pe.service_id;
        (*p).src = key.src;
        (*p).dst = key.dst;
        (*p).sport = key.sport;
        (*p).dport = key.dport;
        (*p).verdict = pe.verdict;
        (*p).tcp_flags = (*s).flow.tcp_flags;
        if translate {
            (*p).backend_id = t.backend_id;
            (*p).backend_port = t.backend.port;
            (*p).backend = t.backend.addr;
        } else {
            (*p).backend_id = 0;
            (*p).backend_port = 0;
            (*p).backend = [0; 16];
        }
        (*p).src_identity = pe.src_identity;
        (*p).dst_identity = pe.dst_identity;
        (*p).rule = pe.rule as u32;
        (*p).direction = pe.direction;
        (*p).action = pe.action;
        (*p)._pad = [0; 2];
    }
    e.submit(0);
    count(stat::WRITTEN);
}
