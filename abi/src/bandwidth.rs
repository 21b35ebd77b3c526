//! The bandwidth manager: per-pod egress and ingress rates (`kubernetes.io/egress-bandwidth`,
//! `kubernetes.io/ingress-bandwidth`) enforced by the endpoint programs on the pod's host-side
//! veth. One `OXI_BANDWIDTH` entry per (veth, direction); the agent writes the rate and the
//! thresholds, the programs keep the schedule (`tat`) and the counters in the same value.
//!
//! The schedule is one 64-bit time per entry, the "theoretical arrival time" of a GCRA (the
//! virtual-scheduling form of a token bucket): every passed packet moves it `cost = bytes / rate`
//! forward, from now when it lies in the past. `tat - now` is the backlog the entry has granted
//! ahead of the rate; the bucket is full when it is ≤ 0 and empty at `burst_ns`.
//! - [`MODE_BUCKET`]: a packet that would push the backlog past `burst_ns` is dropped; one that
//!   finds it past `mark_ns` is passed with ECN CE when it is ECT (ECN-capable).
//! - [`MODE_EDT`] (egress with `sch_fq` on the node's devices): the packet's departure time
//!   (`skb->tstamp`, delivery-time clock) is `max(tat, now)`; one that would leave more than
//!   `horizon_ns` from now is dropped (fq's horizon drop), the others are released by fq.

pub const MAX_BANDWIDTH: u32 = 65_536;

/// `BandwidthKey::dir`: packets leaving the pod (tc ingress of its host-side veth).
pub const DIR_EGRESS: u32 = 0;
/// `BandwidthKey::dir`: packets to the pod (its veth's egress, or a local delivery).
pub const DIR_INGRESS: u32 = 1;

/// `Bandwidth::mode`: token bucket with ECN marks, then drops (no qdisc needed).
pub const MODE_BUCKET: u32 = 0;
/// `Bandwidth::mode`: earliest departure time, released by `sch_fq`.
pub const MODE_EDT: u32 = 1;

/// Bytes counted per extra segment of a GSO packet (Ethernet + IPv4 + TCP with timestamps):
/// the headers each segment carries on the wire, as a qdisc counts them.
pub const GSO_SEGMENT_HEADERS: u64 = 66;

/// Pin names, relative to the agent's pin folder.
pub mod names {
    pub const BANDWIDTH: &str = "OXI_BANDWIDTH";
    pub const PINNED: [&str; 1] = [BANDWIDTH];
}

/// `OXI_BANDWIDTH` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BandwidthKey {
    /// ifindex of the pod's host-side veth (in the node's namespace).
    pub ifindex: u32,
    /// [`DIR_EGRESS`] or [`DIR_INGRESS`].
    pub dir: u32,
}

/// `OXI_BANDWIDTH` value: the agent's settings, then the programs' state and counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Bandwidth {
    /// Bytes per second (> 0).
    pub rate: u64,
    /// Largest backlog granted ahead of the rate, in ns (the bucket's depth).
    pub burst_ns: u64,
    /// Backlog past which ECT packets get CE (MODE_BUCKET).
    pub mark_ns: u64,
    /// Latest departure accepted (MODE_EDT), in ns from now.
    pub horizon_ns: u64,
    pub mode: u32,
    /// The agent's endpoint id (for the listing).
    pub endpoint: u32,
    /// Programs: the schedule (bpf_ktime_get_ns clock), 0 = bucket full.
    pub tat: u64,
    /// Programs: packets passed, dropped (over the burst or past the horizon), and marked CE.
    pub passed: u64,
    pub dropped: u64,
    pub marked: u64,
}

impl Bandwidth {
    /// The time a packet of `bytes` (< 18 GB) costs at the entry's rate, in ns.
    #[inline(always)]
    pub fn cost_ns(&self, bytes: u64) -> u64 {
        if self.rate == 0 {
            return 0;
        }
        bytes.wrapping_mul(1_000_000_000) / self.rate
    }
}

#[cfg(feature = "user")]
crate::pod!(BandwidthKey, Bandwidth);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(size_of::<BandwidthKey>(), 8);
        assert_eq!(size_of::<Bandwidth>(), 72);
    }

    #[test]
    fn cost_is_bytes_over_rate() {
        let b = Bandwidth {
            rate: 1_250_000, // 10 Mbit/s
            ..Default::default()
        };
        assert_eq!(b.cost_ns(1250), 1_000_000);
        assert_eq!(Bandwidth::default().cost_ns(1500), 0);
    }
}
