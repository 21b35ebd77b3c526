//! The policy engine: identities, the selector cache, the policy repository and the local endpoints'
//! policies, kept consistent under events. Each event returns the map deltas it causes per endpoint.
use crate::cidr::Cidr;
use crate::endpoint_policy::{
    Context, EndpointPolicy, Enforcement, MapDelta, NamedPorts, ProxyPorts,
};
use crate::identity::{
    IdentityAllocator, LocalAllocator, NumericIdentity, cidr_labels, pod_labels, reserved,
    reserved_labels,
};
use crate::labels::{LabelFilter, Labels};
use crate::mapstate::PolicyMap;
use crate::rule::{PolicyRef, Rule};
use crate::selector::{FqdnMatch, Selector};
use crate::selector_cache::{SelectionChange, SelectorCache, SelectorId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    pub enforcement: Enforcement,
    /// Compute verdicts but do not enforce them: drops are reported as `audit`.
    pub audit: bool,
    pub label_filter: LabelFilter,
    pub cluster: String,
    pub proxy: ProxyPorts,
    /// Traffic from the local host (identity `host`) into pods is allowed whatever the policy
    /// says (kubelet probes); false: checked like any other peer.
    pub allow_localhost: bool,
    /// Addresses learnt from DNS answers stay at least this long (a shorter answer TTL is raised).
    pub fqdn_min_ttl: Duration,
    /// Where an endpoint with `toFQDNs` but no DNS rule may send DNS (the implicit DNS rule, see
    /// [`crate::dns`]): the cluster's DNS service pods.
    pub dns_servers: Vec<Selector>,
}

/// The default of [`Config::fqdn_min_ttl`]: an hour, so that clients which cache answers longer than
/// their TTL (many runtimes do) keep reaching the address.
pub const DEFAULT_FQDN_MIN_TTL: Duration = Duration::from_secs(3600);

/// The default [`Config::dns_servers`]: kube-dns / CoreDNS pods in kube-system.
pub fn kube_dns() -> Selector {
    Selector::match_labels([
        ("k8s:io.kubernetes.pod.namespace", "kube-system"),
        ("k8s:k8s-app", "kube-dns"),
    ])
}

impl Default for Config {
    fn default() -> Config {
        Config {
            enforcement: Enforcement::Default,
            audit: false,
            label_filter: LabelFilter::default(),
            cluster: "default".into(),
            proxy: ProxyPorts::default(),
            allow_localhost: true,
            fqdn_min_ttl: DEFAULT_FQDN_MIN_TTL,
            dns_servers: vec![kube_dns()],
        }
    }
}

/// A local pod as the engine needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSpec {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    pub ips: Vec<IpAddr>,
    pub ports: NamedPorts,
    /// `spec.hostNetwork`: the pod is the node (identity `reserved:host`, no policy of its own).
    pub host_network: bool,
}

impl EndpointSpec {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug)]
pub struct Endpoint {
    pub spec: EndpointSpec,
    pub identity: NumericIdentity,
    pub labels: Labels,
    pub policy: EndpointPolicy,
}

/// One endpoint's map changes caused by an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointDelta {
    pub endpoint: String,
    pub delta: MapDelta,
}

#[derive(Debug)]
pub struct Engine {
    pub cfg: Config,
    alloc: LocalAllocator,
    cache: SelectorCache,
    pub(crate) policies: BTreeMap<PolicyRef, Vec<Rule>>,
    /// CIDR identities held by each policy.
    policy_cidrs: BTreeMap<PolicyRef, Vec<NumericIdentity>>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    endpoints: BTreeMap<String, Endpoint>,
    sel_users: HashMap<SelectorId, BTreeSet<String>>,
    cluster_ports: NamedPorts,
    /// DNS data behind `toFQDNs` ([`crate::fqdn`]).
    pub(crate) fqdn: crate::fqdn::FqdnCache,
    /// The identity of each address DNS data gives one.
    pub(crate) fqdn_ids: BTreeMap<IpAddr, NumericIdentity>,
    /// The `toFQDNs` selectors of the policies, as of the last policy change.
    pub(crate) fqdn_sels: BTreeSet<FqdnMatch>,
    /// Policies already warned about (the implicit DNS rule), and warnings not yet taken.
    pub(crate) warned: BTreeSet<Arc<str>>,
    pub(crate) warnings: Vec<String>,
}

impl Engine {
    pub fn new(cfg: Config) -> Engine {
        let mut cache = SelectorCache::new();
        for (id, _) in reserved::ALL {
            cache.add_identity(id, &reserved_labels(id).expect("reserved"));
        }
        Engine {
            cfg,
            alloc: LocalAllocator::new(),
            cache,
            policies: BTreeMap::new(),
            policy_cidrs: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            sel_users: HashMap::new(),
            cluster_ports: NamedPorts::new(),
            fqdn: Default::default(),
            fqdn_ids: BTreeMap::new(),
            fqdn_sels: BTreeSet::new(),
            warned: BTreeSet::new(),
            warnings: Vec::new(),
        }
    }

    pub fn allocator(&self) -> &LocalAllocator {
        &self.alloc
    }

    /// A cluster-wide allocator chooses the numbers of new label sets from now on.
    pub fn set_identity_resolver(&mut self, r: crate::identity::Resolver) {
        self.alloc.set_resolver(r);
    }

    pub fn selector_cache(&self) -> &SelectorCache {
        &self.cache
    }

    pub fn endpoint(&self, key: &str) -> Option<&Endpoint> {
        self.endpoints.get(key)
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    pub fn policies(&self) -> impl Iterator<Item = (&PolicyRef, &Vec<Rule>)> {
        self.policies.iter()
    }

    fn dispatch(&mut self, changes: Vec<SelectionChange>) -> Vec<EndpointDelta> {
        let mut eps = BTreeSet::new();
        for ch in &changes {
            if let Some(users) = self.sel_users.get(&ch.selector) {
                eps.extend(users.iter().cloned());
            }
        }
        let mut out = Vec::new();
        for key in eps {
            let ep = self.endpoints.get_mut(&key).expect("user is an endpoint");
            let delta = ep.policy.apply_changes(&changes, &self.cfg.proxy);
            if !delta.is_empty() {
                out.push(EndpointDelta {
                    endpoint: key,
                    delta,
                });
            }
        }
        out
    }

    /// Takes a reference on the identity of `labels` (an identity seen elsewhere in the cluster, or a
    /// local one); a new identity updates the selectors that match it. When every number is in use
    /// the labels get `reserved:init` (selected by no pod selector: such a pod is treated as not
    /// known yet) until numbers are released.
    pub fn add_identity(&mut self, labels: &Labels) -> (NumericIdentity, Vec<EndpointDelta>) {
        let Ok((id, new)) = self.alloc.allocate(labels) else {
            return (reserved::INIT, Vec::new());
        };
        let deltas = if new {
            let ch = self.cache.add_identity(id, labels);
            self.dispatch(ch)
        } else {
            Vec::new()
        };
        (id, deltas)
    }

    /// Drops a reference taken by [`Engine::add_identity`].
    pub fn release_identity(&mut self, id: NumericIdentity) -> Vec<EndpointDelta> {
        match self.alloc.release(id) {
            Ok(true) => {
                let ch = self.cache.remove_identity(id);
                self.dispatch(ch)
            }
            _ => Vec::new(),
        }
    }

    fn selecting_rules<'a>(
        policies: &'a BTreeMap<PolicyRef, Vec<Rule>>,
        labels: &'a Labels,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        policies
            .values()
            .flatten()
            .filter(move |r| !r.applies_to_nodes && r.subject.matches(labels))
    }

    fn build_policy(
        &mut self,
        identity: NumericIdentity,
        labels: &Labels,
        ports: &NamedPorts,
    ) -> EndpointPolicy {
        let ctx = Context {
            enforcement: Self::enforcement(self.cfg.enforcement, identity),
            proxy: self.cfg.proxy,
            local_ports: ports,
            cluster_ports: &self.cluster_ports,
        };
        let rules: Vec<&Rule> = Self::selecting_rules(&self.policies, labels).collect();
        let implicit = crate::dns::implicit_rule(&rules, &self.cfg.dns_servers);
        if implicit.is_some() {
            for r in crate::dns::fqdn_rules(&rules) {
                if self.warned.insert(r.origin.clone()) {
                    self.warnings.push(crate::dns::implicit_warning(&r.origin));
                }
            }
        }
        EndpointPolicy::build(
            identity,
            rules.into_iter().chain(implicit.as_ref()),
            &mut self.cache,
            &ctx,
        )
    }

    /// Warnings about the policies not yet taken (the agent logs them): each is given once.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Host-network pods are the node: pod policies do not apply to them.
    fn enforcement(cfg: Enforcement, identity: NumericIdentity) -> Enforcement {
        if identity == reserved::HOST {
            Enforcement::Never
        } else {
            cfg
        }
    }

    /// Recomputes one endpoint's policy (after a rule or identity change of its own).
    fn regenerate(&mut self, key: &str) -> Option<EndpointDelta> {
        let ep = self.endpoints.get(key)?;
        let (id, labels, ports) = (ep.identity, ep.labels.clone(), ep.spec.ports.clone());
        let policy = self.build_policy(id, &labels, &ports);
        for s in policy.selectors() {
            self.sel_users.entry(s).or_default().insert(key.to_string());
        }
        let ep = self.endpoints.get_mut(key).expect("present");
        let old = std::mem::replace(&mut ep.policy, policy);
        let delta = MapDelta::between(&old.map, &ep.policy.map);
        self.release_policy(key, &old);
        (!delta.is_empty()).then(|| EndpointDelta {
            endpoint: key.to_string(),
            delta,
        })
    }

    fn release_policy(&mut self, key: &str, p: &EndpointPolicy) {
        let still: BTreeSet<SelectorId> = self
            .endpoints
            .get(key)
            .map(|e| e.policy.selectors().collect())
            .unwrap_or_default();
        for s in p.selectors() {
            if !still.contains(&s)
                && let Some(u) = self.sel_users.get_mut(&s)
            {
                u.remove(key);
                if u.is_empty() {
                    self.sel_users.remove(&s);
                }
            }
        }
        p.release(&mut self.cache);
    }

    fn refresh_cluster_ports(&mut self) -> Vec<EndpointDelta> {
        let mut ports = NamedPorts::new();
        for ep in self.endpoints.values() {
            for (n, set) in &ep.spec.ports {
                ports
                    .entry(n.clone())
                    .or_default()
                    .extend(set.iter().copied());
            }
        }
        if ports == self.cluster_ports {
            return Vec::new();
        }
        self.cluster_ports = ports;
        let users: Vec<String> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.policy.uses_named_ports)
            .map(|(k, _)| k.clone())
            .collect();
        users.iter().filter_map(|k| self.regenerate(k)).collect()
    }

    /// Adds or updates a local pod.
    pub fn upsert_endpoint(&mut self, spec: EndpointSpec) -> Vec<EndpointDelta> {
        let implicit: BTreeMap<String, String> = [(
            "kubernetes.io/metadata.name".to_string(),
            spec.namespace.clone(),
        )]
        .into();
        let ns_labels = self.namespaces.get(&spec.namespace).unwrap_or(&implicit);
        let labels = if spec.host_network {
            reserved_labels(reserved::HOST).expect("reserved")
        } else {
            pod_labels(
                &self.cfg.label_filter,
                &spec.namespace,
                &spec.labels,
                ns_labels,
                spec.service_account.as_deref(),
                &self.cfg.cluster,
            )
        };
        let key = spec.key();
        let (id, mut out) = self.add_identity(&labels);
        let old_id = match self.endpoints.get_mut(&key) {
            Some(ep) => {
                let old = ep.identity;
                ep.identity = id;
                ep.labels = labels;
                ep.spec = spec;
                Some(old)
            }
            None => {
                let policy = self.build_policy(id, &labels, &spec.ports);
                for s in policy.selectors() {
                    self.sel_users.entry(s).or_default().insert(key.clone());
                }
                let delta = MapDelta::between(&PolicyMap::new(), &policy.map);
                self.endpoints.insert(
                    key.clone(),
                    Endpoint {
                        spec,
                        identity: id,
                        labels,
                        policy,
                    },
                );
                out.push(EndpointDelta {
                    endpoint: key.clone(),
                    delta,
                });
                None
            }
        };
        if let Some(old) = old_id {
            out.extend(self.regenerate(&key));
            out.extend(self.release_identity(old));
        }
        out.extend(self.refresh_cluster_ports());
        out
    }

    pub fn remove_endpoint(&mut self, key: &str) -> Vec<EndpointDelta> {
        let Some(ep) = self.endpoints.remove(key) else {
            return Vec::new();
        };
        self.release_policy(key, &ep.policy);
        let mut out = self.release_identity(ep.identity);
        out.extend(self.refresh_cluster_ports());
        out
    }

    /// Namespace labels are part of pod identities: a change re-identifies the namespace's pods.
    pub fn upsert_namespace(
        &mut self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Vec<EndpointDelta> {
        let mut labels = labels;
        labels
            .entry("kubernetes.io/metadata.name".into())
            .or_insert_with(|| name.to_string());
        if self.namespaces.get(name) == Some(&labels) {
            return Vec::new();
        }
        self.namespaces.insert(name.to_string(), labels);
        let specs: Vec<EndpointSpec> = self
            .endpoints
            .values()
            .filter(|e| e.spec.namespace == name)
            .map(|e| e.spec.clone())
            .collect();
        specs
            .into_iter()
            .flat_map(|s| self.upsert_endpoint(s))
            .collect()
    }

    /// Adds or replaces the rules of one policy object.
    pub fn upsert_policy(&mut self, origin: PolicyRef, rules: Vec<Rule>) -> Vec<EndpointDelta> {
        let mut out = Vec::new();
        let mut cidr_ids = Vec::new();
        let cidrs: BTreeSet<Cidr> = rules.iter().flat_map(|r| r.cidrs.iter().copied()).collect();
        for c in cidrs {
            let (id, d) = self.add_identity(&cidr_labels(&c));
            cidr_ids.push(id);
            out.extend(d);
        }
        let old = self
            .policies
            .insert(origin.clone(), rules)
            .unwrap_or_default();
        out.extend(self.regenerate_selected(&old, &origin));
        out.extend(self.refresh_fqdn_selectors().deltas);
        for id in self
            .policy_cidrs
            .insert(origin, cidr_ids)
            .unwrap_or_default()
        {
            out.extend(self.release_identity(id));
        }
        out
    }

    pub fn remove_policy(&mut self, origin: &PolicyRef) -> Vec<EndpointDelta> {
        let Some(old) = self.policies.remove(origin) else {
            return Vec::new();
        };
        let mut out = self.regenerate_selected(&old, origin);
        out.extend(self.refresh_fqdn_selectors().deltas);
        for id in self.policy_cidrs.remove(origin).unwrap_or_default() {
            out.extend(self.release_identity(id));
        }
        out
    }

    /// Regenerates the endpoints selected by the old rules or the current rules of `origin`.
    fn regenerate_selected(&mut self, old: &[Rule], origin: &PolicyRef) -> Vec<EndpointDelta> {
        let new = self
            .policies
            .get(origin)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let keys: Vec<String> = self
            .endpoints
            .iter()
            .filter(|(_, e)| {
                old.iter()
                    .chain(new)
                    .any(|r| !r.applies_to_nodes && r.subject.matches(&e.labels))
            })
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| self.regenerate(k)).collect()
    }

    /// Computes an endpoint's map from scratch with a fresh selector cache: the reference the
    /// incremental state must equal.
    pub fn recompute(&self, key: &str) -> Option<PolicyMap> {
        let ep = self.endpoints.get(key)?;
        let mut cache = SelectorCache::new();
        for (id, l) in self.cache.identities() {
            cache.add_identity(id, l);
        }
        let ctx = Context {
            enforcement: Self::enforcement(self.cfg.enforcement, ep.identity),
            proxy: self.cfg.proxy,
            local_ports: &ep.spec.ports,
            cluster_ports: &self.cluster_ports,
        };
        let rules: Vec<&Rule> = Self::selecting_rules(&self.policies, &ep.labels).collect();
        let implicit = crate::dns::implicit_rule(&rules, &self.cfg.dns_servers);
        Some(
            EndpointPolicy::build(
                ep.identity,
                rules.into_iter().chain(implicit.as_ref()),
                &mut cache,
                &ctx,
            )
            .map,
        )
    }

    /// The identity of an address: a local pod's, else the one DNS data gave it, else the longest CIDR identity containing it, else world.
    pub fn identity_of_ip(&self, ip: IpAddr) -> (NumericIdentity, Option<&Endpoint>) {
        if let Some(ep) = self.endpoints.values().find(|e| e.spec.ips.contains(&ip)) {
            return (ep.identity, Some(ep));
        }
        if let Some(id) = self.fqdn_identity(ip) {
            return (id, None);
        }
        let best = self
            .policies
            .values()
            .flatten()
            .flat_map(|r| r.cidrs.iter())
            .filter(|c| c.contains_ip(ip))
            .max_by_key(|c| c.prefix_len());
        let id = best
            .and_then(|c| self.alloc.lookup(&cidr_labels(c)))
            .unwrap_or(reserved::WORLD);
        (id, None)
    }

    /// Labels of any known identity.
    pub fn identity_labels(&self, id: NumericIdentity) -> Option<&Labels> {
        self.alloc.labels(id)
    }
}
