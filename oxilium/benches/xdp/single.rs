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
//!
//! Then the same cases again with `OXILIUM_BENCH_SERVICES` services in the maps (default 10 000;
//! the first table has the bench's five), oxilium only.
//!
//! `OXILIUM_BENCH_KATRAN=FILE` (Katran's balancer object, built from its sources: see
//! docs/benchmarks.md) adds rows "… katran" to the DSR cases: Katran's XDP balancer on the same
//! packets, in the same loop (benches/xdp/katran.rs). The bench thread then stays on one CPU
//! (as RSS keeps a flow on one core for Katran's per-CPU connection tables).
use super::*;
use common::single::Baselines;

/// IPv6 services and backends for the single-shot cases (the namespace has their neighbour).
pub const SNAT6: &str = "[fd00::a]:80";
pub const DSR6: &str = "[fd00::b]:80";
pub const DSR4: &str = "10.10.0.3:80";
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
    let katran = std::env::var("OXILIUM_BENCH_KATRAN")
        .ok()
        .map(|f| katran::Katran::load(&f, DSR4, DSR6));
    if katran.is_some() {
        pin_to_this_cpu();
    }
    println!(
        "\nsingle shot (repeat 1), median of {n} distinct flows, each run paired with one of the \
         raw XDP_PASS program and one of a program doing one bpf_fib_lookup (\"FIB only\": ns \
         above XDP_PASS)"
    );
    if let Some(k) = &katran {
        println!(
            "{}; rows \"… katran\": the DSR cases, the same {n} flows",
            k.about
        );
    }
    common::single::header("XDP_PASS");
    let with_katran = {
        let mut p = progs.clone();
        p.extend(katran.iter().map(|k| (k.fd(), "katran".to_string())));
        p
    };
    for (family, snat, dsr) in [("IPv4", "10.10.0.1:80", DSR4), ("IPv6", SNAT6, DSR6)] {
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
        let misses = || katran.as_ref().map_or(0, |k| k.misses());
        let before = misses();
        case(
            &with_katran,
            base,
            ifindex,
            n,
            &format!("{family} DSR, new flow"),
            &|i| flow(i, 1, dsr),
        );
        let new = misses() - before;
        case(
            &with_katran,
            base,
            ifindex,
            n,
            &format!("{family} DSR, established flow"),
            &|i| flow(i, 1, dsr),
        );
        let est = misses() - before - new;
        if let Some(k) = &katran {
            assert_eq!(
                new,
                u64::from(n),
                "katran: every new-flow run missed its LRU"
            );
            if k.per_cpu_lru {
                assert_eq!(est, 0, "katran: every established run found its flow");
            }
            println!("  (katran, {family}: connection-table misses: new {new}, established {est})");
            let md = xdp_md(flow(0, 1, dsr).len(), ifindex);
            k.check(&format!("{family} established"), &md, n, &|i| {
                flow(i, 1, dsr)
            });
            k.check(&format!("{family} new"), &md, n, &|i| flow(i, 2, dsr));
        }
    }
    at_scale(base, ifindex, n);
}

/// The same cases with `OXILIUM_BENCH_SERVICES` (default 10 000) services in the maps: the bench's
/// five plus one-backend services on other VIPs (10.20.0.0/16), programmed through the
/// reconciler as the agent does, in a load of its own (empty conntrack and SNAT maps: the first
/// table's flows hold a third of the SNAT address's ports, and a new flow's port search gives up
/// after 16 taken ports). oxilium only (the other builds' maps hold copies of the five), on
/// flows of their own (rounds 3 and 4).
fn at_scale(base: &Baselines, ifindex: u32, n: u32) {
    let (ebpf, mut rec, pins) = setup_in("scale", 1024, 65535);
    let progs = [(
        common::fd_of(events_off(&ebpf, &pins).fd().unwrap()),
        String::new(),
    )];
    let progs = &progs[..];
    let total: usize = std::env::var("OXILIUM_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut m = model(300);
    let filler = total.saturating_sub(m.services.len());
    for i in 0..filler {
        let vip = format!("10.20.{}.{}:80", i / 250, i % 250 + 1);
        let mut s = service(&format!("filler{i}"), &vip, "10.10.0.2:80", 300);
        s.algorithm = Algorithm::Random;
        m.services.push(s);
    }
    let t = std::time::Instant::now();
    rec.apply(&compile::compile(&m).unwrap()).unwrap();
    println!(
        "\nthe same, {} services in the maps ({filler} added through the reconciler in {:.1} s), oxilium only, new flows of their own",
        m.services.len(),
        t.elapsed().as_secs_f64()
    );
    common::single::header("XDP_PASS");
    for (family, snat, dsr) in [("IPv4", "10.10.0.1:80", DSR4), ("IPv6", SNAT6, DSR6)] {
        let services = m.services.len();
        for (what, round, vip) in [("SNAT", 3, snat), ("DSR", 4, dsr)] {
            for state in ["new", "established"] {
                let name = format!("{family} {what}, {state} flow, {services} services");
                case(progs, base, ifindex, n, &name, &|i| flow(i, round, vip));
            }
        }
    }
}

/// Keeps the calling thread on the CPU it runs on.
fn pin_to_this_cpu() {
    // SAFETY: plain libc calls on a zeroed cpu_set_t, for the calling thread.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
        println!("(bench thread pinned to CPU {cpu})");
    }
}
