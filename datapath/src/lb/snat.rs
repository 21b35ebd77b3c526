//! SNAT source ports: reserving one for a new flow (with take-over of ports whose flow is gone)
//! and finding the entry a backend's reply belongs to.
use super::{Target, clock, config, timeouts};
use crate::{
    maps::{OXI_CONNTRACK, OXI_SERVICES, OXI_SNAT},
    parse::Flow,
    stats, words,
};
use abi::ct;
use abi::lb::{FlowKey, SCOPE_EXTERNAL, SnatEntry, flow_hash, reason};
use aya_ebpf::bindings::BPF_NOEXIST;

/// How many ports [`snat_port`] tries for a new flow.
const SNAT_TRIES: u32 = 16;

/// Reserves a SNAT source port (into `t.snat_port`) for the flow towards `t.backend`: a
/// hash-chosen port in the configured range, then others, each claimed with BPF_NOEXIST. Ports
/// that are a frontend on the SNAT address (a NodePort, say) are never used: the backend's
/// replies would be taken for new flows to that frontend. When every port tried is held, the
/// one whose flow is gone ([`owner_score`]) and left the least behind at the backend is taken
/// over: at once when nothing can be left, else the longest idle (a closed connection may still
/// be in the backend's TIME_WAIT). Returns 0 or the drop reason.
#[inline(never)]
pub(crate) fn snat_port(f: &Flow, t: &mut Target, service_id: u32, now: u64) -> u32 {
    let Some(cfg) = config() else {
        return reason::ERROR;
    };
    let lb = if f.v6 { &cfg.snat_v6 } else { &cfg.snat_v4 };
    let (min, max) = (cfg.snat_port_min as u32, cfg.snat_port_max as u32);
    // SAFETY: a map value's address: 4-aligned (crate::words).
    if unsafe { words::is_zero_addr(lb) } || min == 0 || max < min {
        return reason::ERROR;
    }
    let range = max - min + 1;
    if range == 0 {
        return reason::ERROR;
    }
    let h = flow_hash(&f.key, 0x5a17);
    // The new entry and its key live in the per-CPU scratch space: this frame is the third of
    // the call chain and the verifier caps the chain's stack at 512 bytes. `rewrite` is free
    // until the hook rewrites the packet, after the selection.
    let Some(s) = crate::maps::OXI_SCRATCH.get_ptr_mut(0) else {
        return reason::ERROR;
    };
    // SAFETY: this CPU's scratch; only the `snat`, `rewrite`, `snat_best` and `svc_key` fields
    // are written here (callers hold the flow and target fields).
    let (entry, rkey, best, skey) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!((*s).snat),
            &mut *core::ptr::addr_of_mut!((*s).rewrite),
            &mut *core::ptr::addr_of_mut!((*s).snat_best),
            &mut *core::ptr::addr_of_mut!((*s).svc_key),
        )
    };
    entry.client = f.key.src;
    entry.vip = f.key.dst;
    entry.client_port = f.key.sport;
    entry.vip_port = f.key.dport;
    entry.service_id = service_id;
    entry.backend_id = t.backend_id;
    entry.flags = ct::next(ct::NEW, f.key.proto, f.tcp_flags, false);
    entry._pad = 0;
    entry.last_seen_ns = now;
    rkey.src = t.backend.addr;
    rkey.dst = *lb;
    rkey.sport = t.backend.port;
    rkey.dport = 0;
    rkey.proto = f.key.proto;
    rkey._pad = [0; 3];
    best.score = 0;
    best.port = 0;
    best.ours = 0;
    // The frontend check of each port, only when the SNAT address has frontends at all: its VIP
    // marker (port 0, protocol 0) exists from before its first service until after its last
    // (lb::reconcile). One lookup of the same key per new flow (a hot bucket) instead of one of
    // a random port per try (a cold one).
    // SAFETY: the scratch space's key and a map value's address: 4-aligned (crate::words).
    unsafe { words::copy_addr(&mut skey.addr, lb) };
    skey.port = 0;
    skey.proto = 0;
    skey.scope = SCOPE_EXTERNAL;
    let frontends = unsafe { OXI_SERVICES.get(&*skey) }.is_some();
    skey.proto = rkey.proto;
    for i in 0..SNAT_TRIES {
        // Each try an independent hash of the flow: tries of flows with close hashes do not
        // walk the same ports.
        let port = ((min + abi::lb::mix(h.wrapping_add(i)) % range) as u16).to_be();
        if frontends {
            // A frontend on the SNAT address: the backend's replies would be taken for new
            // flows to it.
            skey.port = port;
            if unsafe { OXI_SERVICES.get(&*skey) }.is_some() {
                continue;
            }
        }
        rkey.dport = port;
        if OXI_SNAT.insert(&*rkey, &*entry, BPF_NOEXIST as u64).is_ok() {
            t.snat_port = port;
            return 0;
        }
        let Some(e) = (unsafe { OXI_SNAT.get(&*rkey) }) else {
            continue;
        };
        // Still this client's (its conntrack entry closed or evicted while the SNAT entry
        // lived on): judged like any other holder, but not counted as a take-over.
        let ours = e.client == f.key.src
            && e.client_port == f.key.sport
            && e.vip == f.key.dst
            && e.vip_port == f.key.dport;
        let score = owner_score(e, port, f.key.proto, now);
        if score == u64::MAX {
            return take_over(t, rkey, entry, port, !ours);
        }
        if score > best.score {
            best.score = score;
            best.port = port;
            best.ours = ours as u16;
        }
    }
    let port = best.port;
    if port != 0 {
        rkey.dport = port;
        return take_over(t, rkey, entry, port, best.ours == 0);
    }
    reason::SNAT_EXHAUSTED
}

/// Gives the SNAT port `port` (the key's) to the new flow, replacing its entry; `count`: taken
/// from another flow (`snat_reuse`).
#[inline(always)]
fn take_over(t: &mut Target, rkey: &FlowKey, entry: &SnatEntry, port: u16, count: bool) -> u32 {
    if OXI_SNAT.insert(rkey, entry, 0).is_err() {
        return reason::SNAT_EXHAUSTED;
    }
    if count {
        stats::reason(reason::SNAT_REUSE, 0);
    }
    t.snat_port = port;
    0
}

/// How good a take-over of SNAT port `port`, held by entry `e`, is (`abi::ct::reuse_score`: 0
/// not free, `u64::MAX` nothing left at the backend, else the idle time): judged by the owner's
/// conntrack entry (the state's authority), or by the SNAT entry itself when the conntrack entry
/// is gone; a conntrack entry that belongs to another flow now (the client reused its port and
/// got another SNAT port or backend) leaves the port free, ranked by the SNAT entry's state and
/// idle time (at least 1). Idle times never go negative: another CPU may have stamped an entry
/// after this one read the clock.
#[inline(always)]
fn owner_score(e: &SnatEntry, port: u16, proto: u8, now: u64) -> u64 {
    // The owner's conntrack key, built in the per-CPU scratch space (the stack is short here:
    // this runs three calls deep). `reply` is free: only DNAT-only flows use it, never SNAT ones.
    let Some(s) = crate::maps::OXI_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch; only the `reply` field is written (callers hold the flow and
    // target fields).
    let key = unsafe { &mut *core::ptr::addr_of_mut!((*s).reply) };
    // SAFETY: the scratch space's key and a map value's addresses: 4-aligned (crate::words).
    unsafe {
        words::copy_addr(&mut key.src, &e.client);
        words::copy_addr(&mut key.dst, &e.vip);
        words::set_proto(key, proto);
    }
    key.sport = e.client_port;
    key.dport = e.vip_port;
    match unsafe { OXI_CONNTRACK.get(&*key) } {
        Some(c) if c.snat_port == port && c.backend_id == e.backend_id => {
            let last = if c.last_seen_ns > e.last_seen_ns {
                c.last_seen_ns
            } else {
                e.last_seen_ns
            };
            let idle = now.saturating_sub(last);
            ct::reuse_score(c.flags, proto, idle, timeouts(), c.svc_timeout_s)
        }
        // The owner's flow is gone (its client port went to a newer flow): free, ranked by
        // what the SNAT entry's own mirror of its state says.
        Some(_) => {
            let idle = now.saturating_sub(e.last_seen_ns);
            let score = ct::reuse_score(e.flags, proto, idle, timeouts(), 0);
            if score == 0 { 1 } else { score }
        }
        None => {
            let idle = now.saturating_sub(e.last_seen_ns);
            ct::reuse_score(e.flags, proto, idle, timeouts(), 0)
        }
    }
}

/// The SNAT entry of a reply (backend → LB address, or backend → client for DNAT-only flows), if
/// this packet is one. Its state moves on; on a change (first reply, FIN, RST) the flow's
/// conntrack entry, the state's authority, is updated too.
#[inline(never)]
pub fn snat_reply(f: &Flow) -> Option<&'static mut SnatEntry> {
    let e = OXI_SNAT.get_ptr_mut(&f.key)?;
    // SAFETY: LRU value; racing CPUs may interleave state updates, which the next packet fixes.
    let e = unsafe { &mut *e };
    e.last_seen_ns = clock();
    let proto = f.key.proto;
    let flags = ct::next(e.flags, proto, f.tcp_flags, true);
    if flags != e.flags {
        let key = FlowKey {
            src: e.client,
            dst: e.vip,
            sport: e.client_port,
            dport: e.vip_port,
            proto,
            _pad: [0; 3],
        };
        e.flags = flags;
        if let Some(c) = OXI_CONNTRACK.get_ptr_mut(&key) {
            let c = unsafe { &mut *c };
            if c.backend_id == e.backend_id && (c.snat_port == 0 || c.snat_port == f.key.dport) {
                c.flags = ct::next(c.flags, proto, f.tcp_flags, true);
                e.flags = c.flags;
            }
        }
    }
    Some(e)
}
