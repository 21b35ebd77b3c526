//! The normalized rule model every policy kind translates into: a subject selector, which directions it
//! puts under enforcement, and filters (peers × ports → allow, deny or L7).
use crate::api::Protocol;
use crate::api::cilium::{FqdnSelector, HttpRule};
use crate::cidr::Cidr;
use crate::selector::Selector;
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    NetworkPolicy,
}

/// Which object a rule came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{:?}/{ns}/{}", self.kind, self.name),
            None => write!(f, "{:?}/{}", self.kind, self.name),
        }
    }
}

/// Which ports a filter covers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSel {
    All,
    Range(u16, u16),
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub proto: Protocol,
    pub port: PortSel,
}

/// Layer-7 rules a redirect carries to the proxy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L7 {
    Http(Vec<HttpRule>),
    Dns(Vec<FqdnSelector>),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Allow,
    Deny,
    L7(Arc<L7>),
}

/// Peers × ports → action, in one direction. Empty `ports` means every port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub direction: Direction,
    /// A wildcard selector here means "any identity" (key identity 0).
    pub peers: Vec<Selector>,
    pub ports: Vec<PortSpec>,
    pub action: Action,
}

/// One normalized rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub origin: Arc<str>,
    /// Endpoints the rule applies to.
    pub subject: Selector,
    /// Does the rule put its subjects under default-deny in [ingress, egress]?
    pub enforces: [bool; 2],
    pub filters: Vec<Filter>,
    /// Prefixes named by the rule: each needs a CIDR identity while the rule exists.
    pub cidrs: Vec<Cidr>,
    /// Rules with a `nodeSelector` apply to nodes (host endpoints), not pods.
    pub applies_to_nodes: bool,
}

impl Rule {
    pub fn new(origin: &PolicyRef, subject: Selector) -> Rule {
        Rule {
            origin: Arc::from(origin.to_string()),
            subject,
            enforces: [false, false],
            filters: Vec::new(),
            cidrs: Vec::new(),
            applies_to_nodes: false,
        }
    }
}
