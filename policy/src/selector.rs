//! Label selectors in canonical form (sorted requirements, so equal selectors hash equal and the
//! selector cache stores each once) and DNS-name selectors.
use crate::labels::{Labels, Source};
use std::collections::BTreeSet;
use std::fmt;

/// The test a requirement applies to one label key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

/// One requirement on one label key; `source` may be [`Source::Any`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub source: Source,
    pub key: String,
    pub op: Op,
}

impl Requirement {
    /// `key` may carry a source prefix (`k8s:app`); without one any source matches.
    pub fn new(key: &str, op: Op) -> Requirement {
        let (src, key) = Source::split(key);
        Requirement {
            source: src.unwrap_or(Source::Any),
            key: key.to_string(),
            op,
        }
    }

    pub fn eq(key: &str, value: &str) -> Requirement {
        Self::new(key, Op::In([value.to_string()].into()))
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let mut vals = labels.values(self.source, &self.key).peekable();
        match &self.op {
            Op::In(set) => vals.any(|v| set.contains(v)),
            Op::NotIn(set) => !vals.any(|v| set.contains(v)),
            Op::Exists => vals.peek().is_some(),
            Op::DoesNotExist => vals.peek().is_none(),
        }
    }
}

/// A DNS name selector (`toFQDNs`): exact name or a `*` pattern (`*` stays within one DNS label; a lone
/// `*` matches every name). Matches identities carrying an `fqdn:` label with such a name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FqdnMatch {
    Name(String),
    Pattern(String),
}

impl From<&crate::api::cilium::FqdnSelector> for FqdnMatch {
    fn from(s: &crate::api::cilium::FqdnSelector) -> FqdnMatch {
        match s {
            crate::api::cilium::FqdnSelector::MatchName(n) => FqdnMatch::Name(n.clone()),
            crate::api::cilium::FqdnSelector::MatchPattern(p) => FqdnMatch::Pattern(p.clone()),
        }
    }
}

impl FqdnMatch {
    pub fn matches_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            FqdnMatch::Name(n) => n.trim_end_matches('.').eq_ignore_ascii_case(&name),
            FqdnMatch::Pattern(p) => {
                let p = p.trim_end_matches('.').to_ascii_lowercase();
                p == "*" || glob(p.as_bytes(), name.as_bytes())
            }
        }
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => {
            let mut i = 0;
            loop {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i == s.len() || s[i] == b'.' {
                    return false;
                }
                i += 1;
            }
        }
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// A selector over identities.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Selector {
    /// All requirements must hold; no requirements selects every identity.
    Labels(Vec<Requirement>),
    Fqdn(FqdnMatch),
}

impl Selector {
    /// Builds a canonical selector: requirements sorted and deduplicated.
    pub fn from_requirements(mut reqs: Vec<Requirement>) -> Selector {
        reqs.sort();
        reqs.dedup();
        Selector::Labels(reqs)
    }

    pub fn wildcard() -> Selector {
        Selector::Labels(Vec::new())
    }

    /// `matchLabels`-style selector from `key=value` pairs.
    pub fn match_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Selector {
        Self::from_requirements(
            pairs
                .into_iter()
                .map(|(k, v)| Requirement::eq(k, v))
                .collect(),
        )
    }

    /// Adds a requirement, keeping the canonical form.
    pub fn and(self, r: Requirement) -> Selector {
        match self {
            Selector::Labels(mut v) => {
                v.push(r);
                Self::from_requirements(v)
            }
            s @ Selector::Fqdn(_) => s,
        }
    }

    pub fn is_wildcard(&self) -> bool {
        matches!(self, Selector::Labels(v) if v.is_empty())
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Selector::Labels(reqs) => reqs.iter().all(|r| r.matches(labels)),
            Selector::Fqdn(m) => labels
                .iter()
                .any(|(s, k, _)| s == Source::Fqdn && m.matches_name(k)),
        }
    }

    /// A `key=value` every selected identity must carry, if there is one: the selector cache indexes
    /// selectors by it so that a new identity is tested only against selectors that can match it.
    pub fn index_label(&self) -> Option<(&str, &str)> {
        let Selector::Labels(reqs) = self else {
            return None;
        };
        reqs.iter().find_map(|r| match &r.op {
            Op::In(set) if set.len() == 1 => Some((r.key.as_str(), set.iter().next()?.as_str())),
            _ => None,
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Fqdn(FqdnMatch::Name(n)) => write!(f, "fqdn={n}"),
            Selector::Fqdn(FqdnMatch::Pattern(p)) => write!(f, "fqdn~{p}"),
            Selector::Labels(reqs) if reqs.is_empty() => write!(f, "*"),
            Selector::Labels(reqs) => {
                let parts: Vec<String> = reqs
                    .iter()
                    .map(|r| {
                        let k = format!("{}:{}", r.source.as_str(), r.key);
                        let join =
                            |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
                        match &r.op {
                            Op::In(s) if s.len() == 1 => format!("{k}={}", join(s)),
                            Op::In(s) => format!("{k} in ({})", join(s)),
                            Op::NotIn(s) => format!("{k} notin ({})", join(s)),
                            Op::Exists => k,
                            Op::DoesNotExist => format!("!{k}"),
                        }
                    })
                    .collect();
                write!(f, "{}", parts.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn star_wars_selection() {
        let ds = Labels::parse(["k8s:org=empire", "k8s:class=deathstar"]);
        let tf = Labels::parse(["k8s:org=empire", "k8s:class=tiefighter"]);
        let xw = Labels::parse(["k8s:org=alliance", "k8s:class=xwing"]);
        let empire = Selector::match_labels([("org", "empire")]);
        assert!(empire.matches(&ds) && empire.matches(&tf) && !empire.matches(&xw));
        let death = Selector::match_labels([("org", "empire"), ("class", "deathstar")]);
        assert!(death.matches(&ds) && !death.matches(&tf));
    }

    #[test]
    fn expressions_and_sources() {
        let l = Labels::parse(["k8s:app=web", "reserved:host"]);
        assert!(Requirement::new("app", Op::In(set(&["web", "api"]))).matches(&l));
        assert!(!Requirement::new("app", Op::NotIn(set(&["web"]))).matches(&l));
        assert!(Requirement::new("tier", Op::NotIn(set(&["x"]))).matches(&l));
        assert!(Requirement::new("reserved:host", Op::Exists).matches(&l));
        assert!(!Requirement::new("k8s:host", Op::Exists).matches(&l));
        assert!(Requirement::new("tier", Op::DoesNotExist).matches(&l));
        assert!(Selector::wildcard().matches(&l));
    }

    #[test]
    fn canonical_form_dedups() {
        let a = Selector::match_labels([("a", "1"), ("b", "2")]);
        let b = Selector::match_labels([("b", "2"), ("a", "1"), ("a", "1")]);
        assert_eq!(a, b);
        assert_eq!(a.index_label(), Some(("a", "1")));
        assert_eq!(Selector::wildcard().index_label(), None);
    }

    #[test]
    fn fqdn_patterns() {
        let p = FqdnMatch::Pattern("*.empire.org".into());
        assert!(p.matches_name("cantina.empire.org."));
        assert!(!p.matches_name("a.b.empire.org"));
        assert!(FqdnMatch::Pattern("*".into()).matches_name("a.b.c"));
        assert!(FqdnMatch::Name("Cantina.Empire".into()).matches_name("cantina.empire"));
        let sel = Selector::Fqdn(FqdnMatch::Name("cantina.empire".into()));
        assert!(sel.matches(&Labels::parse(["fqdn:cantina.empire", "cidr:192.0.2.3/32"])));
    }
}
