//! The cluster network's numbers, each against Debian's `bridge` plugin (with `host-local`)
//! measured in the same run on the same machine:
//!   `cargo bench -p oxilium --bench cni` (root; env OXILIUM_BENCH_PODS: pods added, default 100;
//!   OXILIUM_BENCH_SECS: iperf3 seconds, default 3; OXILIUM_BENCH_RTTS: round trips, default 5000)
//!
//! 1. CNI ADD latency with the agent warm: `oxilium-cni` ADD of N pods one after another (each a
//!    test-made namespace, the plugin binary run as a runtime runs it, the time from exec to
//!    exit), against `bridge` ADD of N pods in another node namespace. p50 / p99.
//! 2. Pod-to-pod TCP throughput (iperf3, one stream) and request latency (1-byte request and
//!    answer on one TCP connection, TCP_NODELAY; p50 / p99 of the round trips), on one node and
//!    across nodes: oxilium's bed is three node namespaces on one bridge with an agent each
//!    (native routing; see tests/support/cni_nodes.rs); the baseline is two node namespaces on
//!    one bridge, pods made by `bridge` (isGateway) and a static route per node to the other
//!    node's pod subnet via its address (what kubenet-style setups do).
#[path = "../tests/support/agent.rs"]
#[allow(dead_code)]
mod agent;
#[path = "../tests/support/cgroup.rs"]
#[allow(dead_code)]
mod cgroup;
#[path = "../tests/support/cni.rs"]
#[allow(dead_code)]
mod cni;
#[path = "../tests/support/cni_nodes.rs"]
#[allow(dead_code)]
mod cni_nodes;
#[path = "../tests/support/etcd.rs"]
#[allow(dead_code)]
mod etcd;
#[path = "../tests/support/netns.rs"]
#[allow(dead_code)]
mod netns;

use agent::AgentProcess;
use cni::{Chain, PluginDir, conf};
use netns::{Netns, enter, unique, veth};
use serde_json::{Value, json};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Stdio,
    time::{Duration, Instant},
};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `oxilium-cni` ADD of `n` pods on a warm agent; and `n` VERSION runs (the plugin's start and
/// exit alone, no agent).
fn add_oxilium(n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let p = unique("ba");
    let node = Netns::new(&format!("{p}n"));
    let mut agent = AgentProcess::builder(&node, "benchadd")
        .args(["--role", "node", "--node", "node-a", "--cni"])
        .args(["--pod-cidr", "10.240.0.0/16"])
        .file_arg("--manifests", "manifests")
        .file_arg("--state-dir", "state")
        .cgroup()
        .build();
    agent.write_file(
        "manifests/node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n",
    );
    agent.start();
    let plugin = PluginDir::new(&p);
    let c = conf("1.1.0", agent.socket());
    let pods: Vec<Netns> = (0..n + 5)
        .map(|i| Netns::new(&format!("{p}p{i}")))
        .collect();
    let run = |cmd: &str, i: usize| {
        let id = format!("c{i}");
        let ns = pods[i].path();
        let t = Instant::now();
        let r = cni::cni(
            &plugin,
            &[
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", &id),
                ("CNI_NETNS", &ns),
                ("CNI_IFNAME", "eth0"),
            ],
            &c,
        );
        assert!(r.ok, "{cmd} {i}: {} {}", r.out, r.stderr);
        t.elapsed()
    };
    // Warm-up: the agent's first requests load nothing more, but page in its code.
    for i in n..n + 5 {
        run("ADD", i);
        run("DEL", i);
    }
    let out = (0..n).map(|i| run("ADD", i)).collect();
    if std::env::var_os("OXILIUM_BENCH_VERBOSE").is_some() {
        for l in agent.log().lines().filter(|l| l.contains("endpoint added")) {
            println!("{l}");
        }
    }
    let version = (0..n)
        .map(|_| {
            let t = Instant::now();
            let r = cni::cni(&plugin, &[("CNI_COMMAND", "VERSION")], &c);
            assert!(r.ok);
            t.elapsed()
        })
        .collect();
    (out, version)
}

/// Debian's `bridge` ADD of `n` pods.
fn add_bridge(n: usize) -> Vec<Duration> {
    let p = unique("bb");
    let node = Netns::new(&format!("{p}n"));
    let dir = std::env::temp_dir().join(format!("oxilium-bench-hl-{p}"));
    let chain = bridge_chain(&node, &dir, "10.241.0.0/16");
    let pods: Vec<Netns> = (0..n + 5)
        .map(|i| Netns::new(&format!("{p}p{i}")))
        .collect();
    let run = |cmd: &str, i: usize| {
        let t = Instant::now();
        let r = chain.run(0, cmd, &format!("c{i}"), &pods[i].path(), None);
        assert!(r.ok, "bridge {cmd} {i}: {} {}", r.out, r.stderr);
        t.elapsed()
    };
    for i in n..n + 5 {
        run("ADD", i);
        run("DEL", i);
    }
    let out = (0..n).map(|i| run("ADD", i)).collect();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn bridge_chain(node: &Netns, dir: &std::path::Path, subnet: &str) -> Chain {
    Chain {
        version: "1.0.0".into(),
        name: "bench".into(),
        plugins: vec![
            json!({"type": "bridge", "bridge": "cbr0", "isGateway": true,
            "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": dir}}),
        ],
        path: "/usr/lib/cni".into(),
        node: node.path(),
        pod_names: false,
    }
}

/// The baseline's pods: [node 1 pod a, node 1 pod b, node 2 pod a] with their addresses.
struct BridgeBed {
    pods: Vec<(Netns, String)>,
    _nodes: Vec<Netns>,
    _bridge: Netns,
    dir: std::path::PathBuf,
}

impl Drop for BridgeBed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bridge_bed() -> BridgeBed {
    let p = unique("bt");
    let bridge = Netns::new(&format!("{p}br"));
    bridge.run(&["ip", "link", "add", "br0", "type", "bridge"]);
    bridge.run(&["ip", "link", "set", "br0", "up"]);
    let dir = std::env::temp_dir().join(format!("oxilium-bench-hl-{p}"));
    let mut nodes = Vec::new();
    let mut pods = Vec::new();
    for i in 1..=2 {
        let n = Netns::new(&format!("{p}n{i}"));
        veth(&n, "eth0", &bridge, &format!("b{i}"));
        bridge.run(&["ip", "link", "set", &format!("b{i}"), "master", "br0"]);
        n.run(&[
            "ip",
            "addr",
            "add",
            &format!("10.201.0.{i}/24"),
            "dev",
            "eth0",
        ]);
        let other = 3 - i;
        n.run(&[
            "ip",
            "route",
            "add",
            &format!("10.89.{other}.0/24"),
            "via",
            &format!("10.201.0.{other}"),
        ]);
        n.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let chain = bridge_chain(&n, &dir.join(format!("n{i}")), &format!("10.89.{i}.0/24"));
        for j in 0..(3 - i) {
            let pod = Netns::new(&format!("{p}p{i}{j}"));
            let r = chain.add(&format!("c{i}{j}"), &pod.path(), None);
            let ip = cni::v4(&r);
            pods.push((pod, ip));
        }
        nodes.push(n);
    }
    BridgeBed {
        pods,
        _nodes: nodes,
        _bridge: bridge,
        dir,
    }
}

/// iperf3 from `client` to `server` (at `addr`): bits per second received.
fn iperf(client: &Netns, server: &Netns, addr: &str, secs: u64) -> f64 {
    let mut s = server
        .command(&["iperf3", "-s", "-1", "-B", addr, "-p", "5301"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = client.run(&[
        "iperf3",
        "-c",
        addr,
        "-p",
        "5301",
        "-t",
        &secs.to_string(),
        "-J",
    ]);
    let _ = s.wait();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
}

/// Round trips of one byte over one TCP connection from `client` to `server`'s `addr`.
fn rtts(client: &Netns, server: &Netns, addr: &str, n: usize) -> Vec<Duration> {
    let to: SocketAddr = format!("{addr}:7301").parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let spath = server.path();
    let srv = std::thread::spawn(move || {
        enter(&spath);
        let l = TcpListener::bind(to).unwrap();
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    rx.recv().unwrap();
    let cpath = client.path();
    let out = std::thread::spawn(move || {
        enter(&cpath);
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [7u8; 1];
        let mut v = Vec::with_capacity(n);
        for i in 0..n + 200 {
            let t = Instant::now();
            s.write_all(&b).unwrap();
            s.read_exact(&mut b).unwrap();
            if i >= 200 {
                v.push(t.elapsed());
            }
        }
        v
    })
    .join()
    .unwrap();
    srv.join().unwrap();
    out
}

fn main() {
    let n = env("OXILIUM_BENCH_PODS", 100) as usize;
    let secs = env("OXILIUM_BENCH_SECS", 3);
    let rounds = env("OXILIUM_BENCH_RTTS", 5000) as usize;

    println!("## CNI ADD, {n} pods one after another, agent warm");
    let (oxi, version) = add_oxilium(n);
    let br = add_bridge(n);
    println!("| plugin | p50 ms | p99 ms | p99 × bridge |");
    println!("|---|---:|---:|---:|");
    for (name, v) in [
        ("bridge + host-local (baseline)", &br),
        ("oxilium-cni ADD", &oxi),
        ("oxilium-cni VERSION (exec alone)", &version),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} |",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.99)),
            ms(pct(v, 0.99)) / ms(pct(&br, 0.99))
        );
    }

    println!("\n## Pod to pod, TCP ({secs} s iperf3, {rounds} round trips)");
    let base = bridge_bed();
    let oxb = cni_nodes::Nodes::new("bench", 2, &[]);
    let want: Vec<(String, String)> = [2, 3]
        .iter()
        .map(|j| (format!("10.244.{j}.0/24"), cni_nodes::node_ip(*j)))
        .collect();
    let want: Vec<(&str, &str)> = want.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    oxb.wait_routes(0, &want, Duration::from_secs(10));
    println!(
        "| path | bridge Gbit/s | oxilium Gbit/s | × bridge | bridge RTT p50/p99 µs | oxilium RTT p50/p99 µs | p50 × bridge |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let cases = [
        ("same node", (0, 1), ((0, 0), (0, 1))),
        ("across nodes", (0, 2), ((0, 0), (1, 0))),
    ];
    for (name, (bc, bs), ((oci, ocj), (osi, osj))) in cases {
        let (bcl, _) = &base.pods[bc];
        let (bsv, baddr) = &base.pods[bs];
        let ocl = &oxb.pods[oci][ocj];
        let osv = &oxb.pods[osi][osj];
        let oaddr = &oxb.pod_ips[osi][osj];
        let bt = iperf(bcl, bsv, baddr, secs);
        let ot = iperf(ocl, osv, oaddr, secs);
        let br = rtts(bcl, bsv, baddr, rounds);
        let or = rtts(ocl, osv, oaddr, rounds);
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} |",
            bt / 1e9,
            ot / 1e9,
            ot / bt,
            us(pct(&br, 0.5)),
            us(pct(&br, 0.99)),
            us(pct(&or, 0.5)),
            us(pct(&or, 0.99)),
            us(pct(&or, 0.5)) / us(pct(&br, 0.5)),
        );
    }
}
