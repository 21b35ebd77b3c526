//! One endpoint's policy: the rules that select it, resolved to filters over cached selectors, and the
//! desired policy map they produce. Identity events update only the entries of the identities that
//! entered or left a selection.
use crate::api::Protocol;
use crate::identity::NumericIdentity;
use crate::mapstate::{MapEntry, MapKey, PolicyMap, PortKey, Verdict, range_to_prefixes};
use crate::rule::{Action, Direction, L7, PortSel, Rule};
use crate::selector_cache::{SelectionChange, SelectorCache, SelectorId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Named ports: name → (port, protocol) pairs.
pub type NamedPorts = BTreeMap<String, BTreeSet<(u16, Protocol)>>;

/// How policy applies to endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// A direction is enforced once a rule selects the endpoint in it.
    #[default]
    Default,
    /// Every direction of every endpoint is enforced (no rule = deny).
    Always,
    /// Nothing is enforced.
    Never,
}

/// Proxy listener ports for redirects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyPorts {
    pub http_ingress: u16,
    pub http_egress: u16,
    pub dns_ingress: u16,
    pub dns_egress: u16,
}

impl Default for ProxyPorts {
    fn default() -> ProxyPorts {
        ProxyPorts {
            http_ingress: 15001,
            http_egress: 15002,
            dns_ingress: 15053,
            dns_egress: 15054,
        }
    }
}

/// What computing an endpoint's policy needs besides rules and selectors.
pub struct Context<'a> {
    pub enforcement: Enforcement,
    pub proxy: ProxyPorts,
    /// The endpoint's own named ports (ingress rules).
    pub local_ports: &'a NamedPorts,
    /// Every pod's named ports (egress rules name the destination's ports).
    pub cluster_ports: &'a NamedPorts,
}

#[derive(Clone, Debug)]
struct ResolvedFilter {
    dir: Direction,
    /// None = any identity.
    peer: Option<SelectorId>,
    keys: Vec<PortKey>,
    action: Action,
    origin: Arc<str>,
}

/// Changes to one endpoint's map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDelta {
    pub upserts: Vec<(MapKey, MapEntry)>,
    pub removes: Vec<MapKey>,
}

impl MapDelta {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removes.is_empty()
    }

    /// The delta turning `old` into `new`.
    pub fn between(old: &PolicyMap, new: &PolicyMap) -> MapDelta {
        let mut d = MapDelta::default();
        for (k, v) in new {
            if old.get(k) != Some(v) {
                d.upserts.push((*k, v.clone()));
            }
        }
        d.removes = old
            .keys()
            .filter(|k| !new.contains_key(k))
            .copied()
            .collect();
        d
    }

    pub fn apply(&self, map: &mut PolicyMap) {
        for k in &self.removes {
            map.remove(k);
        }
        for (k, v) in &self.upserts {
            map.insert(*k, v.clone());
        }
    }
}

#[derive(Debug)]
pub struct EndpointPolicy {
    pub identity: NumericIdentity,
    pub enforced: [bool; 2],
    /// Policies putting the endpoint under enforcement, per direction.
    pub enforcing: [Vec<Arc<str>>; 2],
    filters: Vec<ResolvedFilter>,
    by_selector: BTreeMap<SelectorId, Vec<usize>>,
    wildcard: [BTreeMap<PortKey, Vec<usize>>; 2],
    id_filters: HashMap<NumericIdentity, Vec<usize>>,
    pub uses_named_ports: bool,
    pub map: PolicyMap,
}

fn ports_to_keys(rule_ports: &[crate::rule::PortSpec], named: &NamedPorts) -> Vec<PortKey> {
    if rule_ports.is_empty() {
        return vec![PortKey::ANY];
    }
    let mut keys = Vec::new();
    for ps in rule_ports {
        let protos: Vec<u8> = match ps.proto {
            Protocol::Any => vec![6, 17, 132],
            p => vec![p.number()],
        };
        match &ps.port {
            PortSel::All if ps.proto == Protocol::Any => keys.push(PortKey::ANY),
            PortSel::All => keys.push(PortKey::new(ps.proto.number(), 0, 0)),
            PortSel::Range(lo, hi) => {
                for p in &protos {
                    keys.extend(
                        range_to_prefixes(*lo, *hi)
                            .into_iter()
                            .map(|(port, l)| PortKey::new(*p, port, l)),
                    );
                }
            }
            PortSel::Named(n) => {
                for (port, proto) in named.get(n).into_iter().flatten() {
                    if ps.proto == Protocol::Any || ps.proto == *proto {
                        keys.push(PortKey::new(proto.number(), *port, 16));
                    }
                }
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

impl EndpointPolicy {
    /// Computes an endpoint's policy from the rules selecting it (the caller picks them). Takes a
    /// reference on every peer selector in `cache`; give them back with [`EndpointPolicy::release`].
    pub fn build<'r>(
        identity: NumericIdentity,
        rules: impl IntoIterator<Item = &'r Rule>,
        cache: &mut SelectorCache,
        ctx: &Context,
    ) -> EndpointPolicy {
        let mut ep = EndpointPolicy {
            identity,
            enforced: [false; 2],
            enforcing: [Vec::new(), Vec::new()],
            filters: Vec::new(),
            by_selector: BTreeMap::new(),
            wildcard: [BTreeMap::new(), BTreeMap::new()],
            id_filters: HashMap::new(),
            uses_named_ports: false,
            map: PolicyMap::new(),
        };
        if ctx.enforcement != Enforcement::Never {
            for rule in rules {
                for d in Direction::BOTH {
                    if rule.enforces[d.index()] {
                        ep.enforced[d.index()] = true;
                        ep.enforcing[d.index()].push(rule.origin.clone());
                    }
                }
                for f in &rule.filters {
                    let named = if f.direction == Direction::Ingress {
                        ctx.local_ports
                    } else {
                        ctx.cluster_ports
                    };
                    ep.uses_named_ports |=
                        f.ports.iter().any(|p| matches!(p.port, PortSel::Named(_)));
                    let keys = ports_to_keys(&f.ports, named);
                    for peer in &f.peers {
                        let peer = if peer.is_wildcard() {
                            None
                        } else {
                            Some(cache.add_selector(peer))
                        };
                        ep.filters.push(ResolvedFilter {
                            dir: f.direction,
                            peer,
                            keys: keys.clone(),
                            action: f.action.clone(),
                            origin: rule.origin.clone(),
                        });
                    }
                }
            }
        }
        if ctx.enforcement == Enforcement::Always {
            ep.enforced = [true, true];
        }
        for d in Direction::BOTH {
            if !ep.enforced[d.index()] {
                ep.filters.push(ResolvedFilter {
                    dir: d,
                    peer: None,
                    keys: vec![PortKey::ANY],
                    action: Action::Allow,
                    origin: Arc::from(""),
                });
            }
            ep.enforcing[d.index()].sort();
            ep.enforcing[d.index()].dedup();
        }
        for (i, f) in ep.filters.iter().enumerate() {
            match f.peer {
                Some(s) => ep.by_selector.entry(s).or_default().push(i),
                None => {
                    for k in &f.keys {
                        ep.wildcard[f.dir.index()].entry(*k).or_default().push(i);
                    }
                }
            }
        }
        for (s, idxs) in &ep.by_selector {
            for id in cache.selections(*s).iter() {
                ep.id_filters
                    .entry(*id)
                    .or_default()
                    .extend(idxs.iter().copied());
            }
        }
        let proxy = ctx.proxy;
        ep.map = ep.wildcard_entries(&proxy);
        let ids: Vec<_> = ep.id_filters.keys().copied().collect();
        for id in ids {
            for (k, e) in ep.identity_entries(id, &proxy) {
                ep.map.insert(k, e);
            }
        }
        ep
    }

    /// Gives back the selector references taken by [`EndpointPolicy::build`].
    pub fn release(&self, cache: &mut SelectorCache) {
        for f in &self.filters {
            if let Some(s) = f.peer {
                cache.remove_selector(s);
            }
        }
    }

    pub fn selectors(&self) -> impl Iterator<Item = SelectorId> + '_ {
        self.by_selector.keys().copied()
    }

    /// Applies selection changes; returns the map delta (only the changed identities' entries).
    pub fn apply_changes(&mut self, changes: &[SelectionChange], proxy: &ProxyPorts) -> MapDelta {
        let mut touched = BTreeSet::new();
        for ch in changes {
            let Some(idxs) = self.by_selector.get(&ch.selector) else {
                continue;
            };
            touched.insert(ch.identity);
            let v = self.id_filters.entry(ch.identity).or_default();
            if ch.added {
                v.extend(idxs.iter().copied());
            } else {
                for i in idxs {
                    if let Some(pos) = v.iter().position(|x| x == i) {
                        v.swap_remove(pos);
                    }
                }
                if v.is_empty() {
                    self.id_filters.remove(&ch.identity);
                }
            }
        }
        let mut delta = MapDelta::default();
        for id in touched {
            let lo = MapKey {
                identity: id,
                direction: Direction::Ingress,
                port: PortKey::ANY,
            };
            let hi = MapKey {
                identity: id,
                direction: Direction::Egress,
                port: PortKey {
                    proto: u8::MAX,
                    port: u16::MAX,
                    prefix: u8::MAX,
                },
            };
            let old: PolicyMap = self
                .map
                .range(lo..=hi)
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            let new: PolicyMap = self.identity_entries(id, proxy).into_iter().collect();
            let d = MapDelta::between(&old, &new);
            d.apply(&mut self.map);
            delta.upserts.extend(d.upserts);
            delta.removes.extend(d.removes);
        }
        delta
    }

    fn merge(
        &self,
        idxs: impl Iterator<Item = usize>,
        dir: Direction,
        proxy: &ProxyPorts,
    ) -> MapEntry {
        let (mut deny, mut allow, mut l7o) = (Vec::new(), Vec::new(), Vec::new());
        let (mut http, mut dns) = (Vec::new(), Vec::new());
        let mut default_allow = false;
        for i in idxs {
            let f = &self.filters[i];
            match &f.action {
                Action::Deny => deny.push(f.origin.clone()),
                Action::Allow if f.origin.is_empty() => default_allow = true,
                Action::Allow => allow.push(f.origin.clone()),
                Action::L7(l7) => {
                    l7o.push(f.origin.clone());
                    match &**l7 {
                        L7::Http(h) => http.extend(h.iter().cloned()),
                        L7::Dns(d) => dns.extend(d.iter().cloned()),
                    }
                }
            }
        }
        let norm = |mut v: Vec<Arc<str>>| {
            v.sort();
            v.dedup();
            v
        };
        let entry = |verdict, origins| MapEntry {
            verdict,
            proxy_port: 0,
            http: Vec::new(),
            dns: Vec::new(),
            origins,
        };
        if !deny.is_empty() {
            return entry(Verdict::Deny, norm(deny));
        }
        if !allow.is_empty() || default_allow {
            return entry(Verdict::Allow, norm(allow));
        }
        http.sort();
        http.dedup();
        dns.sort();
        dns.dedup();
        let proxy_port = match (dir, http.is_empty()) {
            (Direction::Ingress, false) => proxy.http_ingress,
            (Direction::Egress, false) => proxy.http_egress,
            (Direction::Ingress, true) => proxy.dns_ingress,
            (Direction::Egress, true) => proxy.dns_egress,
        };
        MapEntry {
            verdict: Verdict::Redirect,
            proxy_port,
            http,
            dns,
            origins: norm(l7o),
        }
    }

    fn wildcard_entries(&self, proxy: &ProxyPorts) -> PolicyMap {
        let mut out = PolicyMap::new();
        for d in Direction::BOTH {
            let wc = &self.wildcard[d.index()];
            for w in wc.keys() {
                let idxs = wc
                    .iter()
                    .filter(|(k, _)| k.covers(w))
                    .flat_map(|(_, v)| v.iter().copied());
                out.insert(
                    MapKey {
                        identity: 0,
                        direction: d,
                        port: *w,
                    },
                    self.merge(idxs, d, proxy),
                );
            }
        }
        out
    }

    /// The entries of one peer identity. Besides the keys its own filters name, it gets a key at every
    /// wildcard key narrower than one of its own, so that the datapath's longest-prefix rule always lands
    /// on an entry that merges every filter covering the packet.
    fn identity_entries(&self, id: NumericIdentity, proxy: &ProxyPorts) -> Vec<(MapKey, MapEntry)> {
        let Some(idxs) = self.id_filters.get(&id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for d in Direction::BOTH {
            let mut own: BTreeMap<PortKey, Vec<usize>> = BTreeMap::new();
            for &i in idxs {
                let f = &self.filters[i];
                if f.dir == d {
                    for k in &f.keys {
                        own.entry(*k).or_default().push(i);
                    }
                }
            }
            if own.is_empty() {
                continue;
            }
            let wc = &self.wildcard[d.index()];
            let mut keys: BTreeSet<PortKey> = own.keys().copied().collect();
            for w in wc.keys() {
                if own.keys().any(|k| k != w && k.covers(w)) {
                    keys.insert(*w);
                }
            }
            for key in keys {
                let mine = own
                    .iter()
                    .filter(|(k, _)| k.covers(&key))
                    .flat_map(|(_, v)| v.iter().copied());
                let theirs = wc
                    .iter()
                    .filter(|(k, _)| k.covers(&key))
                    .flat_map(|(_, v)| v.iter().copied());
                out.push((
                    MapKey {
                        identity: id,
                        direction: d,
                        port: key,
                    },
                    self.merge(mine.chain(theirs), d, proxy),
                ));
            }
        }
        out
    }
}
