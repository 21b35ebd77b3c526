//! The Kubernetes API source: kube-rs watchers (with reflector stores) on Services, EndpointSlices
//! (discovery.k8s.io/v1), Nodes and Pods feed one [`Cluster`], and every change is reported as the
//! Services and nodes it affects, so that a consumer recompiles only those.
//!
//! Lifecycle, per resource: the watcher lists (`Init`, `InitApply`…, `InitDone`), then watches
//! from the list's resourceVersion (bookmarks keep that version fresh). When the watch is answered
//! with 410 Gone (the version was compacted away) the watcher lists again; the new list is applied
//! as a whole at `InitDone`, and objects that vanished meanwhile are deleted. Objects whose
//! resourceVersion did not change are not re-applied, so a relist reports only what really changed.
//!
//! Events, in order: nothing until all four initial lists are in the store, then [`SourceEvent::Synced`]
//! exactly once (compile everything now), then one [`SourceEvent::Changed`] per watch event or
//! relist that changed something. Watch errors (retried with kube's default backoff) are reported
//! as [`SourceEvent::Error`] and never stop the source.
mod flags;
pub mod policy_objects;

pub use flags::{FlagError, KubeFlags};

use crate::cluster::Cluster;
use crate::convert;
use crate::frontend::ObjectKey;
use crate::manifests::Origin;
use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::ops::ControlFlow;
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The store the source writes and consumers read (compile under the read lock; the source never
/// holds the lock across an await).
pub type SharedCluster = Arc<RwLock<Cluster>>;

/// What one watch event (or one relist) affected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Services whose frontends may differ: recompile each with [`compile_service`](crate::compile_service)
    /// (a deleted Service compiles to nothing).
    pub services: BTreeSet<ObjectKey>,
    /// Nodes added, deleted, or whose addresses or zone changed. On the agent's own node this
    /// changes every NodePort frontend and the topology choice: recompile everything.
    pub nodes: BTreeSet<String>,
    /// Nodes whose HostPort pods changed: recompile [`compile_host_ports`](crate::compile_host_ports).
    pub host_ports: BTreeSet<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.nodes.is_empty() && self.host_ports.is_empty()
    }

    /// Adds `other` into `self` (for a consumer that batches).
    pub fn merge(&mut self, other: Changes) {
        self.services.extend(other.services);
        self.nodes.extend(other.nodes);
        self.host_ports.extend(other.host_ports);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    /// Sent once, when the initial lists of all four resources are in the store.
    Synced,
    /// After [`Synced`](SourceEvent::Synced): what a watch event or a relist changed.
    Changed(Changes),
    /// A list or watch failed; the watcher retries (with backoff) by itself. A 410 Gone shows up
    /// here too, followed by a relist.
    Error {
        resource: &'static str,
        message: String,
    },
}

/// The Pods the source watches (this node's), as last seen.
pub type PodStore = Store<Pod>;

/// The labels of Pod `namespace/name` in `pods`; None when the store does not hold it (yet).
pub fn pod_labels(
    pods: &PodStore,
    namespace: &str,
    name: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let r = reflector::ObjectRef::<Pod>::new(name).within(namespace);
    pods.get(&r)
        .map(|p| p.metadata.labels.clone().unwrap_or_default())
}

/// The annotations of Pod `namespace/name` in `pods`; None when the store does not hold it (yet).
pub fn pod_annotations(
    pods: &PodStore,
    namespace: &str,
    name: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let r = reflector::ObjectRef::<Pod>::new(name).within(namespace);
    pods.get(&r)
        .map(|p| p.metadata.annotations.clone().unwrap_or_default())
}

/// Read handles on the reflector stores (the objects as last seen, managedFields stripped): the
/// Pods only (their labels and annotations go with the CNI's endpoints). Services,
/// EndpointSlices and Nodes are kept only as the [`Cluster`] holds them (what the compile reads),
/// not whole a second time.
#[derive(Clone)]
pub struct Stores {
    pub pods: Store<Pod>,
}

/// The four watchers, not yet running; [`run`](KubeSource::run) or [`spawn`](KubeSource::spawn) them.
pub struct KubeSource {
    cluster: SharedCluster,
    streams: SelectAll<BoxStream<'static, Update>>,
    stores: Stores,
}

/// One watcher item of any of the four streams (boxed: a Pod is large).
enum Update {
    Service(Box<watcher::Result<Event<Service>>>),
    Slice(Box<watcher::Result<Event<EndpointSlice>>>),
    Node(Box<watcher::Result<Event<Node>>>),
    Pod(Box<watcher::Result<Event<Pod>>>),
}

impl KubeSource {
    /// Watches every Service, EndpointSlice and Node, and the Pods of `pod_node` only (field
    /// selector `spec.nodeName`: HostPort is programmed on the pod's own node), or every Pod when
    /// `pod_node` is `None`. Needs a Tokio runtime when run.
    pub fn new(client: Client, cluster: SharedCluster, pod_node: Option<&str>) -> Self {
        let config = watcher::Config::default();
        let pod_config = match pod_node {
            Some(node) => config.clone().fields(&format!("spec.nodeName={node}")),
            None => config.clone(),
        };
        let (pods, w_pods) = reflector::store();
        let streams = futures::stream::select_all([
            follow(Api::all(client.clone()), config.clone())
                .map(|e| Update::Service(Box::new(e)))
                .boxed(),
            follow(Api::all(client.clone()), config.clone())
                .map(|e| Update::Slice(Box::new(e)))
                .boxed(),
            follow(Api::all(client.clone()), config)
                .map(|e| Update::Node(Box::new(e)))
                .boxed(),
            follow(Api::all(client), pod_config)
                .reflect(w_pods)
                .map(|e| Update::Pod(Box::new(e)))
                .boxed(),
        ]);
        KubeSource {
            cluster,
            streams,
            stores: Stores { pods },
        }
    }

    pub fn cluster(&self) -> SharedCluster {
        self.cluster.clone()
    }

    pub fn stores(&self) -> Stores {
        self.stores.clone()
    }

    /// Runs the watchers, calling `on_event` outside the store lock, until it returns `Break`.
    /// The watchers never end by themselves.
    pub async fn run(mut self, mut on_event: impl FnMut(SourceEvent) -> ControlFlow<()>) {
        let mut state = State::default();
        while let Some(update) = self.streams.next().await {
            let cluster = &self.cluster;
            let events = match update {
                Update::Service(r) => state.step(cluster, |s| &mut s.services, *r),
                Update::Slice(r) => state.step(cluster, |s| &mut s.slices, *r),
                Update::Node(r) => state.step(cluster, |s| &mut s.nodes, *r),
                Update::Pod(r) => state.step(cluster, |s| &mut s.pods, *r),
            };
            for e in events {
                if on_event(e).is_break() {
                    return;
                }
            }
        }
    }

    /// Runs the source on a task, sending its events on the returned channel; the task ends when
    /// the receiver is dropped (at its next event) or when the handle is aborted.
    pub fn spawn(self) -> (JoinHandle<()>, mpsc::UnboundedReceiver<SourceEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(self.run(move |e| match tx.send(e) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }));
        (task, rx)
    }
}

/// The watcher of one resource, managedFields stripped (each object is dropped once the store
/// took what it needs, see [`Kind::apply`]).
fn follow<K: Kind>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static {
    watch_stream(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear())
}

/// How each resource feeds the store (also the manifests folder's, see [`crate::folder_source`]).
pub(crate) trait Kind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const NAME: &'static str;
    fn key(&self) -> ObjectKey {
        convert::key_of(self.meta())
    }
    fn apply(&self, c: &mut Cluster, ch: &mut Changes, origin: Option<&Origin>);
    fn delete(key: &ObjectKey, c: &mut Cluster, ch: &mut Changes);
}

impl Kind for Service {
    const NAME: &'static str = "Service";
    fn apply(&self, c: &mut Cluster, ch: &mut Changes, origin: Option<&Origin>) {
        ch.services.insert(c.apply_service(self, origin));
    }
    fn delete(key: &ObjectKey, c: &mut Cluster, ch: &mut Changes) {
        c.delete_service(key);
        ch.services.insert(key.clone());
    }
}

impl Kind for EndpointSlice {
    const NAME: &'static str = "EndpointSlice";
    fn apply(&self, c: &mut Cluster, ch: &mut Changes, origin: Option<&Origin>) {
        ch.services.extend(c.apply_endpoint_slice(self, origin));
    }
    fn delete(key: &ObjectKey, c: &mut Cluster, ch: &mut Changes) {
        ch.services.extend(c.delete_endpoint_slice(key));
    }
}

impl Kind for Node {
    const NAME: &'static str = "Node";
    /// Nodes are cluster-scoped: the key has an empty namespace and the node name.
    fn key(&self) -> ObjectKey {
        ObjectKey::new("", self.name_any())
    }
    /// Reported only when what the compile reads (addresses, zone) changed, not on every
    /// status heartbeat.
    fn apply(&self, c: &mut Cluster, ch: &mut Changes, _: Option<&Origin>) {
        let name = self.name_any();
        let before = c.node(&name).cloned();
        c.apply_node(self);
        if c.node(&name) != before.as_ref() {
            ch.nodes.insert(name);
        }
    }
    fn delete(key: &ObjectKey, c: &mut Cluster, ch: &mut Changes) {
        if c.node(&key.name).is_some() {
            c.delete_node(&key.name);
            ch.nodes.insert(key.name.to_string());
        }
    }
}

impl Kind for Pod {
    const NAME: &'static str = "Pod";
    fn apply(&self, c: &mut Cluster, ch: &mut Changes, origin: Option<&Origin>) {
        ch.host_ports.extend(c.apply_pod(self, origin));
    }
    fn delete(key: &ObjectKey, c: &mut Cluster, ch: &mut Changes) {
        ch.host_ports.extend(c.delete_pod(key));
    }
}

/// Per resource: the resourceVersion of every object in the store (to skip unchanged objects and
/// find the ones gone after a relist) and the relist being buffered.
struct Tracker<K> {
    versions: HashMap<ObjectKey, String>,
    relist: Option<Vec<K>>,
    listed: bool,
}

impl<K> Default for Tracker<K> {
    fn default() -> Self {
        Tracker {
            versions: HashMap::new(),
            relist: None,
            listed: false,
        }
    }
}

impl<K: Kind> Tracker<K> {
    fn apply(&mut self, obj: &K, c: &mut Cluster, ch: &mut Changes) {
        let key = obj.key();
        let rv = obj.resource_version().unwrap_or_default();
        if !rv.is_empty() && self.versions.get(&key) == Some(&rv) {
            return; // the same version again (a relist of an unchanged object)
        }
        self.versions.insert(key, rv);
        obj.apply(c, ch, None);
    }

    fn delete(&mut self, key: &ObjectKey, c: &mut Cluster, ch: &mut Changes) {
        self.versions.remove(key);
        K::delete(key, c, ch);
    }

    /// Applies a complete list: every listed object, then deletes those not in it.
    fn apply_list(&mut self, objs: Vec<K>, c: &mut Cluster, ch: &mut Changes) {
        let mut seen = HashSet::with_capacity(objs.len());
        for o in &objs {
            seen.insert(o.key());
            self.apply(o, c, ch);
        }
        let gone: Vec<ObjectKey> = self
            .versions
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.delete(&k, c, ch);
        }
    }
}

#[derive(Default)]
struct State {
    services: Tracker<Service>,
    slices: Tracker<EndpointSlice>,
    nodes: Tracker<Node>,
    pods: Tracker<Pod>,
    /// How many resources have finished their first list.
    listed: usize,
    synced: bool,
}

fn lock(c: &RwLock<Cluster>) -> RwLockWriteGuard<'_, Cluster> {
    c.write().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Applies one watcher item; returns the events to report.
    fn step<K: Kind>(
        &mut self,
        cluster: &RwLock<Cluster>,
        tracker: fn(&mut State) -> &mut Tracker<K>,
        item: watcher::Result<Event<K>>,
    ) -> Vec<SourceEvent> {
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(resource = K::NAME, "watch: {e}");
                return vec![SourceEvent::Error {
                    resource: K::NAME,
                    message: e.to_string(),
                }];
            }
        };
        let t = tracker(self);
        let mut ch = Changes::default();
        let mut first_list = false;
        match event {
            Event::Init => t.relist = Some(Vec::new()),
            Event::InitApply(o) => match &mut t.relist {
                Some(buf) => buf.push(o),
                None => t.apply(&o, &mut lock(cluster), &mut ch),
            },
            Event::InitDone => {
                let objs = t.relist.take().unwrap_or_default();
                tracing::debug!(resource = K::NAME, objects = objs.len(), "listed");
                t.apply_list(objs, &mut lock(cluster), &mut ch);
                first_list = !t.listed;
                t.listed = true;
            }
            Event::Apply(o) => t.apply(&o, &mut lock(cluster), &mut ch),
            Event::Delete(o) => t.delete(&o.key(), &mut lock(cluster), &mut ch),
        }
        let mut out = Vec::new();
        if first_list {
            self.listed += 1;
            if self.listed == 4 {
                self.synced = true;
                out.push(SourceEvent::Synced);
                return out; // the consumer compiles everything now
            }
        }
        if self.synced && !ch.is_empty() {
            out.push(SourceEvent::Changed(ch));
        }
        out
    }
}
