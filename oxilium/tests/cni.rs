//! End-to-end tests of the CNI plugin: `oxilium-cni` (the binary under that name) called exactly
//! as a runtime calls it (exec with the CNI_* environment and the network configuration on
//! stdin) against a real node agent (`--role node --cni`, manifests folder with a Node holding
//! podCIDRs) in a test-made node namespace; pods are test-made namespaces.
//! Kernel features: network namespaces, veth made through rtnetlink with IFLA_NET_NS_FD, tc BPF
//! through TCX links (≥ 6.6) with bpf_redirect_peer (≥ 5.10), cgroup v2 with
//! BPF_PROG_TYPE_CGROUP_SOCK_ADDR (socket LB), bpf_link pinning. Requires root; fails (never
//! skips) when it cannot set up.
mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use support::{
    agent::AgentProcess,
    cgroup::{Answer, run_client},
    cni::{PluginDir, Run, cni, conf, v4},
    netns::{Netns, unique},
    servers::{Servers, tcp_request},
};

const CIP4: &str = "10.96.0.10";

fn manifests() -> String {
    let mut y = String::from(
        r#"apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDRs: ["10.244.1.0/29", "fd00:244:1::/120"]}
status:
  addresses: [{type: InternalIP, address: 10.200.0.1}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: default, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, image: x}]}
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
"#,
    );
    // The first two pods ADDed on a fresh node get .1 and .2.
    for a in ["10.244.1.1", "10.244.1.2"] {
        y += &format!("  - addresses: [\"{a}\"]\n    nodeName: node-a\n");
    }
    y
}

struct Bed {
    plugin: PluginDir,
    agent: AgentProcess,
    pods: Vec<Netns>,
    node: Netns,
}

impl Bed {
    fn new() -> Bed {
        let p = unique("cni");
        let node = Netns::new(&format!("{p}n"));
        let agent = AgentProcess::cni_node(&node, "cni", "node-a")
            .cgroup()
            .build();
        agent.write_file("manifests/all.yaml", &manifests());
        let pods = (1..=8).map(|i| Netns::new(&format!("{p}p{i}"))).collect();
        Bed {
            plugin: PluginDir::new(&p),
            agent,
            pods,
            node,
        }
    }

    fn conf(&self, version: &str) -> String {
        conf(version, self.agent.socket())
    }

    /// `cmd` for pod `i` (1-based), container id `c{i}`.
    fn call(&self, cmd: &str, i: usize, version: &str) -> Run {
        let ns = self.pods[i - 1].path();
        let id = format!("c{i}");
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-{i}");
        cni(
            &self.plugin,
            &[
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", &id),
                ("CNI_NETNS", &ns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
            ],
            &self.conf(version),
        )
    }

    #[track_caller]
    fn add(&self, i: usize) -> Value {
        let r = self.call("ADD", i, "1.1.0");
        assert!(r.ok, "ADD pod {i}: {}\n{}", r.out, self.agent.log());
        r.out
    }

    fn tx_packets(&self, dev: &str) -> u64 {
        let out = self
            .node
            .run(&["ip", "-s", "-j", "link", "show", "dev", dev]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
    }
}

/// ADD gives pool addresses (dual-stack) and a working pod; two pods reach each other through
/// bpf_redirect_peer (the destination veth's host side transmits nothing) and a ClusterIP through
/// the socket LB; CHECK, STATUS, VERSION answer; after a restart (now with the pod fallback of
/// `--socket-lb-host-netns-only`, served by the endpoint programs) the endpoints are still there
/// and the ClusterIP is translated per packet; DEL frees addresses, which are reused only once
/// released; the pool running out, GC, and every error code.
#[test]
fn cni_plugin_end_to_end() {
    let mut b = Bed::new();
    b.agent.start();
    // STATUS waits for the Node's podCIDRs (read from the folder just after start).
    b.agent
        .eventually(std::time::Duration::from_secs(10), "STATUS ok", || {
            let r = cni(&b.plugin, &[("CNI_COMMAND", "STATUS")], &b.conf("1.1.0"));
            r.ok.then_some(()).ok_or(r.out)
        });
    let r1 = b.add(1);
    assert_eq!(r1["cniVersion"], "1.1.0");
    assert_eq!(v4(&r1), "10.244.1.1");
    assert_eq!(r1["ips"][1]["address"], "fd00:244:1::1/128");
    assert_eq!(r1["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    // ADD again (a runtime retry): the same answer, no new address.
    assert_eq!(b.add(1)["ips"], r1["ips"]);
    // Older versions get the old layout.
    let r2 = b.call("ADD", 2, "0.3.1");
    assert!(r2.ok, "{}", r2.out);
    assert_eq!(v4(&r2.out), "10.244.1.2");
    assert_eq!(r2.out["ips"][0]["version"], "4");
    let r3 = b.add(3);
    assert_eq!(v4(&r3), "10.244.1.3");
    let addr = |ip: &str| -> SocketAddr { format!("{ip}:8080").parse().unwrap() };
    let _s1 = Servers::start(
        &b.pods[0],
        "b1",
        &[addr("10.244.1.1"), "[fd00:244:1::1]:8080".parse().unwrap()],
    );
    let _s2 = Servers::start(&b.pods[1], "b2", &[addr("10.244.1.2")]);

    // Pod to pod, both families; pod 1's host side transmits nothing: redirect_peer.
    let dev1 = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    let before = b.tx_packets(&dev1);
    for _ in 0..20 {
        assert_eq!(tcp_request(&b.pods[2], addr("10.244.1.1")).unwrap(), "b1");
    }
    assert_eq!(
        tcp_request(&b.pods[2], "[fd00:244:1::1]:8080".parse().unwrap()).unwrap(),
        "b1"
    );
    let after = b.tx_packets(&dev1);
    assert!(
        after - before < 5,
        "host side transmitted {} packets",
        after - before
    );
    // The redirect counts as a hop: the echo reply comes back with TTL (hop limit) 64 - 1; a
    // packet at its last hop is not delivered.
    for (dst, v6) in [("10.244.1.1", false), ("fd00:244:1::1", true)] {
        let mut args = vec!["ping", "-c", "1", "-W", "2"];
        if v6 {
            args.push("-6");
        }
        args.push(dst);
        let out = b.pods[2].run(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ttl=63"), "{text}");
    }
    let last = b.pods[2]
        .command(&["ping", "-c", "1", "-W", "1", "-t", "1", "10.244.1.1"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&last.stdout).contains("ttl="),
        "TTL 1 delivered"
    );
    // A ClusterIP through the socket LB (pod 3's client in the agent's cgroup).
    let answers = run_client(Some(b.agent.cgroup()), &b.pods[2], "tcp", CIP4, 80, 20);
    let mut ids: Vec<String> = answers
        .iter()
        .map(|a| match a {
            Answer::Ok { id, .. } => id.clone(),
            Answer::Err(e) => panic!("ClusterIP: {e}"),
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, ["b1", "b2"]);

    // CHECK, VERSION, endpoint list with the Pod's labels.
    let c = b.call("CHECK", 1, "1.1.0");
    assert!(c.ok && c.out.is_null(), "{}", c.out);
    assert_eq!(b.call("CHECK", 7, "1.1.0").code(), 3);
    assert_eq!(b.call("CHECK", 1, "0.3.1").code(), 1);
    let v = cni(
        &b.plugin,
        &[("CNI_COMMAND", "VERSION")],
        r#"{"cniVersion":"1.0.0"}"#,
    );
    assert!(v.ok);
    assert_eq!(
        v.out["supportedVersions"],
        json!(["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let list = b.agent.cli(&["endpoint", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    let web1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pod"] == "default/web-1")
        .unwrap();
    assert_eq!(web1["labels"]["app"], "web");

    // Restart with the pod fallback: the endpoints persist, the ClusterIP is translated by the
    // endpoint programs (the test's own process is in no translated cgroup).
    b.agent.add_args(["--socket-lb-host-netns-only"]);
    b.agent.restart();
    assert_eq!(
        b.agent.cli(&["endpoint", "list"]).as_array().unwrap().len(),
        3
    );
    let cip: SocketAddr = format!("{CIP4}:80").parse().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(tcp_request(&b.pods[2], cip).expect("ClusterIP through tc"));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(tcp_request(&b.pods[2], addr("10.244.1.2")).unwrap(), "b2");

    // After the restart the next address follows the last one; DEL frees; reuse only after.
    assert_eq!(v4(&b.add(4)), "10.244.1.4");
    let d = b.call("DEL", 4, "1.1.0");
    assert!(d.ok, "{}", d.out);
    assert!(b.call("DEL", 4, "1.1.0").ok, "DEL is idempotent");
    assert_eq!(v4(&b.add(5)), "10.244.1.5");
    assert_eq!(v4(&b.add(6)), "10.244.1.6");
    // .1-.3, .5, .6 are held: the freed .4 is handed out again, then the pool is exhausted.
    assert_eq!(v4(&b.add(4)), "10.244.1.4");
    let full = b.call("ADD", 7, "1.1.0");
    assert_eq!(full.code(), 100);
    assert!(
        full.out["msg"].as_str().unwrap().contains("10.244.1.0/29"),
        "{}",
        full.out
    );

    // GC: only pods 1-3 are valid.
    let valid: Vec<Value> = (1..=3)
        .map(|i| json!({"containerID": format!("c{i}"), "ifname": "eth0"}))
        .collect();
    let mut gc: Value = serde_json::from_str(&b.conf("1.1.0")).unwrap();
    gc["cni.dev/valid-attachments"] = valid.into();
    let g = cni(&b.plugin, &[("CNI_COMMAND", "GC")], &gc.to_string());
    assert!(g.ok, "{}", g.out);
    let list = b.agent.cli(&["endpoint", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    let gone = b.pods[4].run(&["ip", "-j", "link", "show"]);
    assert!(
        !String::from_utf8_lossy(&gone.stdout).contains("eth0"),
        "GC removed pod 5's veth"
    );
    // The search goes on after the last address handed out (.4).
    assert_eq!(v4(&b.add(7)), "10.244.1.5");

    // Errors.
    let run = |env: &[(&str, &str)], stdin: &str| cni(&b.plugin, env, stdin);
    let add_env = |ns: &str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_CONTAINERID", "x1".into()),
            ("CNI_NETNS", ns.into()),
            ("CNI_IFNAME", "eth0".into()),
        ]
    };
    let ns8 = b.pods[7].path();
    let env8 = add_env(&ns8);
    let env8: Vec<(&str, &str)> = env8.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(run(&env8, "{not json").code(), 6);
    let bad_version = run(&env8, &conf("0.2.0", b.agent.socket()));
    assert_eq!(bad_version.code(), 1);
    assert!(bad_version.out["msg"].as_str().unwrap().contains("0.2.0"));
    let no_netns: Vec<(&str, &str)> = env8
        .iter()
        .copied()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    let e = run(&no_netns, &b.conf("1.1.0"));
    assert_eq!(e.code(), 7);
    assert!(e.out["msg"].as_str().unwrap().contains("CNI_NETNS"));
    let mut mtu: Value = serde_json::from_str(&b.conf("1.1.0")).unwrap();
    mtu["mtu"] = "big".into();
    let e = run(&env8, &mtu.to_string());
    assert_eq!(e.code(), 4);
    assert!(e.out["msg"].as_str().unwrap().contains("mtu"));

    // The agent down: ADD says try again later, STATUS not available, DEL cleans the pod side.
    b.agent.stop();
    let e = run(&env8, &b.conf("1.1.0"));
    assert_eq!(e.code(), 11);
    assert!(
        e.out["msg"].as_str().unwrap().contains("not answering"),
        "{}",
        e.out
    );
    assert_eq!(
        run(&[("CNI_COMMAND", "STATUS")], &b.conf("1.1.0")).code(),
        50
    );
    let d = b.call("DEL", 1, "1.1.0");
    assert!(d.ok, "{}", d.out);
    let left = b.pods[0].run(&["ip", "-j", "link", "show"]);
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains("eth0"),
        "DEL removed eth0"
    );
    let left = b.node.run(&["ip", "-j", "link", "show"]);
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains(&dev1),
        "host side gone too"
    );
}
