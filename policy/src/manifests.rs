//! Loading a folder of YAML manifests (multi-document files, `kind: List`) into typed objects. Policy
//! objects are parsed strictly; errors name the file, the document, the object and the field path.
use crate::api::cilium::CiliumPolicy;
use crate::api::k8s::{Namespace, NetworkPolicy, Pod};
use crate::endpoint_policy::NamedPorts;
use crate::engine::EndpointSpec;
use crate::rule::{PolicyRef, Rule};
use crate::translate;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: document {doc}: {msg}")]
    Yaml {
        file: String,
        doc: usize,
        msg: String,
    },
    #[error("{0}")]
    Field(Box<FieldLocation>),
}

/// A bad field in one document: where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: document {doc} ({kind} {name}): {path}: {msg}")]
pub struct FieldLocation {
    pub file: String,
    pub doc: usize,
    pub kind: String,
    pub name: String,
    pub path: String,
    pub msg: String,
}

/// The objects found in a manifests folder.
#[derive(Debug, Default)]
pub struct Manifests {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<(PolicyRef, Vec<Rule>)>,
    /// `kind` of documents that are not policy-relevant (Deployments, Services, ...).
    pub ignored: Vec<String>,
}

impl Manifests {
    /// Reads every `.yaml`, `.yml` and `.json` file under `dir` (recursively, in name order).
    pub fn load_dir(dir: &Path, cluster: &str) -> Result<Manifests, LoadError> {
        let mut files = Vec::new();
        collect(dir, &mut files)?;
        let mut m = Manifests::default();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|source| LoadError::Io {
                path: f.clone(),
                source,
            })?;
            m.add_str(&text, &f.display().to_string(), cluster)?;
        }
        Ok(m)
    }

    /// Adds the documents of one YAML stream; `file` names it in errors.
    pub fn add_str(&mut self, text: &str, file: &str, cluster: &str) -> Result<(), LoadError> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v = serde_yaml::Value::deserialize(doc).map_err(|e| LoadError::Yaml {
                file: file.into(),
                doc: i + 1,
                msg: e.to_string(),
            })?;
            self.add_value(v, file, i + 1, cluster)?;
        }
        Ok(())
    }

    fn add_value(
        &mut self,
        v: serde_yaml::Value,
        file: &str,
        doc: usize,
        cluster: &str,
    ) -> Result<(), LoadError> {
        if v.is_null() {
            return Ok(());
        }
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let (api, kind) = (s("apiVersion"), s("kind"));
        let name = v
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_string();
        let field = |path: String, msg: String| {
            LoadError::Field(Box::new(FieldLocation {
                file: file.into(),
                doc,
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
        match (api.as_str(), kind.as_str()) {
            ("v1", "List") => {
                if let Some(items) = v.get("items").and_then(|i| i.as_sequence()) {
                    for it in items.clone() {
                        self.add_value(it, file, doc, cluster)?;
                    }
                }
            }
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

fn parse<T: serde::de::DeserializeOwned>(v: serde_yaml::Value) -> Result<T, (String, String)> {
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

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let rd = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
        path: dir.into(),
        source,
    })?;
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(())
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
    }
}
