//! Network policy on the endpoint programs (see docs/policy.md, "Enforcement"): an endpoint's
//! egress is checked on its from-pod hook after service translation (so a Service is checked
//! against the backend chosen), its ingress on its to-pod hook before reply translation.
//!
//! Per packet: the endpoint (`OXI_ENDPOINTS`, by its own address) must have
//! `ep_flags::POLICY`; a flow already let through (`OXI_POLICY_CT`, keyed by endpoint, peer and
//! ports, either direction) passes; otherwise the peer's identity comes from `OXI_IPCACHE`
//! (longest prefix; none = world), traffic from the host into a pod is allowed unless
//! `ep_flags::NO_HOST_ALLOW`, and the endpoint's policy map (`OXI_POLICY[endpoint id]`) is looked
//! up for the peer identity and for the wildcard (abi::policy::pick). An allowed flow opens a
//! conntrack entry, so its replies pass; anything else is dropped, or in audit mode counted and
//! let through. A redirect entry (L7) hands the flow to its proxy ([`crate::proxy`]); the
//! proxy's own upstream connections are recognised by their mark.
//!
//! A policy event (`crate::events::policy`) reports each new flow's verdict (allowed or audited,
//! once: when its conntrack entry is made) and each denied packet, with both identities and the
//! kind of entry that decided; established packets write none.
use crate::{endpoint::OXI_ENDPOINTS, events, proxy, skb::parse_tc};
use abi::{
    endpoint::{EndpointInfo, EndpointKey},
    event::{
        MATCH_ALL, MATCH_HOST, MATCH_L3_L4, MATCH_L3_ONLY, MATCH_L4_ONLY, MATCH_NONE,
        VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY,
    },
    lb::Addr,
    policy::{
        ACTION_ALLOW, ACTION_REDIRECT, CT_TIMEOUT_OTHER_NS, CT_TIMEOUT_TCP_NS, DIR_EGRESS,
        DIR_INGRESS, IDENTITY_HOST, IDENTITY_WORLD, IpcacheValue, MAX_ENTRIES, MAX_IPCACHE,
        MAX_POLICY_CT, MAX_POLICY_ENDPOINTS, PREFIX_FULL, PREFIX_STATIC, Pick, PolicyCtKey,
        PolicyCtValue, PolicyData, PolicyStats, PolicyValue, ep_flags, pick,
    },
    proxy::{MARK_FROM_EGRESS_PROXY, MARK_FROM_INGRESS_PROXY, MARK_MASK, mark_identity},
};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::{HashMap, HashOfMaps, LpmTrie, LruHashMap, lpm_trie::Key},
    helpers::bpf_ktime_get_ns,
    macros::btf_map,
    programs::TcContext,
};

const PROTO_TCP: u8 = 6;

/// Endpoint id → its policy map (abi::policy::names::POLICY).
#[btf_map]
pub static OXI_POLICY: HashOfMaps<
    u32,
    LpmTrie<PolicyData, PolicyValue, { MAX_ENTRIES as usize }>,
    { MAX_POLICY_ENDPOINTS as usize },
> = HashOfMaps::new();

/// Address prefix → identity (abi::policy::names::IPCACHE).
#[btf_map]
pub static OXI_IPCACHE: LpmTrie<Addr, IpcacheValue, { MAX_IPCACHE as usize }> = LpmTrie::new();

/// Flows a policy let through (abi::policy::names::POLICY_CT).
#[btf_map]
pub static OXI_POLICY_CT: LruHashMap<PolicyCtKey, PolicyCtValue, { MAX_POLICY_CT as usize }> =
    LruHashMap::new();

/// Endpoint id → counters; the agent makes each endpoint's entry (abi::policy::names::POLICY_STATS).
#[btf_map]
pub static OXI_POLICY_STATS: HashMap<
    u32,
    PolicyStats,
    { MAX_POLICY_ENDPOINTS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Which counter of [`PolicyStats`] a packet goes to.
#[derive(Clone, Copy)]
enum Outcome {
    Allowed,
    Denied,
    Audited,
    Established,
}

/// Adds to a shared counter. Not atomic (the target has no atomic read-modify-write in core):
/// two CPUs adding at once may lose one of the adds, so the counters are approximate.
#[inline(always)]
fn add(p: *mut u64, n: u64) {
    // SAFETY: `p` points into a map value; the kernel keeps it valid for this program run.
    unsafe { p.write_volatile(p.read_volatile().wrapping_add(n)) };
}

#[inline(always)]
fn count(endpoint: u32, o: Outcome) {
    let Some(s) = OXI_POLICY_STATS.get_ptr_mut(endpoint) else {
        return;
    };
    // SAFETY: a valid map value pointer; only field addresses are taken.
    let p = unsafe {
        match o {
            Outcome::Allowed => &raw mut (*s).allowed,
            Outcome::Denied => &raw mut (*s).denied,
            Outcome::Audited => &raw mut (*s).audited,
            Outcome::Established => &raw mut (*s).established,
        }
    };
    add(p, 1);
}

/// The identity of an address: the ipcache's longest prefix, else world.
#[inline(always)]
pub fn identity_of(addr: &Addr) -> u32 {
    match OXI_IPCACHE.get(&Key::new(128, *addr)) {
        Some(v) => v.identity,
        None => IDENTITY_WORLD,
    }
}

/// The endpoint's egress (packets it sends; on its from-pod hook, after service translation).
/// A function of its own (a BPF-to-BPF call): its stack is not added to the caller's frame.
#[inline(never)]
pub fn egress(ctx: &TcContext) -> i32 {
    let Some(s) = parse_tc(ctx, false) else {
        return TC_ACT_OK;
    };
    let f = &s.flow;
    if f.icmp_error {
        return TC_ACT_OK;
    }
    let k = f.key;
    // SAFETY: read-only lookup; the value is copied.
    let Some(ep) = (unsafe { OXI_ENDPOINTS.get(&EndpointKey { addr: k.src }) }).copied() else {
        // Not an endpoint's address (link-local neighbour discovery, ...): no policy.
        return TC_ACT_OK;
    };
    let l4 = L4 {
        proto: k.proto,
        tcp_flags: f.tcp_flags,
        v6: f.v6,
        at_ingress: true,
    };
    check(ctx, &ep, DIR_EGRESS, &k.dst, k.sport, k.dport, l4)
}

/// The endpoint's ingress (packets to it; on its to-pod hook, before reply translation);
/// `at_ingress`: the hook is tc ingress (the from-pod program delivering locally), where a
/// redirect to a proxy is possible.
#[inline(never)]
pub fn ingress(ctx: &TcContext, at_ingress: bool) -> i32 {
    let Some(s) = parse_tc(ctx, false) else {
        return TC_ACT_OK;
    };
    let f = &s.flow;
    if f.icmp_error {
        return TC_ACT_OK;
    }
    let k = f.key;
    // SAFETY: read-only lookup; the value is copied.
    let Some(ep) = (unsafe { OXI_ENDPOINTS.get(&EndpointKey { addr: k.dst }) }).copied() else {
        return TC_ACT_OK;
    };
    let l4 = L4 {
        proto: k.proto,
        tcp_flags: f.tcp_flags,
        v6: f.v6,
        at_ingress,
    };
    check(ctx, &ep, DIR_INGRESS, &k.src, k.dport, k.sport, l4)
}

/// What [`check`] needs of the packet besides addresses and ports.
#[derive(Clone, Copy)]
struct L4 {
    proto: u8,
    tcp_flags: u8,
    v6: bool,
    at_ingress: bool,
}

impl L4 {
    #[inline(always)]
    fn packet(&self) -> proxy::Packet {
        proxy::Packet::new(self.proto, self.tcp_flags, self.v6, self.at_ingress)
    }
}

#[inline(always)]
fn check(
    ctx: &TcContext,
    ep: &EndpointInfo,
    dir: u8,
    remote: &Addr,
    local_port: u16,
    remote_port: u16,
    l4: L4,
) -> i32 {
    let proto = l4.proto;
    if ep.flags & ep_flags::POLICY == 0 {
        return TC_ACT_OK;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let ct_key = PolicyCtKey {
        endpoint: ep.id,
        remote: *remote,
        local_port,
        remote_port,
        proto,
        _pad: [0; 3],
    };
    let timeout = if proto == PROTO_TCP {
        CT_TIMEOUT_TCP_NS
    } else {
        CT_TIMEOUT_OTHER_NS
    };
    if let Some(ct) = OXI_POLICY_CT.get_ptr_mut(ct_key) {
        // SAFETY: a valid map value pointer.
        unsafe {
            if now.saturating_sub((*ct).last_ns) < timeout {
                (*ct).last_ns = now;
                count(ep.id, Outcome::Established);
                let port = (*ct).proxy_port;
                if port != 0 && (*ct).direction == dir {
                    return proxy::redirect(ctx, port, l4.packet());
                }
                return TC_ACT_OK;
            }
        }
    }
    // A proxy's upstream connection (ingress only: it leaves the node's stack towards the pod).
    let upstream = if dir == DIR_INGRESS {
        proxy::upstream_mark(ctx)
    } else {
        0
    };
    let peer = if upstream & MARK_MASK == MARK_FROM_EGRESS_PROXY {
        mark_identity(upstream)
    } else {
        identity_of(remote)
    };
    // The dport of the lookup is the destination port of the flow's first packet.
    let dport = if dir == DIR_EGRESS {
        remote_port
    } else {
        local_port
    };
    let (allowed, proxy_port) = if upstream & MARK_MASK == MARK_FROM_INGRESS_PROXY {
        // The ingress proxy's upstream connection: the proxy already decided.
        events::policy_match(MATCH_NONE, ACTION_ALLOW);
        (true, 0)
    } else if dir == DIR_INGRESS && peer == IDENTITY_HOST && ep.flags & ep_flags::NO_HOST_ALLOW == 0
    {
        events::policy_match(MATCH_HOST, ACTION_ALLOW);
        (true, 0)
    } else {
        match lookup(ep.id, peer, dir, proto, dport, ctx.len() as u64) {
            (ACTION_ALLOW, _) => (true, 0),
            (ACTION_REDIRECT, port) if port != 0 => (true, port),
            _ => (false, 0),
        }
    };
    let audit = !allowed && ep.flags & ep_flags::AUDIT != 0;
    let (src, dst) = if dir == DIR_EGRESS {
        (ep.identity, peer)
    } else {
        (peer, ep.identity)
    };
    if !allowed && !audit {
        count(ep.id, Outcome::Denied);
        events::policy(VERDICT_DENY, dir, src, dst);
        return TC_ACT_SHOT;
    }
    events::policy(
        if audit { VERDICT_AUDIT } else { VERDICT_ALLOW },
        dir,
        src,
        dst,
    );
    count(
        ep.id,
        if audit {
            Outcome::Audited
        } else {
            Outcome::Allowed
        },
    );
    let v = PolicyCtValue {
        last_ns: now,
        direction: dir,
        audit: audit as u8,
        proxy_port,
        _pad: [0; 4],
    };
    let _ = OXI_POLICY_CT.insert(ct_key, v, 0);
    if proxy_port != 0 {
        return proxy::redirect(ctx, proxy_port, l4.packet());
    }
    TC_ACT_OK
}

/// The endpoint's policy map for (peer, direction, proto, port): the deciding entry's action
/// and proxy port (network byte order), (0, 0) without one. Counts the packet on the entry.
#[inline(always)]
fn lookup(endpoint: u32, peer: u32, dir: u8, proto: u8, dport: u16, bytes: u64) -> (u8, u16) {
    let mut data = PolicyData {
        identity: peer.to_be(),
        direction: dir,
        proto,
        dport,
    };
    // SAFETY: the value pointers are used within this run only.
    let vp = unsafe { OXI_POLICY.get_value_ptr_mut(&endpoint, &Key::new(PREFIX_FULL, data)) };
    data.identity = 0;
    // SAFETY: as above.
    let va = unsafe { OXI_POLICY.get_value_ptr_mut(&endpoint, &Key::new(PREFIX_FULL, data)) };
    // SAFETY: valid map value pointers (or None).
    let summary =
        |v: Option<*mut PolicyValue>| v.map(|p| unsafe { ((*p).action, (*p).prefix_len) });
    let decider = pick(summary(vp), summary(va));
    let chosen = match decider {
        Pick::Peer => vp,
        Pick::Any => va,
        Pick::None => None,
    };
    note_match(decider, summary(chosen));
    let Some(v) = chosen else {
        return (0, 0);
    };
    // SAFETY: a valid map value pointer.
    unsafe {
        add(&raw mut (*v).packets, 1);
        add(&raw mut (*v).bytes, bytes);
        ((*v).action, (*v).proxy_port)
    }
}

/// Notes for the policy event which kind of entry decided (abi::event::MATCH_*) and its action.
#[inline(always)]
fn note_match(decider: Pick, entry: Option<(u8, u8)>) {
    let Some((action, prefix_len)) = entry else {
        events::policy_match(MATCH_NONE, 0);
        return;
    };
    let any_port = prefix_len as u32 <= PREFIX_STATIC;
    let rule = match (decider, any_port) {
        (Pick::Peer, true) => MATCH_L3_ONLY,
        (Pick::Peer, false) => MATCH_L3_L4,
        (_, true) => MATCH_ALL,
        (_, false) => MATCH_L4_ONLY,
    };
    events::policy_match(rule, action);
}
