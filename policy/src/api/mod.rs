//! The policy language as written in manifests: strict serde types (unknown fields are errors, and
//! errors carry the field path) for CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy, Kubernetes
//! NetworkPolicy, and the parts of Pods and Namespaces that identities need.
pub mod cilium;
pub mod k8s;

use serde::Deserialize;
use serde::de::{self, IgnoredAny};
use std::collections::BTreeMap;
use std::fmt;

/// Object metadata of policy objects. Bookkeeping fields the API server adds are accepted and ignored.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub uid: Option<IgnoredAny>,
    #[serde(default)]
    pub resource_version: Option<IgnoredAny>,
    #[serde(default)]
    pub generation: Option<IgnoredAny>,
    #[serde(default)]
    pub creation_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    pub managed_fields: Option<IgnoredAny>,
    #[serde(default)]
    pub finalizers: Option<IgnoredAny>,
    #[serde(default)]
    pub owner_references: Option<IgnoredAny>,
    #[serde(default)]
    pub self_link: Option<IgnoredAny>,
}

/// A Kubernetes label selector.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Expression>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One `matchExpressions` entry; In/NotIn need values, Exists/DoesNotExist must have none.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(try_from = "RawExpression")]
pub struct Expression {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpression {
    key: String,
    operator: Operator,
    #[serde(default)]
    values: Vec<String>,
}

impl TryFrom<RawExpression> for Expression {
    type Error = String;
    fn try_from(r: RawExpression) -> Result<Expression, String> {
        match r.operator {
            Operator::In | Operator::NotIn if r.values.is_empty() => Err(format!(
                "operator {:?} on key {:?} needs values",
                r.operator, r.key
            )),
            Operator::Exists | Operator::DoesNotExist if !r.values.is_empty() => Err(format!(
                "operator {:?} on key {:?} takes no values",
                r.operator, r.key
            )),
            _ => Ok(Expression {
                key: r.key,
                operator: r.operator,
                values: r.values,
            }),
        }
    }
}

/// A port: a number 0-65535 (0 = every port) or a named container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortValue {
    Number(u16),
    Name(String),
}

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<PortValue, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PortValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number 0-65535 or a port name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortValue, E> {
                u16::try_from(v)
                    .map(PortValue::Number)
                    .map_err(|_| E::custom(format!("port {v} is out of range 0-65535")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortValue, E> {
                u16::try_from(v)
                    .map(PortValue::Number)
                    .map_err(|_| E::custom(format!("port {v} is out of range 0-65535")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PortValue, E> {
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                    return s
                        .parse::<u64>()
                        .map_err(E::custom)
                        .and_then(|v| self.visit_u64(v));
                }
                let ok = !s.is_empty()
                    && s.len() <= 15
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && s.bytes().any(|b| b.is_ascii_lowercase())
                    && !s.starts_with('-')
                    && !s.ends_with('-');
                if ok {
                    Ok(PortValue::Name(s.to_string()))
                } else {
                    Err(E::custom(format!(
                        "invalid port {s:?}: not a number 0-65535 nor a port name"
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// L4 protocol of a port rule.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Protocol {
    #[default]
    #[serde(rename = "ANY")]
    Any,
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// IP protocol number; 0 for any.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Any => 0,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub fn from_number(n: u8) -> Option<Protocol> {
        Some(match n {
            0 => Protocol::Any,
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Any => "ANY",
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_uppercase().as_str() {
            "ANY" => Protocol::Any,
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            _ => return None,
        })
    }
}

/// A regular expression from a policy, matched against the whole input.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub source: String,
    re: regex::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, String> {
        let re = regex::Regex::new(&format!("^(?:{source})$"))
            .map_err(|e| format!("invalid regular expression {source:?}: {e}"))?;
        Ok(Pattern {
            source: source.to_string(),
            re,
        })
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.re.is_match(s)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, o: &Pattern) -> bool {
        self.source == o.source
    }
}
impl Eq for Pattern {}
impl PartialOrd for Pattern {
    fn partial_cmp(&self, o: &Pattern) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pattern {
    fn cmp(&self, o: &Pattern) -> std::cmp::Ordering {
        self.source.cmp(&o.source)
    }
}
impl std::hash::Hash for Pattern {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.source.hash(h)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Pattern, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::new(&s).map_err(de::Error::custom)
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_numbers_and_names() {
        let p: PortValue = serde_json::from_str("\"80\"").unwrap();
        assert_eq!(p, PortValue::Number(80));
        let p: PortValue = serde_json::from_str("8080").unwrap();
        assert_eq!(p, PortValue::Number(8080));
        let p: PortValue = serde_json::from_str("\"http-alt\"").unwrap();
        assert_eq!(p, PortValue::Name("http-alt".into()));
        assert!(serde_json::from_str::<PortValue>("70000").is_err());
        assert!(serde_json::from_str::<PortValue>("\"Not_A_Name\"").is_err());
    }

    #[test]
    fn expressions_are_validated() {
        let e: Result<Expression, _> = serde_json::from_str(r#"{"key": "a", "operator": "In"}"#);
        assert!(e.unwrap_err().to_string().contains("needs values"));
        let e: Result<Expression, _> =
            serde_json::from_str(r#"{"key": "a", "operator": "Exists", "values": ["x"]}"#);
        assert!(e.is_err());
        let e: Result<Expression, _> = serde_json::from_str(r#"{"key": "a", "operator": "Foo"}"#);
        assert!(e.is_err());
    }

    #[test]
    fn patterns_are_anchored() {
        let p = Pattern::new("/v1/request-landing").unwrap();
        assert!(p.is_match("/v1/request-landing"));
        assert!(!p.is_match("/v1/request-landing/x"));
        assert!(Pattern::new("(").is_err());
    }
}
