//! The pods' fallback when the socket LB serves the node's namespace only
//! (`--socket-lb-host-netns-only`): per-packet service translation on the host side of every
//! pod's veth (tc/: `oxilium_pod_ingress` / `oxilium_pod_egress`).
//!
//! - tc ingress of the host-side veth (packets leaving the pod): a packet to a `SCOPE_INTERNAL`
//!   frontend (the ones the socket LB serves) is DNAT'ed to a backend chosen through conntrack and
//!   the service's table ([`lb::select_with`]), or through the socket LB's ClientIP affinity map;
//!   the pod's source is kept and an `OXI_SNAT` entry keyed by the reply's flow is recorded. The
//!   packet then goes on (TC_ACT_OK): the kernel routes the rewritten packet.
//! - tc egress of the host-side veth (packets to the pod): a reply with such an entry is restored
//!   to come from the frontend.
//!
//! The rewrite is the NodePort one ([`crate::skb::rewrite`], valid for CHECKSUM_PARTIAL).
use crate::{
    icmp,
    lb::{self, NewFlow, Target},
    maps::{OXI_SERVICES, OXI_SNAT},
    parse::Flow,
    skb::{parse_tc, rewrite},
    sock::{self, AffinityMap, AffinityTimeoutMap},
    stats,
};
use abi::{
    lb::{Counter, FAMILY_V6, FlowKey, ServiceKey, ServiceValue, SnatEntry},
    sock::{
        SCOPE_INTERNAL, SVC_FLAG_AFFINITY,
        pod::{affinity_key, reason},
    },
};
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::PerCpuArray,
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};

pub type PodStatsMap = PerCpuArray<Counter, { reason::COUNT as usize }>;

/// The pod programs' own maps, defined as `#[btf_map]` statics by the tc crate (names in
/// `abi::sock::names` and `abi::sock::pod::names`), see `crate::sock::SockMaps`.
pub trait PodMaps {
    /// The socket LB's (client, service id) → backend map, shared for ClientIP affinity.
    fn affinity() -> &'static AffinityMap;
    fn affinity_timeout() -> &'static AffinityTimeoutMap;
    fn stats() -> &'static PodStatsMap;
}

#[inline(always)]
fn count<M: PodMaps>(r: u32, bytes: u64) {
    if let Some(c) = M::stats().get_ptr_mut(r) {
        // SAFETY: this CPU's slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
    crate::events::trace(abi::event::SET_POD, r);
}

/// Counts a dropped packet under pod reason `r` and reports the drop (crate::events).
#[inline(always)]
fn drop<M: PodMaps>(r: u32, bytes: u64) {
    count::<M>(r, bytes);
    crate::events::drop(abi::event::SET_POD, r);
}

/// tc ingress of a pod's host-side veth: pod → frontend translated to pod → backend.
#[inline(always)]
pub fn from_pod<M: PodMaps>(ctx: &TcContext) -> i32 {
    let bytes = ctx.len() as u64;
    let Some(s) = parse_tc(ctx, false) else {
        return TC_ACT_OK;
    };
    if s.flow.icmp_error {
        return icmp::skb::from_pod(ctx, s, bytes);
    }
    let f = &s.flow;
    let key = ServiceKey {
        addr: f.key.dst,
        port: f.key.dport,
        proto: f.key.proto,
        scope: SCOPE_INTERNAL,
    };
    // SAFETY: read-only use of a value the agent replaces whole.
    let Some(svc) = (unsafe { OXI_SERVICES.get(key) }) else {
        return TC_ACT_OK;
    };
    let r = if svc.flags & SVC_FLAG_AFFINITY != 0 {
        affine::<M>(f, svc, bytes, &mut s.target)
    } else {
        lb::select_with(f, svc, bytes, &mut s.target, record_reply)
    };
    let t = &s.target;
    if r != 0 {
        count::<M>(reason::NO_BACKEND, bytes);
        stats::drop(r, bytes);
        return TC_ACT_SHOT;
    }
    if (t.backend.family == FAMILY_V6) != f.v6 {
        drop::<M>(reason::FAMILY, bytes);
        return TC_ACT_SHOT;
    }
    stats::service(svc.id, bytes);
    stats::backend(t.backend_id, bytes);
    let new = &mut s.rewrite;
    new.src = f.key.src;
    new.sport = f.key.sport;
    new.dst = t.backend.addr;
    new.dport = t.backend.port;
    new.proto = f.key.proto;
    if rewrite(ctx, f, new).is_err() {
        drop::<M>(reason::ERROR, bytes);
        return TC_ACT_SHOT;
    }
    count::<M>(reason::FORWARD, bytes);
    TC_ACT_OK
}

/// tc egress of a pod's host-side veth: backend → pod restored to frontend → pod.
#[inline(always)]
pub fn to_pod<M: PodMaps>(ctx: &TcContext) -> i32 {
    let bytes = ctx.len() as u64;
    let Some(s) = parse_tc(ctx, false) else {
        return TC_ACT_OK;
    };
    if s.flow.icmp_error {
        // A backend's (or router's) error about a packet the pod sent to a service.
        if icmp::skb::prepare(ctx, s) && icmp::skb::backend_side(ctx, s) {
            return icmp::skb::continue_translated(bytes);
        }
        return TC_ACT_OK;
    }
    let f = &s.flow;
    let Some(e) = lb::snat_reply(f) else {
        return TC_ACT_OK;
    };
    let new = &mut s.rewrite;
    new.src = e.vip;
    new.sport = e.vip_port;
    new.dst = e.client;
    new.dport = e.client_port;
    new.proto = f.key.proto;
    stats::service(e.service_id, bytes);
    if rewrite(ctx, f, new).is_err() {
        drop::<M>(reason::ERROR, bytes);
        return TC_ACT_SHOT;
    }
    count::<M>(reason::REPLY, bytes);
    TC_ACT_OK
}

/// Every flow keeps the pod's source: records the `OXI_SNAT` entry that restores its replies
/// (backend → pod) at the pod's egress.
#[inline(never)]
fn record_reply(f: &Flow, svc: &ServiceValue, t: &Target) -> NewFlow {
    let rkey = FlowKey {
        src: t.backend.addr,
        dst: f.key.src,
        sport: t.backend.port,
        dport: f.key.sport,
        proto: f.key.proto,
        _pad: [0; 3],
    };
    let entry = SnatEntry {
        client: f.key.src,
        vip: f.key.dst,
        client_port: f.key.sport,
        vip_port: f.key.dport,
        service_id: svc.id,
        backend_id: t.backend_id,
        flags: 0,
        _pad: 0,
        last_seen_ns: crate::lb::clock(),
    };
    // Failure (never expected: LRU) would only leave the replies untranslated.
    let _ = OXI_SNAT.insert(rkey, entry, 0);
    NewFlow::Keep
}

/// ClientIP affinity on the packet path: the backend of a fresh affinity entry of this pod
/// address (every packet, so a flow follows its client's entry), else [`lb::select_with`]'s,
/// recorded for the client. Returns 0 or the drop reason, as `select_with`.
#[inline(never)]
fn affine<M: PodMaps>(f: &Flow, svc: &ServiceValue, bytes: u64, t: &mut Target) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let akey = affinity_key(&f.key.src, svc.id);
    let timeout = M::affinity_timeout().get(svc.id).copied().unwrap_or(0);
    if let Some((id, b)) = sock::affinity_backend(M::affinity(), &akey, svc, timeout, now) {
        t.backend_id = id;
        t.backend = *b;
        t.snat_port = 0;
        record_reply(f, svc, t);
        count::<M>(reason::AFFINITY_HIT, bytes);
        return 0;
    }
    let r = lb::select_with(f, svc, bytes, t, record_reply);
    if r == 0 && timeout != 0 {
        sock::remember_affinity(M::affinity(), &akey, t.backend_id, now);
    }
    r
}
