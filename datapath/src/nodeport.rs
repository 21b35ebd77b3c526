//! NodePort, LoadBalancer and externalIPs for traffic from outside the cluster, at tc on the node's
//! external devices (tc/: `oxilium_nodeport_ingress` / `oxilium_nodeport_egress`).
//!
//! Ingress, client → frontend (a `SCOPE_EXTERNAL` entry of `OXI_SERVICES`): the backend comes from
//! conntrack or the service's table ([`lb::select_with`], the edge LB's selection), or for a
//! service with ClientIP affinity the client address's affinity entry ([`affinity::select`]). A
//! new flow is first checked against the service's loadBalancerSourceRanges. Then:
//! - backend on this node (in the endpoints map): DNAT only, the pod sees the client's address;
//!   the frame is redirected to the pod's veth; the pod's reply is restored to frontend → client
//!   at the egress of the external device through an `OXI_SNAT` entry keyed by the reply;
//! - backend elsewhere: DNAT + SNAT to the node's address (the edge LB's SNAT port allocation),
//!   sent through the FIB; the reply comes back to the node and is restored at ingress;
//! - backend elsewhere, service in DSR mode: the packet is tunnelled (IP-in-IP, [`encap`]) to the
//!   backend's address, the outer header carrying the backend port. The backend's node takes the
//!   tunnel off at its own ingress ([`tunnel`]), DNATs to the pod keeping the client, and restores
//!   the pod's reply to frontend → client at its egress: the reply goes straight to the client.
//!
//! Rewrites go through the skb checksum helpers (bpf_l3/l4_csum_replace with BPF_F_PSEUDO_HDR),
//! so packets in any checksum state (CHECKSUM_PARTIAL from local senders, COMPLETE from NICs) stay
//! valid: unlike XDP, tc sees offloaded packets.
use crate::{
    affinity::{self, AffinityMaps},
    encap,
    headers::*,
    icmp,
    lb::{self, NewFlow, Target},
    maps::{self, OXI_SNAT},
    parse::Flow,
    skb::{parse_tc, rewrite, set_macs, transmit},
    stats,
};
use abi::{
    lb::{Addr, Counter, FAMILY_V6, FlowKey, MODE_DSR, ServiceValue, SnatEntry, reason},
    nodeport::{
        Endpoint, MAX_ENDPOINTS, MAX_SOURCE_RANGES, RANGE_ALLOW, RANGE_ID_BITS, RangeData,
        reason as np,
    },
};
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    helpers::generated::bpf_redirect,
    programs::TcContext,
};

pub type EndpointMap = HashMap<Addr, Endpoint, { MAX_ENDPOINTS as usize }>;
pub type SourceRangeMap = LpmTrie<RangeData, u8, { MAX_SOURCE_RANGES as usize }>;
pub type NodePortStatsMap = PerCpuArray<Counter, { np::COUNT as usize }>;

/// The NodePort programs' own maps, defined as `#[btf_map]` statics by the tc crate (names in
/// `abi::nodeport::names`) so that the XDP and socket objects do not carry them (see
/// `crate::sock::SockMaps`).
pub trait NodePortMaps {
    /// Pod address on this node → its veth.
    fn endpoints() -> &'static EndpointMap;
    /// (service id, client prefix) → allow / deny (loadBalancerSourceRanges).
    fn source_ranges() -> &'static SourceRangeMap;
    fn stats() -> &'static NodePortStatsMap;
}

/// Defines the NodePort maps (`OXI_NP_ENDPOINTS`, `OXI_NP_SOURCE_RANGES`, `OXI_NP_STATS`) as
/// `#[btf_map]` statics in the calling program crate, and `Maps`, their [`NodePortMaps`]. Every
/// object with NodePort programs (tc/, and xdp/ for the XDP acceleration) invokes it once; the
/// agent pins the maps by name, so the objects share them.
#[macro_export]
macro_rules! nodeport_maps {
    () => {
        #[aya_ebpf::macros::btf_map]
        static OXI_NP_ENDPOINTS: $crate::nodeport::EndpointMap = aya_ebpf::btf_maps::HashMap::new();
        #[aya_ebpf::macros::btf_map]
        static OXI_NP_SOURCE_RANGES: $crate::nodeport::SourceRangeMap =
            aya_ebpf::btf_maps::LpmTrie::new();
        #[aya_ebpf::macros::btf_map]
        static OXI_NP_STATS: $crate::nodeport::NodePortStatsMap =
            aya_ebpf::btf_maps::PerCpuArray::new();

        struct Maps;

        impl $crate::nodeport::NodePortMaps for Maps {
            #[inline(always)]
            fn endpoints() -> &'static $crate::nodeport::EndpointMap {
                &OXI_NP_ENDPOINTS
            }
            #[inline(always)]
            fn source_ranges() -> &'static $crate::nodeport::SourceRangeMap {
                &OXI_NP_SOURCE_RANGES
            }
            #[inline(always)]
            fn stats() -> &'static $crate::nodeport::NodePortStatsMap {
                &OXI_NP_STATS
            }
        }
    };
}

#[inline(always)]
pub fn count<M: NodePortMaps>(r: u32, bytes: u64) {
    if let Some(c) = M::stats().get_ptr_mut(r) {
        // SAFETY: this CPU's slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
    crate::events::trace(abi::event::SET_NODEPORT, r);
}

/// Counts a dropped packet under NodePort reason `r` and reports the drop (crate::events).
#[inline(always)]
pub fn drop<M: NodePortMaps>(r: u32, bytes: u64) {
    count::<M>(r, bytes);
    crate::events::drop(abi::event::SET_NODEPORT, r);
}

/// tc ingress of an external device: frontends translated, remote backends' replies restored.
#[inline(always)]
pub fn ingress<M: NodePortMaps + AffinityMaps>(ctx: &TcContext) -> i32 {
    let bytes = ctx.len() as u64;
    let Some(s) = parse_tc(ctx, true) else {
        return TC_ACT_OK as i32;
    };
    let f = &s.flow;
    if f.icmp_error {
        return icmp::skb::nodeport_ingress::<M>(ctx, s, bytes);
    }
    if f.key.proto == IPPROTO_IPIP || f.key.proto == IPPROTO_IPV6 {
        return tunnel::<M>(ctx, s, bytes);
    }
    if let Some(svc) = lb::service(&f.key) {
        return forward::<M>(ctx, f, &mut s.target, &mut s.rewrite, svc, bytes);
    }
    if let Some(e) = lb::snat_reply(f) {
        return reply::<M>(ctx, f, &mut s.rewrite, e, bytes, true);
    }
    stats::reason(reason::PASS, bytes);
    TC_ACT_OK as i32
}

/// tc egress of an external device: local backends' replies restored to frontend → client;
/// pods' traffic leaving the cluster masqueraded ([`crate::masq`]).
#[inline(always)]
pub fn egress<M: NodePortMaps>(ctx: &TcContext) -> i32 {
    let bytes = ctx.len() as u64;
    let Some(s) = parse_tc(ctx, false) else {
        return TC_ACT_OK as i32;
    };
    let f = &s.flow;
    if f.icmp_error {
        // A local backend's error about a packet it got from a client (DNAT'ed).
        if icmp::skb::prepare(ctx, s) && icmp::skb::backend_side(ctx, s) {
            return icmp::skb::continue_translated(bytes);
        }
        return TC_ACT_OK as i32;
    }
    match lb::snat_reply(f) {
        Some(e) => reply::<M>(ctx, f, &mut s.rewrite, e, bytes, false),
        None => crate::masq::egress(ctx, f, &mut s.target, &mut s.rewrite, bytes),
    }
}

/// Decides a new flow once its backend is chosen: refused outside the source ranges, DNAT only
/// (and a reply entry recorded) for a pod of this node, SNAT otherwise. Not inlined: its frame
/// must not add to select_with's, which calls the SNAT port allocation.
#[inline(never)]
pub fn new_flow<M: NodePortMaps>(f: &Flow, svc: &ServiceValue, t: &Target) -> NewFlow {
    let key = Key::new(
        RANGE_ID_BITS + 128,
        RangeData {
            service_id_be: svc.id.to_be(),
            addr: f.key.src,
        },
    );
    if let Some(v) = M::source_ranges().get(&key) {
        if *v != RANGE_ALLOW {
            return NewFlow::Refuse;
        }
    }
    // SAFETY: read-only lookup of a value the agent writes whole.
    if unsafe { M::endpoints().get(&t.backend.addr) }.is_none() {
        return if svc.mode == MODE_DSR {
            NewFlow::Keep
        } else {
            NewFlow::Snat
        };
    }
    expect_reply(f, &t.backend.addr, t.backend.port, svc.id, t.backend_id);
    NewFlow::Keep
}

/// Records how the reply of a pod of this node to the flow `f`, DNAT'ed to `backend`:`port`
/// (network byte order), is restored to frontend → client: an `OXI_SNAT` entry keyed by the
/// reply, used at the external device's egress.
#[inline(always)]
fn expect_reply(f: &Flow, backend: &Addr, port: u16, service_id: u32, backend_id: u32) {
    let Some(s) = maps::OXI_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch; only the `reply` field is written here (callers hold the
    // flow and target fields).
    let rkey = unsafe { &mut *core::ptr::addr_of_mut!((*s).reply) };
    rkey.src = *backend;
    rkey.dst = f.key.src;
    rkey.sport = port;
    rkey.dport = f.key.sport;
    rkey.proto = f.key.proto;
    // Already there for this frontend (every packet of a DSR flow asks): nothing to write. An
    // entry for another frontend (the client's port reused towards another service port of the
    // same pod) is replaced.
    // SAFETY: read-only use of an LRU value.
    if OXI_SNAT
        .get_ptr(&*rkey)
        .is_some_and(|e| unsafe { (*e).vip == f.key.dst && (*e).vip_port == f.key.dport })
    {
        return;
    }
    let entry = SnatEntry {
        client: f.key.src,
        vip: f.key.dst,
        client_port: f.key.sport,
        vip_port: f.key.dport,
        service_id,
        backend_id,
        flags: 0,
        _pad: 0,
        last_seen_ns: crate::lb::clock(),
    };
    // Failure (never expected: LRU) would only leave the reply untranslated.
    let _ = OXI_SNAT.insert(&*rkey, &entry, 0);
}

/// Client → frontend.
#[inline(always)]
fn forward<M: NodePortMaps + AffinityMaps>(
    ctx: &TcContext,
    f: &Flow,
    t: &mut Target,
    new: &mut FlowKey,
    svc: &ServiceValue,
    bytes: u64,
) -> i32 {
    let r = affinity::select::<M, _>(f, svc, bytes, t, new_flow::<M>);
    if r == lb::REFUSED {
        drop::<M>(np::SOURCE_RANGE, bytes);
        return TC_ACT_SHOT as i32;
    }
    if r != 0 {
        stats::drop(r, bytes);
        return TC_ACT_SHOT as i32;
    }
    let b = &t.backend;
    if (b.family == FAMILY_V6) != f.v6 {
        drop::<M>(np::FAMILY, bytes);
        return TC_ACT_SHOT as i32;
    }
    stats::service(svc.id, bytes);
    stats::backend(t.backend_id, bytes);
    new.dst = b.addr;
    new.dport = b.port;
    new.proto = f.key.proto;
    // SAFETY: as above (`new_flow`).
    if let Some(ep) = unsafe { M::endpoints().get(&b.addr) } {
        new.src = f.key.src;
        new.sport = f.key.sport;
        if rewrite(ctx, f, new).is_err() || set_macs(ctx, &ep.mac, &ep.node_mac).is_err() {
            drop::<M>(np::ERROR, bytes);
            return TC_ACT_SHOT as i32;
        }
        count::<M>(np::LOCAL, bytes);
        return unsafe { bpf_redirect(ep.ifindex, 0) } as i32;
    }
    let Some(node) = lb::lb_addr(f.v6) else {
        stats::drop(reason::ERROR, bytes);
        return TC_ACT_SHOT as i32;
    };
    if t.snat_port == 0 && svc.mode == MODE_DSR {
        // The flow keeps its path: one pinned with a SNAT port stays SNAT'ed after a mode change.
        let hlen = if f.v6 {
            IPV6_HLEN
        } else {
            encap::outer_v4_len(b.port)
        };
        let mtu = icmp::skb::encap_too_big(ctx, f, node, &b.addr, hlen);
        if mtu != 0 {
            return icmp::skb::too_big(ctx, f, mtu);
        }
        if !encap::encap_skb(ctx, f, node, &b.addr, b.port) {
            drop::<M>(np::ERROR, bytes);
            return TC_ACT_SHOT as i32;
        }
        count::<M>(np::DSR, bytes);
        stats::reason(reason::FWD_DSR, bytes);
        return transmit(ctx, f.v6, node, &b.addr);
    }
    if t.snat_port == 0 {
        // A flow pinned while its backend was local, whose pod has gone: nothing to reuse.
        stats::drop(reason::NO_BACKEND, bytes);
        return TC_ACT_SHOT as i32;
    }
    new.src = *node;
    new.sport = t.snat_port;
    if rewrite(ctx, f, new).is_err() {
        drop::<M>(np::ERROR, bytes);
        return TC_ACT_SHOT as i32;
    }
    count::<M>(np::REMOTE, bytes);
    stats::reason(reason::FWD_SNAT, bytes);
    transmit(ctx, f.v6, &new.src, &new.dst)
}

/// Backend → client: restore frontend → client. At ingress (a remote backend's reply to the
/// node's SNAT address) the packet is then sent on through the FIB; at egress (a local pod's
/// reply, already routed) it continues on its way.
#[inline(always)]
fn reply<M: NodePortMaps>(
    ctx: &TcContext,
    f: &Flow,
    new: &mut FlowKey,
    e: &SnatEntry,
    bytes: u64,
    ingress: bool,
) -> i32 {
    new.src = e.vip;
    new.dst = e.client;
    new.sport = e.vip_port;
    new.dport = e.client_port;
    new.proto = f.key.proto;
    if e.service_id != 0 {
        stats::service(e.service_id, bytes);
    }
    if rewrite(ctx, f, new).is_err() {
        drop::<M>(np::ERROR, bytes);
        return TC_ACT_SHOT as i32;
    }
    if !ingress {
        count::<M>(np::REV_DNAT, bytes);
        return TC_ACT_OK as i32;
    }
    count::<M>(np::REV_SNAT, bytes);
    stats::reason(reason::REV_SNAT, bytes);
    transmit(ctx, f.v6, &new.src, &new.dst)
}

/// DSR, receiving side: a tunnel packet (`s.flow`, parsed up to its outer header) addressed to a
/// pod of this node and carrying a port is decapsulated and DNAT'ed to that pod and port, the
/// client kept; the pod's reply is restored at egress (an `OXI_SNAT` entry, as for local
/// backends). Other tunnel packets pass untouched. The service need not be known on this node.
#[inline(never)]
fn tunnel<M: NodePortMaps>(ctx: &TcContext, s: &mut maps::Scratch, bytes: u64) -> i32 {
    let f = &s.flow;
    // SAFETY: read-only lookup of a value the agent writes whole.
    let Some(ep) = (unsafe { M::endpoints().get(&f.key.dst) }) else {
        stats::reason(reason::PASS, bytes);
        return TC_ACT_OK as i32;
    };
    let port = encap::carried_port(ctx.data(), ctx.data_end(), f.l3_off, f.v6);
    if port == 0 {
        stats::reason(reason::PASS, bytes);
        return TC_ACT_OK as i32;
    }
    let backend = f.key.dst;
    let inner_v6 = f.key.proto == IPPROTO_IPV6;
    if inner_v6 != !abi::lb::is_v4_mapped(&backend) {
        drop::<M>(np::FAMILY, bytes);
        return TC_ACT_SHOT as i32;
    }
    if !encap::decap_skb(ctx, f) {
        drop::<M>(np::ERROR, bytes);
        return TC_ACT_SHOT as i32;
    }
    // The inner packet: TCP or UDP, not a fragment (the sender only tunnels those).
    let Some(s) = parse_tc(ctx, false) else {
        drop::<M>(np::ERROR, bytes);
        return TC_ACT_SHOT as i32;
    };
    let f = &s.flow;
    if f.icmp_error {
        return icmp::skb::tunnelled(ctx, s, &backend, port, ep);
    }
    // No service id: ids are per node, and the frontend is usually another node's address. The
    // flow is counted by `dsr_in` and its reply by `rev_dnat`.
    expect_reply(f, &backend, port, 0, 0);
    let new = &mut s.rewrite;
    new.src = f.key.src;
    new.sport = f.key.sport;
    new.dst = backend;
    new.dport = port;
    new.proto = f.key.proto;
    if rewrite(ctx, f, new).is_err() || set_macs(ctx, &ep.mac, &ep.node_mac).is_err() {
        drop::<M>(np::ERROR, bytes);
        return TC_ACT_SHOT as i32;
    }
    count::<M>(np::DSR_IN, bytes);
    unsafe { bpf_redirect(ep.ifindex, 0) as i32 }
}
