//! Next-hop lookup through the kernel FIB (bpf_fib_lookup): egress interface and MAC addresses.
use abi::lb::Addr;
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup,
    },
    helpers::generated::bpf_fib_lookup as fib_lookup,
};
use core::{ffi::c_void, mem::size_of};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

pub enum Route {
    Via {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Route found, neighbour not resolved yet: let the kernel forward this packet (it resolves).
    NoNeighbour,
    /// The packet (of the given total length) exceeds the egress MTU, which is given: the route's
    /// (its MTU metric, or a learnt path MTU, else the device's), as bpf_fib_lookup's
    /// `mtu_result` reports it.
    TooBig(u16),
    /// No route, forwarding disabled, or another failure.
    None,
}

/// Looks up the route from `src` to `dst` for a packet entering on `ifindex`. `tot_len` > 0 asks
/// the kernel to check it against the egress MTU.
#[inline(always)]
pub fn lookup(
    ctx: *mut c_void,
    ifindex: u32,
    v6: bool,
    src: &Addr,
    dst: &Addr,
    tot_len: u16,
) -> Route {
    // The arguments live in the per-CPU scratch space: 64 bytes less in the caller's frame
    // (the verifier sums the stack of a call chain).
    let Some(s) = crate::maps::OXI_SCRATCH.get_ptr_mut(0) else {
        return Route::None;
    };
    // SAFETY: this CPU's scratch; only the `fib` field is used here, and no lookup nests.
    let p = unsafe { &mut *core::ptr::addr_of_mut!((*s).fib) };
    // SAFETY: plain C struct, all-zero is a valid value; 4-aligned in the scratch space.
    unsafe { crate::words::zero(p as *mut bpf_fib_lookup) };
    p.ifindex = ifindex;
    p.__bindgen_anon_1.tot_len = tot_len;
    if v6 {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = words(src);
        p.__bindgen_anon_4.ipv6_dst = words(dst);
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[12], src[13], src[14], src[15]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[12], dst[13], dst[14], dst[15]]);
    }
    let rc = unsafe { fib_lookup(ctx, p, size_of::<bpf_fib_lookup>() as i32, 0) } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => Route::Via {
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => Route::NoNeighbour,
        // SAFETY: the kernel writes mtu_result (in place of tot_len) with this answer.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Route::TooBig(unsafe { p.__bindgen_anon_1.mtu_result }),
        _ => Route::None,
    }
}

/// The egress interface found by this CPU's latest [`lookup`]: after `Route::Via`, and after
/// `Route::NoNeighbour` too (the kernel writes it before it looks for the neighbour). 0 when
/// there is none.
#[inline(always)]
pub fn last_ifindex() -> u32 {
    match crate::maps::OXI_SCRATCH.get_ptr(0) {
        // SAFETY: this CPU's scratch, read right after the lookup that wrote it.
        Some(s) => unsafe { (*s).fib.ifindex },
        None => 0,
    }
}

#[inline(always)]
fn words(a: &Addr) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
