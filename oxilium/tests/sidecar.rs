//! End-to-end tests of `oxilium agent --role node --socket-lb-host-netns-only` (sidecar meshes):
//! the socket LB translates only the node namespace's sockets; pods' packets are translated by the
//! tc programs on the host side of their veths. A node network namespace with pods behind veth
//! pairs, the real agent from a manifests folder, real client processes in a test-made cgroup.
//! Kernel features: cgroup v2, BPF_PROG_TYPE_CGROUP_SOCK_ADDR (connect/sendmsg/recvmsg/
//! getpeername) with bpf_get_netns_cookie, SO_NETNS_COOKIE (≥ 5.14), tc BPF through TCX links
//! (≥ 6.6) with bpf_skb_store_bytes / bpf_l3/l4_csum_replace, bpf_link pinning, BTF maps with
//! map-in-map, LRU hash, network namespaces with IFLA_LINK_NETNSID veths. Requires root; fails
//! (never skips) when it cannot set up.
mod support;

use oxilium::bpf::podlb;
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
const CIP4: &str = "10.96.0.10";
const CIP6: &str = "fd00:96::10";
/// ClusterIP of the service with ClientIP session affinity.
const STICKY4: &str = "10.96.0.11";

/// node-a; ClusterIP services `web` (dual-stack, 80/TCP and 53/UDP → 8080) and `sticky` (IPv4,
/// 80/TCP → 8080, sessionAffinity ClientIP), both backed by pods 1 and 2.
fn manifests() -> String {
    let mut y = format!(
        r#"apiVersion: v1
kind: Node
metadata: {{name: node-a}}
status:
  addresses: [{{type: InternalIP, address: {NODE4}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {CIP4}
  clusterIPs: [{CIP4}, "{CIP6}"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports:
    - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
    - {{name: dns, port: 53, targetPort: 8080, protocol: UDP}}
---
apiVersion: v1
kind: Service
metadata: {{name: sticky, namespace: default}}
spec:
  clusterIP: {STICKY4}
  sessionAffinity: ClientIP
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
"#
    );
    for (name, fam, ty) in [
        ("web", 4, "IPv4"),
        ("web", 6, "IPv6"),
        ("sticky", 4, "IPv4"),
    ] {
        y += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{fam}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: {ty}\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 8080, protocol: UDP}}]\nendpoints:\n"
        );
        for i in [1, 2] {
            let a = pod_ip(i, fam == 6);
            y += &format!("  - addresses: [\"{a}\"]\n    nodeName: node-a\n");
        }
    }
    y
}

/// A node namespace, backend pods 1 and 2, client pod 3 (no servers: never its own backend), the
/// agent. Fields drop in order: agent (killed; its pins, files and cgroup removed), servers, pods,
/// node.
struct Node {
    /// `--role node --node node-a --manifests DIR/manifests` with a cgroup.
    agent: AgentProcess,
    _servers: Vec<Servers>,
    pods: BTreeMap<usize, Netns>,
    node: Netns,
    prefix: String,
}

impl Node {
    fn new() -> Node {
        let p = unique("sc");
        let node = Netns::new(&format!("{p}n"));
        node.run(&["ip", "addr", "add", &format!("{NODE4}/32"), "dev", "lo"]);
        node.run(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]);
        let agent = AgentProcess::builder(&node, "sc")
            .args(["--role", "node", "--node", "node-a", "--watch-ms", "100"])
            .file_arg("--manifests", "manifests")
            .cgroup()
            .build();
        agent.write_file("manifests/web.yaml", &manifests());
        let mut n = Node {
            agent,
            _servers: Vec::new(),
            pods: BTreeMap::new(),
            node,
            prefix: p,
        };
        for i in 1..=2 {
            n.add_pod(i);
            let addrs = [false, true].map(|v6| SocketAddr::new(pod_ip(i, v6), 8080));
            n._servers
                .push(Servers::start(&n.pods[&i], &format!("b{i}"), &addrs));
        }
        n.add_pod(3);
        n
    }

    /// Pod `i`: its namespace and veth (`p{i}` on the node).
    fn add_pod(&mut self, i: usize) {
        let pod = Netns::new(&format!("{}p{i}", self.prefix));
        wire_pod(&self.node, &pod, i);
        self.pods.insert(i, pod);
    }

    fn start(&mut self, host_netns_only: bool) {
        if host_netns_only {
            self.agent.add_args(["--socket-lb-host-netns-only"]);
        }
        self.agent.start();
    }

    #[track_caller]
    fn wait(&self, what: &str, ok: impl Fn() -> bool) {
        self.agent.eventually(Duration::from_secs(20), what, || {
            ok().then_some(()).ok_or("not yet")
        });
    }

    /// The node devices that carry the pod programs (from their pins).
    fn pod_devices(&self) -> BTreeSet<String> {
        podlb::pinned(self.agent.pins())
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect()
    }

    /// A socket-LB counter from `oxilium status`.
    fn sock(&self, name: &str) -> u64 {
        let st = self.agent.status();
        st["socket_lb"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no socket_lb.{name} in {st}"))
    }

    /// A pod-program counter (packets), from its pinned map.
    fn pod(&self, name: &str) -> u64 {
        let c = podlb::counters(self.agent.pins()).unwrap();
        c.iter().find(|(n, _)| *n == name).unwrap().1.packets
    }

    /// `n` requests from a client process in `ns` (inside the agent's cgroup); every one must
    /// succeed with the service address as the socket's peer (getpeername for TCP, the datagram's
    /// source for UDP). Returns the backends that answered.
    #[track_caller]
    fn spread(&self, ns: &Netns, mode: &str, host: &str, port: u16, n: usize) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        for a in run_client(Some(self.agent.cgroup()), ns, mode, host, port, n) {
            match a {
                Answer::Ok { id, peer, port: p } => {
                    assert_eq!((peer.as_str(), p), (host, port), "{mode} peer");
                    seen.insert(id);
                }
                Answer::Err(e) => {
                    panic!("{mode} to {host}:{port}: errno {e}\n{}", self.agent.log())
                }
            }
        }
        seen
    }
}

fn both() -> BTreeSet<String> {
    ["b1".to_string(), "b2".to_string()].into()
}

#[test]
fn pods_are_translated_per_packet_and_the_node_by_the_socket_lb() {
    let mut n = Node::new();
    n.start(true);
    let all: BTreeSet<String> = ["p1", "p2", "p3"].map(String::from).into();
    n.wait("the pods' veths attached", || n.pod_devices() == all);
    let client = &n.pods[&3];
    let (connect, sendmsg) = (n.sock("connect"), n.sock("sendmsg"));

    // From a pod: the real connection goes to the service address (getpeername / the UDP
    // source say so without any socket-level rewrite); the tc programs translate it.
    assert_eq!(n.spread(client, "tcp", CIP4, 80, 30), both());
    assert_eq!(n.spread(client, "udp", CIP4, 53, 30), both());
    assert_eq!(n.spread(client, "tcp", CIP6, 80, 30), both());
    assert_eq!(
        (n.sock("connect"), n.sock("sendmsg")),
        (connect, sendmsg),
        "the socket LB translated a pod's socket\n{}",
        n.agent.log()
    );
    // Every request's first packet (TCP: SYN) was DNAT'ed, every answer restored.
    let (fwd, rep) = (n.pod("forward"), n.pod("reply"));
    assert!(fwd >= 90 && rep >= 90, "forward {fwd}, reply {rep}");
    assert_eq!(n.pod("error") + n.pod("no_backend") + n.pod("family"), 0);

    // From the node: the socket LB translates, the pod programs see backend addresses only.
    assert_eq!(n.spread(&n.node, "tcp", CIP4, 80, 20), both());
    assert_eq!(n.spread(&n.node, "udp", CIP4, 53, 20), both());
    assert_eq!(n.sock("connect"), connect + 20);
    assert_eq!(n.sock("sendmsg"), sendmsg + 20);
    assert_eq!(
        n.pod("forward"),
        fwd,
        "the pod programs translated the node"
    );

    // ClientIP affinity holds on the packet path: one backend for every connection of the pod.
    let sticky = n.spread(client, "tcp", STICKY4, 80, 20);
    assert_eq!(sticky.len(), 1, "{sticky:?}");
    assert!(n.pod("affinity_hit") > 0);
}

#[test]
fn a_pod_added_after_start_gets_the_fallback_and_loses_it_when_gone() {
    let mut n = Node::new();
    n.start(true);
    n.wait("the first pods attached", || n.pod_devices().len() == 3);
    n.add_pod(4);
    n.wait("the new pod's veth attached", || {
        n.pod_devices().contains("p4")
    });
    let fwd = n.pod("forward");
    assert_eq!(n.spread(&n.pods[&4], "tcp", CIP4, 80, 20), both());
    assert_eq!(n.spread(&n.pods[&4], "udp", CIP4, 53, 20), both());
    assert!(n.pod("forward") >= fwd + 40);
    // The pod goes (its namespace and veth with it): its pins are removed.
    drop(n.pods.remove(&4));
    n.wait("the gone pod's pins removed", || {
        !n.pod_devices().contains("p4")
    });
    // --cleanup (the agent stopped) detaches everything.
    n.agent.cleanup();
    assert!(n.pod_devices().is_empty());
}

#[test]
fn without_the_flag_pods_use_the_socket_lb() {
    let mut n = Node::new();
    n.start(false);
    let connect = n.sock("connect");
    assert_eq!(n.spread(&n.pods[&3], "tcp", CIP4, 80, 20), both());
    assert_eq!(n.sock("connect"), connect + 20);
    assert!(n.pod_devices().is_empty(), "pod programs attached");
}
