//! cilium.io/v2 CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy.
use super::{LabelSelector, ObjectMeta, Pattern, PortValue, Protocol};
use crate::cidr::Cidr;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// Both kinds share this shape; a clusterwide policy has no namespace and may use `nodeSelector`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CiliumPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<Rule>,
    #[serde(default)]
    pub specs: Option<Vec<Rule>>,
    #[serde(default)]
    pub status: Option<IgnoredAny>,
}

/// One rule: a subject (`endpointSelector` or `nodeSelector`) and its ingress/egress sections.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub endpoint_selector: Option<LabelSelector>,
    #[serde(default)]
    pub node_selector: Option<LabelSelector>,
    #[serde(default)]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default)]
    pub ingress_deny: Option<Vec<IngressDenyRule>>,
    #[serde(default)]
    pub egress: Option<Vec<EgressRule>>,
    #[serde(default)]
    pub egress_deny: Option<Vec<EgressDenyRule>>,
    #[serde(default)]
    pub enable_default_deny: Option<DefaultDeny>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: Option<Vec<RuleLabel>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    #[serde(default)]
    pub ingress: Option<bool>,
    #[serde(default)]
    pub egress: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleLabel {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
}

/// Named groups of identities.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    World,
    Cluster,
    Host,
    RemoteNode,
    KubeApiserver,
    Health,
    Init,
    Unmanaged,
    All,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrRule {
    pub cidr: Cidr,
    #[serde(default)]
    pub except: Vec<Cidr>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    #[serde(default)]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, rename = "fromCIDR")]
    pub from_cidr: Option<Vec<Cidr>>,
    #[serde(default, rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    pub from_entities: Option<Vec<Entity>>,
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressDenyRule {
    #[serde(default)]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, rename = "fromCIDR")]
    pub from_cidr: Option<Vec<Cidr>>,
    #[serde(default, rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    pub from_entities: Option<Vec<Entity>>,
    #[serde(default)]
    pub to_ports: Option<Vec<PortDenyRule>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    #[serde(default)]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, rename = "toCIDR")]
    pub to_cidr: Option<Vec<Cidr>>,
    #[serde(default, rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    pub to_entities: Option<Vec<Entity>>,
    #[serde(default, rename = "toFQDNs")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressDenyRule {
    #[serde(default)]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, rename = "toCIDR")]
    pub to_cidr: Option<Vec<Cidr>>,
    #[serde(default, rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    pub to_entities: Option<Vec<Entity>>,
    #[serde(default)]
    pub to_ports: Option<Vec<PortDenyRule>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRule {
    #[serde(default)]
    pub ports: Vec<PortProtocol>,
    #[serde(default)]
    pub rules: Option<L7Rules>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortDenyRule {
    #[serde(default)]
    pub ports: Vec<PortProtocol>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortProtocol {
    #[serde(default)]
    pub port: Option<PortValue>,
    #[serde(default)]
    pub end_port: Option<i64>,
    #[serde(default)]
    pub protocol: Option<Protocol>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L7Rules {
    #[serde(default)]
    pub http: Option<Vec<HttpRule>>,
    #[serde(default)]
    pub dns: Option<Vec<FqdnSelector>>,
}

/// An allowed HTTP request: every given field must match (regular expressions, whole value).
#[derive(
    Clone, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize,
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Pattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Pattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Pattern>,
    /// `Name` (present) or `Name: value` (exact value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_matches: Vec<HeaderMatch>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    /// What the proxy does on mismatch (LOG, ADD, DELETE, REPLACE); without it a mismatch denies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<Mismatch>,
}

#[derive(
    Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Mismatch {
    Log,
    Add,
    Delete,
    Replace,
}

/// `toFQDNs` and `rules.dns` entries: exactly one of matchName / matchPattern.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(try_from = "RawFqdn")]
pub enum FqdnSelector {
    #[serde(rename = "matchName")]
    MatchName(String),
    #[serde(rename = "matchPattern")]
    MatchPattern(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFqdn {
    #[serde(default)]
    match_name: Option<String>,
    #[serde(default)]
    match_pattern: Option<String>,
}

impl TryFrom<RawFqdn> for FqdnSelector {
    type Error = String;
    fn try_from(r: RawFqdn) -> Result<FqdnSelector, String> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.*".contains(&b))
        };
        match (r.match_name, r.match_pattern) {
            (Some(n), None) if ok(&n) && !n.contains('*') => Ok(FqdnSelector::MatchName(n)),
            (None, Some(p)) if ok(&p) => Ok(FqdnSelector::MatchPattern(p)),
            (Some(_), Some(_)) => Err("set one of matchName and matchPattern, not both".into()),
            (None, None) => Err("one of matchName or matchPattern is required".into()),
            (Some(n), None) => Err(format!("invalid matchName {n:?}")),
            (None, Some(p)) => Err(format!("invalid matchPattern {p:?}")),
        }
    }
}
