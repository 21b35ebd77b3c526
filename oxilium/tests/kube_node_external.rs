//! End-to-end tests of `oxilium agent --role node --device ext0`: traffic from outside the cluster
//! to NodePort, LoadBalancer and externalTrafficPolicy Local Services, served by the NodePort tc
//! programs the real agent attaches, with the local endpoints (pods behind veths) it finds through
//! netlink and the source ranges it reads from the manifests.
//!
//! ```text
//!  client ─c0──────ext0─ node-a (agent) ─p1,p2,p3─ pods 10.244.i.2 / fd00:244:i::2
//!  198.51.100.2, .66     198.51.100.1
//!  fd51::2, ::66         fd51::1
//! ```
//! Kernel features: network namespaces, veth, TCX, cgroup v2 sock_addr programs, BTF maps,
//! bpffs. Requires root: fails (never skips) when it cannot set up.
mod support;

use serde_json::Value;
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};
use support::{
    agent::AgentProcess,
    netns::{Netns, pod_ip, sh, unique, veth, wire_pod},
    peer::{Answer, PeerServers, Seen, T, ask, spread},
};

const NODE4: &str = "198.51.100.1";
const NODE6: &str = "fd51::1";
const CLIENT4: &str = "198.51.100.2";
const CLIENT6: &str = "fd51::2";
/// Outside the LoadBalancer's source ranges (198.51.100.0/28, fd51::/126).
const OUT4: &str = "198.51.100.66";
const OUT6: &str = "fd51::66";
const LB4: &str = "203.0.113.10";
const LB6: &str = "2001:db8::10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The cluster as manifests: node-a; `web` (NodePort: 30080/TCP, 30053/UDP) on the pods `web`;
/// `lb` (LoadBalancer with source ranges `ranges`, ingress LB4/LB6, externalTrafficPolicy Local,
/// health-check node port 30100) on pod 1; `loc` (NodePort
/// 30090, externalTrafficPolicy Local) on pod 2 and an endpoint of node-b nobody can reach.
fn manifests(web: &[usize], ranges: &[&str]) -> String {
    let mut y = format!(
        r#"apiVersion: v1
kind: Node
metadata: {{name: node-a}}
status:
  addresses: [{{type: InternalIP, address: {NODE4}}}, {{type: InternalIP, address: "{NODE6}"}}]
"#
    );
    let ranges = ranges
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let services = [
        ("web", 10, "NodePort", "30080", "30053", "", web.to_vec()),
        (
            "lb",
            11,
            "LoadBalancer",
            "30081",
            "30054",
            &*format!(
                "  loadBalancerSourceRanges: [{ranges}]\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 30100\n"
            ),
            vec![1],
        ),
        (
            "loc",
            12,
            "NodePort",
            "30090",
            "30055",
            "  externalTrafficPolicy: Local\n",
            vec![2, 0],
        ),
    ];
    for (name, n, ty, tcp, udp, extra, pods) in services {
        y += &format!(
            r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: {ty}
  clusterIPs: [10.96.0.{n}, "fd00:96::{n}"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports:
    - {{name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: {tcp}}}
    - {{name: dns, port: 53, targetPort: 8080, protocol: UDP, nodePort: {udp}}}
{extra}"#
        );
        if ty == "LoadBalancer" {
            y += &format!(
                "status: {{loadBalancer: {{ingress: [{{ip: {LB4}}}, {{ip: \"{LB6}\"}}]}}}}\n"
            );
        }
        for (fam, ty) in [(false, "IPv4"), (true, "IPv6")] {
            y += &format!(
                r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-{ty}
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: {ty}
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 8080, protocol: UDP}}]
endpoints:
"#
            );
            for &i in &pods {
                // Pod 0 stands for a pod of node-b (an address this test bed does not route).
                let (addr, node) = match i {
                    0 if fam => ("fd00:99::5".to_string(), "node-b"),
                    0 => ("10.99.0.5".to_string(), "node-b"),
                    _ => (pod_ip(i, fam).to_string(), "node-a"),
                };
                y += &format!(
                    "  - addresses: [\"{addr}\"]\n    nodeName: {node}\n    conditions: {{ready: true}}\n"
                );
            }
        }
    }
    y
}

/// Fields drop in order: the agent (killed; its pins, files and cgroup removed), servers, the
/// namespaces (and their devices).
struct Bed {
    /// `--role node --node node-a --device ext0 --manifests DIR/manifests` with a cgroup.
    agent: AgentProcess,
    _servers: Vec<PeerServers>,
    client: Netns,
    _node: Netns,
    _pods: Vec<Netns>,
}

/// A namespace whose devices skip IPv6 duplicate address detection (link-local addresses are
/// usable at once, so neighbour discovery works from the first packet).
fn fresh(name: &str) -> Netns {
    let ns = Netns::new(name);
    ns.run(&[
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ]);
    ns
}

fn addr(ns: &Netns, a: &str, dev: &str, extra: &[&str]) {
    let mut args = vec!["ip", "addr", "add", a, "dev", dev];
    args.extend_from_slice(extra);
    ns.run(&args);
}

impl Bed {
    fn new() -> Bed {
        let p = unique("x");
        let client = fresh(&format!("{p}c"));
        let node = fresh(&format!("{p}n"));
        veth(&client, "c0", &node, "ext0");
        addr(&client, &format!("{CLIENT4}/24"), "c0", &[]);
        addr(&client, &format!("{OUT4}/24"), "c0", &[]);
        addr(&client, &format!("{CLIENT6}/64"), "c0", &["nodad"]);
        // Deprecated: never the default source, usable when a socket binds it.
        addr(
            &client,
            &format!("{OUT6}/64"),
            "c0",
            &["nodad", "preferred_lft", "0"],
        );
        client.run(&["ip", "route", "add", "default", "via", NODE4]);
        client.run(&["ip", "-6", "route", "add", "default", "via", NODE6]);
        addr(&node, &format!("{NODE4}/24"), "ext0", &[]);
        addr(&node, &format!("{NODE6}/64"), "ext0", &["nodad"]);
        let mut pods = Vec::new();
        let mut servers = Vec::new();
        for i in 1..=3 {
            let pod = fresh(&format!("{p}p{i}"));
            wire_pod(&node, &pod, i);
            let addrs = [false, true].map(|v6| SocketAddr::new(pod_ip(i, v6), 8080));
            servers.push(PeerServers::start(&pod, &format!("b{i}"), &addrs));
            pods.push(pod);
        }
        let agent = AgentProcess::builder(&node, "kx")
            .args(["--role", "node", "--node", "node-a", "--device", "ext0"])
            .args(["--watch-ms", "100"])
            .file_arg("--manifests", "manifests")
            .env("RUST_LOG", "info")
            .cgroup()
            .build();
        Bed {
            agent,
            _servers: servers,
            client,
            _node: node,
            _pods: pods,
        }
    }

    fn write(&self, yaml: &str) {
        self.agent.write_file("manifests/cluster.yaml", yaml);
    }

    fn log(&self) -> String {
        self.agent.log()
    }

    fn status(&self) -> Value {
        self.agent.status()
    }

    fn np_counter(&self, name: &str) -> u64 {
        self.status()["nodeport"]["counters"][name]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no nodeport counter {name}: {}", self.status()))
    }

    /// Waits (10 s at most) until `f` is Ok; panics with its last error, the status and the log.
    #[track_caller]
    fn eventually<E: std::fmt::Debug>(&self, what: &str, f: impl FnMut() -> Result<(), E>) {
        self.agent.eventually(Duration::from_secs(10), what, f);
    }

    /// Waits until the agent holds `n` local endpoints (they are looked up asynchronously).
    #[track_caller]
    fn wait_endpoints(&self, n: u64) {
        self.eventually(&format!("{n} local endpoints"), || {
            let have = self.status()["nodeport"]["local_endpoints"].as_u64();
            (have == Some(n)).then_some(()).ok_or(have)
        });
    }

    fn ask(&self, from: Option<&str>, to: SocketAddr, udp: bool) -> Result<Answer, String> {
        ask(&self.client, from.map(ip), to, udp)
    }

    /// `n` requests from the client to `to`, all answered: backend → the client addresses seen.
    #[track_caller]
    fn spread(&self, to: SocketAddr, udp: bool, n: usize) -> Seen {
        spread(&self.client, to, udp, n).unwrap_or_else(|e| {
            panic!(
                "to {to} (udp={udp}): {e}\n{}\n{}",
                self.agent.status_text(),
                self.log()
            )
        })
    }
}

fn client(v6: bool) -> IpAddr {
    ip(if v6 { CLIENT6 } else { CLIENT4 })
}

fn node_port(v6: bool, port: u16) -> SocketAddr {
    SocketAddr::new(ip(if v6 { NODE6 } else { NODE4 }), port)
}

/// Backends that answered, each having seen only the client's own address.
#[track_caller]
fn answered_by_seeing_client(seen: &Seen, v6: bool) -> Vec<&str> {
    for (id, peers) in seen {
        assert_eq!(peers, &BTreeSet::from([client(v6)]), "{id} saw {peers:?}");
    }
    seen.keys().map(String::as_str).collect()
}

const IN_RANGES: [&str; 2] = ["198.51.100.0/28", "fd51::/126"];

#[test]
fn node_port_load_balancer_and_local_policy_from_outside() {
    let mut b = Bed::new();
    b.write(&manifests(&[1, 2, 3], &IN_RANGES));
    b.agent.start();
    // Pods 1-3 (web), 1 (lb), 2 (loc), in both families.
    b.wait_endpoints(6);
    // No --cni, so no L7 proxies: ext0's tc ingress runs the NodePort program alone, without
    // the proxies' marking program in front of it (kernel: TCX links pinned in bpffs, read back
    // by bpftool).
    let pinned = |hook: &str| b.agent.pins().join(format!("link_np_{hook}_ext0"));
    let ingress = pinned("ingress");
    let link = sh(&[
        "bpftool",
        "-j",
        "link",
        "show",
        "pinned",
        ingress.to_str().unwrap(),
    ]);
    let link: Value = serde_json::from_slice(&link.stdout).unwrap();
    // BPF_LINK_TYPE_TCX is 11 (older bpftool prints the number).
    assert!(link["type"] == "tcx" || link["type"] == 11, "{link}");
    let id = link["prog_id"].to_string();
    let prog = sh(&["bpftool", "-j", "prog", "show", "id", &id]);
    let prog: Value = serde_json::from_slice(&prog.stdout).unwrap();
    assert_eq!(prog["name"], "oxilium_nodeport_ingress", "{prog}");
    assert!(!pinned("l7").exists());
    for v6 in [false, true] {
        // NodePort: every local pod answers and sees the real client; UDP answers come back
        // from the node port itself (udp_ask checks the source).
        let tcp = b.spread(node_port(v6, 30080), false, 30);
        assert_eq!(answered_by_seeing_client(&tcp, v6), ["b1", "b2", "b3"]);
        let udp = b.spread(node_port(v6, 30053), true, 30);
        assert_eq!(answered_by_seeing_client(&udp, v6), ["b1", "b2", "b3"]);
        // externalTrafficPolicy Local: only this node's endpoint, never node-b's.
        for udp in [false, true] {
            let port = if udp { 30055 } else { 30090 };
            let seen = b.spread(node_port(v6, port), udp, 10);
            assert_eq!(answered_by_seeing_client(&seen, v6), ["b2"], "udp={udp}");
        }
        // LoadBalancer ingress: a client inside the source ranges is served, one outside is not.
        let lb = SocketAddr::new(ip(if v6 { LB6 } else { LB4 }), 80);
        let lb_udp = SocketAddr::new(lb.ip(), 53);
        let (inside, outside) = if v6 { (CLIENT6, OUT6) } else { (CLIENT4, OUT4) };
        for (to, udp) in [(lb, false), (lb_udp, true)] {
            let a = b
                .ask(Some(inside), to, udp)
                .unwrap_or_else(|e| panic!("inside client to {to}: {e}\n{}", b.log()));
            assert_eq!((a.id.as_str(), a.peer), ("b1", ip(inside)));
            let refused = b.np_counter("source_range");
            let r = b.ask(Some(outside), to, udp);
            assert!(r.is_err(), "outside client to {to} answered: {r:?}");
            assert!(b.np_counter("source_range") > refused, "refusal counted");
        }
        // The ranges restrict only the LoadBalancer address: the node port stays open.
        let a = b.ask(Some(outside), node_port(v6, 30081), false).unwrap();
        assert_eq!((a.id.as_str(), a.peer), ("b1", ip(outside)));
    }
    // The health-check node port of the Local LoadBalancer counts this node's endpoints of it
    // (pod 1, in both families).
    let hc = b.client.exec(|| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&node_port(false, 30100), T)
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok::<_, String>(out)
    });
    let hc = hc.unwrap_or_else(|e| panic!("health-check node port: {e}\n{}", b.log()));
    assert!(hc.starts_with("HTTP/1.1 200"), "{hc}");
    assert!(
        hc.contains(r#""localEndpoints":2"#) && hc.contains(r#""name":"lb""#),
        "{hc}"
    );
    let s = b.status();
    assert!(b.np_counter("local") >= 160, "{s}");
    assert!(b.np_counter("rev_dnat") >= 160, "{s}");
    assert_eq!(b.np_counter("remote"), 0, "{s}");
    assert_eq!(s["nodeport"]["devices"], serde_json::json!(["ext0"]));
    assert_eq!(s["nodeport"]["source_range_services"], 4, "{s}");
}

#[test]
fn endpoint_slice_and_source_range_changes_are_applied() {
    let mut b = Bed::new();
    b.write(&manifests(&[1, 2], &IN_RANGES));
    b.agent.start();
    b.wait_endpoints(4);
    for v6 in [false, true] {
        let seen = b.spread(node_port(v6, 30080), false, 20);
        assert_eq!(answered_by_seeing_client(&seen, v6), ["b1", "b2"]);
    }
    let lb = SocketAddr::new(ip(LB4), 80);
    assert!(b.ask(Some(OUT4), lb, false).is_err());
    // Pod 3 replaces pod 1 in web (pod 1 stays, as lb's endpoint); lb opens to everyone.
    b.write(&manifests(&[2, 3], &[]));
    b.wait_endpoints(6);
    for v6 in [false, true] {
        b.eventually(&format!("web's new endpoints (v6={v6})"), || {
            let seen = b.spread(node_port(v6, 30080), false, 20);
            let ids = answered_by_seeing_client(&seen, v6);
            (ids == ["b2", "b3"])
                .then_some(())
                .ok_or(format!("{ids:?}"))
        });
        let seen = b.spread(node_port(v6, 30053), true, 20);
        assert_eq!(answered_by_seeing_client(&seen, v6), ["b2", "b3"]);
    }
    let a = b
        .ask(Some(OUT4), lb, false)
        .unwrap_or_else(|e| panic!("ranges cleared, outside client: {e}\n{}", b.log()));
    assert_eq!((a.id.as_str(), a.peer), ("b1", ip(OUT4)));
    assert_eq!(b.status()["nodeport"]["source_range_services"], 0);
    // Only pod 3 left anywhere: pods 1 and 2 leave the local endpoints.
    let mut y = manifests(&[3], &[]);
    y = y.replace(
        &format!("\"{}\"", pod_ip(1, false)),
        &format!("\"{}\"", pod_ip(3, false)),
    );
    y = y.replace(
        &format!("\"{}\"", pod_ip(1, true)),
        &format!("\"{}\"", pod_ip(3, true)),
    );
    y = y.replace(
        &format!("\"{}\"", pod_ip(2, false)),
        &format!("\"{}\"", pod_ip(3, false)),
    );
    y = y.replace(
        &format!("\"{}\"", pod_ip(2, true)),
        &format!("\"{}\"", pod_ip(3, true)),
    );
    b.write(&y);
    b.wait_endpoints(2);
    for udp in [false, true] {
        let to = node_port(false, if udp { 30055 } else { 30090 });
        let seen = b.spread(to, udp, 10);
        assert_eq!(answered_by_seeing_client(&seen, false), ["b3"]);
    }
}

/// `sessionAffinity: ClientIP` holds for traffic from outside: the NodePort tc program picks new
/// flows through the client address's affinity entry (the socket LB's affinity maps, keyed with
/// the external service's own id). Without affinity the same client spreads. Runs with the XDP
/// acceleration (generic XDP, kernel ≥ 4.12), which must leave affinity services to tc.
#[test]
fn client_ip_affinity_holds_from_outside() {
    let mut b = Bed::new();
    let plain = manifests(&[1, 2, 3], &IN_RANGES);
    b.write(&plain);
    b.agent.add_args(["--nodeport-acceleration", "generic"]);
    b.agent.start();
    assert_eq!(b.status()["nodeport"]["xdp_acceleration"], true);
    b.wait_endpoints(6);
    for v6 in [false, true] {
        let seen = b.spread(node_port(v6, 30080), false, 20);
        let ids = answered_by_seeing_client(&seen, v6);
        assert!(
            ids.len() >= 2,
            "without affinity, one backend only: {ids:?}"
        );
    }
    let web = "  type: NodePort\n  clusterIPs: [10.96.0.10,";
    assert!(plain.contains(web));
    b.write(&plain.replace(
        web,
        "  type: NodePort\n  sessionAffinity: ClientIP\n  clusterIPs: [10.96.0.10,",
    ));
    for v6 in [false, true] {
        b.eventually(&format!("affinity on web (v6={v6})"), || {
            let seen = b.spread(node_port(v6, 30080), false, 20);
            let ids = answered_by_seeing_client(&seen, v6);
            (ids.len() == 1).then_some(()).ok_or(format!("{ids:?}"))
        });
        // And it stays: 20 more new connections, the same single backend.
        let again = b.spread(node_port(v6, 30080), false, 20);
        assert_eq!(again.len(), 1, "v6={v6}: {again:?}");
    }
    // Affinity off again: the client spreads once more.
    b.write(&plain);
    b.eventually("affinity off", || {
        let seen = b.spread(node_port(false, 30080), false, 20);
        (seen.len() >= 2).then_some(()).ok_or(format!("{seen:?}"))
    });
}
