//! One node's frontends kept current one Service at a time. [`NodeIndex::build`] compiles every
//! Service (it is what [`compile_node`](super::compile_node) returns); [`NodeIndex::update`]
//! recompiles only the Services a change names and reports the addresses whose programmed
//! frontend changed, including the frontends of other Services that a clash let through or now
//! hides. Cost of an update: the Services named, their slices and the frontends at their addresses.
use super::{
    CompileError, NodeFrontends, Options, ServiceFrontends, clash_note, compile_host_ports,
    compile_service, first_per_address, node_info,
};
use crate::cluster::Cluster;
use crate::convert::NodeInfo;
use crate::frontend::{Frontend, FrontendType, HealthCheck, Note, ObjectKey, Protocol};
use lb::vec_map::VecSet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// Where a frontend is served; one frontend per slot is programmed.
pub type Slot = (IpAddr, u16, Protocol);

fn slot(f: &Frontend) -> Slot {
    (f.address, f.port, f.protocol)
}

/// A frontend competing for a slot, ordered as `compile_node` sorts them (the first is
/// programmed): type, owner and port name, then its place in its owner's list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    kind: FrontendType,
    owner: ObjectKey,
    port_name: Arc<str>,
    index: usize,
}

impl Candidate {
    fn of(f: &Frontend, index: usize) -> Self {
        Candidate {
            kind: f.kind,
            owner: f.owner.clone(),
            port_name: f.port_name.clone(),
            index,
        }
    }
}

/// An address whose programmed frontend changed (`None`: nothing is programmed there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotChange {
    pub slot: Slot,
    pub before: Option<Frontend>,
    pub after: Option<Frontend>,
}

/// What [`NodeIndex::update`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexUpdate {
    pub slots: Vec<SlotChange>,
    /// The notes of the Services recompiled and of the clashes at the addresses touched.
    pub notes: Vec<Note>,
    /// Whether a health-check node port or its local endpoint count changed.
    pub health_checks_changed: bool,
}

#[derive(Debug)]
pub struct NodeIndex {
    node: NodeInfo,
    opts: Options,
    /// Every Service with something to program, as compiled.
    services: HashMap<ObjectKey, ServiceFrontends>,
    /// The HostPort frontends (fixed: a HostPort change rebuilds the index).
    host_ports: Vec<Frontend>,
    /// The frontends competing for each address, in order (almost always one).
    slots: HashMap<Slot, VecSet<Candidate>>,
    health_checks: BTreeMap<ObjectKey, HealthCheck>,
}

impl NodeIndex {
    /// Compiles everything `node` programs, as [`compile_node`](super::compile_node) (which
    /// returns the second half), and indexes it.
    pub fn build(
        cluster: &Cluster,
        node: &str,
        opts: &Options,
    ) -> Result<(NodeIndex, NodeFrontends), CompileError> {
        let mut out = NodeFrontends {
            notes: cluster.notes.clone(),
            ..Default::default()
        };
        out.node = node_info(cluster, node, &mut out.notes)?;
        let mut idx = NodeIndex {
            node: out.node.clone(),
            opts: opts.clone(),
            services: HashMap::new(),
            host_ports: Vec::new(),
            slots: HashMap::new(),
            health_checks: BTreeMap::new(),
        };
        let mut frontends = Vec::new();
        for key in cluster.service_keys() {
            let s = compile_service(cluster, key, &out.node, opts);
            frontends.extend(s.frontends.iter().cloned());
            out.notes.extend(s.notes.iter().cloned());
            idx.insert(key, s);
        }
        let hp = compile_host_ports(cluster, &out.node, opts);
        for (i, f) in hp.frontends.iter().enumerate() {
            idx.slots
                .entry(slot(f))
                .or_default()
                .insert(Candidate::of(f, i));
        }
        frontends.extend(hp.frontends.iter().cloned());
        out.notes.extend(hp.notes);
        idx.host_ports = hp.frontends;
        out.frontends = first_per_address(frontends, &mut out.notes);
        out.health_checks = idx.health_checks();
        Ok((idx, out))
    }

    /// Recompiles the Services `changed` (a deleted one compiles to nothing) against the store.
    pub fn update(&mut self, cluster: &Cluster, changed: &BTreeSet<ObjectKey>) -> IndexUpdate {
        let fresh: Vec<(&ObjectKey, ServiceFrontends)> = changed
            .iter()
            .map(|k| (k, compile_service(cluster, k, &self.node, &self.opts)))
            .collect();
        let mut touched = BTreeSet::new();
        for (k, s) in &fresh {
            touched.extend(s.frontends.iter().map(slot));
            if let Some(old) = self.services.get(*k) {
                touched.extend(old.frontends.iter().map(slot));
            }
        }
        let before: Vec<(Slot, Option<Frontend>)> = touched
            .into_iter()
            .map(|s| (s, self.winner(&s).cloned()))
            .collect();
        let mut out = IndexUpdate::default();
        for (k, s) in fresh {
            out.notes.extend(s.notes.iter().cloned());
            let old = self.remove(k);
            out.health_checks_changed |= old.and_then(|o| o.health_check) != s.health_check;
            self.insert(k, s);
        }
        for (slot, before) in before {
            if let Some(cands) = self.slots.get(&slot) {
                out.notes
                    .extend(cands.iter().skip(1).map(|c| clash_note(self.frontend(c))));
            }
            let after = self.winner(&slot).cloned();
            if before != after {
                out.slots.push(SlotChange {
                    slot,
                    before,
                    after,
                });
            }
        }
        out
    }

    /// The frontends programmed, sorted (equal to `compile_node`'s after the same changes).
    pub fn frontends(&self) -> Vec<Frontend> {
        let mut slots: Vec<&Slot> = self.slots.keys().collect();
        slots.sort();
        slots
            .into_iter()
            .filter_map(|s| self.winner(s).cloned())
            .collect()
    }

    /// The health checks, sorted by Service.
    pub fn health_checks(&self) -> Vec<HealthCheck> {
        self.health_checks.values().cloned().collect()
    }

    /// This node as the index was built for.
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    fn insert(&mut self, key: &ObjectKey, s: ServiceFrontends) {
        if s.frontends.is_empty() && s.health_check.is_none() {
            return;
        }
        for (i, f) in s.frontends.iter().enumerate() {
            self.slots
                .entry(slot(f))
                .or_default()
                .insert(Candidate::of(f, i));
        }
        if let Some(hc) = &s.health_check {
            self.health_checks.insert(key.clone(), hc.clone());
        }
        self.services.insert(key.clone(), s);
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<ServiceFrontends> {
        let old = self.services.remove(key)?;
        for (i, f) in old.frontends.iter().enumerate() {
            let s = slot(f);
            if let Some(cands) = self.slots.get_mut(&s) {
                cands.remove(&Candidate::of(f, i));
                if cands.is_empty() {
                    self.slots.remove(&s);
                }
            }
        }
        self.health_checks.remove(key);
        Some(old)
    }

    fn winner(&self, s: &Slot) -> Option<&Frontend> {
        self.slots
            .get(s)
            .and_then(|c| c.first())
            .map(|c| self.frontend(c))
    }

    fn frontend(&self, c: &Candidate) -> &Frontend {
        if c.kind == FrontendType::HostPort {
            &self.host_ports[c.index]
        } else {
            &self.services[&c.owner].frontends[c.index]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(name: &str, ip: &str) -> k8s_openapi::api::core::v1::Service {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}}))
        .unwrap()
    }

    fn owners(fs: &[Frontend]) -> Vec<String> {
        fs.iter().map(|f| f.owner.to_string()).collect()
    }

    #[test]
    fn a_clash_hands_the_address_to_the_next_service_when_the_first_leaves() {
        let mut c = Cluster::new();
        c.apply_service(&service("a", "10.96.0.1"), None);
        let (mut idx, nf) = NodeIndex::build(&c, "n", &Options::default()).unwrap();
        assert_eq!(owners(&nf.frontends), ["default/a"]);
        // b takes the same address: a keeps it, b's frontend is noted and not reported.
        let b = c.apply_service(&service("b", "10.96.0.1"), None);
        let up = idx.update(&c, &BTreeSet::from([b]));
        assert!(up.slots.is_empty());
        assert!(
            up.notes
                .iter()
                .any(|n| n.error && n.object.contains("default/b"))
        );
        // a leaves: the address goes to b.
        let a = ObjectKey::new("default", "a");
        c.delete_service(&a);
        let up = idx.update(&c, &BTreeSet::from([a]));
        assert_eq!(up.slots.len(), 1);
        let sc = &up.slots[0];
        assert_eq!(sc.before.as_ref().unwrap().owner.to_string(), "default/a");
        assert_eq!(sc.after.as_ref().unwrap().owner.to_string(), "default/b");
        assert_eq!(
            idx.frontends(),
            crate::compile_node(&c, "n", &Options::default())
                .unwrap()
                .frontends
        );
    }
}
