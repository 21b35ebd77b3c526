//! Property: with DNS answers and expiries among the events (toFQDNs), every endpoint's incrementally
//! maintained map equals a from-scratch computation and the map rebuilt from the emitted deltas; and
//! an address has an identity exactly when one of its live names is matched by a toFQDNs selector.
use policy::api::Protocol;
use policy::engine::{EndpointDelta, EndpointSpec};
use policy::rule::{Action, Direction, Filter, PolicyKind, PolicyRef, PortSel, PortSpec, Rule};
use policy::selector::FqdnMatch;
use policy::{Config, Engine, PolicyMap, Selector};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const NAMES: [&str; 4] = ["a.example", "b.example", "c.other", "x.a.example"];
const APPS: [&str; 2] = ["web", "db"];

fn peer(k: u8) -> Selector {
    match k % 5 {
        0 => Selector::Fqdn(FqdnMatch::Name("a.example".into())),
        1 => Selector::Fqdn(FqdnMatch::Pattern("*.example".into())),
        2 => Selector::Fqdn(FqdnMatch::Pattern("*.a.example".into())),
        3 => Selector::Fqdn(FqdnMatch::Name("c.other".into())),
        _ => Selector::match_labels([("reserved:world", "")]),
    }
}

fn ip(i: u8) -> IpAddr {
    if i % 4 == 3 {
        format!("2001:db8::{}", i % 5).parse().unwrap()
    } else {
        format!("192.0.2.{}", i % 5).parse().unwrap()
    }
}

#[derive(Clone, Debug)]
enum Event {
    Endpoint(u8, u8),
    Policy(u8, u8, Vec<(u8, bool)>),
    RemovePolicy(u8),
    Learn(u8, Vec<u8>, u8),
    Advance(u8),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0..3u8, any::<u8>()).prop_map(|(a, b)| Event::Endpoint(a, b)),
        (
            0..2u8,
            any::<u8>(),
            proptest::collection::vec((any::<u8>(), any::<bool>()), 0..3)
        )
            .prop_map(|(a, b, c)| Event::Policy(a, b, c)),
        (0..2u8).prop_map(Event::RemovePolicy),
        (0..4u8, proptest::collection::vec(any::<u8>(), 1..3), 0..4u8)
            .prop_map(|(a, b, c)| Event::Learn(a, b, c)),
        (0..4u8).prop_map(Event::Advance),
    ]
}

fn apply(shadow: &mut BTreeMap<String, PolicyMap>, deltas: Vec<EndpointDelta>) {
    for d in deltas {
        d.delta.apply(shadow.entry(d.endpoint).or_default());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn fqdn_incremental_equals_full(events in proptest::collection::vec(event(), 1..40)) {
        let mut e = Engine::new(Config { fqdn_min_ttl: Duration::from_secs(1), ..Config::default() });
        let t0 = Instant::now();
        let mut now = t0;
        let mut shadow: BTreeMap<String, PolicyMap> = BTreeMap::new();
        for ev in events {
            match ev {
                Event::Endpoint(i, a) => {
                    let spec = EndpointSpec {
                        namespace: "default".into(),
                        name: format!("pod{i}"),
                        labels: [("app".to_string(), APPS[a as usize % 2].to_string())].into(),
                        ips: vec![format!("10.0.1.{i}").parse().unwrap()],
                        ..Default::default()
                    };
                    apply(&mut shadow, e.upsert_endpoint(spec));
                }
                Event::Policy(i, subj, filters) => {
                    let o = PolicyRef { kind: PolicyKind::CiliumNetworkPolicy, namespace: Some("default".into()), name: format!("p{i}") };
                    let mut r = Rule::new(&o, Selector::match_labels([("app", APPS[subj as usize % 2])]));
                    r.enforces = [false, true];
                    for (k, port) in filters {
                        let ports = if port { vec![PortSpec { proto: Protocol::Tcp, port: PortSel::Range(443, 443) }] } else { vec![] };
                        r.filters.push(Filter { direction: Direction::Egress, peers: vec![peer(k)], ports, action: Action::Allow });
                    }
                    apply(&mut shadow, e.upsert_policy(o, vec![r]));
                }
                Event::RemovePolicy(i) => {
                    let o = PolicyRef { kind: PolicyKind::CiliumNetworkPolicy, namespace: Some("default".into()), name: format!("p{i}") };
                    apply(&mut shadow, e.remove_policy(&o));
                }
                Event::Learn(n, ips, ttl) => {
                    let ips: Vec<IpAddr> = ips.into_iter().map(ip).collect();
                    let up = e.learn_fqdn(NAMES[n as usize], &ips, Duration::from_secs(u64::from(ttl)), now);
                    for a in &up.ipcache {
                        prop_assert!(ips.contains(a), "ipcache change for an address not in the answer");
                    }
                    apply(&mut shadow, up.deltas);
                }
                Event::Advance(s) => {
                    now += Duration::from_secs(u64::from(s));
                    apply(&mut shadow, e.expire_fqdn(now).deltas);
                }
            }
            for ep in e.endpoints() {
                let key = ep.spec.key();
                let full = e.recompute(&key).unwrap();
                prop_assert_eq!(&ep.policy.map, &full, "incremental vs full for {}", key);
                prop_assert_eq!(shadow.get(&key).cloned().unwrap_or_default(), full, "deltas vs full for {}", key);
            }
            let sels: Vec<FqdnMatch> = e.policies().flat_map(|(_, rs)| rs.iter()).flat_map(|r| r.filters.iter())
                .flat_map(|f| f.peers.iter()).filter_map(|s| match s { Selector::Fqdn(m) => Some(m.clone()), _ => None }).collect();
            for i in 0..8u8 {
                let a = ip(i);
                let selected = e.fqdn_cache().names(a).any(|n| sels.iter().any(|m| m.matches_name(n)));
                prop_assert_eq!(e.fqdn_identity(a).is_some(), selected, "identity of {}", a);
                if let Some(id) = e.fqdn_identity(a) {
                    prop_assert_eq!(e.identity_of_ip(a).0, id);
                }
            }
        }
    }
}
