//! Store → the frontends one node programs. `compile_service` reads one Service and its own
//! slices only; `compile_node` is the whole-node view the offline `service list` prints;
//! [`NodeIndex`] keeps that view current one Service at a time (the agent's per-change path).
use crate::cluster::Cluster;
use crate::convert::{Family, NodeInfo, Svc, SvcType};
use crate::endpoint_selection::{self, Locality};
use crate::frontend::{
    Algorithm, ApiProtocol, Backend, BackendState, Frontend, FrontendType, HealthCheck, Mode, Note,
    ObjectKey,
};
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;

mod index;
pub use index::{IndexUpdate, NodeIndex, Slot, SlotChange};

/// Agent-wide settings that change what is programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The NodePort range (kube-apiserver --service-node-port-range); a Service with a nodePort
    /// outside it is rejected.
    pub node_port_range: RangeInclusive<u16>,
    /// The algorithm of Services without the service.cilium.io/lb-algorithm annotation.
    pub default_algorithm: Algorithm,
    /// The forwarding of Services without the service.cilium.io/forwarding-mode annotation.
    pub default_forwarding: Mode,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node_port_range: 30000..=32767,
            default_algorithm: Algorithm::Random,
            default_forwarding: Mode::Snat,
        }
    }
}

/// Parses a NodePort range as written for kube-apiserver: `30000-32767` (or a single port).
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("{s:?} is not a port range like 30000-32767");
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

/// One Service's frontends on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceFrontends {
    pub frontends: Vec<Frontend>,
    pub health_check: Option<HealthCheck>,
    pub notes: Vec<Note>,
}

/// Everything one node programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFrontends {
    pub node: NodeInfo,
    /// Sorted by `Frontend::sort_key`; one per (address, port, protocol).
    pub frontends: Vec<Frontend>,
    pub health_checks: Vec<HealthCheck>,
    pub notes: Vec<Note>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("node {node:?} is not among the Nodes ({})", known.join(", "))]
    UnknownNode { node: String, known: Vec<String> },
}

fn note(
    kind: &str,
    key: &ObjectKey,
    origin: &Option<String>,
    message: String,
    error: bool,
) -> Note {
    Note {
        object: format!("{kind} {key}"),
        origin: origin.clone(),
        message,
        error,
    }
}

/// The frontends of the Service `key` on `node`. Cost: that Service and its EndpointSlices.
pub fn compile_service(
    cluster: &Cluster,
    key: &ObjectKey,
    node: &NodeInfo,
    opts: &Options,
) -> ServiceFrontends {
    let mut out = ServiceFrontends::default();
    let Some(svc) = cluster.services.get(key) else {
        return out;
    };
    let svc_note = |m: String, error: bool| note("Service", key, &svc.origin, m, error);
    out.notes
        .extend(svc.notes.iter().map(|m| svc_note(m.clone(), false)));
    for slice in cluster.slices_of(key) {
        for m in &slice.notes {
            out.notes.push(note(
                "EndpointSlice",
                &slice.key,
                &slice.origin,
                m.clone(),
                false,
            ));
        }
    }
    if let Some(why) = &svc.skip {
        out.notes.push(svc_note(format!("skipped: {why}"), false));
        return out;
    }
    let rejected = svc.error.clone().or_else(|| check_ranges(svc, opts));
    if let Some(e) = rejected {
        out.notes.push(svc_note(format!("rejected: {e}"), true));
        return out;
    }
    let at = Locality {
        node: &node.name,
        zone: node.zone.as_deref(),
    };
    let algorithm = svc.algorithm.unwrap_or(opts.default_algorithm);
    let forwarding = svc.forwarding.unwrap_or(opts.default_forwarding);
    let has_node_ports = matches!(svc.ty, SvcType::NodePort | SvcType::LoadBalancer);
    let mut local_ready: BTreeSet<IpAddr> = BTreeSet::new();
    for p in &svc.ports {
        let ApiProtocol::Supported(protocol) = p.protocol else {
            out.notes.push(svc_note(
                format!(
                    "spec.ports[{}]: SCTP is not supported; port skipped",
                    p.index
                ),
                false,
            ));
            continue;
        };
        if svc.ty == SvcType::NodePort && p.node_port.is_none() {
            out.notes.push(svc_note(
                format!(
                    "spec.ports[{}]: no nodePort allocated; no NodePort frontend",
                    p.index
                ),
                false,
            ));
        }
        for family in [Family::V4, Family::V6] {
            let Some(&cluster_ip) = svc.cluster_ips.iter().find(|a| Family::of(a) == family) else {
                continue;
            };
            let cands = endpoint_selection::candidates(
                cluster.slices_of(key),
                p,
                family,
                svc.publish_not_ready,
            );
            let sel = endpoint_selection::select(&cands, at);
            local_ready.extend(sel.local_ready.iter().copied());
            let internal = if svc.itp_local {
                &sel.local
            } else {
                &sel.cluster
            };
            let outside = if svc.etp_local {
                &sel.local
            } else {
                &sel.cluster
            };
            let external = (outside != &sel.cluster).then(|| outside.clone());
            let mut push =
                |kind: FrontendType, address: IpAddr, port: u16, backends: &Vec<Backend>| {
                    out.frontends.push(Frontend {
                        owner: key.clone(),
                        port_name: p.name.clone(),
                        address,
                        port,
                        protocol,
                        kind,
                        backends: backends.clone(),
                        external_backends: if kind.is_external() {
                            external.clone()
                        } else {
                            None
                        },
                        algorithm,
                        forwarding,
                        affinity_timeout: svc.affinity_timeout,
                        source_ranges: if kind == FrontendType::LoadBalancer {
                            svc.source_ranges.clone()
                        } else {
                            Vec::new()
                        },
                        health_check: None,
                    })
                };
            // ClusterIP: internalTrafficPolicy. The external frontends reached from inside the
            // cluster (pods, the node) use the cluster-wide set, as kube-proxy short-circuits them.
            push(FrontendType::ClusterIP, cluster_ip, p.port, internal);
            if let (true, Some(np)) = (has_node_ports, p.node_port) {
                for &a in node.addresses.iter().filter(|a| Family::of(a) == family) {
                    push(FrontendType::NodePort, a, np, &sel.cluster);
                }
            }
            for &a in svc.external_ips.iter().filter(|a| Family::of(a) == family) {
                push(FrontendType::ExternalIP, a, p.port, &sel.cluster);
            }
            for &a in svc.lb_ingress.iter().filter(|a| Family::of(a) == family) {
                push(FrontendType::LoadBalancer, a, p.port, &sel.cluster);
            }
        }
    }
    for (field, list) in [
        ("spec.externalIPs", &svc.external_ips),
        ("status.loadBalancer.ingress", &svc.lb_ingress),
    ] {
        for a in list.iter().filter(|a| !svc.has_family(Family::of(a))) {
            out.notes.push(svc_note(
                format!("{field}: {a} has no clusterIP of its family; not programmed"),
                false,
            ));
        }
    }
    if let Some(np) = svc.health_check_node_port {
        let hc = HealthCheck {
            service: key.clone(),
            node_port: np,
            local_endpoints: local_ready.len() as u32,
        };
        for f in out.frontends.iter_mut().filter(|f| f.kind.is_external()) {
            f.health_check = Some(hc.clone());
        }
        out.health_check = Some(hc);
    }
    // Kept by the agent's index while the Service is unchanged: no spare room.
    out.frontends.shrink_to_fit();
    out.notes.shrink_to_fit();
    out
}

fn check_ranges(svc: &Svc, opts: &Options) -> Option<String> {
    let r = &opts.node_port_range;
    let range = format!("{}-{}", r.start(), r.end());
    if matches!(svc.ty, SvcType::NodePort | SvcType::LoadBalancer) {
        for p in &svc.ports {
            if let Some(np) = p.node_port.filter(|np| !r.contains(np)) {
                return Some(format!(
                    "spec.ports[{}].nodePort: {np} is outside the NodePort range {range}",
                    p.index
                ));
            }
        }
    }
    match svc.health_check_node_port {
        Some(np) if !r.contains(&np) => Some(format!(
            "spec.healthCheckNodePort: {np} is outside the NodePort range {range}"
        )),
        _ => None,
    }
}

/// HostPort frontends of the Pods scheduled on `node`: the hostIP (or every node address of a
/// family the pod has an IP in) and hostPort → pod IP and containerPort.
pub fn compile_host_ports(cluster: &Cluster, node: &NodeInfo, opts: &Options) -> ServiceFrontends {
    let mut out = ServiceFrontends::default();
    for pod in cluster.host_port_pods(&node.name) {
        let pod_note = |m: String| note("Pod", &pod.key, &pod.origin, m, false);
        out.notes
            .extend(pod.notes.iter().map(|m| pod_note(m.clone())));
        if pod.ips.is_empty() {
            out.notes
                .push(pod_note("no pod IP yet; host ports not programmed".into()));
            continue;
        }
        for hp in &pod.host_ports {
            let ApiProtocol::Supported(protocol) = hp.protocol else {
                out.notes.push(pod_note(format!(
                    "hostPort {}: SCTP is not supported; skipped",
                    hp.host_port
                )));
                continue;
            };
            let addresses: Vec<IpAddr> = match hp.host_ip {
                Some(a) => vec![a],
                None => node.addresses.clone(),
            };
            for address in addresses {
                let Some(&pod_ip) = pod
                    .ips
                    .iter()
                    .find(|p| Family::of(p) == Family::of(&address))
                else {
                    if hp.host_ip.is_some() {
                        out.notes.push(pod_note(format!(
                            "hostIP {address}: the pod has no IP of that family; skipped"
                        )));
                    }
                    continue;
                };
                out.frontends.push(Frontend {
                    owner: pod.key.clone(),
                    port_name: crate::frontend::intern(&hp.name),
                    address,
                    port: hp.host_port,
                    protocol,
                    kind: FrontendType::HostPort,
                    backends: vec![Backend {
                        address: pod_ip,
                        port: hp.container_port,
                        state: BackendState::Active,
                        node: Some(crate::frontend::intern(&node.name)),
                        zone: node.zone.as_deref().map(crate::frontend::intern),
                    }],
                    external_backends: None,
                    algorithm: opts.default_algorithm,
                    forwarding: Mode::Snat,
                    affinity_timeout: None,
                    source_ranges: Vec::new(),
                    health_check: None,
                });
            }
        }
    }
    out
}

/// Every frontend node `node` programs, sorted, one per (address, port, protocol): on a clash the
/// first in sort order is kept and the others are noted.
pub fn compile_node(
    cluster: &Cluster,
    node: &str,
    opts: &Options,
) -> Result<NodeFrontends, CompileError> {
    NodeIndex::build(cluster, node, opts).map(|(_, nf)| nf)
}

/// The Node `node` as the compile reads it (addresses and zone), with the notes about it.
pub(crate) fn node_info(
    cluster: &Cluster,
    node: &str,
    notes: &mut Vec<Note>,
) -> Result<NodeInfo, CompileError> {
    match cluster.nodes.get(node) {
        Some((info, node_notes)) => {
            let key = ObjectKey::new("", node);
            for m in node_notes {
                notes.push(note("Node", &key, &None, m.clone(), false));
            }
            Ok(info.clone())
        }
        None if cluster.nodes.is_empty() => {
            notes.push(Note {
                object: format!("Node {node}"),
                origin: None,
                message: "no Node objects: no node addresses (no NodePort frontends) and no zone"
                    .into(),
                error: false,
            });
            Ok(NodeInfo {
                name: node.to_string(),
                ..Default::default()
            })
        }
        None => {
            let mut known: Vec<String> = cluster.nodes.keys().cloned().collect();
            known.sort();
            Err(CompileError::UnknownNode {
                node: node.to_string(),
                known,
            })
        }
    }
}

/// Sorts `frontends` and keeps the first of each (address, port, protocol); the others are noted.
fn first_per_address(mut frontends: Vec<Frontend>, notes: &mut Vec<Note>) -> Vec<Frontend> {
    frontends.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(frontends.len());
    for f in frontends {
        if seen.insert((f.address, f.port, f.protocol)) {
            out.push(f);
        } else {
            notes.push(clash_note(&f));
        }
    }
    out
}

/// The note about a frontend left out because its address is already used.
pub(crate) fn clash_note(f: &Frontend) -> Note {
    Note {
        object: format!("{:?} frontend of {}", f.kind, f.owner),
        origin: None,
        message: format!(
            "{}:{}/{} is already used by another frontend; not programmed",
            f.address,
            f.port,
            f.protocol.as_str()
        ),
        error: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("30000-32767"), Ok(30000..=32767));
        assert_eq!(parse_port_range("8080"), Ok(8080..=8080));
        assert!(parse_port_range("2-1").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("a-b").is_err());
    }
}
