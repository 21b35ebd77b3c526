//! Identities and the ipcache across two nodes through etcd (`--kvstore etcd`): Debian's
//! etcd-server started by the test in its own network namespace, reached by two agents in two node
//! namespaces over veths (no route anywhere else).
//!
//! Kernel features: network namespaces, veth, tc BPF through TCX links (≥ 6.6), hash-of-maps with
//! LPM trie inner maps, cgroup v2 with BPF_PROG_TYPE_CGROUP_SOCK_ADDR, bpf_link pinning; the
//! `etcd` binary. Requires root; fails (never skips) when it cannot set up.
mod support;

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde_json::Value;
use std::{
    net::IpAddr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};
use support::{
    netns::{Netns, unique, veth},
    policy_bed::PolicyNode,
};

/// etcd in its own namespace; killed (by its pid) and its data removed on drop.
struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
    ns: Netns,
}

impl Etcd {
    fn start(ns: Netns, listen: &[&str]) -> Etcd {
        let dir = std::env::temp_dir().join(format!("oxilium-etcd-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        let urls: Vec<String> = listen.iter().map(|a| format!("http://{a}:2379")).collect();
        let child = ns
            .command(&[
                "etcd",
                "--name",
                "t",
                "--data-dir",
                dir.to_str().unwrap(),
                "--listen-client-urls",
                &urls.join(","),
                "--advertise-client-urls",
                &urls[0],
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "t=http://127.0.0.1:2380",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (apt-get install etcd-server)");
        let e = Etcd { child, dir, ns };
        let t = Instant::now();
        while e.prefix("oxilium/").is_none() {
            assert!(t.elapsed() < Duration::from_secs(15), "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        e
    }

    /// Keys and values under `prefix` (None while etcd does not answer).
    fn prefix(&self, prefix: &str) -> Option<Vec<(String, String)>> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let body = format!(
            "{{\"key\":\"{}\",\"range_end\":\"{}\"}}",
            B64.encode(prefix),
            B64.encode(&end)
        );
        let out = self
            .ns
            .command(&[
                "curl",
                "-sf",
                "-X",
                "POST",
                "http://127.0.0.1:2379/v3/kv/range",
                "-d",
                &body,
            ])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let dec =
            |x: &Value| String::from_utf8(B64.decode(x.as_str().unwrap_or("")).unwrap()).unwrap();
        Some(
            v["kvs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|kv| (dec(&kv["key"]), dec(&kv["value"])))
                .collect(),
        )
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
fn ipcache_identity(node: &PolicyNode, ip: IpAddr) -> Option<u32> {
    let out = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(node.agent.pins().join("OXI_IPCACHE"))
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
    let etcd = Etcd::start(e_ns, &["127.0.0.1", "10.201.1.1", "10.201.2.1"]);
    let kv = |ep: &str| {
        vec![
            "--kvstore".to_string(),
            "etcd".into(),
            "--kvstore-endpoint".into(),
            format!("http://{ep}:2379"),
            "--identity-gc-grace-ms".into(),
            "1000".into(),
        ]
    };
    let (ka, kb) = (kv("10.201.1.1"), kv("10.201.2.1"));
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
    a.add_pod("default/solo");
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
            let got = ipcache_identity(&a, one_b);
            (got == Some(id_b as u32)).then_some(()).ok_or(got)
        });
    b.agent
        .eventually(Duration::from_secs(10), "A's pod in B's ipcache", || {
            let got = ipcache_identity(&b, one_a);
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
    a.add_pod("default/fresh");
    assert_eq!(
        identity_of(&a, "default/fresh"),
        Some(solo),
        "the number is reused"
    );
    // A restart keeps the numbers.
    b.agent.restart();
    assert_eq!(identity_of(&b, "default/one-b"), Some(id_b));
    drop(a);
    drop(b);
    drop(etcd);
}
