//! The store and compile API: options, unknown nodes, incremental updates, and properties of the
//! endpoint selection over random EndpointSlices.
use k8s::{
    Algorithm, BackendState, Cluster, CompileError, FrontendType, ObjectKey, Options, compile_node,
    compile_service, parse_port_range,
};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeSet;

fn node(name: &str, zone: &str, ip: &str) -> Node {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}))
    .unwrap()
}

fn service(name: &str, ip: &str, etp: &str, itp: &str) -> Service {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": ip, "externalTrafficPolicy": etp,
                 "internalTrafficPolicy": itp,
                 "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}))
    .unwrap()
}

fn slice(name: &str, svc: &str, eps: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": eps}),
    )
    .unwrap()
}

fn base() -> Cluster {
    let mut c = Cluster::new();
    c.apply_node(&node("a", "z1", "192.168.0.1"));
    c.apply_node(&node("b", "z2", "192.168.0.2"));
    c.apply_service(&service("web", "10.96.0.1", "Cluster", "Cluster"), None);
    c
}

fn backends_of(c: &Cluster, svc: &str) -> Vec<String> {
    let n = c.node("a").unwrap().clone();
    let s = compile_service(c, &ObjectKey::new("default", svc), &n, &Options::default());
    let f = s
        .frontends
        .iter()
        .find(|f| f.kind == FrontendType::ClusterIP)
        .unwrap();
    f.backends
        .iter()
        .map(|b| format!("{}:{}", b.address, b.port))
        .collect()
}

#[test]
fn options_change_range_and_algorithm() {
    let c = base();
    let n = compile_node(&c, "a", &Options::default()).unwrap();
    assert_eq!(n.frontends.len(), 2);
    assert!(n.frontends.iter().all(|f| f.algorithm == Algorithm::Random));
    let opts = Options {
        node_port_range: parse_port_range("31000-31999").unwrap(),
        default_algorithm: Algorithm::Maglev,
        ..Options::default()
    };
    let n = compile_node(&c, "a", &opts).unwrap();
    assert!(n.frontends.is_empty());
    assert!(
        n.notes
            .iter()
            .any(|n| n.error && n.message.contains("31000-31999"))
    );
}

#[test]
fn unknown_node_is_an_error() {
    let e = compile_node(&base(), "zz", &Options::default()).unwrap_err();
    assert!(matches!(e, CompileError::UnknownNode { .. }));
    assert!(e.to_string().contains("a, b"), "{e}");
}

#[test]
fn incremental_updates() {
    let mut c = base();
    let ep = |ip: &str| json!([{"addresses": [ip], "nodeName": "b"}]);
    assert_eq!(
        c.apply_endpoint_slice(&slice("s1", "web", ep("10.0.0.1")), None),
        [ObjectKey::new("default", "web")]
    );
    c.apply_endpoint_slice(&slice("s2", "web", ep("10.0.0.2")), None);
    assert_eq!(backends_of(&c, "web"), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    // The slice moves to another service: both are affected.
    c.apply_service(&service("api", "10.96.0.2", "Cluster", "Cluster"), None);
    let moved = c.apply_endpoint_slice(&slice("s2", "api", ep("10.0.0.2")), None);
    assert_eq!(
        moved,
        [
            ObjectKey::new("default", "web"),
            ObjectKey::new("default", "api")
        ]
    );
    assert_eq!(backends_of(&c, "web"), ["10.0.0.1:8080"]);
    assert_eq!(backends_of(&c, "api"), ["10.0.0.2:8080"]);
    c.delete_endpoint_slice(&ObjectKey::new("default", "s1"));
    assert!(backends_of(&c, "web").is_empty());
    c.delete_service(&ObjectKey::new("default", "web"));
    assert_eq!(
        compile_node(&c, "a", &Options::default())
            .unwrap()
            .frontends
            .len(),
        2
    );
}

#[derive(Clone, Debug)]
struct Ep {
    ip: u8,
    node: bool, // on node "a": follows from the address, so that copies of one endpoint agree
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    slice: u8,
}

fn ep_strategy() -> impl Strategy<Value = Ep> {
    (
        0u8..12,
        any::<bool>(),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        0u8..3,
    )
        .prop_map(|(ip, _, ready, serving, terminating, slice)| Ep {
            ip,
            node: ip % 2 == 0,
            ready,
            serving,
            terminating,
            slice,
        })
}

fn load(eps: &[Ep], etp: &str, itp: &str) -> Cluster {
    let mut c = Cluster::new();
    c.apply_node(&node("a", "z1", "192.168.0.1"));
    c.apply_service(&service("web", "10.96.0.1", etp, itp), None);
    for s in 0..3u8 {
        let list: Vec<serde_json::Value> = eps
            .iter()
            .filter(|e| e.slice == s)
            .map(|e| {
                json!({"addresses": [format!("10.0.0.{}", e.ip)],
                       "nodeName": if e.node { "a" } else { "b" },
                       "conditions": {"ready": e.ready, "serving": e.serving,
                                      "terminating": e.terminating}})
            })
            .collect();
        c.apply_endpoint_slice(&slice(&format!("s{s}"), "web", json!(list)), None);
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn selection_properties(eps in proptest::collection::vec(ep_strategy(), 0..10),
                            etp_local in any::<bool>(), itp_local in any::<bool>()) {
        let pol = |l: bool| if l { "Local" } else { "Cluster" };
        let c = load(&eps, pol(etp_local), pol(itp_local));
        let out = compile_node(&c, "a", &Options::default()).unwrap();
        prop_assert_eq!(out.frontends.len(), 2);
        let is_ready = |e: &Ep| e.ready.unwrap_or(true);
        let usable_term = |e: &Ep| !is_ready(e) && e.serving.unwrap_or(true) && e.terminating.unwrap_or(false);
        let addr = |e: &Ep| format!("10.0.0.{}", e.ip);
        for f in &out.frontends {
            // Sorted, unique backends.
            let keys: Vec<_> = f.backends.iter().map(|b| (b.address, b.port)).collect();
            let mut sorted = keys.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(&keys, &sorted);
            let states: BTreeSet<_> = f.backends.iter().map(|b| b.state).collect();
            prop_assert!(states.len() <= 1, "never mixes active and terminating");
            let local_only = f.kind == FrontendType::ClusterIP && itp_local;
            let pool: Vec<&Ep> = eps.iter().filter(|e| !local_only || e.node).collect();
            for b in &f.backends {
                let a = b.address.to_string();
                let matching: Vec<&&Ep> = pool.iter().filter(|e| addr(e) == a).collect();
                prop_assert!(!matching.is_empty());
                match b.state {
                    BackendState::Active => prop_assert!(matching.iter().any(|e| is_ready(e))),
                    BackendState::Terminating => {
                        prop_assert!(matching.iter().any(|e| usable_term(e)));
                        prop_assert!(!pool.iter().any(|e| is_ready(e)), "fallback only without ready endpoints");
                    }
                    BackendState::Quarantined => prop_assert!(false, "the Kubernetes source never quarantines"),
                }
            }
            // Every ready endpoint of the pool is used (no topology hints here).
            let ready: BTreeSet<String> = pool.iter().filter(|e| is_ready(e)).map(|e| addr(e)).collect();
            let used: BTreeSet<String> = f.backends.iter().map(|b| b.address.to_string()).collect();
            if !ready.is_empty() {
                prop_assert_eq!(&ready, &used);
            }
            if let Some(ext) = &f.external_backends {
                prop_assert!(etp_local && f.kind == FrontendType::NodePort);
                prop_assert!(ext != &f.backends);
                prop_assert!(ext.iter().all(|b| b.node.as_deref() == Some("a")));
            }
        }
        // Splitting endpoints differently across slices does not change the result.
        let moved: Vec<Ep> = eps.iter().cloned().map(|mut e| { e.slice = (e.slice + 1) % 3; e }).collect();
        let again = compile_node(&load(&moved, pol(etp_local), pol(itp_local)), "a", &Options::default()).unwrap();
        let strip = |v: &[k8s::Frontend]| v.iter().map(|f| f.backends.iter().map(|b| (b.address, b.state)).collect::<Vec<_>>()).collect::<Vec<_>>();
        prop_assert_eq!(strip(&out.frontends), strip(&again.frontends));
    }
}
