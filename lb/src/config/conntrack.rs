//! The `conntrack:` section of lb.yaml: the size of the conntrack map and the idle timeouts per
//! protocol and state (see `abi::ct` for the states, docs/config.md for the defaults' reasons).

use std::time::Duration;

use serde::Serialize;

use crate::config::duration;
use crate::config::fields::{Ctx, Fields, int};
use crate::config::yaml::Node;

/// Accepted sizes of the conntrack and SNAT maps.
pub const MAP_ENTRIES_RANGE: std::ops::RangeInclusive<u32> = 1024..=16_777_216;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Conntrack {
    /// Size of the conntrack map (`OXI_CONNTRACK`, an LRU).
    pub max_entries: u32,
    pub timeouts: Timeouts,
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack {
            max_entries: super::DEFAULT_MAP_ENTRIES,
            timeouts: Timeouts::default(),
        }
    }
}

/// Idle timeouts per protocol and state; each at least 1s, in whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Timeouts {
    #[serde(serialize_with = "duration::serialize")]
    pub tcp_syn: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub tcp_established: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub tcp_fin: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub tcp_close: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub udp: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub udp_replied: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let d = abi::ct::DEFAULT_TIMEOUTS;
        let s = |v: u32| Duration::from_secs(u64::from(v));
        Timeouts {
            tcp_syn: s(d.tcp_syn_s),
            tcp_established: s(d.tcp_established_s),
            tcp_fin: s(d.tcp_fin_s),
            tcp_close: s(d.tcp_close_s),
            udp: s(d.udp_s),
            udp_replied: s(d.udp_replied_s),
        }
    }
}

impl Timeouts {
    /// The datapath's form (`LbConfig::timeouts`), in seconds.
    pub fn to_abi(&self) -> abi::ct::Timeouts {
        let s = |d: Duration| d.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
        abi::ct::Timeouts {
            tcp_syn_s: s(self.tcp_syn),
            tcp_established_s: s(self.tcp_established),
            tcp_fin_s: s(self.tcp_fin),
            tcp_close_s: s(self.tcp_close),
            udp_s: s(self.udp),
            udp_replied_s: s(self.udp_replied),
        }
    }
}

const TIMEOUT_FIELDS: [&str; 6] = [
    "tcp_syn",
    "tcp_established",
    "tcp_fin",
    "tcp_close",
    "udp",
    "udp_replied",
];

/// A conntrack timeout: whole seconds, 1s..=2^32-1 s.
pub(crate) fn timeout(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Duration> {
    let d = crate::config::fields::duration(ctx, node, path)?;
    if d.v < Duration::from_secs(1) || d.v.subsec_nanos() != 0 {
        ctx.err(d.line, path, "must be whole seconds, at least 1s");
        return None;
    }
    if d.v.as_secs() > u64::from(u32::MAX) {
        ctx.err(d.line, path, "must be at most 4294967295s");
        return None;
    }
    Some(d.v)
}

/// A map size in [`MAP_ENTRIES_RANGE`].
pub(crate) fn max_entries(ctx: &mut Ctx, node: &Node, path: &str) -> Option<u32> {
    let (lo, hi) = (*MAP_ENTRIES_RANGE.start(), *MAP_ENTRIES_RANGE.end());
    int(ctx, node, path, u64::from(lo), u64::from(hi)).map(|a| a.v as u32)
}

pub(crate) fn conntrack(ctx: &mut Ctx, node: &Node) -> Conntrack {
    let mut c = Conntrack::default();
    let Some(mut f) = Fields::of(ctx, node, "conntrack") else {
        return c;
    };
    if let Some(v) = f
        .take("max_entries")
        .and_then(|n| max_entries(ctx, n, "conntrack.max_entries"))
    {
        c.max_entries = v;
    }
    if let Some(n) = f.take("timeouts")
        && let Some(mut t) = Fields::of(ctx, n, "conntrack.timeouts")
    {
        let slots: [&mut Duration; 6] = [
            &mut c.timeouts.tcp_syn,
            &mut c.timeouts.tcp_established,
            &mut c.timeouts.tcp_fin,
            &mut c.timeouts.tcp_close,
            &mut c.timeouts.udp,
            &mut c.timeouts.udp_replied,
        ];
        for (name, slot) in TIMEOUT_FIELDS.iter().zip(slots) {
            if let Some(v) = t
                .take(name)
                .and_then(|n| timeout(ctx, n, &format!("conntrack.timeouts.{name}")))
            {
                *slot = v;
            }
        }
        t.finish(ctx, &TIMEOUT_FIELDS);
    }
    f.finish(ctx, &["max_entries", "timeouts"]);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_datapath_defaults() {
        assert_eq!(Timeouts::default().to_abi(), abi::ct::DEFAULT_TIMEOUTS);
    }
}
