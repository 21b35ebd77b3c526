//! Kubernetes API objects → the compact forms the store keeps. Validation happens here once per
//! object change, so compiling a frontend never re-parses strings.
use crate::frontend::{Algorithm, ApiProtocol, IpNetwork, Mode, ObjectKey, intern};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::net::IpAddr;
use std::sync::Arc;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The node label naming its zone (topology hints).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Per-service load-balancing algorithm (Cilium's annotation): `maglev` or `random`.
pub const LB_ALGORITHM_ANNOTATION: &str = "service.cilium.io/lb-algorithm";
/// Per-service forwarding of external traffic to other nodes (Cilium's annotation): `snat` or
/// `dsr`.
pub const FORWARDING_MODE_ANNOTATION: &str = "service.cilium.io/forwarding-mode";
/// The legacy form of spec.loadBalancerSourceRanges, used when the field is empty.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
/// sessionAffinity ClientIP timeout when sessionAffinityConfig does not give one.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(a: &IpAddr) -> Family {
        if a.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

pub(crate) fn key_of(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or(""),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SvcType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(Clone, Debug)]
pub(crate) struct SvcPort {
    pub index: usize,
    pub name: Arc<str>,
    pub protocol: ApiProtocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// A Service as the store keeps it.
#[derive(Clone, Debug)]
pub(crate) struct Svc {
    pub key: ObjectKey,
    pub origin: Option<String>,
    /// Skipped as a whole, by design (headless, ExternalName, no cluster IP): the reason.
    pub skip: Option<String>,
    /// Rejected as a whole (invalid field): the error.
    pub error: Option<String>,
    pub ty: SvcType,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<SvcPort>,
    pub external_ips: Vec<IpAddr>,
    pub lb_ingress: Vec<IpAddr>,
    pub etp_local: bool,
    pub itp_local: bool,
    pub affinity_timeout: Option<u32>,
    pub source_ranges: Vec<IpNetwork>,
    pub health_check_node_port: Option<u16>,
    pub publish_not_ready: bool,
    pub algorithm: Option<Algorithm>,
    pub forwarding: Option<Mode>,
    /// Non-fatal remarks (ignored entries).
    pub notes: Vec<String>,
}

impl Svc {
    /// Gives back the room the conversion's pushes left.
    fn shrink(&mut self) {
        self.cluster_ips.shrink_to_fit();
        self.ports.shrink_to_fit();
        self.external_ips.shrink_to_fit();
        self.lb_ingress.shrink_to_fit();
        self.source_ranges.shrink_to_fit();
        self.notes.shrink_to_fit();
    }

    pub fn has_family(&self, f: Family) -> bool {
        self.cluster_ips.iter().any(|a| Family::of(a) == f)
    }
}

fn port_u16(v: i32, field: &str) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{field}: {v} is not a port (1-65535)"))
}

fn ip(s: &str, field: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{field}: {s:?} is not an IP address"))
}

pub(crate) fn service(s: &Service, origin: Option<String>) -> Svc {
    let mut svc = Svc {
        key: key_of(&s.metadata),
        origin,
        skip: None,
        error: None,
        ty: SvcType::ClusterIP,
        cluster_ips: Vec::new(),
        ports: Vec::new(),
        external_ips: Vec::new(),
        lb_ingress: Vec::new(),
        etp_local: false,
        itp_local: false,
        affinity_timeout: None,
        source_ranges: Vec::new(),
        health_check_node_port: None,
        publish_not_ready: false,
        algorithm: None,
        forwarding: None,
        notes: Vec::new(),
    };
    if let Err(e) = fill_service(s, &mut svc) {
        svc.error = Some(e);
    }
    svc.shrink();
    svc
}

/// The label naming the proxy that serves a Service: any value means another proxy does (kube-proxy
/// leaves such Services alone too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label the control plane puts on headless Services' objects; kube-proxy skips them.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

fn fill_service(s: &Service, svc: &mut Svc) -> Result<(), String> {
    let labels = s.metadata.labels.as_ref();
    if let Some(proxy) = labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL)) {
        svc.skip = Some(format!(
            "label {SERVICE_PROXY_NAME_LABEL}={proxy:?}: served by that proxy"
        ));
        return Ok(());
    }
    if labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
        svc.skip = Some(format!("headless (label {HEADLESS_LABEL})"));
        return Ok(());
    }
    let Some(spec) = &s.spec else {
        svc.skip = Some("no spec".into());
        return Ok(());
    };
    svc.ty = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => SvcType::ClusterIP,
        "NodePort" => SvcType::NodePort,
        "LoadBalancer" => SvcType::LoadBalancer,
        "ExternalName" => {
            svc.skip = Some("type ExternalName (DNS only, nothing to program)".into());
            return Ok(());
        }
        other => return Err(format!("spec.type: unknown type {other:?}")),
    };
    // spec.clusterIPs wins; spec.clusterIP is its first element in any valid object.
    let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(v), _) if !v.is_empty() => v.iter().map(String::as_str).collect(),
        (_, Some(one)) if !one.is_empty() => vec![one.as_str()],
        _ => {
            svc.skip = Some("no clusterIP allocated".into());
            return Ok(());
        }
    };
    if ips.contains(&"None") {
        svc.skip = Some("headless (clusterIP None)".into());
        return Ok(());
    }
    for (i, s) in ips.iter().enumerate() {
        let a = ip(s, &format!("spec.clusterIPs[{i}]"))?;
        if svc
            .cluster_ips
            .iter()
            .any(|b| Family::of(b) == Family::of(&a))
        {
            return Err(format!(
                "spec.clusterIPs[{i}]: two addresses of the same family"
            ));
        }
        svc.cluster_ips.push(a);
    }
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let protocol = ApiProtocol::parse(p.protocol.as_deref())
            .map_err(|e| format!("{field}.protocol: {e}"))?;
        let port = port_u16(p.port, &format!("{field}.port"))?;
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(port_u16(n, &format!("{field}.nodePort"))?),
        };
        svc.ports.push(SvcPort {
            index: i,
            name: intern(p.name.as_deref().unwrap_or_default()),
            protocol,
            port,
            node_port,
        });
    }
    for (i, s) in spec.external_ips.iter().flatten().enumerate() {
        svc.external_ips
            .push(ip(s, &format!("spec.externalIPs[{i}]"))?);
    }
    if svc.ty == SvcType::LoadBalancer {
        let ingress = s.status.as_ref().and_then(|st| st.load_balancer.as_ref());
        for (i, ing) in ingress
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let field = format!("status.loadBalancer.ingress[{i}]");
            match (&ing.ip, ing.ip_mode.as_deref()) {
                (None, _) => svc
                    .notes
                    .push(format!("{field}: no ip (hostname-only ingress is not programmed)")),
                (Some(_), Some("Proxy")) => svc.notes.push(format!(
                    "{field}: ipMode Proxy (the load balancer proxies; the ip is not programmed on nodes)"
                )),
                (Some(a), _) => svc.lb_ingress.push(ip(a, &format!("{field}.ip"))?),
            }
        }
        let ranges: Vec<String> = match &spec.load_balancer_source_ranges {
            Some(v) if !v.is_empty() => v.clone(),
            _ => s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
                .map(|v| {
                    v.split(',')
                        .map(|x| x.trim().to_string())
                        .filter(|x| !x.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        };
        for (i, r) in ranges.iter().enumerate() {
            let c = lb::model::parse_prefix(r)
                .map_err(|e| format!("spec.loadBalancerSourceRanges[{i}]: {e}"))?;
            svc.source_ranges.push(c);
        }
    }
    svc.etp_local = policy_local(
        spec.external_traffic_policy.as_deref(),
        "spec.externalTrafficPolicy",
    )?;
    svc.itp_local = policy_local(
        spec.internal_traffic_policy.as_deref(),
        "spec.internalTrafficPolicy",
    )?;
    if svc.etp_local
        && svc.ty == SvcType::LoadBalancer
        && let Some(n) = spec.health_check_node_port.filter(|n| *n != 0)
    {
        svc.health_check_node_port = Some(port_u16(n, "spec.healthCheckNodePort")?);
    }
    match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => {}
        "ClientIP" => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            svc.affinity_timeout = Some(match t {
                None => DEFAULT_AFFINITY_TIMEOUT,
                Some(t) if (1..=86400).contains(&t) => t as u32,
                Some(t) => {
                    return Err(format!(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} not in 1-86400"
                    ));
                }
            });
        }
        other => return Err(format!("spec.sessionAffinity: unknown value {other:?}")),
    }
    svc.publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let annotation = |name: &str| s.metadata.annotations.as_ref().and_then(|a| a.get(name));
    if let Some(a) = annotation(LB_ALGORITHM_ANNOTATION) {
        match a.parse() {
            Ok(alg) => svc.algorithm = Some(alg),
            Err(e) => svc.notes.push(format!(
                "annotation {LB_ALGORITHM_ANNOTATION}: {e}; using the default"
            )),
        }
    }
    if let Some(m) = annotation(FORWARDING_MODE_ANNOTATION) {
        match m.parse() {
            Ok(mode) => svc.forwarding = Some(mode),
            Err(e) => svc.notes.push(format!(
                "annotation {FORWARDING_MODE_ANNOTATION}: {e}; using the default"
            )),
        }
    }
    Ok(())
}

fn policy_local(v: Option<&str>, field: &str) -> Result<bool, String> {
    match v.unwrap_or("Cluster") {
        "Cluster" => Ok(false),
        "Local" => Ok(true),
        other => Err(format!(
            "{field}: unknown policy {other:?} (Cluster or Local)"
        )),
    }
}

#[derive(Clone, Debug)]
pub(crate) struct SlicePort {
    pub name: Arc<str>,
    pub protocol: ApiProtocol,
    pub port: Option<u16>,
}

#[derive(Clone, Debug)]
pub(crate) struct Ep {
    pub address: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// Topology hints (rare): None when there are none.
    pub hints: Option<Box<Hints>>,
}

/// An endpoint's topology hints: the zones and nodes it is meant for.
#[derive(Clone, Debug, Default)]
pub(crate) struct Hints {
    pub zones: Box<[Arc<str>]>,
    pub nodes: Box<[Arc<str>]>,
}

impl Ep {
    pub fn zone_hints(&self) -> &[Arc<str>] {
        self.hints.as_ref().map_or(&[], |h| &h.zones)
    }

    pub fn node_hints(&self) -> &[Arc<str>] {
        self.hints.as_ref().map_or(&[], |h| &h.nodes)
    }
}

/// An EndpointSlice as the store keeps it.
#[derive(Clone, Debug)]
pub(crate) struct Slice {
    pub key: ObjectKey,
    pub origin: Option<String>,
    /// The owning Service (label kubernetes.io/service-name), if any.
    pub service: Option<ObjectKey>,
    /// None for FQDN slices (ignored).
    pub family: Option<Family>,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Ep>,
    pub notes: Vec<String>,
}

pub(crate) fn endpoint_slice(s: &EndpointSlice, origin: Option<String>) -> Slice {
    let key = key_of(&s.metadata);
    let service = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|n| ObjectKey::new(key.namespace.clone(), n.clone()));
    let mut notes = Vec::new();
    if service.is_none() {
        notes.push(format!(
            "no {SERVICE_NAME_LABEL} label: belongs to no Service"
        ));
    }
    let family = match s.address_type.as_str() {
        "IPv4" => Some(Family::V4),
        "IPv6" => Some(Family::V6),
        other => {
            notes.push(format!("addressType {other}: ignored"));
            None
        }
    };
    let mut ports = Vec::new();
    for (i, p) in s.ports.iter().flatten().enumerate() {
        let protocol = match ApiProtocol::parse(p.protocol.as_deref()) {
            Ok(pr) => pr,
            Err(e) => {
                notes.push(format!("ports[{i}].protocol: {e}; port ignored"));
                continue;
            }
        };
        let port = match p.port {
            None => None,
            Some(v) => match port_u16(v, &format!("ports[{i}].port")) {
                Ok(v) => Some(v),
                Err(e) => {
                    notes.push(format!("{e}; port ignored"));
                    None
                }
            },
        };
        ports.push(SlicePort {
            name: intern(p.name.as_deref().unwrap_or_default()),
            protocol,
            port,
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in s.endpoints.iter().flatten().enumerate() {
        if family.is_none() {
            break;
        }
        // Addresses are fungible; like kube-proxy, use the first.
        let Some(first) = e.addresses.first() else {
            notes.push(format!("endpoints[{i}]: no address; ignored"));
            continue;
        };
        let address = match ip(first, &format!("endpoints[{i}].addresses[0]")) {
            Ok(a) if Some(Family::of(&a)) == family => a,
            Ok(_) => {
                notes.push(format!(
                    "endpoints[{i}].addresses[0]: {first} is not of the slice's addressType {}; ignored",
                    s.address_type
                ));
                continue;
            }
            Err(e) => {
                notes.push(format!("{e}; ignored"));
                continue;
            }
        };
        let c = e.conditions.as_ref();
        // API semantics: nil ready and nil serving mean true, nil terminating means false.
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let hints = e.hints.as_ref();
        endpoints.push(Ep {
            address,
            ready,
            serving: c.and_then(|c| c.serving).unwrap_or(true),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
            node: e.node_name.as_deref().map(intern),
            zone: e.zone.as_deref().map(intern),
            hints: hints
                .map(|h| Hints {
                    zones: h
                        .for_zones
                        .iter()
                        .flatten()
                        .map(|z| intern(&z.name))
                        .collect(),
                    nodes: h
                        .for_nodes
                        .iter()
                        .flatten()
                        .map(|n| intern(&n.name))
                        .collect(),
                })
                .filter(|h| !h.zones.is_empty() || !h.nodes.is_empty())
                .map(Box::new),
        });
    }
    ports.shrink_to_fit();
    endpoints.shrink_to_fit();
    notes.shrink_to_fit();
    Slice {
        key,
        origin,
        service,
        family,
        ports,
        endpoints,
        notes,
    }
}

mod nodes;
pub use nodes::NodeInfo;
pub(crate) use nodes::{PodInfo, node, pod};
