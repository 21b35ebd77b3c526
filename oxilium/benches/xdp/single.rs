//! Single-shot figures: one BPF_PROG_TEST_RUN (repeat 1, the kernel's own fresh copy of the
//! frame) per distinct packet, the median of `n` packets, each run paired with a run of the raw
//! `XDP_PASS` program on the same packet right before it (so both medians come from the same
//! moments of a shared machine). Reported as ns above the baseline and as a ratio. New flows are
//! distinct 5-tuples; the established cases send the same packets again. Every run must return
//! XDP_TX (the FIB answers in the bench namespace). Events are switched off (`OXI_EVENT_CONFIG`),
//! their cost is the events section's.
use super::*;
use abi::event::{CFG_NO_DROPS, CFG_NO_TRANSLATIONS, EventConfig};
use oxilium::events::Hub;

/// IPv6 services and backends for the single-shot cases (the namespace has their neighbour).
pub const SNAT6: &str = "[fd00::a]:80";
pub const DSR6: &str = "[fd00::b]:80";
pub const BACKEND6: &str = "[fd00::1]:80";

/// Median of a sample.
fn median(mut v: Vec<u32>) -> f64 {
    v.sort_unstable();
    f64::from(v[v.len() / 2])
}

/// A distinct client → `vip` frame per `i` (`round` changes the clients' network).
fn flow(i: u32, round: u32, vip: &str) -> Vec<u8> {
    let fe: std::net::SocketAddr = vip.parse().unwrap();
    let sport = 1024 + (i >> 16) as u16;
    let dst = fe.ip().to_string();
    if fe.is_ipv6() {
        frame(
            &format!("fd01:{round:x}::{:x}", i + 1),
            sport,
            &dst,
            fe.port(),
        )
    } else {
        let src = format!("172.{}.{}.{}", 16 + round, (i >> 8) & 0xff, i & 0xff);
        frame(&src, sport, &dst, fe.port())
    }
}

/// One case: `n` packets through `prog` and the raw baseline, alternately.
fn case(prog: &Xdp, raw: i32, ifindex: u32, n: u32, name: &str, pkt: &dyn Fn(u32) -> Vec<u8>) {
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    let mut not_tx = 0u32;
    let md = xdp_md(pkt(0).len(), ifindex);
    for i in 0..n {
        let p = pkt(i);
        assert_eq!(p.len(), pkt(0).len(), "{name}: frames of one length");
        base.push(run_raw(raw, &p, &md, 1).1);
        let (action, ns, _) = run(prog, &p, &md, 1);
        not_tx += u32::from(action != 3);
        ours.push(ns);
    }
    assert_eq!(not_tx, 0, "{name}: every run XDP_TX");
    let (b, o) = (median(base), median(ours));
    println!(
        "{name:<40} {o:>7.1} ns  {b:>6.1} ns  {:>7.1} ns  {:>6.2}x",
        o - b,
        o / b
    );
}

pub fn bench(ifindex: u32, raw: i32) {
    let n: u32 = std::env::var("OXILIUM_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (ebpf, _rec, pins) = setup_in("single", 1024, 65535);
    Hub::new(pins.path())
        .set_config(&EventConfig {
            flags: CFG_NO_DROPS | CFG_NO_TRANSLATIONS,
            flow_rate: 0,
            flow_burst: 0,
            _pad: 0,
        })
        .unwrap();
    let prog: &Xdp = ebpf.program("oxilium_lb").unwrap().try_into().unwrap();
    println!(
        "\nsingle shot (repeat 1), median of {n} distinct flows, each run paired with one of the \
         raw XDP_PASS program"
    );
    println!(
        "{:<40} {:>10} {:>10} {:>10} {:>7}",
        "case", "oxilium", "XDP_PASS", "above", "ratio"
    );
    for (family, snat, dsr) in [
        ("IPv4", "10.10.0.1:80", "10.10.0.3:80"),
        ("IPv6", SNAT6, DSR6),
    ] {
        case(
            prog,
            raw,
            ifindex,
            n,
            &format!("{family} SNAT, new flow"),
            &|i| flow(i, 0, snat),
        );
        case(
            prog,
            raw,
            ifindex,
            n,
            &format!("{family} SNAT, established flow"),
            &|i| flow(i, 0, snat),
        );
        case(
            prog,
            raw,
            ifindex,
            n,
            &format!("{family} DSR, new flow"),
            &|i| flow(i, 1, dsr),
        );
        case(
            prog,
            raw,
            ifindex,
            n,
            &format!("{family} DSR, established flow"),
            &|i| flow(i, 1, dsr),
        );
    }
}
