//! Nodes and Pods → what the store keeps of them (addresses, zone, pod CIDRs; a pod's addresses
//! and host network).
use super::{ZONE_LABEL, ip, key_of, port_u16};
use crate::frontend::{ApiProtocol, ObjectKey};
use k8s_openapi::api::core::v1::{Node, Pod};
use std::net::IpAddr;

/// A Node as the store keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// InternalIP and ExternalIP addresses, both families, in status order, without duplicates.
    pub addresses: Vec<IpAddr>,
    /// The InternalIP addresses alone (the node's address inside the cluster), in status order.
    pub internal_addresses: Vec<IpAddr>,
    /// Label topology.kubernetes.io/zone.
    pub zone: Option<String>,
    /// spec.podCIDRs (or spec.podCIDR), as written: the node's pod address pools.
    pub pod_cidrs: Vec<String>,
}

pub(crate) fn node(n: &Node) -> (NodeInfo, Vec<String>) {
    let mut info = NodeInfo {
        name: n.metadata.name.clone().unwrap_or_default(),
        addresses: Vec::new(),
        internal_addresses: Vec::new(),
        zone: n
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .filter(|z| !z.is_empty())
            .cloned(),
        pod_cidrs: n
            .spec
            .as_ref()
            .and_then(|s| {
                s.pod_cidrs
                    .clone()
                    .or_else(|| s.pod_cidr.clone().map(|c| vec![c]))
            })
            .unwrap_or_default(),
    };
    let mut notes = Vec::new();
    let addrs = n.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in addrs.into_iter().flatten().enumerate() {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        match ip(&a.address, &format!("status.addresses[{i}].address")) {
            Ok(ip) => {
                if a.type_ == "InternalIP" && !info.internal_addresses.contains(&ip) {
                    info.internal_addresses.push(ip);
                }
                if !info.addresses.contains(&ip) {
                    info.addresses.push(ip);
                }
            }
            Err(e) => notes.push(format!("{e}; ignored")),
        }
    }
    (info, notes)
}

#[derive(Clone, Debug)]
pub(crate) struct HostPortSpec {
    pub name: String,
    pub protocol: ApiProtocol,
    pub host_port: u16,
    pub container_port: u16,
    /// None: every node address (hostIP absent, 0.0.0.0 or ::).
    pub host_ip: Option<IpAddr>,
}

/// The part of a Pod that HostPort needs. Pods without host ports are not kept.
#[derive(Clone, Debug)]
pub(crate) struct PodInfo {
    pub key: ObjectKey,
    pub origin: Option<String>,
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub host_ports: Vec<HostPortSpec>,
    pub notes: Vec<String>,
}

/// None when the pod has nothing to program (no host port, host network, not scheduled, finished).
pub(crate) fn pod(p: &Pod, origin: Option<String>) -> Option<PodInfo> {
    let spec = p.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None; // the port is the node's own: nothing to translate
    }
    let node = spec.node_name.clone().filter(|n| !n.is_empty())?;
    let status = p.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    let mut info = PodInfo {
        key: key_of(&p.metadata),
        origin,
        node,
        ips: Vec::new(),
        host_ports: Vec::new(),
        notes: Vec::new(),
    };
    for (ci, c) in spec.containers.iter().enumerate() {
        for (pi, cp) in c.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            let Some(hp) = cp.host_port.filter(|h| *h != 0) else {
                continue;
            };
            let parsed = (|| -> Result<HostPortSpec, String> {
                Ok(HostPortSpec {
                    name: cp.name.clone().unwrap_or_default(),
                    protocol: ApiProtocol::parse(cp.protocol.as_deref())
                        .map_err(|e| format!("{field}.protocol: {e}"))?,
                    host_port: port_u16(hp, &format!("{field}.hostPort"))?,
                    container_port: port_u16(cp.container_port, &format!("{field}.containerPort"))?,
                    host_ip: match cp.host_ip.as_deref() {
                        None | Some("") => None,
                        Some(s) => {
                            Some(ip(s, &format!("{field}.hostIP"))?).filter(|a| !a.is_unspecified())
                        }
                    },
                })
            })();
            match parsed {
                Ok(h) => info.host_ports.push(h),
                Err(e) => info.notes.push(format!("{e}; host port ignored")),
            }
        }
    }
    if info.host_ports.is_empty() && info.notes.is_empty() {
        return None;
    }
    let pod_ips = status.and_then(|s| s.pod_ips.as_ref());
    for a in pod_ips.into_iter().flatten() {
        if let Ok(a) = a.ip.parse::<IpAddr>()
            && !info.ips.contains(&a)
        {
            info.ips.push(a);
        }
    }
    if info.ips.is_empty()
        && let Some(a) = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|a| a.parse().ok())
    {
        info.ips.push(a);
    }
    Some(info)
}
