//! The policy objects of a manifests folder (Namespaces, Pods, NetworkPolicies, Cilium policies)
//! as typed objects. Parsing is strict; errors name the file and line of the object, the object and
//! the field path.
//!
//! This crate does no I/O and parses no YAML: the folder is read by the one manifests-folder reader,
//! `k8s::manifests::read_folder` (which walks it, parses multi-document YAML and JSON, flattens
//! `kind: List` and gives each object its file and line), and the caller (the binary's offline
//! `policy` commands, the tests) hands the objects over with [`Manifests::from_objects`]. policy
//! does not depend on k8s: that crate brings the Kubernetes client and its async runtime, which a
//! pure library has no use for.
use crate::api::cilium::CiliumPolicy;
use crate::api::k8s::{Namespace, NetworkPolicy, Pod};
use crate::endpoint_policy::NamedPorts;
use crate::engine::EndpointSpec;
use crate::rule::{PolicyRef, Rule};
use crate::translate;
use serde_json::Value;
use std::fmt::Display;

/// A bad object: where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub Box<FieldLocation>);

/// A bad field in one object: where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{origin} ({kind} {name}): {path}: {msg}")]
pub struct FieldLocation {
    /// File and line of the object, as the reader names them (`policies.yaml:12`).
    pub origin: String,
    pub kind: String,
    pub name: String,
    pub path: String,
    pub msg: String,
}

/// The policy objects found in a manifests folder.
#[derive(Debug, Default)]
pub struct Manifests {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<(PolicyRef, Vec<Rule>)>,
    /// `kind` of objects that are not policy-relevant (Deployments, Services, ...).
    pub ignored: Vec<String>,
    /// `Kind namespace/name` of each object read → where it was defined.
    seen: std::collections::HashMap<String, String>,
}

impl Manifests {
    /// The objects of a folder, in the reader's order: each a JSON mapping with `apiVersion` and
    /// `kind` (the items of a `kind: List` already taken out), with where it came from.
    pub fn from_objects<O: Display>(
        objects: impl IntoIterator<Item = (O, Value)>,
        cluster: &str,
    ) -> Result<Manifests, LoadError> {
        let mut m = Manifests::default();
        for (origin, v) in objects {
            m.add_object(&origin.to_string(), v, cluster)?;
        }
        Ok(m)
    }

    /// Adds one object; `origin` (file and line) names it in errors.
    pub fn add_object(&mut self, origin: &str, v: Value, cluster: &str) -> Result<(), LoadError> {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let (api, kind) = (s("apiVersion"), s("kind"));
        let name = v
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_string();
        let field = |path: String, msg: String| {
            LoadError(Box::new(FieldLocation {
                origin: origin.into(),
                kind: kind.clone(),
                name: name.clone(),
                path,
                msg,
            }))
        };
        let (path_ok, kind_ok) = (!api.is_empty(), !kind.is_empty());
        if !path_ok || !kind_ok {
            return Err(field(
                if path_ok {
                    "kind".into()
                } else {
                    "apiVersion".into()
                },
                "missing".into(),
            ));
        }
        if matches!(
            kind.as_str(),
            "CiliumNetworkPolicy"
                | "CiliumClusterwideNetworkPolicy"
                | "NetworkPolicy"
                | "Pod"
                | "Namespace"
        ) {
            let namespaced = !matches!(
                kind.as_str(),
                "CiliumClusterwideNetworkPolicy" | "Namespace"
            );
            let ns = v
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(|n| n.as_str())
                .unwrap_or("default");
            let id = if namespaced {
                format!("{kind} {ns}/{name}")
            } else {
                format!("{kind} {name}")
            };
            if let Some(first) = self.seen.get(&id) {
                return Err(field(
                    "metadata.name".into(),
                    format!("duplicate {id}: defined in {first} and in {origin}"),
                ));
            }
            self.seen.insert(id, origin.to_string());
        }
        match (api.as_str(), kind.as_str()) {
            ("v1", "Namespace") => self
                .namespaces
                .push(parse(v).map_err(|(p, m)| field(p, m))?),
            ("v1", "Pod") => self.pods.push(parse(v).map_err(|(p, m)| field(p, m))?),
            ("cilium.io/v2", "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy") => {
                let p: CiliumPolicy = parse(v).map_err(|(p, m)| field(p, m))?;
                self.policies
                    .push(translate::cilium_policy(&p, cluster).map_err(|e| field(e.path, e.msg))?);
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                let p: NetworkPolicy = parse(v).map_err(|(p, m)| field(p, m))?;
                self.policies
                    .push(crate::netpol::network_policy(&p).map_err(|e| field(e.path, e.msg))?);
            }
            (
                _,
                "CiliumNetworkPolicy"
                | "CiliumClusterwideNetworkPolicy"
                | "NetworkPolicy"
                | "Pod"
                | "Namespace",
            ) => {
                return Err(field(
                    "apiVersion".into(),
                    format!("unsupported apiVersion {api:?} for {kind}"),
                ));
            }
            _ => self.ignored.push(kind),
        }
        Ok(())
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        (
            if path == "." {
                "(top level)".into()
            } else {
                path
            },
            msg,
        )
    })
}

/// The engine's view of a pod.
pub fn endpoint_spec(p: &Pod) -> EndpointSpec {
    let mut ips: Vec<_> = p.status.pod_ip.into_iter().collect();
    for i in &p.status.pod_ips {
        if !ips.contains(&i.ip) {
            ips.push(i.ip);
        }
    }
    let mut ports = NamedPorts::new();
    for c in p.spec.containers.iter().chain(&p.spec.init_containers) {
        for cp in &c.ports {
            if let Some(n) = &cp.name {
                let proto = match cp.protocol.unwrap_or(crate::api::Protocol::Tcp) {
                    crate::api::Protocol::Any => crate::api::Protocol::Tcp,
                    p => p,
                };
                ports
                    .entry(n.clone())
                    .or_default()
                    .insert((cp.container_port, proto));
            }
        }
    }
    EndpointSpec {
        namespace: p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: p.metadata.name.clone(),
        labels: p.metadata.labels.clone(),
        service_account: p.spec.service_account_name.clone(),
        ips,
        ports,
        host_network: p.spec.host_network,
    }
}
