//! `oxilium explain` on the real edge agent: its answers agree with what real packets do
//! (a new flow's backend, an established flow's, a service without backends, an address that is
//! no service) and it changes nothing: the live maps (conntrack, SNAT, counters, the events'
//! counters and rate-limit map) are byte-identical before and after.
//! Kernel features: network namespaces, veth, native XDP on veth, BPF_PROG_TEST_RUN for XDP with
//! an ingress ifindex, BPF ring buffers, BTF maps with map-in-map, bpffs pinning. Requires root;
//! fails (never skips) when it cannot set up.
mod support;

use abi::lb::{Counter, CtEntry, FlowKey, SnatEntry, names};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use serde_json::Value;
use std::path::Path;
use support::topology::{Bed, VIP4, backend4};

const WEB: u16 = 8080;
const EMPTY: u16 = 9090;
const CLIENT: &str = "10.200.1.2";

fn config() -> String {
    let mut y = format!(
        "maglev_seed: 7\nservices:\n  - name: web\n    vip: {VIP4}\n    port: {WEB}\n    protocol: tcp\n    table_size: 251\n    backends:\n"
    );
    for i in 1..=3 {
        y += &format!("      - address: {}\n        port: {WEB}\n", backend4(i));
    }
    y += &format!(
        "  - name: empty\n    vip: {VIP4}\n    port: {EMPTY}\n    protocol: udp\n    backends: []\n"
    );
    y
}

fn bytes<T>(v: &T) -> Vec<u8> {
    // SAFETY: plain-old-data map types (abi), read as bytes.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }.to_vec()
}

/// Every entry of the live maps an explain could write, as bytes.
fn snapshot(pins: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let open = |n: &str| MapData::from_pin(pins.join(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
    let ct: HashMap<_, FlowKey, CtEntry> =
        HashMap::try_from(Map::LruHashMap(open(names::CONNTRACK))).unwrap();
    for (k, v) in ct.iter().map(Result::unwrap) {
        out.push((names::CONNTRACK.into(), [bytes(&k), bytes(&v)].concat()));
    }
    let snat: HashMap<_, FlowKey, SnatEntry> =
        HashMap::try_from(Map::LruHashMap(open(names::SNAT))).unwrap();
    for (k, v) in snat.iter().map(Result::unwrap) {
        out.push((names::SNAT.into(), [bytes(&k), bytes(&v)].concat()));
    }
    let limit: HashMap<_, u32, u64> =
        HashMap::try_from(Map::LruHashMap(open(abi::event::names::LIMIT))).unwrap();
    for (k, v) in limit.iter().map(Result::unwrap) {
        out.push((
            abi::event::names::LIMIT.into(),
            [bytes(&k), bytes(&v)].concat(),
        ));
    }
    for n in [names::STATS, names::SERVICE_STATS, names::BACKEND_STATS] {
        let a: PerCpuArray<_, Counter> = PerCpuArray::try_from(Map::PerCpuArray(open(n))).unwrap();
        for (i, v) in a.iter().enumerate() {
            for c in v.unwrap().iter() {
                if c.packets != 0 || c.bytes != 0 {
                    out.push((format!("{n}[{i}]"), bytes(c)));
                }
            }
        }
    }
    let ev: PerCpuArray<_, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(abi::event::names::STATS))).unwrap();
    for (i, v) in ev.iter().enumerate() {
        for c in v.unwrap().iter() {
            out.push((format!("events[{i}]"), bytes(c)));
        }
    }
    out
}

fn explain(bed: &Bed, args: &[&str]) -> Value {
    let mut a = vec!["explain"];
    a.extend_from_slice(args);
    bed.agent.cli(&a)
}

/// A real TCP request from `sport` with nc (netcat-openbsd) in the client namespace: the
/// identity of the backend that answered.
fn nc_request(bed: &Bed, sport: u16) -> String {
    let out = bed.client.run(&[
        "sh",
        "-c",
        &format!("echo hello | timeout 5 nc -p {sport} -w 2 {VIP4} {WEB}"),
    ]);
    let reply = String::from_utf8_lossy(&out.stdout).trim().to_string();
    reply
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn explain_agrees_with_real_packets_and_leaves_the_live_maps_untouched() {
    let mut bed = Bed::new(3);
    bed.serve(WEB, false);
    bed.write_config(&config());
    bed.agent.start();

    // A new flow: explain first, then the same packet for real.
    let sport = 43_210u16;
    let e = explain(
        &bed,
        &[
            "--from",
            CLIENT,
            "--to",
            VIP4,
            "--port",
            &WEB.to_string(),
            "--sport",
            &sport.to_string(),
        ],
    );
    assert_eq!(e["program"], "oxilium_lb", "{e}");
    assert!(
        matches!(e["verdict"].as_str(), Some("XDP_TX" | "XDP_REDIRECT")),
        "{e}"
    );
    assert_eq!(e["service"]["name"], "web", "{e}");
    assert!(
        e["why"]
            .as_str()
            .unwrap()
            .starts_with("new flow: Maglev slot"),
        "{e}"
    );
    let steps: Vec<&str> = e["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert!(
        steps.contains(&"ct_new") && steps.contains(&"fwd_snat"),
        "{steps:?}"
    );
    let predicted = e["backend"]["address"].as_str().unwrap().to_string();
    assert_eq!(
        e["output"]["destination"],
        predicted.split(':').next().unwrap(),
        "{e}"
    );
    assert_eq!(e["output"]["source"], "10.200.1.1", "SNAT to the LB: {e}");
    assert_eq!(
        e["new_conntrack_entries"].as_array().unwrap().len(),
        1,
        "{e}"
    );
    let id = nc_request(&bed, sport);
    let i: usize = id
        .trim_start_matches('b')
        .parse()
        .unwrap_or_else(|_| panic!("answer {id:?}"));
    assert_eq!(
        format!("{}:{WEB}", backend4(i)),
        predicted,
        "explain predicted the real backend"
    );

    // An open connection: explain its tuple while it lasts (an established flow, pinned).
    let open_port = 43_211u16;
    let nc = bed
        .client
        .command(&[
            "sh",
            "-c",
            &format!("(echo hello; sleep 3) | timeout 8 nc -p {open_port} -w 5 {VIP4} {WEB}"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pinned = None;
    bed.agent.eventually(
        std::time::Duration::from_secs(5),
        "the open flow in conntrack",
        || {
            let list = bed.agent.cli(&["ct", "list"]);
            pinned = list
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["client"] == format!("{CLIENT}:{open_port}"))
                .map(|c| c["backend_id"].as_u64().unwrap());
            pinned.map(|_| ()).ok_or(list)
        },
    );
    let e = explain(
        &bed,
        &[
            "--from",
            CLIENT,
            "--to",
            VIP4,
            "--port",
            &WEB.to_string(),
            "--sport",
            &open_port.to_string(),
        ],
    );
    let out = nc.wait_with_output().unwrap();
    let id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        e["why"],
        format!("existing flow: conntrack pins backend {}", pinned.unwrap()),
        "{e}"
    );
    assert_eq!(e["seeded_from_live"][0], "conntrack", "{e}");
    assert!(
        e["new_conntrack_entries"].as_array().unwrap().is_empty(),
        "{e}"
    );
    let i: usize = id
        .trim_start_matches('b')
        .parse()
        .unwrap_or_else(|_| panic!("answer {id:?}"));
    assert_eq!(
        e["output"]["destination"],
        backend4(i).to_string(),
        "the real backend: {e}"
    );
    assert!(
        e["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["step"] != "ct_new"),
        "{e}"
    );

    // No backend: dropped, as real datagrams are.
    let e = explain(
        &bed,
        &[
            "--from",
            CLIENT,
            "--to",
            VIP4,
            "--port",
            &EMPTY.to_string(),
            "--proto",
            "udp",
        ],
    );
    assert_eq!(e["verdict"], "XDP_DROP", "{e}");
    assert_eq!(e["drop"]["desc"], "NO_BACKEND", "{e}");
    assert_eq!(e["why"], "the service has no usable backend", "{e}");
    let before = bed.agent.status()["counters"]["no_backend"]["packets"]
        .as_u64()
        .unwrap();
    bed.client.run(&[
        "sh",
        "-c",
        &format!("echo x | timeout 2 nc -u -w 1 {VIP4} {EMPTY}; true"),
    ]);
    let after = bed.agent.status()["counters"]["no_backend"]["packets"]
        .as_u64()
        .unwrap();
    assert!(
        after > before,
        "the real datagram was dropped for no backend"
    );

    // No service: passed untouched.
    let e = explain(
        &bed,
        &[
            "--from",
            CLIENT,
            "--to",
            &backend4(1).to_string(),
            "--port",
            &WEB.to_string(),
        ],
    );
    assert_eq!(e["verdict"], "XDP_PASS", "{e}");
    assert!(e["backend"].is_null() && e["drop"].is_null(), "{e}");
    assert_eq!(e["counters"]["lb/pass"], 1, "{e}");

    // Bad input names the field.
    let out = support::agent::bin();
    let o = std::process::Command::new(out)
        .args([
            "explain", "--from", CLIENT, "--to", "fd00::1", "--port", "1", "--socket",
        ])
        .arg(bed.agent.socket())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("from / to"),
        "{o:?}"
    );

    // Nothing live changes: every explain between two identical snapshots. Outside packets
    // (an IPv6 router solicitation of a peer) may move a counter meanwhile: a few tries.
    let pins = bed.agent.pins().to_path_buf();
    let mut identical = false;
    for _ in 0..5 {
        let a = snapshot(&pins);
        for (port, proto, sport) in [
            (WEB, "tcp", "43210"),
            (WEB, "tcp", "50000"),
            (EMPTY, "udp", "50001"),
        ] {
            explain(
                &bed,
                &[
                    "--from",
                    CLIENT,
                    "--to",
                    VIP4,
                    "--port",
                    &port.to_string(),
                    "--proto",
                    proto,
                    "--sport",
                    sport,
                ],
            );
        }
        let b = snapshot(&pins);
        assert!(
            a.iter().any(|(n, _)| n == names::CONNTRACK),
            "the real flow is in the snapshot"
        );
        if a == b {
            identical = true;
            break;
        }
    }
    assert!(identical, "the live maps changed across explain");
}
