//! The store: Services, EndpointSlices (indexed by their Service), Nodes and the Pods with host
//! ports (indexed by node). Every apply/delete costs work proportional to the object changed; the
//! compile of one Service reads only that Service and its own slices.
use crate::convert::{self, NodeInfo, PodInfo, Slice, Svc};
use crate::frontend::{Note, ObjectKey};
use crate::manifests::{Manifests, Origin};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb::vec_map::VecSet;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
pub struct Cluster {
    /// Boxed: the maps' spare slots then cost a pointer, not a whole object.
    pub(crate) services: BTreeMap<ObjectKey, Box<Svc>>,
    pub(crate) slices: HashMap<ObjectKey, Box<Slice>>,
    /// Service → its slices (label kubernetes.io/service-name), sorted for determinism.
    pub(crate) slices_by_service: HashMap<ObjectKey, VecSet<ObjectKey>>,
    pub(crate) nodes: HashMap<String, (NodeInfo, Vec<String>)>,
    pub(crate) pods: HashMap<ObjectKey, PodInfo>,
    pub(crate) pods_by_node: HashMap<String, VecSet<ObjectKey>>,
    /// Remarks about the input as a whole (duplicates in a manifests folder).
    pub(crate) notes: Vec<Note>,
}

impl Cluster {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding everything in a manifests folder. A later duplicate replaces an earlier one
    /// (with a note), as a later apply would.
    pub fn from_manifests(m: &Manifests) -> Self {
        let mut c = Cluster::new();
        let mut seen: HashMap<(&'static str, ObjectKey), &Origin> = HashMap::new();
        for r in &m.rejected {
            c.notes.push(Note {
                object: format!("{} {}", r.kind, r.name),
                origin: Some(r.origin.to_string()),
                message: r.to_string(),
                error: true,
            });
        }
        for (o, s) in &m.services {
            c.note_duplicate(&mut seen, "Service", convert::key_of(&s.metadata), o);
            c.apply_service(s, Some(o));
        }
        for (o, s) in &m.endpoint_slices {
            c.note_duplicate(&mut seen, "EndpointSlice", convert::key_of(&s.metadata), o);
            c.apply_endpoint_slice(s, Some(o));
        }
        for (o, n) in &m.nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            c.note_duplicate(&mut seen, "Node", ObjectKey::new("", name), o);
            c.apply_node(n);
        }
        for (o, p) in &m.pods {
            c.note_duplicate(&mut seen, "Pod", convert::key_of(&p.metadata), o);
            c.apply_pod(p, Some(o));
        }
        c
    }

    fn note_duplicate<'a>(
        &mut self,
        seen: &mut HashMap<(&'static str, ObjectKey), &'a Origin>,
        kind: &'static str,
        key: ObjectKey,
        origin: &'a Origin,
    ) {
        if let Some(prev) = seen.insert((kind, key.clone()), origin) {
            self.notes.push(Note {
                object: format!("{kind} {key}"),
                origin: Some(origin.to_string()),
                message: format!("defined again (first in {prev}); the later one is used"),
                error: false,
            });
        }
    }

    pub fn apply_service(&mut self, s: &Service, origin: Option<&Origin>) -> ObjectKey {
        let svc = convert::service(s, origin.map(origin_text));
        let key = svc.key.clone();
        self.services.insert(key.clone(), Box::new(svc));
        key
    }

    pub fn delete_service(&mut self, key: &ObjectKey) {
        self.services.remove(key);
    }

    /// Returns the Services whose frontends this change may affect (the old and the new owner).
    pub fn apply_endpoint_slice(
        &mut self,
        s: &EndpointSlice,
        origin: Option<&Origin>,
    ) -> Vec<ObjectKey> {
        let slice = convert::endpoint_slice(s, origin.map(origin_text));
        let key = slice.key.clone();
        let mut affected = self.delete_endpoint_slice(&key);
        if let Some(svc) = &slice.service {
            self.slices_by_service
                .entry(svc.clone())
                .or_default()
                .insert(key.clone());
            if !affected.contains(svc) {
                affected.push(svc.clone());
            }
        }
        self.slices.insert(key, Box::new(slice));
        affected
    }

    /// Returns the Service the slice belonged to, if any.
    pub fn delete_endpoint_slice(&mut self, key: &ObjectKey) -> Vec<ObjectKey> {
        let Some(old) = self.slices.remove(key) else {
            return Vec::new();
        };
        let Some(svc) = old.service else {
            return Vec::new();
        };
        if let Some(set) = self.slices_by_service.get_mut(&svc) {
            set.remove(key);
            if set.is_empty() {
                self.slices_by_service.remove(&svc);
            }
        }
        vec![svc]
    }

    pub fn apply_node(&mut self, n: &Node) {
        let (info, notes) = convert::node(n);
        self.nodes.insert(info.name.clone(), (info, notes));
    }

    pub fn delete_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name).map(|(n, _)| n)
    }

    /// Every Node, sorted by name.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut v: Vec<NodeInfo> = self.nodes.values().map(|(n, _)| n.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Keeps the pod only if it has host ports to program. Returns the node(s) affected.
    pub fn apply_pod(&mut self, p: &Pod, origin: Option<&Origin>) -> Vec<String> {
        let key = convert::key_of(&p.metadata);
        let mut affected = self.delete_pod(&key);
        if let Some(info) = convert::pod(p, origin.map(origin_text)) {
            self.pods_by_node
                .entry(info.node.clone())
                .or_default()
                .insert(key.clone());
            if !affected.contains(&info.node) {
                affected.push(info.node.clone());
            }
            self.pods.insert(key, info);
        }
        affected
    }

    pub fn delete_pod(&mut self, key: &ObjectKey) -> Vec<String> {
        let Some(old) = self.pods.remove(key) else {
            return Vec::new();
        };
        if let Some(set) = self.pods_by_node.get_mut(&old.node) {
            set.remove(key);
            if set.is_empty() {
                self.pods_by_node.remove(&old.node);
            }
        }
        vec![old.node]
    }

    /// Every Service key, sorted.
    pub fn service_keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.services.keys()
    }

    pub(crate) fn slices_of(&self, svc: &ObjectKey) -> impl Iterator<Item = &Slice> {
        self.slices_by_service
            .get(svc)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k).map(|s| &**s))
    }

    pub(crate) fn host_port_pods(&self, node: &str) -> impl Iterator<Item = &PodInfo> {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }
}

/// Where an object was read, as its notes name it (no spare room: the store keeps one per object).
fn origin_text(o: &Origin) -> String {
    let mut s = o.to_string();
    s.shrink_to_fit();
    s
}
