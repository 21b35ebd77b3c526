//! The typed per-node result: frontends (what the datapath programs on one node) with their
//! backends. Independent of where the objects came from (API server or a manifests folder).
use serde::Serialize;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Namespace and name of the object a frontend comes from (a Service, or a Pod for HostPort).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Ready: takes new flows.
    Active,
    /// Serving but terminating, used only because no ready endpoint exists (the terminating fallback).
    Terminating,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Maglev,
    Random,
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "maglev" => Ok(Algorithm::Maglev),
            "random" => Ok(Algorithm::Random),
            other => Err(format!("unknown algorithm {other:?} (maglev or random)")),
        }
    }
}

/// How traffic from outside reaches a backend on another node (the service.cilium.io/
/// forwarding-mode annotation, or the agent's --lb-mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// DNAT + SNAT to the node's address; the reply comes back through this node.
    #[default]
    Snat,
    /// Direct server return: tunnelled to the backend's node, which answers the client itself.
    Dsr,
}

impl FromStr for Forwarding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "snat" => Ok(Forwarding::Snat),
            "dsr" => Ok(Forwarding::Dsr),
            other => Err(format!("unknown forwarding mode {other:?} (snat or dsr)")),
        }
    }
}

/// One backend of a frontend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    pub state: BackendState,
    /// The endpoint's node (spec nodeName), when known.
    pub node: Option<String>,
    /// The endpoint's zone, when known.
    pub zone: Option<String>,
}

/// An address prefix (loadBalancerSourceRanges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let address: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR (bad address)"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?} is not a CIDR (bad prefix length)"))?,
        };
        Ok(Cidr {
            address,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
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
    pub port_name: String,
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
    pub forwarding: Forwarding,
    /// sessionAffinity ClientIP: the affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// loadBalancerSourceRanges (LoadBalancer frontends only); empty = every source allowed.
    pub source_ranges: Vec<Cidr>,
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
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!(c.prefix_len, 8);
        assert_eq!(c.to_string(), "10.0.0.0/8");
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert_eq!(c.prefix_len, 32);
        let c: Cidr = "192.0.2.1".parse().unwrap();
        assert_eq!(c.prefix_len, 32);
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
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
        assert_eq!("dsr".parse(), Ok(Forwarding::Dsr));
        assert_eq!("snat".parse(), Ok(Forwarding::Snat));
        assert!("hybrid".parse::<Forwarding>().is_err());
    }
}
