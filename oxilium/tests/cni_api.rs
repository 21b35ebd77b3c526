//! The CNI side of the node agent fed by the (fake) Kubernetes API server instead of a manifests
//! folder: the pool from the Node's podCIDRs, the Pod's labels looked up in the API source's Pods
//! (K8S_POD_NAMESPACE / K8S_POD_NAME in CNI_ARGS), and the routes to another Node following its
//! watch events.
//! Kernel features: network namespaces, veth, rtnetlink route events, tc BPF through TCX links
//! (≥ 6.6), cgroup v2 (socket LB), bpffs. Requires root; fails (never skips) when it cannot set up.
mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::{
    cni::{PluginDir, cni, conf},
    fake_api::Res,
    kube_agent::KubeAgent,
    netns::{Netns, unique, veth},
};

fn node(name: &str, cidr: &str, ip: &str) -> (Res, Value) {
    (
        Res::Nodes,
        json!({"metadata": {"name": name}, "spec": {"podCIDRs": [cidr]},
               "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
    )
}

fn routes(ns: &Netns) -> String {
    String::from_utf8_lossy(&ns.run(&["ip", "route", "show", "proto", "211"]).stdout).into_owned()
}

/// Pod labels and node routes from the API source.
#[test]
fn cni_with_the_api_source() {
    let p = unique("ca");
    let node_ns = Netns::new(&format!("{p}n"));
    let wire = Netns::new(&format!("{p}w"));
    veth(&node_ns, "eth0", &wire, "peer");
    node_ns.run(&["ip", "addr", "add", "10.200.0.1/24", "dev", "eth0"]);
    let mut ka = KubeAgent::serve(&node_ns, "node-a", &["eth0"]);
    let state = ka.agent.dir().join("state");
    ka.agent
        .add_args(["--cni".as_ref(), "--state-dir".as_ref(), state.as_os_str()]);
    ka.put([
        node("node-a", "10.244.1.0/24", "10.200.0.1"),
        (
            Res::Pods,
            json!({"metadata": {"name": "web-1", "namespace": "default",
                                "labels": {"app": "web", "tier": "front"}},
                   "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]}}),
        ),
    ]);
    ka.start();
    let plugin = PluginDir::new(&p);
    let c = conf("1.1.0", ka.agent.socket());
    ka.eventually("STATUS ok", || {
        let r = cni(&plugin, &[("CNI_COMMAND", "STATUS")], &c);
        r.ok.then_some(()).ok_or(r.out)
    });
    let pods: Vec<Netns> = (1..=2).map(|i| Netns::new(&format!("{p}p{i}"))).collect();
    for (i, pod) in pods.iter().enumerate() {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-{}",
            i + 1
        );
        let r = cni(
            &plugin,
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", &format!("c{i}")),
                ("CNI_NETNS", &pod.path()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
            ],
            &c,
        );
        assert!(r.ok, "{} {}", r.out, r.stderr);
        assert_eq!(r.out["ips"][0]["address"], format!("10.244.1.{}/32", i + 1));
    }
    let list = ka.agent.cli(&["endpoint", "list"]);
    let by_pod = |name: &str| -> Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["pod"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {list}"))
    };
    assert_eq!(
        by_pod("default/web-1")["labels"],
        json!({"app": "web", "tier": "front"})
    );
    // A Pod the source does not have: the endpoint is made, without labels.
    assert_eq!(by_pod("default/web-2")["labels"], json!({}));

    // Another Node appears: its route follows; it goes: the route goes.
    ka.put([node("node-b", "10.244.2.0/24", "10.200.0.2")]);
    ka.agent
        .eventually(Duration::from_secs(10), "route to node-b", || {
            let r = routes(&node_ns);
            r.contains("10.244.2.0/24 via 10.200.0.2")
                .then_some(())
                .ok_or(r)
        });
    ka.api.delete(Res::Nodes, "", "node-b");
    ka.agent
        .eventually(Duration::from_secs(10), "route to node-b gone", || {
            let r = routes(&node_ns);
            (!r.contains("10.244.2.0/24")).then_some(()).ok_or(r)
        });
}

fn pod(name: &str, app: &str) -> (Res, Value) {
    (
        Res::Pods,
        json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
               "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]}}),
    )
}

/// Network policy from the API server: a NetworkPolicy letting only the client into web, then
/// (the NetworkPolicy deleted) a CiliumNetworkPolicy denying the client, then none; each watch
/// event reaches the kernel (real TCP connections between pods made through the plugin), and the
/// Namespace's labels come from the API too (the CiliumNetworkPolicy selects by them).
///
/// Kernel features: as the module's, and LPM tries in hash-of-maps (the policy maps).
#[test]
fn policy_from_the_api_server() {
    use support::servers::{Servers, tcp_request};
    let p = unique("cp");
    let node_ns = Netns::new(&format!("{p}n"));
    let mut ka = KubeAgent::serve(&node_ns, "node-a", &["lo"]);
    let state = ka.agent.dir().join("state");
    ka.agent
        .add_args(["--cni".as_ref(), "--state-dir".as_ref(), state.as_os_str()]);
    ka.put([
        node("node-a", "10.244.1.0/24", "10.200.0.1"),
        (
            Res::Namespaces,
            json!({"metadata": {"name": "default", "labels": {"team": "blue"}}}),
        ),
        pod("web", "web"),
        pod("client", "client"),
        pod("other", "other"),
    ]);
    ka.start();
    let plugin = PluginDir::new(&p);
    let c = conf("1.1.0", ka.agent.socket());
    ka.eventually("STATUS ok", || {
        let r = cni(&plugin, &[("CNI_COMMAND", "STATUS")], &c);
        r.ok.then_some(()).ok_or(r.out)
    });
    let mut pods = Vec::new();
    for (i, name) in ["web", "client", "other"].iter().enumerate() {
        let ns = Netns::new(&format!("{p}p{i}"));
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
        let r = cni(
            &plugin,
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", &format!("c{i}")),
                ("CNI_NETNS", &ns.path()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
            ],
            &c,
        );
        assert!(r.ok, "{} {}", r.out, r.stderr);
        pods.push(ns);
    }
    let web: std::net::SocketAddr = "10.244.1.1:8080".parse().unwrap();
    let _srv = Servers::start(&pods[0], "web", &[web]);
    // (client, other) reach web?
    let reach = |want: (bool, bool), what: &str| {
        ka.eventually(what, || {
            let got = (
                tcp_request(&pods[1], web).is_ok(),
                tcp_request(&pods[2], web).is_ok(),
            );
            (got == want).then_some(()).ok_or(got)
        })
    };
    reach((true, true), "no policy: both in");
    ka.put([(
        Res::NetworkPolicies,
        json!({"metadata": {"name": "web-from-client", "namespace": "default"},
               "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                     "ports": [{"protocol": "TCP", "port": 8080}]}]}}),
    )]);
    reach((true, false), "NetworkPolicy: the client only");
    ka.api
        .delete(Res::NetworkPolicies, "default", "web-from-client");
    ka.put([(
        Res::CiliumNetworkPolicies,
        json!({"metadata": {"name": "no-client", "namespace": "default"},
               "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                        "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}],
                        "ingress": [{"fromEndpoints": [{"matchLabels": {
                            "io.cilium.k8s.namespace.labels.team": "blue"}}]}]}}),
    )]);
    reach(
        (false, true),
        "CiliumNetworkPolicy: everyone but the client",
    );
    ka.api
        .delete(Res::CiliumNetworkPolicies, "default", "no-client");
    reach((true, true), "policies deleted: both in");
    let policy = ka.agent.cli(&["policy", "get", "default/web"]);
    assert!(
        policy["counters"]["denied"].as_u64().unwrap() > 0,
        "{policy:#}"
    );
}
