//! End-to-end tests of `oxilium agent --role node --device ...` reading the cluster from the
//! Kubernetes API (the fake API server of lb/k8s/tests/support, reached through a kubeconfig on
//! the node namespace's loopback): traffic from an outside client to NodePort and LoadBalancer
//! Services, served by the NodePort tc programs the real agent attaches, to pods of this node
//! (DNAT, the client's address kept) and of another node (DNAT + SNAT to this node's InternalIP),
//! following the objects as the test changes them on the server.
//!
//! ```text
//!  client ─c0──ext0─ node1 (agent) ─fab0──fab0─ node2
//!  192.168.50.2       │  10.77.0.1       10.77.0.2  │
//!  fd50::2            │  fd77::1         fd77::2    │
//!               vp1N ─ pods 10.241.1.1N        vp2N ─ pods 10.241.2.1N
//! ```
//! (lb/tests/support/cluster.rs.) Kernel features: network namespaces, veth, IPv4/IPv6
//! forwarding, TCX (tc ingress/egress bpf_links), bpf_fib_lookup, bpf_redirect, BTF maps (hash,
//! LRU hash, LPM trie, per-CPU array, map-in-map), bpffs pinning, cgroup v2 sock_addr programs
//! (the agent's socket LB). Requires root: fails (never skips) when it cannot set up.
mod support;

use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use support::{
    cluster::{
        CLIENT4, CLIENT6, Cluster, NODE1_EXT4, NODE1_EXT6, NODE1_FAB4, NODE1_FAB6, NODE2_FAB4,
        NODE2_FAB6, ip,
    },
    fake_api::Res,
    kube_agent::KubeAgent,
    peer::{PeerConn, ask},
};

const LB4: &str = "203.0.113.10";
const LB6: &str = "2001:db8::10";
/// NodePorts of the Service `web` (TCP, UDP) and `lb`.
const WEB: (u16, u16) = (30080, 30053);
const LB: (u16, u16) = (30081, 30054);

/// A Node: InternalIPs on the fabric (the SNAT source towards other nodes), ExternalIPs (node1's
/// external device) where the NodePorts are reached from outside.
fn node(name: &str, internal: [&str; 2], external: &[&str]) -> (Res, Value) {
    let mut addrs: Vec<Value> = internal
        .iter()
        .map(|a| json!({"type": "InternalIP", "address": a}))
        .collect();
    addrs.extend(
        external
            .iter()
            .map(|a| json!({"type": "ExternalIP", "address": a})),
    );
    let obj = json!({"metadata": {"name": name}, "status": {"addresses": addrs}});
    (Res::Nodes, obj)
}

fn nodes() -> [(Res, Value); 2] {
    [
        node("node1", [NODE1_FAB4, NODE1_FAB6], &[NODE1_EXT4, NODE1_EXT6]),
        node("node2", [NODE2_FAB4, NODE2_FAB6], &[]),
    ]
}

/// A dual-stack Service: http 80/TCP and dns 53/UDP, both to the pods' 8080, on the NodePorts
/// `ports`; a LoadBalancer gets the ingress LB4 / LB6.
fn service(name: &str, ty: &str, n: u8, ports: (u16, u16), local: bool) -> (Res, Value) {
    let mut obj = json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": ty,
            "clusterIP": format!("10.96.0.{n}"),
            "clusterIPs": [format!("10.96.0.{n}"), format!("fd00:96::{n}")],
            "ipFamilies": ["IPv4", "IPv6"],
            "ipFamilyPolicy": "RequireDualStack",
            "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": ports.0},
                {"name": "dns", "port": 53, "targetPort": 8080, "protocol": "UDP", "nodePort": ports.1},
            ],
        },
    });
    if ty == "LoadBalancer" {
        obj["status"] = json!({"loadBalancer": {"ingress": [{"ip": LB4}, {"ip": LB6}]}});
    }
    (Res::Services, obj)
}

/// The IPv4 and IPv6 EndpointSlices of `svc`: the named pods, each with its node's name.
fn slices(c: &Cluster, svc: &str, pods: &[&str]) -> Vec<(Res, Value)> {
    [(false, "IPv4"), (true, "IPv6")]
        .into_iter()
        .map(|(v6, fam)| {
            let eps: Vec<Value> = pods
                .iter()
                .map(|p| {
                    let pod = c.pod(p);
                    json!({"addresses": [pod.addr(v6).ip().to_string()],
                           "nodeName": format!("node{}", pod.node),
                           "conditions": {"ready": true}})
                })
                .collect();
            let obj = json!({
                "metadata": {"name": format!("{svc}-{fam}"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": svc}},
                "addressType": fam,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                          {"name": "dns", "port": 8080, "protocol": "UDP"}],
                "endpoints": eps,
            });
            (Res::EndpointSlices, obj)
        })
        .collect()
}

fn client(v6: bool) -> IpAddr {
    ip(if v6 { CLIENT6 } else { CLIENT4 })
}

/// node1's InternalIP: the source a pod of another node sees.
fn snat(v6: bool) -> IpAddr {
    ip(if v6 { NODE1_FAB6 } else { NODE1_FAB4 })
}

/// node1's external address with the NodePort of `ports` for the protocol.
fn node_port(v6: bool, udp: bool, ports: (u16, u16)) -> SocketAddr {
    let port = if udp { ports.1 } else { ports.0 };
    SocketAddr::new(ip(if v6 { NODE1_EXT6 } else { NODE1_EXT4 }), port)
}

const CASES: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

/// Test A: the API source with `--device ext0`, pods of this node only. NodePort and LoadBalancer
/// (TCP and UDP, both families) reach the right pods, which see the client; then the Service's
/// EndpointSlices change on the API server (a pod removed, one added) and the traffic follows.
/// Kernel features: see the file's header.
#[test]
fn api_source_serves_node_ports_and_load_balancers_and_follows_endpoint_slices() {
    let c = Cluster::new([3, 0]);
    let mut k = KubeAgent::serve(&c.node1, "node1", &["ext0"]);
    k.put(nodes());
    k.put([
        service("web", "NodePort", 10, WEB, false),
        service("lb", "LoadBalancer", 11, LB, false),
    ]);
    k.put(slices(&c, "web", &["p11", "p12"]));
    k.put(slices(&c, "lb", &["p13"]));
    k.start();
    // p11, p12 (web) and p13 (lb), in both families.
    k.wait_local_endpoints(6);
    for (v6, udp) in CASES {
        let me = client(v6);
        let to = node_port(v6, udp, WEB);
        k.wait_answers(&c.client, to, udp, 20, &[("p11", me), ("p12", me)]);
        let lb = SocketAddr::new(ip(if v6 { LB6 } else { LB4 }), if udp { 53 } else { 80 });
        k.wait_answers(&c.client, lb, udp, 5, &[("p13", me)]);
        // The LoadBalancer's node ports too.
        k.wait_answers(&c.client, node_port(v6, udp, LB), udp, 5, &[("p13", me)]);
    }
    // p11 leaves web, p13 joins it (and stays lb's): p11 is no local endpoint any more.
    k.put(slices(&c, "web", &["p12", "p13"]));
    for (v6, udp) in CASES {
        let (me, to) = (client(v6), node_port(v6, udp, WEB));
        k.wait_answers(&c.client, to, udp, 20, &[("p12", me), ("p13", me)]);
    }
    k.wait_local_endpoints(4);
    // web's EndpointSlices deleted: nothing answers on its node ports, lb still does.
    for (_, obj) in slices(&c, "web", &[]) {
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        k.api.delete(Res::EndpointSlices, "default", &name);
    }
    for (v6, udp) in CASES {
        let to = node_port(v6, udp, WEB);
        k.eventually(&format!("{to} (udp={udp}) refused"), || {
            match ask(&c.client, None, to, udp) {
                Ok(a) => Err(a),
                Err(_) => Ok(()),
            }
        });
        let lb = node_port(v6, udp, LB);
        k.wait_answers(&c.client, lb, udp, 3, &[("p13", client(v6))]);
    }
    let s = k.status();
    assert!(k.counter("local", false) >= 4 * (20 + 5 + 5 + 20), "{s}");
    assert!(k.counter("rev_dnat", false) >= 4 * (20 + 5 + 5 + 20), "{s}");
    assert_eq!(k.counter("remote", false), 0, "{s}");
    assert_eq!(s["nodeport"]["devices"], json!(["ext0"]), "{s}");
    assert_eq!(s["last_error"], Value::Null, "{s}");
}

/// Test B: a backend on another node through the agent (`--device ext0,fab0` on node1; node2
/// only routes to its pod). The pod of node2 answers NodePort requests (TCP and UDP, both
/// families) and sees node1's InternalIP; replies return through node1 to the client. Mixed with
/// a pod of node1 both serve, each seeing its own source. externalTrafficPolicy Local on the same
/// Service keeps to node1's pod, and refuses when node1 has none (as kube-proxy does); back to
/// Cluster, the remote pod serves again; a new InternalIP on node1's Node object becomes the
/// source of new flows. Kernel features: see the file's header.
#[test]
fn remote_backend_through_the_agent_is_snatted_and_local_policy_keeps_to_this_node() {
    let c = Cluster::new([1, 1]);
    let mut k = KubeAgent::serve(&c.node1, "node1", &["ext0", "fab0"]);
    k.put(nodes());
    k.put([service("web", "NodePort", 10, WEB, false)]);
    k.put(slices(&c, "web", &["p21"]));
    k.start();
    for (v6, udp) in CASES {
        let to = node_port(v6, udp, WEB);
        k.wait_answers(&c.client, to, udp, 10, &[("p21", snat(v6))]);
    }
    let s = k.status();
    assert!(k.counter("remote", false) >= 40, "{s}");
    assert!(k.counter("rev_snat", false) >= 40, "{s}");
    assert_eq!(k.counter("local", false), 0, "{s}");
    assert_eq!(s["nodeport"]["local_endpoints"], 0, "{s}");
    // A pod of each node: the local one sees the client, the remote one node1.
    k.put(slices(&c, "web", &["p11", "p21"]));
    k.wait_local_endpoints(2);
    for (v6, udp) in CASES {
        let to = node_port(v6, udp, WEB);
        let want = [("p11", client(v6)), ("p21", snat(v6))];
        k.wait_answers(&c.client, to, udp, 30, &want);
    }
    // externalTrafficPolicy Local: node1's pod only.
    k.put([service("web", "NodePort", 10, WEB, true)]);
    for (v6, udp) in CASES {
        let to = node_port(v6, udp, WEB);
        k.wait_answers(&c.client, to, udp, 20, &[("p11", client(v6))]);
    }
    // Local with node2's pod alone: node1 has no endpoint and refuses (never forwards to node2).
    k.put(slices(&c, "web", &["p21"]));
    k.wait_local_endpoints(0);
    let remote = k.counter("remote", false);
    for (v6, udp) in CASES {
        let to = node_port(v6, udp, WEB);
        let before = k.counter("no_backend", true);
        let r = ask(&c.client, None, to, udp);
        assert!(r.is_err(), "{to} (udp={udp}) answered: {r:?}");
        assert!(k.counter("no_backend", true) > before, "{}", k.status());
    }
    assert_eq!(k.counter("remote", false), remote, "{}", k.status());
    // Back to Cluster: the remote pod serves again.
    k.put([service("web", "NodePort", 10, WEB, false)]);
    for (v6, udp) in CASES {
        let to = node_port(v6, udp, WEB);
        k.wait_answers(&c.client, to, udp, 5, &[("p21", snat(v6))]);
    }
    // node1's InternalIPs change on its Node object: new flows to node2 take the new source.
    c.node1
        .run(&["ip", "addr", "add", "10.77.0.11/24", "dev", "fab0"]);
    c.node1
        .run(&["ip", "addr", "add", "fd77::11/64", "dev", "fab0", "nodad"]);
    k.put([node(
        "node1",
        ["10.77.0.11", "fd77::11"],
        &[NODE1_EXT4, NODE1_EXT6],
    )]);
    for (v6, udp) in CASES {
        let to = node_port(v6, udp, WEB);
        let moved = ip(if v6 { "fd77::11" } else { "10.77.0.11" });
        k.wait_answers(&c.client, to, udp, 5, &[("p21", moved)]);
    }
    assert_eq!(k.status()["last_error"], Value::Null);
}

/// An agent restart (SIGTERM, start again; pins kept) with the API source, while the API server
/// is down: connections to a local and to a remote pod established before it go on, new flows
/// are served as before (node2's pod still sees node1's InternalIP), and once the server is back
/// the agent lists and applies the cluster. Kernel features: see the file's header.
#[test]
fn agent_restart_with_the_api_server_down_keeps_flows_and_the_snat_source() {
    let c = Cluster::new([1, 1]);
    let mut k = KubeAgent::serve(&c.node1, "node1", &["ext0", "fab0"]);
    k.put(nodes());
    k.put([service("web", "NodePort", 10, WEB, false)]);
    k.put(slices(&c, "web", &["p11", "p21"]));
    k.start();
    k.wait_local_endpoints(2);
    // One connection to each pod, per family.
    let mut conns = Vec::new();
    for v6 in [false, true] {
        let want = [("p11", client(v6)), ("p21", snat(v6))];
        k.wait_answers(&c.client, node_port(v6, false, WEB), false, 20, &want);
        for (id, peer) in want {
            for _ in 0..60 {
                let mut conn = PeerConn::open(&c.client, node_port(v6, false, WEB));
                let a = conn.ask("first").unwrap();
                if a.id == id {
                    assert_eq!(a.peer, peer);
                    conns.push((conn, id, peer));
                    break;
                }
            }
        }
    }
    assert_eq!(conns.len(), 4, "a connection to each pod in each family");
    k.agent.stop();
    for (conn, id, peer) in &mut conns {
        let a = conn.ask("stopped").unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!((a.id.as_str(), a.peer), (*id, *peer));
    }
    // Started again while the API server is down: the datapath the earlier run left serves on
    // (local endpoints, services, and the SNAT source, which stays node1's InternalIP rather
    // than falling back to a device address before any Node object is known).
    k.api.set_down(true);
    k.agent.start();
    for (conn, id, peer) in &mut conns {
        let a = conn
            .ask("restarted")
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!((a.id.as_str(), a.peer), (*id, *peer));
    }
    for (v6, udp) in CASES {
        let to = node_port(v6, udp, WEB);
        let want = [("p11", client(v6)), ("p21", snat(v6))];
        k.wait_answers(&c.client, to, udp, 30, &want);
    }
    assert_eq!(
        k.status()["reloads"],
        0,
        "nothing listed while the API server is down"
    );
    k.api.set_down(false);
    k.wait_applied();
    k.wait_local_endpoints(2);
    for (v6, udp) in CASES {
        let to = node_port(v6, udp, WEB);
        let want = [("p11", client(v6)), ("p21", snat(v6))];
        k.wait_answers(&c.client, to, udp, 30, &want);
    }
    for (conn, id, peer) in &mut conns {
        let a = conn.ask("listed").unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!((a.id.as_str(), a.peer), (*id, *peer));
    }
    assert_eq!(k.status()["last_error"], Value::Null);
}

/// `svc` with service.cilium.io/forwarding-mode: dsr.
fn dsr(svc: (Res, Value)) -> (Res, Value) {
    let (res, mut obj) = svc;
    obj["metadata"]["annotations"] = json!({"service.cilium.io/forwarding-mode": "dsr"});
    (res, obj)
}

/// DSR per service: both nodes run the agent (node2 with the NodePort programs on its fabric
/// device). node1 tunnels the client's packets to node2's pod; node2 takes the tunnel off and
/// DNATs to the pod, which sees the client itself; node2 restores the reply's source to node1's
/// NodePort, so node1 reverse-translates nothing. Removing the annotation goes back to SNAT.
/// Kernel features: the file's header, plus bpf_skb_adjust_room IP-in-IP encapsulation
/// (BPF_F_ADJ_ROOM_ENCAP_L3_*) and decapsulation (BPF_F_ADJ_ROOM_DECAP_L3_*, kernel ≥ 6.3).
#[test]
fn dsr_service_reaches_a_remote_pod_that_sees_the_client_and_answers_it() {
    let c = Cluster::new([1, 1]);
    let mut k1 = KubeAgent::serve(&c.node1, "node1", &["ext0", "fab0"]);
    let mut k2 = KubeAgent::serve(&c.node2, "node2", &["fab0"]);
    for k in [&k1, &k2] {
        k.put(nodes());
        k.put([dsr(service("web", "NodePort", 10, WEB, false))]);
        k.put(slices(&c, "web", &["p21"]));
    }
    k2.start();
    k2.wait_local_endpoints(2);
    k1.start();
    for (v6, udp) in CASES {
        let to = node_port(v6, udp, WEB);
        k1.wait_answers(&c.client, to, udp, 10, &[("p21", client(v6))]);
    }
    let (s1, s2) = (k1.status(), k2.status());
    assert!(k1.counter("dsr", false) >= 40, "{s1}");
    assert_eq!(k1.counter("remote", false), 0, "{s1}");
    assert_eq!(k1.counter("rev_snat", false), 0, "{s1}");
    assert!(k2.counter("dsr_in", false) >= 40, "{s2}");
    assert!(k2.counter("rev_dnat", false) >= 40, "{s2}");
    // The annotation removed: SNAT again, the pod sees node1.
    for k in [&k1, &k2] {
        k.put([service("web", "NodePort", 10, WEB, false)]);
    }
    for (v6, udp) in CASES {
        let to = node_port(v6, udp, WEB);
        k1.wait_answers(&c.client, to, udp, 5, &[("p21", snat(v6))]);
    }
    assert!(k1.counter("rev_snat", false) >= 20, "{}", k1.status());
}

/// XDP acceleration (`--nodeport-acceleration generic` on node1's devices): flows to node2's pod
/// and their replies are sent on at XDP, first with SNAT, then (annotation) through the DSR
/// tunnel; a flow to node1's own pod passes on to tc, which delivers it with the client's address.
/// Kernel features: the file's header, plus generic XDP through bpf_links, bpf_fib_lookup and
/// bpf_redirect from XDP, bpf_xdp_adjust_head (the DSR tunnel).
#[test]
fn xdp_acceleration_serves_remote_backends_and_leaves_local_ones_to_tc() {
    let c = Cluster::new([1, 1]);
    let mut k1 = KubeAgent::serve(&c.node1, "node1", &["ext0", "fab0"]);
    let mut k2 = KubeAgent::serve(&c.node2, "node2", &["fab0"]);
    for k in [&k1, &k2] {
        k.put(nodes());
        k.put([service("web", "NodePort", 10, WEB, false)]);
        k.put(slices(&c, "web", &["p11", "p21"]));
    }
    k2.start();
    k1.agent.add_args(["--nodeport-acceleration", "generic"]);
    k1.start();
    k1.wait_local_endpoints(2);
    assert_eq!(k1.status()["nodeport"]["xdp_acceleration"], true);
    for (v6, udp) in CASES {
        let to = node_port(v6, udp, WEB);
        let want = [("p11", client(v6)), ("p21", snat(v6))];
        k1.wait_answers(&c.client, to, udp, 30, &want);
    }
    let s = k1.status();
    // Every remote flow's packets in both directions went through XDP.
    let (xdp, remote, rev) = (
        k1.counter("xdp", false),
        k1.counter("remote", false),
        k1.counter("rev_snat", false),
    );
    assert!(remote >= 20 && rev >= 20, "{s}");
    assert_eq!(xdp, remote + rev, "{s}");
    assert!(k1.counter("local", false) >= 20, "{s}");
    // DSR: the tunnel leaves from XDP too.
    for k in [&k1, &k2] {
        k.put([dsr(service("web", "NodePort", 10, WEB, false))]);
    }
    for (v6, udp) in CASES {
        let to = node_port(v6, udp, WEB);
        let want = [("p11", client(v6)), ("p21", client(v6))];
        k1.wait_answers(&c.client, to, udp, 30, &want);
    }
    let s = k1.status();
    assert!(k1.counter("dsr", false) >= 20, "{s}");
    assert!(k1.counter("xdp", false) > xdp, "{s}");
    assert!(k2.counter("dsr_in", false) >= 20, "{}", k2.status());
}
