//! `oxilium agent`: loads the datapath for its role (edge LB, DSR backend, Kubernetes node), keeps it
//! equal to its source, and serves the CLI's API on a unix socket. The roles live in [`edge`] and
//! [`node`]; the API in [`crate::api`].
pub mod conntrack;
mod edge;
mod neighbour;
pub mod node;
mod watch;

use crate::bpf::{decap::Decap, lb_maps::KernelMaps, loader};
use anyhow::{Context, Result};
use aya::Ebpf;
use edge::config_model::HealthKey;
use lb::config::Config;
use lb::{compile, reconcile::Reconciler};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};
use tracing::{info, warn};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The edge load balancer: XDP service translation on --iface.
    Lb,
    /// A DSR backend: decapsulates the LB's IP-in-IP packets on --iface (tc ingress).
    Backend,
    /// A Kubernetes node: kube-proxy replacement (socket LB; with --device also the NodePort tc
    /// programs), from the API server or --manifests.
    Node,
}

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The LB config file (required for --role lb); watched and applied on change.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// --role lb / backend: interface(s) to attach to (repeat or comma-separate); required there.
    /// --role node takes its devices from --device.
    #[arg(long, value_delimiter = ',')]
    pub iface: Vec<String>,
    #[arg(long, value_enum, default_value = "lb")]
    pub role: Role,
    /// bpffs folder for the pinned maps and links (kept across restarts).
    #[arg(long, default_value = "/sys/fs/bpf/oxilium")]
    pub pin_dir: PathBuf,
    /// The API socket (root only, mode 0600).
    #[arg(long, default_value = "/run/oxilium/oxilium.sock")]
    pub socket: PathBuf,
    /// XDP attach mode: native (driver) or generic (skb).
    #[arg(long, value_enum, default_value = "native")]
    pub xdp_mode: XdpAttach,
    /// Debounce of the config file / manifests folder watch (inotify), in milliseconds: a change
    /// is applied once no further change came for this long (at the latest after 4 times this).
    /// With a manifests folder, also how often waiting pods are looked up again.
    #[arg(long, default_value_t = 500)]
    pub watch_ms: u64,
    /// --role backend: an LB address whose DSR tunnels are taken off (repeat or comma-separate).
    /// Tunnel packets from any other source are dropped and counted (`tunnel_refused`); without
    /// this flag every tunnel packet is.
    #[arg(long = "tunnel-source", value_delimiter = ',', value_name = "ADDR")]
    pub tunnel_sources: Vec<std::net::IpAddr>,
    /// Detach everything, remove the pin folder and exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Serve Prometheus metrics (/metrics) and the health probes (/healthz, /readyz) on this
    /// TCP address (e.g. 0.0.0.0:9963); off when not given.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_address: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub events: crate::events::EventFlags,
    #[command(flatten)]
    pub node_args: node::NodeArgs,
}

impl AgentArgs {
    /// `--iface` is required by the roles that attach to interfaces by name (lb, backend); a node
    /// attaches to its `--device`s and its cgroup.
    pub fn check_iface(&self) -> Result<()> {
        if self.iface.is_empty() && matches!(self.role, Role::Lb | Role::Backend) {
            let role = if self.role == Role::Lb {
                "lb"
            } else {
                "backend"
            };
            anyhow::bail!("--iface is required with --role {role}");
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum XdpAttach {
    Native,
    Generic,
}

/// What the API reads and the loop updates.
pub struct State {
    pub role: Role,
    pub ifaces: Vec<String>,
    pub config_path: Option<PathBuf>,
    pub config: Option<Config>,
    pub health: HashMap<HealthKey, bool>,
    /// The model last applied to the datapath.
    pub model: lb::model::Model,
    pub reconciler: Option<Reconciler<KernelMaps>>,
    /// The NodePort programs on the node's devices (`--role node --device`).
    pub nodeport: Option<node::nodeport::NodePortDevices>,
    /// The DSR decapsulation (`--role backend`).
    pub decap: Option<crate::bpf::decap::Decap>,
    pub reloads: u64,
    pub last_error: Option<String>,
    warmer: neighbour::Warmer,
    /// `--socket-lb-host-netns-only`: the pod programs [`node::start`] loaded, until the node
    /// loop takes them over.
    pod_devices: Option<node::pod_devices::PodDevices>,
    /// `--cni`: the plugin's agent side (IPAM, endpoints).
    pub cni: Option<node::endpoints::SharedCni>,
    /// The manifests folder as `start` read it, and its first view less the model (which `start`
    /// applied): `run` follows the folder from there instead of reading it again.
    pub(crate) first_view: Option<(node::folder::FolderFollow, node::NodeView)>,
    /// Datapath events: the ring's drain and its subscribers (crate::events).
    pub events: Arc<crate::events::Hub>,
}

pub type Shared = Arc<Mutex<State>>;

pub fn run(args: AgentArgs) -> Result<()> {
    if args.cleanup {
        loader::remove_pins(&args.pin_dir)?;
        println!("removed {}", args.pin_dir.display());
        return Ok(());
    }
    node::folder::one_heap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(agent(args))
}

async fn agent(args: AgentArgs) -> Result<()> {
    // Bad input is refused before anything touches the kernel.
    args.check_iface()?;
    if args.role == Role::Node {
        args.node_args.check()?;
    }
    if args.role != Role::Backend && !args.tunnel_sources.is_empty() {
        anyhow::bail!("--tunnel-source is only for --role backend");
    }
    args.events.check()?;
    crate::bpf::sizes::set(map_sizes(&args)?);
    loader::prepare_pin_dir(&args.pin_dir)?;
    let state = Arc::new(Mutex::new(State {
        role: args.role,
        ifaces: args.iface.clone(),
        config_path: args.config.clone(),
        config: None,
        health: HashMap::new(),
        model: Default::default(),
        reconciler: None,
        nodeport: None,
        decap: None,
        reloads: 0,
        last_error: None,
        warmer: neighbour::Warmer::default(),
        pod_devices: None,
        cni: None,
        first_view: None,
        events: crate::events::Hub::new(&args.pin_dir),
    }));
    let metrics = match args.metrics_address {
        Some(a) => Some(crate::metrics::serve(a, state.clone()).await?),
        None => None,
    };
    // Keep the loaded objects alive for the agent's lifetime (links and maps are pinned anyway).
    let _ebpf: Option<Ebpf> = match args.role {
        Role::Backend => {
            let d = Decap::load(&args.pin_dir, &args.iface, &args.tunnel_sources)?;
            if args.tunnel_sources.is_empty() {
                tracing::warn!("no --tunnel-source: every DSR tunnel packet is refused");
            }
            state.lock().unwrap().decap = Some(d);
            None
        }
        Role::Lb => Some(edge::start(&args, &state).await?),
        Role::Node => Some(node::start(&args, &state).await?),
    };
    let health = crate::metrics::health();
    health.set_loaded();
    if args.role != Role::Node {
        // The edge LB applied its config in `start`; a DSR backend has nothing to sync.
        health.set_synced();
    }
    let hub = state.lock().unwrap().events.clone();
    crate::events::start(&args.events, &hub, &state);
    let api = crate::api::serve(&args.socket, state.clone())?;
    info!(socket = %args.socket.display(), "agent ready");
    println!("oxilium agent ready");
    let result = match args.role {
        Role::Lb => edge::run(&args, &state).await,
        Role::Node => node::run(&args, &state).await,
        Role::Backend => {
            // No loop of its own: the heartbeat shows the runtime is alive.
            let beat = tokio::spawn(async {
                let mut t = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    t.tick().await;
                    crate::metrics::health().tick();
                }
            });
            let r = wait_for_signal().await;
            beat.abort();
            r
        }
    };
    api.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    let _ = std::fs::remove_file(&args.socket);
    result
}

/// Every map's size for this agent: its role, its flags and (edge LB) its config file; checked
/// before anything is loaded.
fn map_sizes(args: &AgentArgs) -> Result<crate::bpf::sizes::MapSizes> {
    use crate::bpf::sizes::MapSizes;
    let events = args.events.sizes()?;
    Ok(match args.role {
        Role::Node => args.node_args.map_sizes(events)?,
        Role::Lb => {
            let path = args
                .config
                .as_ref()
                .context("--config is required with --role lb")?;
            let c = lb::config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            MapSizes::edge(&c, events)
        }
        Role::Backend => MapSizes::dsr_backend(events),
    })
}

/// Compiles `model`, writes the difference to the datapath and remembers it as applied.
pub(crate) fn apply_model(st: &mut State, model: lb::model::Model) -> Result<()> {
    let started = std::time::Instant::now();
    let r = apply_model_inner(st, model);
    crate::metrics::reconciled("whole", started.elapsed(), r.is_ok());
    r
}

fn apply_model_inner(st: &mut State, model: lb::model::Model) -> Result<()> {
    let compiled = compile::compile(&model)?;
    let rec = st.reconciler.as_mut().context("datapath not loaded")?;
    let ch = rec.apply(&compiled)?;
    if !ch.is_empty() {
        info!(?ch, "datapath updated");
    }
    let addrs: Vec<std::net::IpAddr> = model
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.addr.ip()))
        .collect();
    st.warmer.warm(addrs);
    st.model = model;
    Ok(())
}

/// How often backends that left a TCP service are checked for live flows (see `lb::reconcile`).
pub(crate) const REAP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Removes the draining backends whose flows have all ended; a failure is reported in `status`.
/// The state is held only to take the plan, to remove the backends and to free their ids: the
/// walk of the flow maps (the whole conntrack and SNAT maps) and the deletes of the removed
/// backends' ended flows run on a blocking thread meanwhile, so the API and the applies go on (see
/// `lb::reconcile::reap` for what may change in between and why each step stays right).
pub(crate) async fn reap_draining(state: &Shared) {
    let report = |e: anyhow::Error| {
        warn!("removing drained backends: {e:#}");
        state.lock().unwrap().last_error = Some(format!("removing drained backends: {e:#}"));
    };
    let plan = {
        let st = state.lock().unwrap();
        let Some(rec) = st.reconciler.as_ref() else {
            return;
        };
        rec.reap_plan()
    };
    let plan = match plan {
        Ok(Some(plan)) => plan,
        Ok(None) => return,
        Err(e) => return report(e),
    };
    let walk = match blocking(move || plan.walk()).await {
        Ok(walk) => walk,
        Err(e) => return report(e),
    };
    let flush = {
        let mut st = state.lock().unwrap();
        let Some(rec) = st.reconciler.as_mut() else {
            return;
        };
        rec.reap_commit(walk)
    };
    let flush = match flush {
        Ok(flush) if flush.changes().is_empty() => return,
        Ok(flush) => flush,
        Err(e) => return report(e),
    };
    let done = match blocking(move || flush.run()).await {
        Ok(done) => done,
        Err(e) => return report(e),
    };
    let mut st = state.lock().unwrap();
    if let Some(rec) = st.reconciler.as_mut() {
        let ch = rec.reap_free(done);
        info!(?ch, "drained backends removed");
    }
}

/// `f` on tokio's blocking threads; its error, or the thread's failure.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("the reap's thread failed: {e}"))?
}

/// Runs [`reap_draining`] in a task of its own, one at a time: the loop that starts it goes on
/// meanwhile. Dropping it stops the task.
#[derive(Default)]
pub(crate) struct Reaper(Option<tokio::task::JoinHandle<()>>);

impl Reaper {
    /// Starts a reap unless one still runs.
    pub(crate) fn start(&mut self, state: &Shared) {
        if self.0.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let state = state.clone();
        self.0 = Some(tokio::spawn(async move { reap_draining(&state).await }));
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

pub(crate) async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// GET a path from a running agent's API.
pub async fn api_get(socket: &Path, path: &str) -> Result<serde_json::Value> {
    crate::api::get(socket, path).await
}
