//! The API source's cluster store, followed per change. The initial sync compiles everything
//! (`k8s::NodeIndex::build`, the model through `Reconciler::apply`); after it, a change that names
//! Services (a Service, or the Service of an EndpointSlice) recompiles only those, and the
//! addresses whose frontend changed go to the datapath as a [`ModelDelta`]: those services are
//! compiled and written with `Reconciler::apply_services`, and the agent's model is patched in
//! place. A change of a Node (this node's addresses or zone decide every NodePort frontend and the
//! topology choice) or of a HostPort pod is applied whole, as is the first change after an apply
//! failed.
use super::{ModelUpdate, NodeView, local_of, services_of};
use anyhow::{Context, Result, bail};
use k8s::{NodeIndex, Note, api_source::SourceEvent, cluster::Cluster};
use lb::{
    compile::{self, CompiledService},
    model::{Model, ModelDelta, Scope, Service},
    reconcile::{Changes, Datapath, Reconciler},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};
use tracing::{info, warn};

/// This node's frontends as last applied, and its local endpoints (with how many frontends use
/// each), so that a change costs what it touches.
pub struct ClusterTracker {
    node: String,
    opts: k8s::Options,
    table_size: u32,
    /// None until the first whole view, and after [`invalidate`](Self::invalidate).
    index: Option<NodeIndex>,
    local: BTreeMap<IpAddr, usize>,
}

impl ClusterTracker {
    pub fn new(node: String, opts: k8s::Options, table_size: u32) -> Self {
        ClusterTracker {
            node,
            opts,
            table_size,
            index: None,
            local: BTreeMap::new(),
        }
    }

    /// The whole view of the store.
    pub fn full(&mut self, cluster: &Cluster) -> Result<NodeView> {
        self.index = None;
        let (index, nf) = NodeIndex::build(cluster, &self.node, &self.opts)?;
        log_errors(&nf.notes);
        self.local.clear();
        for f in &nf.frontends {
            self.count_local(f, true);
        }
        let view = NodeView {
            model: ModelUpdate::Whole(super::model_of(&nf.frontends, self.table_size)),
            local: self.local.keys().copied().collect(),
            internal_addresses: nf.node.internal_addresses.clone(),
            health_checks: nf.health_checks,
            pod_cidrs: Some(nf.node.pod_cidrs.clone()),
            nodes: Some(cluster.nodes()),
        };
        self.index = Some(index);
        Ok(view)
    }

    /// The view of what `changes` changed: a delta, or the whole view (see the module's doc).
    pub fn changed(
        &mut self,
        cluster: &Cluster,
        changes: &k8s::api_source::Changes,
    ) -> Result<NodeView> {
        let whole = !changes.nodes.is_empty() || !changes.host_ports.is_empty();
        let index = match self.index.as_mut() {
            Some(index) if !whole => index,
            _ => return self.full(cluster),
        };
        let up = index.update(cluster, &changes.services);
        log_errors(&up.notes);
        let mut delta = ModelDelta::default();
        for sc in &up.slots {
            delta.frontends.insert(super::frontend_of(sc.slot));
            if let Some(f) = &sc.after {
                delta.services.extend(services_of(f, self.table_size));
            }
        }
        let internal_addresses = index.node().internal_addresses.clone();
        let health_checks = index.health_checks();
        for sc in up.slots {
            if let Some(f) = &sc.before {
                self.count_local(f, false);
            }
            if let Some(f) = &sc.after {
                self.count_local(f, true);
            }
        }
        Ok(NodeView {
            model: ModelUpdate::Delta(delta),
            local: self.local.keys().copied().collect(),
            internal_addresses,
            health_checks,
            pod_cidrs: None,
            nodes: None,
        })
    }

    /// Forgets what was applied: the next change is applied whole.
    pub fn invalidate(&mut self) {
        self.index = None;
    }

    fn count_local(&mut self, f: &k8s::Frontend, add: bool) {
        for a in local_of(f, &self.node) {
            let n = self.local.entry(a).or_default();
            if add {
                *n += 1;
            } else {
                *n -= 1;
                if *n == 0 {
                    self.local.remove(&a);
                }
            }
        }
    }
}

fn log_errors(notes: &[Note]) {
    for n in notes.iter().filter(|n| n.error) {
        warn!("{n}");
    }
}

/// The source's events since the last view: whether a whole view is due, and the changes.
#[derive(Default)]
pub struct Pending {
    synced: bool,
    whole: bool,
    changes: k8s::api_source::Changes,
}

impl Pending {
    /// Takes one event in; false when it asks for nothing to be applied.
    pub fn take(&mut self, ev: SourceEvent) -> bool {
        match ev {
            SourceEvent::Synced => {
                self.synced = true;
                self.whole = true;
                true
            }
            SourceEvent::Changed(ch) if self.synced => {
                self.changes.merge(ch);
                true
            }
            SourceEvent::Changed(_) => false,
            SourceEvent::Error { resource, message } => {
                warn!(resource, "API source: {message}");
                false
            }
        }
    }

    /// The view of everything taken in so far (which is then forgotten).
    pub fn view(&mut self, tracker: &mut ClusterTracker, cluster: &Cluster) -> Result<NodeView> {
        let changes = std::mem::take(&mut self.changes);
        if std::mem::take(&mut self.whole) {
            tracker.full(cluster)
        } else {
            tracker.changed(cluster, &changes)
        }
    }
}

/// Applies a delta to the agent's datapath and model; returns whether a service with source
/// ranges was among those changed (their kernel entries then need a sync).
pub(super) fn apply_delta(st: &mut crate::agent::State, delta: &ModelDelta) -> Result<bool> {
    let rec = st.reconciler.as_mut().context("datapath not loaded")?;
    let started = std::time::Instant::now();
    let r = apply_to(rec, &mut st.model, delta);
    crate::metrics::reconciled("delta", started.elapsed(), r.is_ok());
    let (ch, ranges) = r?;
    if !ch.is_empty() {
        info!(?ch, "datapath updated");
    }
    st.warmer.warm(
        delta
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.addr.ip())),
    );
    Ok(ranges)
}

/// Compiles the services of `delta`, writes them (and removes those they replace) through
/// `rec`, then patches `model`; nothing is written when a service does not compile.
pub fn apply_to<D: Datapath>(
    rec: &mut Reconciler<D>,
    model: &mut Model,
    delta: &ModelDelta,
) -> Result<(Changes, bool)> {
    let mut updated: BTreeMap<_, CompiledService> = BTreeMap::new();
    for s in &delta.services {
        let c = compile::compile_service(s, model.maglev_seed)
            .with_context(|| format!("service {}", s.name))?;
        if updated.insert(c.key, c).is_some() {
            bail!(
                "service {}: frontend {:?} is defined twice",
                s.name,
                s.frontend
            );
        }
    }
    let old: Vec<&Service> = delta
        .frontends
        .iter()
        .flat_map(|f| &model.services[model.range_of(f)])
        .collect();
    let removed: BTreeSet<_> = old.iter().map(|s| compile::service_key(s)).collect();
    let has_ranges = |s: &&Service| s.scope == Scope::External && !s.source_ranges.is_empty();
    let ranges = old.iter().any(has_ranges) || delta.services.iter().any(|s| has_ranges(&s));
    let ch = rec.apply_services(&updated, &removed)?;
    model.patch(delta);
    Ok((ch, ranges))
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
