//! End-to-end tests of `oxilium agent --role node` (kube-proxy replacement) from a folder of
//! Kubernetes manifests: a node network namespace with pods behind veth pairs, the real agent,
//! real client processes in a test-made cgroup. Kernel features: cgroup v2,
//! BPF_PROG_TYPE_CGROUP_SOCK_ADDR (connect/sendmsg/recvmsg/getpeername, IPv4 and IPv6),
//! bpf_link pinning, BTF maps with map-in-map, network namespaces, veth. Requires root; fails
//! (never skips) when it cannot set up.
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};
use support::{
    agent::AgentProcess,
    cgroup::{Answer, run_client},
    netns::{Netns, pod_ip, unique, wire_pod},
    servers::Servers,
};

const NODE4: &str = "10.200.0.1";
const NODE6: &str = "fd00:200::1";
const CIP4: &str = "10.96.0.10";
const CIP6: &str = "fd00:96::10";

/// The manifests: node-a, a dual-stack NodePort Service `web` (http 80/TCP → 8080, dns 53/UDP →
/// 8080) and its EndpointSlices with the given endpoints (index, ready, terminating).
fn manifests(endpoints: &[(usize, bool, bool)]) -> String {
    let mut y = format!(
        r#"apiVersion: v1
kind: Node
metadata: {{name: node-a, labels: {{topology.kubernetes.io/zone: z1}}}}
status:
  addresses: [{{type: InternalIP, address: {NODE4}}}, {{type: InternalIP, address: "{NODE6}"}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  clusterIP: {CIP4}
  clusterIPs: [{CIP4}, "{CIP6}"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports:
    - {{name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}}
    - {{name: dns, port: 53, targetPort: 8080, protocol: UDP, nodePort: 30053}}
"#
    );
    for (fam, ty) in [(4, "IPv4"), (6, "IPv6")] {
        y += &format!(
            r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-{fam}
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: {ty}
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 8080, protocol: UDP}}]
endpoints:
"#
        );
        for (i, ready, terminating) in endpoints {
            let a = pod_ip(*i, fam == 6);
            y += &format!(
                "  - addresses: [\"{a}\"]\n    nodeName: node-a\n    conditions: {{ready: {ready}, serving: true, terminating: {terminating}}}\n"
            );
        }
    }
    y
}

/// Fields drop in order: the agent (killed; its pins, files and cgroup removed), servers, pods,
/// node.
struct Node {
    /// `--role node --node node-a --manifests DIR/manifests` with a cgroup.
    agent: AgentProcess,
    _servers: Vec<Servers>,
    pods: Vec<Netns>,
    node: Netns,
}

impl Node {
    fn new() -> Node {
        let p = unique("k");
        let node = Netns::new(&format!("{p}n"));
        node.run(&["ip", "addr", "add", &format!("{NODE4}/32"), "dev", "lo"]);
        node.run(&[
            "ip",
            "addr",
            "add",
            &format!("{NODE6}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
        node.run(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]);
        let mut pods = Vec::new();
        let mut servers = Vec::new();
        for i in 1..=3 {
            let pod = Netns::new(&format!("{p}p{i}"));
            wire_pod(&node, &pod, i);
            let addrs = [false, true].map(|v6| SocketAddr::new(pod_ip(i, v6), 8080));
            servers.push(Servers::start(&pod, &format!("b{i}"), &addrs));
            pods.push(pod);
        }
        let agent = AgentProcess::builder(&node, "kn")
            .args(["--role", "node", "--node", "node-a", "--watch-ms", "100"])
            .file_arg("--manifests", "manifests")
            .cgroup()
            .build();
        Node {
            agent,
            _servers: servers,
            pods,
            node,
        }
    }

    /// A node whose agent runs with pods 1-3 as ready endpoints of `web`.
    fn started() -> Node {
        let mut n = Node::new();
        n.write(&manifests(&[
            (1, true, false),
            (2, true, false),
            (3, true, false),
        ]));
        n.agent.start();
        n
    }

    fn write(&self, yaml: &str) {
        self.agent.write_file("manifests/web.yaml", yaml);
    }

    /// Waits (10 s at most) until `f` is Ok; panics with its last error, the status and the log.
    #[track_caller]
    fn eventually<E: std::fmt::Debug>(&self, what: &str, f: impl FnMut() -> Result<(), E>) {
        self.agent.eventually(Duration::from_secs(10), what, f);
    }

    #[track_caller]
    /// `n` requests from a client process in `ns` (inside the translated cgroup); every one must
    /// succeed with `peer` (the service address) as the socket's peer. Returns backends seen.
    fn spread(
        &self,
        ns: &Netns,
        mode: &str,
        host: &str,
        port: u16,
        n: usize,
    ) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for a in run_client(Some(self.agent.cgroup()), ns, mode, host, port, n) {
            match a {
                Answer::Ok { id, peer, port: p } => {
                    assert_eq!((peer.as_str(), p), (host, port), "{mode} peer");
                    *seen.entry(id).or_default() += 1;
                }
                Answer::Err(e) => panic!(
                    "{mode} to {host}:{port}: errno {e}\n{}\n{}",
                    self.agent.status_text(),
                    self.agent.log()
                ),
            }
        }
        seen
    }
}

fn ids(seen: &BTreeMap<String, usize>) -> BTreeSet<&str> {
    seen.keys().map(String::as_str).collect()
}

const ALL: [&str; 3] = ["b1", "b2", "b3"];

#[test]
fn cluster_ip_and_node_port_from_the_node_and_from_a_pod() {
    let n = Node::started();
    let node = &n.node;
    let pod = &n.pods[0];
    for ns in [node, pod] {
        assert_eq!(ids(&n.spread(ns, "tcp", CIP4, 80, 30)), ALL.into());
        assert_eq!(ids(&n.spread(ns, "udp", CIP4, 53, 30)), ALL.into());
        assert_eq!(ids(&n.spread(ns, "tcp", CIP6, 80, 30)), ALL.into());
    }
    // NodePort on the node's own addresses, reached from the node.
    assert_eq!(ids(&n.spread(node, "tcp", NODE4, 30080, 30)), ALL.into());
    assert_eq!(ids(&n.spread(node, "udp", NODE6, 30053, 30)), ALL.into());
    let services = n.agent.cli(&["service", "list"]);
    let names: BTreeSet<String> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names
            .iter()
            .any(|s| s.contains("default/web:http/ClusterIP")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|s| s.contains("default/web:dns/NodePort")),
        "{names:?}"
    );
}

#[test]
fn endpoint_changes_and_the_terminating_fallback_are_applied() {
    let n = Node::started();
    assert_eq!(ids(&n.spread(&n.node, "tcp", CIP4, 80, 30)), ALL.into());
    // b2 goes away, b3 is terminating while b1 is ready: only b1 takes new connections.
    n.write(&manifests(&[(1, true, false), (3, false, true)]));
    n.eventually("only b1", || {
        let seen = n.spread(&n.node, "tcp", CIP4, 80, 20);
        (ids(&seen) == ["b1"].into()).then_some(()).ok_or(seen)
    });
    // Nothing ready: the serving, terminating endpoints take the traffic.
    n.write(&manifests(&[(2, false, true), (3, false, true)]));
    n.eventually("the terminating fallback", || {
        let seen = n.spread(&n.node, "udp", CIP4, 53, 20);
        (ids(&seen) == ["b2", "b3"].into())
            .then_some(())
            .ok_or(seen)
    });
    // An invalid folder changes nothing and is reported.
    n.write("apiVersion: v1\nkind: Service\nmetadata: {name: x\n");
    n.eventually("the error reported", || {
        let s = n.agent.status();
        (!s["last_error"].is_null()).then_some(()).ok_or(s)
    });
    assert_eq!(
        ids(&n.spread(&n.node, "udp", CIP4, 53, 20)),
        ["b2", "b3"].into()
    );
}
