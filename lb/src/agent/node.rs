//! `oxilium agent --role node`: the kube-proxy replacement on one node. The source is a folder of
//! Kubernetes manifests (watched); the datapath is the socket LB on a cgroup v2 (the root cgroup
//! unless `--cgroup` says otherwise), which translates every frontend for traffic from inside the
//! node and its pods. External frontends are also written (scope external) for the node-device
//! programs.
use super::{Shared, apply_model};
use crate::{
    bpf::socklb::{self, SockLb},
    compile,
    model::{self, Backend, BackendState, Frontend, Mode, Model, Scope, Service},
    reconcile::Reconciler,
};
use anyhow::{Context, Result};
use aya::Ebpf;
use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};
use tracing::{info, warn};

#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// --role node: read the cluster from a folder of Kubernetes manifests (Services,
    /// EndpointSlices, Nodes, Pods), watched, instead of the API server.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    #[command(flatten)]
    pub kube: k8s::kube_source::KubeFlags,
    /// --role node: the cgroup v2 whose sockets are translated (default: the root cgroup).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// --role node: Maglev table size for services using Maglev.
    #[arg(long, default_value_t = maglev::DEFAULT_SIZE)]
    pub maglev_table_size: u32,
}

impl NodeArgs {
    /// Checks the flags; returns the compile options and the node name.
    pub fn validate(&self) -> Result<(k8s::compile::Options, String)> {
        if !maglev::is_valid_size(self.maglev_table_size) {
            anyhow::bail!(
                "--maglev-table-size: {} is not a prime from 251 to 131071",
                self.maglev_table_size
            );
        }
        Ok((self.kube.options()?, self.kube.node_name()?))
    }

    /// The model of this node from the manifests folder; notes about skipped objects are logged.
    pub fn folder_model(&self, dir: &Path) -> Result<Model> {
        let (opts, node) = self.validate()?;
        let nf = k8s::node_frontends(dir, &node, &opts)
            .with_context(|| format!("--manifests {}", dir.display()))?;
        for n in &nf.notes {
            warn!("{n}");
        }
        Ok(model_of(&nf.frontends, self.maglev_table_size))
    }

    /// The model of this node from the API source's cluster store.
    fn cluster_model(&self, cluster: &k8s::cluster::Cluster) -> Result<Model> {
        let (opts, node) = self.validate()?;
        let nf = k8s::compile::compile_node(cluster, &node, &opts)?;
        for n in nf.notes.iter().filter(|n| n.error) {
            warn!("{n}");
        }
        Ok(model_of(&nf.frontends, self.maglev_table_size))
    }

    /// Everything that can be checked before the kernel is touched.
    pub fn check(&self) -> Result<()> {
        match &self.manifests {
            Some(dir) => self.folder_model(dir).map(|_| ()),
            None => self.validate().map(|_| ()),
        }
    }
}

/// Kubernetes frontends → the datapath model: every frontend is served from inside (scope
/// internal, socket LB); NodePort, LoadBalancer, externalIP and HostPort frontends also from
/// outside (scope external), with the externalTrafficPolicy-filtered backends where they differ.
pub fn model_of(frontends: &[k8s::model::Frontend], table_size: u32) -> Model {
    let mut services = Vec::new();
    for f in frontends {
        let base = Service {
            name: format!("{}:{}/{:?}", f.owner, f.port_name, f.kind),
            frontend: Frontend {
                addr: f.address,
                port: f.port,
                protocol: match f.protocol {
                    k8s::model::Protocol::Tcp => model::Protocol::Tcp,
                    k8s::model::Protocol::Udp => model::Protocol::Udp,
                },
            },
            algorithm: match f.algorithm {
                k8s::model::Algorithm::Maglev => model::Algorithm::Maglev,
                k8s::model::Algorithm::Random => model::Algorithm::Random,
            },
            mode: Mode::Snat,
            table_size,
            conntrack_timeout_s: 300,
            scope: Scope::Internal,
            affinity_timeout_s: f.affinity_timeout,
            backends: backends(&f.backends),
        };
        if f.kind != k8s::model::FrontendType::ClusterIP {
            let mut ext = base.clone();
            ext.scope = Scope::External;
            ext.affinity_timeout_s = None;
            ext.backends = backends(f.external_backends.as_deref().unwrap_or(&f.backends));
            services.push(ext);
        }
        // The socket LB picks a random slot: keep its table small.
        let mut int = base;
        int.algorithm = model::Algorithm::Random;
        services.push(int);
    }
    Model {
        maglev_seed: 0,
        services,
    }
}

fn backends(bs: &[k8s::model::Backend]) -> Vec<Backend> {
    bs.iter()
        .map(|b| Backend {
            addr: std::net::SocketAddr::new(b.address, b.port),
            weight: 1,
            state: match b.state {
                k8s::model::BackendState::Active => BackendState::Active,
                k8s::model::BackendState::Terminating => BackendState::Terminating,
            },
        })
        .collect()
}

/// Loads the socket LB, attaches it and applies the first model (from the folder; with the API
/// source the model follows once the initial lists are in).
pub fn start(args: &super::AgentArgs, state: &Shared) -> Result<Ebpf> {
    let na = &args.node_args;
    let model = match &na.manifests {
        Some(dir) => na.folder_model(dir)?,
        None => Model::default(),
    };
    compile::compile(&model)?;
    let cgroup = match &na.cgroup {
        Some(c) => c.clone(),
        None => socklb::cgroup2_root(Path::new("/run/oxilium/cgroupv2"))?.0,
    };
    let mut sock = SockLb::load(&args.pin_dir)?;
    let maps = sock.lb_maps()?;
    sock.attach(&cgroup, Some(&args.pin_dir))
        .with_context(|| format!("attaching the socket LB to {}", cgroup.display()))?;
    let (ebpf, sock_maps) = sock.into_parts();
    let mut st = state.lock().unwrap();
    st.reconciler = Some(Reconciler::open(maps.with_sock_maps(sock_maps))?);
    if na.manifests.is_some() {
        apply_model(&mut st, model)?;
    }
    info!(cgroup = %cgroup.display(), services = st.model.services.len(), "node datapath ready");
    Ok(ebpf)
}

/// Follows the source: the manifests folder (re-read on any change) or the API server (the model
/// is recompiled after the initial lists and after every change). A model that fails to compile
/// changes nothing and is reported in `status`.
pub async fn run(args: &super::AgentArgs, state: &Shared) -> Result<()> {
    match args.node_args.manifests.clone() {
        Some(dir) => run_folder(args, &dir, state).await,
        None => run_api(args, state).await,
    }
}

fn record(state: &Shared, result: Result<()>, what: &str) {
    let mut st = state.lock().unwrap();
    match result {
        Ok(()) => {
            st.reloads += 1;
            st.last_error = None;
            info!("{what} applied");
        }
        Err(e) => {
            warn!("{what} not applied: {e:#}");
            st.last_error = Some(format!("{e:#}"));
        }
    }
}

async fn run_folder(args: &super::AgentArgs, dir: &Path, state: &Shared) -> Result<()> {
    let mut last = folder_stamp(dir);
    let mut tick = tokio::time::interval(Duration::from_millis(args.watch_ms.max(50)));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = folder_stamp(dir);
                if now == last {
                    continue;
                }
                last = now;
                let result = args.node_args.folder_model(dir).and_then(|m| {
                    let mut st = state.lock().unwrap();
                    apply_model(&mut st, m)
                });
                record(state, result, "manifests");
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    Ok(())
}

async fn run_api(args: &super::AgentArgs, state: &Shared) -> Result<()> {
    use k8s::kube_source::{KubeSource, SourceEvent};
    let na = &args.node_args;
    let (_, node) = na.validate()?;
    let client = na.kube.client().await?;
    let cluster = std::sync::Arc::new(std::sync::RwLock::new(k8s::cluster::Cluster::new()));
    let (task, mut events) = KubeSource::new(client, cluster.clone(), Some(&node)).spawn();
    let mut synced = false;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(SourceEvent::Synced) => synced = true,
                Some(SourceEvent::Changed(_)) if synced => {}
                Some(SourceEvent::Changed(_)) => continue,
                Some(SourceEvent::Error { resource, message }) => {
                    warn!(resource, "API source: {message}");
                    continue;
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        // Coalesce what is already queued, then recompile once.
        while let Ok(ev) = events.try_recv() {
            if matches!(ev, SourceEvent::Synced) {
                synced = true;
            }
        }
        let result = na.cluster_model(&cluster.read().unwrap()).and_then(|m| {
            let mut st = state.lock().unwrap();
            apply_model(&mut st, m)
        });
        record(state, result, "cluster state");
    }
    task.abort();
    Ok(())
}
/// Names, sizes and modification times of the folder's files: any change shows.
fn folder_stamp(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    v.sort();
    v
}
