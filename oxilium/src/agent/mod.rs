//! `oxilium agent`: loads the datapath, keeps it equal to the config file and the backends'
//! health, and serves the CLI's API on a unix socket.
mod api;
mod endpoints;
mod external;
mod healthz;
mod ifaddr;
mod neighbour;
pub mod node;
mod pods;
pub mod source;
mod views;

use crate::bpf::{datapath::KernelMaps, loader};
use abi::lb::LbConfig;
use anyhow::{Context, Result, bail};
use aya::{Ebpf, programs::XdpMode};
use lb::config::Config;
use lb::{compile, reconcile::Reconciler};
use source::HealthKey;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};
use tracing::{error, info, warn};

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
    /// Interface(s) to attach to (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["cleanup", "manifests", "kubeconfig", "node"])]
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
    /// How often the config file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub watch_ms: u64,
    /// Detach everything, remove the pin folder and exit.
    #[arg(long)]
    pub cleanup: bool,
    #[command(flatten)]
    pub node_args: node::NodeArgs,
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
    pub external: Option<external::External>,
    pub reloads: u64,
    pub last_error: Option<String>,
    warmer: neighbour::Warmer,
}

pub type Shared = Arc<Mutex<State>>;

pub fn run(args: AgentArgs) -> Result<()> {
    if args.cleanup {
        loader::remove_pins(&args.pin_dir)?;
        println!("removed {}", args.pin_dir.display());
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(agent(args))
}

async fn agent(args: AgentArgs) -> Result<()> {
    // Bad input is refused before anything touches the kernel.
    if args.role == Role::Node {
        args.node_args.check()?;
    }
    if args.role == Role::Lb {
        let path = args
            .config
            .as_ref()
            .context("--config is required with --role lb")?;
        lb::config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    loader::prepare_pin_dir(&args.pin_dir)?;
    let state = Arc::new(Mutex::new(State {
        role: args.role,
        ifaces: args.iface.clone(),
        config_path: args.config.clone(),
        config: None,
        health: HashMap::new(),
        model: Default::default(),
        reconciler: None,
        external: None,
        reloads: 0,
        last_error: None,
        warmer: neighbour::Warmer::default(),
    }));
    // Keep the loaded objects alive for the agent's lifetime (links and maps are pinned anyway).
    let _ebpf: Ebpf = match args.role {
        Role::Backend => loader::load_decap(&args.pin_dir, &args.iface)?,
        Role::Lb => start_lb(&args, &state)?,
        Role::Node => node::start(&args, &state)?,
    };
    let api = api::serve(&args.socket, state.clone())?;
    info!(socket = %args.socket.display(), "agent ready");
    println!("oxilium agent ready");
    let result = match args.role {
        Role::Lb => lb_loop(&args, &state).await,
        Role::Node => node::run(&args, &state).await,
        Role::Backend => wait_for_signal().await,
    };
    api.abort();
    let _ = std::fs::remove_file(&args.socket);
    result
}

fn start_lb(args: &AgentArgs, state: &Shared) -> Result<Ebpf> {
    let path = args
        .config
        .as_ref()
        .context("--config is required with --role lb")?;
    // Validate everything before touching the kernel.
    let cfg = lb::config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let model = source::model(&cfg, &HashMap::new());
    compile::compile(&model)?;
    let lb_config = lb_config(&cfg, &args.iface)?;

    crate::sysctl::prepare_lb(&args.iface)?;
    let mode = match args.xdp_mode {
        XdpAttach::Native => XdpMode::Driver,
        XdpAttach::Generic => XdpMode::Skb,
    };
    let mut ebpf = loader::load_xdp(&args.pin_dir, &args.iface, mode)?;
    let mut maps = KernelMaps::from_ebpf(&mut ebpf)?;
    maps.set_config(&lb_config)?;
    let mut st = state.lock().unwrap();
    st.reconciler = Some(Reconciler::open(maps)?);
    apply_model(&mut st, model)?;
    st.config = Some(cfg);
    Ok(ebpf)
}

/// The datapath's global settings: SNAT / tunnel source addresses and the SNAT port range.
fn lb_config(cfg: &Config, ifaces: &[String]) -> Result<LbConfig> {
    let (mut v4, mut v6) = (cfg.snat.ipv4, cfg.snat.ipv6);
    for i in ifaces {
        let (a4, a6) = ifaddr::addresses(i);
        v4 = v4.or(a4);
        v6 = v6.or(a6);
    }
    let needs_v4 = cfg
        .services
        .iter()
        .any(|s| s.backends.iter().any(|b| b.address.is_ipv4()));
    let needs_v6 = cfg
        .services
        .iter()
        .any(|s| s.backends.iter().any(|b| b.address.is_ipv6()));
    if needs_v4 && v4.is_none() {
        bail!("snat.ipv4: not set and no IPv4 address on {ifaces:?}");
    }
    if needs_v6 && v6.is_none() {
        bail!("snat.ipv6: not set and no global IPv6 address on {ifaces:?}");
    }
    Ok(LbConfig {
        snat_v4: v4
            .map(|a| abi::lb::v4_mapped(a.octets()))
            .unwrap_or_default(),
        snat_v6: v6.map(|a| a.octets()).unwrap_or_default(),
        snat_port_min: cfg.snat.ports.min,
        snat_port_max: cfg.snat.ports.max,
        ready: 1,
    })
}

/// Re-applies the datapath from the current config and health.
fn reapply(state: &Shared) -> Result<()> {
    let mut st = state.lock().unwrap();
    let Some(cfg) = st.config.clone() else {
        return Ok(());
    };
    let model = source::model(&cfg, &st.health);
    apply_model(&mut st, model)
}

/// Compiles `model`, writes the difference to the datapath and remembers it as applied.
pub(crate) fn apply_model(st: &mut State, model: lb::model::Model) -> Result<()> {
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

async fn lb_loop(args: &AgentArgs, state: &Shared) -> Result<()> {
    let path = args.config.clone().expect("checked in start_lb");
    let (mut prober, mut events) = lb::health::Prober::<HealthKey>::new();
    {
        let st = state.lock().unwrap();
        prober.set_targets(source::health_targets(st.config.as_ref().expect("loaded")));
    }
    let mut last = file_stamp(&path);
    let mut tick = tokio::time::interval(Duration::from_millis(args.watch_ms.max(50)));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = file_stamp(&path);
                if now != last {
                    last = now;
                    reload(&path, state, &mut prober);
                }
            }
            Some(ev) = events.recv() => {
                info!(service = %ev.id.0, backend = %ev.id.1, healthy = ev.healthy, "health changed");
                state.lock().unwrap().health.insert(ev.id, ev.healthy);
                if let Err(e) = reapply(state) {
                    error!("applying health change: {e:#}");
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    info!("agent stopping; the datapath keeps running from its pinned maps and links");
    Ok(())
}

/// Loads a changed config file; an invalid file changes nothing (the error names field and line).
fn reload(path: &Path, state: &Shared, prober: &mut lb::health::Prober<HealthKey>) {
    let cfg = match lb::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            warn!("config not applied: {e}");
            state.lock().unwrap().last_error = Some(e.to_string());
            return;
        }
    };
    let model = source::model(&cfg, &state.lock().unwrap().health);
    if let Err(e) = compile::compile(&model) {
        warn!("config not applied: {e:#}");
        state.lock().unwrap().last_error = Some(format!("{e:#}"));
        return;
    }
    prober.set_targets(source::health_targets(&cfg));
    {
        let mut st = state.lock().unwrap();
        // Forget the health of backends that left.
        let keep: std::collections::HashSet<HealthKey> = source::health_targets(&cfg)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        st.health.retain(|k, _| keep.contains(k));
        st.config = Some(cfg);
        st.reloads += 1;
        st.last_error = None;
    }
    match reapply(state) {
        Ok(()) => info!("config reloaded"),
        Err(e) => {
            error!("applying config: {e:#}");
            state.lock().unwrap().last_error = Some(format!("{e:#}"));
        }
    }
}

fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// GET a path from a running agent's API.
pub async fn api_get(socket: &Path, path: &str) -> Result<serde_json::Value> {
    api::get(socket, path).await
}
