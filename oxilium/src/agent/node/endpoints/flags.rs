//! The `--cni` flags, starting the CNI side of the agent, and serving the plugin's requests.
use super::{CniAgent, Request};
use crate::agent::Shared;
use anyhow::{Context, Result};
use cni::{CniError, code};
use hyper::StatusCode;
use ipnetwork::IpNetwork;
use std::{path::PathBuf, sync::Arc};
use tracing::{info, warn};

pub type SharedCni = Arc<tokio::sync::Mutex<CniAgent>>;

#[derive(clap::Args, Debug, Clone)]
pub struct CniFlags {
    /// --role node: serve the CNI plugin `oxilium-cni` (IPAM from the node's pod CIDRs, a veth
    /// per pod, the endpoint programs) on the API socket.
    #[arg(long)]
    pub cni: bool,
    /// --cni: a pod CIDR of this node (repeat for dual-stack); without it, the Node's
    /// spec.podCIDRs.
    #[arg(long = "pod-cidr", value_name = "CIDR", requires = "cni")]
    pub pod_cidrs: Vec<String>,
    /// --cni: where the agent keeps its address allocations (`cni-ipam.json`).
    #[arg(long, default_value = "/var/lib/oxilium")]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub routing: super::routing::RoutingFlags,
    /// --cni: enforce the pods' `kubernetes.io/egress-bandwidth` and
    /// `kubernetes.io/ingress-bandwidth` annotations (egress paced through fq on every
    /// `--device` when the kernel has sch_fq, else a token bucket; ingress a token bucket).
    #[arg(long, requires = "cni")]
    pub bandwidth_manager: bool,
}

impl CniFlags {
    pub fn pools(&self) -> Result<Vec<IpNetwork>> {
        self.pod_cidrs
            .iter()
            .map(|c| cni::ipam::parse_cidr(c).map_err(|e| anyhow::anyhow!("--pod-cidr: {e}")))
            .collect()
    }

    pub fn check(&self) -> Result<()> {
        self.pools()?;
        self.routing.exceptions()?;
        Ok(())
    }

    /// With `--cni`: forwarding on, the state opened, the programs loaded.
    pub async fn start(args: &crate::agent::AgentArgs) -> Result<Option<SharedCni>> {
        let f = &args.node_args.cni;
        if !f.cni {
            return Ok(None);
        }
        for (path, v) in [
            ("/proc/sys/net/ipv4/ip_forward", "1"),
            ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
        ] {
            std::fs::write(path, v).with_context(|| format!("setting {path} = {v}"))?;
        }
        let (_, node) = args.node_args.validate()?;
        let policy = || {
            crate::agent::node::policy::PolicyAgent::open(
                &args.pin_dir,
                &args.node_args.policy,
                args.node_args.manifests.clone(),
                args.node_args.kube.node.clone(),
            )
        };
        let mut a = CniAgent::open(
            &f.state_dir,
            &args.pin_dir,
            f.pools()?,
            args.node_args.manifests.clone(),
            f.routing.masquerade,
            policy,
        )
        .await?;
        // After the programs' load: it pins the masquerade exceptions map the router writes.
        let l7 = args.node_args.policy.l7_proxy;
        let router =
            super::routing::Router::start(&f.routing, node, &args.pin_dir, &f.pools()?, l7).await?;
        a.router = Some(router);
        a.mtu_cap = f.routing.pod_mtu_cap();
        if f.bandwidth_manager {
            let bw = super::bandwidth::BandwidthManager::open(
                &args.pin_dir,
                &a.nl,
                &args.node_args.device,
            )
            .await
            .context("--bandwidth-manager")?;
            a.bandwidth = Some(bw);
            a.sync_bandwidth();
        }
        info!(state = %f.state_dir.display(), pools = ?a.ipam.pools(), "CNI endpoints ready");
        let shared = Arc::new(tokio::sync::Mutex::new(a));
        if f.bandwidth_manager {
            super::bandwidth::spawn(
                shared.clone(),
                std::time::Duration::from_millis(args.watch_ms.clamp(100, 1000)),
            );
        }
        crate::agent::node::policy::spawn_tasks(
            shared.clone(),
            args.node_args.manifests.clone(),
            args.watch_ms,
            &args.node_args.policy,
        )?;
        Ok(Some(shared))
    }
}

/// Hands the Node's podCIDRs and the Nodes (when a view carries them) to the CNI side.
pub async fn node_view(
    state: &Shared,
    cidrs: &Option<Vec<String>>,
    nodes: &Option<Vec<k8s::NodeInfo>>,
) {
    let Some(c) = state.lock().unwrap().cni.clone() else {
        return;
    };
    if let (Some(n), Some(r)) = (nodes, c.lock().await.router.as_ref()) {
        r.set_nodes(n.clone());
    }
    let Some(cidrs) = cidrs else { return };
    let mut pools = Vec::new();
    for s in cidrs {
        match cni::ipam::parse_cidr(s) {
            Ok(p) => pools.push(p),
            Err(e) => warn!("Node spec.podCIDRs: {e}; ignored"),
        }
    }
    c.lock().await.set_node_pools(&pools);
}

/// POST /cni/{add,del,check,gc,status}: the plugin's requests. The answer is
/// `{"result": ...}` or `{"cni_error": CniError}`.
pub async fn serve(state: &Shared, cmd: &str, body: &[u8]) -> (StatusCode, serde_json::Value) {
    let cni = state.lock().unwrap().cni.clone();
    let Some(cni) = cni else {
        let e = CniError::new(
            code::NOT_AVAILABLE,
            "the agent does not serve the CNI plugin (start it with --cni)",
        );
        return err(e);
    };
    if cmd == "list" {
        return (StatusCode::OK, cni.lock().await.list());
    }
    let req: Request = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return err(CniError::new(code::DECODE, format!("request: {e}"))),
    };
    let mut a = cni.lock().await;
    let r = match cmd {
        "add" => a.add(&req).await.map(|r| serde_json::to_value(r).unwrap()),
        "del" => a.del(&req).await.map(|()| serde_json::Value::Null),
        "check" => a.check(&req).await.map(|()| serde_json::Value::Null),
        "gc" => a.gc(&req).await.map(|n| n.into()),
        "status" => a.status().map(|()| serde_json::Value::Null),
        _ => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI request {cmd}"),
        )),
    };
    match r {
        Ok(v) => (StatusCode::OK, serde_json::json!({ "result": v })),
        Err(e) => err(e),
    }
}

fn err(e: CniError) -> (StatusCode, serde_json::Value) {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        serde_json::json!({ "error": e.msg.clone(), "cni_error": e }),
    )
}
