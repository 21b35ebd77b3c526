//! Policy figures with baselines from the same run (root):
//!   `cargo bench -p oxilium --bench policy` (env OXILIUM_BENCH_REPEAT overrides the repeat).
//!
//! 1. Per-packet cost of the policy check: `oxilium_endpoint_to_pod` through
//!    BPF_PROG_TEST_RUN on the same TCP packet to a pod, with the endpoint not under policy
//!    (baseline: the same program, the check skipped), under policy with the flow in the policy
//!    conntrack (established), and under policy with a deny verdict (every run does the full
//!    check: conntrack miss, ipcache, two policy lookups).
//! 2. A policy file change → enforcement on 1,000 endpoints: the agent's policy side
//!    (`PolicyAgent`: folder read, engine, map writes of the endpoints it changes) against a
//!    reload of the same folder with nothing changed (baseline).
//! 3. Endpoint regeneration: attach of the endpoint programs to a new veth and the policy map
//!    fill, per endpoint (p50 / p99) for 100 endpoints in a row.
//! 4. Policy map memory per endpoint (the kernel's `memlock` of the map), for a typical map and
//!    a 1,000-entry map.
#[path = "../tests/support/bpffs.rs"]
#[allow(dead_code)]
mod bpffs;
mod common;
#[path = "../tests/support/packet.rs"]
#[allow(dead_code)]
mod packet;

use abi::{endpoint::EndpointInfo, policy::ep_flags};
use aya::{TestRun, TestRunOptions};
use bpffs::PinDir;
use common::{Netns, median3, sh};
use oxilium::{
    agent::node::policy::{PolicyAgent, PolicyFlags},
    bpf::endpoint::EndpointLb,
};
use packet::{ether, ip, tcp};
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

fn pct(v: &[Duration], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort();
    s[((s.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
}

fn folder(dir: &Path, pods: usize, policy: &str) {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..pods {
        y += &format!(
            "  - {{apiVersion: v1, kind: Pod, metadata: {{name: p{i}, namespace: default, labels: {{app: web, tier: t{}}}}}}}\n",
            i % 10
        );
    }
    for i in 0..50 {
        y += &format!(
            "  - {{apiVersion: v1, kind: Pod, metadata: {{name: c{i}, namespace: default, labels: {{app: client{}}}}}}}\n",
            i % 5
        );
    }
    std::fs::write(dir.join("pods.yaml"), y).unwrap();
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
}

fn policy_allowing(client: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: web, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n    - fromEndpoints: [{{matchLabels: {{app: {client}}}}}]\n      toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}, {{port: \"8000\", endPort: 8100, protocol: TCP}}]}}]\n"
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let repeat: u32 = std::env::var("OXILIUM_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let _ns = Netns::enter("oxilium-pbench", &["ip link set lo up"]);
    let pins = PinDir::new(&format!("oxilium-pbench-{}", std::process::id()));
    let mut progs = EndpointLb::load(pins.path()).expect("load (root?)");
    let work = std::env::temp_dir().join(format!("oxilium-pbench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    folder(&work, 1000, &policy_allowing("client0"));
    let flags = PolicyFlags {
        enforcement: oxilium::agent::node::policy::EnforcementFlag::Default,
        audit: false,
        allow_localhost: oxilium::agent::node::policy::AllowLocalhost::Always,
        kvstore: None,
        kvstore_endpoint: None,
        identity_gc_grace_ms: 0,
        kvstore_sync_ms: 10_000,
        dns: Default::default(),
        l7_proxy: false,
    };
    let mut agent =
        PolicyAgent::open(pins.path(), &flags, Some(work.clone()), None).expect("policy agent");

    // 3. Regeneration: veth attach + map fill, 100 endpoints in a row (pods p0..p99).
    let mut regen = Vec::new();
    let mut attach = Vec::new();
    for i in 0..100u32 {
        let dev = format!("pb{i}");
        sh(&[
            "ip",
            "link",
            "add",
            &dev,
            "type",
            "veth",
            "peer",
            "name",
            &format!("pc{i}"),
        ]);
        sh(&["ip", "link", "set", &dev, "up"]);
        let ifindex =
            unsafe { libc::if_nametoindex(std::ffi::CString::new(dev.clone()).unwrap().as_ptr()) };
        let addr: IpAddr = format!("10.251.{}.{}", i / 250, i % 250 + 1)
            .parse()
            .unwrap();
        let t = Instant::now();
        progs.attach(&dev, ifindex).unwrap();
        let ta = t.elapsed();
        progs
            .set(
                addr,
                EndpointInfo {
                    ifindex,
                    id: i + 1,
                    ..Default::default()
                },
            )
            .unwrap();
        agent
            .endpoint_up(
                i + 1,
                Some(&format!("default/p{i}")),
                "x",
                &BTreeMap::new(),
                &[addr],
            )
            .unwrap();
        attach.push(ta);
        regen.push(t.elapsed());
    }
    // The other 900 local endpoints (map fill only, no device).
    for i in 100..1000u32 {
        let addr: IpAddr = format!("10.251.{}.{}", i / 250, i % 250 + 1)
            .parse()
            .unwrap();
        agent
            .endpoint_up(
                i + 1,
                Some(&format!("default/p{i}")),
                "x",
                &BTreeMap::new(),
                &[addr],
            )
            .unwrap();
    }
    println!(
        "endpoint regeneration (TCX attach of both programs + policy map fill + flags), 100 in a row:"
    );
    println!(
        "  p50 {:.3} ms  p99 {:.3} ms  (attach alone: p50 {:.3} ms, p99 {:.3} ms; 100 in {:.1} ms)",
        pct(&regen, 0.5),
        pct(&regen, 0.99),
        pct(&attach, 0.5),
        pct(&attach, 0.99),
        regen.iter().sum::<Duration>().as_secs_f64() * 1e3
    );

    // 2. Policy change → 1,000 endpoints.
    let mut changes = Vec::new();
    let mut noops = Vec::new();
    for round in 0..5 {
        let t = Instant::now();
        agent.reload().unwrap();
        noops.push(t.elapsed());
        let client = format!("client{}", (round + 1) % 5);
        std::fs::write(work.join("policy.yaml"), policy_allowing(&client)).unwrap();
        let t = Instant::now();
        agent.reload().unwrap();
        changes.push(t.elapsed());
    }
    let (c, n) = (pct(&changes, 0.5), pct(&noops, 0.5));
    println!(
        "policy file change -> enforced on 1,000 endpoints (median of 5): {c:.1} ms; baseline: reload with no change {n:.1} ms; ratio {:.2}",
        c / n
    );

    // 4. Memory.
    let typical = agent.policy_memory(1);
    println!(
        "policy map memory of one endpoint (kernel memlock): {typical:?} bytes for its entries"
    );

    // 1. Per-packet cost.
    let pod = "10.251.0.1";
    let peer = "10.251.0.2"; // p1: identity of app=web, tier=t1 — not a client: denied
    let frame = |sport: u16| {
        let (s, d): (IpAddr, IpAddr) = (peer.parse().unwrap(), pod.parse().unwrap());
        ether(&ip(s, d, tcp(sport, 80, &[], &[0x61; 64])), None)
    };
    let prog = progs.program("oxilium_endpoint_to_pod").unwrap();
    let run = |pkt: &[u8]| -> (u32, u32) {
        let mut out = vec![0u8; pkt.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        (r.return_value, r.duration.as_nanos() as u32)
    };
    let pod_ip: IpAddr = pod.parse().unwrap();
    let info = progs.get(pod_ip).unwrap();
    let data = aya::maps::MapData::from_pin(pins.path().join("OXI_ENDPOINTS")).unwrap();
    let mut eps: aya::maps::HashMap<_, abi::endpoint::EndpointKey, EndpointInfo> =
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    let mut set_flags = |flags: u32| {
        let key = oxilium::bpf::endpoint::key(pod_ip);
        eps.insert(key, EndpointInfo { flags, ..info }, 0).unwrap();
    };
    let pkt = frame(40000);
    set_flags(0);
    let base = median3(|| run(&pkt).1);
    set_flags(info.flags | ep_flags::POLICY);
    let (verdict, _) = run(&pkt);
    assert_eq!(verdict, 2, "the peer is denied (TC_ACT_SHOT)");
    let denied = median3(|| run(&pkt).1);
    // An allowed flow: the host (allow-localhost) opens it, then every run is a conntrack hit.
    let host_pkt = {
        let (s, d): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), pod_ip);
        ether(&ip(s, d, tcp(40001, 80, &[], &[0x61; 64])), None)
    };
    let (verdict, _) = run(&host_pkt);
    assert_eq!(verdict, u32::MAX, "host to pod allowed (TCX_NEXT)");
    let est = median3(|| run(&host_pkt).1);
    println!("oxilium_endpoint_to_pod via BPF_PROG_TEST_RUN, repeat {repeat}, median of 3:");
    let row =
        |name: &str, ns: f64| println!("  {name:<58} {ns:>7.1} ns/packet  {:>5.2}x", ns / base);
    row("baseline: same program, endpoint not under policy", base);
    row(
        "under policy, flow in the policy conntrack (established)",
        est,
    );
    row(
        "under policy, new flow denied (conntrack, ipcache, 2 lookups)",
        denied,
    );
    let _ = std::fs::remove_dir_all(&work);
}
