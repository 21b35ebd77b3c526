//! Identities and the ipcache across two nodes through etcd (`--kvstore etcd`): Debian's
//! etcd-server started by the test in its own network namespace, reached by two agents in two node
//! namespaces over veths (no route anywhere else).
//!
//! Kernel features: network namespaces, veth, tc BPF through TCX links (≥ 6.6), hash-of-maps with
//! LPM trie inner maps, cgroup v2 with BPF_PROG_TYPE_CGROUP_SOCK_ADDR, bpf_link pinning; the
//! `etcd` binary. Requires root; fails (never skips) when it cannot set up.
mod support;

use serde_json::Value;
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};
use support::{
    etcd::Etcd,
    netns::{Netns, unique, veth},
    policy_bed::PolicyNode,
};

fn pods(list: &[(&str, &str)]) -> String {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for (name, app) in list {
        y += &format!(
            "  - {{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}}}\n"
        );
    }
    y
}

fn identity_of(node: &PolicyNode, pod: &str) -> Option<u64> {
    node.agent
        .cli(&["endpoint", "list"])
        .as_array()?
        .iter()
        .find(|e| e["pod"] == pod)?["identity"]
        .as_u64()
}

/// The identity the node's ipcache gives `ip` (a /128 entry of the IPv4-mapped form).
fn ipcache_identity(agent: &support::agent::AgentProcess, ip: IpAddr) -> Option<u32> {
    let out = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(agent.pins().join("OXI_IPCACHE"))
        .arg("-j")
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let IpAddr::V4(a) = ip else { return None };
    let want = a.to_ipv6_mapped().octets();
    let bytes = |x: &Value| -> Vec<u8> {
        x.as_array()
            .into_iter()
            .flatten()
            .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect()
    };
    v.as_array()?.iter().find_map(|e| {
        let k = bytes(&e["key"]);
        (k.len() == 20 && k[..4] == 128u32.to_le_bytes() && k[4..] == want).then(|| {
            let val = bytes(&e["value"]);
            u32::from_le_bytes(val[..4].try_into().unwrap())
        })
    })
}

/// Two nodes whose folders list the pods in different orders (so local numbering would differ)
/// get the same numbers through etcd; each node's endpoints reach the other's ipcache with their
/// identity; an identity no node references is collected after the grace period and its number is
/// handed out again; a restarted agent keeps its numbers.
#[test]
fn identities_across_nodes_through_etcd() {
    let tag = unique("kv");
    let (e_ns, a_ns, b_ns) = (
        Netns::new(&format!("{tag}e")),
        Netns::new(&format!("{tag}a")),
        Netns::new(&format!("{tag}b")),
    );
    veth(&e_ns, "toa", &a_ns, "toetcd");
    veth(&e_ns, "tob", &b_ns, "toetcd");
    e_ns.run(&["ip", "addr", "add", "10.201.1.1/30", "dev", "toa"]);
    e_ns.run(&["ip", "addr", "add", "10.201.2.1/30", "dev", "tob"]);
    a_ns.run(&["ip", "addr", "add", "10.201.1.2/30", "dev", "toetcd"]);
    b_ns.run(&["ip", "addr", "add", "10.201.2.2/30", "dev", "toetcd"]);
    let etcd = Etcd::start(&e_ns, &["127.0.0.1", "10.201.1.1", "10.201.2.1"]);
    let kv = |ep: &str, sync_ms: &str| {
        vec![
            "--kvstore".to_string(),
            "etcd".into(),
            "--kvstore-endpoint".into(),
            format!("http://{ep}:2379"),
            "--identity-gc-grace-ms".into(),
            "1000".into(),
            "--kvstore-sync-ms".into(),
            sync_ms.into(),
        ]
    };
    // A collects garbage (its full sync runs every 0.5 s); B's full sync waits 10 minutes, so
    // after its first read B learns A's changes from the watch alone.
    let (ka, kb) = (kv("10.201.1.1", "500"), kv("10.201.2.1", "600000"));
    let a_pods = pods(&[("one", "one"), ("solo", "solo"), ("two", "two")]);
    let mut a = PolicyNode::in_node(
        a_ns,
        "kva",
        "node-a",
        "10.250.1.0/24",
        "10.200.0.1",
        &[("pods.yaml".into(), a_pods)],
        &ka.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("node-b", "10.200.0.2")],
    );
    let one_a = a.add_pod("default/one");
    let solo_ip = a.add_pod("default/solo");
    let b_pods = pods(&[("zzz", "zzz"), ("two", "two"), ("one-b", "one")]);
    let mut b = PolicyNode::in_node(
        b_ns,
        "kvb",
        "node-b",
        "10.250.2.0/24",
        "10.200.0.2",
        &[("pods.yaml".into(), b_pods)],
        &kb.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("node-a", "10.200.0.1")],
    );
    let one_b = b.add_pod("default/one-b");
    // Same labels, same number on both nodes, whatever the order of the folders.
    let id_a = identity_of(&a, "default/one").unwrap();
    let id_b = identity_of(&b, "default/one-b").unwrap();
    assert_eq!(id_a, id_b, "{}\n{}", a.agent.log(), b.agent.log());
    assert!(id_a >= 256);
    let ids = etcd.prefix("oxilium/identities/id/").unwrap();
    assert!(ids.len() >= 4, "{ids:?}");
    // Each node's endpoint is in the other's ipcache with its identity.
    a.agent
        .eventually(Duration::from_secs(10), "B's pod in A's ipcache", || {
            let got = ipcache_identity(&a.agent, one_b);
            (got == Some(id_b as u32)).then_some(()).ok_or(got)
        });
    b.agent
        .eventually(Duration::from_secs(10), "A's pod in B's ipcache", || {
            let got = ipcache_identity(&b.agent, one_a);
            (got == Some(id_a as u32)).then_some(()).ok_or(got)
        });
    // solo: deleted on A and gone from A's folder; nobody references it: collected after the
    // grace period, and its number goes to the next new label set.
    let solo = identity_of(&a, "default/solo").unwrap();
    a.del_pod("default/solo");
    a.agent.write_file(
        "manifests/pods.yaml",
        &pods(&[("one", "one"), ("two", "two")]),
    );
    a.agent
        .eventually(Duration::from_secs(15), "solo collected", || {
            let ids = etcd.prefix("oxilium/identities/id/").unwrap();
            match ids.iter().find(|(k, _)| k.ends_with(&format!("/{solo}"))) {
                Some(kv) => Err(format!("{kv:?}")),
                None => Ok(()),
            }
        });
    a.agent.write_file(
        "manifests/pods.yaml",
        &pods(&[("one", "one"), ("two", "two"), ("fresh", "fresh")]),
    );
    std::thread::sleep(Duration::from_millis(500));
    let fresh = a.add_pod("default/fresh");
    let added = Instant::now();
    assert_eq!(
        identity_of(&a, "default/fresh"),
        Some(solo),
        "the number is reused"
    );
    // B learns of the new endpoint through the watch (its full sync is minutes away), and
    // had seen solo's entry go the same way.
    b.agent
        .eventually(Duration::from_secs(5), "fresh in B's ipcache", || {
            let got = ipcache_identity(&b.agent, fresh);
            (got == Some(solo as u32)).then_some(()).ok_or(got)
        });
    eprintln!(
        "new endpoint on A → B's ipcache: {:?} (including A's CNI ADD answer)",
        added.elapsed()
    );
    assert_ne!(ipcache_identity(&b.agent, solo_ip), Some(solo as u32));
    // A restart keeps the numbers.
    b.agent.restart();
    assert_eq!(identity_of(&b, "default/one-b"), Some(id_b));
    drop(a);
    drop(b);
    drop(etcd);
}

/// The pods of the three-node bed (`web-<node>-<j>`) with their labels, and the policies: the
/// server (node 2) takes only the client (node 1); the client may send only to the server and
/// never to the db (node 2), and takes nothing in (its replies still come back).
const CROSS_NODE: &str = r#"apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Pod, metadata: {name: web-1-0, namespace: default, labels: {app: client}}}
  - {apiVersion: v1, kind: Pod, metadata: {name: web-1-1, namespace: default, labels: {app: other}}}
  - {apiVersion: v1, kind: Pod, metadata: {name: web-2-0, namespace: default, labels: {app: server}}}
  - {apiVersion: v1, kind: Pod, metadata: {name: web-2-1, namespace: default, labels: {app: db}}}
  - {apiVersion: v1, kind: Pod, metadata: {name: web-3-0, namespace: default, labels: {app: third}}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-from-client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-out, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress: [{toEndpoints: [{matchLabels: {app: server}}]}]
  egressDeny: [{toEndpoints: [{matchLabels: {app: db}}]}]
  ingress: [{}]
"#;

/// Policy across nodes on real packets, identities through etcd: three nodes on one bridge
/// (native routing, no SNAT between pods), etcd on the bridge, pods listed in every node's folder
/// without addresses, so a node learns another node's pod addresses only from the kvstore's
/// ipcache entries. Node 2's server takes connections from node 1's client and refuses node 1's
/// other pod and node 3's pod (ingress, decided on node 2 by the source address's ipcache
/// identity); node 1's client cannot reach node 2's db (egress deny, decided on node 1 by the
/// destination's identity) while other pods can; the client's replies come back although its
/// ingress takes nothing (policy conntrack). Node 2's policy events name the remote client's
/// and other pod's identities as node 1 numbered them.
///
/// Kernel features: network namespaces, bridge, veth, tc BPF through TCX links (≥ 6.6) with
/// bpf_redirect_peer, LPM tries in hash-of-maps, BPF ring buffers, cgroup v2 sock_addr; the
/// `etcd` binary.
#[test]
fn policy_across_nodes_through_etcd() {
    use support::{
        cni_nodes::{Nodes, Setup},
        monitor::{Monitor, of_kind},
        peer::{PeerServers, tcp_ask},
    };
    let b = Nodes::with(
        "kvx",
        2,
        &[],
        Setup {
            files: vec![("pods.yaml".into(), CROSS_NODE.into())],
            etcd: true,
        },
    );
    let ip = |n: usize, j: usize| -> IpAddr { b.pod_ips[n - 1][j].parse().unwrap() };
    let (client, other, server, db, third) = (ip(1, 0), ip(1, 1), ip(2, 0), ip(2, 1), ip(3, 0));
    let to_server = std::net::SocketAddr::new(server, 8080);
    let to_db = std::net::SocketAddr::new(db, 8080);
    let _servers = [
        PeerServers::start(&b.pods[1][0], "server", &[to_server]),
        PeerServers::start(&b.pods[1][1], "db", &[to_db]),
    ];
    let node2 = &b.agents[1];
    let ask =
        |n: usize, j: usize, to| tcp_ask(&b.pods[n - 1][j], None, to, Duration::from_millis(700));
    // (from node, pod, to, expected answer): every pair, until the kernel agrees.
    let want = [
        (1, 0, to_server, Some("server")),
        (1, 1, to_server, None),
        (3, 0, to_server, None),
        (1, 0, to_db, None),
        (1, 1, to_db, Some("db")),
        (3, 0, to_db, Some("db")),
    ];
    node2.eventually(Duration::from_secs(20), "cross-node verdicts", || {
        let got: Vec<_> = want
            .iter()
            .map(|(n, j, to, _)| ask(*n, *j, *to).map(|a| a.id).ok())
            .collect();
        let expected: Vec<_> = want.iter().map(|w| w.3.map(String::from)).collect();
        (got == expected).then_some(()).ok_or(got)
    });
    let id_on = |n: usize, pod: &str| -> u64 {
        b.agents[n - 1]
            .cli(&["endpoint", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["pod"] == pod)
            .unwrap_or_else(|| panic!("{pod} on node {n}"))["identity"]
            .as_u64()
            .unwrap()
    };
    // Node 2 knows every remote pod by now? (Before its entry arrives, a pod is `world` to
    // it, refused all the same.) Its verdicts are watched from then on.
    for (src, pod, n) in [
        (client, "default/web-1-0", 1),
        (other, "default/web-1-1", 1),
        (third, "default/web-3-0", 3),
    ] {
        let want = id_on(n, pod) as u32;
        node2.eventually(Duration::from_secs(10), "node 2's ipcache", || {
            let got = ipcache_identity(node2, src);
            (got == Some(want)).then_some(()).ok_or(got)
        });
    }
    let events = Monitor::start(
        &b.nodes[1],
        node2.socket(),
        &["--type", "policy", "-o", "json"],
    );
    // Allowed connections keep the pod's own address (the server saw the client itself), and
    // a few more in a row all pass; the refused stay refused.
    for _ in 0..5 {
        let a = ask(1, 0, to_server).expect("client → server");
        assert_eq!(a.peer, client);
        assert_eq!(ask(1, 1, to_db).expect("other → db").peer, other);
    }
    assert!(ask(1, 1, to_server).is_err() && ask(3, 0, to_server).is_err());
    // Each side counted its drops.
    let denied = |n: usize, pod: &str| {
        b.agents[n - 1].cli(&["policy", "get", pod])["counters"]["denied"]
            .as_u64()
            .unwrap()
    };
    assert!(denied(2, "default/web-2-0") > 0, "server's ingress");
    assert!(denied(1, "default/web-1-0") > 0, "client's egress");
    assert_eq!(denied(2, "default/web-2-1"), 0, "db takes everyone");
    // Node 2 knew the remote pods' identities: the numbers node 1 gave them.
    let ids = [
        (client, id_on(1, "default/web-1-0"), "FORWARDED"),
        (other, id_on(1, "default/web-1-1"), "DROPPED"),
        (third, id_on(3, "default/web-3-0"), "DROPPED"),
    ];
    let records = events.wait(Duration::from_secs(10), "node 2's verdicts", |r| {
        ids.iter().all(|(src, _, _)| {
            of_kind(r, "policy")
                .iter()
                .any(|x| x["flow"]["IP"]["source"] == src.to_string())
        })
    });
    for (src, id, verdict) in ids {
        let mine: Vec<_> = of_kind(&records, "policy")
            .into_iter()
            .filter(|x| {
                x["flow"]["IP"]["source"] == src.to_string()
                    && x["flow"]["IP"]["destination"] == server.to_string()
            })
            .collect();
        assert!(!mine.is_empty(), "{src}: {records:#?}");
        for x in mine {
            let f = &x["flow"];
            assert_eq!(f["traffic_direction"], "INGRESS", "{f}");
            assert_eq!(f["source"]["identity"], id, "{f}");
            assert_eq!(f["verdict"], verdict, "{f}");
            assert_eq!(
                f["destination"]["identity"],
                id_on(2, "default/web-2-0"),
                "{f}"
            );
        }
    }
    let _ = (other, third);
}
