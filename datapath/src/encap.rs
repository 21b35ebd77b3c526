//! IP-in-IP encapsulation for DSR, shared by every hook that tunnels a client's packet to a
//! backend (the edge LB's XDP program, the NodePort tc programs) and by the tc programs that take
//! the tunnel off again: the outer header is built once here, and the skb encapsulation and
//! decapsulation (bpf_skb_adjust_room) live here too. XDP grows its frame itself (xdp/src/encap.rs).
//!
//! The outer header may carry a port for the receiving side (the NodePort DSR receiver DNATs the
//! inner packet to it): over IPv4 in a 4-byte option, [`OPT_DSR_PORT`], over IPv6 in the low 16
//! bits of the flow label. Segmentation offload (GSO / TSO) copies both into every segment
//! unchanged, unlike the identification field, which it counts up per segment. The outer IPv4
//! header gets the inner packet's identification (so it changes per packet, and per segment with
//! the inner one) and its "don't fragment" flag (RFC 2003 §3.1); DF is also set whenever a port
//! is carried, since a fragmented tunnel packet could not be taken off at tc.
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
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};

/// IPv4 "don't fragment".
const IP_DF: u16 = 0x4000;

/// The IPv4 option type of the DSR port: RFC 4727's experimental option number 30 with the
/// "copied" flag (0x9e). Four bytes: type, length (4), port (network byte order).
pub const OPT_DSR_PORT: u8 = 0x9e;
pub const OPT_DSR_LEN: u8 = 4;

/// An outer IPv4 header and room for the DSR port option (used only when a port is carried).
#[repr(C)]
pub struct Outer4 {
    pub ip: Ipv4Hdr,
    pub opt: [u8; 4],
}

/// Length of the outer IPv4 header carrying `port` (0: none).
#[inline(always)]
pub fn outer_v4_len(port: u16) -> usize {
    if port != 0 {
        IPV4_HLEN + OPT_DSR_LEN as usize
    } else {
        IPV4_HLEN
    }
}

/// The identification of the outer IPv4 header around the flow's packet: the inner IPv4 packet's
/// own, or a random one around IPv6 (whose outer header always has DF).
#[inline(always)]
pub fn outer_id(f: &Flow) -> u16 {
    if f.v6 {
        unsafe { bpf_get_prandom_u32() as u16 }
    } else {
        f.ip_id
    }
}

/// The outer IPv4 header `src` → `dst` (checksum included) around the flow's packet, with
/// identification `id` (see [`outer_id`]). A non-zero `port` (network byte order) is carried in
/// the [`OPT_DSR_PORT`] option; the header is then [`outer_v4_len`] = 24 bytes long.
#[inline(always)]
pub fn outer_v4(src: &Addr, dst: &Addr, f: &Flow, id: u16, port: u16) -> Outer4 {
    let (s, d) = (last4(src), last4(dst));
    let hlen = outer_v4_len(port);
    let vihl = 0x40 | (hlen / 4) as u8;
    let tot = (f.l3_len as u16 + hlen as u16).to_be();
    let frag_off = if f.df || port != 0 { IP_DF.to_be() } else { 0 };
    let proto = inner_proto(f);
    let opt = if port != 0 {
        let p = port.to_ne_bytes();
        [OPT_DSR_PORT, OPT_DSR_LEN, p[0], p[1]]
    } else {
        [0; 4]
    };
    // Option words of 0 (none carried) leave the sum unchanged.
    let words: [u16; 12] = [
        u16::from_ne_bytes([vihl, 0]),
        tot,
        id,
        frag_off,
        u16::from_ne_bytes([64, proto]),
        0,
        u16::from_ne_bytes([s[0], s[1]]),
        u16::from_ne_bytes([s[2], s[3]]),
        u16::from_ne_bytes([d[0], d[1]]),
        u16::from_ne_bytes([d[2], d[3]]),
        u16::from_ne_bytes([opt[0], opt[1]]),
        u16::from_ne_bytes([opt[2], opt[3]]),
    ];
    Outer4 {
        ip: Ipv4Hdr {
            version_ihl: vihl,
            tos: 0,
            tot_len: tot,
            id,
            frag_off,
            ttl: 64,
            proto,
            check: csum::ipv4_header(&words),
            src: s,
            dst: d,
        },
        opt,
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
        let Some(ip) = ptr_at::<Ipv4Hdr>(start, end, l3_off) else {
            return 0;
        };
        if unsafe { (*ip).version_ihl } != 0x40 | (outer_v4_len(1) / 4) as u8 {
            return 0;
        }
        match ptr_at::<[u8; 4]>(start, end, l3_off + IPV4_HLEN) {
            Some(o) => {
                let o = unsafe { *o };
                if o[0] == OPT_DSR_PORT && o[1] == OPT_DSR_LEN {
                    u16::from_ne_bytes([o[2], o[3]])
                } else {
                    0
                }
            }
            None => 0,
        }
    }
}

/// Wraps a tc packet (the flow `f`, same family outside as inside) in an outer header `src` →
/// `dst` carrying `port`. The skb's GSO state is updated by the kernel (encap flags: a GSO skb
/// is segmented as IP-in-IP, every segment with a copy of the outer header, option included). False when a
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
        let hdr = outer_v4(src, dst, f, outer_id(f), port);
        let flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64;
        if ctx
            .adjust_room(outer_v4_len(port) as i32, BPF_ADJ_ROOM_MAC, flags)
            .is_err()
        {
            return false;
        }
        if port != 0 {
            ctx.store(f.l3_off, &hdr, 0).is_ok()
        } else {
            ctx.store(f.l3_off, &hdr.ip, 0).is_ok()
        }
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
