//! Property: after any sequence of identity, endpoint, namespace and policy events, every endpoint's
//! incrementally maintained map equals a from-scratch computation, and equals the map rebuilt by
//! applying the emitted deltas.
use policy::api::Protocol;
use policy::api::cilium::HttpRule;
use policy::engine::{EndpointDelta, EndpointSpec};
use policy::rule::{Action, Direction, Filter, L7, PolicyKind, PolicyRef, PortSel, PortSpec, Rule};
use policy::selector::{Op, Requirement};
use policy::{Config, Engine, Labels, PolicyMap, Selector};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const APPS: [&str; 3] = ["a", "b", "c"];
const NSS: [&str; 2] = ["n1", "n2"];

fn selector(kind: u8, v: u8) -> Selector {
    let app = APPS[v as usize % 3];
    match kind % 5 {
        0 => Selector::wildcard(),
        1 => Selector::match_labels([("app", app)]),
        2 => Selector::from_requirements(vec![Requirement::new(
            "app",
            Op::NotIn([app.to_string()].into()),
        )]),
        3 => Selector::match_labels([
            ("app", app),
            ("k8s:io.kubernetes.pod.namespace", NSS[v as usize % 2]),
        ]),
        _ => Selector::match_labels([(
            "k8s:io.cilium.k8s.namespace.labels.team",
            if v.is_multiple_of(2) { "x" } else { "y" },
        )]),
    }
}

fn ports(k: u8) -> Vec<PortSpec> {
    let p = |proto, port| PortSpec { proto, port };
    match k % 6 {
        0 => vec![],
        1 => vec![p(Protocol::Tcp, PortSel::Range(80, 80))],
        2 => vec![p(Protocol::Tcp, PortSel::Range(8000, 8100))],
        3 => vec![p(Protocol::Any, PortSel::Range(80, 81))],
        4 => vec![p(Protocol::Tcp, PortSel::Named("http".into()))],
        _ => vec![p(Protocol::Udp, PortSel::All)],
    }
}

fn action(k: u8) -> Action {
    match k % 4 {
        0 | 1 => Action::Allow,
        2 => Action::Deny,
        _ => Action::L7(Arc::new(L7::Http(vec![
            serde_json::from_str::<HttpRule>(r#"{"method": "GET"}"#).unwrap(),
        ]))),
    }
}

#[derive(Clone, Debug)]
enum Event {
    AddIdentity(u8, u8),
    ReleaseIdentity(u8),
    UpsertEndpoint(u8, u8, u8, bool),
    RemoveEndpoint(u8),
    Namespace(u8, u8),
    UpsertPolicy(u8, u8, Vec<(u8, u8, u8, u8, u8)>, bool, bool),
    RemovePolicy(u8),
}

fn event() -> impl Strategy<Value = Event> {
    let filt = (
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
    );
    prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Event::AddIdentity(a, b)),
        any::<u8>().prop_map(Event::ReleaseIdentity),
        (0..4u8, any::<u8>(), any::<u8>(), any::<bool>())
            .prop_map(|(a, b, c, d)| Event::UpsertEndpoint(a, b, c, d)),
        (0..4u8).prop_map(Event::RemoveEndpoint),
        (0..2u8, any::<u8>()).prop_map(|(a, b)| Event::Namespace(a, b)),
        (
            0..3u8,
            any::<u8>(),
            proptest::collection::vec(filt, 0..4),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(a, b, c, d, e)| Event::UpsertPolicy(a, b, c, d, e)),
        (0..3u8).prop_map(Event::RemovePolicy),
    ]
}

fn origin(i: u8) -> PolicyRef {
    PolicyRef {
        kind: PolicyKind::CiliumClusterwideNetworkPolicy,
        namespace: None,
        name: format!("p{i}"),
    }
}

fn apply(shadow: &mut BTreeMap<String, PolicyMap>, deltas: Vec<EndpointDelta>) {
    for d in deltas {
        d.delta.apply(shadow.entry(d.endpoint).or_default());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn incremental_equals_full(events in proptest::collection::vec(event(), 1..40)) {
        let mut e = Engine::new(Config::default());
        let mut held = Vec::new();
        let mut shadow: BTreeMap<String, PolicyMap> = BTreeMap::new();
        for ev in events {
            match ev {
                Event::AddIdentity(a, n) => {
                    let l = Labels::new()
                        .with(policy::Source::K8s, "app", APPS[a as usize % 3])
                        .with(policy::Source::K8s, "io.kubernetes.pod.namespace", NSS[n as usize % 2])
                        .with(policy::Source::K8s, "io.cilium.k8s.namespace.labels.team", if n.is_multiple_of(3) { "x" } else { "y" });
                    let (id, d) = e.add_identity(&l);
                    held.push(id);
                    apply(&mut shadow, d);
                }
                Event::ReleaseIdentity(i) => {
                    if !held.is_empty() {
                        let id = held.remove(i as usize % held.len());
                        apply(&mut shadow, e.release_identity(id));
                    }
                }
                Event::UpsertEndpoint(i, a, n, named) => {
                    let mut ports = BTreeMap::new();
                    if named {
                        ports.insert("http".to_string(), [(8080 + u16::from(i), Protocol::Tcp)].into());
                    }
                    let spec = EndpointSpec {
                        namespace: NSS[n as usize % 2].into(),
                        name: format!("pod{i}"),
                        labels: [("app".to_string(), APPS[a as usize % 3].to_string())].into(),
                        ports,
                        ..Default::default()
                    };
                    // Moving a pod between namespaces is a delete and an add.
                    for ns in NSS {
                        let k = format!("{ns}/pod{i}");
                        if ns != spec.namespace && e.endpoint(&k).is_some() {
                            apply(&mut shadow, e.remove_endpoint(&k));
                            shadow.remove(&k);
                        }
                    }
                    apply(&mut shadow, e.upsert_endpoint(spec));
                }
                Event::RemoveEndpoint(i) => {
                    for ns in NSS {
                        let k = format!("{ns}/pod{i}");
                        apply(&mut shadow, e.remove_endpoint(&k));
                        shadow.remove(&k);
                    }
                }
                Event::Namespace(n, t) => {
                    let labels = [("team".to_string(), if t.is_multiple_of(2) { "x" } else { "y" }.to_string())].into();
                    apply(&mut shadow, e.upsert_namespace(NSS[n as usize], labels));
                }
                Event::UpsertPolicy(i, subj, filters, ing, eg) => {
                    let o = origin(i);
                    let mut r = Rule::new(&o, selector(subj % 4 + 1, subj / 4));
                    r.enforces = [ing, eg];
                    for (dir, pk, pv, ports_k, act) in filters {
                        let direction = if dir % 2 == 0 { Direction::Ingress } else { Direction::Egress };
                        let action = match (action(act), direction) {
                            (Action::L7(_), Direction::Egress) => Action::Allow,
                            (a, _) => a,
                        };
                        r.filters.push(Filter { direction, peers: vec![selector(pk, pv)], ports: ports(ports_k), action });
                    }
                    if i == 2 {
                        let c = "10.0.0.0/8".parse().unwrap();
                        r.cidrs.push(c);
                        r.filters.push(Filter { direction: Direction::Egress, peers: vec![Selector::match_labels([("cidr:10.0.0.0/8", "")])], ports: vec![], action: Action::Allow });
                    }
                    apply(&mut shadow, e.upsert_policy(o, vec![r]));
                }
                Event::RemovePolicy(i) => apply(&mut shadow, e.remove_policy(&origin(i))),
            }
            for ep in e.endpoints() {
                let key = ep.spec.key();
                let full = e.recompute(&key).unwrap();
                prop_assert_eq!(&ep.policy.map, &full, "incremental vs full for {}", key);
                prop_assert_eq!(shadow.get(&key).cloned().unwrap_or_default(), full, "deltas vs full for {}", key);
            }
        }
    }
}
