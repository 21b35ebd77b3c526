//! Observability through the real binary: datapath events seen by `oxilium monitor` (drops with
//! their reason, translations, trace points switched at run time, the per-flow rate limit),
//! Prometheus metrics parsed with a text-format parser and checked against the traffic sent,
//! and the health probes. Real TCP / UDP through the real kernel in test namespaces.
//! Kernel features: network namespaces, veth, native XDP on veth, BPF ring buffers
//! (BPF_MAP_TYPE_RINGBUF, 5.8+), LRU hash, per-CPU arrays, bpffs pinning; for the node test also
//! TCX, cgroup v2 sock_addr programs and LPM tries. Requires root; fails (never skips) when it
//! cannot set up.
mod support;

use serde_json::{Value, json};
use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};
use support::{
    cluster::{CLIENT4, Cluster, NODE1_EXT4, NODE1_FAB4, NODE2_FAB4, ip},
    fake_api::Res,
    kube_agent::KubeAgent,
    monitor::{Monitor, http_get, of_kind, sample, scrape},
    netns::Netns,
    peer::ask,
    servers::tcp_request,
    topology::{Bed, VIP4, backend4, sa},
};

const WAIT: Duration = Duration::from_secs(15);
const METRICS: &str = "127.0.0.1:9963";
const WEB: u16 = 8080;
const EMPTY: u16 = 9090;

fn metrics() -> SocketAddr {
    METRICS.parse().unwrap()
}

/// Sends `n` UDP datagrams from one socket (one flow) to `to` inside `ns`; no answer expected.
fn udp_flood(ns: &Netns, to: SocketAddr, n: usize) -> u16 {
    ns.exec(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..n {
            s.send_to(b"x", to).unwrap();
        }
        s.local_addr().unwrap().port()
    })
}

fn edge_config() -> String {
    format!(
        "services:\n  - name: web\n    vip: {VIP4}\n    port: {WEB}\n    protocol: tcp\n    backends:\n      - address: {}\n        port: {WEB}\n  - name: empty\n    vip: {VIP4}\n    port: {EMPTY}\n    protocol: udp\n    backends: []\n",
        backend4(1)
    )
}

/// The edge LB: translations of new flows and no-backend drops reach `monitor -o json` with
/// Hubble-like fields, filters apply, trace points go on and off at run time, one flow's flood
/// is rate limited (and counted), and /metrics agrees with the traffic sent.
#[test]
fn edge_lb_events_reach_monitor_and_metrics_agree_with_the_traffic() {
    let mut bed = Bed::new(1);
    bed.serve(WEB, false);
    bed.write_config(&edge_config());
    bed.agent.add_args([
        "--metrics-address",
        METRICS,
        "--events-flow-rate",
        "1",
        "--events-flow-burst",
        "5",
    ]);
    bed.agent.start();
    for path in ["/healthz", "/readyz"] {
        let (code, body) = http_get(&bed.lb, metrics(), path);
        assert_eq!(code, 200, "{path}: {body}");
    }
    let all = Monitor::start(&bed.lb, bed.agent.socket(), &["-o", "json"]);
    let drops = Monitor::start(
        &bed.lb,
        bed.agent.socket(),
        &["-o", "json", "--type", "drop", "--port", &EMPTY.to_string()],
    );
    let mut human = Monitor::start(&bed.lb, bed.agent.socket(), &["--type", "drop", "-n", "1"]);

    // Translations: one per new connection.
    for _ in 0..5 {
        tcp_request(&bed.client, sa(VIP4, WEB)).unwrap();
    }
    let r = all.wait(WAIT, "5 translations", |r| {
        of_kind(r, "translation").len() >= 5
    });
    let t = of_kind(&r, "translation");
    assert_eq!(t.len(), 5, "one per connection: {t:?}");
    for f in &t {
        let f = &f["flow"];
        assert_eq!(f["verdict"], "TRANSLATED", "{f}");
        assert_eq!(f["program"], "xdp_lb", "{f}");
        assert_eq!(f["IP"]["source"], "10.200.1.2", "{f}");
        assert_eq!(f["IP"]["destination"], VIP4, "{f}");
        assert_eq!(f["l4"]["TCP"]["destination_port"], WEB, "{f}");
        assert_eq!(f["l4"]["TCP"]["flags"]["SYN"], true, "{f}");
        assert_eq!(f["service"]["name"], "web", "{f}");
        assert_eq!(
            f["backend"]["address"],
            format!("{}:{WEB}", backend4(1)),
            "{f}"
        );
        assert_eq!(f["interface"]["name"], "l0", "{f}");
    }

    // Drops: a flood of one flow to a service without backends. The flow's first 5 events
    // (its burst) are written, then about one per second; the rest are counted as rate limited.
    let flood = 200;
    let started = Instant::now();
    let sport = udp_flood(&bed.client, sa(VIP4, EMPTY), flood);
    drops.wait(WAIT, "the flood's drops", |r| r.len() >= 5);
    std::thread::sleep(Duration::from_millis(300));
    let r = drops
        .records()
        .into_iter()
        .filter(|v| v.get("flow").is_some())
        .collect::<Vec<_>>();
    let allowed = 5 + started.elapsed().as_secs_f64().ceil() as usize + 1;
    assert!(
        (5..=allowed).contains(&r.len()),
        "{} drop records, at most {allowed}",
        r.len()
    );
    for v in &r {
        let f = &v["flow"];
        assert_eq!(f["verdict"], "DROPPED", "{f}");
        assert_eq!(f["drop_reason_desc"], "NO_BACKEND", "{f}");
        assert_eq!(f["event_type"]["type"], "drop", "{f}");
        assert_eq!(f["l4"]["UDP"]["source_port"], sport, "{f}");
        assert_eq!(f["l4"]["UDP"]["destination_port"], EMPTY, "{f}");
    }
    assert!(
        of_kind(&drops.records(), "translation").is_empty(),
        "filtered by type and port"
    );
    // `-n 1` ended that monitor after the human line of the first drop.
    let t = Instant::now();
    while !human.exited() {
        assert!(t.elapsed() < WAIT, "monitor -n 1 did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = human.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(
        line.contains("DROPPED")
            && line.contains(&format!("10.200.1.2:{sport} -> {VIP4}:{EMPTY}"))
            && line.contains("no_backend"),
        "{line}"
    );

    // Trace points: off by default, on and off at run time without a reload.
    assert!(of_kind(&all.records(), "trace").is_empty());
    let on = bed.agent.cli(&["events", "trace", "on"]);
    assert_eq!(on["trace"], true, "{on}");
    tcp_request(&bed.client, sa(VIP4, WEB)).unwrap();
    let r = all.wait(WAIT, "trace points", |r| {
        of_kind(r, "trace")
            .iter()
            .any(|f| f["flow"]["reason"] == "fwd_snat")
    });
    for f in of_kind(&r, "trace") {
        assert_eq!(f["flow"]["verdict"], "TRACED", "{f}");
        assert_eq!(f["flow"]["reason_set"], "lb", "{f}");
    }
    let off = bed.agent.cli(&["events", "trace", "off"]);
    assert_eq!(off["trace"], false, "{off}");
    let traced = of_kind(&all.records(), "trace").len();
    tcp_request(&bed.client, sa(VIP4, WEB)).unwrap();
    all.wait(WAIT, "the 7th translation", |r| {
        of_kind(r, "translation").len() >= 7
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        of_kind(&all.records(), "trace").len(),
        traced,
        "trace points are off again"
    );

    // Metrics against the traffic: 7 connections, `flood` datagrams dropped.
    let s = scrape(&bed.lb, metrics());
    let no_backend = sample(
        &s,
        "oxilium_datapath_packets_total",
        &[("set", "lb"), ("reason", "no_backend")],
    );
    assert_eq!(no_backend, Some(flood as f64));
    let ct_new = sample(
        &s,
        "oxilium_datapath_packets_total",
        &[("set", "lb"), ("reason", "ct_new")],
    );
    assert_eq!(ct_new, Some(7.0));
    let web = sample(&s, "oxilium_service_packets_total", &[("service", "web")]).unwrap();
    assert!(
        web >= 7.0 * 3.0,
        "at least SYN, data and ACK per connection: {web}"
    );
    let fwd = sample(
        &s,
        "oxilium_datapath_packets_total",
        &[("reason", "fwd_snat")],
    )
    .unwrap();
    let rev = sample(
        &s,
        "oxilium_datapath_packets_total",
        &[("reason", "rev_snat")],
    )
    .unwrap();
    assert_eq!(
        fwd + rev,
        web,
        "the service's packets: forwarded with SNAT and replies"
    );
    let b = sample(
        &s,
        "oxilium_backend_packets_total",
        &[
            ("service", "web"),
            ("backend", &format!("{}:{WEB}", backend4(1))),
        ],
    );
    assert_eq!(b, Some(fwd), "the backend's packets: the forwarded ones");
    let limited = sample(
        &s,
        "oxilium_events_lost_total",
        &[("reason", "rate_limited")],
    )
    .unwrap();
    assert!(
        limited >= (flood - allowed) as f64,
        "rate limited: {limited}"
    );
    let written = sample(&s, "oxilium_events_written_total", &[]).unwrap();
    let drained = sample(&s, "oxilium_events_drained_total", &[]).unwrap();
    assert!(
        written >= 12.0 && drained == written,
        "written {written}, drained {drained}"
    );
    assert_eq!(
        sample(&s, "oxilium_map_entries", &[("map", "conntrack")]),
        Some(7.0)
    );
    assert_eq!(sample(&s, "oxilium_services", &[]), Some(2.0));
    assert_eq!(sample(&s, "oxilium_ready", &[]), Some(1.0));
    let applies = sample(
        &s,
        "oxilium_reconcile_duration_seconds_count",
        &[("kind", "whole")],
    )
    .unwrap();
    assert!(applies >= 1.0, "{applies}");
    let status = bed.agent.cli(&["events", "status"]);
    assert_eq!(status["trace"], false, "{status}");
    assert!(
        status["rate_limited"].as_u64().unwrap() as f64 >= limited,
        "{status}"
    );
}

/// A node fed by the Kubernetes API: /healthz answers while /readyz waits for the first sync
/// (the API server is down), then both answer; a NodePort flow's translation and a
/// loadBalancerSourceRanges refusal come from the tc programs to the monitor.
#[test]
fn node_readiness_waits_for_the_first_sync_and_nodeport_events_reach_monitor() {
    let c = Cluster::new([1, 0]);
    let mut k = KubeAgent::serve(&c.node1, "node1", &["ext0"]);
    k.agent.add_args(["--metrics-address", METRICS]);
    let node = json!({"metadata": {"name": "node1"}, "status": {"addresses": [
        {"type": "InternalIP", "address": NODE1_FAB4}, {"type": "ExternalIP", "address": NODE1_EXT4}]}});
    let node2 = json!({"metadata": {"name": "node2"}, "status": {"addresses": [
        {"type": "InternalIP", "address": NODE2_FAB4}]}});
    let svc = |name: &str, ty: &str, np: u16, ranges: Option<&str>| {
        let mut o = json!({"metadata": {"name": name, "namespace": "default"}, "spec": {
            "type": ty, "clusterIP": format!("10.96.0.{}", np - 30000),
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": np}]}});
        if let Some(r) = ranges {
            o["spec"]["loadBalancerSourceRanges"] = json!([r]);
            o["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}});
        }
        (Res::Services, o)
    };
    let slice = |name: &str| {
        let p = c.pod("p11");
        (
            Res::EndpointSlices,
            json!({
            "metadata": {"name": format!("{name}-v4"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [p.addr(false).ip().to_string()], "nodeName": "node1",
                           "conditions": {"ready": true}}]}),
        )
    };
    k.put([(Res::Nodes, node), (Res::Nodes, node2)]);
    k.put([
        svc("web", "NodePort", 30080, None),
        svc("guarded", "LoadBalancer", 30081, Some("198.51.100.0/24")),
    ]);
    k.put([slice("web"), slice("guarded")]);
    k.api.set_down(true);
    k.agent.start();
    let node_ns = &c.node1;
    k.eventually("/healthz up", || {
        match http_get(node_ns, metrics(), "/healthz") {
            (200, _) => Ok(()),
            other => Err(other),
        }
    });
    // Down for a while: never ready.
    for _ in 0..10 {
        let (code, body) = http_get(node_ns, metrics(), "/readyz");
        assert_eq!(code, 503, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["datapath_loaded"], true, "{v}");
        assert_eq!(v["first_sync_applied"], false, "{v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = scrape(node_ns, metrics());
    assert_eq!(sample(&s, "oxilium_ready", &[]), Some(0.0));
    k.api.set_down(false);
    k.wait_applied();
    assert_eq!(http_get(node_ns, metrics(), "/readyz").0, 200);
    assert_eq!(http_get(node_ns, metrics(), "/healthz").0, 200);

    let m = Monitor::start(node_ns, k.agent.socket(), &["-o", "json"]);
    let to = SocketAddr::new(ip(NODE1_EXT4), 30080);
    k.wait_answers(&c.client, to, false, 3, &[("p11", ip(CLIENT4))]);
    let r = m.wait(WAIT, "NodePort translations", |r| {
        !of_kind(r, "translation").is_empty()
    });
    let t = of_kind(&r, "translation")[0]["flow"].clone();
    assert_eq!(t["program"], "tc_nodeport_ingress", "{t}");
    assert_eq!(t["IP"]["source"], CLIENT4, "{t}");
    assert_eq!(
        t["service"]["frontend"],
        format!("{NODE1_EXT4}:30080"),
        "{t}"
    );
    assert_eq!(
        t["backend"]["address"],
        format!("{}", c.pod("p11").addr(false)),
        "{t}"
    );
    assert!(
        ask(
            &c.client,
            None,
            SocketAddr::new(ip("203.0.113.10"), 80),
            false
        )
        .is_err()
    );
    let r = m.wait(WAIT, "the source range drop", |r| {
        !of_kind(r, "drop").is_empty()
    });
    let d = of_kind(&r, "drop")[0]["flow"].clone();
    assert_eq!(d["drop_reason_desc"], "SOURCE_RANGE", "{d}");
    assert_eq!(d["reason_set"], "nodeport", "{d}");
    assert_eq!(d["IP"]["destination"], "203.0.113.10", "{d}");
    // explain on the node: the tc NodePort program, over the live maps.
    let e = k.agent.cli(&[
        "explain", "--from", CLIENT4, "--to", NODE1_EXT4, "--port", "30080", "--sport", "40404",
    ]);
    assert_eq!(e["program"], "oxilium_nodeport_ingress", "{e}");
    assert_eq!(e["iface"], "ext0", "{e}");
    assert_eq!(
        e["backend"]["address"],
        format!("{}", c.pod("p11").addr(false)),
        "{e}"
    );
    assert_eq!(
        e["verdict"], "TC_ACT_REDIRECT",
        "delivered to the pod's veth: {e}"
    );
    assert_eq!(
        e["output"]["source"], CLIENT4,
        "the client is kept for a local pod: {e}"
    );
    let e = k.agent.cli(&[
        "explain",
        "--from",
        CLIENT4,
        "--to",
        "203.0.113.10",
        "--port",
        "80",
    ]);
    assert_eq!(e["verdict"], "TC_ACT_SHOT", "{e}");
    assert_eq!(e["drop"]["desc"], "SOURCE_RANGE", "{e}");
    let s = scrape(node_ns, metrics());
    let refused = sample(
        &s,
        "oxilium_datapath_packets_total",
        &[("set", "nodeport"), ("reason", "source_range")],
    )
    .unwrap();
    assert!(refused >= 1.0, "{refused}");
}
