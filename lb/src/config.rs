//! The edge load balancer's config file, `lb.yaml`: parsing, defaults and whole-file validation.
//!
//! [`parse`] and [`load`] check the *entire* file before returning anything: every problem is collected
//! into one [`ConfigError::Invalid`], each naming the line and the field path, e.g.
//! `lb.yaml:14: services[2].backends[0].weight: must be 1..=65535, got 0`. A returned [`Config`] has every
//! default applied and every rule satisfied. docs/config.md is the user-facing reference.

mod conntrack;
mod decode;
pub mod duration;
mod fields;
pub mod limits;
mod yaml;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// The validated config file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Config {
    pub snat: Snat,
    pub conntrack: Conntrack,
    pub maglev_seed: u32,
    /// Size of the service maps: how many services the LB holds (read at start).
    pub max_services: u32,
    /// Size of the backend maps: how many backends, over all services (read at start).
    pub max_backends: u32,
    pub services: Vec<Service>,
}

/// The LB's own addresses and ports used for SNAT (and as the DSR tunnel source).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Snat {
    /// `None`: the agent picks the interface's IPv4 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    /// `None`: the agent picks the interface's IPv6 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// `None`: the agent picks the largest block outside its namespace's `ip_local_port_range`
    /// ([`PortRange::outside`]), so the host's own sockets never collide with SNAT'ed flows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// Size of the SNAT map (`OXI_SNAT`, an LRU: when full, the least recently used entry goes).
    pub max_entries: u32,
}

impl Default for Snat {
    fn default() -> Self {
        Snat {
            ipv4: None,
            ipv6: None,
            ports: None,
            max_entries: DEFAULT_MAP_ENTRIES,
        }
    }
}

pub use conntrack::{Conntrack, MAP_ENTRIES_RANGE, Timeouts};
/// Default size of the conntrack and SNAT maps.
pub const DEFAULT_MAP_ENTRIES: u32 = 262_144;

/// An inclusive port range, `min <= max`, both in 1..=65535. Written `min-max` in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    /// The lowest port an automatic SNAT range starts at (below are the well-known ports).
    pub const AUTO_MIN: u16 = 1024;

    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }

    pub fn len(&self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The part shared with `other`, if any.
    pub fn overlap(&self, other: &PortRange) -> Option<PortRange> {
        let (min, max) = (self.min.max(other.min), self.max.min(other.max));
        (min <= max).then_some(PortRange { min, max })
    }

    /// The largest block of 1024..=65535 outside every range of `excluded` (the host's ephemeral
    /// range from `ip_local_port_range`; on a node, the NodePort range too): the default SNAT
    /// range. `None` when no block of at least 1024 ports remains.
    pub fn outside(excluded: &[PortRange]) -> Option<PortRange> {
        let mut taken: Vec<PortRange> = excluded.to_vec();
        taken.sort_by_key(|r| r.min);
        let mut best: Option<PortRange> = None;
        let mut next = u32::from(Self::AUTO_MIN);
        let mut consider = |min: u32, max: u32| {
            if min <= max && max - min + 1 >= 1024 && best.is_none_or(|b| max - min + 1 > b.len()) {
                best = Some(PortRange {
                    min: min as u16,
                    max: max as u16,
                });
            }
        };
        for r in &taken {
            if u32::from(r.min) > next {
                consider(next, u32::from(r.min) - 1);
            }
            next = next.max(u32::from(r.max) + 1);
        }
        consider(next, u32::from(u16::MAX));
        best
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

pub use crate::model::{Algorithm, Mode, Protocol};

/// Built-in defaults, used where neither the service nor the file's `defaults:` says otherwise.
pub const DEFAULT_ALGORITHM: Algorithm = Algorithm::Maglev;
pub const DEFAULT_MODE: Mode = Mode::Snat;
pub const DEFAULT_PROTOCOL: Protocol = Protocol::Tcp;
pub const DEFAULT_TABLE_SIZE: u32 = 16381;
pub const DEFAULT_HC_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest health-check interval accepted.
pub const MIN_HC_INTERVAL: Duration = Duration::from_millis(10);
/// The health-check timeout defaults to this or half the interval, whichever is smaller.
pub const DEFAULT_HC_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Allowed Maglev table sizes (the value must also be prime).
pub const TABLE_SIZE_RANGE: std::ops::RangeInclusive<u32> = 251..=131071;

/// One virtual service: a VIP, port and protocol, and the backends behind it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub algorithm: Algorithm,
    pub mode: Mode,
    /// Maglev table size M: a prime in 251..=131071 (kept for `random` too, unused there).
    pub table_size: u32,
    /// Overrides the idle timeout of established TCP / replied UDP flows of this service
    /// (`None`: `conntrack.timeouts.tcp_established` / `udp_replied`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_some"
    )]
    pub conntrack_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// May be empty: the service then drops its traffic.
    pub backends: Vec<BackendCfg>,
}

/// One backend of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct BackendCfg {
    pub address: IpAddr,
    /// Defaults to the service port; in `dsr` mode always equal to it.
    pub port: u16,
    /// 1..=65535.
    pub weight: u16,
}

/// How a service's backends are probed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct HealthCheck {
    #[serde(flatten)]
    pub kind: HealthCheckKind,
    /// `None`: probe each backend's own port (see [`HealthCheck::port_for`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(serialize_with = "duration::serialize")]
    pub interval: Duration,
    /// Always less than `interval`.
    #[serde(serialize_with = "duration::serialize")]
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy backend healthy (≥ 1).
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy backend unhealthy (≥ 1).
    pub unhealthy_threshold: u32,
}

impl HealthCheck {
    /// The port probed on `backend`: the check's `port`, else the backend's port.
    pub fn port_for(&self, backend: &BackendCfg) -> u16 {
        self.port.unwrap_or(backend.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// Success: a TCP connection is established within the timeout.
    Tcp,
    /// Success: `GET path` answers `expect_status`, or any 2xx when `None`, within the timeout.
    Http {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        expect_status: Option<u16>,
    },
}

/// One problem found in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// 1-based line in the file.
    pub line: usize,
    /// Field path such as `services[2].backends[0].weight`; empty for a YAML syntax error.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.line, self.message)
        } else {
            write!(f, "{}: {}: {}", self.line, self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem in the file, sorted by line. Displays one `file:line: path: message` per line.
    #[error("{}", render(file, issues))]
    Invalid { file: String, issues: Vec<Issue> },
}

impl ConfigError {
    /// The problems found (empty for a read error).
    pub fn issues(&self) -> &[Issue] {
        match self {
            ConfigError::Invalid { issues, .. } => issues,
            ConfigError::Read { .. } => &[],
        }
    }
}

fn render(file: &str, issues: &[Issue]) -> String {
    let lines: Vec<String> = issues.iter().map(|i| format!("{file}:{i}")).collect();
    lines.join("\n")
}

/// Parse and validate config text; errors are attributed to `<config>`.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_named("<config>", text)
}

/// Like [`parse`], with `file` used as the name in error messages.
pub fn parse_named(file: &str, text: &str) -> Result<Config, ConfigError> {
    let issues = |mut issues: Vec<Issue>| {
        issues.sort_by_key(|i| i.line);
        ConfigError::Invalid {
            file: file.to_string(),
            issues,
        }
    };
    let root = yaml::parse(text).map_err(|e| {
        issues(vec![Issue {
            line: e.line,
            path: String::new(),
            message: format!("YAML syntax error: {}", e.message),
        }])
    })?;
    decode::config(root.as_ref()).map_err(issues)
}

/// Read and validate the file at `path`; errors name the path as given.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_named(&path.display().to_string(), &text)
}

/// Write `config` as YAML that [`parse`] reads back to an equal `Config` (all defaults spelled out).
pub fn to_yaml(config: &Config) -> String {
    serde_saphyr::to_string(config).expect("Config always serialises")
}
