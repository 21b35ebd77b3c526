//! Single-shot figures: one BPF_PROG_TEST_RUN (repeat 1, the kernel's own fresh copy of the
//! frame) per distinct packet, the median of `n` packets, each run paired with a run of the raw
//! `XDP_PASS` program on the same packet right before it (so both medians come from the same
//! moments of a shared machine). Reported as ns above the baseline and as a ratio. New flows are
//! distinct 5-tuples; the established cases send the same packets again. Every run must return
//! XDP_TX (the FIB answers in the bench namespace). Events are switched off (`OXI_EVENT_CONFIG`),
//! their cost is the events section's.
//!
//! `OXILIUM_BENCH_COMPARE=FILE[,FILE...]` (other builds of the XDP object, e.g. the previous
//! commit's target/bpf/bpfel-unknown-none/bpf/oxilium-xdp) adds their figures (each row named
//! by its file's name), their runs paired with ours on the same packet: on a shared machine
//! this is the way to see what a change did.
//! The other build gets its own maps, holding a copy of ours (benches/xdp/other.rs), so that it
//! may be one whose maps differ in type.
use super::*;
use common::single::Baselines;

/// IPv6 services and backends for the single-shot cases (the namespace has their neighbour).
pub const SNAT6: &str = "[fd00::a]:80";
pub const DSR6: &str = "[fd00::b]:80";
pub const BACKEND6: &str = "[fd00::1]:80";

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

/// One case: `n` packets through the baselines and each of `progs`, in turn; every run XDP_TX.
fn case(
    progs: &[(i32, String)],
    base: &Baselines,
    ifindex: u32,
    n: u32,
    name: &str,
    pkt: &dyn Fn(u32) -> Vec<u8>,
) {
    let md = xdp_md(pkt(0).len(), ifindex);
    common::single::case(progs, base, &md, n, name, 3, pkt);
}

/// The program of a loaded object, with its events switched off.
fn events_off<'a>(ebpf: &'a Ebpf, pins: &PinDir) -> &'a Xdp {
    common::events_off(pins.path());
    ebpf.program("oxilium_lb").unwrap().try_into().unwrap()
}

pub fn bench(ifindex: u32, base: &Baselines) {
    let n: u32 = std::env::var("OXILIUM_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (ebpf, _rec, pins) = setup_in("single", 1024, 65535);
    let fd = |p: &Xdp| common::fd_of(p.fd().unwrap());
    let mut progs = vec![(fd(events_off(&ebpf, &pins)), String::new())];
    let others: Vec<String> = std::env::var("OXILIUM_BENCH_COMPARE")
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let loaded: Vec<_> = others
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let o = std::fs::read(f).unwrap_or_else(|e| panic!("OXILIUM_BENCH_COMPARE={f}: {e}"));
            (other::load(&o, pins.path(), i), f)
        })
        .collect();
    for ((ebpf, pins), f) in &loaded {
        let name = std::path::Path::new(f.as_str())
            .file_name()
            .map_or_else(|| f.to_string(), |n| n.to_string_lossy().into_owned());
        progs.push((fd(events_off(ebpf, pins)), name));
    }
    println!(
        "\nsingle shot (repeat 1), median of {n} distinct flows, each run paired with one of the \
         raw XDP_PASS program and one of a program doing one bpf_fib_lookup (\"FIB only\": ns \
         above XDP_PASS)"
    );
    common::single::header("XDP_PASS");
    for (family, snat, dsr) in [
        ("IPv4", "10.10.0.1:80", "10.10.0.3:80"),
        ("IPv6", SNAT6, DSR6),
    ] {
        case(
            &progs,
            base,
            ifindex,
            n,
            &format!("{family} SNAT, new flow"),
            &|i| flow(i, 0, snat),
        );
        case(
            &progs,
            base,
            ifindex,
            n,
            &format!("{family} SNAT, established flow"),
            &|i| flow(i, 0, snat),
        );
        case(
            &progs,
            base,
            ifindex,
            n,
            &format!("{family} DSR, new flow"),
            &|i| flow(i, 1, dsr),
        );
        case(
            &progs,
            base,
            ifindex,
            n,
            &format!("{family} DSR, established flow"),
            &|i| flow(i, 1, dsr),
        );
    }
}
