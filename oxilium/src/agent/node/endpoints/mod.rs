//! `--cni`: the node agent's half of the CNI plugin. The plugin (`oxilium-cni`, see
//! [`crate::plugin`]) forwards ADD, DEL, CHECK, GC and STATUS here over the API socket; this
//! module owns the node's pod addresses ([`cni::ipam`], persisted under `--state-dir`) and the
//! endpoints: a veth pair per pod ([`veth`]), `OXI_ENDPOINTS` entries and the endpoint programs on
//! the host side ([`crate::bpf::endpoint`]).
pub mod bandwidth;
mod chain;
mod flags;
pub mod routing;
pub mod veth;

pub use flags::{CniFlags, SharedCni, node_view, serve};

use crate::bpf::endpoint::EndpointLb;
use abi::endpoint::EndpointInfo;
use anyhow::{Context, Result};
use cni::{Attachment, CniError, CniResult, Env, code, ipam::Ipam, result};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};
use tracing::{info, warn};

/// The state file under `--state-dir`.
pub const STATE_FILE: &str = "cni-ipam.json";

/// What the agent keeps per attachment, beside its addresses (in the IPAM state file).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: u32,
    pub netns: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: String,
    pub pod_mac: String,
    /// `namespace/name` of the Pod (K8S_POD_* in CNI_ARGS), when the runtime said.
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The veth's MTU when the agent set one (`mtu` of the configuration, or the tunnel's).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Made by another plugin before oxilium-cni in a chain: its veth, addresses and routes are
    /// that plugin's (see [`chain`]).
    #[serde(default)]
    pub chained: bool,
}

/// A request of the plugin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub env: Env,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<serde_json::Value>,
    #[serde(default)]
    pub valid: Option<Vec<Attachment>>,
}

pub struct CniAgent {
    ipam: Ipam<Endpoint>,
    progs: EndpointLb,
    nl: net::Netlink,
    /// The manifests folder, where Pods' labels are looked up.
    manifests: Option<PathBuf>,
    /// Pools from `--pod-cidr` (they win over the Node's podCIDRs).
    fixed_pools: bool,
    /// `--routing`: the routes to the other nodes' pods.
    pub router: Option<routing::Router>,
    /// The largest pod MTU (the tunnel's), when there is one.
    pub mtu_cap: Option<u32>,
    /// `--masquerade`: the endpoints are marked for it.
    pub masquerade: bool,
    /// The API source's Pods of this node (labels), when the source is the API server.
    pods: Option<k8s::api_source::PodStore>,
    /// Network policy of the endpoints (agent::node::policy).
    pub policy: crate::agent::node::policy::PolicyAgent,
    /// `--bandwidth-manager`: the pods' rates.
    pub bandwidth: Option<bandwidth::BandwidthManager>,
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').take(6).enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap_or(0);
    }
    m
}

fn failed(e: impl std::fmt::Display) -> CniError {
    CniError::new(code::AGENT_FAILED, e.to_string())
}

impl CniAgent {
    /// Opens the state, loads the endpoint programs and re-attaches them to the endpoints an
    /// earlier run made (their pinned links are pointed at this run's programs).
    pub async fn open(
        state_dir: &Path,
        pin_dir: &Path,
        pools: Vec<IpNetwork>,
        manifests: Option<PathBuf>,
        masquerade: bool,
        policy: impl FnOnce() -> Result<crate::agent::node::policy::PolicyAgent>,
    ) -> Result<CniAgent> {
        let fixed_pools = !pools.is_empty();
        let ipam = Ipam::open(&state_dir.join(STATE_FILE), pools)?;
        let progs = EndpointLb::load(pin_dir).context("loading the endpoint programs")?;
        // The endpoint object pinned the policy maps: the policy side opens them.
        let policy = policy()?;
        let nl = net::Netlink::connect()?;
        let mut a = CniAgent {
            ipam,
            progs,
            nl,
            manifests,
            fixed_pools,
            router: None,
            mtu_cap: None,
            masquerade,
            pods: None,
            policy,
            bandwidth: None,
        };
        let existing: Vec<(Vec<IpAddr>, Endpoint, String)> = a
            .ipam
            .entries()
            .map(|(att, e)| {
                (
                    e.addresses.clone(),
                    e.data.clone(),
                    att.container_id.clone(),
                )
            })
            .collect();
        for (addrs, ep, container) in existing {
            if ep.host_ifindex == 0 {
                continue;
            }
            match net::links::index(&a.nl, &ep.host_ifname).await? {
                Some(i) if i == ep.host_ifindex => {
                    a.progs.attach(&ep.host_ifname, i)?;
                    a.write_map(&addrs, &ep)?;
                    a.policy.endpoint_up(
                        ep.id,
                        ep.pod.as_deref(),
                        &container,
                        &ep.labels,
                        &addrs,
                    )?;
                }
                _ => warn!(device = %ep.host_ifname, "endpoint device gone; kept until DEL or GC"),
            }
        }
        Ok(a)
    }

    /// The API source's Pod store, where Pods' labels are looked up.
    pub fn set_pod_store(&mut self, pods: k8s::api_source::PodStore) {
        self.pods = Some(pods);
    }

    /// The Node's podCIDRs (unless `--pod-cidr` set the pools).
    pub fn set_node_pools(&mut self, cidrs: &[IpNetwork]) {
        if !self.fixed_pools && self.ipam.pools() != cidrs {
            info!(?cidrs, "pod CIDRs");
            self.ipam.set_pools(cidrs.to_vec());
        }
    }

    fn write_map(&mut self, addrs: &[IpAddr], ep: &Endpoint) -> Result<()> {
        for ip in addrs {
            self.progs.set(
                *ip,
                EndpointInfo {
                    ifindex: ep.host_ifindex,
                    id: ep.id,
                    identity: 0,
                    flags: if self.masquerade && !ep.chained {
                        abi::endpoint::FLAG_MASQUERADE
                    } else {
                        0
                    },
                    mac: parse_mac(&ep.pod_mac),
                    node_mac: parse_mac(&ep.host_mac),
                },
            )?;
        }
        Ok(())
    }

    /// ADD: addresses, the veth pair, the routes, the programs, the map entries.
    pub async fn add(&mut self, req: &Request) -> Result<CniResult, CniError> {
        if let Some(prev) = &req.prev_result {
            return self.add_chained(req, prev).await;
        }
        let env = &req.env;
        let att = env.attachment();
        let start = std::time::Instant::now();
        if let Some(e) = self.ipam.get(&att).cloned()
            && e.data.host_ifindex != 0
            && net::links::index(&self.nl, &e.data.host_ifname)
                .await
                .ok()
                .flatten()
                == Some(e.data.host_ifindex)
        {
            return Ok(result_of(env, &e.addresses, &e.data));
        }
        let id = self.next_id();
        let (pod, labels) = self.pod_labels(env);
        // Persisted with the endpoint's data below, before the answer (one write per ADD).
        let entry = self
            .ipam
            .reserve(&att, Endpoint::default())
            .map_err(|e| match e {
                cni::ipam::IpamError::Exhausted(_) => {
                    CniError::new(code::POOL_EXHAUSTED, e.to_string())
                }
                e => failed(e),
            })?;
        let ipam_done = start.elapsed();
        let mtu = match (req.mtu, self.mtu_cap) {
            (Some(m), Some(c)) => Some(m.min(c)),
            (m, c) => m.or(c),
        };
        let host = veth::host_name(&env.container_id, &env.ifname);
        let made = veth::make(
            &self.nl,
            &host,
            Path::new(&env.netns),
            &env.ifname,
            &entry.addresses,
            mtu,
        )
        .await;
        let made = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = self.ipam.release(&att);
                return Err(failed(format!("{e:#}")));
            }
        };
        let ep = Endpoint {
            id,
            netns: env.netns.clone(),
            host_ifname: host.clone(),
            host_ifindex: made.host_ifindex,
            host_mac: veth::mac_string(&made.host_mac),
            pod_mac: veth::mac_string(&made.pod_mac),
            pod,
            labels,
            mtu,
            chained: false,
        };
        let veth_done = start.elapsed();
        let done = (|| -> Result<()> {
            self.progs.attach(&host, made.host_ifindex)?;
            self.write_map(&entry.addresses, &ep)?;
            self.policy.endpoint_up(
                ep.id,
                ep.pod.as_deref(),
                &env.container_id,
                &ep.labels,
                &entry.addresses,
            )?;
            self.ipam.set_data(&att, ep.clone())?;
            self.sync_bandwidth();
            Ok(())
        })();
        if let Err(e) = done {
            self.teardown(&entry.addresses, &ep).await;
            let _ = self.ipam.release(&att);
            return Err(failed(format!("{e:#}")));
        }
        info!(
            container = %env.container_id, ifname = %env.ifname, addresses = ?entry.addresses,
            device = %host, ipam_us = ipam_done.as_micros() as u64,
            veth_us = (veth_done - ipam_done).as_micros() as u64,
            programs_us = (start.elapsed() - veth_done).as_micros() as u64,
            total_us = start.elapsed().as_micros() as u64, "endpoint added"
        );
        Ok(result_of(env, &entry.addresses, &ep))
    }

    fn next_id(&self) -> u32 {
        let used: BTreeSet<u32> = self.ipam.entries().map(|(_, e)| e.data.id).collect();
        (1..)
            .find(|i| !used.contains(i))
            .expect("fewer than 2^32 endpoints")
    }

    /// The Pod's labels from the manifests folder or the API source's Pod store (an endpoint
    /// without them is still made).
    fn pod_labels(&self, env: &Env) -> (Option<String>, BTreeMap<String, String>) {
        let (Some(ns), Some(name)) = (&env.pod_namespace, &env.pod_name) else {
            return (None, BTreeMap::new());
        };
        let key = format!("{ns}/{name}");
        if let Some(pods) = &self.pods {
            let labels = k8s::api_source::pod_labels(pods, ns, name);
            if labels.is_none() {
                warn!(pod = %key, "not in the API source's Pods (yet): no labels");
            }
            return (Some(key), labels.unwrap_or_default());
        }
        let labels = self
            .manifests
            .as_ref()
            .and_then(|dir| k8s::manifests::read_dir(dir).ok())
            .and_then(|m| {
                m.pods.into_iter().find_map(|(_, p)| {
                    let md = &p.metadata;
                    (md.namespace.as_deref().unwrap_or("default") == ns
                        && md.name.as_deref() == Some(name))
                    .then(|| md.labels.clone().unwrap_or_default())
                })
            })
            .unwrap_or_default();
        (Some(key), labels)
    }

    /// Removes the device, routes (with it), programs' pins and map entries.
    async fn teardown(&mut self, addrs: &[IpAddr], ep: &Endpoint) {
        if let Err(e) = self.policy.endpoint_down(ep.id) {
            warn!("{e:#}");
        }
        if let Some(b) = &mut self.bandwidth {
            b.clear(ep.host_ifindex, ep.pod.as_deref());
        }
        for ip in addrs {
            if let Err(e) = self.progs.remove(*ip, ep.host_ifindex) {
                warn!("{e:#}");
            }
        }
        if let Err(e) = self.progs.detach(&ep.host_ifname, ep.host_ifindex) {
            warn!("{e:#}");
        }
        if ep.chained {
            // The veth is the first plugin's.
            return;
        }
        if let Err(e) = veth::remove(&self.nl, &ep.host_ifname).await {
            warn!(device = %ep.host_ifname, "removing: {e:#}");
        }
    }

    /// DEL: idempotent; an unknown attachment is success.
    pub async fn del(&mut self, req: &Request) -> Result<(), CniError> {
        let att = req.env.attachment();
        match self.ipam.get(&att).cloned() {
            Some(e) => {
                self.teardown(&e.addresses, &e.data).await;
                self.ipam.release(&att).map_err(failed)?;
                info!(container = %att.container_id, ifname = %att.ifname, "endpoint deleted");
            }
            None => {
                let host = veth::host_name(&att.container_id, &att.ifname);
                let _ = veth::remove(&self.nl, &host).await;
            }
        }
        Ok(())
    }

    /// CHECK: the endpoint exists as ADD made it.
    pub async fn check(&mut self, req: &Request) -> Result<(), CniError> {
        let env = &req.env;
        let e = self.ipam.get(&env.attachment()).cloned().ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("no endpoint for {}/{}", env.container_id, env.ifname),
            )
        })?;
        let host = net::links::index(&self.nl, &e.data.host_ifname)
            .await
            .map_err(failed)?;
        if host != Some(e.data.host_ifindex) {
            return Err(failed(format!(
                "host device {} is missing",
                e.data.host_ifname
            )));
        }
        let have = veth::pod_addresses(Path::new(&env.netns), &env.ifname)
            .map_err(|e| failed(format!("{e:#}")))?
            .ok_or_else(|| failed(format!("{} is missing in {}", env.ifname, env.netns)))?;
        for ip in &e.addresses {
            if !have.contains(ip) {
                return Err(failed(format!("{} lacks {ip}", env.ifname)));
            }
            if self.progs.get(*ip).map(|i| i.ifindex) != Some(e.data.host_ifindex) {
                return Err(failed(format!("endpoint map entry of {ip} is missing")));
            }
        }
        if let Some(prev) = &req.prev_result {
            let prev = CniResult::parse(prev)
                .map_err(|m| CniError::new(code::INVALID_NETWORK_CONFIG, m))?;
            for a in prev.addresses_of(&env.ifname) {
                if !e.addresses.contains(&a.ip()) {
                    return Err(failed(format!(
                        "prevResult address {a} is not the endpoint's"
                    )));
                }
            }
        }
        Ok(())
    }

    /// GC: releases every attachment not in the valid list.
    pub async fn gc(&mut self, req: &Request) -> Result<usize, CniError> {
        let valid: BTreeSet<Attachment> =
            req.valid.clone().unwrap_or_default().into_iter().collect();
        let gone = self.ipam.retain(&valid).map_err(failed)?;
        for (att, e) in &gone {
            self.teardown(&e.addresses, &e.data).await;
            info!(container = %att.container_id, ifname = %att.ifname, "endpoint collected");
        }
        Ok(gone.len())
    }

    /// STATUS: ready when there is a pool to allocate from.
    pub fn status(&self) -> Result<(), CniError> {
        if self.ipam.pools().is_empty() {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                "no pod CIDR is configured on this node (Node.spec.podCIDRs or --pod-cidr)",
            ));
        }
        Ok(())
    }

    /// `endpoint list`.
    pub fn list(&self) -> serde_json::Value {
        self.ipam
            .entries()
            .map(|(a, e)| {
                serde_json::json!({
                    "id": e.data.id,
                    "container_id": a.container_id,
                    "ifname": a.ifname,
                    "addresses": e.addresses,
                    "pod": e.data.pod,
                    "labels": e.data.labels,
                    "device": e.data.host_ifname,
                    "ifindex": e.data.host_ifindex,
                    "mac": e.data.pod_mac,
                    "netns": e.data.netns,
                    "identity": self.progs.get(e.addresses[0]).map_or(0, |i| i.identity),
                    "chained": e.data.chained,
                    "policy": self.policy.summary(e.data.id),
                    "bandwidth": self.bandwidth.as_ref()
                        .map(|b| b.view(e.data.host_ifindex, e.data.pod.as_deref())),
                })
            })
            .collect()
    }
}

/// ADD's result: the pod interface and its addresses with the link-local gateways.
fn result_of(env: &Env, addrs: &[IpAddr], ep: &Endpoint) -> CniResult {
    let mut r = CniResult {
        interfaces: vec![
            result::Interface {
                name: ep.host_ifname.clone(),
                mac: ep.host_mac.clone(),
                sandbox: None,
                mtu: ep.mtu,
            },
            result::Interface {
                name: env.ifname.clone(),
                mac: ep.pod_mac.clone(),
                sandbox: Some(env.netns.clone()),
                mtu: ep.mtu,
            },
        ],
        ..Default::default()
    };
    for ip in addrs {
        let gw = if ip.is_ipv4() {
            veth::GATEWAY4
        } else {
            veth::GATEWAY6
        };
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        r.ips.push(result::IpConfig {
            address: IpNetwork::new(*ip, prefix).expect("full prefix"),
            gateway: Some(gw),
            interface: Some(1),
        });
        let any = if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
        r.routes.push(result::Route {
            dst: any.parse().expect("literal"),
            gw: Some(gw),
        });
    }
    r
}
