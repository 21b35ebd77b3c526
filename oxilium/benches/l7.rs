//! The HTTP proxy's cost, against the same requests without it in the same run:
//!   `cargo bench -p oxilium --bench l7` (root, `hey`; env OXILIUM_BENCH_SECS: seconds per run,
//!   default 5; OXILIUM_BENCH_CONC: hey's concurrency, default 8)
//!
//! One node (the real agent, pods through the CNI plugin): the `deathstar` (tests/support's hyper
//! server) listens on port 80, where an HTTP rule (GET /.*) redirects the tiefighter's flows to
//! the ingress proxy, and on port 8080, allowed at L4 only (direct). `hey` in the tiefighter's
//! namespace runs keep-alive GETs for the same time at the same concurrency against each port:
//! the difference of the latency percentiles is what the proxy adds per request. The proxy's
//! CPU cost is the agent's CPU time (utime + stime from /proc) during the proxied run: requests
//! per CPU-second are the requests one core can carry.
//!
//! Memory: OXILIUM_BENCH_CONNS (default 1000) keep-alive connections from the tiefighter to the
//! proxied port, each having had one allowed GET answered and all held open together (the proxy
//! holds each client connection and its upstream connection); the agent's resident memory
//! (VmRSS) before and with them open, per connection. The agent's open descriptors are counted
//! too, to show the connections are held (two per connection).
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    io::{BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};
use support::{
    deathstar::{Deathstar, PODS, read_response},
    netns::Netns,
    policy_bed::PolicyNode,
};

/// The policy, beside the demo's pods (deathstar::PODS).
const FILES: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
    - fromEndpoints: [{matchLabels: {org: empire}}]
      toPorts:
        - ports: [{port: \"80\", protocol: TCP}]
          rules: {http: [{method: GET, path: \"/.*\"}]}
    - fromEndpoints: [{matchLabels: {org: empire}}]
      toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]
";

struct Run {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    ok: u64,
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `hey` against `url` from `ns` for `secs` at `conc`.
fn hey(ns: &support::netns::Netns, url: &str, secs: u64, conc: u64) -> Run {
    let out = ns
        .command(&[
            "hey",
            "-z",
            &format!("{secs}s"),
            "-c",
            &conc.to_string(),
            url,
        ])
        .output()
        .expect("running hey");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "hey: {text}");
    let num = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in hey's output:\n{text}"))
    };
    let ok = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("[200]"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        !text.contains("Error distribution"),
        "errors during the run:\n{text}"
    );
    Run {
        rps: num("Requests/sec:"),
        p50_us: num("50% in") * 1e6,
        p99_us: num("99% in") * 1e6,
        ok,
    }
}

/// utime + stime of `pid`, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// A field of /proc/PID/status in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// `n` connections from `ns` to `ds`:80, each with one GET answered (200), all kept open.
fn open_connections(ns: &Netns, ds: IpAddr, n: usize) -> Vec<TcpStream> {
    ns.exec(move || {
        (0..n)
            .map(|i| {
                let to = SocketAddr::new(ds, 80);
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"GET /v1/ships HTTP/1.1\r\nHost: deathstar\r\n\r\n")
                    .unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let (status, _) = read_response(&mut r);
                assert_eq!(status, 200, "connection {i}");
                s
            })
            .collect()
    })
}

fn main() {
    let secs = env("OXILIUM_BENCH_SECS", 5);
    let conc = env("OXILIUM_BENCH_CONC", 8);
    let mut node = PolicyNode::new(
        "l7bench",
        &[
            ("10-pods.yaml".into(), PODS.into()),
            ("11-policy.yaml".into(), FILES.into()),
        ],
        &[],
    );
    let ds = node.add_pod("default/deathstar");
    node.add_pod("default/tiefighter");
    let dns = &node.pods["default/deathstar"].ns;
    let _proxied = Deathstar::start(dns, SocketAddr::new(ds, 80));
    let _direct = Deathstar::start(dns, SocketAddr::new(ds, 8080));
    let tie = &node.pods["default/tiefighter"].ns;
    let pid = node.agent.pid().expect("agent running");
    // Warm both paths.
    hey(tie, &format!("http://{ds}:8080/warm"), 1, conc);
    hey(tie, &format!("http://{ds}/warm"), 1, conc);
    std::thread::sleep(Duration::from_millis(200));

    let direct = hey(tie, &format!("http://{ds}:8080/v1/ships"), secs, conc);
    let before = cpu_secs(pid);
    let proxied = hey(tie, &format!("http://{ds}/v1/ships"), secs, conc);
    let cpu = cpu_secs(pid) - before;
    assert!(direct.ok > 0 && proxied.ok > 0, "no successful requests");
    let per_core = proxied.ok as f64 / cpu.max(0.01);

    println!("hey -z {secs}s -c {conc}, keep-alive GETs, one node, same server and pods");
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "", "req/s", "p50 µs", "p99 µs"
    );
    for (name, r) in [
        ("direct (L4 allow, port 8080)", &direct),
        ("through the HTTP proxy", &proxied),
    ] {
        println!(
            "{name:<28} {:>10.0} {:>10.0} {:>10.0}",
            r.rps, r.p50_us, r.p99_us
        );
    }
    println!(
        "added per request: p50 {:.0} µs, p99 {:.0} µs; throughput ratio {:.2}",
        proxied.p50_us - direct.p50_us,
        proxied.p99_us - direct.p99_us,
        proxied.rps / direct.rps
    );
    println!(
        "agent CPU during the proxied run: {cpu:.2} s for {} requests = {per_core:.0} requests per CPU-second",
        proxied.ok
    );

    // Memory with many keep-alive connections held open through the proxy.
    let n = env("OXILIUM_BENCH_CONNS", 1000) as usize;
    std::thread::sleep(Duration::from_millis(500));
    let (rss0, fds0) = (status_kb(pid, "VmRSS:"), open_fds(pid));
    let conns = open_connections(tie, ds, n);
    std::thread::sleep(Duration::from_millis(500));
    let (rss1, fds1) = (status_kb(pid, "VmRSS:"), open_fds(pid));
    assert!(
        fds1 >= fds0 + 2 * n,
        "the proxy does not hold the connections: {fds0} → {fds1} descriptors"
    );
    drop(conns);
    std::thread::sleep(Duration::from_millis(500));
    let rss2 = status_kb(pid, "VmRSS:");
    println!(
        "{n} keep-alive connections held open through the proxy (one GET answered on each): agent RSS {rss0} kB → {rss1} kB (+{} kB, {:.1} kB per connection); descriptors {fds0} → {fds1}; after closing them: {rss2} kB",
        rss1.saturating_sub(rss0),
        rss1.saturating_sub(rss0) as f64 / n as f64
    );
}
