//! The typed per-node result: frontends (what the datapath programs on one node) with their
//! backends. Independent of where the objects came from (API server or a manifests folder).
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub use lb::model::{Algorithm, BackendState, IpNetwork, Mode, Protocol};

/// Namespace and name of the object a frontend comes from (a Service, or a Pod for HostPort).
/// Both are shared strings: a key is copied into several indexes (the store, its per-Service
/// slice index, the folder's file records, the compiled frontends) and a copy costs no allocation;
/// namespaces are interned, so each is held once.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectKey {
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        ObjectKey {
            namespace: intern(namespace.as_ref()),
            name: Arc::from(name.as_ref()),
        }
    }
}

impl Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ObjectKey", 2)?;
        st.serialize_field("namespace", &*self.namespace)?;
        st.serialize_field("name", &*self.name)?;
        st.end()
    }
}

/// The one shared copy of a name of which there are few and many mentions: namespaces, node and
/// zone names, port names. The set only grows (a name no longer used keeps its few bytes).
pub(crate) fn intern(s: &str) -> Arc<str> {
    static NAMES: Mutex<BTreeSet<Arc<str>>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = names.get(s) {
        return a.clone();
    }
    let a: Arc<str> = Arc::from(s);
    names.insert(a.clone());
    a
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Kubernetes protocol string: TCP (the default when absent), UDP, or SCTP (not supported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApiProtocol {
    Supported(Protocol),
    Sctp,
}

impl ApiProtocol {
    pub(crate) fn parse(s: Option<&str>) -> Result<Self, String> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(ApiProtocol::Supported(Protocol::Tcp)),
            "UDP" => Ok(ApiProtocol::Supported(Protocol::Udp)),
            "SCTP" => Ok(ApiProtocol::Sctp),
            other => Err(format!("unknown protocol {other:?} (TCP, UDP or SCTP)")),
        }
    }
}

/// How a frontend is reached. Ordered as it is sorted in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FrontendType {
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalIP,
    HostPort,
}

impl FrontendType {
    /// Reached from outside the cluster (externalTrafficPolicy applies).
    pub fn is_external(self) -> bool {
        matches!(
            self,
            FrontendType::NodePort | FrontendType::LoadBalancer | FrontendType::ExternalIP
        )
    }
}

/// One backend of a frontend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    pub state: BackendState,
    /// The endpoint's node (spec nodeName), when known (shared: see [`intern`]).
    pub node: Option<Arc<str>>,
    /// The endpoint's zone, when known.
    pub zone: Option<Arc<str>>,
}

/// externalTrafficPolicy Local with spec.healthCheckNodePort: the node answers HTTP /healthz on this
/// port with the number of local ready endpoints (200 when > 0, 503 otherwise), as kube-proxy does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    pub service: ObjectKey,
    pub node_port: u16,
    pub local_endpoints: u32,
}

/// One frontend as the agent programs it on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// The Service (or, for HostPort, the Pod) it comes from.
    pub owner: ObjectKey,
    /// The Service port name (or the container port name for HostPort); may be empty.
    pub port_name: Arc<str>,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub kind: FrontendType,
    /// Backends for traffic from inside the cluster (pods and the node itself).
    pub backends: Vec<Backend>,
    /// Backends for traffic from outside the cluster, when they differ from `backends`
    /// (externalTrafficPolicy Local on NodePort, LoadBalancer and externalIPs).
    pub external_backends: Option<Vec<Backend>>,
    pub algorithm: Algorithm,
    /// Traffic from outside to backends on other nodes: SNAT or DSR.
    pub forwarding: Mode,
    /// sessionAffinity ClientIP: the affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// loadBalancerSourceRanges (LoadBalancer frontends only); empty = every source allowed.
    pub source_ranges: Vec<IpNetwork>,
    /// externalTrafficPolicy Local health check (external frontends of LoadBalancer services).
    pub health_check: Option<HealthCheck>,
}

impl Frontend {
    /// The order of the output: address, port, protocol, type, owner.
    pub fn sort_key(&self) -> (IpAddr, u16, Protocol, FrontendType, &ObjectKey, &str) {
        (
            self.address,
            self.port,
            self.protocol,
            self.kind,
            &self.owner,
            &self.port_name,
        )
    }
}

/// Something worth telling the user about that did not stop the computation: a skipped service or
/// port, an ignored field, or a service rejected as a whole (`error: true`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Note {
    /// The object concerned, as `kind namespace/name`.
    pub object: String,
    /// Where it was read from (file and line), when it came from a manifests folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub message: String,
    /// The object was rejected (nothing programmed for it), not just partly skipped.
    pub error: bool,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = if self.error { "error" } else { "note" };
        write!(f, "{level}: {}", self.object)?;
        if let Some(o) = &self.origin {
            write!(f, " ({o})")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse() {
        use lb::model::parse_prefix;
        let c = parse_prefix("10.0.0.0/8").unwrap();
        assert_eq!(c.prefix(), 8);
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(parse_prefix("2001:db8::/32").unwrap().prefix(), 32);
        assert_eq!(parse_prefix("192.0.2.1").unwrap().prefix(), 32);
        assert!(parse_prefix("10.0.0.0/33").is_err());
        assert!(parse_prefix("nope/8").is_err());
    }

    #[test]
    fn protocol_parse() {
        assert_eq!(
            ApiProtocol::parse(None),
            Ok(ApiProtocol::Supported(Protocol::Tcp))
        );
        assert_eq!(
            ApiProtocol::parse(Some("UDP")),
            Ok(ApiProtocol::Supported(Protocol::Udp))
        );
        assert_eq!(ApiProtocol::parse(Some("SCTP")), Ok(ApiProtocol::Sctp));
        assert!(ApiProtocol::parse(Some("tcp")).is_err());
    }

    #[test]
    fn algorithm_parse() {
        assert_eq!("maglev".parse(), Ok(Algorithm::Maglev));
        assert_eq!("random".parse(), Ok(Algorithm::Random));
        assert!("roundrobin".parse::<Algorithm>().is_err());
        assert_eq!("dsr".parse(), Ok(Mode::Dsr));
        assert_eq!("snat".parse(), Ok(Mode::Snat));
        assert!("hybrid".parse::<Mode>().is_err());
    }
}
