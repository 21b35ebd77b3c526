//! Kubernetes Service semantics for the kube-proxy replacement, as kube-proxy and Cilium implement
//! them, without a kernel: a manifests-folder source, a store indexed for O(change) updates, the
//! per-node frontends (ClusterIP, NodePort, LoadBalancer, externalIPs, HostPort) with their backends,
//! and the offline `oxilium service list --manifests DIR --node NAME -o json`.
//!
//! Flow: [`manifests::read_dir`] (the manifests-folder reader [`manifests::read_folder`], typed) or
//! the API watchers of [`api_source`] → [`Cluster`] (`apply_*`/`delete_*`) → [`compile_service`] /
//! [`compile_node`] → [`Frontend`]s → [`output::frontends_json`].
//! docs/kube-proxy-replacement.md lists the semantics.
pub mod api_source;
pub mod cluster;
pub mod convert;
mod endpoint_selection;
pub mod folder_source;
pub mod frontend;
pub mod manifests;
pub mod output;
pub mod per_node;
pub mod quantity;

pub use cluster::Cluster;
pub use convert::{Family, NodeInfo};
pub use frontend::{
    Algorithm, Backend, BackendState, Frontend, FrontendType, HealthCheck, IpNetwork, Mode, Note,
    ObjectKey, Protocol,
};
pub use manifests::{Manifests, Object, Origin, SourceError};
pub use per_node::{
    CompileError, IndexUpdate, NodeFrontends, NodeIndex, Options, ServiceFrontends, Slot,
    SlotChange, compile_host_ports, compile_node, compile_service, parse_port_range,
};

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Compile(#[from] CompileError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything node `node` would program for the manifests under `dir`, with the notes (skipped and
/// rejected objects) the CLI prints on stderr.
pub fn node_frontends(dir: &Path, node: &str, opts: &Options) -> Result<NodeFrontends> {
    Ok(node_frontends_with_nodes(dir, node, opts)?.0)
}

/// [`node_frontends`] and every Node of the folder (for the routes to the other nodes).
pub fn node_frontends_with_nodes(
    dir: &Path,
    node: &str,
    opts: &Options,
) -> Result<(NodeFrontends, Vec<NodeInfo>)> {
    let manifests = manifests::read_dir(dir)?;
    let cluster = Cluster::from_manifests(&manifests);
    Ok((compile_node(&cluster, node, opts)?, cluster.nodes()))
}

/// The offline `service list -o json`: a JSON array, one object per frontend of node `node`,
/// sorted by address, port, protocol, type and owner. Services rejected for an invalid field are
/// left out (see [`node_frontends`] for the notes saying why).
pub fn service_list(dir: &Path, node: &str, opts: &Options) -> Result<serde_json::Value> {
    Ok(output::frontends_json(
        &node_frontends(dir, node, opts)?.frontends,
    ))
}
