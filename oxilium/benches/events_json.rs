//! What `oxilium monitor -o json` costs per record, stage by stage, without the kernel:
//!   `cargo bench -p oxilium --bench events_json` (env OXILIUM_BENCH_RECORDS, default 200 000)
//!
//! A mix of datapath events as a busy node writes them (policy verdicts between two local pods,
//! translations of a named service, drops, trace points; TCP with flags and UDP) goes through the
//! path of a subscriber: the agent's flow record (`record::from_event`, with the service and pod
//! names), its wire encoding in the chunks the agent sends (`wire::encode`, `wire::CHUNK_BYTES`),
//! and monitor's printing of those chunks (`wire::Printer`) into `/dev/null` through the same
//! writer monitor puts on its standard output (`wire::sink`). Each stage is timed alone (median
//! of 5 rounds), then the whole path; the figures are records per second on one core.
use abi::event::{self as ev, Event};
use oxilium::events::{Names, record, wire};
use std::{hint::black_box, sync::Arc, time::Instant};

fn events(n: usize) -> Vec<Event> {
    let pod = |i: u8| abi::lb::v4_mapped([10, 250, 0, i]);
    (0..n)
        .map(|i| {
            let base = Event {
                proto: if i % 4 == 3 {
                    abi::lb::PROTO_UDP
                } else {
                    abi::lb::PROTO_TCP
                },
                src: pod(2 + (i % 3) as u8),
                dst: pod(9),
                sport: (40_000 + (i % 20_000) as u16).to_be(),
                dport: 8080u16.to_be(),
                tcp_flags: 0x02,
                ifindex: 1,
                bytes: 74,
                time_ns: record::monotonic_ns(),
                ..Default::default()
            };
            match i % 4 {
                0 => Event {
                    kind: ev::KIND_POLICY,
                    prog: ev::PROG_TC_ENDPOINT_FROM_POD,
                    verdict: ev::VERDICT_ALLOW,
                    src_identity: 300,
                    dst_identity: 301,
                    rule: ev::MATCH_L3_L4,
                    direction: abi::policy::DIR_INGRESS,
                    action: abi::policy::ACTION_ALLOW,
                    ..base
                },
                1 => Event {
                    kind: ev::KIND_TRANSLATE,
                    prog: ev::PROG_TC_ENDPOINT_FROM_POD,
                    service_id: 7,
                    backend_id: 3,
                    backend: pod(9),
                    backend_port: 8080u16.to_be(),
                    ..base
                },
                2 => Event {
                    kind: ev::KIND_DROP,
                    prog: ev::PROG_TC_NODEPORT_INGRESS,
                    reason_set: ev::SET_NODEPORT,
                    reason: 1,
                    ..base
                },
                _ => Event {
                    kind: ev::KIND_TRACE,
                    prog: ev::PROG_XDP_LB,
                    reason: 2,
                    ..base
                },
            }
        })
        .collect()
}

fn names() -> Names {
    let mut n = Names::default();
    n.services.insert(7, "default/web".into());
    n.ifaces.insert(1, "eth0".into());
    let dir = oxilium::agent::node::l7::Endpoints::default();
    for (i, p) in [(2u8, "client"), (3, "other"), (4, "bad"), (9, "web")] {
        let a = std::net::IpAddr::from([10, 250, 0, i]);
        dir.set(
            &[a],
            &format!("default/{p}"),
            300 + u32::from(i),
            &Default::default(),
        );
    }
    n.pods = Some(Arc::new(dir));
    n
}

/// Median seconds of `rounds` runs of `f`.
fn median(rounds: usize, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The agent's chunks of `records`, as the stream sends them.
fn chunks(records: &[Arc<record::FlowRecord>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for r in records {
        wire::encode(r, &mut cur);
        if cur.len() >= wire::CHUNK_BYTES {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn print(chunks: &[Vec<u8>], format: wire::Format) -> u64 {
    let mut p = wire::Printer::new(format, None, "bench");
    let mut out = wire::sink(std::fs::File::create("/dev/null").unwrap());
    let mut notes = std::io::sink();
    for c in chunks {
        p.feed(c, &mut out, &mut notes).unwrap();
    }
    p.seen
}

fn main() {
    let n: usize = std::env::var("OXILIUM_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let evs = events(n);
    let names = names();
    let clock = record::Clock::now();
    let rate = |secs: f64| n as f64 / secs / 1e6;

    let make = || -> Vec<Arc<record::FlowRecord>> {
        evs.iter()
            .map(|e| Arc::new(record::from_event(e, &clock, &names)))
            .collect()
    };
    let t_record = median(5, || {
        black_box(make());
    });
    let records = make();
    let t_encode = median(5, || {
        black_box(chunks(&records));
    });
    let wire_chunks = chunks(&records);
    let bytes: usize = wire_chunks.iter().map(|c| c.len()).sum();
    let t_json = median(5, || {
        assert_eq!(print(&wire_chunks, wire::Format::Json), n as u64);
    });
    let t_text = median(5, || {
        assert_eq!(print(&wire_chunks, wire::Format::Text), n as u64);
    });
    let t_all = median(5, || {
        let r = make();
        let c = chunks(&r);
        black_box(print(&c, wire::Format::Json));
    });
    println!(
        "{n} records, {} B each on the wire, {} chunks",
        bytes / n,
        wire_chunks.len()
    );
    println!(
        "flow record (agent)            {:>8.2} M records/s",
        rate(t_record)
    );
    println!(
        "wire encoding (agent)          {:>8.2} M records/s",
        rate(t_encode)
    );
    println!(
        "monitor -o json printing       {:>8.2} M records/s",
        rate(t_json)
    );
    println!(
        "monitor (human lines) printing {:>8.2} M records/s",
        rate(t_text)
    );
    println!(
        "whole path, -o json            {:>8.2} M records/s",
        rate(t_all)
    );
}
