//! tc programs' ns/packet through BPF_PROG_TEST_RUN, single shot, with baselines measured in the
//! same run: `cargo bench -p oxilium --bench tc` (root; `OXILIUM_BENCH_FLOWS` overrides the
//! 20 000 distinct flows per case).
//!
//! The harness of the XDP bench's single-shot figures (benches/common/single.rs): one run per
//! packet (repeat 1, the kernel's fresh copy of the packet), the median over many distinct flows,
//! each run paired with a run of the pass-through program (`r0 = TCX_NEXT; exit`) and of a
//! FIB-lookup-only program on the same packet right before it.
//!
//! - NodePort (benches/tc/nodeport.rs): `oxilium_nodeport_ingress` on the external device,
//!   client → NodeIP:NodePort translated to a backend on another node in SNAT mode and in DSR
//!   mode (IP-in-IP), to a pod of this node, and (SNAT) to a backend whose next hop has no
//!   neighbour entry yet (bpf_redirect_neigh); new and established flows; the remote backend's
//!   reply restored at ingress, and (`oxilium_nodeport_egress`) the local pod's reply.
//! - Pods (benches/tc/pod.rs): `oxilium_endpoint_from_pod` on the client pod's veth, to a
//!   ClusterIP whose backend is a pod of this node (translation, both pods' policies, local
//!   delivery with bpf_redirect_peer) or on another node (handed to the stack), and
//!   `oxilium_endpoint_to_pod` on the server pod's veth (another node's pod → this pod, its
//!   ingress policy), with policy enforcement on for both pods.
//!
//! Everything runs in a namespace where the FIB answers (veth, static neighbours, forwarding
//! on), so the translated cases pay a successful bpf_fib_lookup and redirect, as in production.
//! Events are switched off, as in the XDP bench.
#[path = "../tests/support/bpffs.rs"]
#[allow(dead_code)]
mod bpffs;
mod common;
#[path = "tc/nodeport.rs"]
mod nodeport;
#[path = "../tests/support/packet.rs"]
#[allow(dead_code)]
mod packet;
#[path = "tc/pod.rs"]
mod pod;

use abi::lb::LbConfig;
use bpffs::PinDir;
use common::{
    Netns, PROG_TYPE_SCHED_CLS, load_fib_only, load_return,
    single::{self, Baselines},
};
use lb::{
    compile,
    model::{Algorithm, Backend, BackendState, Frontend, Mode, Model, Protocol, Scope, Service},
    reconcile::Reconciler,
};
use oxilium::bpf::{lb_maps::KernelMaps, nodeport::NodePort};
use packet::{ether, ip, tcp};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The node's address on its external device `va`.
const NODE: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 100);
/// A backend on another node (a static neighbour on `va`).
const REMOTE: &str = "10.10.0.1:8080";
/// The client pod and the server pod of this node (veths `pc` and `pw`).
const CLIENT_POD: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const SERVER_POD: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);
const POD_PORT: u16 = 8080;

/// TCX_NEXT: what the programs return for a packet they let through.
const TCX_NEXT: i32 = -1;
/// TC_ACT_REDIRECT: bpf_redirect / bpf_redirect_peer / bpf_redirect_neigh.
const TC_ACT_REDIRECT: u32 = 7;

const NETNS_SETUP: [&str; 18] = [
    "ip link set lo up",
    "ip link add va type veth peer name vb",
    "ip link set va up",
    "ip link set vb up",
    "ip addr add 10.10.1.100/24 dev va",
    "ip route add 10.10.0.0/24 dev va",
    "ip neigh add 10.10.0.1 lladdr 02:00:00:00:00:01 dev va nud permanent",
    // Clients outside and other nodes' pods, behind a router on `va`.
    "ip neigh add 10.10.1.254 lladdr 02:00:00:00:00:fe dev va nud permanent",
    "ip route add 172.16.0.0/12 via 10.10.1.254 dev va",
    "ip route add 10.252.0.0/16 via 10.10.1.254 dev va",
    // The pods' veths (host sides).
    "ip link add pc type veth peer name pc1",
    "ip link add pw type veth peer name pw1",
    "ip link set pc up",
    "ip link set pw up",
    "ip route add 10.251.0.1/32 dev pc",
    "ip route add 10.251.0.2/32 dev pw",
    "sysctl -qw net.ipv4.ip_forward=1",
    "sysctl -qw net.ipv4.conf.all.forwarding=1",
];

fn ifindex(dev: &str) -> u32 {
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(i != 0, "no device {dev}");
    i
}

/// A struct __sk_buff prefix for BPF_PROG_TEST_RUN: the packet arrived on `dev` (ingress_ifindex
/// and ifindex; the kernel gives the skb that device).
fn skb_ctx(dev: &str) -> Vec<u8> {
    let i = ifindex(dev);
    let mut ctx = vec![0u8; 44];
    ctx[36..40].copy_from_slice(&i.to_ne_bytes());
    ctx[40..44].copy_from_slice(&i.to_ne_bytes());
    ctx
}

/// An Ethernet + IPv4 + TCP frame with 64 bytes of payload.
fn frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    ether(
        &ip(
            IpAddr::V4(src),
            IpAddr::V4(dst),
            tcp(sport, dport, &[], &[0x61; 64]),
        ),
        None,
    )
}

/// The i-th of many distinct sources of a network `a.b.0.0/16`... (`round` moves to another
/// /16 so that a case's flows are new): address and port.
fn client(i: u32, net: [u8; 2], round: u8) -> (Ipv4Addr, u16) {
    let addr = Ipv4Addr::new(net[0], net[1] + round, (i >> 8) as u8, i as u8);
    (addr, 1024 + (i >> 16) as u16)
}

fn service(name: &str, frontend: SocketAddr, scope: Scope, mode: Mode, backend: &str) -> Service {
    Service {
        name: name.into(),
        frontend: Frontend {
            addr: frontend.ip(),
            port: frontend.port(),
            protocol: Protocol::Tcp,
        },
        algorithm: Algorithm::Maglev,
        mode,
        table_size: 251,
        conntrack_timeout_s: 300,
        scope,
        affinity_timeout_s: None,
        source_ranges: Vec::new(),
        backends: vec![Backend {
            addr: backend.parse().unwrap(),
            weight: 1,
            state: BackendState::Active,
        }],
    }
}

/// The tc object loaded as the node agent loads it (NodePort::load, no device), the services of
/// both parts programmed through model → compile → Reconciler, events off.
fn setup(pins: &PinDir) -> (NodePort, Reconciler<KernelMaps>) {
    let mut np = NodePort::load(pins.path(), &[], false).expect("loading the tc object (root?)");
    let mut maps = np.lb_maps().expect("LB maps");
    maps.set_config(&LbConfig {
        snat_v4: compile::addr_bytes(IpAddr::V4(NODE)),
        snat_v6: [0; 16],
        snat_port_min: 1024,
        snat_port_max: 65535,
        ready: 1,
        timeouts: Default::default(),
    })
    .unwrap();
    let mut rec = Reconciler::open(maps).expect("reconciler");
    let mut services = nodeport::services();
    services.extend(pod::services());
    let model = Model {
        maglev_seed: 0,
        services,
    };
    rec.apply(&compile::compile(&model).unwrap()).unwrap();
    common::events_off(pins.path());
    (np, rec)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / `cargo test --benches`: nothing to list.
    }
    let n: u32 = std::env::var("OXILIUM_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let _ns = Netns::enter("oxilium-tc-bench", &NETNS_SETUP);
    let pins = PinDir::new(&format!("oxilium-tc-bench-{}", std::process::id()));
    let (mut np, rec) = setup(&pins);
    let pass = load_return(PROG_TYPE_SCHED_CLS, b"tc_pass", TCX_NEXT);
    // struct __sk_buff: ingress_ifindex at offset 36.
    let fib = load_fib_only(
        PROG_TYPE_SCHED_CLS,
        36,
        NODE.octets(),
        [10, 10, 0, 1],
        TCX_NEXT,
    );
    let base = Baselines {
        pass,
        fib,
        fib_found: TCX_NEXT as u32,
    };
    println!(
        "tc programs via BPF_PROG_TEST_RUN, single shot (repeat 1), median of {n} distinct flows; \
         each run paired with one of the pass-through program (r0 = TCX_NEXT; exit) and one of a \
         program doing one bpf_fib_lookup (\"FIB only\": ns above the pass-through)\n"
    );
    single::header("pass");
    nodeport::bench(&mut np, &rec, &base, n);
    pod::bench(&pins, &base, n);
    // SAFETY: our own descriptors.
    unsafe {
        libc::close(pass);
        libc::close(fib);
    }
}
