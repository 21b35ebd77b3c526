//! The agent's flags for the Kubernetes API source: where the API server is (`--kubeconfig PATH`,
//! or the in-cluster service account), which node this is, and the compile [`Options`].
use crate::frontend::{Algorithm, Mode};
use crate::per_node::{Options, parse_port_range};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::PathBuf;

/// Flags for `clap` (`#[command(flatten)]`); every field has a usable default.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct KubeFlags {
    /// A kubeconfig file. Without it the in-cluster service account is used
    /// (KUBERNETES_SERVICE_HOST/PORT and /var/run/secrets/kubernetes.io/serviceaccount).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, value_name = "NAME", requires = "kubeconfig")]
    pub kube_context: Option<String>,
    /// This node's name (the DaemonSet sets $NODE_NAME from spec.nodeName).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node: Option<String>,
    /// NodePort range, MIN-MAX (the kube-apiserver --service-node-port-range).
    #[arg(long, value_name = "MIN-MAX", default_value = "30000-32767")]
    pub node_port_range: String,
    /// Backend selection when a Service has no service.cilium.io/lb-algorithm annotation.
    #[arg(long, value_parser = ["random", "maglev"], default_value = "random")]
    pub lb_algorithm: String,
    /// Forwarding of external traffic to backends on other nodes when a Service has no
    /// service.cilium.io/forwarding-mode annotation: snat, or dsr (direct server return).
    #[arg(long, value_parser = ["snat", "dsr"], default_value = "snat")]
    pub lb_mode: String,
}

impl Default for KubeFlags {
    fn default() -> Self {
        KubeFlags {
            kubeconfig: None,
            kube_context: None,
            node: None,
            node_port_range: "30000-32767".into(),
            lb_algorithm: "random".into(),
            lb_mode: "snat".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("--node-port-range: {0}")]
    NodePortRange(String),
    #[error("--lb-algorithm: {0}")]
    Algorithm(String),
    #[error("--lb-mode: {0}")]
    Mode(String),
    #[error("--node not given and $NODE_NAME not set")]
    NoNode,
    #[error("--kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster config (no --kubeconfig): {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

impl KubeFlags {
    /// The compile options these flags select.
    pub fn options(&self) -> Result<Options, FlagError> {
        Ok(Options {
            node_port_range: parse_port_range(&self.node_port_range)
                .map_err(FlagError::NodePortRange)?,
            default_algorithm: self
                .lb_algorithm
                .parse::<Algorithm>()
                .map_err(FlagError::Algorithm)?,
            default_forwarding: self.lb_mode.parse::<Mode>().map_err(FlagError::Mode)?,
        })
    }

    /// `--node`, else `$NODE_NAME`.
    pub fn node_name(&self) -> Result<String, FlagError> {
        self.node
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty())
            .ok_or(FlagError::NoNode)
    }

    /// The client configuration: the kubeconfig file (and context) when given, else in-cluster.
    pub async fn config(&self) -> Result<Config, FlagError> {
        let Some(path) = &self.kubeconfig else {
            return Ok(Config::incluster()?);
        };
        let err = |source| FlagError::Kubeconfig {
            path: path.clone(),
            source,
        };
        let kc = Kubeconfig::read_from(path).map_err(err)?;
        let opts = KubeConfigOptions {
            context: self.kube_context.clone(),
            ..Default::default()
        };
        Config::from_custom_kubeconfig(kc, &opts).await.map_err(err)
    }

    /// A client for [`config`](Self::config). Needs a Tokio runtime.
    pub async fn client(&self) -> Result<Client, FlagError> {
        Ok(Client::try_from(self.config().await?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kube: KubeFlags,
    }

    #[test]
    fn defaults_and_parsing() {
        let c = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(c.kube, KubeFlags::default());
        assert_eq!(c.kube.options().unwrap(), Options::default());
        let c = Cli::try_parse_from([
            "x",
            "--kubeconfig",
            "/k",
            "--node",
            "n1",
            "--node-port-range",
            "20000-20100",
            "--lb-algorithm",
            "maglev",
        ])
        .unwrap();
        assert_eq!(c.kube.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(c.kube.node_name().unwrap(), "n1");
        let o = c.kube.options().unwrap();
        assert_eq!(o.node_port_range, 20000..=20100);
        assert_eq!(o.default_algorithm, Algorithm::Maglev);
        let bad = KubeFlags {
            node_port_range: "9-1".into(),
            ..Default::default()
        };
        assert!(matches!(bad.options(), Err(FlagError::NodePortRange(_))));
        assert!(Cli::try_parse_from(["x", "--kube-context", "c"]).is_err());
    }
}
