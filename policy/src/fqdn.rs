//! `toFQDNs`: the DNS cache (names learnt from DNS answers → addresses, each with an expiry) and the
//! identities it gives addresses.
//!
//! An address learnt for names that some `toFQDNs` selector matches gets a node-local identity whose
//! labels are its CIDR labels (`cidr:A/32` and every enclosing prefix, `reserved:world`) plus one
//! `fqdn:NAME` label per such name. `Selector::Fqdn` selects identities by those labels, so the
//! selector cache and the per-endpoint map deltas work as for any other identity: learning an address
//! costs the selectors that match it, not the size of the cache. An address whose name set changes
//! gets a new identity; the old one is released after the new one is in every map.
use crate::cidr::Cidr;
use crate::engine::{EndpointDelta, Engine};
use crate::identity::{NumericIdentity, cidr_labels};
use crate::labels::{Labels, Source};
use crate::selector::{FqdnMatch, Selector};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A DNS name in canonical form: lower case, no trailing dot.
pub fn canonical(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Names → addresses with expiry, and the reverse index.
#[derive(Debug, Default)]
pub struct FqdnCache {
    by_name: BTreeMap<String, BTreeMap<IpAddr, Instant>>,
    by_ip: BTreeMap<IpAddr, BTreeSet<String>>,
}

impl FqdnCache {
    /// Records that `name` resolved to `ips` until `expires` (an entry already known keeps the later
    /// expiry). Returns the addresses that gained the name.
    pub fn learn(&mut self, name: &str, ips: &[IpAddr], expires: Instant) -> Vec<IpAddr> {
        let name = canonical(name);
        let entries = self.by_name.entry(name.clone()).or_default();
        let mut gained = Vec::new();
        for ip in ips {
            let e = entries.entry(*ip).or_insert(expires);
            *e = (*e).max(expires);
            if self.by_ip.entry(*ip).or_default().insert(name.clone()) {
                gained.push(*ip);
            }
        }
        gained
    }

    /// Drops the entries expired at `now`. Returns the addresses that lost a name.
    pub fn expire(&mut self, now: Instant) -> Vec<IpAddr> {
        let mut lost = BTreeSet::new();
        self.by_name.retain(|name, ips| {
            ips.retain(|ip, exp| {
                if *exp > now {
                    return true;
                }
                if let Some(names) = self.by_ip.get_mut(ip) {
                    names.remove(name);
                    if names.is_empty() {
                        self.by_ip.remove(ip);
                    }
                }
                lost.insert(*ip);
                false
            });
            !ips.is_empty()
        });
        lost.into_iter().collect()
    }

    /// The earliest expiry, if any entry is held.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_name
            .values()
            .flat_map(|m| m.values())
            .min()
            .copied()
    }

    /// The names `ip` was learnt for.
    pub fn names(&self, ip: IpAddr) -> impl Iterator<Item = &str> {
        self.by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// The addresses of `name` with their expiry.
    pub fn lookup(&self, name: &str) -> Vec<(IpAddr, Instant)> {
        self.by_name
            .get(&canonical(name))
            .map(|m| m.iter().map(|(i, e)| (*i, *e)).collect())
            .unwrap_or_default()
    }

    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.by_ip.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.by_name.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// What learning or expiring DNS data changed: map deltas, and the addresses whose ipcache entry
/// (their identity, [`Engine::fqdn_identity`]) changed.
#[derive(Debug, Default)]
pub struct FqdnUpdate {
    pub deltas: Vec<EndpointDelta>,
    pub ipcache: Vec<IpAddr>,
}

impl FqdnUpdate {
    fn extend(&mut self, (deltas, changed): (Vec<EndpointDelta>, Option<IpAddr>)) {
        self.deltas.extend(deltas);
        self.ipcache.extend(changed);
    }
}

/// The labels of the identity of an address known by `names`.
pub fn fqdn_labels<'a>(ip: IpAddr, names: impl IntoIterator<Item = &'a str>) -> Labels {
    let mut l = cidr_labels(&Cidr::host(ip));
    for n in names {
        l = l.with(Source::Fqdn, n, "");
    }
    l
}

impl Engine {
    /// A DNS answer: `name` resolved to `ips` for `ttl` (floored by `Config::fqdn_min_ttl`).
    pub fn learn_fqdn(
        &mut self,
        name: &str,
        ips: &[IpAddr],
        ttl: Duration,
        now: Instant,
    ) -> FqdnUpdate {
        let expires = now + ttl.max(self.cfg.fqdn_min_ttl);
        let gained = self.fqdn.learn(name, ips, expires);
        let mut out = FqdnUpdate::default();
        for ip in gained {
            out.extend(self.refresh_fqdn_ip(ip));
        }
        out
    }

    /// Forgets the DNS data expired at `now`.
    pub fn expire_fqdn(&mut self, now: Instant) -> FqdnUpdate {
        let mut out = FqdnUpdate::default();
        for ip in self.fqdn.expire(now) {
            out.extend(self.refresh_fqdn_ip(ip));
        }
        out
    }

    pub fn fqdn_cache(&self) -> &FqdnCache {
        &self.fqdn
    }

    /// The identity DNS data gives `ip`, if any `toFQDNs` selector matches one of its names.
    pub fn fqdn_identity(&self, ip: IpAddr) -> Option<NumericIdentity> {
        self.fqdn_ids.get(&ip).copied()
    }

    pub fn fqdn_identities(&self) -> impl Iterator<Item = (IpAddr, NumericIdentity)> + '_ {
        self.fqdn_ids.iter().map(|(ip, id)| (*ip, *id))
    }

    /// The `toFQDNs` selectors of every policy.
    fn fqdn_selectors(&self) -> BTreeSet<FqdnMatch> {
        self.policies
            .values()
            .flatten()
            .flat_map(|r| r.filters.iter())
            .flat_map(|f| f.peers.iter())
            .filter_map(|s| match s {
                Selector::Fqdn(m) => Some(m.clone()),
                Selector::Labels(_) => None,
            })
            .collect()
    }

    /// After a policy change: when the set of `toFQDNs` selectors changed, every cached address's
    /// identity is brought in line with it.
    pub(crate) fn refresh_fqdn_selectors(&mut self) -> FqdnUpdate {
        let sels = self.fqdn_selectors();
        let mut out = FqdnUpdate::default();
        if sels == self.fqdn_sels {
            return out;
        }
        self.fqdn_sels = sels;
        let ips: BTreeSet<IpAddr> = self
            .fqdn
            .ips()
            .chain(self.fqdn_ids.keys().copied())
            .collect();
        for ip in ips {
            out.extend(self.refresh_fqdn_ip(ip));
        }
        out
    }

    /// Gives `ip` the identity its selected names call for: the new identity is allocated (and in
    /// every map) before the old one is released.
    fn refresh_fqdn_ip(&mut self, ip: IpAddr) -> (Vec<EndpointDelta>, Option<IpAddr>) {
        let names: Vec<&str> = self
            .fqdn
            .names(ip)
            .filter(|n| self.fqdn_sels.iter().any(|m| m.matches_name(n)))
            .collect();
        let want = (!names.is_empty()).then(|| fqdn_labels(ip, names));
        let have = self.fqdn_ids.get(&ip).copied();
        if want.as_ref() == have.and_then(|id| self.identity_labels(id)) {
            return (Vec::new(), None);
        }
        let mut deltas = Vec::new();
        match want {
            Some(labels) => {
                let (id, d) = self.add_identity(&labels);
                deltas.extend(d);
                self.fqdn_ids.insert(ip, id);
            }
            None => {
                self.fqdn_ids.remove(&ip);
            }
        }
        if let Some(old) = have {
            deltas.extend(self.release_identity(old));
        }
        (deltas, Some(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn learn_and_expire() {
        let t0 = Instant::now();
        let mut c = FqdnCache::default();
        let s = Duration::from_secs(1);
        assert_eq!(
            c.learn("A.example.", &[ip("192.0.2.1"), ip("2001:db8::1")], t0 + s),
            [ip("192.0.2.1"), ip("2001:db8::1")]
        );
        assert_eq!(
            c.learn("b.example", &[ip("192.0.2.1")], t0 + 3 * s),
            [ip("192.0.2.1")]
        );
        // Known again: nothing gained, the later expiry kept.
        assert!(
            c.learn("a.example", &[ip("192.0.2.1")], t0 + 2 * s)
                .is_empty()
        );
        assert_eq!(
            c.names(ip("192.0.2.1")).collect::<Vec<_>>(),
            ["a.example", "b.example"]
        );
        assert_eq!(c.next_expiry(), Some(t0 + s));
        assert_eq!(c.expire(t0 + s), [ip("2001:db8::1")]);
        assert_eq!(c.expire(t0 + 2 * s), [ip("192.0.2.1")]);
        assert_eq!(c.names(ip("192.0.2.1")).collect::<Vec<_>>(), ["b.example"]);
        assert_eq!(c.expire(t0 + 3 * s), [ip("192.0.2.1")]);
        assert!(c.is_empty() && c.ips().next().is_none() && c.next_expiry().is_none());
    }
}
