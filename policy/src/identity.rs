//! Numeric security identities: the reserved ones, the allocator trait, and the deterministic,
//! reference-counted local allocator (pods, CIDR prefixes).
use crate::cidr::Cidr;
use crate::labels::{LabelFilter, Labels, Source, keys};
use std::collections::{BTreeMap, HashMap};

/// A numeric security identity. 0 is not an identity: in policy maps it means "any identity".
pub type NumericIdentity = u32;

/// Reserved identities: fixed numbers, the same on every node.
pub mod reserved {
    use super::NumericIdentity;
    /// Wildcard in policy map keys; never allocated.
    pub const WILDCARD: NumericIdentity = 0;
    /// The local node (the host network namespace).
    pub const HOST: NumericIdentity = 1;
    /// Anything outside the cluster that has no more specific (CIDR) identity.
    pub const WORLD: NumericIdentity = 2;
    /// Pods not managed by oxilium (no endpoint yet).
    pub const UNMANAGED: NumericIdentity = 3;
    /// The agents' health-check endpoints.
    pub const HEALTH: NumericIdentity = 4;
    /// Endpoints whose labels are not known yet.
    pub const INIT: NumericIdentity = 5;
    /// Other nodes of the cluster.
    pub const REMOTE_NODE: NumericIdentity = 6;
    /// The Kubernetes API server.
    pub const KUBE_APISERVER: NumericIdentity = 7;

    /// (number, `reserved:` label key) of every reserved identity.
    pub const ALL: [(NumericIdentity, &str); 7] = [
        (HOST, "host"),
        (WORLD, "world"),
        (UNMANAGED, "unmanaged"),
        (HEALTH, "health"),
        (INIT, "init"),
        (REMOTE_NODE, "remote-node"),
        (KUBE_APISERVER, "kube-apiserver"),
    ];
}

/// First identity handed out for label sets (pods); below it only reserved numbers.
pub const MIN_ALLOCATED: NumericIdentity = 256;
/// Last cluster-scope identity (16 bits, room for a cluster id in the upper bits later).
pub const MAX_ALLOCATED: NumericIdentity = 65_535;
/// Node-local identities (CIDR prefixes) have this bit set; they never leave the node.
pub const LOCAL_SCOPE: NumericIdentity = 1 << 24;

/// The labels of a reserved identity.
pub fn reserved_labels(id: NumericIdentity) -> Option<Labels> {
    let (_, name) = reserved::ALL.iter().find(|(n, _)| *n == id)?;
    let mut l = Labels::new().with(Source::Reserved, name, "");
    if id == reserved::WORLD {
        // The world identity is what a /0 prefix selects when no narrower CIDR identity exists.
        l = l
            .with(Source::Cidr, "0.0.0.0/0", "")
            .with(Source::Cidr, "::/0", "");
    }
    Some(l)
}

/// Is this identity inside the cluster (the `cluster` entity)?
pub fn is_cluster(id: NumericIdentity) -> bool {
    id != reserved::WORLD && id != reserved::WILDCARD && id & LOCAL_SCOPE == 0
}

/// The labels of the CIDR identity for `cidr`: the prefix, every enclosing prefix, and `reserved:world`
/// so that `toEntities: [world]` also covers addresses named by CIDR rules.
pub fn cidr_labels(cidr: &Cidr) -> Labels {
    let mut l = Labels::new().with(Source::Reserved, "world", "");
    for a in cidr.ancestors() {
        l = l.with(Source::Cidr, &a.to_string(), "");
    }
    l
}

/// The identity labels of a pod: its (filtered) labels, its namespace, the namespace's labels, the
/// cluster name and the service account.
pub fn pod_labels(
    filter: &LabelFilter,
    namespace: &str,
    pod_labels: &BTreeMap<String, String>,
    ns_labels: &BTreeMap<String, String>,
    service_account: Option<&str>,
    cluster: &str,
) -> Labels {
    let mut l = Labels::new();
    for (k, v) in pod_labels
        .iter()
        .filter(|(k, _)| filter.keeps(k) && !is_reserved_pod_key(k))
    {
        l = l.with(Source::K8s, k, v);
    }
    for (k, v) in ns_labels {
        l = l.with(Source::K8s, &format!("{}{k}", keys::NAMESPACE_LABELS), v);
    }
    l = l
        .with(Source::K8s, keys::NAMESPACE, namespace)
        .with(Source::K8s, keys::CLUSTER, cluster);
    if let Some(sa) = service_account {
        l = l.with(Source::K8s, keys::SERVICE_ACCOUNT, sa);
    }
    l
}

/// Pod label keys that only the agent may set (namespace, namespace labels, service account,
/// cluster): a pod's own labels with these keys are dropped, so a pod cannot claim another
/// namespace's labels or another service account.
pub fn is_reserved_pod_key(key: &str) -> bool {
    key == keys::NAMESPACE || key.starts_with("io.cilium.k8s.")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("identity space exhausted")]
    Exhausted,
    #[error("identity {0} is not allocated")]
    Unknown(NumericIdentity),
}

/// Allocation of numeric identities for label sets. The local allocator implements it now; a
/// cluster-wide one (CRD or kvstore backed) can implement it later without touching the callers.
pub trait IdentityAllocator {
    /// Returns the identity of `labels`, allocating it on first use, and takes one reference.
    /// The boolean is true when the identity is new (the selector cache must hear about it).
    fn allocate(&mut self, labels: &Labels) -> Result<(NumericIdentity, bool), AllocError>;
    /// Drops one reference; true when that was the last one and the identity is gone.
    fn release(&mut self, id: NumericIdentity) -> Result<bool, AllocError>;
    /// The labels of an identity (reserved or allocated).
    fn labels(&self, id: NumericIdentity) -> Option<&Labels>;
    /// The identity currently holding `labels`, without taking a reference.
    fn lookup(&self, labels: &Labels) -> Option<NumericIdentity>;
}

/// Last node-local identity.
pub const MAX_LOCAL: NumericIdentity = LOCAL_SCOPE | 0x00ff_ffff;

/// The first number in `lo..=hi` not in use, searching from `start` and wrapping round; with the
/// number to start the next search at.
fn next_free<V>(
    used: &HashMap<NumericIdentity, V>,
    in_range: usize,
    start: NumericIdentity,
    lo: NumericIdentity,
    hi: NumericIdentity,
) -> Result<(NumericIdentity, NumericIdentity), AllocError> {
    if in_range as u64 > u64::from(hi - lo) {
        return Err(AllocError::Exhausted);
    }
    let mut id = start.clamp(lo, hi);
    loop {
        if !used.contains_key(&id) {
            let next = if id == hi { lo } else { id + 1 };
            return Ok((id, next));
        }
        id = if id == hi { lo } else { id + 1 };
    }
}

#[derive(Debug)]
struct Slot {
    labels: Labels,
    refs: usize,
}

/// Node-local allocator: numbers are handed out in order of first use, so the same sequence of calls
/// always yields the same numbers. A released number is reused once the allocator has gone round its
/// range (the search for a free number starts after the last one handed out and wraps), so the space
/// never runs out while fewer than its size are in use. Label sets made only of `cidr:` (and
/// `reserved:world`) labels get node-local identities ([`LOCAL_SCOPE`]).
/// Chooses the number of a new cluster-scope label set (a cluster-wide allocator, e.g. a
/// kvstore); None: the local allocator picks.
pub type Resolver = Box<dyn FnMut(&Labels) -> Option<NumericIdentity> + Send>;

pub struct LocalAllocator {
    /// Asked first for the number of each new cluster-scope label set.
    resolver: Option<Resolver>,
    by_id: HashMap<NumericIdentity, Slot>,
    by_labels: HashMap<Labels, NumericIdentity>,
    reserved: BTreeMap<NumericIdentity, Labels>,
    next_global: NumericIdentity,
    next_local: NumericIdentity,
    /// Identities in use in the node-local range.
    n_local: usize,
}

impl std::fmt::Debug for LocalAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAllocator")
            .field("identities", &self.by_id.len())
            .field("resolver", &self.resolver.is_some())
            .finish()
    }
}

impl Default for LocalAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalAllocator {
    pub fn new() -> LocalAllocator {
        let reserved = reserved::ALL
            .iter()
            .map(|(id, _)| (*id, reserved_labels(*id).expect("reserved")))
            .collect();
        LocalAllocator {
            by_id: HashMap::new(),
            by_labels: HashMap::new(),
            reserved,
            next_global: MIN_ALLOCATED,
            next_local: LOCAL_SCOPE + 1,
            n_local: 0,
            resolver: None,
        }
    }

    /// Numbers of new cluster-scope label sets come from `r` (when it answers with a number in
    /// the range that is not in use here).
    pub fn set_resolver(&mut self, r: Resolver) {
        self.resolver = Some(r);
    }

    /// Reserved identities and their labels.
    pub fn reserved(&self) -> impl Iterator<Item = (NumericIdentity, &Labels)> {
        self.reserved.iter().map(|(i, l)| (*i, l))
    }

    /// Allocated identities and their labels, in numeric order.
    pub fn allocated(&self) -> Vec<(NumericIdentity, &Labels)> {
        let mut v: Vec<_> = self.by_id.iter().map(|(i, s)| (*i, &s.labels)).collect();
        v.sort_by_key(|(i, _)| *i);
        v
    }

    /// Allocates (or references) the CIDR identity of a prefix.
    pub fn allocate_cidr(&mut self, cidr: &Cidr) -> Result<(NumericIdentity, bool), AllocError> {
        self.allocate(&cidr_labels(cidr))
    }

    fn is_local(labels: &Labels) -> bool {
        labels.iter().all(|(s, k, _)| {
            s == Source::Cidr || s == Source::Fqdn || (s == Source::Reserved && k == "world")
        })
    }

    pub fn refs(&self, id: NumericIdentity) -> usize {
        self.by_id.get(&id).map_or(0, |s| s.refs)
    }
}

impl IdentityAllocator for LocalAllocator {
    fn allocate(&mut self, labels: &Labels) -> Result<(NumericIdentity, bool), AllocError> {
        if let Some((id, _)) = self.reserved.iter().find(|(_, l)| *l == labels) {
            return Ok((*id, false));
        }
        if let Some(id) = self.by_labels.get(labels) {
            self.by_id.get_mut(id).expect("consistent").refs += 1;
            return Ok((*id, false));
        }
        let id = if Self::is_local(labels) {
            let (id, next) = next_free(
                &self.by_id,
                self.n_local,
                self.next_local,
                LOCAL_SCOPE + 1,
                MAX_LOCAL,
            )?;
            self.next_local = next;
            self.n_local += 1;
            id
        } else if let Some(id) = self.resolver.as_mut().and_then(|r| r(labels)).filter(|id| {
            (MIN_ALLOCATED..=MAX_ALLOCATED).contains(id) && !self.by_id.contains_key(id)
        }) {
            id
        } else {
            let (id, next) = next_free(
                &self.by_id,
                self.by_id.len() - self.n_local,
                self.next_global,
                MIN_ALLOCATED,
                MAX_ALLOCATED,
            )?;
            self.next_global = next;
            id
        };
        self.by_id.insert(
            id,
            Slot {
                labels: labels.clone(),
                refs: 1,
            },
        );
        self.by_labels.insert(labels.clone(), id);
        Ok((id, true))
    }

    fn release(&mut self, id: NumericIdentity) -> Result<bool, AllocError> {
        if self.reserved.contains_key(&id) {
            return Ok(false);
        }
        let slot = self.by_id.get_mut(&id).ok_or(AllocError::Unknown(id))?;
        slot.refs -= 1;
        if slot.refs > 0 {
            return Ok(false);
        }
        let slot = self.by_id.remove(&id).expect("present");
        self.by_labels.remove(&slot.labels);
        if id & LOCAL_SCOPE != 0 {
            self.n_local -= 1;
        }
        Ok(true)
    }

    fn labels(&self, id: NumericIdentity) -> Option<&Labels> {
        self.reserved
            .get(&id)
            .or_else(|| self.by_id.get(&id).map(|s| &s.labels))
    }

    fn lookup(&self, labels: &Labels) -> Option<NumericIdentity> {
        self.reserved
            .iter()
            .find(|(_, l)| *l == labels)
            .map(|(i, _)| *i)
            .or_else(|| self.by_labels.get(labels).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcounted_and_deterministic() {
        let mut a = LocalAllocator::new();
        let ds = Labels::parse(["k8s:org=empire", "k8s:class=deathstar"]);
        let tf = Labels::parse(["k8s:org=empire", "k8s:class=tiefighter"]);
        assert_eq!(a.allocate(&ds), Ok((256, true)));
        assert_eq!(a.allocate(&tf), Ok((257, true)));
        assert_eq!(a.allocate(&ds), Ok((256, false)));
        assert_eq!(a.refs(256), 2);
        assert_eq!(a.release(256), Ok(false));
        assert_eq!(a.lookup(&ds), Some(256));
        assert_eq!(a.release(256), Ok(true));
        assert_eq!(a.lookup(&ds), None);
        assert_eq!(a.release(256), Err(AllocError::Unknown(256)));
        // Not reused at once: a fresh allocation gets the next number.
        assert_eq!(a.allocate(&ds), Ok((258, true)));
    }

    /// Numbers come back after the range went round; the allocator never panics, and says when
    /// every number is in use.
    #[test]
    fn numbers_reused_after_release_without_panic() {
        let mut a = LocalAllocator::new();
        let l = |i: u32| Labels::parse([format!("k8s:app=a{i}").as_str()]);
        let size = MAX_ALLOCATED - MIN_ALLOCATED + 1;
        // Three times the space, holding at most 10 at once.
        for i in 0..3 * size {
            let (id, new) = a.allocate(&l(i)).unwrap();
            assert!(new && (MIN_ALLOCATED..=MAX_ALLOCATED).contains(&id));
            if i >= 10 {
                let old = a.lookup(&l(i - 10)).unwrap();
                assert_eq!(a.release(old), Ok(true));
            }
        }
        assert_eq!(a.allocated().len(), 10);
        // Fill the space: the next allocation is an error, not a panic; a release frees a number.
        let mut held = Vec::new();
        for i in 0.. {
            match a.allocate(&l(10_000_000 + i)) {
                Ok((id, _)) => held.push(id),
                Err(e) => {
                    assert_eq!(e, AllocError::Exhausted);
                    break;
                }
            }
        }
        assert_eq!(a.allocated().len() as u32, size);
        assert_eq!(a.release(held[5]), Ok(true));
        assert_eq!(a.allocate(&l(1)), Ok((held[5], true)));
    }

    #[test]
    fn reserved_numbers_and_labels() {
        let mut a = LocalAllocator::new();
        let host = Labels::parse(["reserved:host"]);
        assert_eq!(a.allocate(&host), Ok((reserved::HOST, false)));
        assert_eq!(
            a.labels(reserved::KUBE_APISERVER).unwrap().to_strings(),
            ["reserved:kube-apiserver"]
        );
        assert_eq!(
            a.labels(reserved::WORLD)
                .unwrap()
                .get(Source::Cidr, "0.0.0.0/0"),
            Some("")
        );
        assert!(is_cluster(reserved::HOST) && !is_cluster(reserved::WORLD));
    }

    #[test]
    fn cidr_identities_are_node_local() {
        let mut a = LocalAllocator::new();
        let (id, new) = a.allocate_cidr(&"10.0.0.0/8".parse().unwrap()).unwrap();
        assert!(new && id & LOCAL_SCOPE != 0 && !is_cluster(id));
        let l = a.labels(id).unwrap();
        assert_eq!(l.get(Source::Cidr, "10.0.0.0/8"), Some(""));
        assert_eq!(l.get(Source::Cidr, "0.0.0.0/0"), Some(""));
        assert_eq!(l.get(Source::Reserved, "world"), Some(""));
    }

    #[test]
    fn pod_identity_includes_namespace_and_filters() {
        let f = LabelFilter::default();
        let pod: BTreeMap<String, String> = [("app", "web"), ("pod-template-hash", "abc")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ns: BTreeMap<String, String> = [("team".to_string(), "a".to_string())].into();
        let l = pod_labels(&f, "prod", &pod, &ns, Some("default"), "default");
        assert_eq!(l.get(Source::K8s, "app"), Some("web"));
        assert_eq!(l.get(Source::K8s, "pod-template-hash"), None);
        assert_eq!(l.get(Source::K8s, keys::NAMESPACE), Some("prod"));
        assert_eq!(
            l.get(Source::K8s, "io.cilium.k8s.namespace.labels.team"),
            Some("a")
        );
        assert_eq!(l.get(Source::K8s, keys::SERVICE_ACCOUNT), Some("default"));
    }

    /// A pod cannot set the labels the agent derives from its namespace and service account.
    #[test]
    fn pod_labels_in_reserved_keys_are_dropped() {
        let f = LabelFilter::default();
        let pod: BTreeMap<String, String> = [
            ("app", "web"),
            ("io.cilium.k8s.namespace.labels.team", "prod"),
            ("io.kubernetes.pod.namespace", "prod"),
            ("io.cilium.k8s.policy.serviceaccount", "admin"),
            ("io.cilium.k8s.policy.cluster", "other"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let l = pod_labels(&f, "dev", &pod, &BTreeMap::new(), None, "default");
        assert_eq!(
            l.to_strings(),
            [
                "k8s:app=web",
                "k8s:io.cilium.k8s.policy.cluster=default",
                "k8s:io.kubernetes.pod.namespace=dev"
            ]
        );
    }
}
