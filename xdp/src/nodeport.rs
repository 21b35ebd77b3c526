//! XDP acceleration of the NodePort path (`oxilium agent --role node --nodeport-acceleration`):
//! on the node's external devices, before the skb exists, flows to NodePort / LoadBalancer /
//! externalIP frontends whose backend is on another node are sent on at once (SNAT, or the DSR
//! tunnel), and those backends' SNAT'ed replies are restored. The decisions are the tc program's
//! (datapath::nodeport: conntrack, selection, source ranges, local endpoints), over the same
//! pinned maps. Everything else passes to the tc program behind it: flows to pods of this node
//! (their conntrack and reply entries already made here), DSR tunnels to local pods, fragments,
//! ICMP errors, services with ClientIP session affinity (whose entries are the tc program's, see
//! datapath::affinity), and traffic that is not for a frontend.
use crate::{count, reply, send};
use abi::{
    lb::{FAMILY_V6, FlowKey, ServiceValue},
    nodeport::reason as np,
    sock::SVC_FLAG_AFFINITY,
};
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use datapath::{
    headers::{IPPROTO_TCP, IPPROTO_UDP},
    lb::{self, Target},
    maps,
    nodeport::{self as dp, NodePortMaps},
    parse::{self, Flow, Fragment, Parsed},
};

datapath::nodeport_maps!();

#[xdp]
pub fn oxilium_nodeport_xdp(ctx: XdpContext) -> u32 {
    datapath::events::begin(
        abi::event::PROG_XDP_NODEPORT,
        unsafe { (*ctx.ctx).ingress_ifindex },
        (ctx.data_end() - ctx.data()) as u32,
    );
    let action = nodeport_packet(&ctx);
    datapath::events::end();
    action
}

#[inline(always)]
fn nodeport_packet(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let bytes = (end - start) as u64;
    let Some(s) = maps::scratch() else {
        return XDP_PASS;
    };
    if parse::parse(start, end, end - start, &mut s.flow) != Parsed::Ip {
        return XDP_PASS;
    }
    let f = &s.flow;
    if f.icmp_error
        || f.frag != Fragment::No
        || (f.key.proto != IPPROTO_TCP && f.key.proto != IPPROTO_UDP)
    {
        return XDP_PASS;
    }
    if let Some(svc) = lb::service(&f.key) {
        if svc.flags & SVC_FLAG_AFFINITY != 0 {
            // Selected through the client's affinity entry by the tc program.
            return XDP_PASS;
        }
        return forward(ctx, f, &mut s.target, &mut s.rewrite, svc, bytes);
    }
    if let Some(e) = lb::snat_reply(f) {
        let action = reply(ctx, f, &mut s.rewrite, e, bytes);
        if action != XDP_DROP {
            dp::count::<Maps>(np::REV_SNAT, bytes);
            dp::count::<Maps>(np::XDP, bytes);
        }
        return action;
    }
    XDP_PASS
}

/// Client → frontend: the tc program's decision; a remote backend is served here.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    f: &Flow,
    t: &mut Target,
    new: &mut FlowKey,
    svc: &ServiceValue,
    bytes: u64,
) -> u32 {
    let r = lb::select_with(f, svc, bytes, t, dp::new_flow::<Maps>);
    if r == lb::REFUSED {
        dp::drop::<Maps>(np::SOURCE_RANGE, bytes);
        return XDP_DROP;
    }
    if r != 0 {
        return count(r, bytes, XDP_DROP);
    }
    if (t.backend.family == FAMILY_V6) != f.v6 {
        dp::drop::<Maps>(np::FAMILY, bytes);
        return XDP_DROP;
    }
    // SAFETY: read-only lookup of a value the agent writes whole.
    if unsafe { Maps::endpoints().get(&t.backend.addr) }.is_some() {
        // A pod of this node: DNAT and delivery to its veth are the tc program's.
        return XDP_PASS;
    }
    let remote = if t.snat_port == 0 {
        np::DSR
    } else {
        np::REMOTE
    };
    let action = send(ctx, f, t, new, svc, bytes, t.backend.port);
    if action != XDP_DROP {
        dp::count::<Maps>(remote, bytes);
        dp::count::<Maps>(np::XDP, bytes);
    }
    action
}
