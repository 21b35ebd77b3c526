//! Chaining (generic-veth): Debian's `ptp` or `bridge` plugin with `host-local` (from
//! containernetworking-plugins, /usr/lib/cni) first, `oxilium-cni` second, run as a runtime runs
//! a conflist inside a test-made node namespace with a real agent (`--role node --cni`); the
//! chained endpoints' policy is enforced.
//! Kernel features: network namespaces, veth, bridge, tc BPF through TCX links (≥ 6.6) with
//! bpf_redirect_peer (≥ 5.10), bpf_link pinning; for the `bandwidth` plugin test also ifb, the
//! legacy ingress qdisc with mirred, and TBF. Requires root and /usr/lib/cni/{ptp,bridge,
//! host-local,bandwidth} (ci/setup installs them) and iperf3; fails (never skips) without them.
mod support;

use serde_json::{Value, json};
use std::{collections::BTreeSet, net::SocketAddr, path::Path};
use support::{
    agent::AgentProcess,
    cni::{Chain, PluginDir},
    netns::{Netns, unique},
    servers::{Servers, tcp_request},
};

const CIP: &str = "10.96.0.10";

fn manifests() -> String {
    r#"apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDRs: ["10.244.1.0/24"]}
status:
  addresses: [{type: InternalIP, address: 10.200.0.1}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-4, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: ["10.88.0.2"]
  - addresses: ["10.88.0.3"]
---
apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Pod, metadata: {name: c0, namespace: default, labels: {app: b0}}}
  - {apiVersion: v1, kind: Pod, metadata: {name: c1, namespace: default, labels: {app: b1}}}
  - {apiVersion: v1, kind: Pod, metadata: {name: c2, namespace: default, labels: {app: client}}}
"#
    .into()
}

/// Pod c1 takes connections from the client (c2) only.
const B1_FROM_CLIENT: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b1-from-client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: b1}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
"#;

/// The pod's addresses and routes as `ip -j` prints them (what the first plugin set up).
fn addressing(pod: &Netns) -> (Value, Value) {
    let a = pod.run(&["ip", "-j", "addr", "show", "dev", "eth0"]);
    let r = pod.run(&["ip", "-j", "route", "show"]);
    let mut a: Value = serde_json::from_slice(&a.stdout).unwrap();
    // Counters and timers move; the addressing is what must not.
    for i in a.as_array_mut().unwrap() {
        for ai in i["addr_info"].as_array_mut().unwrap() {
            ai.as_object_mut().unwrap().remove("valid_life_time");
            ai.as_object_mut().unwrap().remove("preferred_life_time");
        }
    }
    (a, serde_json::from_slice(&r.stdout).unwrap())
}

fn chain_test(first: &str) {
    for p in ["ptp", "bridge", "host-local"] {
        assert!(
            Path::new("/usr/lib/cni").join(p).exists(),
            "/usr/lib/cni/{p} missing: run ci/setup (containernetworking-plugins)"
        );
    }
    let p = unique("ch");
    let node = Netns::new(&format!("{p}n"));
    let mut agent = AgentProcess::cni_node(&node, "chain", "node-a")
        .cgroup()
        .build();
    agent.write_file("manifests/all.yaml", &manifests());
    agent.start();
    let plugin = PluginDir::new(&p);
    let ipam = json!({"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": agent.dir().join("host-local")});
    let first_conf = match first {
        "ptp" => json!({"type": "ptp", "ipMasq": false, "ipam": ipam}),
        _ => json!({"type": "bridge", "bridge": format!("{p}b"), "isGateway": true,
                    "ipMasq": false, "ipam": ipam}),
    };
    let chain = Chain {
        version: "1.0.0".into(),
        name: "chained".into(),
        plugins: vec![
            first_conf,
            json!({"type": "oxilium-cni", "agent-socket": agent.socket()}),
        ],
        path: plugin.path_with_system(),
        node: node.path(),
        pod_names: true,
    };
    // Pods 0 and 1 back the Service, pod 2 is its client.
    let pods: Vec<Netns> = (1..=3).map(|i| Netns::new(&format!("{p}p{i}"))).collect();
    let mut results = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let id = format!("c{i}");
        // The first plugin alone, then oxilium-cni with its result: the pod's addressing is the
        // same before and after, and the chain's result is the first plugin's.
        let prev = chain.add(&id, &pod.path(), Some(1));
        let before = addressing(pod);
        let r = chain.add_rest(&id, &pod.path(), 1, prev.clone());
        assert_eq!(r, prev, "oxilium-cni passes the previous result on");
        assert_eq!(
            addressing(pod),
            before,
            "oxilium-cni left the addressing alone"
        );
        assert_eq!(
            r["ips"][0]["address"],
            format!("10.88.0.{}/24", i + 2),
            "{r}"
        );
        results.push(r);
    }
    // The endpoints: on the host end of each pod's veth (for bridge: the veth port, not the
    // bridge).
    let list = agent.cli(&["endpoint", "list"]);
    let eps = list.as_array().unwrap();
    assert_eq!(eps.len(), 3, "{list}");
    for (i, e) in eps.iter().enumerate() {
        assert_eq!(e["chained"], true);
        let dev = e["device"].as_str().unwrap();
        let link = node.run(&["ip", "-j", "-d", "link", "show", "dev", dev]);
        let l: Value = serde_json::from_slice(&link.stdout).unwrap();
        assert_eq!(l[0]["linkinfo"]["info_kind"], "veth", "endpoint {i}: {l}");
    }
    let addr = |i: usize| -> SocketAddr { format!("10.88.0.{}:8080", i + 2).parse().unwrap() };
    let _s: Vec<Servers> = (0..2)
        .map(|i| Servers::start(&pods[i], &format!("b{i}"), &[addr(i)]))
        .collect();
    // Pod to pod, both ways.
    assert_eq!(tcp_request(&pods[0], addr(1)).unwrap(), "b1");
    assert_eq!(tcp_request(&pods[1], addr(0)).unwrap(), "b0");
    // The ClusterIP, translated per packet by oxilium's programs on the chained veth (the
    // clients are in no cgroup of the socket LB).
    let cip: SocketAddr = format!("{CIP}:80").parse().unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.insert(tcp_request(&pods[2], cip).expect("ClusterIP through the chained endpoint"));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Policy on chained endpoints: c1 takes the client only; c0 is refused, the client's
    // connections (and their replies) pass, and c0 is still reachable from c1.
    agent.write_file("manifests/policy.yaml", B1_FROM_CLIENT);
    agent.eventually(
        std::time::Duration::from_secs(10),
        "c0 refused by c1",
        || match tcp_request(&pods[0], addr(1)) {
            Err(_) => Ok(()),
            Ok(a) => Err(a),
        },
    );
    assert_eq!(tcp_request(&pods[2], addr(1)).unwrap(), "b1");
    assert_eq!(tcp_request(&pods[1], addr(0)).unwrap(), "b0");
    let denied = agent.cli(&["policy", "get", "default/c1"])["counters"]["denied"]
        .as_u64()
        .unwrap();
    assert!(denied > 0);
    std::fs::remove_file(agent.dir().join("manifests/policy.yaml")).unwrap();
    agent.eventually(
        std::time::Duration::from_secs(10),
        "c0 let in again",
        || tcp_request(&pods[0], addr(1)).map(|_| ()),
    );
    // CHECK answers for a chained endpoint.
    let c = chain.run(1, "CHECK", "c0", &pods[0].path(), Some(&results[0]));
    assert!(c.ok, "{} {}", c.out, c.stderr);

    // DEL in reverse order: oxilium-cni removes only its own state.
    chain.del(1, "c0", &pods[0].path(), &results[0]);
    let still = pods[0].run(&["ip", "-j", "link", "show", "dev", "eth0"]);
    assert!(still.status.success(), "eth0 is the first plugin's");
    assert_eq!(
        agent.cli(&["endpoint", "list"]).as_array().unwrap().len(),
        2
    );
    assert_eq!(
        tcp_request(&pods[2], addr(1)).unwrap(),
        "b1",
        "the other pods still reach each other"
    );
    chain.del(0, "c0", &pods[0].path(), &results[0]);
    let gone = pods[0].run(&["ip", "-j", "link", "show"]);
    assert!(!String::from_utf8_lossy(&gone.stdout).contains("eth0"));
    for p in 1..3 {
        for i in (0..2).rev() {
            chain.del(i, &format!("c{p}"), &pods[p].path(), &results[p]);
        }
    }
    assert_eq!(
        agent.cli(&["endpoint", "list"]).as_array().unwrap().len(),
        0
    );
    // Its pins are gone with the endpoints (no link of a deleted endpoint remains).
    let pins: Vec<String> = std::fs::read_dir(agent.pins())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("link_ep_"))
        .collect();
    assert!(pins.is_empty(), "{pins:?}");
}

/// ptp + host-local, then oxilium-cni.
#[test]
fn chained_after_ptp() {
    chain_test("ptp");
}

/// bridge + host-local, then oxilium-cni (the endpoint is the veth's host end, found through the
/// pod interface's peer ifindex).
#[test]
fn chained_after_bridge() {
    chain_test("bridge");
}

/// ptp + host-local, oxilium-cni, then Debian's `bandwidth` plugin (10 Mbit/s each way): the
/// plugin's shaping holds with oxilium's endpoint programs on the same veth. Egress is the
/// plugin's ifb redirect, a legacy filter on the veth's ingress hook behind oxilium's TCX
/// program: it only runs because the program passes what it does not decide on (TCX_NEXT)
/// instead of ending the hook (TC_ACT_OK). Ingress is the plugin's TBF root qdisc on the veth.
/// iperf3, one TCP stream each way between the pod and the node.
#[test]
fn chained_bandwidth_plugin_shapes_both_directions() {
    use support::bandwidth::iperf3;
    assert!(
        Path::new("/usr/lib/cni/bandwidth").exists(),
        "/usr/lib/cni/bandwidth missing: run ci/setup (containernetworking-plugins)"
    );
    let p = unique("chbw");
    let node = Netns::new(&format!("{p}n"));
    let mut agent = AgentProcess::cni_node(&node, "chainbw", "node-a")
        .cgroup()
        .build();
    agent.write_file("manifests/all.yaml", &manifests());
    agent.start();
    let plugin = PluginDir::new(&p);
    const RATE: u64 = 10_000_000;
    let ipam = json!({"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": agent.dir().join("host-local")});
    let chain = Chain {
        version: "1.0.0".into(),
        name: "chained".into(),
        plugins: vec![
            json!({"type": "ptp", "ipMasq": false, "ipam": ipam}),
            json!({"type": "oxilium-cni", "agent-socket": agent.socket()}),
            json!({"type": "bandwidth", "ingressRate": RATE, "ingressBurst": 800_000,
                   "egressRate": RATE, "egressBurst": 800_000}),
        ],
        path: plugin.path_with_system(),
        node: node.path(),
        pod_names: true,
    };
    let pod = Netns::new(&format!("{p}p"));
    let r = chain.add("c0", &pod.path(), None);
    assert_eq!(r["ips"][0]["address"], "10.88.0.2/24", "{r}");
    let gw = r["ips"][0]["gateway"]
        .as_str()
        .expect("ptp's gateway")
        .to_string();
    let list = agent.cli(&["endpoint", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let dev = list[0]["device"].as_str().unwrap().to_string();
    // oxilium's program is still attached to the veth's ingress (its pinned TCX link), in
    // front of the plugin's ingress qdisc.
    let from = format!("link_ep_from_{dev}_");
    let pins: Vec<String> = std::fs::read_dir(agent.pins())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(pins.iter().any(|n| n.starts_with(&from)), "{pins:?}");
    let qd = node.run(&["tc", "qdisc", "show", "dev", &dev]);
    let qd = String::from_utf8_lossy(&qd.stdout).into_owned();
    assert!(qd.contains("ingress") && qd.contains("tbf"), "{qd}");
    let within = |what: &str, bits: f64| {
        println!("{what}: {:.2} Mbit/s", bits / 1e6);
        assert!(
            (0.85 * RATE as f64..=1.05 * RATE as f64).contains(&bits),
            "{what}: {:.2} Mbit/s, the plugin limits to {} Mbit/s",
            bits / 1e6,
            RATE / 1_000_000
        );
    };
    within(
        "egress (pod → node)",
        iperf3(&pod, "10.88.0.2", &node, &gw, 4, &[]).bits,
    );
    within(
        "ingress (node → pod)",
        iperf3(&pod, "10.88.0.2", &node, &gw, 4, &["-R"]).bits,
    );
    for i in (0..3).rev() {
        chain.del(i, "c0", &pod.path(), &r);
    }
    assert_eq!(
        agent.cli(&["endpoint", "list"]).as_array().unwrap().len(),
        0
    );
}
