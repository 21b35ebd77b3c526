//! The bandwidth manager's per-packet half (see abi::bandwidth for the schedule): the endpoint
//! programs call [`from_pod`] on packets leaving a pod and [`to_pod`] on packets delivered to
//! one. An entry of `OXI_BANDWIDTH` for the veth and direction limits it; without one the
//! packet passes untouched.
//!
//! The schedule is shared by every CPU: it moves with atomic fetch-and-add (BPF_ATOMIC), so two
//! CPUs passing packets of the same pod at once both pay for theirs. A refused packet gives its
//! cost back the same way. Only the restart from an idle (full) bucket is a plain store: a
//! packet racing with it may be granted once more, never more than one burst.
use crate::headers::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6};
use abi::bandwidth::{
    Bandwidth, BandwidthKey, DIR_EGRESS, DIR_INGRESS, GSO_SEGMENT_HEADERS, MAX_BANDWIDTH, MODE_EDT,
};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::HashMap,
    helpers::generated::{bpf_ktime_get_ns, bpf_skb_set_tstamp},
    macros::btf_map,
    programs::TcContext,
};
/// BPF_SKB_TSTAMP_DELIVERY_MONO (an anonymous enum in the bindings): the stamp is a delivery
/// time on the monotonic clock, kept when the packet is forwarded.
const TSTAMP_DELIVERY_MONO: u32 = 1;

/// (host-side veth, direction) → rate, schedule and counters (abi::bandwidth::names::BANDWIDTH).
#[btf_map]
pub static OXI_BANDWIDTH: HashMap<
    BandwidthKey,
    Bandwidth,
    { MAX_BANDWIDTH as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Packets leaving the pod whose host-side veth this program runs on.
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> i32 {
    // SAFETY: reading a field of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    limit(ctx, ifindex, DIR_EGRESS)
}

/// Packets to the pod behind host-side veth `ifindex` (its own to-pod program, or a local
/// delivery done by the sender's).
#[inline(always)]
pub fn to_pod(ctx: &TcContext, ifindex: u32) -> i32 {
    limit(ctx, ifindex, DIR_INGRESS)
}

/// What a packet does to the schedule.
enum Verdict {
    Pass,
    Mark,
    Drop,
    /// MODE_EDT: leave at this time.
    Depart(u64),
}

#[inline(always)]
fn limit(ctx: &TcContext, ifindex: u32, dir: u32) -> i32 {
    let Some(b) = OXI_BANDWIDTH.get_ptr_mut(&BandwidthKey { ifindex, dir }) else {
        return TC_ACT_OK;
    };
    // SAFETY: a map value pointer, valid for this run; shared fields are only touched through
    // the atomic helpers below.
    let b = unsafe { &mut *b };
    let cost = b.cost_ns(wire_bytes(ctx));
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    match schedule(b, now, cost) {
        Verdict::Drop => {
            add(&raw mut b.dropped, 1);
            TC_ACT_SHOT
        }
        Verdict::Mark => {
            if mark_ce(ctx) {
                add(&raw mut b.marked, 1);
            }
            add(&raw mut b.passed, 1);
            TC_ACT_OK
        }
        Verdict::Pass => {
            add(&raw mut b.passed, 1);
            TC_ACT_OK
        }
        Verdict::Depart(at) => {
            // SAFETY: plain helper call on the program's skb; the delivery-time clock is
            // bpf_ktime_get_ns's (CLOCK_MONOTONIC), the one sch_fq compares with.
            unsafe { bpf_skb_set_tstamp(ctx.skb.skb, at, TSTAMP_DELIVERY_MONO) };
            add(&raw mut b.passed, 1);
            TC_ACT_OK
        }
    }
}

/// Takes `cost` ns of the entry's schedule at time `now` (see abi::bandwidth).
#[inline(always)]
fn schedule(b: &mut Bandwidth, now: u64, cost: u64) -> Verdict {
    // SAFETY: `tat` is a naturally aligned u64 of a map value.
    let old = unsafe { fetch_add(&raw mut b.tat, cost) };
    let start = if old < now {
        // Idle: the bucket is full; restart the schedule at now (an aligned 64-bit store is
        // single-copy atomic; the target has no atomic store instruction at this CPU level).
        // SAFETY: as above.
        unsafe { (&raw mut b.tat).write_volatile(now + cost) };
        now
    } else {
        old
    };
    let backlog = start - now;
    if b.mode == MODE_EDT {
        if backlog > b.horizon_ns {
            give_back(b, cost);
            return Verdict::Drop;
        }
        return Verdict::Depart(start);
    }
    if backlog + cost > b.burst_ns {
        give_back(b, cost);
        return Verdict::Drop;
    }
    if backlog > b.mark_ns {
        Verdict::Mark
    } else {
        Verdict::Pass
    }
}

#[inline(always)]
fn give_back(b: &mut Bandwidth, cost: u64) {
    // SAFETY: as in `schedule`; adding the two's complement subtracts.
    unsafe { fetch_add(&raw mut b.tat, cost.wrapping_neg()) };
}

#[inline(always)]
fn add(p: *mut u64, n: u64) {
    // SAFETY: `p` points into a map value, valid for this run.
    unsafe { fetch_add(p, n) };
}

/// The bytes a packet puts on the wire: its length, plus the headers of every further segment
/// of a GSO packet (as a qdisc counts them).
#[inline(always)]
fn wire_bytes(ctx: &TcContext) -> u64 {
    // SAFETY: reading a field of the program's own skb.
    let segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
    ctx.len() as u64 + segs.saturating_sub(1) * GSO_SEGMENT_HEADERS
}

/// Sets ECN CE on an ECT(0) / ECT(1) IPv4 or IPv6 packet (the IPv4 header checksum follows);
/// false when the packet is not ECN-capable or not IP.
#[inline(always)]
fn mark_ce(ctx: &TcContext) -> bool {
    let Ok(proto) = ctx.load::<u16>(12) else {
        return false;
    };
    match u16::from_be(proto) {
        ETH_P_IP => {
            // Version / IHL and TOS: the first 16-bit word of the header checksum.
            let Ok(old) = ctx.load::<u16>(ETH_HLEN) else {
                return false;
            };
            let b = old.to_ne_bytes();
            let ecn = b[1] & 3;
            if ecn == 0 || ecn == 3 {
                return false;
            }
            let new = u16::from_ne_bytes([b[0], b[1] | 3]);
            ctx.l3_csum_replace(ETH_HLEN + 10, old as u64, new as u64, 2)
                .is_ok()
                && ctx.store(ETH_HLEN, &new, 0).is_ok()
        }
        ETH_P_IPV6 => {
            // Traffic class: the low nibble of byte 0 and the high nibble of byte 1; ECN is its
            // two low bits (bits 4-5 of byte 1).
            let Ok(byte) = ctx.load::<u8>(ETH_HLEN + 1) else {
                return false;
            };
            let ecn = (byte >> 4) & 3;
            if ecn == 0 || ecn == 3 {
                return false;
            }
            ctx.store(ETH_HLEN + 1, &(byte | 0x30), 0).is_ok()
        }
        _ => false,
    }
}

/// Atomically adds `n` to `*p` and returns the previous value: BPF_ATOMIC | BPF_ADD | BPF_FETCH
/// (kernel ≥ 5.12). Written as the instruction itself: the target's default CPU level has no
/// fetching atomics, and core has no atomic read-modify-write for it.
///
/// # Safety
/// `p` must point to an aligned u64 of a map value.
#[inline(always)]
unsafe fn fetch_add(p: *mut u64, n: u64) -> u64 {
    let mut v = n;
    // SAFETY: the caller's guarantee; the instruction reads and writes only `*p` and `v`.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            p = in(reg) p,
            v = inout(reg) v,
            options(nostack),
        );
    }
    v
}
