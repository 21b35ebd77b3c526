//! Labels with a source (`k8s:`, `reserved:`, `cidr:`, `fqdn:`), label sets, and the filter that decides
//! which labels are relevant to a workload's identity.
use std::collections::BTreeMap;
use std::fmt;

/// Where a label comes from. Selectors may name a source (`k8s:app`) or match any source (`app`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Kubernetes pod and namespace labels.
    K8s,
    /// Labels of the reserved identities (`reserved:host`, `reserved:world`, ...).
    Reserved,
    /// Prefix labels of CIDR identities (`cidr:10.0.0.0/8`).
    Cidr,
    /// DNS names an address was learnt from (`fqdn:api.example.com`).
    Fqdn,
    /// Only in selectors: matches a label of any source.
    Any,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::K8s => "k8s",
            Source::Reserved => "reserved",
            Source::Cidr => "cidr",
            Source::Fqdn => "fqdn",
            Source::Any => "any",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        Some(match s {
            "k8s" => Source::K8s,
            "reserved" => Source::Reserved,
            "cidr" => Source::Cidr,
            "fqdn" => Source::Fqdn,
            "any" => Source::Any,
            _ => return None,
        })
    }

    /// Splits `source:key` when the prefix names a known source; otherwise the whole string is the key.
    pub fn split(s: &str) -> (Option<Source>, &str) {
        if let Some((src, rest)) = s.split_once(':')
            && let Some(src) = Source::parse(src)
        {
            return (Some(src), rest);
        }
        (None, s)
    }
}

/// One label: source, key and (possibly empty) value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub source: Source,
    pub key: String,
    pub value: String,
}

impl Label {
    pub fn new(source: Source, key: impl Into<String>, value: impl Into<String>) -> Label {
        Label {
            source,
            key: key.into(),
            value: value.into(),
        }
    }

    /// Parses `source:key=value`, `key=value` (source k8s) or `source:key`.
    pub fn parse(s: &str) -> Label {
        let (src, rest) = Source::split(s);
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        Label::new(src.unwrap_or(Source::K8s), key, value)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.source.as_str(), self.key)
        } else {
            write!(f, "{}:{}={}", self.source.as_str(), self.key, self.value)
        }
    }
}

/// A set of labels, at most one value per (source, key), kept sorted so that equal sets compare and
/// hash equal: the label set is the identity's key.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(BTreeMap<(Source, String), String>);

impl Labels {
    pub fn new() -> Labels {
        Labels::default()
    }

    pub fn insert(&mut self, l: Label) {
        self.0.insert((l.source, l.key), l.value);
    }

    pub fn with(mut self, source: Source, key: &str, value: &str) -> Labels {
        self.insert(Label::new(source, key, value));
        self
    }

    /// Parses a list such as `["k8s:org=empire", "reserved:host"]`.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Labels {
        let mut l = Labels::new();
        for s in items {
            l.insert(Label::parse(s));
        }
        l
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `key`, from `source` or, for [`Source::Any`], from any source.
    pub fn get(&self, source: Source, key: &str) -> Option<&str> {
        if source != Source::Any {
            return self.0.get(&(source, key.to_string())).map(String::as_str);
        }
        self.0
            .iter()
            .find(|((_, k), _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value `key` has, across sources (used by `Any` selectors).
    pub fn values<'a>(
        &'a self,
        source: Source,
        key: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |((s, k), _)| k == key && (source == Source::Any || *s == source))
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (Source, &str, &str)> {
        self.0
            .iter()
            .map(|((s, k), v)| (*s, k.as_str(), v.as_str()))
    }

    pub fn has_source(&self, source: Source) -> bool {
        self.0.keys().any(|(s, _)| *s == source)
    }

    /// The labels as `source:key=value` strings, sorted.
    pub fn to_strings(&self) -> Vec<String> {
        self.iter()
            .map(|(s, k, v)| Label::new(s, k, v).to_string())
            .collect()
    }
}

impl FromIterator<Label> for Labels {
    fn from_iter<T: IntoIterator<Item = Label>>(iter: T) -> Labels {
        let mut l = Labels::new();
        for x in iter {
            l.insert(x);
        }
        l
    }
}

impl serde::Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.to_strings())
    }
}

/// Well-known label keys.
pub mod keys {
    /// The pod's namespace; added to every pod identity.
    pub const NAMESPACE: &str = "io.kubernetes.pod.namespace";
    /// Prefix under which the namespace's own labels are copied into pod identities.
    pub const NAMESPACE_LABELS: &str = "io.cilium.k8s.namespace.labels.";
    /// The cluster the pod belongs to (selects "cluster" entity pods).
    pub const CLUSTER: &str = "io.cilium.k8s.policy.cluster";
    /// The pod's service account.
    pub const SERVICE_ACCOUNT: &str = "io.cilium.k8s.policy.serviceaccount";
}

/// Decides which pod labels take part in identity. Labels that differ between replicas of one workload
/// (pod-template-hash and friends) would otherwise give every rollout a new identity.
#[derive(Clone, Debug)]
pub struct LabelFilter {
    /// Keys dropped; an entry ending in `*` drops every key with that prefix.
    pub exclude: Vec<String>,
}

impl Default for LabelFilter {
    fn default() -> LabelFilter {
        let keys = [
            "pod-template-hash",
            "controller-revision-hash",
            "pod-template-generation",
            "statefulset.kubernetes.io/pod-name",
            "apps.kubernetes.io/pod-index",
            "controller-uid",
            "batch.kubernetes.io/controller-uid",
            "job-name",
            "batch.kubernetes.io/job-name",
            "batch.kubernetes.io/job-completion-index",
        ];
        LabelFilter {
            exclude: keys.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl LabelFilter {
    /// A filter that keeps everything.
    pub fn none() -> LabelFilter {
        LabelFilter {
            exclude: Vec::new(),
        }
    }

    pub fn keeps(&self, key: &str) -> bool {
        !self.exclude.iter().any(|e| match e.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => e == key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let l = Label::parse("k8s:org=empire");
        assert_eq!(l, Label::new(Source::K8s, "org", "empire"));
        assert_eq!(Label::parse("reserved:host").to_string(), "reserved:host");
        assert_eq!(Label::parse("app=x").source, Source::K8s);
        // A colon that is not a source stays in the key.
        assert_eq!(Label::parse("foo:bar=1").key, "foo:bar");
    }

    #[test]
    fn sets_compare_equal_regardless_of_order() {
        let a = Labels::parse(["k8s:a=1", "k8s:b=2"]);
        let b = Labels::parse(["k8s:b=2", "k8s:a=1"]);
        assert_eq!(a, b);
        assert_eq!(a.get(Source::Any, "b"), Some("2"));
        assert_eq!(a.get(Source::Reserved, "b"), None);
    }

    #[test]
    fn filter_drops_replica_specific_labels() {
        let f = LabelFilter::default();
        assert!(!f.keeps("pod-template-hash"));
        assert!(!f.keeps("controller-revision-hash"));
        assert!(f.keeps("app"));
        let custom = LabelFilter {
            exclude: vec!["temp.example.com/*".into()],
        };
        assert!(!custom.keeps("temp.example.com/x"));
        assert!(custom.keeps("pod-template-hash"));
    }
}
