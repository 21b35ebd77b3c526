//! The service model, whatever the source (the edge LB config file, Kubernetes): frontends with
//! their backends, each backend with a weight and a state. Its protocol, algorithm, forwarding mode
//! and backend state enums are the only ones: the config and the Kubernetes source use them too.
use anyhow::Result;
use serde::Serialize;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    ops::Range,
    str::FromStr,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The name Kubernetes uses (`TCP`, `UDP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => abi::lb::PROTO_TCP,
            Protocol::Udp => abi::lb::PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            abi::lb::PROTO_TCP => Some(Protocol::Tcp),
            abi::lb::PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// How a service picks the backend of a new flow. The one type for every source (lb.yaml,
/// Kubernetes annotations and flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Consistent hashing of the flow into a Maglev table (`docs/maglev.md`).
    Maglev,
    /// A random backend slot per new flow.
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

/// How traffic from outside reaches a backend: the forwarding mode, one type for every source
/// (lb.yaml `mode`, the service.cilium.io/forwarding-mode annotation, the agent's --lb-mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// DNAT + SNAT to the LB's (node's) address; the reply comes back through it.
    #[default]
    Snat,
    /// Direct server return: tunnelled to the backend (its node), which answers the client itself.
    Dsr,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "snat" => Ok(Mode::Snat),
            "dsr" => Ok(Mode::Dsr),
            other => Err(format!("unknown forwarding mode {other:?} (snat or dsr)")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

/// Who a frontend serves: traffic from outside (XDP / tc on the node's devices) or from inside the
/// cluster or node (the socket LB).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    External,
    Internal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Takes new flows.
    Active,
    /// Failing its health check: out of new-flow selection, established flows stay.
    Quarantined,
    /// Shutting down: used only when no active backend is left (the terminating fallback).
    Terminating,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: BackendState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub frontend: Frontend,
    pub algorithm: Algorithm,
    pub mode: Mode,
    /// Maglev table size M (ignored for random).
    pub table_size: u32,
    pub conntrack_timeout_s: u32,
    pub scope: Scope,
    /// ClientIP session affinity (socket LB): how long a client keeps its backend, in seconds.
    pub affinity_timeout_s: Option<u32>,
    /// loadBalancerSourceRanges: the client prefixes admitted from outside (scope external only;
    /// empty = every client).
    pub source_ranges: Vec<IpNetwork>,
    pub backends: Vec<Backend>,
}

/// An address prefix (loadBalancerSourceRanges, CIDR identities): `ipnetwork`'s type, the one
/// prefix type of the project. A bare address parses as a host prefix.
pub use ipnetwork::IpNetwork;

/// Parses "a.b.c.d/n", "x::/n" or a bare address (a host prefix); the error says what is wrong.
pub fn parse_prefix(s: &str) -> Result<IpNetwork, String> {
    let s = s.trim();
    let (addr, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR (bad address)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = if len.is_empty() {
        max
    } else {
        len.parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?} is not a CIDR (bad prefix length)"))?
    };
    IpNetwork::new(ip, prefix).map_err(|e| format!("{s:?} is not a CIDR ({e})"))
}

/// Everything the LB datapath should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Model {
    pub maglev_seed: u32,
    pub services: Vec<Service>,
}

/// A change to some frontends of a model whose services are sorted by frontend, then scope (the
/// node agent's models are: see `agent::node::model_of`, in agent/node/services.rs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelDelta {
    /// The frontends changed: every service on them is replaced by those of `services` on them.
    pub frontends: BTreeSet<Frontend>,
    pub services: Vec<Service>,
}

impl Model {
    /// Where the services of `f` are, in a model sorted by frontend.
    pub fn range_of(&self, f: &Frontend) -> Range<usize> {
        let lo = self.services.partition_point(|s| s.frontend < *f);
        let n = self.services[lo..].partition_point(|s| s.frontend == *f);
        lo..lo + n
    }

    /// Applies `delta` to a model sorted by frontend, then scope, keeping that order; returns the
    /// services replaced. Cost: a binary search per frontend, and a shift of the services after
    /// it when the number of services on a frontend changes.
    pub fn patch(&mut self, delta: &ModelDelta) -> Vec<Service> {
        let mut by_frontend: BTreeMap<Frontend, Vec<Service>> = BTreeMap::new();
        for s in &delta.services {
            by_frontend.entry(s.frontend).or_default().push(s.clone());
        }
        let mut removed = Vec::new();
        for f in &delta.frontends {
            let mut new = by_frontend.remove(f).unwrap_or_default();
            new.sort_by_key(|s| s.scope);
            let range = self.range_of(f);
            if range.len() == new.len() {
                for (old, n) in self.services[range].iter_mut().zip(new) {
                    removed.push(std::mem::replace(old, n));
                }
            } else {
                removed.extend(self.services.splice(range, new));
            }
        }
        removed
    }
}
