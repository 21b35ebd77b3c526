//! Masquerade of pod traffic leaving the cluster, at the egress of the node's external devices
//! (called by [`crate::nodeport::egress`] for what is not a NodePort reply).
//!
//! A TCP or UDP packet whose source is a local pod marked [`FLAG_MASQUERADE`] in `OXI_ENDPOINTS`
//! and whose destination is in no prefix of `OXI_MASQ_EXCEPT` (the agent writes the cluster's pod
//! CIDRs, every node address and `--non-masquerade-cidr`) leaves with the node's SNAT address and
//! a SNAT port: the NodePort SNAT machinery as it is, the destination standing for the backend
//! and service id 0 for "no service". The conntrack entry (pod → destination) keeps the port for
//! the flow's life and its `OXI_SNAT` twin (destination → node:port) restores the replies at the
//! device's ingress ([`crate::lb::snat_reply`], as for NodePort's remote backends); ports are
//! reused with the same lifecycle rules.
use crate::{
    endpoint::OXI_ENDPOINTS,
    headers::{IPPROTO_TCP, IPPROTO_UDP},
    lb::{self, Target},
    maps::OXI_CONNTRACK,
    parse::Flow,
    skb::rewrite,
    stats,
};
use abi::{
    ct,
    endpoint::{EndpointKey, FLAG_MASQUERADE, MAX_MASQ_EXCEPT},
    lb::{Addr, CtEntry, FAMILY_V4, FAMILY_V6, FlowKey, reason},
};
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::{LpmTrie, lpm_trie::Key},
    helpers::bpf_ktime_get_ns,
    macros::btf_map,
    programs::TcContext,
};

/// Destinations never masqueraded (abi::endpoint::names::MASQ_EXCEPT): prefix over the
/// 16-byte address (IPv4-mapped for IPv4) → 1.
#[btf_map]
pub static OXI_MASQ_EXCEPT: LpmTrie<Addr, u8, { MAX_MASQ_EXCEPT as usize }> = LpmTrie::new();

/// Masquerades `f` if it is a pod's flow leaving the cluster; TC_ACT_OK otherwise.
#[inline(always)]
pub fn egress(ctx: &TcContext, f: &Flow, t: &mut Target, new: &mut FlowKey, bytes: u64) -> i32 {
    if f.key.proto != IPPROTO_TCP && f.key.proto != IPPROTO_UDP {
        return TC_ACT_OK as i32;
    }
    // SAFETY: read-only lookups of values the agent writes whole.
    let Some(ep) = (unsafe { OXI_ENDPOINTS.get(&EndpointKey { addr: f.key.src }) }) else {
        return TC_ACT_OK as i32;
    };
    if ep.flags & FLAG_MASQUERADE == 0 {
        return TC_ACT_OK as i32;
    }
    if OXI_MASQ_EXCEPT.get(&Key::new(128, f.key.dst)).is_some() {
        return TC_ACT_OK as i32;
    }
    // The flag as a 0/1 the verifier can see (a plain bool read lets the compiler index the
    // config by an unbounded byte).
    let v6 = unsafe { core::ptr::read_volatile(&f.v6 as *const bool as *const u8) } & 1;
    let Some(node) = lb::lb_addr(v6 != 0) else {
        // No SNAT address (not ready): the packet leaves as it is.
        return TC_ACT_OK as i32;
    };
    let r = port(f, t, bytes);
    if r != 0 {
        stats::reason(r, bytes);
        return TC_ACT_SHOT as i32;
    }
    new.src = *node;
    new.sport = t.snat_port;
    new.dst = f.key.dst;
    new.dport = f.key.dport;
    new.proto = f.key.proto;
    if rewrite(ctx, f, new).is_err() {
        stats::reason(reason::ERROR, bytes);
        return TC_ACT_SHOT as i32;
    }
    stats::reason(reason::FWD_SNAT, bytes);
    TC_ACT_OK as i32
}

/// The flow's SNAT port into `t`: its conntrack entry's while it lives, else a new one. Returns
/// 0 or the drop reason.
#[inline(never)]
fn port(f: &Flow, t: &mut Target, bytes: u64) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    t.backend_id = 0;
    t.backend.addr = f.key.dst;
    t.backend.port = f.key.dport;
    t.backend.family = if f.v6 { FAMILY_V6 } else { FAMILY_V4 };
    t.backend.state = 0;
    t.backend.service_id = 0;
    t.snat_port = 0;
    if let Some(e) = OXI_CONNTRACK.get_ptr_mut(&f.key) {
        // SAFETY: LRU value; racing CPUs only lose counts.
        let e = unsafe { &mut *e };
        let idle = now.saturating_sub(e.last_seen_ns);
        let live = e.service_id == 0
            && e.backend_id == 0
            && e.snat_port != 0
            && !ct::expired(e.flags, f.key.proto, idle, lb::timeouts(), 0)
            && !ct::restarts(e.flags, f.key.proto, f.tcp_flags);
        if live {
            e.last_seen_ns = now;
            e.packets += 1;
            e.bytes += bytes;
            t.snat_port = e.snat_port;
            let flags = ct::next(e.flags, f.key.proto, f.tcp_flags, false);
            if flags != e.flags {
                e.flags = flags;
                lb::mirror_state(f, t, flags);
            }
            return 0;
        }
    }
    let r = lb::snat_port(f, t, 0, now);
    if r != 0 {
        return r;
    }
    let entry = CtEntry {
        backend_id: 0,
        service_id: 0,
        last_seen_ns: now,
        packets: 1,
        bytes,
        snat_port: t.snat_port,
        flags: ct::next(ct::NEW, f.key.proto, f.tcp_flags, false),
        svc_timeout_s: 0,
    };
    // A full LRU evicts the least recently used flow.
    let _ = OXI_CONNTRACK.insert(&f.key, &entry, 0);
    stats::reason(reason::CT_NEW, 0);
    0
}
