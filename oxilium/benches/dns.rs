//! The DNS proxy's cost on the redirected path, against the same queries without it in the same
//! run: `cargo bench -p oxilium --bench dns` (root; env OXILIUM_BENCH_SECS: seconds per run,
//! default 5).
//!
//! One node (the real agent, a pod through the CNI plugin) and a DNS server (tests/support's)
//! in a namespace behind it on ports 53 and 5353 of one address. The pod's policy has a DNS rule
//! (`matchPattern: "*"`) on port 53, so its queries there are redirected to the agent's DNS
//! proxy (which checks the name, forwards, and has the answer's address learnt for a `toFQDNs`
//! rule before replying), and a plain allow on port 5353 (direct). A client in the pod's
//! namespace sends UDP queries one at a time for the same time to each port: the difference of
//! the latency percentiles is what the proxy adds per query; the agent's CPU time (utime +
//! stime) during the proxied run gives queries per CPU-second.
#[path = "../tests/support/mod.rs"]
mod support;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::{
    net::{SocketAddr, UdpSocket},
    str::FromStr,
    time::{Duration, Instant},
};
use support::{dns_server::DnsServer, dns_server::Zone, policy_bed::PolicyNode};

const SERVER: &str = "192.0.2.53";

const FILES: &str = "apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toCIDR: [192.0.2.53/32]
      toPorts: [{ports: [{port: \"53\", protocol: UDP}], rules: {dns: [{matchPattern: \"*\"}]}}]
    - toCIDR: [192.0.2.53/32]
      toPorts: [{ports: [{port: \"5353\", protocol: UDP}]}]
    - toFQDNs: [{matchName: allowed.example}]
      toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]
";

struct Run {
    qps: f64,
    p50_us: f64,
    p99_us: f64,
    n: usize,
}

/// Queries for `allowed.example` to `to`, one at a time, for `secs`, from `ns`.
fn run(ns: &support::netns::Netns, to: SocketAddr, secs: u64) -> Run {
    let mut lat = ns.exec(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 512];
        let mut lat = Vec::new();
        let end = Instant::now() + Duration::from_secs(secs);
        let mut id = 0u16;
        while Instant::now() < end {
            id = id.wrapping_add(1);
            let mut q = Message::query();
            q.metadata.id = id;
            q.add_query(Query::query(
                Name::from_str("allowed.example.").unwrap(),
                RecordType::A,
            ));
            let bytes = q.to_vec().unwrap();
            let t = Instant::now();
            s.send(&bytes).unwrap();
            let n = s.recv(&mut buf).expect("an answer");
            let a = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!((a.id, a.answers.len()), (id, 1), "a wrong answer");
            lat.push(t.elapsed());
        }
        lat
    });
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    Run {
        qps: lat.len() as f64 / secs as f64,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        n: lat.len(),
    }
}

/// utime + stime of `pid`, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn main() {
    let secs = std::env::var("OXILIUM_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut node = PolicyNode::new("dnsbench", &[("10-dns.yaml".into(), FILES.into())], &[]);
    node.add_pod("default/client");
    node.world_address(SERVER.parse().unwrap());
    let mut zone = Zone::new();
    zone.insert(
        "allowed.example".into(),
        vec![Record::from_rdata(
            Name::from_str("allowed.example.").unwrap(),
            300,
            RData::A(A::new(192, 0, 2, 80)),
        )],
    );
    let w = node.world.as_ref().unwrap();
    let _proxied = DnsServer::start(w, format!("{SERVER}:53").parse().unwrap(), zone.clone());
    let _direct = DnsServer::start(w, format!("{SERVER}:5353").parse().unwrap(), zone);
    let client = &node.pods["default/client"].ns;
    let pid = node.agent.pid().expect("agent running");
    let (proxied_to, direct_to) = (
        format!("{SERVER}:53").parse().unwrap(),
        format!("{SERVER}:5353").parse().unwrap(),
    );
    run(client, direct_to, 1);
    run(client, proxied_to, 1);

    let direct = run(client, direct_to, secs);
    let before = cpu_secs(pid);
    let proxied = run(client, proxied_to, secs);
    let cpu = cpu_secs(pid) - before;

    println!("UDP queries one at a time for {secs} s, one node, same server and pod");
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "", "queries/s", "p50 µs", "p99 µs"
    );
    for (name, r) in [
        ("direct (L4 allow, port 5353)", &direct),
        ("redirected to the DNS proxy (53)", &proxied),
    ] {
        println!(
            "{name:<34} {:>10.0} {:>10.0} {:>10.0}",
            r.qps, r.p50_us, r.p99_us
        );
    }
    println!(
        "added per query: p50 {:.0} µs, p99 {:.0} µs; rate ratio {:.2}",
        proxied.p50_us - direct.p50_us,
        proxied.p99_us - direct.p99_us,
        proxied.qps / direct.qps
    );
    println!(
        "agent CPU during the proxied run: {cpu:.2} s for {} queries = {:.0} queries per CPU-second",
        proxied.n,
        proxied.n as f64 / cpu.max(0.01)
    );
}
