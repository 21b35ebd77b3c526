//! Three nodes of a cluster network: node namespaces `eth0` 10.200.0.{1,2,3}/24 on one bridge
//! (a bridge device in a namespace of its own), an "outside" namespace on the same bridge
//! (10.200.0.100), an agent per node with `--cni`, `--device eth0` and a manifests folder listing
//! the three Nodes (podCIDRs 10.244.{1,2,3}.0/24) and a Service whose backends are pods of
//! nodes 2 and 3, and pods made through the plugin binary on each node. Optionally ([`Setup`])
//! more manifests and etcd as the nodes' kvstore, in the bridge's namespace at [`ETCD_IP`].
use super::{
    agent::AgentProcess,
    cni::{PluginDir, add, conf, v4},
    etcd::Etcd,
    netns::{Netns, sh, unique, veth},
};
use serde_json::Value;
use std::time::{Duration, Instant};

pub const CIP: &str = "10.96.0.10";
pub const NODE_PORT: u16 = 30080;
pub const OUTSIDE: &str = "10.200.0.100";
/// etcd's address on the bridge (with [`Setup::etcd`]).
pub const ETCD_IP: &str = "10.200.0.254";

pub fn node_ip(i: usize) -> String {
    format!("10.200.0.{i}")
}

/// The manifests: the Nodes in `nodes` (1-based), the Service `web` (ClusterIP and NodePort)
/// backed by the first pod of nodes 2 and 3 (10.244.2.1, 10.244.3.1).
pub fn manifests(nodes: &[usize]) -> String {
    let mut y = String::new();
    for i in nodes {
        y += &format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-{i}}}\n\
             spec: {{podCIDRs: [\"10.244.{i}.0/24\"]}}\n\
             status:\n  addresses: [{{type: InternalIP, address: 10.200.0.{i}}}]\n---\n"
        );
    }
    y += r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-4, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: ["10.244.2.1"]
    nodeName: node-2
  - addresses: ["10.244.3.1"]
    nodeName: node-3
"#;
    y
}

/// What [`Nodes::with`] adds to the plain bed.
#[derive(Default)]
pub struct Setup {
    /// More files (name, text) in every node's manifests folder before the agents start.
    pub files: Vec<(String, String)>,
    /// etcd on the bridge, and every agent with `--kvstore etcd` on it.
    pub etcd: bool,
}

pub struct Nodes {
    pub plugin: PluginDir,
    pub agents: Vec<AgentProcess>,
    /// Stopped after the agents, before the bridge's namespace goes.
    pub etcd: Option<Etcd>,
    /// pods[node-1][j]: pod j of node `node`.
    pub pods: Vec<Vec<Netns>>,
    /// The address each pod got.
    pub pod_ips: Vec<Vec<String>>,
    pub outside: Netns,
    pub nodes: Vec<Netns>,
    pub bridge: Netns,
}

impl Nodes {
    /// The bed with `per_node` pods on each node; `extra`: more agent flags.
    pub fn new(tag: &str, per_node: usize, extra: &[&str]) -> Nodes {
        Self::with(tag, per_node, extra, Setup::default())
    }

    /// As [`Nodes::new`], with `setup`'s files and kvstore.
    pub fn with(tag: &str, per_node: usize, extra: &[&str], setup: Setup) -> Nodes {
        let p = unique(tag);
        let bridge = Netns::new(&format!("{p}br"));
        bridge.run(&["ip", "link", "add", "br0", "type", "bridge"]);
        bridge.run(&["ip", "link", "set", "br0", "up"]);
        let etcd = setup.etcd.then(|| {
            bridge.run(&["ip", "addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
            Etcd::start(&bridge, &["127.0.0.1", ETCD_IP])
        });
        let kv = format!("http://{ETCD_IP}:2379");
        let kv_args: &[&str] = if setup.etcd {
            &["--kvstore", "etcd", "--kvstore-endpoint", &kv]
        } else {
            &[]
        };
        let plug = |ns: &Netns, port: &str, addr: &str| {
            veth(ns, "eth0", &bridge, port);
            bridge.run(&["ip", "link", "set", port, "master", "br0"]);
            ns.run(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        };
        let mut nodes = Vec::new();
        let mut agents = Vec::new();
        for i in 1..=3 {
            let n = Netns::new(&format!("{p}n{i}"));
            plug(&n, &format!("b{i}"), &node_ip(i));
            let a = AgentProcess::cni_node(&n, &format!("{tag}{i}"), &format!("node-{i}"))
                .args(["--device", "eth0"])
                .args(extra)
                .args(kv_args)
                .cgroup()
                .build();
            a.write_file("manifests/all.yaml", &manifests(&[1, 2, 3]));
            for (name, text) in &setup.files {
                a.write_file(&format!("manifests/{name}"), text);
            }
            nodes.push(n);
            agents.push(a);
        }
        let outside = Netns::new(&format!("{p}out"));
        plug(&outside, "bo", OUTSIDE);
        let plugin = PluginDir::new(&p);
        for a in &mut agents {
            a.start();
        }
        let mut b = Nodes {
            plugin,
            agents,
            etcd,
            pods: Vec::new(),
            pod_ips: Vec::new(),
            outside,
            nodes,
            bridge,
        };
        for i in 0..3 {
            b.wait_ready(i);
            let mut pods = Vec::new();
            let mut ips = Vec::new();
            for j in 0..per_node {
                let ns = Netns::new(&format!("{p}p{}{j}", i + 1));
                let r = add(
                    &b.plugin,
                    &conf("1.1.0", b.agents[i].socket()),
                    &format!("n{}p{j}", i + 1),
                    &ns.path(),
                    &format!("web-{}-{j}", i + 1),
                );
                ips.push(v4(&r));
                pods.push(ns);
            }
            b.pods.push(pods);
            b.pod_ips.push(ips);
        }
        b
    }

    /// STATUS answers (the Node's podCIDRs are in).
    fn wait_ready(&self, i: usize) {
        let c = conf("1.1.0", self.agents[i].socket());
        self.agents[i].eventually(Duration::from_secs(10), "STATUS ok", || {
            let r = super::cni::cni(&self.plugin, &[("CNI_COMMAND", "STATUS")], &c);
            r.ok.then_some(()).ok_or(r.out)
        });
    }

    /// The routes of the agent's protocol with a gateway on node `i` (0-based): dst → (gateway,
    /// device).
    pub fn node_routes(&self, i: usize) -> Vec<(String, String, String)> {
        let out = self.nodes[i].run(&["ip", "-j", "route", "show", "proto", "211"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let mut r: Vec<(String, String, String)> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["gateway"].is_string())
            .map(|r| {
                (
                    r["dst"].as_str().unwrap().to_string(),
                    r["gateway"].as_str().unwrap().to_string(),
                    r["dev"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        r.sort();
        r
    }

    /// Waits (up to `limit`) for node `i`'s routes to be `want` (dst, gateway); returns how long
    /// it took.
    #[track_caller]
    pub fn wait_routes(&self, i: usize, want: &[(&str, &str)], limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let have: Vec<(String, String)> = self
                .node_routes(i)
                .into_iter()
                .map(|(d, g, _)| (d, g))
                .collect();
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(d, g)| (d.to_string(), g.to_string()))
                .collect();
            if have == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "node {}: routes {have:?}, want {want:?}\n{}",
                i + 1,
                self.agents[i].log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A device's transmitted packets on node `i`.
    pub fn tx_packets(&self, i: usize, dev: &str) -> u64 {
        let out = self.nodes[i].run(&["ip", "-s", "-j", "link", "show", "dev", dev]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
    }
}

/// `ip -j link show dev eth0` in a pod: its MTU.
pub fn pod_mtu(pod: &Netns) -> u64 {
    let out = pod.run(&["ip", "-j", "link", "show", "dev", "eth0"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["mtu"].as_u64().unwrap()
}

/// Whether the kernel has the vxlan module (fails the test with a clear message otherwise).
pub fn require_vxlan() {
    let out = sh(&["sh", "-c", "modprobe vxlan 2>/dev/null; echo ok"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}
