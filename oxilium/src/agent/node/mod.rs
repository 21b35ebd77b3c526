//! `oxilium agent --role node`: the kube-proxy replacement on one node. The source is a folder of
//! Kubernetes manifests (read by `k8s::manifests`, watched with inotify through [`super::watch`]:
//! any change under it, subfolders included, is applied per changed file, debounced by
//! `--watch-ms`, see [`folder`]) or the API
//! server; the datapath is the socket LB on a cgroup v2 (the root cgroup unless `--cgroup` says
//! otherwise), which translates every frontend for traffic from inside the node and its pods. External frontends are also written (scope external); with `--device` the
//! NodePort tc programs serve them on those devices (see [`nodeport`]), with this node's
//! pods as local endpoints (see [`nodeport_endpoints`]) and the services' source ranges.
use super::{Shared, apply_model};
use crate::bpf::sizes;
use crate::bpf::socklb::{self, SockLb};
use anyhow::{Context, Result};
use aya::Ebpf;
use lb::{
    compile,
    model::{self, Model},
    reconcile::Reconciler,
};
use nodeport::NodePortDevices;
use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};
use tracing::{info, warn};

#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// --role node: read the cluster from a folder of Kubernetes manifests (Services,
    /// EndpointSlices, Nodes, Pods), watched, instead of the API server.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    #[command(flatten)]
    pub kube: k8s::api_source::KubeFlags,
    /// --role node: the cgroup v2 whose sockets are translated (default: the root cgroup).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// --role node: Maglev table size for services using Maglev.
    #[arg(long, default_value_t = lb::maglev::DEFAULT_SIZE)]
    pub maglev_table_size: u32,
    /// --role node: how many service entries the maps hold (each frontend address, port and
    /// protocol, once per scope: a ClusterIP port is one, a NodePort adds one per node address).
    #[arg(long, default_value_t = lb::config::limits::DEFAULT_MAX_SERVICES)]
    pub max_services: u32,
    /// --role node: how many backends the maps hold, over all service entries (an endpoint
    /// behind two frontends counts twice).
    #[arg(long, default_value_t = lb::config::limits::DEFAULT_MAX_BACKENDS)]
    pub max_backends: u32,
    /// --role node: how many local endpoints (pod addresses on this node) the maps hold.
    #[arg(long, default_value_t = sizes::DEFAULT_MAX_ENDPOINTS)]
    pub max_endpoints: u32,
    /// --role node: the node's external device(s) (repeat or comma-separate): NodePort,
    /// LoadBalancer and externalIPs are served to traffic arriving on them (tc programs).
    #[arg(long, value_delimiter = ',')]
    pub device: Vec<String>,
    /// --role node: also serve NodePort / LoadBalancer / externalIPs at XDP on the --device(s)
    /// (flows to backends on other nodes and their replies; the rest goes on to tc): native
    /// (driver) or generic (skb) XDP.
    #[arg(long, value_enum, default_value = "disabled", requires = "device")]
    pub nodeport_acceleration: Acceleration,
    /// --role node: the socket LB translates only the sockets of the agent's (the node's)
    /// network namespace; pods' traffic is translated per packet by tc programs on the host side
    /// of their veths instead (for sidecar meshes, which must see the service address).
    #[arg(long)]
    pub socket_lb_host_netns_only: bool,
    #[command(flatten)]
    pub conntrack: super::conntrack::CtFlags,
    #[command(flatten)]
    pub cni: endpoints::CniFlags,
    #[command(flatten)]
    pub policy: policy::PolicyFlags,
}

/// XDP acceleration of the NodePort path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Acceleration {
    Disabled,
    Native,
    Generic,
}

pub mod endpoints;
pub mod folder;
mod follower;
mod health_node_ports;
pub mod l7;
pub mod nodeport;
mod nodeport_endpoints;
pub(super) mod pod_devices;
pub mod policy;
mod services;
pub mod tracker;

use follower::Follower;
use services::{frontend_of, local_of, services_of};
pub use services::{local_endpoints, model_of};

/// What the agent programs on this node, from one compile of the cluster state (or of a change).
pub struct NodeView {
    pub model: ModelUpdate,
    /// Pod addresses of this node that back a frontend served from outside (local endpoints).
    pub local: BTreeSet<IpAddr>,
    /// This node's InternalIP addresses (the SNAT source towards other nodes).
    pub internal_addresses: Vec<IpAddr>,
    /// Health-check node ports (externalTrafficPolicy Local) and their local endpoint counts.
    pub health_checks: Vec<k8s::frontend::HealthCheck>,
    /// This node's spec.podCIDRs (the CNI address pools); None: unchanged (a delta).
    pub pod_cidrs: Option<Vec<String>>,
    /// Every Node (the routes to the other nodes' pods); None: unchanged (a delta).
    pub nodes: Option<Vec<k8s::NodeInfo>>,
}

impl NodeView {
    /// The view without its model (an empty delta): what `run` still needs of the first view
    /// after `start` applied its model.
    fn without_model(&self) -> NodeView {
        NodeView {
            model: ModelUpdate::Delta(Default::default()),
            local: self.local.clone(),
            internal_addresses: self.internal_addresses.clone(),
            health_checks: self.health_checks.clone(),
            pod_cidrs: self.pod_cidrs.clone(),
            nodes: self.nodes.clone(),
        }
    }
}

/// What a view changes in the model.
pub enum ModelUpdate {
    /// The whole model: the manifests folder, the API source's initial sync and its fallback.
    Whole(Model),
    /// Some frontends: a Service or EndpointSlice change from the API source.
    Delta(model::ModelDelta),
}

impl NodeArgs {
    /// Checks the flags; returns the compile options and the node name.
    pub fn validate(&self) -> Result<(k8s::per_node::Options, String)> {
        if !lb::maglev::is_valid_size(self.maglev_table_size) {
            anyhow::bail!(
                "--maglev-table-size: {} is not a prime from 251 to 131071",
                self.maglev_table_size
            );
        }
        Ok((self.kube.options()?, self.kube.node_name()?))
    }

    /// Follows a source's cluster store: whole, then per change.
    fn cluster_tracker(&self) -> Result<tracker::ClusterTracker> {
        let (opts, node) = self.validate()?;
        Ok(tracker::ClusterTracker::new(
            node,
            opts,
            self.maglev_table_size,
        ))
    }

    /// The flags, checked before the kernel is touched. A manifests folder is compiled (once) by
    /// [`start`], also before any program or map is loaded.
    pub fn check(&self) -> Result<()> {
        if self.device.iter().any(|d| d.is_empty()) {
            anyhow::bail!("--device: empty device name");
        }
        self.cni.check()?;
        let (opts, _) = self.validate()?;
        // A SNAT port inside the NodePort range: the backend's reply to it would be taken for a
        // new flow to that NodePort (the default range keeps out of it, see `start`).
        if let (_, _, Some(r)) = self.conntrack.settings()? {
            super::conntrack::check_keep_out(
                r,
                "--snat-port-range",
                &[(node_port_range(&opts.node_port_range), "--node-port-range")],
            )?;
        }
        Ok(())
    }

    /// The map sizes of this node: its settings, and the programs its flags load.
    pub fn map_sizes(&self, events: sizes::Events) -> Result<sizes::MapSizes> {
        use lb::config::limits::{MAX_BACKENDS_RANGE, MAX_SERVICES_RANGE};
        use sizes::{MAX_ENDPOINTS_RANGE, MapSizes, Settings, Uses};
        let (ct, snat, _) = self.conntrack.settings()?;
        let (policy_ct, sock_revnat) = self.conntrack.lru_entries()?;
        let settings = Settings {
            services: sizes::check("--max-services", self.max_services, MAX_SERVICES_RANGE)?,
            backends: sizes::check("--max-backends", self.max_backends, MAX_BACKENDS_RANGE)?,
            endpoints: sizes::check("--max-endpoints", self.max_endpoints, MAX_ENDPOINTS_RANGE)?,
            conntrack: ct.max_entries,
            snat,
            policy_ct,
            sock_revnat,
            events,
            names: ("--max-services", "--max-backends", "--max-endpoints"),
        };
        let nodeport = !self.device.is_empty();
        let packet_lb = nodeport || self.socket_lb_host_netns_only || self.cni.cni;
        let uses = Uses {
            packet_lb,
            socket_lb: true,
            nodeport,
            cni: self.cni.cni,
            bandwidth: self.cni.bandwidth_manager,
            xdp: self.nodeport_acceleration != Acceleration::Disabled,
            packet_events: packet_lb,
        };
        Ok(MapSizes::new(uses, settings))
    }
}

/// `--node-port-range` as a port range the SNAT ports keep out of.
fn node_port_range(r: &std::ops::RangeInclusive<u16>) -> lb::config::PortRange {
    lb::config::PortRange {
        min: *r.start(),
        max: *r.end(),
    }
}

/// Loads the socket LB, attaches it, with `--device` also the NodePort programs, and applies the
/// first model (from the folder; with the API source the model follows once the initial lists
/// are in). The local endpoints follow in [`run`] (they are looked up asynchronously), which also
/// takes the pod programs over from the state.
pub async fn start(args: &super::AgentArgs, state: &Shared) -> Result<Ebpf> {
    let na = &args.node_args;
    // The folder is read and compiled once here; `run` follows it from this read.
    let (folder, view) = match &na.manifests {
        Some(dir) => {
            let (f, v) = folder::FolderFollow::read(na, dir)?;
            (Some(f), Some(v))
        }
        None => (None, None),
    };
    if let Some(NodeView {
        model: ModelUpdate::Whole(m),
        ..
    }) = &view
    {
        fits(&compile::compile(m)?, na)?;
    }
    let cgroup = match &na.cgroup {
        Some(c) => c.clone(),
        None => socklb::cgroup2_root(Path::new("/run/oxilium/cgroupv2"))?.0,
    };
    let mut sock = SockLb::load(&args.pin_dir)?;
    let maps = sock.lb_maps()?;
    // Before the programs attach: no moment where pods' sockets are translated by mistake.
    let host_only = match na.socket_lb_host_netns_only {
        true => Some(socklb::own_netns_cookie().context("--socket-lb-host-netns-only")?),
        false => None,
    };
    sock.maps.set_host_netns_only(host_only)?;
    let pods = if host_only.is_some() {
        Some(pod_devices::PodDevices::load(&args.pin_dir)?)
    } else {
        // An earlier run's pod attachments are no longer wanted.
        crate::bpf::podlb::detach_all(&args.pin_dir)?;
        None
    };
    sock.attach(&cgroup, Some(&args.pin_dir))
        .with_context(|| format!("attaching the socket LB to {}", cgroup.display()))?;
    let (ebpf, sock_maps) = sock.into_parts();
    let (conntrack, _, ports) = na.conntrack.settings()?;
    let node_ports = node_port_range(&na.validate()?.0.node_port_range);
    let ct = nodeport::CtSettings {
        ports: super::conntrack::snat_ports(
            ports,
            "--snat-port-range",
            &[(node_ports, "--node-port-range")],
        )?,
        timeouts: conntrack.timeouts.to_abi(),
    };
    let mut maps = maps;
    if na.device.is_empty() {
        // The pod path reads the timeouts too: written without SNAT addresses (not ready).
        let mut c = maps.config().unwrap_or_default();
        c.timeouts = ct.timeouts;
        maps.set_config(&c)?;
    }
    let device_addresses = nodeport::device_addresses(&na.device).await?;
    let nodeport = if na.device.is_empty() {
        None
    } else {
        let xdp = match na.nodeport_acceleration {
            Acceleration::Disabled => None,
            Acceleration::Native => Some(aya::programs::XdpMode::Driver),
            Acceleration::Generic => Some(aya::programs::XdpMode::Skb),
        };
        let l7 = na.cni.cni && na.policy.l7_proxy;
        let mut ext = NodePortDevices::load(&args.pin_dir, &na.device, xdp, ct, l7)?;
        ext.set_node_addresses(&[], device_addresses)?;
        Some(ext)
    };
    let cni = endpoints::CniFlags::start(args).await?;
    if let Some(c) = &cni {
        let (l7, ports, dns) = {
            let a = c.lock().await;
            (
                a.policy.l7.clone(),
                a.policy.http_proxy_ports(),
                a.policy.dns_redirect(),
            )
        };
        if let Some(ports) = ports {
            let hub = state.lock().unwrap().events.clone();
            l7::start(&args.pin_dir, ports, l7, hub).await?;
        }
        if let Some((port, flags)) = dns {
            policy::dns::start_redirect(c.clone(), port, &flags)?;
        }
    }
    let mut st = state.lock().unwrap();
    st.reconciler = Some(Reconciler::open(maps.with_sock_maps(sock_maps))?);
    st.nodeport = nodeport;
    st.pod_devices = pods;
    st.cni = cni;
    if let Some(v) = view {
        let rest = v.without_model();
        apply_view(&mut st, v, device_addresses)?;
        st.first_view = folder.map(|f| (f, rest));
    }
    folder::return_freed_memory();
    info!(cgroup = %cgroup.display(), devices = ?na.device, host_netns_only = host_only.is_some(), services = st.model.services.len(), "node datapath ready");
    Ok(ebpf)
}

/// An error, before anything is loaded, when the first model has more service entries or
/// backends than `--max-services` / `--max-backends` let the maps hold.
fn fits(
    compiled: &std::collections::BTreeMap<abi::lb::ServiceKey, compile::CompiledService>,
    na: &NodeArgs,
) -> Result<()> {
    let backends: usize = compiled.values().map(|s| s.backends.len()).sum();
    if compiled.len() > na.max_services as usize {
        anyhow::bail!(
            "--max-services: the manifests need {} service entries, more than {}",
            compiled.len(),
            na.max_services
        );
    }
    if backends > na.max_backends as usize {
        anyhow::bail!(
            "--max-backends: the manifests need {backends} backends, more than {}",
            na.max_backends
        );
    }
    Ok(())
}

/// Applies a view: the model through the reconciler, then (with `--device`) the SNAT source and
/// the source ranges of the services as they are now numbered (`devices`: the addresses of the
/// `--device`s, see [`nodeport::device_addresses`]). Returns the local endpoints wanted.
fn apply_view(
    st: &mut super::State,
    view: NodeView,
    devices: net::addresses::Addresses,
) -> Result<BTreeSet<IpAddr>> {
    // A delta leaves the node addresses as they are (a Node change is applied whole) and touches
    // the source ranges only when a service it changed has some.
    // Source ranges first: a new LoadBalancer must not be open to all until they follow.
    if let (Some(ext), Some(rec)) = (st.nodeport.as_mut(), st.reconciler.as_mut()) {
        let services = match &view.model {
            ModelUpdate::Whole(m) => &m.services,
            ModelUpdate::Delta(d) => &d.services,
        };
        ext.write_ranges_first(rec, services)?;
    }
    let (whole, ranges) = match view.model {
        ModelUpdate::Whole(m) => {
            apply_model(st, m)?;
            (true, true)
        }
        ModelUpdate::Delta(d) => (false, tracker::apply_delta(st, &d)?),
    };
    let super::State {
        nodeport,
        reconciler,
        model,
        ..
    } = st;
    if let (Some(ext), Some(rec)) = (nodeport.as_mut(), reconciler.as_ref()) {
        if whole {
            ext.set_node_addresses(&view.internal_addresses, devices)?;
        }
        let n = if ranges {
            ext.sync_source_ranges(rec, model)?
        } else {
            0
        };
        if n > 0 {
            info!(services = n, "source ranges updated");
        }
    }
    Ok(view.local)
}

/// Follows the source: the manifests folder (its changed files read again) or the API server (compiled
/// whole after the initial lists, then per change: see [`tracker`]). A model that fails to
/// compile changes nothing and is reported in `status`.
pub async fn run(args: &super::AgentArgs, state: &Shared) -> Result<()> {
    match args.node_args.manifests.clone() {
        Some(dir) => folder::run(args, &dir, state).await,
        None => run_api(args, state).await,
    }
}

fn record(state: &Shared, result: Result<()>, what: &str) {
    let mut st = state.lock().unwrap();
    match result {
        Ok(()) => {
            st.reloads += 1;
            st.last_error = None;
            crate::metrics::health().set_synced();
            info!("{what} applied");
        }
        Err(e) => {
            warn!("{what} not applied: {e:#}");
            st.last_error = Some(format!("{e:#}"));
        }
    }
}

async fn run_api(args: &super::AgentArgs, state: &Shared) -> Result<()> {
    use k8s::api_source::KubeSource;
    let na = &args.node_args;
    let (_, node) = na.validate()?;
    let mut tracker = na.cluster_tracker()?;
    let client = na.kube.client().await?;
    let cluster = std::sync::Arc::new(std::sync::RwLock::new(k8s::cluster::Cluster::new()));
    let cni = state.lock().unwrap().cni.clone();
    if let Some(c) = &cni {
        // Network policy: the policy objects followed in the API server.
        let objects = k8s::api_source::policy_objects::follow(client.clone());
        self::policy::follow_api(c.clone(), objects);
    }
    let source = KubeSource::new(client, cluster.clone(), Some(&node));
    // The Pods of this node: their labels go with the endpoints the CNI plugin asks for.
    if let Some(c) = cni {
        c.lock().await.set_pod_store(source.stores().pods);
    }
    let (task, mut events) = source.spawn();
    let mut follower = Follower::new(state);
    let mut pending = tracker::Pending::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => {
                    if !pending.take(ev) {
                        continue;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                follower.tick(state).await;
                continue;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        // Coalesce what is already queued, then compile once: the Services changed only, or
        // everything (see `tracker`).
        while let Ok(ev) = events.try_recv() {
            pending.take(ev);
        }
        let view = pending.view(&mut tracker, &cluster.read().unwrap());
        follower.apply(state, view, "cluster state").await;
        if state.lock().unwrap().last_error.is_some() {
            // The datapath may hold less than the tracker: the next change is applied whole.
            tracker.invalidate();
        }
    }
    task.abort();
    Ok(())
}
