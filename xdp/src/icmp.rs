//! ICMP at the XDP LB (rules in datapath::icmp and docs/edge-lb.md): errors quoting a
//! translated flow are reverse-translated and sent on (SNAT flows both ways; a client's error
//! about a DSR flow's reply is tunnelled to the backend, which owns the VIP), and a DSR packet
//! too big for the egress MTU once encapsulated is answered with "fragmentation needed" /
//! "packet too big" carrying the usable MTU, sent back with XDP_TX.
use crate::{SENT, count, encap, transmit, tunnel};
use abi::lb::{FAMILY_V6, reason};
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use datapath::{
    headers::{ETH_HLEN, VLAN_HLEN},
    icmp::{self, reply},
    lb,
    maps::Scratch,
    parse::{Flow, ptr_at},
};

/// An ICMP / ICMPv6 error (`s.flow`): translated and sent on when it quotes a translated flow,
/// else passed untouched (`icmp_error`). Returns the XDP action, or [`TUNNEL`].
#[inline(never)]
pub fn error(ctx: &XdpContext, s: &mut Scratch, bytes: u64) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if !icmp::parse_quoted(start, end, &s.flow, &mut s.quoted) {
        return count(reason::ICMP_ERROR, bytes, XDP_PASS);
    }
    if let Some(e) = icmp::reply_entry(&s.quoted, &mut s.reply) {
        icmp::to_client(&mut s.quoted, e, &mut s.rewrite);
        return send(ctx, s, bytes);
    }
    let Some((c, b)) = icmp::flow_entry(&s.quoted, &mut s.reply) else {
        return count(reason::ICMP_ERROR, bytes, XDP_PASS);
    };
    let b6 = b.family == FAMILY_V6;
    let Some(lb_src) = lb::lb_addr(b6) else {
        return count(reason::ICMP_ERROR, bytes, XDP_PASS);
    };
    if c.snat_port != 0 {
        if b6 != s.flow.v6 {
            return count(reason::ICMP_ERROR, bytes, XDP_PASS);
        }
        icmp::to_snat_backend(&mut s.quoted, b, lb_src, c.snat_port, &mut s.rewrite);
        return send(ctx, s, bytes);
    }
    // DSR: the backend sent the reply from the VIP; it gets the error as the client sent it,
    // tunnelled by the caller ([`tunnel_error`]: one call less deep).
    s.target.backend = *b;
    s.target.backend_id = c.backend_id;
    // No clock: the next-hop cache is for the flow's own packets.
    s.target.now = 0;
    TUNNEL
}

/// What [`error`] returns for an error to tunnel to the backend in `s.target` ([`tunnel_error`]).
pub const TUNNEL: u32 = 1 << 18;

/// Tunnels an ICMP error about a DSR flow's reply to the flow's backend (`s.target`, filled by
/// [`error`]).
#[inline(always)]
pub fn tunnel_error(ctx: &XdpContext, s: &Scratch, bytes: u64) -> u32 {
    let t = &s.target;
    let Some(lb_src) = lb::lb_addr(t.backend.family == FAMILY_V6) else {
        return count(reason::ICMP_ERROR, bytes, XDP_PASS);
    };
    match tunnel(ctx, &s.flow, lb_src, t, 0) {
        r if r & SENT != 0 => count(reason::ICMP_XLATE, bytes, r & 0xffff),
        r if r & encap::TOO_BIG != 0 => count(reason::TOO_BIG, bytes, XDP_DROP),
        r => count(r, bytes, XDP_DROP),
    }
}

/// Rewrites the error as `s.rewrite` / `s.quoted` say and sends it to its new destination.
#[inline(always)]
fn send(ctx: &XdpContext, s: &Scratch, bytes: u64) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let q = &s.quoted;
    if icmp::translate(start, end, &s.flow, q, &s.rewrite).is_err() {
        return count(reason::MALFORMED, bytes, XDP_DROP);
    }
    count(
        reason::ICMP_XLATE,
        bytes,
        transmit(ctx, &s.flow, &q.outer_src, &q.outer_dst, None),
    )
}

/// Answers the packet `f` (to be tunnelled, too big by `mtu`, the usable MTU) with ICMP
/// "fragmentation needed" (IPv4 with DF; without DF the packet is dropped, `too_big`) or ICMPv6
/// "packet too big", from the address it was sent to, back where it came from (XDP_TX, MACs
/// swapped, a VLAN tag kept): the frame is turned into the error in place.
#[inline(never)]
pub fn too_big(ctx: &XdpContext, f: &Flow, mtu: u16, bytes: u64) -> u32 {
    if !f.v6 && !f.df {
        return count(reason::TOO_BIG, bytes, XDP_DROP);
    }
    let v6 = f.v6;
    // The L2 length from the tag flag rather than the stored offset: a constant the verifier
    // can bound.
    let l2 = if f.vlan {
        ETH_HLEN + VLAN_HLEN
    } else {
        ETH_HLEN
    };
    let quote = reply::quote_len(v6, f.l3_len);
    let hl = reply::headers_len(v6);
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(hl as i32)) } != 0 {
        return count(reason::ERROR, bytes, XDP_DROP);
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    // The L2 header moves to the new front with its MACs swapped (18 bytes: with a VLAN tag, the
    // whole header; without, 4 bytes more that the IP header overwrites).
    let (Some(old), Some(eth)) = (
        ptr_at::<[u8; 18]>(start, end, hl),
        ptr_at::<[u8; 18]>(start, end, 0),
    ) else {
        return count(reason::ERROR, bytes, XDP_DROP);
    };
    unsafe {
        let o = *old;
        let mut n = o;
        let mut i = 0;
        while i < 6 {
            n[i] = o[6 + i];
            n[6 + i] = o[i];
            i += 1;
        }
        *eth = n;
    }
    let delta = (l2 + hl + quote) as i32 - (end - start) as i32;
    if delta < 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return count(reason::ERROR, bytes, XDP_DROP);
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if reply::write(start, end, l2, v6, &f.key.dst, &f.key.src, quote, mtu).is_err() {
        return count(reason::ERROR, bytes, XDP_DROP);
    }
    count(reason::ICMP_TOO_BIG, bytes, XDP_TX)
}
