//! The next-hop cache: `bpf_fib_lookup` answers towards backends, kept per backend id for
//! `NEXTHOP_TTL_NS`, so that a packet of an established flow (or a new flow to a backend that
//! had traffic lately) skips the FIB. Only resolved next hops are kept: a missing neighbour, a
//! missing route or a packet over the MTU is looked up again on every packet, as before. An MTU
//! check is answered from the cache only for packets no longer than one the lookup let through
//! (`ok_len`). The price: a route, neighbour or MTU change reaches a backend's packets up to
//! `NEXTHOP_TTL_NS` late (see docs/edge-lb.md).
//!
//! The cache is an array shared by all CPUs, not pinned (each program load starts empty). Two
//! CPUs refreshing one slot at once write the same answer, except while a next hop is changing,
//! when a packet may leave with a mix of the old and new MACs — as one in flight during the
//! change could.
use abi::lb::{Addr, NEXTHOP_SLOTS, NEXTHOP_TTL_NS, NextHop};
use aya_ebpf::{btf_maps::Array, macros::btf_map, programs::XdpContext};
use datapath::{
    fib::{self, Route},
    lb::Target,
    words,
};

#[btf_map]
static OXI_NEXTHOP: Array<NextHop, { NEXTHOP_SLOTS as usize }> = Array::new();

/// The next hop from `src` to `dst` for a packet of IP total length `tot_len` (0: no MTU check):
/// from the cache slot of `t`'s backend while fresh, else from the FIB (and cached when
/// resolved). `t`: the flow's target, when `dst` is its backend; `None`: no cache.
#[inline(always)]
pub fn route(ctx: &XdpContext, src: &Addr, dst: &Addr, tot_len: u16, t: Option<&Target>) -> Route {
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let slot = match t {
        Some(t) if t.now != 0 => OXI_NEXTHOP
            .get_ptr_mut(t.backend_id % NEXTHOP_SLOTS)
            .map(|p| (p, t.now)),
        _ => None,
    };
    if let Some((p, now)) = slot {
        // SAFETY: array value; see the module's note on concurrent refreshes.
        let e = unsafe { &*p };
        if e.checked_ns != 0
            && now.wrapping_sub(e.checked_ns) < NEXTHOP_TTL_NS
            && e.ingress == ingress
            && (tot_len == 0 || tot_len <= e.ok_len)
            // SAFETY: a map value's address, and `dst` one in the scratch space (a key, the
            // target's backend, or the quoted packet's): all 4-aligned.
            && unsafe { words::addr_eq(&e.addr, dst) }
        {
            return Route::Via {
                ifindex: e.ifindex,
                smac: e.smac,
                dmac: e.dmac,
            };
        }
    }
    let r = fib::lookup(
        ctx.ctx as *mut _,
        ingress,
        // SAFETY: as above.
        !unsafe { words::is_v4_mapped(dst) },
        src,
        dst,
        tot_len,
    );
    if let (
        Some((p, now)),
        Route::Via {
            ifindex,
            smac,
            dmac,
        },
    ) = (slot, &r)
    {
        // SAFETY: as above. Field by field: a whole entry built first would take 48 bytes of
        // the caller's stack.
        unsafe {
            words::copy_addr(&mut (*p).addr, dst);
            (*p).checked_ns = now;
            (*p).ingress = ingress;
            (*p).ifindex = *ifindex;
            (*p).smac = *smac;
            (*p).dmac = *dmac;
            (*p).ok_len = tot_len;
        }
    }
    r
}
