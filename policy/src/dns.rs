//! What the DNS proxy asks the engine: may this endpoint ask this server for this name
//! ([`Engine::dns_verdict`]); and the implicit DNS rule, which makes DNS visible to the proxy for an
//! endpoint that has `toFQDNs` peers but no DNS rule (without it the endpoint would learn no address
//! and every `toFQDNs` peer would stay empty).
use crate::api::Protocol;
use crate::api::cilium::FqdnSelector;
use crate::engine::Engine;
use crate::mapstate::{Verdict, lookup};
use crate::rule::{Action, Direction, Filter, L7, PortSel, PortSpec, Rule};
use crate::selector::{FqdnMatch, Selector};
use std::net::IpAddr;
use std::sync::Arc;

/// Origin of the implicit DNS rule in policy maps and verdicts.
pub const IMPLICIT_ORIGIN: &str = "implicit-dns";

/// The DNS port the implicit rule covers.
pub const DNS_PORT: u16 = 53;

fn has_fqdn_peer(r: &Rule) -> bool {
    r.filters.iter().any(|f| {
        f.direction == Direction::Egress && f.peers.iter().any(|p| matches!(p, Selector::Fqdn(_)))
    })
}

fn has_dns_rule(r: &Rule) -> bool {
    r.filters.iter().any(|f| {
        f.direction == Direction::Egress
            && matches!(&f.action, Action::L7(l7) if matches!(**l7, L7::Dns(_)))
    })
}

/// The rules among `rules` with `toFQDNs` peers.
pub fn fqdn_rules<'a>(rules: &[&'a Rule]) -> impl Iterator<Item = &'a Rule> {
    rules.iter().copied().filter(|r| has_fqdn_peer(r))
}

/// The implicit DNS rule an endpoint selected by `rules` gets: when some rule has `toFQDNs` peers
/// and none has a DNS rule, DNS (UDP and TCP port 53) to `servers` goes through the proxy with
/// `matchPattern: "*"` (every name allowed, every answer learnt). It puts no direction under
/// enforcement of its own.
pub fn implicit_rule(rules: &[&Rule], servers: &[Selector]) -> Option<Rule> {
    if servers.is_empty()
        || !rules.iter().any(|r| has_fqdn_peer(r))
        || rules.iter().any(|r| has_dns_rule(r))
    {
        return None;
    }
    let port = |proto| PortSpec {
        proto,
        port: PortSel::Range(DNS_PORT, DNS_PORT),
    };
    Some(Rule {
        origin: Arc::from(IMPLICIT_ORIGIN),
        subject: Selector::wildcard(),
        enforces: [false, false],
        filters: vec![Filter {
            direction: Direction::Egress,
            peers: servers.to_vec(),
            ports: vec![port(Protocol::Udp), port(Protocol::Tcp)],
            action: Action::L7(Arc::new(L7::Dns(vec![FqdnSelector::MatchPattern(
                "*".into(),
            )]))),
        }],
        cidrs: Vec::new(),
        applies_to_nodes: false,
    })
}

/// The warning logged (once per policy) when a policy's `toFQDNs` peers get the implicit DNS rule.
pub fn implicit_warning(origin: &str) -> String {
    format!(
        "policy {origin} has toFQDNs peers but its endpoints have no DNS rule: DNS (port 53) to the \
         cluster's DNS servers goes through the DNS proxy with matchPattern \"*\" so that the names \
         can be learnt; add an explicit `rules.dns` to choose the allowed names"
    )
}

/// The proxy's decision on one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsVerdict {
    /// Forward the query, learn the answer.
    Allow,
    /// Answer REFUSED; the reason is for the log.
    Refuse(String),
}

impl Engine {
    /// May the endpoint at `src` ask the server `dst` (port `port`, `proto`) for `name`? An address
    /// that is no endpoint is refused (the proxy fails closed); an endpoint whose egress is not
    /// enforced is allowed; otherwise its policy map decides: a redirect with DNS rules allows the
    /// names they match, an L3/L4 allow allows every name, anything else refuses.
    pub fn dns_verdict(
        &self,
        src: IpAddr,
        dst: IpAddr,
        proto: Protocol,
        port: u16,
        name: &str,
    ) -> DnsVerdict {
        let Some(ep) = self.endpoints().find(|e| e.spec.ips.contains(&src)) else {
            return DnsVerdict::Refuse(format!("{src} is no endpoint of this node"));
        };
        if !ep.policy.enforced[Direction::Egress.index()] {
            return DnsVerdict::Allow;
        }
        let (dst_id, _) = self.identity_of_ip(dst);
        match lookup(&ep.policy.map, dst_id, Direction::Egress, proto, port) {
            Some((_, e)) if e.verdict == Verdict::Redirect && !e.dns.is_empty() => {
                if e.dns.iter().any(|s| FqdnMatch::from(s).matches_name(name)) {
                    DnsVerdict::Allow
                } else {
                    DnsVerdict::Refuse(format!("{name} is not allowed by the DNS rules"))
                }
            }
            Some((_, e)) if e.verdict == Verdict::Allow => DnsVerdict::Allow,
            _ => DnsVerdict::Refuse(format!(
                "DNS to {dst} (identity {dst_id}) port {port} is not allowed"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cilium::CiliumPolicy;
    use crate::engine::{EndpointDelta, EndpointSpec};
    use crate::mapstate::MapKey;
    use crate::{Config, Engine};
    use serde_json::json;
    use std::time::{Duration, Instant};

    const CLIENT: &str = "10.0.1.1";
    const KUBE_DNS: &str = "10.0.0.53";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)], addr: &str) -> EndpointSpec {
        EndpointSpec {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: vec![ip(addr)],
            ..Default::default()
        }
    }

    /// An engine with kube-dns, a client pod and the CNP `egress` on the client.
    fn engine(name: &str, egress: serde_json::Value) -> Engine {
        let mut e = Engine::new(Config::default());
        e.upsert_endpoint(pod(
            "kube-system",
            "coredns",
            &[("k8s-app", "kube-dns")],
            KUBE_DNS,
        ));
        e.upsert_endpoint(pod("default", "client", &[("app", "client")], CLIENT));
        let p: CiliumPolicy = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "client"}}, "egress": egress},
        }))
        .unwrap();
        let (origin, rules) = crate::translate::cilium_policy(&p, "default").unwrap();
        e.upsert_policy(origin, rules);
        e
    }

    fn to_fqdns() -> serde_json::Value {
        json!({"toFQDNs": [{"matchName": "allowed.example"}],
               "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]})
    }

    fn verdict(e: &Engine, proto: Protocol, name: &str) -> DnsVerdict {
        e.dns_verdict(ip(CLIENT), ip(KUBE_DNS), proto, DNS_PORT, name)
    }

    /// toFQDNs without a DNS rule: DNS to kube-dns is redirected to the proxy with every name
    /// allowed (instead of being denied), once-only warning, no other destination opened.
    #[test]
    fn to_fqdns_without_dns_rule_gets_the_implicit_rule() {
        let mut e = engine("fqdn-only", json!([to_fqdns()]));
        assert_eq!(
            verdict(&e, Protocol::Udp, "anything.example"),
            DnsVerdict::Allow
        );
        assert_eq!(
            verdict(&e, Protocol::Tcp, "allowed.example"),
            DnsVerdict::Allow
        );
        let w = e.take_warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("fqdn-only") && w[0].contains("toFQDNs"),
            "{w:?}"
        );
        // Another endpoint selected by the same policy: no second warning.
        e.upsert_endpoint(pod("default", "client2", &[("app", "client")], "10.0.1.2"));
        assert!(e.take_warnings().is_empty());
        // The entry is a redirect to the DNS proxy, with the implicit rule as origin.
        let ep = e.endpoint("default/client").unwrap();
        let dns_id = e.endpoint("kube-system/coredns").unwrap().identity;
        let (_, entry) = lookup(&ep.policy.map, dns_id, Direction::Egress, Protocol::Udp, 53)
            .expect("an entry for DNS");
        assert_eq!(entry.verdict, Verdict::Redirect);
        assert_eq!(entry.origins, [Arc::<str>::from(IMPLICIT_ORIGIN)]);
        // Only DNS to the DNS servers: port 53 elsewhere and other ports to kube-dns stay denied.
        assert!(lookup(&ep.policy.map, 2, Direction::Egress, Protocol::Udp, 53).is_none());
        assert!(lookup(&ep.policy.map, dns_id, Direction::Egress, Protocol::Tcp, 80).is_none());
        assert_eq!(
            e.dns_verdict(ip(CLIENT), ip("192.0.2.9"), Protocol::Udp, 53, "x.example"),
            DnsVerdict::Refuse("DNS to 192.0.2.9 (identity 2) port 53 is not allowed".into())
        );
        // The from-scratch computation agrees.
        assert_eq!(e.recompute("default/client").unwrap(), ep.policy.map);
    }

    /// An explicit DNS rule: no implicit rule, no warning; names outside the rule are refused.
    #[test]
    fn explicit_dns_rule_decides_names() {
        let dns = json!({
            "toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                             "k8s-app": "kube-dns"}}],
            "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}],
                         "rules": {"dns": [{"matchPattern": "*.example"}]}}],
        });
        let mut e = engine("fqdn-dns", json!([to_fqdns(), dns]));
        assert!(e.take_warnings().is_empty());
        assert_eq!(
            verdict(&e, Protocol::Udp, "allowed.example."),
            DnsVerdict::Allow
        );
        assert!(matches!(
            verdict(&e, Protocol::Udp, "denied.org"),
            DnsVerdict::Refuse(_)
        ));
        // Not an endpoint: refused.
        assert!(matches!(
            e.dns_verdict(
                ip("10.9.9.9"),
                ip(KUBE_DNS),
                Protocol::Udp,
                53,
                "allowed.example"
            ),
            DnsVerdict::Refuse(_)
        ));
        // No toFQDNs: no implicit rule either.
        let e = engine("plain", json!([{"toEndpoints": [{}]}]));
        assert_eq!(
            implicit_rule(&[], &[Selector::wildcard()]),
            None,
            "no rules, no implicit rule"
        );
        assert!(
            e.endpoint("default/client")
                .unwrap()
                .policy
                .map
                .values()
                .all(|v| v.verdict != Verdict::Redirect)
        );
    }

    fn allows_443(e: &Engine, id: u32) -> bool {
        let ep = e.endpoint("default/client").unwrap();
        lookup(&ep.policy.map, id, Direction::Egress, Protocol::Tcp, 443)
            .is_some_and(|(_, v)| v.verdict == Verdict::Allow)
    }

    fn keys_of(deltas: &[EndpointDelta], id: u32) -> Vec<MapKey> {
        deltas
            .iter()
            .flat_map(|d| d.delta.upserts.iter().map(|(k, _)| *k))
            .filter(|k| k.identity == id)
            .collect()
    }

    /// An answer for a selected name gives the address an identity the toFQDNs peer selects (the
    /// delta says so); an unselected name gives none; expiry takes it away; the min TTL floors.
    #[test]
    fn answers_become_identities_and_expire() {
        let mut e = engine("fqdn-only", json!([to_fqdns()]));
        e.cfg.fqdn_min_ttl = Duration::from_secs(5);
        let t0 = Instant::now();
        let a = ip("192.0.2.10");
        let up = e.learn_fqdn("Allowed.Example.", &[a], Duration::from_secs(1), t0);
        assert_eq!(up.ipcache, [a]);
        let id = e.fqdn_identity(a).expect("an identity");
        assert_eq!(e.identity_of_ip(a).0, id);
        assert!(!keys_of(&up.deltas, id).is_empty());
        assert!(allows_443(&e, id));
        let l = e.identity_labels(id).unwrap().to_strings();
        assert!(
            l.contains(&"fqdn:allowed.example".into()) && l.contains(&"cidr:192.0.2.10/32".into())
        );
        // A name no toFQDNs selects: cached, no identity.
        let b = ip("192.0.2.11");
        let up = e.learn_fqdn("other.example", &[b], Duration::from_secs(60), t0);
        assert!(up.ipcache.is_empty() && up.deltas.is_empty() && e.fqdn_identity(b).is_none());
        // The TTL of 1 s was floored to 5 s.
        assert!(
            e.expire_fqdn(t0 + Duration::from_secs(4))
                .ipcache
                .is_empty()
        );
        let up = e.expire_fqdn(t0 + Duration::from_secs(5));
        assert_eq!(up.ipcache, [a]);
        assert!(e.fqdn_identity(a).is_none() && !allows_443(&e, id));
        assert!(
            up.deltas
                .iter()
                .any(|d| d.delta.removes.iter().any(|k| k.identity == id))
        );
        assert_eq!(
            e.recompute("default/client").unwrap(),
            e.endpoint("default/client").unwrap().policy.map
        );
    }

    /// A policy added after the answer: the cached address gets its identity then.
    #[test]
    fn policy_after_answer_uses_the_cache() {
        let mut e = engine("none", json!([{"toEndpoints": [{}]}]));
        let a = ip("2001:db8::10");
        let t0 = Instant::now();
        assert!(
            e.learn_fqdn("allowed.example", &[a], Duration::from_secs(60), t0)
                .ipcache
                .is_empty()
        );
        let p: CiliumPolicy = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "later", "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "client"}}, "egress": [to_fqdns()]},
        }))
        .unwrap();
        let (origin, rules) = crate::translate::cilium_policy(&p, "default").unwrap();
        e.upsert_policy(origin.clone(), rules);
        let id = e.fqdn_identity(a).expect("identity from the cache");
        assert!(allows_443(&e, id));
        e.remove_policy(&origin);
        assert!(e.fqdn_identity(a).is_none());
        assert!(e.identity_labels(id).is_none(), "identity released");
    }
}
