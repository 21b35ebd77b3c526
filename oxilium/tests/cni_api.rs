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
