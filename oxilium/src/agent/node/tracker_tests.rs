//! The per-change path against the whole one, without a kernel (an in-memory datapath): after
//! any sequence of Service, EndpointSlice, Node and HostPort-pod changes applied one by one as
//! the agent applies them, the datapath, the model, the local endpoints and the health checks
//! equal what a fresh compile and a full apply of the final store give.
use super::*;
use k8s::{Manifests, api_source::Changes as SourceChanges};
use lb::reconcile::MemoryDatapath;
use proptest::prelude::*;
use serde_json::{Value, json};

const NODE: &str = "a";

#[derive(Clone, Debug)]
struct SvcSpec {
    /// 0 ClusterIP, 1 NodePort, 2 LoadBalancer.
    ty: u8,
    /// Few addresses and ports, so that frontends of different Services clash.
    cluster_ip: u8,
    port: u16,
    node_port: u16,
    etp_local: bool,
    external_ip: bool,
    affinity: bool,
    source_range: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Service(u8, SvcSpec),
    DeleteService(u8),
    /// A slice, its Service and its endpoints: (last octet, on this node, ready).
    Slice(u8, u8, Vec<(u8, bool, bool)>),
    DeleteSlice(u8),
    /// This node's address moves (applied whole).
    MoveNode(bool),
    /// A HostPort pod on this node comes or goes (applied whole).
    HostPort(bool),
}

fn spec() -> impl Strategy<Value = SvcSpec> {
    (
        0u8..3,
        0u8..3,
        80u16..82,
        30080u16..30082,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(ty, cluster_ip, port, node_port, etp_local, external_ip, affinity, source_range)| {
                SvcSpec {
                    ty,
                    cluster_ip,
                    port,
                    node_port,
                    etp_local,
                    external_ip,
                    affinity,
                    source_range,
                }
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, spec()).prop_map(|(i, s)| Op::Service(i, s)),
        1 => (0u8..4).prop_map(Op::DeleteService),
        4 => (0u8..5, 0u8..4, proptest::collection::vec((1u8..7, any::<bool>(), any::<bool>()), 0..4))
            .prop_map(|(j, s, e)| Op::Slice(j, s, e)),
        1 => (0u8..5).prop_map(Op::DeleteSlice),
        1 => any::<bool>().prop_map(Op::MoveNode),
        1 => any::<bool>().prop_map(Op::HostPort),
    ]
}

fn service(i: u8, s: &SvcSpec) -> Value {
    let ty = ["ClusterIP", "NodePort", "LoadBalancer"][s.ty as usize];
    let mut port = json!({"name": "http", "port": s.port, "protocol": "TCP"});
    let mut spec = json!({"type": ty, "clusterIP": format!("10.96.0.{}", s.cluster_ip + 1),
                          "ports": [], "sessionAffinity": if s.affinity { "ClientIP" } else { "None" }});
    if s.ty > 0 {
        port["nodePort"] = json!(s.node_port);
        spec["externalTrafficPolicy"] = json!(if s.etp_local { "Local" } else { "Cluster" });
        if s.ty == 2 && s.etp_local {
            spec["healthCheckNodePort"] = json!(32000 + i as u16);
        }
    }
    if s.external_ip {
        // Another Service's clusterIP: clashes when the ports agree.
        spec["externalIPs"] = json!([format!("10.96.0.{}", (s.cluster_ip + 1) % 3 + 1)]);
    }
    if s.source_range {
        spec["loadBalancerSourceRanges"] = json!(["198.51.100.0/24"]);
    }
    spec["ports"] = json!([port]);
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("s{i}"), "namespace": "default"}, "spec": spec,
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}}})
}

fn slice(j: u8, svc: u8, eps: &[(u8, bool, bool)]) -> Value {
    let eps: Vec<_> = eps
        .iter()
        .map(|(ip, here, ready)| {
            json!({"addresses": [format!("10.0.0.{ip}")], "nodeName": if *here { NODE } else { "b" },
                   "conditions": {"ready": ready}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("e{j}"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": format!("s{svc}")}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": eps})
}

fn node(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

fn host_port_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hp", "namespace": "default"},
        "spec": {"nodeName": NODE, "containers": [{"name": "c",
                 "ports": [{"containerPort": 8080, "hostPort": 30080}]}]},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.9"}]}})
}

/// One object, typed by the manifests reader.
fn typed(v: Value) -> Manifests {
    let mut m = Manifests::default();
    k8s::manifests::parse_file(std::path::Path::new("t.json"), &v.to_string(), &mut m).unwrap();
    m
}

/// Applies one change to the store; returns what the API source would report.
fn change(c: &mut Cluster, op: &Op) -> SourceChanges {
    let mut ch = SourceChanges::default();
    match op {
        Op::Service(i, s) => {
            ch.services
                .insert(c.apply_service(&typed(service(*i, s)).services[0].1, None));
        }
        Op::DeleteService(i) => {
            let key = k8s::ObjectKey::new("default", format!("s{i}"));
            c.delete_service(&key);
            ch.services.insert(key);
        }
        Op::Slice(j, s, eps) => ch
            .services
            .extend(c.apply_endpoint_slice(&typed(slice(*j, *s, eps)).endpoint_slices[0].1, None)),
        Op::DeleteSlice(j) => ch
            .services
            .extend(c.delete_endpoint_slice(&k8s::ObjectKey::new("default", format!("e{j}")))),
        Op::MoveNode(far) => {
            c.apply_node(
                &typed(node(NODE, if *far { "192.168.0.9" } else { "192.168.0.1" })).nodes[0].1,
            );
            ch.nodes.insert(NODE.into());
        }
        Op::HostPort(on) => {
            let key = k8s::ObjectKey::new("default", "hp");
            ch.host_ports.extend(if *on {
                c.apply_pod(&typed(host_port_pod()).pods[0].1, None)
            } else {
                c.delete_pod(&key)
            });
        }
    }
    ch
}

fn tracker() -> ClusterTracker {
    ClusterTracker::new(NODE.into(), k8s::Options::default(), 251)
}

/// What the agent holds after applying a view.
struct Applied {
    rec: Reconciler<MemoryDatapath>,
    model: Model,
}

impl Applied {
    fn apply(&mut self, view: &NodeView) {
        match &view.model {
            ModelUpdate::Whole(m) => {
                self.rec.apply(&compile::compile(m).unwrap()).unwrap();
                self.model = m.clone();
            }
            ModelUpdate::Delta(d) => {
                apply_to(&mut self.rec, &mut self.model, d).unwrap();
            }
        }
    }
}

fn fresh(c: &Cluster) -> (Applied, NodeView) {
    let view = tracker().full(c).unwrap();
    let mut a = Applied {
        rec: Reconciler::open(MemoryDatapath::default()).unwrap(),
        model: Model::default(),
    };
    a.apply(&view);
    (a, view)
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn per_change_applies_equal_a_full_recompile(ops in proptest::collection::vec(op(), 1..25)) {
        let mut c = Cluster::new();
        c.apply_node(&typed(node(NODE, "192.168.0.1")).nodes[0].1);
        c.apply_node(&typed(node("b", "192.168.0.2")).nodes[0].1);
        let mut t = tracker();
        let (mut agent, _) = fresh(&c);
        for (i, op) in ops.iter().enumerate() {
            let ch = change(&mut c, op);
            let view = t.changed(&c, &ch).unwrap();
            // The first change is applied whole (nothing was before), and so are Node and HostPort
            // changes; every other change per change.
            let per_change = i > 0 && ch.nodes.is_empty() && ch.host_ports.is_empty();
            prop_assert_eq!(matches!(view.model, ModelUpdate::Delta(_)), per_change);
            agent.apply(&view);
            let (want, want_view) = fresh(&c);
            prop_assert_eq!(&agent.model, &want.model, "after {:?}", op);
            prop_assert_eq!(agent.rec.datapath().snapshot(), want.rec.datapath().snapshot(), "after {:?}", op);
            prop_assert_eq!(&view.local, &want_view.local);
            prop_assert_eq!(&view.health_checks, &want_view.health_checks);
            prop_assert_eq!(&view.internal_addresses, &want_view.internal_addresses);
        }
    }
}

#[test]
fn a_slice_change_is_a_delta_of_its_frontends_only() {
    let mut c = Cluster::new();
    c.apply_node(&typed(node(NODE, "192.168.0.1")).nodes[0].1);
    let np = SvcSpec {
        ty: 1,
        cluster_ip: 0,
        port: 80,
        node_port: 30080,
        etp_local: false,
        external_ip: false,
        affinity: false,
        source_range: false,
    };
    for i in 0..3 {
        let s = SvcSpec {
            cluster_ip: i,
            node_port: 30080 + i as u16,
            ..np.clone()
        };
        c.apply_service(&typed(service(i, &s)).services[0].1, None);
    }
    let mut t = tracker();
    let mut agent = fresh(&c).0;
    t.full(&c).unwrap();
    let ch = change(&mut c, &Op::Slice(0, 1, vec![(1, true, true)]));
    let view = t.changed(&c, &ch).unwrap();
    let ModelUpdate::Delta(d) = &view.model else {
        panic!("a slice change is applied per change");
    };
    // Service s1: its ClusterIP and its NodePort on the node's address, each with the
    // services of both scopes where external.
    assert_eq!(d.frontends.len(), 2);
    assert_eq!(d.services.len(), 3);
    assert_eq!(
        view.local,
        BTreeSet::from(["10.0.0.1".parse::<IpAddr>().unwrap()])
    );
    agent.apply(&view);
    assert_eq!(
        agent.rec.datapath().snapshot(),
        fresh(&c).0.rec.datapath().snapshot()
    );
}
