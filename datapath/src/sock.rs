//! Socket-level service translation for the cgroup sock_addr hooks (sock-lb/): a service frontend
//! is rewritten to a backend once, at connect() or at each unconnected sendmsg(), and the service
//! address is given back at recvmsg() (UDP sources) and getpeername().
//!
//! Reverse entries, by kind of socket:
//! - TCP: connect() writes the entry into `OXI_SOCK_REVNAT_RING`, an array slot chosen by the
//!   socket cookie's low bits (no lock, no allocation: the cheapest write there is); the first
//!   getpeername() finds it there and copies it into the socket's own storage
//!   (`OXI_SOCK_REVNAT_SK`, BPF_MAP_TYPE_SK_STORAGE), where it stays until the socket goes. A
//!   socket whose first getpeername() comes after `SOCK_REVNAT_RING` later TCP connects has lost
//!   its slot and sees the backend (the LRU of earlier versions had the same limit).
//! - connected UDP: connect() writes the socket's storage directly (recvmsg() reads it on every
//!   datagram, for as long as the socket lives).
//! - unconnected UDP (sendmsg): the `OXI_SOCK_REVNAT` LRU, keyed by socket cookie and backend.
//!
//! The clock is read only for services with session affinity.
//!
//! Frontends are looked up in the shared `OXI_SERVICES` with `SCOPE_INTERNAL`; the backend is a
//! random slot of the service's table in `OXI_TABLES` (weighted by construction, whatever the
//! table's algorithm), or the one remembered in `OXI_SOCK_AFFINITY` for ClientIP affinity.
//!
//! With `OXI_SOCK_CONFIG.host_netns_cookie` set, connect / sendmsg leave alone the sockets of
//! every other network namespace (pods): their packets are translated by the pod tc programs
//! ([`crate::podlb`]). recvmsg / getpeername keep restoring whatever was translated.
use crate::maps::{OXI_BACKENDS, OXI_SERVICES};
use abi::{
    lb::{
        Addr, BACKEND_ACTIVE, Backend, FAMILY_V4, MAX_SERVICES, PROTO_TCP, PROTO_UDP, ServiceKey,
        ServiceValue, is_v4_mapped,
    },
    sock::{
        AffinityKey, AffinityValue, MAX_AFFINITY, MAX_SOCK_REVNAT, RevKey, RevValue, RingRevNat,
        SCOPE_INTERNAL, SOCK_REVNAT_RING, SVC_FLAG_AFFINITY, SockConfig, SockRevNat, reason,
    },
};
use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    btf_maps::{Array, LruHashMap, PerCpuArray, SkStorage},
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval,
    },
    programs::SockAddrContext,
};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

pub type RevNatMap = LruHashMap<RevKey, RevValue, { MAX_SOCK_REVNAT as usize }>;
pub type RevNatSkMap = SkStorage<SockRevNat>;
pub type RevNatRingMap = Array<RingRevNat, { SOCK_REVNAT_RING as usize }>;
pub type AffinityMap = LruHashMap<AffinityKey, AffinityValue, { MAX_AFFINITY as usize }>;
pub type AffinityTimeoutMap = Array<u32, { MAX_SERVICES as usize }>;
pub type SockStatsMap = PerCpuArray<u64, { reason::COUNT as usize }>;
pub type SockConfigMap = Array<SockConfig, 1>;

/// The socket-LB's own maps, defined as `#[btf_map]` statics by the sock-lb crate (with the names
/// of `abi::sock::names`) rather than here: every map static of this library lands in every
/// object that links it, and the XDP / tc objects must not carry (and create, unpinned) these.
/// The hooks are generic over this trait, so each map is still referenced directly.
pub trait SockMaps {
    /// (socket cookie, backend, backend port) → service address, for recvmsg of unconnected UDP.
    fn revnat() -> &'static RevNatMap;
    /// Connected socket → its backend and service address, for getpeername / recvmsg.
    fn revnat_sk() -> &'static RevNatSkMap;
    /// TCP connects' entries by socket cookie, until the first getpeername.
    fn revnat_ring() -> &'static RevNatRingMap;
    /// (netns cookie, service id) → backend, for ClientIP session affinity.
    fn affinity() -> &'static AffinityMap;
    /// Service id → affinity timeout in seconds (read only for services with SVC_FLAG_AFFINITY).
    fn affinity_timeout() -> &'static AffinityTimeoutMap;
    /// Per-CPU counters, indexed by `abi::sock::reason`.
    fn stats() -> &'static SockStatsMap;
    /// Settings (which network namespace is translated).
    fn config() -> &'static SockConfigMap;
}

const ECONNREFUSED: i32 = 111;
/// Program verdicts of the sock_addr hooks.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

#[inline(always)]
fn count<M: SockMaps>(r: u32) {
    if let Some(c) = M::stats().get_ptr_mut(r) {
        // SAFETY: this CPU's slot.
        unsafe { *c += 1 };
    }
}

/// The address in the context (destination at connect/sendmsg, source at recvmsg, peer at
/// getpeername) in the 16-byte form, and its port in network byte order. Every access is a
/// single 32-bit load: the verifier rejects wider or merged context accesses on older kernels.
#[inline(always)]
fn read_addr(sa: *mut bpf_sock_addr, v6: bool) -> (Addr, u16) {
    let mut a: Addr = [0; 16];
    // SAFETY: `sa` is the program's context; the verifier rewrites these loads.
    unsafe {
        if v6 {
            let w0 = read_volatile(addr_of!((*sa).user_ip6[0])).to_ne_bytes();
            let w1 = read_volatile(addr_of!((*sa).user_ip6[1])).to_ne_bytes();
            let w2 = read_volatile(addr_of!((*sa).user_ip6[2])).to_ne_bytes();
            let w3 = read_volatile(addr_of!((*sa).user_ip6[3])).to_ne_bytes();
            a[0..4].copy_from_slice(&w0);
            a[4..8].copy_from_slice(&w1);
            a[8..12].copy_from_slice(&w2);
            a[12..16].copy_from_slice(&w3);
        } else {
            a[10] = 0xff;
            a[11] = 0xff;
            let w = read_volatile(addr_of!((*sa).user_ip4)).to_ne_bytes();
            a[12..16].copy_from_slice(&w);
        }
        (a, read_volatile(addr_of!((*sa).user_port)) as u16)
    }
}

/// Writes an address and port into the context. A v4 hook can only take an IPv4-mapped address:
/// returns false (nothing written) otherwise.
#[inline(always)]
fn write_addr(sa: *mut bpf_sock_addr, v6: bool, a: &Addr, port: u16) -> bool {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    // SAFETY: `sa` is the program's context; the verifier rewrites these stores.
    unsafe {
        if v6 {
            write_volatile(addr_of_mut!((*sa).user_ip6[0]), w(0));
            write_volatile(addr_of_mut!((*sa).user_ip6[1]), w(4));
            write_volatile(addr_of_mut!((*sa).user_ip6[2]), w(8));
            write_volatile(addr_of_mut!((*sa).user_ip6[3]), w(12));
        } else {
            if !is_v4_mapped(a) {
                return false;
            }
            write_volatile(addr_of_mut!((*sa).user_ip4), w(12));
        }
        write_volatile(addr_of_mut!((*sa).user_port), port as u32);
    }
    true
}

/// False when only the node's namespace is translated and this socket lives in another one.
#[inline(always)]
fn in_scope<M: SockMaps>(ctx: &SockAddrContext) -> bool {
    match M::config().get(0) {
        Some(c) if c.host_netns_cookie != 0 => {
            // SAFETY: helper on the hook's context (kernel ≥ 5.7 for sock_addr programs).
            unsafe { bpf_get_netns_cookie(ctx.as_ptr()) == c.host_netns_cookie }
        }
        _ => true,
    }
}

/// connect4/6 and sendmsg4/6: translates a service frontend to a backend and records the reverse
/// entry. `done` is the counter of a translation. Returns the program's verdict.
#[inline(always)]
pub fn forward<M: SockMaps>(ctx: &SockAddrContext, v6: bool, done: u32) -> i32 {
    if !in_scope::<M>(ctx) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    // SAFETY: context field, 32-bit load.
    let proto = unsafe { read_volatile(addr_of!((*sa).protocol)) };
    if proto != PROTO_TCP as u32 && proto != PROTO_UDP as u32 {
        return ALLOW;
    }
    let (addr, port) = read_addr(sa, v6);
    let key = ServiceKey {
        addr,
        port,
        proto: proto as u8,
        scope: SCOPE_INTERNAL,
    };
    // SAFETY: read-only use of a map value the agent replaces atomically.
    let Some(svc) = (unsafe { OXI_SERVICES.get(key) }) else {
        return ALLOW;
    };
    let Some(b) = pick::<M>(ctx, svc) else {
        return refuse::<M>();
    };
    // A backend of the other family cannot be reached from this socket.
    if is_v4_mapped(&addr) != (b.family == FAMILY_V4) || !write_addr(sa, v6, &b.addr, b.port) {
        return refuse::<M>();
    }
    let rev = SockRevNat {
        backend: b.addr,
        service: addr,
        backend_port: b.port,
        service_port: port,
        service_id: svc.id,
    };
    // SAFETY: helper on the hook's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if done == reason::CONNECT && proto == PROTO_TCP as u32 {
        if let Some(slot) = M::revnat_ring().get_ptr_mut(ring_slot(cookie)) {
            // SAFETY: the slot of this cookie; read back only for this cookie.
            unsafe { *slot = RingRevNat { cookie, rev } };
            count::<M>(done);
            return ALLOW;
        }
    }
    if done == reason::CONNECT {
        // SAFETY: the hook's own socket; the storage is created zeroed when absent (a socket
        // connected again reuses its entry).
        let e = unsafe { M::revnat_sk().get_or_insert_ptr_mut(ctx, None) };
        if !e.is_null() {
            // SAFETY: this socket's storage, written under the socket's lock (connect holds it).
            unsafe { *e = rev };
            count::<M>(done);
            return ALLOW;
        }
        // No memory for the storage: the LRU below keeps the reverse view.
    }
    let rkey = RevKey {
        cookie,
        addr: b.addr,
        port: b.port,
        _pad: [0; 6],
    };
    let rval = RevValue {
        addr,
        port,
        _pad: 0,
        service_id: svc.id,
    };
    // A full LRU evicts the oldest entry; failing here only loses the reverse view.
    let _ = M::revnat().insert(rkey, rval, 0);
    count::<M>(done);
    ALLOW
}

/// No usable backend: the call fails with ECONNREFUSED, as if a closed port had answered.
#[inline(always)]
fn refuse<M: SockMaps>() -> i32 {
    count::<M>(reason::NO_BACKEND);
    // SAFETY: plain helper call; allowed for connect and sendmsg hooks.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

/// The backend for this socket: a fresh affinity entry's, else a random slot of the table
/// (recorded for affinity when the service has it).
#[inline(never)]
fn pick<M: SockMaps>(ctx: &SockAddrContext, svc: &ServiceValue) -> Option<Backend> {
    if svc.id == 0 || svc.table_size == 0 {
        return None;
    }
    // SAFETY: helper without preconditions.
    let random = unsafe { bpf_get_prandom_u32() };
    if svc.flags & SVC_FLAG_AFFINITY == 0 {
        // The table decides who takes new connections (terminating backends only as the
        // fallback).
        let id = crate::lb::table_pick(svc.id, random)?;
        return crate::lb::backend(id).copied();
    }
    // SAFETY: helpers without preconditions / on the hook's context.
    let now = unsafe { bpf_ktime_get_ns() };
    let akey = AffinityKey {
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        service_id: svc.id,
        _pad: 0,
    };
    let timeout = M::affinity_timeout().get(svc.id).copied().unwrap_or(0);
    if let Some((_, b)) = affinity_backend(M::affinity(), &akey, svc, timeout, now) {
        count::<M>(reason::AFFINITY_HIT);
        return Some(*b);
    }
    let id = crate::lb::table_pick(svc.id, random)?;
    let b = *crate::lb::backend(id)?;
    remember_affinity(M::affinity(), &akey, id, now);
    Some(b)
}

/// ClientIP affinity, shared by the socket LB and the pods' packet path: the backend (id and
/// value) of `key`'s entry while it is younger than `timeout_s` and its backend is still an
/// active one of the service; the entry's last use moves to `now`.
#[inline(always)]
pub fn affinity_backend(
    map: &AffinityMap,
    key: &AffinityKey,
    svc: &ServiceValue,
    timeout_s: u32,
    now: u64,
) -> Option<(u32, &'static Backend)> {
    // SAFETY: LRU value; a race with another CPU only moves a timestamp.
    let e = unsafe { &mut *map.get_ptr_mut(key)? };
    if now.saturating_sub(e.last_used_ns) >= timeout_s as u64 * 1_000_000_000 {
        return None;
    }
    // A free slot's service id (0) is no service's.
    let b = OXI_BACKENDS.get(e.backend_id)?;
    if b.service_id != svc.id || b.state != BACKEND_ACTIVE {
        return None;
    }
    e.last_used_ns = now;
    Some((e.backend_id, b))
}

/// Records `backend_id` as `key`'s affinity backend, last used `now`.
#[inline(always)]
pub fn remember_affinity(map: &AffinityMap, key: &AffinityKey, backend_id: u32, now: u64) {
    let v = AffinityValue {
        backend_id,
        _pad: 0,
        last_used_ns: now,
    };
    // Failure (never expected: LRU) only loses the affinity.
    let _ = map.insert(key, v, 0);
}

/// The `OXI_SOCK_REVNAT_RING` slot of a socket cookie.
#[inline(always)]
fn ring_slot(cookie: u64) -> u32 {
    cookie as u32 & (SOCK_REVNAT_RING - 1)
}

/// True when `e` names the backend `addr`:`port`.
#[inline(always)]
fn is_backend(e: &SockRevNat, addr: &Addr, port: u16) -> bool {
    let peer = Aligned(*addr);
    // SAFETY: two 4-aligned addresses (a field of a u32-aligned value, `Aligned`).
    e.backend_port == port && unsafe { crate::words::addr_eq(&e.backend, &peer.0) }
}

/// An address on a 4-byte boundary, for [`crate::words::addr_eq`].
#[repr(C, align(4))]
struct Aligned(Addr);

/// recvmsg4/6 and getpeername4/6: gives back the service address for a backend this socket was
/// translated to. `done` is the counter of a rewrite. These hooks must always allow.
#[inline(always)]
pub fn reverse<M: SockMaps>(ctx: &SockAddrContext, v6: bool, done: u32) -> i32 {
    let sa = ctx.sock_addr;
    let (addr, port) = read_addr(sa, v6);
    // A connected socket's own entry, when the peer is the backend it was connected to.
    // SAFETY: lookup only (no create) in the hook's own socket's storage.
    let e = unsafe { M::revnat_sk().get_ptr_mut(ctx) };
    if !e.is_null() {
        // SAFETY: this socket's storage, copied.
        let e = unsafe { *e };
        if is_backend(&e, &addr, port) && write_addr(sa, v6, &e.service, e.service_port) {
            count::<M>(done);
            return ALLOW;
        }
    }
    // SAFETY: helper on the hook's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // A TCP socket's first getpeername: its connect's slot, still its own, moves into the
    // socket's storage.
    if done == reason::GETPEERNAME
        && let Some(slot) = M::revnat_ring().get(ring_slot(cookie))
    {
        let slot = *slot;
        if slot.cookie == cookie
            && is_backend(&slot.rev, &addr, port)
            && write_addr(sa, v6, &slot.rev.service, slot.rev.service_port)
        {
            // SAFETY: the hook's own socket; failure (no memory) leaves the slot as the record.
            let e = unsafe { M::revnat_sk().get_or_insert_ptr_mut(ctx, None) };
            if !e.is_null() {
                // SAFETY: this socket's storage.
                unsafe { *e = slot.rev };
            }
            count::<M>(done);
            return ALLOW;
        }
    }
    let rkey = RevKey {
        cookie,
        addr,
        port,
        _pad: [0; 6],
    };
    // SAFETY: read-only use of the value.
    if let Some(v) = unsafe { M::revnat().get(rkey) }
        && write_addr(sa, v6, &v.addr, v.port)
    {
        count::<M>(done);
    }
    ALLOW
}
