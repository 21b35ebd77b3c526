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
#[path = "../tests/support/packet.rs"]
#[allow(dead_code)]
mod packet;

use abi::lb::{LbConfig, reason};
use aya::{Ebpf, TestRun, TestRunOptions, programs::Xdp, programs::XdpMode};
use bpffs::PinDir;
use lb::{
    compile,
    model::{Algorithm, Backend, BackendState, Frontend, Mode, Model, Protocol, Service},
    reconcile::Reconciler,
};
use oxilium::bpf::{lb_maps::KernelMaps, loader};
use packet::{ether, ip, tcp};
use std::{fs::File, net::IpAddr, os::fd::AsRawFd, process::Command};

#[path = "xdp/events.rs"]
mod events;
#[path = "xdp/live.rs"]
mod live;
#[path = "xdp/other.rs"]
mod other;
#[path = "xdp/single.rs"]
mod single;

const LB4: &str = "10.10.1.100";
const PORT: u16 = 40_000;

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(st.success(), "{args:?}");
}

/// The namespace the benchmark thread runs in; deleted on drop.
struct Netns(String);

impl Netns {
    fn enter() -> Netns {
        let name = format!("oxilium-bench-{}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name.clone());
        for cmd in [
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
        ] {
            let mut a = vec!["ip", "netns", "exec", &name];
            a.extend(cmd.split_whitespace());
            sh(&a);
        }
        let f = File::open(format!("/run/netns/{name}")).unwrap();
        // SAFETY: setns of the calling thread only.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

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

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    rest: [u64; 8],
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    rest: [u64; 8],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> i64 {
    // SAFETY: `attr` is a zero-padded bpf_attr prefix of the right layout for `cmd`.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) }
}

/// One BPF instruction: opcode, registers (dst in the low nibble, src in the high), offset, imm.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let o = off.to_le_bytes();
    let i = imm.to_le_bytes();
    u64::from_le_bytes([code, dst | (src << 4), o[0], o[1], i[0], i[1], i[2], i[3]])
}

/// Loads a raw XDP program with BPF_PROG_LOAD.
fn load_raw_xdp(name: &[u8], insns: &[u64]) -> i32 {
    let mut a = ProgLoadAttr {
        prog_type: 6, // BPF_PROG_TYPE_XDP
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        ..Default::default()
    };
    a.prog_name[..name.len()].copy_from_slice(name);
    let fd = bpf(5, &mut a); // BPF_PROG_LOAD
    assert!(
        fd >= 0,
        "BPF_PROG_LOAD: {}",
        std::io::Error::last_os_error()
    );
    fd as i32
}

const EXIT: u64 = 0x95; // BPF_JMP | BPF_EXIT

/// The real baseline: `r0 = XDP_PASS; exit`.
fn load_trivial_xdp() -> i32 {
    // BPF_ALU64 | BPF_MOV | BPF_K (0xb7), r0 = 2 (XDP_PASS).
    load_raw_xdp(b"xdp_pass", &[insn(0xb7, 0, 0, 0, 2), EXIT])
}

/// The second baseline: one `bpf_fib_lookup` (IPv4, LB4 → 10.10.0.1, the packet's ingress
/// interface, the answer a next hop in the bench namespace), then `XDP_PASS` when it found the
/// next hop (else XDP_ABORTED): what a FIB lookup per packet costs by itself.
fn load_fib_only_xdp() -> i32 {
    let ip = |a: [u8; 4]| i32::from_le_bytes(a);
    let lb: std::net::Ipv4Addr = LB4.parse().unwrap();
    let mut p = Vec::new();
    p.push(insn(0xbf, 6, 1, 0, 0)); // r6 = r1 (ctx)
    for off in (-64..0).step_by(8) {
        p.push(insn(0x7a, 10, 0, off, 0)); // *(u64 *)(r10 + off) = 0: struct bpf_fib_lookup
    }
    p.push(insn(0x72, 10, 0, -64, 2)); // family = AF_INET
    p.push(insn(0x61, 2, 6, 12, 0)); // r2 = ctx->ingress_ifindex
    p.push(insn(0x63, 10, 2, -64 + 8, 0)); // ifindex = r2
    p.push(insn(0x62, 10, 0, -64 + 16, ip(lb.octets()))); // ipv4_src
    p.push(insn(0x62, 10, 0, -64 + 32, ip([10, 10, 0, 1]))); // ipv4_dst
    p.push(insn(0xbf, 1, 6, 0, 0)); // r1 = ctx
    p.push(insn(0xbf, 2, 10, 0, 0)); // r2 = r10
    p.push(insn(0x07, 2, 0, 0, -64)); // r2 += -64
    p.push(insn(0xb7, 3, 0, 0, 64)); // r3 = sizeof(struct bpf_fib_lookup)
    p.push(insn(0xb7, 4, 0, 0, 0)); // r4 = flags
    p.push(insn(0x85, 0, 0, 0, 69)); // call bpf_fib_lookup
    p.push(insn(0x55, 0, 0, 2, 0)); // if r0 != BPF_FIB_LKUP_RET_SUCCESS goto +2
    p.push(insn(0xb7, 0, 0, 0, 2)); // r0 = XDP_PASS
    p.push(EXIT);
    p.push(insn(0xb7, 0, 0, 0, 0)); // r0 = XDP_ABORTED
    p.push(EXIT);
    load_raw_xdp(b"xdp_fib_only", &p)
}

/// (return value, ns per run) of the raw program.
fn run_raw(fd: i32, pkt: &[u8], md: &[u8], repeat: u32) -> (u32, u32) {
    let mut a = TestRunAttr {
        prog_fd: fd as u32,
        data_size_in: pkt.len() as u32,
        data_in: pkt.as_ptr() as u64,
        repeat,
        ctx_size_in: md.len() as u32,
        ctx_in: md.as_ptr() as u64,
        ..Default::default()
    };
    assert_eq!(bpf(10, &mut a), 0, "{}", std::io::Error::last_os_error()); // BPF_PROG_TEST_RUN
    (a.retval, a.duration)
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

/// Median of three measurements.
fn median3(mut f: impl FnMut() -> u32) -> f64 {
    let mut v = [f(), f(), f()];
    v.sort_unstable();
    f64::from(v[1])
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
    let _ns = Netns::enter();
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
    single::bench(ifindex, &single::Baselines { pass: raw, fib });
    // SAFETY: our own descriptors.
    unsafe {
        libc::close(raw);
        libc::close(fib);
    }
}
