//! ClientIP session affinity for packet-path frontends that see the client's address (the
//! NodePort programs): a new flow of a service with `SVC_FLAG_AFFINITY` takes the backend of a
//! fresh entry of the socket LB's affinity map keyed by (client address, service id), else the
//! table's, and the choice is recorded for the client. Flows already in conntrack keep their
//! backend. The entries and timeouts are the socket LB's maps (`OXI_SOCK_AFFINITY`,
//! `OXI_SOCK_AFFINITY_TIMEOUT`), shared through their pins; the client is keyed by
//! [`abi::sock::pod::affinity_client`], as on the pods' packet path.
use crate::{
    lb::{self, NewFlow, Target},
    parse::Flow,
    sock::{self, AffinityMap, AffinityTimeoutMap},
};
use abi::{
    lb::{ServiceValue, reason},
    sock::{SVC_FLAG_AFFINITY, pod::affinity_key},
};
use aya_ebpf::helpers::bpf_ktime_get_ns;

/// The affinity maps, defined as `#[btf_map]` statics by the program crate (names in
/// `abi::sock::names`), see `crate::sock::SockMaps`.
pub trait AffinityMaps {
    fn affinity() -> &'static AffinityMap;
    fn affinity_timeout() -> &'static AffinityTimeoutMap;
}

/// [`lb::select_with`], honouring the service's ClientIP affinity when it has one.
#[inline(always)]
pub fn select<A: AffinityMaps, N: Fn(&Flow, &ServiceValue, &Target) -> NewFlow>(
    f: &Flow,
    svc: &ServiceValue,
    bytes: u64,
    t: &mut Target,
    new_flow: N,
) -> u32 {
    if svc.flags & SVC_FLAG_AFFINITY == 0 {
        return lb::select_with(f, svc, bytes, t, new_flow);
    }
    affine::<A, N>(f, svc, bytes, t, new_flow)
}

/// Conntrack first; a new flow goes to the client's fresh affinity backend, else the table's,
/// recorded (or refreshed) once the flow is accepted.
#[inline(never)]
fn affine<A: AffinityMaps, N: Fn(&Flow, &ServiceValue, &Target) -> NewFlow>(
    f: &Flow,
    svc: &ServiceValue,
    bytes: u64,
    t: &mut Target,
    new_flow: N,
) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    if lb::established(f, svc, bytes, t, now) {
        return 0;
    }
    let akey = affinity_key(&f.key.src, svc.id);
    let timeout = A::affinity_timeout().get(svc.id).copied().unwrap_or(0);
    let id = match sock::affinity_backend(A::affinity(), &akey, svc, timeout, now) {
        Some((id, _)) => id,
        None => match lb::pick(f, svc) {
            Some(id) => id,
            None => return reason::NO_BACKEND,
        },
    };
    let r = lb::open(f, svc, bytes, t, id, now, new_flow);
    if r == 0 && timeout != 0 {
        sock::remember_affinity(A::affinity(), &akey, id, now);
    }
    r
}
