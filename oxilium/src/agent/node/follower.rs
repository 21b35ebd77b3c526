//! Applying a node's views: the model under the state's lock, the local endpoints (netlink)
//! without it, and what runs on every tick (draining backends, pod programs, endpoint rechecks).
use super::{
    ModelUpdate, NodeView, apply_view, endpoints, health_node_ports, nodeport,
    nodeport_endpoints::LocalEndpoints, pod_devices, record,
};
use crate::agent::Shared;
use anyhow::{Context, Result};
use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};
use tracing::{info, warn};

/// How often the local endpoints are looked up again even without a change (a pod's veth
/// recreated with the same address).
const ENDPOINT_RECHECK: Duration = Duration::from_secs(10);

/// The asynchronous half of applying a view: the local endpoints, looked up with netlink
/// without holding the state's lock, retried while some pod's neighbour is unresolved and
/// re-checked every [`ENDPOINT_RECHECK`].
pub(super) struct Follower {
    endpoints: Option<LocalEndpoints>,
    health: health_node_ports::HealthServers,
    /// The local endpoints of the last view applied; None until one was (the endpoints an
    /// earlier run left are kept until then).
    want: Option<BTreeSet<IpAddr>>,
    checked: Instant,
    /// When draining backends were last checked.
    reaped: Instant,
    /// The task that checks them.
    reaper: crate::agent::Reaper,
    /// `--socket-lb-host-netns-only`: the pods' veths carrying the pod programs.
    pods: Option<pod_devices::PodDevices>,
    /// `--device`: their addresses are looked up for every whole view.
    devices: Vec<String>,
}

impl Follower {
    pub(super) fn new(state: &Shared) -> Follower {
        let mut st = state.lock().unwrap();
        Follower {
            endpoints: st
                .nodeport
                .as_ref()
                .map(|e| LocalEndpoints::adopt(e.endpoints())),
            want: None,
            checked: Instant::now(),
            reaped: Instant::now(),
            reaper: Default::default(),
            health: Default::default(),
            pods: st.pod_devices.take(),
            devices: st
                .nodeport
                .as_ref()
                .map(|e| e.devices.clone())
                .unwrap_or_default(),
        }
    }

    /// Applies a view: the local endpoints of new pods first (so that a new local backend is
    /// delivered directly from its first flow, when its neighbour is known), then the model
    /// (under the state's lock), then the removal of the endpoints no longer wanted.
    pub(super) async fn apply(&mut self, state: &Shared, view: Result<NodeView>, what: &str) {
        let view = match view {
            Ok(v) => v,
            Err(e) => return record(state, Err(e), what),
        };
        if let Some(eps) = &self.endpoints {
            let grow = eps.with_held(&view.local);
            self.sync_endpoints(state, &grow, false).await;
        }
        let checks = view.health_checks.clone();
        endpoints::node_view(state, &view.pod_cidrs, &view.nodes).await;
        let devices = match view.model {
            ModelUpdate::Whole(_) => nodeport::device_addresses(&self.devices).await,
            ModelUpdate::Delta(_) => Ok(Default::default()),
        };
        let applied = devices.and_then(|d| apply_view(&mut state.lock().unwrap(), view, d));
        if applied.is_ok() {
            self.health.update(&checks);
        }
        match applied {
            Ok(local) => {
                record(state, Ok(()), what);
                self.sync_endpoints(state, &local, false).await;
                self.want = Some(local);
            }
            Err(e) => record(state, Err(e), what),
        }
    }

    /// Called on every tick: retries waiting pods, re-checks all now and then.
    pub(super) async fn tick(&mut self, state: &Shared) {
        crate::metrics::health().tick();
        if self.reaped.elapsed() >= crate::agent::REAP_EVERY {
            self.reaped = Instant::now();
            self.reaper.start(state);
        }
        if let Some(pods) = self.pods.as_mut()
            && let Some(e) = pod_devices::report(pods.tick().await)
        {
            state.lock().unwrap().last_error = Some(e);
        }
        let Some(eps) = &self.endpoints else { return };
        let recheck = self.checked.elapsed() >= ENDPOINT_RECHECK;
        let Some(want) = self.want.clone() else {
            return;
        };
        if recheck || eps.is_waiting() {
            self.sync_endpoints(state, &want, recheck).await;
        }
    }

    async fn sync_endpoints(&mut self, state: &Shared, want: &BTreeSet<IpAddr>, recheck: bool) {
        let Some(eps) = self.endpoints.as_mut() else {
            return;
        };
        if recheck {
            self.checked = Instant::now();
        }
        let result = eps
            .sync(want, recheck, |plan| {
                let mut st = state.lock().unwrap();
                let ext = st.nodeport.as_mut().context("NodePort not loaded")?;
                for (a, ep) in &plan.set {
                    ext.set_endpoint(*a, ep)?;
                }
                for a in &plan.remove {
                    ext.remove_endpoint(*a)?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(plan) if !plan.is_empty() => {
                info!(
                    set = plan.set.len(),
                    removed = plan.remove.len(),
                    "local endpoints updated"
                )
            }
            Ok(_) => {}
            Err(e) => {
                warn!("local endpoints: {e:#}");
                state.lock().unwrap().last_error = Some(format!("local endpoints: {e:#}"));
            }
        }
    }
}
