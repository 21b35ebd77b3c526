//! XDP ns/packet through BPF_PROG_TEST_RUN, with baselines measured in the same run:
//!   `cargo bench -p oxilium --bench xdp` (root; env OXILIUM_BENCH_REPEAT overrides the repeat).
//!
//! With repeat > 1 the kernel re-runs the program on the frame the previous run rewrote, so the
//! repeated cases are built as fixed points of the program (see docs/datapath-tests.md):
//! - established: two SNAT services whose backend is each other's VIP, a one-port SNAT range and
//!   a client that is the LB's own SNAT address, so L:P → V1 becomes L:P → V2, which becomes
//!   L:P → V1 again, both established flows after the first two runs;
//! - new flow: the same with a conntrack timeout of 0, so every run takes the new-flow path
//!   (table, backend, SNAT port claim, conntrack insert) on an existing but stale entry;
//! - distinct new flows: repeat = 1 on many different packets, against the raw baseline also at
//!   repeat = 1 (each sample then carries the kernel's timer overhead, so only the ratio means much).
//!
//! Then the cost of datapath events (benches/xdp/events.rs) and the agent's drain rate.
//!
//! Everything runs in a namespace where the FIB answers (veth, static neighbours, forwarding on),
//! so the translated cases pay a successful bpf_fib_lookup and return XDP_TX, as in production.
#[path = "../tests/support/bpffs.rs"]
#[allow(dead_code)]
mod bpffs;
mod common;
#[path = "../tests/support/packet.rs"]
#[allow(dead_code)]
mod packet;

use abi::lb::{LbConfig, reason};
use aya::{Ebpf, TestRun, TestRunOptions, programs::Xdp, programs::XdpMode};
use bpffs::PinDir;
use common::{
    Netns, PROG_TYPE_XDP, bpf, load_fib_only, load_return, median3, run_raw, sh, single::Baselines,
};
use lb::{
    compile,
    model::{Algorithm, Backend, BackendState, Frontend, Mode, Model, Protocol, Service},
    reconcile::Reconciler,
};
use oxilium::bpf::{lb_maps::KernelMaps, loader};
use packet::{ether, ip, tcp};
use std::net::IpAddr;

#[path = "xdp/events.rs"]
mod events;
#[path = "xdp/katran.rs"]
mod katran;
#[path = "xdp/live.rs"]
mod live;
#[path = "xdp/other.rs"]
mod other;
#[path = "xdp/single.rs"]
mod single;

const LB4: &str = "10.10.1.100";
const PORT: u16 = 40_000;

/// The bench namespace: veth, static neighbours, forwarding on.
const NETNS_SETUP: [&str; 13] = [
    "ip link set lo up",
    "ip link add va type veth peer name vb",
    "ip link set va up",
    "ip link set vb up",
    "ip addr add 10.10.1.100/24 dev va",
    "ip route add 10.10.0.0/24 dev va",
    "ip neigh add 10.10.0.1 lladdr 02:00:00:00:00:01 dev va nud permanent",
    "ip neigh add 10.10.0.2 lladdr 02:00:00:00:00:02 dev va nud permanent",
    "ip neigh add 10.10.0.3 lladdr 02:00:00:00:00:03 dev va nud permanent",
    "ip -6 addr add fd00::100/64 dev va nodad",
    "ip -6 neigh add fd00::1 lladdr 02:00:00:00:00:11 dev va nud permanent",
    "sysctl -qw net.ipv4.ip_forward=1",
    "sysctl -qw net.ipv6.conf.all.forwarding=1",
];

fn service(name: &str, vip: &str, backend: &str, ct_timeout_s: u32) -> Service {
    let fe: std::net::SocketAddr = vip.parse().unwrap();
    Service {
        name: name.into(),
        frontend: Frontend {
            addr: fe.ip(),
            port: fe.port(),
            protocol: Protocol::Tcp,
        },
        algorithm: Algorithm::Maglev,
        mode: Mode::Snat,
        table_size: 251,
        conntrack_timeout_s: ct_timeout_s,
        scope: lb::model::Scope::External,
        affinity_timeout_s: None,
        source_ranges: Vec::new(),
        backends: vec![Backend {
            addr: backend.parse().unwrap(),
            weight: 1,
            state: BackendState::Active,
        }],
    }
}

/// V1 → V2 and V2 → V1, plus DSR and IPv6 services for the single-shot samples.
fn model(ct_timeout_s: u32) -> Model {
    let mut dsr = service("dsr", "10.10.0.3:80", "10.10.0.1:80", 300);
    dsr.mode = Mode::Dsr;
    let mut dsr6 = service("dsr6", single::DSR6, single::BACKEND6, 300);
    dsr6.mode = Mode::Dsr;
    Model {
        maglev_seed: 0,
        services: vec![
            service("v1", "10.10.0.1:80", "10.10.0.2:80", ct_timeout_s),
            service("v2", "10.10.0.2:80", "10.10.0.1:80", ct_timeout_s),
            dsr,
            service("snat6", single::SNAT6, single::BACKEND6, 300),
            dsr6,
        ],
    }
}

/// struct xdp_md with data_end and ingress_ifindex set.
fn xdp_md(len: usize, ifindex: u32) -> Vec<u8> {
    [0, len as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|w: &u32| w.to_ne_bytes())
        .collect()
}

/// The real baseline: `r0 = XDP_PASS; exit`.
fn load_trivial_xdp() -> i32 {
    load_return(PROG_TYPE_XDP, b"xdp_pass", 2)
}

/// `r0 = XDP_TX; exit`.
fn load_tx_xdp() -> i32 {
    load_return(PROG_TYPE_XDP, b"xdp_tx", 3)
}

/// The second baseline: one `bpf_fib_lookup` (IPv4, LB4 → 10.10.0.1, the packet's ingress
/// interface: `xdp_md.ingress_ifindex`), then `XDP_PASS` when it found the next hop.
fn load_fib_only_xdp() -> i32 {
    let lb: std::net::Ipv4Addr = LB4.parse().unwrap();
    load_fib_only(PROG_TYPE_XDP, 12, lb.octets(), [10, 10, 0, 1], 2)
}

fn run(prog: &Xdp, pkt: &[u8], md: &[u8], repeat: u32) -> (u32, u32, Vec<u8>) {
    let mut out = vec![0u8; pkt.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            ctx_in: Some(md),
            repeat,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, r.duration.as_nanos() as u32, out)
}

fn frame(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    ether(&ip(s, d, tcp(sport, dport, &[], &[0x61; 64])), None)
}

/// `f` (Ethernet, IPv4 without options, TCP) with its TCP flags set to `flags`, the checksum
/// updated (RFC 1624).
fn with_tcp_flags(f: &[u8], flags: u8) -> Vec<u8> {
    let mut f = f.to_vec();
    let word = |f: &[u8]| u32::from(u16::from_be_bytes([f[46], f[47]]));
    let old = word(&f);
    f[47] = flags;
    let sum = u32::from(!u16::from_be_bytes([f[50], f[51]])) + (!old & 0xffff) + word(&f);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    f[50..52].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f
}

/// A loaded program with its own pinned maps, holding `model(300)`.
fn setup(port_min: u16, port_max: u16) -> (Ebpf, Reconciler<KernelMaps>, PinDir) {
    let n = port_min; // distinct per call here
    setup_in(&format!("{n}"), port_min, port_max)
}

/// [`setup`] in the pin folder named by `tag`.
fn setup_in(tag: &str, port_min: u16, port_max: u16) -> (Ebpf, Reconciler<KernelMaps>, PinDir) {
    let pins = PinDir::new(&format!("oxilium-bench-{}-{tag}", std::process::id()));
    let mut ebpf = loader::load_xdp(pins.path(), &[], XdpMode::default()).expect("load (root?)");
    let mut maps = KernelMaps::from_ebpf(&mut ebpf).unwrap();
    maps.set_config(&LbConfig {
        snat_v4: compile::addr_bytes(LB4.parse().unwrap()),
        snat_v6: compile::addr_bytes("fd00::100".parse().unwrap()),
        snat_port_min: port_min,
        snat_port_max: port_max,
        ready: 1,
        timeouts: Default::default(),
    })
    .unwrap();
    let mut rec = Reconciler::open(maps).unwrap();
    rec.apply(&compile::compile(&model(300)).unwrap()).unwrap();
    (ebpf, rec, pins)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / `cargo test --benches`: nothing to list.
    }
    let repeat: u32 = std::env::var("OXILIUM_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let _ns = Netns::enter("oxilium-bench", &NETNS_SETUP);
    let ifindex = unsafe { libc::if_nametoindex(c"va".as_ptr()) };
    // The fixed points need a one-port SNAT range; distinct flows need a wide one: two loads.
    let (ebpf, rec, _pins) = setup(PORT, PORT);
    let prog: &Xdp = ebpf.program("oxilium_lb").unwrap().try_into().unwrap();
    let est = frame(LB4, PORT, "10.10.0.1", 80);
    let md = xdp_md(est.len(), ifindex);
    let raw = load_trivial_xdp();
    let mut arp = est.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());

    // Check the fixed point with single runs: V1 → V2 → V1, XDP_TX (the FIB answers).
    let (a1, _, o1) = run(prog, &est, &md, 1);
    let (a2, _, o2) = run(prog, &o1, &md, 1);
    assert_eq!((a1, a2), (3, 3), "XDP_TX expected");
    assert_eq!(&o2[14..], &est[14..], "V1 → V2 → V1 is a fixed point");
    let stats = |rec: &Reconciler<KernelMaps>| rec.datapath().reason_counter(reason::FWD_SNAT);
    let before = stats(&rec).packets;

    println!("XDP via BPF_PROG_TEST_RUN, repeat {repeat}, median of 3, FIB answering (XDP_TX)");
    let base = median3(|| run_raw(raw, &est, &md, repeat).1);
    let row = |name: &str, ns: f64| println!("{name:<44} {ns:>7.1} ns/packet  {:>5.2}x", ns / base);
    row("baseline: r0 = XDP_PASS; exit (raw)", base);
    row(
        "oxilium, non-IP frame (earliest exit)",
        median3(|| run(prog, &arp, &md, repeat).1),
    );
    row(
        "oxilium, established SNAT flow",
        median3(|| run(prog, &est, &md, repeat).1),
    );
    let done = stats(&rec).packets - before;
    let ct = rec.datapath().conntrack();
    assert_eq!(done, 3 * u64::from(repeat), "every run translated");
    assert!(
        ct.iter().all(|(_, e)| e.packets > u64::from(repeat)),
        "established"
    );

    // The same with forwarding off: bpf_fib_lookup gives up early, the packet is XDP_PASS'ed
    // (once the cached next hop is older than its time to live).
    let ns_name = _ns.0.clone();
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns_name,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=0",
    ]);
    let ttl = std::time::Duration::from_nanos(2 * abi::lb::NEXTHOP_TTL_NS);
    std::thread::sleep(ttl);
    assert_eq!(run(prog, &est, &md, 1).0, 2, "XDP_PASS without forwarding");
    row(
        "oxilium, established SNAT flow, FIB off",
        median3(|| run(prog, &est, &md, repeat).1),
    );
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns_name,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    let before = stats(&rec).packets;
    live::bench(&ns_name, prog, &est, &md, repeat);
    let done = stats(&rec).packets - before;
    assert_eq!(done, 3 * u64::from(repeat), "every live frame translated");
    if std::env::var("OXILIUM_BENCH_EVENTS").as_deref() != Ok("0") {
        events::bench(repeat, &md, &est, raw);
    }
    // New flows at repeat > 1: a client SYN on a flow closed by a RST starts a new flow (new
    // selection, SNAT port taken over from the closed flow, conntrack entry written), and the
    // SYN|RST packet closes it again: every run of the fixed point is a new flow.
    let syn_rst = with_tcp_flags(&est, 0x06);
    let before = rec.datapath().conntrack();
    row(
        "oxilium, new SNAT flow (SYN on a closed flow)",
        median3(|| run(prog, &syn_rst, &md, repeat).1),
    );
    let ct = rec.datapath().conntrack();
    let runs = |ct: &[(abi::lb::FlowKey, abi::lb::CtEntry)]| {
        ct.iter().map(|(_, e)| e.packets).sum::<u64>()
    };
    assert_eq!(ct.len(), 2, "the two flows of the fixed point");
    assert!(
        ct.iter().all(|(_, e)| e.packets == 1),
        "every run was a new flow"
    );
    assert!(runs(&before) > runs(&ct), "the entries were rewritten");

    let fib = load_fib_only_xdp();
    single::bench(
        ifindex,
        &Baselines {
            pass: raw,
            fib,
            fib_found: 2,
        },
    );
    // SAFETY: our own descriptors.
    unsafe {
        libc::close(raw);
        libc::close(fib);
    }
}
