//! The skb side of every tc program (NodePort on the external devices, the pod path on the pods'
//! veths): parse a packet into the per-CPU scratch space, rewrite its addresses and ports with
//! the kernel's checksum helpers (valid in any checksum state, CHECKSUM_PARTIAL included), and
//! send it to its next hop through the FIB. Service logic lives in [`crate::nodeport`] and
//! [`crate::podlb`]; this module knows packets only.
use crate::{
    fib::{self, Route},
    headers::*,
    maps,
    nat::last4,
    parse::{self, Flow, Fragment, Parsed},
    stats,
};
use abi::lb::{Addr, FlowKey, reason};
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_csum_diff, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};

/// Bytes made linear before parsing: Ethernet + VLAN + IPv6 (or IPv4 with options) + TCP.
const PULL_HEADERS: u32 = 128;
/// The most ever made linear: headers as deep as the parser looks ([`parse::MAX_HDR_OFF`], IPv6
/// extension headers) plus the TCP header. The payload never is: a GSO / GRO skb keeps its page
/// fragments, and the rewrite helpers (bpf_skb_store_bytes, bpf_l3/l4_csum_replace) only touch
/// the headers.
pub(crate) const PULL_MAX: u32 = parse::MAX_HDR_OFF as u32 + TCP_HLEN as u32;

/// Parses the packet into the per-CPU scratch space. `Some`: a TCP / UDP packet, an ICMP error
/// (`flow.icmp_error`: for crate::icmp::skb, which counts what it passes) or (ingress only) an
/// IP-in-IP tunnel; `None`: anything else (let it pass). Called once per parse site
/// rather than inlined: the parser is the largest piece of code and frame.
#[inline(never)]
pub fn parse_tc(ctx: &TcContext, ingress: bool) -> Option<&'static mut maps::Scratch> {
    let len = ctx.len();
    let _ = ctx.pull_data(len.min(PULL_HEADERS));
    let s = maps::scratch()?;
    let mut r = parse::parse(ctx.data(), ctx.data_end(), len as usize, &mut s.flow);
    let deeper = len.min(PULL_MAX);
    if r == Parsed::Malformed && ctx.data_end() - ctx.data() < deeper as usize {
        // Headers deeper than the first pull (IPv6 extension headers): make them linear too.
        let _ = ctx.pull_data(deeper);
        r = parse::parse(ctx.data(), ctx.data_end(), len as usize, &mut s.flow);
    }
    let f = &s.flow;
    let why = match r {
        Parsed::NotIp => return None,
        Parsed::Malformed => reason::MALFORMED,
        Parsed::Ip if f.icmp_error => return Some(s),
        // Fragments are left to the host's reassembly: the node's address is shared with it.
        Parsed::Ip if f.frag != Fragment::No => reason::PASS,
        Parsed::Ip if f.key.proto == IPPROTO_TCP || f.key.proto == IPPROTO_UDP => return Some(s),
        // DSR tunnels (checked by `tunnel`).
        Parsed::Ip if ingress && (f.key.proto == IPPROTO_IPIP || f.key.proto == IPPROTO_IPV6) => {
            return Some(s);
        }
        Parsed::Ip => reason::PASS,
    };
    if ingress {
        stats::reason(why, len as u64);
    }
    None
}

/// bpf_l4_csum_replace: the checksum is IPv6's (kernel ≥ 6.16; older kernels refuse the flag and
/// the update is retried without it).
const BPF_F_IPV6: u64 = 1 << 7;

/// One's-complement difference of two 4-byte-multiple fields (bpf_csum_diff).
#[inline(always)]
fn diff<const N: usize>(from: &[u8; N], to: &[u8; N], seed: u32) -> Result<u64, ()> {
    let d = unsafe {
        bpf_csum_diff(
            from.as_ptr() as *mut u32,
            N as u32,
            to.as_ptr() as *mut u32,
            N as u32,
            seed,
        )
    };
    if d < 0 {
        Err(())
    } else {
        Ok(d as u64 & 0xffff_ffff)
    }
}

/// Rewrites the flow's addresses and ports to `new`'s with bpf_skb_store_bytes, updating the IPv4
/// header checksum and the TCP / UDP checksum (pseudo-header changes flagged as such, so that
/// CHECKSUM_PARTIAL packets stay right; a UDP checksum of 0 stays 0).
#[inline(never)]
pub fn rewrite(ctx: &TcContext, f: &Flow, new: &FlowKey) -> Result<(), ()> {
    let old = &f.key;
    let (csum_off, udp) = match old.proto {
        IPPROTO_TCP => (TCP_CSUM_OFF, false),
        IPPROTO_UDP => (UDP_CSUM_OFF, true),
        _ => return Err(()),
    };
    let csum_at = f.l4_off + csum_off;
    let mangled = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    let pseudo = BPF_F_PSEUDO_HDR as u64 | mangled;
    let old_ports = [old.sport, old.dport];
    let new_ports = [new.sport, new.dport];
    let ports = diff(
        unsafe { &*(old_ports.as_ptr() as *const [u8; 4]) },
        unsafe { &*(new_ports.as_ptr() as *const [u8; 4]) },
        0,
    )?;
    if f.v6 {
        let d = diff(&old.src, &new.src, 0)?;
        let d = diff(&old.dst, &new.dst, d as u32)?;
        if ctx
            .l4_csum_replace(csum_at, 0, d, pseudo | BPF_F_IPV6)
            .is_err()
        {
            ctx.l4_csum_replace(csum_at, 0, d, pseudo).map_err(|_| ())?;
        }
        ctx.store(f.l3_off + 8, &new.src, 0).map_err(|_| ())?;
        ctx.store(f.l3_off + 24, &new.dst, 0).map_err(|_| ())?;
    } else {
        let (os, od, ns, nd) = (
            last4(&old.src),
            last4(&old.dst),
            last4(&new.src),
            last4(&new.dst),
        );
        let d = diff(&os, &ns, 0)?;
        let d = diff(&od, &nd, d as u32)?;
        ctx.l4_csum_replace(csum_at, 0, d, pseudo).map_err(|_| ())?;
        ctx.l3_csum_replace(f.l3_off + 10, 0, d, 0)
            .map_err(|_| ())?;
        ctx.store(f.l3_off + 12, &ns, 0).map_err(|_| ())?;
        ctx.store(f.l3_off + 16, &nd, 0).map_err(|_| ())?;
    }
    ctx.l4_csum_replace(csum_at, 0, ports, mangled)
        .map_err(|_| ())?;
    ctx.store(f.l4_off, &new_ports, 0).map_err(|_| ())?;
    count_nonlinear(ctx);
    Ok(())
}

/// Counts a translated packet whose payload stayed out of the linear area (see
/// [`reason::NONLINEAR`]): proof that GSO / GRO skbs are rewritten without being copied.
#[inline(always)]
fn count_nonlinear(ctx: &TcContext) {
    let len = ctx.len();
    if ctx.data_end() - ctx.data() < len as usize {
        stats::reason(reason::NONLINEAR, len as u64);
    }
}

/// Sets the frame's destination and source MACs.
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), ()> {
    ctx.store(0, dst, 0).map_err(|_| ())?;
    ctx.store(6, src, 0).map_err(|_| ())
}

/// Sends a translated packet to its next hop: MACs from the FIB and bpf_redirect to the egress
/// device. A route whose neighbour is not resolved yet goes to that device's neighbour output
/// with bpf_redirect_neigh, which resolves it (holding the packet meanwhile) and adds the MACs:
/// the packet does not cross the stack's forwarding path. Without a route (or too big for it)
/// the packet goes up the stack, which forwards or answers it (the agent sets accept_local,
/// since the source may be the node's own address).
#[inline(never)]
pub fn transmit(ctx: &TcContext, v6: bool, src: &Addr, dst: &Addr) -> i32 {
    let skb = ctx.skb.skb;
    let ingress = unsafe { (*skb).ingress_ifindex };
    match fib::lookup(skb as *mut _, ingress, v6, src, dst, 0) {
        Route::Via {
            ifindex,
            smac,
            dmac,
        } => {
            if set_macs(ctx, &dmac, &smac).is_err() {
                return TC_ACT_SHOT as i32;
            }
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        Route::NoNeighbour if fib::last_ifindex() != 0 => {
            stats::reason(reason::NEIGH_REDIRECT, 0);
            // SAFETY: plain helper call; no next-hop parameters: the kernel routes the packet
            // out of that device itself. TC_ACT_REDIRECT, or TC_ACT_SHOT for bad arguments.
            unsafe { bpf_redirect_neigh(fib::last_ifindex(), core::ptr::null_mut(), 0, 0) as i32 }
        }
        Route::NoNeighbour | Route::None | Route::TooBig(_) => {
            stats::reason(reason::FIB_PASS, 0);
            TC_ACT_OK as i32
        }
    }
}
