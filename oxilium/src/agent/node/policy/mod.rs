//! Network policy on the node (`--cni`): the policy engine (the `policy` crate) fed from the
//! manifests folder (Namespaces, Pods, NetworkPolicies, Cilium policies, Nodes) and the CNI
//! side's endpoints, and its output reconciled into the kernel ([`reconcile`]): each local
//! endpoint's policy map, its identity and policy flags in `OXI_ENDPOINTS`, and the ipcache.
//!
//! Identities: the folder is fed to the engine in the reader's order (namespaces, policies,
//! pods), as `oxilium policy verdict --manifests` does, so every node computes the same numbers
//! from the same folder; a local endpoint whose Pod is in the folder takes that Pod's identity.
pub mod dns;
mod etcd;
mod kvstore;
mod reconcile;
mod show;
mod tasks;

pub use tasks::{follow_api, spawn_tasks};

use crate::bpf::policy::PolicyMaps;
use anyhow::{Context, Result};
use policy::{
    Config, EndpointSpec, Enforcement, Engine,
    manifests::{Manifests, endpoint_spec},
    rule::{PolicyRef, Rule},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tracing::{info, warn};

/// Host-to-pod traffic: allowed whatever the policy says, or checked like any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AllowLocalhost {
    Always,
    Policy,
}

#[derive(clap::Args, Debug, Clone)]
pub struct PolicyFlags {
    /// --cni: policy enforcement: default (a pod's direction is enforced once a policy selects
    /// it in that direction), always (no rule, no traffic), never.
    #[arg(long = "policy-enforcement", value_enum, default_value = "default")]
    pub enforcement: EnforcementFlag,
    /// --cni: compute and count verdicts, never drop: flows the policy would drop are counted
    /// as `audited` and let through.
    #[arg(long = "policy-audit-mode")]
    pub audit: bool,
    /// --cni: traffic from this node (identity `host`) into its pods: `always` allowed (kubelet
    /// probes), or checked by `policy` like any other peer.
    #[arg(long = "allow-localhost", value_enum, default_value = "always")]
    pub allow_localhost: AllowLocalhost,
    /// --cni: allocate identities cluster-wide and share the ipcache through a kvstore (etcd).
    #[arg(long, value_parser = ["etcd"], requires = "kvstore_endpoint")]
    pub kvstore: Option<String>,
    /// --kvstore: the etcd client URL, http://IP:PORT.
    #[arg(long)]
    pub kvstore_endpoint: Option<String>,
    /// --kvstore: an identity no node references for this long (milliseconds) is deleted and its
    /// number may be reused.
    #[arg(long, default_value_t = 300_000)]
    pub identity_gc_grace_ms: u64,
    /// --kvstore: period of the full sync (milliseconds): garbage collection, and a read of every
    /// other node's entries besides the watch (the lease is kept alive every 5 s regardless).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub kvstore_sync_ms: u64,
    #[command(flatten)]
    pub dns: dns::DnsFlags,
    /// --cni: run the L7 proxies (HTTP) in the agent; `false`: flows that L7 rules redirect are
    /// dropped (a redirected flow never bypasses its proxy).
    #[arg(long = "l7-proxy", default_value_t = true, action = clap::ArgAction::Set)]
    pub l7_proxy: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EnforcementFlag {
    Default,
    Always,
    Never,
}

impl PolicyFlags {
    pub fn config(&self) -> Config {
        Config {
            enforcement: match self.enforcement {
                EnforcementFlag::Default => Enforcement::Default,
                EnforcementFlag::Always => Enforcement::Always,
                EnforcementFlag::Never => Enforcement::Never,
            },
            audit: self.audit,
            allow_localhost: self.allow_localhost == AllowLocalhost::Always,
            fqdn_min_ttl: Duration::from_secs(self.dns.tofqdns_min_ttl),
            ..Config::default()
        }
    }
}

/// What the folder holds for the policy.
#[derive(Default)]
struct Folder {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    policies: BTreeMap<PolicyRef, Vec<Rule>>,
    /// `namespace/name` → spec, in the reader's order of first appearance.
    pods: Vec<EndpointSpec>,
    /// `namespace/name` → index in `pods`.
    index: std::collections::HashMap<String, usize>,
    /// Node name → its addresses.
    nodes: BTreeMap<String, Vec<IpAddr>>,
}

/// A local endpoint (made by the CNI side).
#[derive(Clone, Debug)]
pub struct Local {
    pub key: String,
    pub addrs: Vec<IpAddr>,
}

pub struct PolicyAgent {
    flags: PolicyFlags,
    engine: Engine,
    manifests: Option<PathBuf>,
    node: Option<String>,
    folder: Folder,
    /// Endpoint id → the engine endpoint it is.
    local: BTreeMap<u32, Local>,
    /// `namespace/name` → endpoint id of the local endpoints.
    local_keys: std::collections::HashMap<String, u32>,
    maps: PolicyMaps,
    kernel: reconcile::Held,
    /// `--kvstore etcd`: cluster-wide identities and ipcache.
    kv: Option<kvstore::KvStore>,
    parse_cache: ParseCache,
    /// Time of each endpoint regeneration (map fill and flags), most recent last (bounded).
    pub regenerations: Vec<Duration>,
    pub last_error: Option<String>,
    /// What the L7 proxies ask: each local endpoint's identity and map.
    pub l7: std::sync::Arc<crate::agent::node::l7::Endpoints>,
}

/// The folder's files as last parsed: a file whose text did not change is not parsed again.
type ParseCache = std::collections::HashMap<PathBuf, (String, Vec<k8s::manifests::Object>)>;

fn read_objects(dir: &Path, cache: &mut ParseCache) -> Result<Vec<k8s::manifests::Object>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for file in k8s::manifests::files(dir)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        seen.insert(file.clone());
        match cache.get(&file) {
            Some((t, objects)) if *t == text => out.extend(objects.iter().cloned()),
            _ => {
                let objects = k8s::manifests::parse_text(&file, &text)?;
                out.extend(objects.iter().cloned());
                cache.insert(file, (text, objects));
            }
        }
    }
    cache.retain(|f, _| seen.contains(f));
    Ok(out)
}

/// The policy objects among `objects` (a manifests folder's, or the API server's).
fn folder_of(objects: Vec<k8s::manifests::Object>, cluster: &str) -> Result<Folder> {
    let mut f = Folder::default();
    for o in &objects {
        if o.value.get("kind").and_then(|k| k.as_str()) == Some("Node") {
            let name = o.value["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let addrs = o.value["status"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["address"].as_str()?.parse().ok())
                .collect();
            f.nodes.insert(name, addrs);
        }
    }
    let m = Manifests::from_objects(objects.into_iter().map(|o| (o.origin, o.value)), cluster)?;
    for ns in m.namespaces {
        f.namespaces.insert(ns.metadata.name, ns.metadata.labels);
    }
    f.policies = m.policies.into_iter().collect();
    f.pods = m.pods.iter().map(endpoint_spec).collect();
    f.index = f
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.key(), i))
        .collect();
    Ok(f)
}

impl PolicyAgent {
    pub fn open(
        pin_dir: &Path,
        flags: &PolicyFlags,
        manifests: Option<PathBuf>,
        node: Option<String>,
    ) -> Result<PolicyAgent> {
        let maps = PolicyMaps::open(pin_dir).context("opening the policy maps")?;
        let mut engine = Engine::new(flags.config());
        let kv = match (&flags.kvstore, &flags.kvstore_endpoint) {
            (Some(_), Some(endpoint)) => {
                let name = node
                    .clone()
                    .context("--kvstore: the node needs a name (--node)")?;
                let grace = Duration::from_millis(flags.identity_gc_grace_ms);
                let kv = kvstore::KvStore::open(endpoint, &name, grace)?;
                engine.set_identity_resolver(kv.resolver());
                Some(kv)
            }
            _ => None,
        };
        let mut a = PolicyAgent {
            flags: flags.clone(),
            kv,
            engine,
            manifests,
            node,
            folder: Folder::default(),
            local: BTreeMap::new(),
            local_keys: std::collections::HashMap::new(),
            maps,
            kernel: reconcile::Held::default(),
            regenerations: Vec::new(),
            last_error: None,
            parse_cache: ParseCache::new(),
            l7: Default::default(),
        };
        if let Err(e) = a.reload() {
            warn!("policy: {e:#}");
            a.last_error = Some(format!("{e:#}"));
        }
        Ok(a)
    }

    /// The spec the engine gets for a pod key: the folder's, with a local endpoint's addresses.
    fn spec_of(&self, key: &str) -> Option<EndpointSpec> {
        let mut spec = self
            .folder
            .index
            .get(key)
            .map(|i| self.folder.pods[*i].clone());
        if let Some(l) = self.local_keys.get(key).and_then(|id| self.local.get(id)) {
            let s = spec.get_or_insert_with(|| {
                let (ns, name) = key.split_once('/').unwrap_or(("default", key));
                EndpointSpec {
                    namespace: ns.into(),
                    name: name.into(),
                    ..Default::default()
                }
            });
            s.ips = l.addrs.clone();
        }
        spec
    }

    /// Re-reads the folder and applies what changed; a folder that does not load changes nothing.
    pub fn reload(&mut self) -> Result<()> {
        let Some(dir) = self.manifests.clone() else {
            return self.sync(None);
        };
        let new = read_objects(&dir, &mut self.parse_cache)
            .and_then(|o| folder_of(o, &self.engine.cfg.cluster))
            .with_context(|| format!("--manifests {}", dir.display()))?;
        self.apply(new)
    }

    /// Applies the API server's policy objects (k8s::api_source::policy_objects); a set that does
    /// not load changes nothing.
    pub fn apply_objects(&mut self, objects: Vec<k8s::manifests::Object>) -> Result<()> {
        let new = folder_of(objects, &self.engine.cfg.cluster)
            .context("the API server's policy objects")?;
        self.apply(new)
    }

    /// Makes `new` the policy objects in force: what changed goes to the engine and the kernel.
    fn apply(&mut self, new: Folder) -> Result<()> {
        let t = Instant::now();
        let old = std::mem::replace(&mut self.folder, new);
        self.l7.set_cluster(
            self.folder
                .pods
                .iter()
                .flat_map(|p| {
                    let key: std::sync::Arc<str> = p.key().into();
                    p.ips.iter().map(move |ip| (*ip, key.clone()))
                })
                .collect(),
        );
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut note = |d: Vec<policy::engine::EndpointDelta>| {
            touched.extend(d.into_iter().map(|d| d.endpoint));
        };
        for (name, labels) in &self.folder.namespaces {
            note(self.engine.upsert_namespace(name, labels.clone()));
        }
        for (origin, rules) in &self.folder.policies {
            if old.policies.get(origin) != Some(rules) {
                note(self.engine.upsert_policy(origin.clone(), rules.clone()));
            }
        }
        for origin in old.policies.keys() {
            if !self.folder.policies.contains_key(origin) {
                note(self.engine.remove_policy(origin));
            }
        }
        let keys: Vec<String> = self.folder.pods.iter().map(|p| p.key()).collect();
        for k in &keys {
            let spec = self.spec_of(k).expect("in the folder");
            if self.engine.endpoint(k).map(|e| &e.spec) != Some(&spec) {
                note(self.engine.upsert_endpoint(spec));
            }
        }
        for p in &old.pods {
            let k = p.key();
            if !self.folder.index.contains_key(&k) && !self.local_keys.contains_key(&k) {
                note(self.engine.remove_endpoint(&k));
            }
        }
        let r = self.sync(Some(&touched));
        info!(changed = touched.len(), elapsed = ?t.elapsed(), "policy applied");
        r
    }

    /// A local endpoint appeared (or changed): `pod` is `namespace/name` when the runtime said.
    pub fn endpoint_up(
        &mut self,
        id: u32,
        pod: Option<&str>,
        container: &str,
        labels: &BTreeMap<String, String>,
        addrs: &[IpAddr],
    ) -> Result<()> {
        let key = pod
            .map(str::to_string)
            .unwrap_or_else(|| format!("default/{container}"));
        if let Some(old) = self.local.insert(
            id,
            Local {
                key: key.clone(),
                addrs: addrs.to_vec(),
            },
        ) {
            self.local_keys.remove(&old.key);
        }
        self.local_keys.insert(key.clone(), id);
        let mut spec = self.spec_of(&key).expect("local");
        if !self.folder.index.contains_key(&key) {
            spec.labels = labels.clone();
        }
        let mut touched: BTreeSet<String> = self
            .engine
            .upsert_endpoint(spec)
            .into_iter()
            .map(|d| d.endpoint)
            .collect();
        touched.insert(key);
        self.sync_endpoints(Some(&touched))?;
        let addrs: Vec<IpAddr> = addrs.to_vec();
        self.write_ipcache_of(&addrs)
    }

    /// A local endpoint is gone.
    pub fn endpoint_down(&mut self, id: u32) -> Result<()> {
        let Some(l) = self.local.remove(&id) else {
            return Ok(());
        };
        self.local_keys.remove(&l.key);
        self.l7.remove(&l.addrs);
        self.kernel.forget(&mut self.maps, id);
        let mut touched = BTreeSet::new();
        match self.spec_of(&l.key) {
            Some(spec) => touched.extend(
                self.engine
                    .upsert_endpoint(spec)
                    .into_iter()
                    .map(|d| d.endpoint),
            ),
            None => touched.extend(
                self.engine
                    .remove_endpoint(&l.key)
                    .into_iter()
                    .map(|d| d.endpoint),
            ),
        }
        self.sync(Some(&touched))
    }

    /// Writes what the engine computed: the maps of the local endpoints among `touched` (all of
    /// them when None), their flags, and the ipcache.
    fn sync(&mut self, touched: Option<&BTreeSet<String>>) -> Result<()> {
        self.sync_endpoints(touched)?;
        if let Some(kv) = &self.kv {
            // This node's entries in the kvstore follow (kv_task).
            kv.kicker().notify_one();
        }
        self.write_ipcache()
    }

    /// The maps and flags of the local endpoints among `touched` (all when None).
    fn sync_endpoints(&mut self, touched: Option<&BTreeSet<String>>) -> Result<()> {
        for w in self.engine.take_warnings() {
            warn!("{w}");
        }
        let ids: Vec<u32> = self
            .local
            .iter()
            .filter(|(_, l)| touched.is_none_or(|t| t.contains(&l.key)))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let t = Instant::now();
            self.regenerate(id)?;
            if self.regenerations.len() >= 4096 {
                self.regenerations.remove(0);
            }
            self.regenerations.push(t.elapsed());
        }
        Ok(())
    }
}

/// Every address of the calling thread's network namespace (the node's): the `host` identity.
pub fn own_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifa: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut ifa) != 0 {
            return out;
        }
        let mut p = ifa;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let s = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(s.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let s = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(s.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(ifa);
    }
    out
}

impl PolicyAgent {
    /// This node's references (the identities of the pods it knows) and ipcache entries (its
    /// endpoints), as the kvstore should hold them.
    fn kv_local(&self) -> (BTreeSet<u32>, BTreeMap<IpAddr, u32>) {
        let refs: BTreeSet<u32> = self
            .engine
            .endpoints()
            .map(|e| e.identity)
            .filter(|id| {
                (policy::identity::MIN_ALLOCATED..policy::identity::LOCAL_SCOPE).contains(id)
            })
            .collect();
        let mut ipcache = BTreeMap::new();
        for l in self.local.values() {
            if let Some(ep) = self.engine.endpoint(&l.key) {
                for ip in &l.addrs {
                    ipcache.insert(*ip, ep.identity);
                }
            }
        }
        (refs, ipcache)
    }

    /// With a kvstore, the full sync: this node's entries written, the other nodes' entries
    /// read into the ipcache, garbage collected.
    pub fn kv_sync(&mut self) -> Result<()> {
        let (refs, ipcache) = self.kv_local();
        let Some(kv) = self.kv.as_mut() else {
            return Ok(());
        };
        if kv.sync(&refs, &ipcache)? {
            self.write_ipcache()?;
        }
        Ok(())
    }

    /// With a kvstore: this node's entries written (after its endpoints changed).
    fn kv_publish(&mut self) -> Result<()> {
        let (refs, ipcache) = self.kv_local();
        match self.kv.as_mut() {
            Some(kv) => kv.publish(&refs, &ipcache),
            None => Ok(()),
        }
    }

    /// With a kvstore: the watch's events applied to the ipcache.
    fn kv_apply(&mut self, events: Vec<etcd::WatchEvent>) -> Result<()> {
        let Some(kv) = self.kv.as_mut() else {
            return Ok(());
        };
        let mut changed = false;
        for ev in events {
            changed |= kv.apply(ev)?;
        }
        if changed {
            self.write_ipcache()?;
        }
        Ok(())
    }

    /// The proxy ports of HTTP rules (ingress, egress), as the maps carry them; None when the
    /// proxies are off (`--l7-proxy false`).
    pub fn http_proxy_ports(&self) -> Option<(u16, u16)> {
        let p = &self.engine.cfg.proxy;
        self.flags
            .l7_proxy
            .then_some((p.http_ingress, p.http_egress))
    }

    /// The proxy port of DNS rules (egress) and the DNS flags, for the DNS proxy's redirect
    /// listeners; None when the proxies are off (`--l7-proxy false`).
    pub fn dns_redirect(&self) -> Option<(u16, dns::DnsFlags)> {
        self.flags
            .l7_proxy
            .then(|| (self.engine.cfg.proxy.dns_egress, self.flags.dns.clone()))
    }

    /// [`PolicyAgent::reload`], the error kept for `status` and `policy get`.
    pub fn reload_reporting(&mut self) -> Result<()> {
        let r = self.reload();
        match &r {
            Ok(()) => self.last_error = None,
            Err(e) => {
                warn!("policy not applied: {e:#}");
                self.last_error = Some(format!("{e:#}"));
            }
        }
        r
    }
}

/// GET /policy/ENDPOINT (`oxilium policy get ENDPOINT`).
pub async fn serve_get(
    state: &crate::agent::Shared,
    name: &str,
) -> (hyper::StatusCode, serde_json::Value) {
    use hyper::StatusCode;
    let cni = state.lock().unwrap().cni.clone();
    let Some(cni) = cni else {
        return (
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "the agent does not run the cluster network (--cni)"}),
        );
    };
    let a = cni.lock().await;
    if name.is_empty() {
        return (StatusCode::OK, a.policy.regeneration_stats());
    }
    match a.policy.get(name) {
        Some(v) => (StatusCode::OK, v),
        None => (
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": format!("no endpoint {name} (an id, NAMESPACE/POD or address)")}),
        ),
    }
}
