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
//!    Then the socket LB and the direct connect paired (kube_proxy/paired.rs): one client process,
//!    sockets made in both cgroups, connects alternating, so that the ratio does not depend on
//!    the machine's load moving between cases.
//! 2. One service change (one of three endpoints of a service replaced) with 10 000 services:
//!    iptables-restore of the regenerated nat table; the `--noflush` partial restores (kube-proxy
//!    ≥ 1.28 rewrites KUBE-SERVICES and the changed chains; the best case is the changed chains
//!    only); oxilium's `Reconciler::apply` of the model with the change, counting map writes;
//!    then the same change through the node agent's full and per-change paths, from a store of
//!    10 000 Services and EndpointSlices (see `agent_path`).
//! 3. The reap of a draining backend on a full conntrack map, before and after lookup batches and
//!    the walk without the state lock (see `reap`; alone: `OXILIUM_BENCH_ONLY=reap`).
#[path = "kube_proxy/agent_path.rs"]
mod agent_path;
#[path = "../tests/support/bpffs.rs"]
#[allow(dead_code)]
mod bpffs;
#[path = "../tests/support/cgroup.rs"]
#[allow(dead_code)]
mod cgroup;
#[path = "kube_proxy/change.rs"]
mod change;
#[path = "kube_proxy/connect.rs"]
mod connect;
#[path = "kube_proxy/counted.rs"]
mod counted;
#[path = "kube_proxy/iptables.rs"]
mod iptables;
#[path = "../tests/support/netns.rs"]
#[allow(dead_code)]
mod netns;
#[path = "kube_proxy/paired.rs"]
mod paired;
#[path = "kube_proxy/reap.rs"]
mod reap;
use connect::*;
use counted::*;
use iptables::*;
use paired::*;

use abi::lb::{Backend as AbiBackend, ServiceKey, ServiceValue, names};
use anyhow::Result;
use aya::maps::{Array, ArrayOfMaps, Map, MapData};
use bpffs::{CgroupLinks, PinDir};
use cgroup::Cgroup;
use lb::{
    compile::{self, CompiledService},
    model::{
        Algorithm, Backend, BackendState, Frontend, Mode, Model, Protocol, Scope::Internal, Service,
    },
    reconcile::{Changes, Datapath, Reconciler},
};
use netns::{Netns, unique};
use oxilium::bpf::{lb_maps::KernelMaps, loader, socklb::SockLb};
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
    if args.get(1).map(String::as_str) == Some(PAIRED_FLAG) {
        return paired_client(&args[2..]);
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / `cargo test --benches`: nothing to list.
    }
    if std::env::var("OXILIUM_BENCH_ONLY").as_deref() == Ok("reap") {
        return reap::reap_bench();
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
    let pins = PinDir::new(&unique("kpb"));
    let cg = Cgroup::new("kpb");
    // The clients of the baseline and of iptables join a sibling cgroup without programs: every
    // client process is set up the same way.
    let plain_cg = Cgroup::new("kpn");
    let mut xdp =
        loader::load_xdp(pins.path(), &[], Default::default()).expect("loading XDP object");
    let maps = KernelMaps::from_ebpf(&mut xdp).expect("LB maps");
    let mut sock = SockLb::load(pins.path()).expect("loading the sock-lb object");
    let mut rec = Reconciler::open(Counted {
        maps,
        ops: Ops::default(),
        backends: HashSet::new(),
        tables_pin: pins.path().join(names::TABLES),
        bulk: RefCell::new(None),
    })
    .expect("reconciler");
    sock.attach(&cg.path, Some(pins.path()))
        .expect("attaching to the cgroup");
    let _links = CgroupLinks::new(pins.path(), &cg.path);
    let ipt = node("kpi", &live);
    let lb = node("kpl", &live);
    let _servers = [Acceptor::start(&ipt), Acceptor::start(&lb)];

    println!("kube-proxy replacement: connect() latency to a ClusterIP and one service change");
    println!(
        "iptables: {version}; {ENDPOINTS} endpoints per service; {connects} connects per case after \
         {WARMUP} warm-up, one client process per case"
    );
    let translated = || sock.maps.counter(abi::sock::reason::CONNECT);
    let run = Run {
        started,
        probes: &probes,
        ipt: &ipt,
        lb: &lb,
        cg: &cg,
        plain_cg: &plain_cg,
        connects,
    };
    let full_loads = connect_latencies(&run, &mut rec, &translated);
    change::service_change(&run, &mut rec, restores);
    for (n, lines, d) in full_loads {
        println!(
            "  (initial iptables-restore of {n} services, {lines} lines: {:.0} ms)",
            ms(d)
        );
    }
    reap::reap_bench();
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
    drop(_servers);
    drop(lb);
    drop(ipt);
}
