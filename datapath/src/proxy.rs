//! The L7 redirect (docs/l7.md): a flow whose policy entry says "redirect to proxy port P" is
//! handed to the agent's proxy listening on `127.0.0.1:P` (IPv4 flows) or `[::1]:P` (IPv6
//! flows) (IP_TRANSPARENT), transparently: the packet keeps its addresses, gets
//! [`MARK_TO_PROXY`] (the node routes marked packets locally: abi::proxy) and, when it opens a connection (a TCP SYN, every UDP datagram), the listener as
//! its socket (`bpf_sk_assign`). Later TCP packets find the proxy's accepted socket by the
//! stack's own lookup (it has the flow's addresses). No listener (the proxy is down) = drop: a
//! redirected flow never bypasses its proxy.
//!
//! Socket assignment only works on a packet entering the stack (tc ingress), which is where the
//! endpoint programs see both an endpoint's egress and, for a same-node client, its peer's
//! ingress (the from-pod hook); on the to-pod hook (tc egress) the packet is first sent back to
//! the veth's ingress ([`crate::stack_redirect`]).
use abi::proxy::{LISTEN_V4, LISTEN_V6, MARK_LISTENER, MARK_TO_PROXY};
use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, TC_ACT_OK, TC_ACT_SHOT, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::generated::{bpf_sk_assign, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
    programs::TcContext,
};

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// What [`redirect`] needs of a packet, packed in one register (a BPF-to-BPF call takes at most
/// five arguments).
#[derive(Clone, Copy)]
pub struct Packet(u32);

impl Packet {
    /// `at_ingress`: the hook is tc ingress (socket assignment is possible).
    #[inline(always)]
    pub fn new(proto: u8, tcp_flags: u8, v6: bool, at_ingress: bool) -> Packet {
        Packet(
            proto as u32 | (tcp_flags as u32) << 8 | (v6 as u32) << 16 | (at_ingress as u32) << 17,
        )
    }
}

/// Hands the packet to the proxy listening on `proxy_port` (network byte order). TC_ACT_OK with
/// the packet marked, or TC_ACT_SHOT.
#[inline(never)]
pub fn redirect(ctx: &TcContext, proxy_port: u16, p: Packet) -> i32 {
    let proto = p.0 as u8;
    let tcp_flags = (p.0 >> 8) as u8;
    let v6 = p.0 & (1 << 16) != 0;
    let at_ingress = p.0 & (1 << 17) != 0;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return TC_ACT_SHOT;
    }
    if !at_ingress {
        return crate::stack_redirect::to_ingress(ctx);
    }
    ctx.set_mark(MARK_TO_PROXY);
    if proto == PROTO_TCP && (tcp_flags & (TCP_SYN | TCP_ACK)) != TCP_SYN {
        // Not a connection's first packet: the stack finds the proxy's socket by the flow's
        // addresses (none: it answers with a reset).
        return TC_ACT_OK;
    }
    // The listener of the packet's family: a lookup only finds sockets of that family.
    let (mut t, size) = if v6 {
        let daddr = LISTEN_V6;
        (
            bpf_sock_tuple {
                __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                    ipv6: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                        saddr: [0; 4],
                        daddr: [
                            u32::from_ne_bytes([daddr[0], daddr[1], daddr[2], daddr[3]]),
                            u32::from_ne_bytes([daddr[4], daddr[5], daddr[6], daddr[7]]),
                            u32::from_ne_bytes([daddr[8], daddr[9], daddr[10], daddr[11]]),
                            u32::from_ne_bytes([daddr[12], daddr[13], daddr[14], daddr[15]]),
                        ],
                        sport: 0,
                        dport: proxy_port,
                    },
                },
            },
            core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>() as u32,
        )
    } else {
        (
            bpf_sock_tuple {
                __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                    ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                        saddr: 0,
                        daddr: u32::from_ne_bytes(LISTEN_V4),
                        sport: 0,
                        dport: proxy_port,
                    },
                },
            },
            core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32,
        )
    };
    let skb = ctx.skb.skb as *mut core::ffi::c_void;
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: helper calls with a valid tuple; a socket found is released below.
    unsafe {
        let sk = if proto == PROTO_TCP {
            bpf_sk_lookup_tcp(skb, &mut t, size, netns, 0)
        } else {
            bpf_sk_lookup_udp(skb, &mut t, size, netns, 0)
        };
        if sk.is_null() {
            return TC_ACT_SHOT;
        }
        // Only the agent's listener (a mark needs CAP_NET_ADMIN), not another process's socket
        // on the same port.
        if (*sk).mark != MARK_LISTENER {
            bpf_sk_release(sk as *mut core::ffi::c_void);
            return TC_ACT_SHOT;
        }
        let r = bpf_sk_assign(skb, sk as *mut core::ffi::c_void, 0);
        bpf_sk_release(sk as *mut core::ffi::c_void);
        if r != 0 {
            return TC_ACT_SHOT;
        }
    }
    TC_ACT_OK
}

/// True when the packet was handed to a proxy by [`redirect`] (the from-pod program then stops:
/// no local delivery).
#[inline(always)]
pub fn redirected(ctx: &TcContext) -> bool {
    // SAFETY: reads a field of the context.
    unsafe { (*ctx.skb.skb).mark & abi::proxy::MARK_MASK == MARK_TO_PROXY }
}

/// The mark of a proxy's upstream connection (0 for anything else): what the destination's
/// ingress policy looks at.
#[inline(always)]
pub fn upstream_mark(ctx: &TcContext) -> u32 {
    // SAFETY: reads a field of the context.
    let m = unsafe { (*ctx.skb.skb).mark };
    match m & abi::proxy::MARK_MASK {
        abi::proxy::MARK_FROM_INGRESS_PROXY | abi::proxy::MARK_FROM_EGRESS_PROXY => m,
        _ => 0,
    }
}
