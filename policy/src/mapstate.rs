//! Policy map keys and entries as the agent computes them, the port-range → prefix expansion, the lookup
//! the tc programs perform (the one definition of how a packet is decided), and the conversion to the
//! kernel's key/value layout in `abi::policy`.
use crate::api::Protocol;
use crate::api::cilium::{FqdnSelector, HttpRule};
use crate::identity::NumericIdentity;
use crate::rule::Direction;
use abi::policy as kabi;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Protocol and port prefix of a key. `proto == 0` (any protocol) always has `port == 0, prefix == 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub proto: u8,
    pub port: u16,
    /// Significant leading bits of `port`, 0-16.
    pub prefix: u8,
}

impl PortKey {
    pub const ANY: PortKey = PortKey {
        proto: 0,
        port: 0,
        prefix: 0,
    };

    pub fn new(proto: u8, port: u16, prefix: u8) -> PortKey {
        PortKey {
            proto,
            port: port & mask(prefix),
            prefix,
        }
    }

    /// Specificity for longest-prefix match: any-protocol < protocol/any port < ... < exact port.
    pub fn specificity(&self) -> u8 {
        if self.proto == 0 { 0 } else { 1 + self.prefix }
    }

    /// True when every (proto, port) matching `other` also matches `self`.
    pub fn covers(&self, other: &PortKey) -> bool {
        if self.proto == 0 {
            return true;
        }
        self.proto == other.proto
            && other.proto != 0
            && other.prefix >= self.prefix
            && other.port & mask(self.prefix) == self.port
    }

    /// The keys a packet's (proto, port) can match, most specific first.
    pub fn candidates(proto: u8, port: u16) -> impl Iterator<Item = PortKey> {
        (0..=16u8)
            .rev()
            .map(move |p| PortKey::new(proto, port, p))
            .chain(std::iter::once(PortKey::ANY))
    }

    /// Lowest and highest port covered.
    pub fn range(&self) -> (u16, u16) {
        if self.proto == 0 {
            (0, 65535)
        } else {
            (self.port, self.port | !mask(self.prefix))
        }
    }
}

fn mask(prefix: u8) -> u16 {
    if prefix == 0 {
        0
    } else {
        u16::MAX << (16 - prefix)
    }
}

/// The fewest aligned prefixes covering `lo..=hi`.
pub fn range_to_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapKey {
    /// 0 = any identity.
    pub identity: NumericIdentity,
    pub direction: Direction,
    pub port: PortKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
    Redirect,
}

/// What a key decides, with the rules that produced it (and, for redirects, what the proxy enforces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub verdict: Verdict,
    /// Proxy listener for redirects, else 0.
    pub proxy_port: u16,
    pub http: Vec<HttpRule>,
    pub dns: Vec<FqdnSelector>,
    /// The policies that produced this entry (for deny: the deny rules).
    pub origins: Vec<Arc<str>>,
}

impl MapEntry {
    /// Kernel value of the entry of `key`; `audit` marks entries of an endpoint in audit mode.
    pub fn to_abi(&self, key: &MapKey, audit: bool) -> kabi::PolicyValue {
        let action = match self.verdict {
            Verdict::Allow => kabi::ACTION_ALLOW,
            Verdict::Deny => kabi::ACTION_DENY,
            Verdict::Redirect => kabi::ACTION_REDIRECT,
        };
        kabi::PolicyValue {
            action,
            flags: if audit { kabi::FLAG_AUDIT } else { 0 },
            proxy_port: self.proxy_port.to_be(),
            prefix_len: key.to_abi().prefix_len as u8,
            ..Default::default()
        }
    }
}

impl MapKey {
    pub fn to_abi(&self) -> kabi::PolicyKey {
        let dir = match self.direction {
            Direction::Ingress => kabi::DIR_INGRESS,
            Direction::Egress => kabi::DIR_EGRESS,
        };
        let port_bits = if self.port.proto == 0 {
            0
        } else {
            8 + u32::from(self.port.prefix)
        };
        kabi::PolicyKey {
            prefix_len: kabi::PREFIX_STATIC + port_bits,
            identity: self.identity.to_be(),
            direction: dir,
            proto: self.port.proto,
            dport: self.port.port.to_be(),
        }
    }
}

/// One endpoint's desired policy map.
pub type PolicyMap = BTreeMap<MapKey, MapEntry>;

/// The longest-prefix entry for (identity, direction, proto, port) among the given identity's keys.
fn lpm(
    map: &PolicyMap,
    identity: NumericIdentity,
    dir: Direction,
    proto: u8,
    port: u16,
) -> Option<(MapKey, &MapEntry)> {
    PortKey::candidates(proto, port).find_map(|pk| {
        let k = MapKey {
            identity,
            direction: dir,
            port: pk,
        };
        map.get(&k).map(|e| (k, e))
    })
}

/// The datapath decision: longest-prefix lookups for the peer identity and for the wildcard; a deny from
/// either wins; otherwise the more specific entry, the identity's on a tie. `None` = no entry = drop.
pub fn lookup(
    map: &PolicyMap,
    identity: NumericIdentity,
    dir: Direction,
    proto: Protocol,
    port: u16,
) -> Option<(MapKey, &MapEntry)> {
    let p = proto.number();
    let id = if identity != 0 {
        lpm(map, identity, dir, p, port)
    } else {
        None
    };
    let wc = lpm(map, 0, dir, p, port);
    match (id, wc) {
        (Some(a), _) if a.1.verdict == Verdict::Deny => Some(a),
        (_, Some(b)) if b.1.verdict == Verdict::Deny => Some(b),
        (Some(a), Some(b)) => Some(if b.0.port.specificity() > a.0.port.specificity() {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_minimal_prefixes() {
        assert_eq!(range_to_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(range_to_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(range_to_prefixes(8000, 8003), vec![(8000, 14)]);
        assert_eq!(
            range_to_prefixes(32000, 32768),
            vec![(32000, 8), (32256, 7), (32768, 16)]
        );
        for (lo, hi) in [(1, 1000), (5, 6), (65000, 65535), (1024, 65535)] {
            let ps = range_to_prefixes(lo, hi);
            let covered: u32 = ps.iter().map(|(_, l)| 1u32 << (16 - l)).sum();
            assert_eq!(covered, u32::from(hi - lo) + 1);
            for (p, l) in ps {
                let k = PortKey::new(6, p, l);
                assert!(k.range().0 >= lo && k.range().1 <= hi);
            }
        }
    }

    #[test]
    fn covers_and_specificity() {
        let any = PortKey::ANY;
        let tcp = PortKey::new(6, 0, 0);
        let p80 = PortKey::new(6, 80, 16);
        let r = PortKey::new(6, 8000, 14);
        assert!(any.covers(&p80) && tcp.covers(&p80) && !p80.covers(&tcp));
        assert!(r.covers(&PortKey::new(6, 8003, 16)) && !r.covers(&PortKey::new(6, 8004, 16)));
        assert!(!PortKey::new(17, 0, 0).covers(&p80));
        assert!(p80.specificity() > tcp.specificity() && tcp.specificity() > any.specificity());
    }

    fn e(v: Verdict) -> MapEntry {
        MapEntry {
            verdict: v,
            proxy_port: 0,
            http: vec![],
            dns: vec![],
            origins: vec![],
        }
    }

    #[test]
    fn lookup_prefers_deny_then_specific() {
        let mut m = PolicyMap::new();
        let k = |id, pk| MapKey {
            identity: id,
            direction: Direction::Ingress,
            port: pk,
        };
        m.insert(k(300, PortKey::ANY), e(Verdict::Allow));
        m.insert(k(0, PortKey::new(6, 80, 16)), e(Verdict::Redirect));
        m.insert(k(0, PortKey::new(6, 22, 16)), e(Verdict::Deny));
        let v = |id, port| {
            lookup(&m, id, Direction::Ingress, Protocol::Tcp, port).map(|(_, e)| e.verdict)
        };
        assert_eq!(v(300, 80), Some(Verdict::Redirect));
        assert_eq!(v(300, 22), Some(Verdict::Deny));
        assert_eq!(v(300, 443), Some(Verdict::Allow));
        assert_eq!(v(301, 443), None);
        assert_eq!(lookup(&m, 300, Direction::Egress, Protocol::Tcp, 80), None);
    }
}
