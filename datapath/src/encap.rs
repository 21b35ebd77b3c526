//! IP-in-IP encapsulation for DSR, shared by every hook that tunnels a client's packet to a
//! backend (the edge LB's XDP program, the NodePort tc programs) and by the tc programs that take
//! the tunnel off again: the outer header is built once here, and the skb encapsulation and
//! decapsulation (bpf_skb_adjust_room) live here too. XDP grows its frame itself (xdp/src/encap.rs).
//!
//! The outer header may carry a port for the receiving side: the backend's port, in the IPv4
//! identification field (sent with DF set, so the field never serves reassembly) or in the low 16
//! bits of the IPv6 flow label. The NodePort DSR receiver DNATs the inner packet to that port.
use crate::{
    csum,
    headers::*,
    nat::last4,
    parse::{Flow, ptr_at},
};
use abi::lb::Addr;
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_DECAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    programs::TcContext,
};

/// IPv4 "don't fragment".
const IP_DF: u16 = 0x4000;

/// The outer IPv4 header `src` → `dst` (checksum included) around an inner packet of `inner_len`
/// bytes of protocol `inner_proto`. A non-zero `port` (network byte order) is carried in the
/// identification field, with DF set.
#[inline(always)]
pub fn outer_v4(src: &Addr, dst: &Addr, inner_len: u16, inner_proto: u8, port: u16) -> Ipv4Hdr {
    let (s, d) = (last4(src), last4(dst));
    let tot = (inner_len + IPV4_HLEN as u16).to_be();
    let frag_off = if port != 0 { IP_DF.to_be() } else { 0 };
    let words: [u16; 10] = [
        u16::from_ne_bytes([0x45, 0]),
        tot,
        port,
        frag_off,
        u16::from_ne_bytes([64, inner_proto]),
        0,
        u16::from_ne_bytes([s[0], s[1]]),
        u16::from_ne_bytes([s[2], s[3]]),
        u16::from_ne_bytes([d[0], d[1]]),
        u16::from_ne_bytes([d[2], d[3]]),
    ];
    Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: tot,
        id: port,
        frag_off,
        ttl: 64,
        proto: inner_proto,
        check: csum::ipv4_header(&words),
        src: s,
        dst: d,
    }
}

/// The outer IPv6 header `src` → `dst` around an inner packet of `inner_len` bytes; `port`
/// (network byte order) is carried in the low 16 bits of the flow label.
#[inline(always)]
pub fn outer_v6(src: &Addr, dst: &Addr, inner_len: u16, inner_proto: u8, port: u16) -> Ipv6Hdr {
    let p = port.to_ne_bytes();
    Ipv6Hdr {
        version_tc_flow: [0x60, 0, p[0], p[1]],
        payload_len: inner_len.to_be(),
        nexthdr: inner_proto,
        hop_limit: 64,
        src: *src,
        dst: *dst,
    }
}

/// The IP-in-IP protocol number of an inner packet of the flow's family.
#[inline(always)]
pub fn inner_proto(f: &Flow) -> u8 {
    if f.v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP }
}

/// The port an outer header carries (network byte order; 0 = none): read from the packet at
/// `l3_off`, the outer header of a parsed tunnel packet.
#[inline(always)]
pub fn carried_port(start: usize, end: usize, l3_off: usize, v6: bool) -> u16 {
    if v6 {
        match ptr_at::<Ipv6Hdr>(start, end, l3_off) {
            Some(ip) => {
                let f = unsafe { (*ip).version_tc_flow };
                u16::from_ne_bytes([f[2], f[3]])
            }
            None => 0,
        }
    } else {
        match ptr_at::<Ipv4Hdr>(start, end, l3_off) {
            Some(ip) => unsafe { (*ip).id },
            None => 0,
        }
    }
}

/// Wraps a tc packet (the flow `f`, same family outside as inside) in an outer header `src` →
/// `dst` carrying `port`. The skb's GSO state is updated by the kernel (encap flags). False when a
/// helper failed (the packet is then unusable). A bool rather than a Result: a BPF function takes
/// at most five arguments, and a Result would be returned through a sixth.
#[inline(never)]
pub fn encap_skb(ctx: &TcContext, f: &Flow, src: &Addr, dst: &Addr, port: u16) -> bool {
    let inner_len = f.l3_len as u16;
    let proto = inner_proto(f);
    if f.v6 {
        let hdr = outer_v6(src, dst, inner_len, proto, port);
        let flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 as u64;
        ctx.adjust_room(IPV6_HLEN as i32, BPF_ADJ_ROOM_MAC, flags)
            .is_ok()
            && ctx.store(f.l3_off, &hdr, 0).is_ok()
    } else {
        let hdr = outer_v4(src, dst, inner_len, proto, port);
        let flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64;
        ctx.adjust_room(IPV4_HLEN as i32, BPF_ADJ_ROOM_MAC, flags)
            .is_ok()
            && ctx.store(f.l3_off, &hdr, 0).is_ok()
    }
}

/// Strips the outer header of a parsed tunnel packet (`f.key.proto` IPIP or IPv6; the outer may
/// be of either family) and sets the Ethernet type to the inner family's. False when the packet
/// is no tunnel or a helper failed.
#[inline(never)]
pub fn decap_skb(ctx: &TcContext, f: &Flow) -> bool {
    let inner_v6 = match f.key.proto {
        IPPROTO_IPIP => false,
        IPPROTO_IPV6 => true,
        _ => return false,
    };
    let outer_len = (f.l4_off - f.l3_off) as i32;
    let flags = if inner_v6 {
        BPF_F_ADJ_ROOM_DECAP_L3_IPV6
    } else {
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4
    };
    if ctx
        .adjust_room(-outer_len, BPF_ADJ_ROOM_MAC, flags as u64)
        .is_err()
    {
        return false;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let proto_off = if f.vlan { ETH_HLEN + 2 } else { ETH_HLEN - 2 };
    let Some(p) = ptr_at::<u16>(start, end, proto_off) else {
        return false;
    };
    unsafe { *p = if inner_v6 { ETH_P_IPV6 } else { ETH_P_IP }.to_be() };
    true
}
