//! oxilium's socket LB against kube-proxy's iptables mode, with a baseline measured in the same run:
//!   `CARGO_TARGET_DIR=/work/target-bench cargo bench -p oxilium --bench kube_proxy` (root;
//!   env OXILIUM_BENCH_CONNECTS overrides the connects per case, OXILIUM_BENCH_RESTORES the
//!   iptables-restore repeats).
//!
//! 1. Connect latency to a ClusterIP with 100 and with 10 000 services. Two test-made network
//!    namespaces, configured alike (loopback up, an `eth0` veth whose peer is a dead end, a default
//!    route through it: no route out), each with the live backends' addresses on `lo` and a plain
//!    TCP accept loop on port 8080:
//!    - "ipt": the nat table kube-proxy writes in iptables mode for the same services (KUBE-SERVICES
//!      with one rule per service, KUBE-SVC-* with `statistic --mode random` jumps, KUBE-SEP-* with
//!      the hairpin KUBE-MARK-MASQ rule and the DNAT, KUBE-MARK-MASQ, KUBE-POSTROUTING, hooked from
//!      PREROUTING, OUTPUT and POSTROUTING), loaded with one `iptables-restore`;
//!    - "lb": no iptables rule; the client joins a test-made cgroup v2 child where oxilium's eight
//!      sock_addr programs are attached, with the same services in the maps (100 services through
//!      `Reconciler::apply` as the agent writes them; 10 000 in bulk, see `Counted`, since the
//!      one-by-one path waits for an RCU grace period per service).
//!
//!    Every case is measured the same way: this binary re-executed as a client process that joins
//!    a test-made cgroup (the socket LB's, or a sibling without programs for the baseline and
//!    iptables) and the namespace, then times `connect()` alone (blocking TCP connect on a fresh
//!    socket, closed with an RST so no TIME_WAIT piles up) K times after a warm-up. The baseline
//!    is a direct connect to a backend address in the "lb" namespace from the plain cgroup: no
//!    rules, no programs, no conntrack. Services are connected to in the middle and at the end of
//!    KUBE-SERVICES' order; a direct connect to a backend is measured under both translations too.
//! 2. One service change (one of three endpoints of a service replaced) with 10 000 services:
//!    iptables-restore of the regenerated nat table; the `--noflush` partial restores (kube-proxy
//!    ≥ 1.28 rewrites KUBE-SERVICES and the changed chains; the best case is the changed chains
//!    only); oxilium's `Reconciler::apply` of the model with the change, counting map writes;
//!    then the same change through the node agent's full and per-change paths, from a store of
//!    10 000 Services and EndpointSlices (see `agent_path`).
#[path = "kube_proxy/agent_path.rs"]
mod agent_path;
#[path = "../tests/support/cgroup.rs"]
#[allow(dead_code)]
mod cgroup;
#[path = "kube_proxy/counted.rs"]
mod counted;
#[path = "kube_proxy/iptables.rs"]
mod iptables;
#[path = "../tests/support/netns.rs"]
#[allow(dead_code)]
mod netns;
use counted::*;
use iptables::*;

use abi::lb::{BPF_F_INNER_MAP, Backend as AbiBackend, ServiceKey, ServiceValue, names};
use anyhow::Result;
use aya::maps::{Array, ArrayOfMaps, Map, MapData};
use cgroup::Cgroup;
use lb::{
    compile::{self, CompiledService},
    model::{
        Algorithm, Backend, BackendState, Frontend, Mode, Model, Protocol, Scope::Internal, Service,
    },
    reconcile::{Changes, Datapath, Reconciler},
};
use netns::{Netns, unique};
use oxilium::bpf::{
    lb_maps::KernelMaps,
    loader,
    socklb::{self, SockLb},
};
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt::Write as _,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    os::fd::{AsRawFd, RawFd},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

const CLIENT_FLAG: &str = "--oxilium-kube-proxy-client";
const SIZES: [usize; 2] = [100, 10_000];
const ENDPOINTS: usize = 3;
const SVC_PORT: u16 = 80;
const BE_PORT: u16 = 8080;
/// The endpoint that replaces a service's first one in the service change.
const NEW_ENDPOINT: usize = 40_000;
const WARMUP: usize = 200;

fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn endpoint_ip(e: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (e / 250) as u8, (e % 250 + 1) as u8)
}

/// The services of the benchmark: `n` ClusterIPs on port 80, three endpoints each on 8080;
/// `changed` has its first endpoint replaced by `NEW_ENDPOINT`.
#[derive(Clone, Copy)]
struct Cluster {
    n: usize,
    changed: Option<usize>,
}

impl Cluster {
    fn endpoints(&self, i: usize) -> Vec<Ipv4Addr> {
        (0..ENDPOINTS)
            .map(|j| {
                if j == 0 && self.changed == Some(i) {
                    endpoint_ip(NEW_ENDPOINT)
                } else {
                    endpoint_ip(i * ENDPOINTS + j)
                }
            })
            .collect()
    }

    fn model(&self) -> Model {
        let services = (0..self.n)
            .map(|i| Service {
                name: svc_name(i),
                frontend: Frontend {
                    addr: IpAddr::V4(cluster_ip(i)),
                    port: SVC_PORT,
                    protocol: Protocol::Tcp,
                },
                algorithm: Algorithm::Random,
                mode: Mode::Snat,
                table_size: 0,
                conntrack_timeout_s: 60,
                scope: Internal,
                affinity_timeout_s: None,
                source_ranges: Vec::new(),
                backends: self
                    .endpoints(i)
                    .into_iter()
                    .map(|ip| Backend {
                        addr: SocketAddr::new(IpAddr::V4(ip), BE_PORT),
                        weight: 1,
                        state: BackendState::Active,
                    })
                    .collect(),
            })
            .collect();
        Model {
            maglev_seed: 0,
            services,
        }
    }
}

// ---------------------------------------------------------------- kube-proxy's iptables rules

/// Pin folder on bpffs, removed (with the pinned maps and links in it) on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = loader::remove_pins(&self.0);
    }
}

/// The pinned links of the test cgroup; removing their pins detaches them.
struct Links {
    pin_dir: PathBuf,
    cgroup_id: u64,
}

impl Drop for Links {
    fn drop(&mut self) {
        let _ = socklb::detach_id(&self.pin_dir, self.cgroup_id);
    }
}

// ---------------------------------------------------------------- namespaces, servers, clients

/// A plain TCP accept loop on 0.0.0.0:8080 inside a namespace (accepts and closes).
struct Acceptor {
    fd: RawFd,
    handle: Option<JoinHandle<()>>,
}

impl Acceptor {
    fn start(ns: &Netns) -> Acceptor {
        let path = ns.path();
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            netns::enter(&path);
            let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, BE_PORT)).expect("bind :8080");
            // A deep accept queue: a full one drops SYNs, and the client waits 1 s to retry.
            // SAFETY: listen(2) again on a listening socket only resizes its queue.
            unsafe { libc::listen(l.as_raw_fd(), 4096) };
            tx.send(l.as_raw_fd()).unwrap();
            loop {
                match l.accept() {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break, // shut down
                }
            }
        });
        let fd = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("accept loop");
        Acceptor {
            fd,
            handle: Some(handle),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        // SAFETY: shutdown(2) of the listener the thread still owns wakes its accept().
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A namespace configured like a node without a way out: lo up, `eth0` (a veth whose peer is a
/// dead end) holding the default route, the live endpoints' addresses on lo.
fn node(tag: &str, live: &[Ipv4Addr]) -> Netns {
    let ns = Netns::new(&unique(tag));
    for cmd in [
        "ip link add eth0 type veth peer name eth0p",
        "ip link set eth0 up",
        "ip link set eth0p up",
        "ip addr add 192.168.0.1/24 dev eth0",
        "ip route add default via 192.168.0.254 dev eth0 onlink",
    ] {
        ns.run(&cmd.split_whitespace().collect::<Vec<_>>());
    }
    for ip in live {
        ns.run(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    }
    ns
}

/// The client process (this binary re-executed): joins the cgroup, then the namespace, then prints the duration of each connect() in ns, one a line.
fn client(args: &[String]) {
    let [cg, ns, to, count, warmup] = args else {
        panic!("client arguments: {args:?}");
    };
    std::fs::write(
        PathBuf::from(cg).join("cgroup.procs"),
        std::process::id().to_string(),
    )
    .expect("joining the cgroup");
    netns::enter(ns); // this process has one thread
    let to: SocketAddrV4 = to.parse().unwrap();
    let (count, warmup): (usize, usize) = (count.parse().unwrap(), warmup.parse().unwrap());
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let mut out = String::with_capacity(count * 8);
    for k in 0..warmup + count {
        // SAFETY: plain socket calls on a descriptor this loop owns, with valid pointers and sizes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let t = Instant::now();
            let rc = libc::connect(
                fd,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            let dt = t.elapsed();
            if rc != 0 {
                eprintln!("connect {to}: {}", std::io::Error::last_os_error());
                std::process::exit(1);
            }
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            );
            libc::close(fd);
            if k >= warmup {
                let _ = writeln!(out, "{}", dt.as_nanos());
            }
        }
    }
    print!("{out}");
}

/// Median and p99 of one case, in µs.
#[derive(Clone, Copy)]
struct Latency {
    median: f64,
    p99: f64,
    max: f64,
}

/// Runs the client in `ns` (and `cgroup`) against `to`; the connect latencies.
fn measure(ns: &Netns, cgroup: &Cgroup, to: SocketAddrV4, count: usize) -> Latency {
    let cg = cgroup.path.display().to_string();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            CLIENT_FLAG,
            &cg,
            &ns.path(),
            &to.to_string(),
            &count.to_string(),
            &WARMUP.to_string(),
        ])
        .output()
        .expect("spawning the client");
    assert!(
        out.status.success(),
        "client to {to} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(v.len(), count, "one figure per connect");
    v.sort_unstable();
    let us = |i: usize| v[i.min(v.len() - 1)] as f64 / 1000.0;
    Latency {
        median: us(v.len() / 2),
        p99: us(v.len() * 99 / 100),
        max: us(v.len() - 1),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(CLIENT_FLAG) {
        return client(&args[2..]);
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / `cargo test --benches`: nothing to list.
    }
    let started = Instant::now();
    let connects = env_or("OXILIUM_BENCH_CONNECTS", 20_000);
    let restores = env_or("OXILIUM_BENCH_RESTORES", 5).max(1);
    let version = Command::new("iptables")
        .arg("--version")
        .output()
        .expect("iptables (ci/setup installs it)");
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();

    // The services connected to: the middle and the last of KUBE-SERVICES, for each size.
    let probes: Vec<(usize, usize, usize)> = SIZES.iter().map(|&n| (n, n / 2, n - 1)).collect();
    let live: Vec<Ipv4Addr> = probes
        .iter()
        .flat_map(|&(n, mid, last)| {
            let c = Cluster { n, changed: None };
            let mut v = c.endpoints(mid);
            v.extend(c.endpoints(last));
            v
        })
        .collect();

    // The socket LB: as in the agent, the XDP object creates and owns the LB maps, the sock-lb
    // object reuses their pins. Fields drop in reverse order: links, programs, cgroup, pins.
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/{}", unique("kpb"))));
    loader::prepare_pin_dir(&pins.0).expect("pin folder on bpffs (root?)");
    let cg = Cgroup::new("kpb");
    // The clients of the baseline and of iptables join a sibling cgroup without programs: every
    // client process is set up the same way.
    let plain_cg = Cgroup::new("kpn");
    let mut xdp = loader::load_xdp(&pins.0, &[], Default::default()).expect("loading XDP object");
    let maps = KernelMaps::from_ebpf(&mut xdp).expect("LB maps");
    let mut sock = SockLb::load(&pins.0).expect("loading the sock-lb object");
    let mut rec = Reconciler::open(Counted {
        maps,
        ops: Ops::default(),
        backends: HashSet::new(),
        tables_pin: pins.0.join(names::TABLES),
        bulk: RefCell::new(None),
    })
    .expect("reconciler");
    sock.attach(&cg.path, Some(&pins.0))
        .expect("attaching to the cgroup");
    let _links = Links {
        pin_dir: pins.0.clone(),
        cgroup_id: socklb::cgroup_id(&cg.path).unwrap(),
    };
    let ipt = node("kpi", &live);
    let lb = node("kpl", &live);
    let _servers = [Acceptor::start(&ipt), Acceptor::start(&lb)];

    println!("kube-proxy replacement: connect() latency to a ClusterIP and one service change");
    println!(
        "iptables: {version}; {ENDPOINTS} endpoints per service; {connects} connects per case after \
         {WARMUP} warm-up, one client process per case"
    );
    let translated = || sock.maps.counter(abi::sock::reason::CONNECT);
    let mut full_loads = Vec::new();
    for &(n, mid, last) in &probes {
        let c = Cluster { n, changed: None };
        let text = full_nat(c);
        let lines = text.lines().count();
        let load = restore(&ipt, &[], text);
        full_loads.push((n, lines, load));
        let t = Instant::now();
        let desired = compile::compile(&c.model()).unwrap();
        let compiled = t.elapsed();
        // 100 services through the agent's path; 10 000 in bulk (see `Counted`).
        let bulk = n > 1_000;
        if bulk {
            rec.datapath().bulk.replace(Some(Vec::new()));
        }
        let before = rec.datapath().ops;
        let t = Instant::now();
        let ch = rec.apply(&desired).expect("programming the services");
        rec.datapath().flush_bulk();
        let applied = t.elapsed();
        let ops = rec.datapath().ops.since(&before);
        let swaps = if bulk {
            format!(
                "{} selection-table swaps issued from 64 threads",
                ops.inner_maps
            )
        } else {
            format!(
                "{:.0} ms of it in {} selection-table swaps",
                ms(ops.table_time),
                ops.inner_maps
            )
        };
        println!(
            "\n{n} services [{:.0} s]: iptables-restore of {lines} lines {:.0} ms; oxilium compile \
             {:.1} ms + apply {:.0} ms{} ({} services, {} backends written; {swaps})",
            started.elapsed().as_secs_f64(),
            ms(load),
            ms(compiled),
            ms(applied),
            if bulk { " in bulk (bench setup)" } else { "" },
            ch.services_written,
            ch.backends_written,
        );
        let cip = |i| SocketAddrV4::new(cluster_ip(i), SVC_PORT);
        let direct = SocketAddrV4::new(c.endpoints(mid)[0], BE_PORT);
        let base = measure(&lb, &plain_cg, direct, connects);
        println!(
            "  {:<58} {:>9} {:>9} {:>8} {:>8} {:>9}",
            "case", "median µs", "p99 µs", "× med", "× p99", "max µs"
        );
        let row = |name: &str, l: Latency| {
            println!(
                "  {name:<58} {:>9.1} {:>9.1} {:>8.2} {:>8.2} {:>9.0}",
                l.median,
                l.p99,
                l.median / base.median,
                l.p99 / base.p99,
                l.max,
            )
        };
        row("baseline: direct to a backend, no rules, no programs", base);
        let before = translated();
        let cases = [
            (
                format!("iptables, ClusterIP #{mid} (middle of KUBE-SERVICES)"),
                &ipt,
                &plain_cg,
                cip(mid),
            ),
            (
                format!("oxilium socket LB, ClusterIP #{mid}"),
                &lb,
                &cg,
                cip(mid),
            ),
            (
                format!("iptables, ClusterIP #{last} (last of KUBE-SERVICES)"),
                &ipt,
                &plain_cg,
                cip(last),
            ),
            (
                format!("oxilium socket LB, ClusterIP #{last}"),
                &lb,
                &cg,
                cip(last),
            ),
            (
                "iptables, direct to a backend (no service matches)".to_string(),
                &ipt,
                &plain_cg,
                direct,
            ),
            (
                "oxilium socket LB, direct to a backend (no service)".to_string(),
                &lb,
                &cg,
                direct,
            ),
        ];
        for (name, ns, cgroup, to) in cases {
            row(&name, measure(ns, cgroup, to, connects));
        }
        assert_eq!(
            translated() - before,
            2 * (connects + WARMUP) as u64,
            "every socket-LB connect to a ClusterIP was translated (and no other)"
        );
    }

    // 2. One service change with 10 000 services present.
    let n = *SIZES.last().unwrap();
    let mid = n / 2;
    let plain = Cluster { n, changed: None };
    let changed = Cluster {
        n,
        changed: Some(mid),
    };
    // Alternate A → B → A so that every repeat is a real change.
    let step = |k: usize| {
        if k.is_multiple_of(2) {
            (plain, changed)
        } else {
            (changed, plain)
        }
    };
    println!(
        "\none service change with {n} services [{:.0} s] (service #{mid}: one of its {ENDPOINTS} \
         endpoints replaced), median of {restores} for iptables",
        started.elapsed().as_secs_f64()
    );
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut sizes = [0usize; 3];
    for k in 0..restores {
        let (from, to) = step(k);
        let texts = [
            full_nat(to),
            partial_nat(to, from, true),
            partial_nat(from, to, true),
        ];
        // Full: to; then KUBE-SERVICES + chains back to `from` and forward again to `to`, so the
        // table ends at `to` and the next repeat starts from it.
        let [full, back, fwd] = texts;
        sizes[0] = full.lines().count();
        sizes[1] = fwd.lines().count();
        times[0].push(restore(&ipt, &[], full));
        let _ = restore(&ipt, &["--noflush"], back);
        times[1].push(restore(&ipt, &["--noflush"], fwd));
        let _ = restore(&ipt, &["--noflush"], partial_nat(to, from, false));
        let only = partial_nat(from, to, false);
        sizes[2] = only.lines().count();
        times[2].push(restore(&ipt, &["--noflush"], only));
    }
    let ipt_full = median(times[0].clone());
    let row = |name: &str, input: &str, d: Duration| {
        println!(
            "  {name:<66} {input:>12} {:>10.2} ms {:>9.1}×",
            ms(d),
            ms(ipt_full) / ms(d)
        )
    };
    let lines = |n: usize| format!("{n} lines");
    println!(
        "  {:<66} {:>12} {:>13} {:>10}",
        "case", "input", "wall time", "full ÷ this"
    );
    row(
        "iptables-restore, whole nat table regenerated (kube-proxy full sync)",
        &lines(sizes[0]),
        ipt_full,
    );
    row(
        "iptables-restore --noflush, KUBE-SERVICES + changed chains (≥1.28)",
        &lines(sizes[1]),
        median(times[1].clone()),
    );
    row(
        "iptables-restore --noflush, only the changed chains (best case)",
        &lines(sizes[2]),
        median(times[2].clone()),
    );
    // oxilium: the agent compiles the model and applies it; the apply writes the difference.
    let apply_repeats = 21;
    let (mut applies, mut noops, mut compiles, mut one) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut kinds: [Vec<Duration>; 3] = Default::default();
    let mut last: Option<(Changes, (usize, usize, usize))> = None;
    let mut current: BTreeMap<ServiceKey, CompiledService> =
        compile::compile(&plain.model()).unwrap();
    rec.apply(&current).unwrap();
    for k in 0..apply_repeats {
        let (_, to) = step(k);
        let model = to.model();
        let t = Instant::now();
        let desired = compile::compile(&model).unwrap();
        compiles.push(t.elapsed());
        // What an event-driven agent could do instead: recompile only the changed service.
        let t = Instant::now();
        let c = compile::compile_service(&model.services[mid], 0).unwrap();
        current.insert(c.key, c);
        one.push(t.elapsed());
        assert_eq!(current, desired);
        let before = rec.datapath().ops;
        let t = Instant::now();
        let ch = rec.apply(&current).expect("apply");
        applies.push(t.elapsed());
        let ops = rec.datapath().ops.since(&before);
        kinds[0].push(ops.table_time);
        kinds[1].push(ops.backend_time + ops.service_time);
        kinds[2].push(ops.flush_time);
        if let Some(prev) = &last {
            assert_eq!(
                prev,
                &(ch.clone(), ops.counts()),
                "every change costs the same"
            );
        }
        last = Some((ch, ops.counts()));
        // The same apply again: nothing to write, only the walk over the model.
        let t = Instant::now();
        assert!(rec.apply(&current).unwrap().is_empty());
        noops.push(t.elapsed());
    }
    let (ch, (updates, deletes, inner_maps)) = last.unwrap();
    let apply = median(applies);
    row(
        &format!("oxilium Reconciler::apply (median of {apply_repeats})"),
        &format!("{} map writes", updates + deletes),
        apply,
    );
    println!(
        "    map writes: {updates} updates + {deletes} deletes = {} (backends written {}, removed \
         {}; tables written {} = {inner_maps} new inner array; services written {}; flows \
         flushed {})",
        updates + deletes,
        ch.backends_written,
        ch.backends_removed,
        ch.tables_written,
        ch.services_written,
        ch.flows_flushed
    );
    let [table, entries, flush] = kinds.map(median);
    println!(
        "    of the apply: selection-table swap {:.2} ms, backend/service writes {:.3} ms, flow \
         flush {:.2} ms; an apply with nothing to change (the walk over {n} services) {:.2} ms",
        ms(table),
        ms(entries),
        ms(flush),
        ms(median(noops))
    );
    println!(
        "    plus, in userspace: compile of the whole model {:.1} ms (the full path, below), \
         compile of the changed service alone {:.1} µs",
        ms(median(compiles)),
        median(one).as_secs_f64() * 1e6
    );
    println!(
        "  iptables full restore ÷ oxilium apply: {:.0}×; best-case partial restore ÷ apply: {:.0}×",
        ms(ipt_full) / ms(apply),
        ms(median(times[2].clone())) / ms(apply)
    );
    agent_path::agent_paths(&mut rec, n, mid, ipt_full, median(times[2].clone()));
    for (n, lines, d) in full_loads {
        println!(
            "  (initial iptables-restore of {n} services, {lines} lines: {:.0} ms)",
            ms(d)
        );
    }
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
    drop(_servers);
    drop(lb);
    drop(ipt);
}
