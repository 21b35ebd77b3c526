//! The cluster network across nodes: three node namespaces on one bridge, an agent each
//! (`--role node --cni --device eth0`, a manifests folder with the three Nodes), pods made through
//! the plugin binary on each (see support/cni_nodes.rs).
//! Kernel features: network namespaces, bridge, veth made through rtnetlink with IFLA_NET_NS_FD,
//! rtnetlink route multicast groups (RTNLGRP_IPV4_ROUTE), vxlan (tunnel mode), tc BPF through TCX
//! links (≥ 6.6) with bpf_redirect_peer, cgroup v2 BPF_PROG_TYPE_CGROUP_SOCK_ADDR (socket LB),
//! bpf_fib_lookup (NodePort). Requires root; fails (never skips) when it cannot set up.
mod support;

use std::{net::SocketAddr, time::Duration};
use support::{
    cgroup::{Answer, run_client},
    churn::{Sink, churn, count as churn_count},
    cni::{add, conf},
    cni_nodes::OUTSIDE,
    cni_nodes::{CIP, NODE_PORT, Nodes, manifests, node_ip, pod_mtu, require_vxlan},
    peer::{PeerConn, PeerServers, ask, tcp_ask},
};

fn sa(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// Servers in the first pod of every node ("pod-N", reporting the peer they saw).
fn serve(b: &Nodes) -> Vec<PeerServers> {
    (0..3)
        .map(|i| {
            PeerServers::start(
                &b.pods[i][0],
                &format!("pod-{}", i + 1),
                &[sa(&b.pod_ips[i][0], 8080)],
            )
        })
        .collect()
}

/// Every pod reaches the first pod of every other node, which sees the pod's own address.
#[track_caller]
fn pods_reach_each_other(b: &Nodes) {
    for from in 0..3 {
        for to in 0..3 {
            if from == to {
                continue;
            }
            for (j, pod) in b.pods[from].iter().enumerate() {
                let a = tcp_ask(
                    pod,
                    None,
                    sa(&b.pod_ips[to][0], 8080),
                    Duration::from_secs(3),
                )
                .unwrap_or_else(|e| panic!("pod {}/{j} → node {}: {e}", from + 1, to + 1));
                assert_eq!(a.id, format!("pod-{}", to + 1));
                assert_eq!(
                    a.peer.to_string(),
                    b.pod_ips[from][j],
                    "no SNAT between pods"
                );
            }
        }
    }
}

/// A ClusterIP whose backends are on nodes 2 and 3, from a pod of node 1 (socket LB).
#[track_caller]
fn cluster_ip_reaches_remote_backends(b: &Nodes) {
    let answers = run_client(
        Some(b.agents[0].cgroup()),
        &b.pods[0][0],
        "tcp",
        CIP,
        80,
        20,
    );
    let mut ids: Vec<String> = answers
        .iter()
        .map(|a| match a {
            Answer::Ok { id, .. } => id.clone(),
            Answer::Err(e) => panic!("ClusterIP: {e}"),
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, ["pod-2", "pod-3"]);
}

/// Pods to an outside address (UDP and TCP, every pod of node 1): the server sees node 1's
/// address (masqueraded in BPF at eth0's egress, replies restored at its ingress); to an address
/// of `--non-masquerade-cidr` it sees the pod's own.
#[track_caller]
fn masquerade(b: &Nodes) {
    b.outside
        .run(&["ip", "addr", "add", "10.200.0.101/24", "dev", "eth0"]);
    b.outside
        .run(&["ip", "route", "add", "10.244.1.0/24", "via", &node_ip(1)]);
    let _out = PeerServers::start(
        &b.outside,
        "outside",
        &[sa(OUTSIDE, 9090), sa("10.200.0.101", 9090)],
    );
    for (j, pod) in b.pods[0].iter().enumerate() {
        for udp in [false, true] {
            for _ in 0..5 {
                let a = ask(pod, None, sa(OUTSIDE, 9090), udp)
                    .unwrap_or_else(|e| panic!("pod {j} → outside (udp {udp}): {e}"));
                assert_eq!(a.peer.to_string(), node_ip(1), "masqueraded (udp {udp})");
            }
            let a = ask(pod, None, sa("10.200.0.101", 9090), udp)
                .unwrap_or_else(|e| panic!("pod {j} → exception (udp {udp}): {e}"));
            assert_eq!(a.peer.to_string(), b.pod_ips[0][j], "not masqueraded");
        }
    }
    // A long flow keeps its port (conntrack), request after request.
    let mut c = PeerConn::open(&b.pods[0][0], sa(OUTSIDE, 9090));
    for i in 0..20 {
        let a = c.ask(&format!("m{i}")).expect("same flow");
        assert_eq!(a.peer.to_string(), node_ip(1));
    }
    // Volume: 5 000 short connections (closed by RST) through 1 000 SNAT ports: closed flows'
    // ports are taken over, none fails. 2.5 s per connection leaves room for one SYN
    // retransmission (a packet the loaded CI machine drops once in a while, with no
    // `snat_exhausted` or other datapath drop counted); a flow the datapath black-holes still fails.
    let _sink = Sink::start(&b.outside, sa(OUTSIDE, 9191));
    let n = churn_count(5000);
    let r = churn(
        &b.pods[0][1],
        sa(OUTSIDE, 9191),
        n,
        Duration::from_millis(2500),
    );
    assert_eq!(
        r.failed,
        0,
        "{:?}\n{}",
        r.first_error,
        b.agents[0].status_text()
    );
    assert_eq!(r.ok, n);
}

/// Native routing: the routes to the other nodes' pod CIDRs (protocol 211), pod to pod across
/// nodes, a ClusterIP and a NodePort (from outside, at node 1) with backends on other nodes,
/// masquerade to outside (and its exception); a
/// route deleted or changed by hand is back within 2 s; a route of another protocol is left
/// alone; a Node removed from the folder takes its route with it.
#[test]
fn native_routing_between_three_nodes() {
    // 1 000 SNAT ports: the churn below needs their reuse.
    let b = Nodes::new(
        "nat",
        2,
        &[
            "--non-masquerade-cidr",
            "10.200.0.101/32",
            "--snat-port-range",
            "20000-20999",
        ],
    );
    let want = |i: usize| -> Vec<(String, String)> {
        (1..=3)
            .filter(|&j| j != i + 1)
            .map(|j| (format!("10.244.{j}.0/24"), node_ip(j)))
            .collect()
    };
    for i in 0..3 {
        let w = want(i);
        let w: Vec<(&str, &str)> = w.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        b.wait_routes(i, &w, Duration::from_secs(10));
    }
    let _servers = serve(&b);
    pods_reach_each_other(&b);
    cluster_ip_reaches_remote_backends(&b);

    // NodePort at node 1 from outside: the backends are on nodes 2 and 3.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let a = tcp_ask(
            &b.outside,
            None,
            sa(&node_ip(1), NODE_PORT),
            Duration::from_secs(3),
        )
        .unwrap_or_else(|e| panic!("NodePort: {e}\n{}", b.agents[0].log()));
        seen.insert(a.id);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["pod-2", "pod-3"],
        "NodePort"
    );

    masquerade(&b);

    // A route of another protocol is never touched.
    b.nodes[0].run(&["ip", "route", "add", "10.99.0.0/24", "via", "10.200.0.3"]);
    // Deleted by hand: back within 2 s (route events, no polling).
    let w0 = want(0);
    let w0: Vec<(&str, &str)> = w0.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    for _ in 0..3 {
        b.nodes[0].run(&["ip", "route", "del", "10.244.2.0/24"]);
        let took = b.wait_routes(0, &w0, Duration::from_secs(2));
        assert!(took < Duration::from_secs(2), "restored after {took:?}");
    }
    // Changed by hand (another gateway, another protocol): put back.
    b.nodes[0].run(&[
        "ip",
        "route",
        "replace",
        "10.244.3.0/24",
        "via",
        "10.200.0.2",
    ]);
    b.wait_routes(0, &w0, Duration::from_secs(2));
    let foreign = b.nodes[0].run(&["ip", "route", "show", "10.99.0.0/24"]);
    assert!(
        String::from_utf8_lossy(&foreign.stdout).contains("via 10.200.0.3"),
        "the foreign route is still there"
    );
    pods_reach_each_other(&b);

    // Node 3 leaves the folder of node 1: its route goes.
    b.agents[0].write_file("manifests/all.yaml", &manifests(&[1, 2]));
    b.wait_routes(
        0,
        &[("10.244.2.0/24", "10.200.0.2")],
        Duration::from_secs(10),
    );
    // And comes back.
    b.agents[0].write_file("manifests/all.yaml", &manifests(&[1, 2, 3]));
    b.wait_routes(0, &w0, Duration::from_secs(10));

    // A restarted agent keeps its routes (adopted, not re-added) and still restores them.
    let mut b = b;
    b.agents[0].restart();
    b.wait_routes(0, &w0, Duration::from_secs(10));
    b.nodes[0].run(&["ip", "route", "del", "10.244.3.0/24"]);
    b.wait_routes(0, &w0, Duration::from_secs(2));
}

/// Tunnel routing: the routes go through the VXLAN device (`oxi_vxlan`, its gateways resolved by
/// the agent's neighbour and FDB entries), pods get the tunnel's MTU (1500 - 50), pod to pod across
/// nodes and a ClusterIP with remote backends work and cross the tunnel.
#[test]
fn tunnel_routing_between_three_nodes() {
    require_vxlan();
    let b = Nodes::new("tun", 1, &["--routing", "tunnel"]);
    for i in 0..3 {
        let want: Vec<(String, String)> = (1..=3)
            .filter(|&j| j != i + 1)
            .map(|j| (format!("10.244.{j}.0/24"), node_ip(j)))
            .collect();
        let w: Vec<(&str, &str)> = want.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        b.wait_routes(i, &w, Duration::from_secs(10));
        for (_, _, dev) in b.node_routes(i) {
            assert_eq!(dev, "oxi_vxlan");
        }
    }
    assert_eq!(pod_mtu(&b.pods[0][0]), 1450);
    // The result says so (cniVersion 1.1.0), and a configured mtu above it is capped.
    let extra = support::netns::Netns::new(&support::netns::unique("tunx"));
    let mut c: serde_json::Value =
        serde_json::from_str(&conf("1.1.0", b.agents[0].socket())).unwrap();
    c["mtu"] = 9000.into();
    let r = add(&b.plugin, &c.to_string(), "tun-extra", &extra.path(), "x");
    assert_eq!(r["interfaces"][1]["mtu"], 1450, "{r}");
    assert_eq!(pod_mtu(&extra), 1450);
    let _servers = serve(&b);
    let before = b.tx_packets(0, "oxi_vxlan");
    pods_reach_each_other(&b);
    cluster_ip_reaches_remote_backends(&b);
    let sent = b.tx_packets(0, "oxi_vxlan") - before;
    assert!(sent >= 10, "only {sent} packets crossed the tunnel");
    // The FDB names the peers' underlay addresses.
    let fdb = b.nodes[0].run(&["bridge", "fdb", "show", "dev", "oxi_vxlan"]);
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    for j in [2, 3] {
        assert!(fdb.contains(&format!("dst 10.200.0.{j}")), "{fdb}");
    }
    // A node leaving removes its route and tunnel entries.
    b.agents[0].write_file("manifests/all.yaml", &manifests(&[1, 2]));
    b.wait_routes(
        0,
        &[("10.244.2.0/24", "10.200.0.2")],
        Duration::from_secs(10),
    );
    let fdb = b.nodes[0].run(&["bridge", "fdb", "show", "dev", "oxi_vxlan"]);
    assert!(!String::from_utf8_lossy(&fdb.stdout).contains("dst 10.200.0.3"));
}
