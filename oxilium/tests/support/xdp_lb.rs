//! The harness of the BPF_PROG_TEST_RUN packet tests: the XDP program loaded in its own network
//! namespace with its own pinned maps, set up through model → compile → reconciler, plus the
//! services and frames the cases share.
#![allow(dead_code)]

use super::bpffs::PinDir;
pub use super::packet::*;
pub use abi::lb::{CtEntry, FlowKey, LbConfig, reason};
pub use aya::{Ebpf, TestRun, TestRunOptions, programs::Xdp, programs::XdpMode};
pub use lb::{
    compile,
    model::{Algorithm, Backend, BackendState, Frontend, Mode, Model, Protocol, Service},
    reconcile::Reconciler,
};
pub use oxilium::bpf::{lb_maps::KernelMaps, loader};
pub use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const LB4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const LB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
pub const PORT_MIN: u16 = 40_000;
pub const PORT_MAX: u16 = 40_999;
pub const SEED: u32 = 7;
pub const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n";

pub static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("oxilium-{tag}-{}-{n}", std::process::id())
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {err}");
}

/// The calling thread's network namespace for the test's lifetime: a fresh anonymous one
/// (unshare), or a named one made with `ip netns add` and entered with setns. Drop returns the
/// thread to where it was and deletes the named namespace.
pub struct ThreadNetns {
    home: File,
    named: Option<String>,
}

impl ThreadNetns {
    pub fn fresh() -> Self {
        let home = File::open("/proc/thread-self/ns/net").expect("own netns");
        // SAFETY: unshare of the network namespace affects only the calling thread.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        ThreadNetns { home, named: None }
    }

    /// `ip netns add` + the `setup` commands (each run with `ip netns exec NAME`), then setns.
    pub fn named(setup: &[&str]) -> Self {
        let home = File::open("/proc/thread-self/ns/net").expect("own netns");
        let name = unique("ns");
        sh(&["ip", "netns", "add", &name]);
        let ns = ThreadNetns {
            home,
            named: Some(name.clone()),
        };
        for cmd in setup {
            let mut args = vec!["ip", "netns", "exec", &name];
            args.extend(cmd.split_whitespace());
            sh(&args);
        }
        let f = File::open(format!("/run/netns/{name}")).expect("netns file");
        // SAFETY: setns on a namespace fd affects only the calling thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        ns
    }
}

impl Drop for ThreadNetns {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        if let Some(name) = &self.named {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

pub struct Out {
    pub action: u32,
    pub data: Vec<u8>,
}

/// The loaded program with its own maps; fields drop in order (program, maps, pins, netns).
pub struct Lb {
    pub ebpf: Ebpf,
    pub rec: Reconciler<KernelMaps>,
    pub model: Model,
    _pins: PinDir,
    _ns: ThreadNetns,
}

impl Lb {
    pub fn new(model: Model) -> Lb {
        Lb::in_netns(model, ThreadNetns::fresh())
    }

    pub fn in_netns(model: Model, ns: ThreadNetns) -> Lb {
        let pins = PinDir::new(&unique("test"));
        let mut ebpf =
            loader::load_xdp(pins.path(), &[], XdpMode::default()).expect("loading oxilium_lb");
        let mut maps = KernelMaps::from_ebpf(&mut ebpf).expect("maps");
        maps.set_config(&LbConfig {
            snat_v4: compile::addr_bytes(LB4.into()),
            snat_v6: compile::addr_bytes(LB6.into()),
            snat_port_min: PORT_MIN,
            snat_port_max: PORT_MAX,
            ready: 1,
            timeouts: Default::default(),
        })
        .expect("config");
        let mut rec = Reconciler::open(maps).expect("reconciler");
        rec.apply(&compile::compile(&model).expect("compile"))
            .expect("apply");
        Lb {
            ebpf,
            rec,
            model,
            _pins: pins,
            _ns: ns,
        }
    }

    pub fn apply(&mut self, model: Model) {
        self.rec
            .apply(&compile::compile(&model).expect("compile"))
            .expect("apply");
        self.model = model;
    }

    pub fn run(&self, pkt: &[u8]) -> Out {
        self.run_on(pkt, None)
    }

    /// One run (repeat = 1); `ingress` sets xdp_md.ingress_ifindex (else the kernel uses lo).
    pub fn run_on(&self, pkt: &[u8], ingress: Option<u32>) -> Out {
        let prog: &Xdp = self.ebpf.program("oxilium_lb").unwrap().try_into().unwrap();
        let mut buf = vec![0u8; pkt.len() + 256];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let md: Vec<u8> = [0, pkt.len() as u32, 0, ingress.unwrap_or(0), 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut buf),
                ctx_in: ingress.map(|_| md.as_slice()),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        buf.truncate(r.data_size_out as usize);
        Out {
            action: r.return_value,
            data: buf,
        }
    }

    pub fn maps(&self) -> &KernelMaps {
        self.rec.datapath()
    }

    pub fn count(&self, r: u32) -> u64 {
        self.maps().reason_counter(r).packets
    }

    pub fn ct(&self, key: &FlowKey) -> Option<CtEntry> {
        self.maps()
            .conntrack()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn service(name: &str, vip: &str, proto: Protocol, alg: Algorithm, mode: Mode) -> Service {
    let fe = sa(vip);
    Service {
        name: name.into(),
        frontend: Frontend {
            addr: fe.ip(),
            port: fe.port(),
            protocol: proto,
        },
        algorithm: alg,
        mode,
        table_size: 251,
        conntrack_timeout_s: 300,
        scope: lb::model::Scope::External,
        affinity_timeout_s: None,
        source_ranges: Vec::new(),
        backends: Vec::new(),
    }
}

pub fn with(mut s: Service, size: u32, backends: &[&str]) -> Service {
    s.table_size = size;
    s.backends = backends
        .iter()
        .map(|b| Backend {
            addr: sa(b),
            weight: 1,
            state: BackendState::Active,
        })
        .collect();
    s
}

pub use Algorithm::{Maglev, Random};
pub use Mode::{Dsr, Snat};
pub use Protocol::{Tcp, Udp};

pub const WEB4: [&str; 3] = ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"];
pub const DSR4: [&str; 5] = [
    "10.0.2.1:80",
    "10.0.2.2:80",
    "10.0.2.3:80",
    "10.0.2.4:80",
    "10.0.2.5:80",
];

/// SNAT and DSR, Maglev and random, IPv4 and IPv6 VIPs, and a service without backends.
pub fn model() -> Model {
    let s = service;
    Model {
        maglev_seed: SEED,
        services: vec![
            with(s("web4", "10.10.0.1:80", Tcp, Maglev, Snat), 251, &WEB4),
            with(
                s("dns4", "10.10.0.1:53", Udp, Random, Snat),
                251,
                &["10.0.1.4:5353", "10.0.1.5:5353"],
            ),
            with(
                s("web6", "[fd10::1]:443", Tcp, Maglev, Snat),
                251,
                &["[fd00:1::1]:8443", "[fd00:1::2]:8443"],
            ),
            with(
                s("dns6", "[fd10::1]:53", Udp, Random, Snat),
                251,
                &["[fd00:1::3]:5353"],
            ),
            with(s("dsr4", "10.10.0.2:80", Tcp, Maglev, Dsr), 1021, &DSR4),
            with(
                s("dsr6", "[fd10::2]:80", Tcp, Maglev, Dsr),
                251,
                &["[fd00:2::1]:80"],
            ),
            with(
                s("dsrmix", "10.10.0.3:80", Tcp, Maglev, Dsr),
                251,
                &["[fd00:2::9]:80"],
            ),
            with(s("empty", "10.10.0.4:80", Tcp, Maglev, Snat), 251, &[]),
        ],
    }
}

pub fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn flow_key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: compile::addr_bytes(src),
        dst: compile::addr_bytes(dst),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

/// The backend the userspace predicts for a flow of a Maglev service: lb::maglev::build's table
/// indexed by flow_hash(key, 0) % M.
pub fn predict(model: &Model, name: &str, key: &FlowKey) -> SocketAddr {
    let s = model.services.iter().find(|s| s.name == name).unwrap();
    let keys: Vec<String> = s.backends.iter().map(|b| b.addr.to_string()).collect();
    let input: Vec<lb::maglev::Backend> = keys
        .iter()
        .map(|k| lb::maglev::Backend { key: k, weight: 1 })
        .collect();
    let table = lb::maglev::build(&input, s.table_size, model.maglev_seed).unwrap();
    let slot = abi::lb::flow_hash(key, 0) % s.table_size;
    s.backends[table[slot as usize] as usize].addr
}

/// Runs a client → VIP packet `make(client, vip)` through a SNAT service and checks the result is
/// exactly `make(lb:port, backend)`, with the port in range and recorded in conntrack. Returns
/// the (LB port, backend).
pub fn snat_forward(
    lb: &Lb,
    client: SocketAddr,
    vip: SocketAddr,
    proto: u8,
    make: impl Fn(SocketAddr, SocketAddr) -> Vec<u8>,
) -> (u16, SocketAddr) {
    let input = make(client, vip);
    let before = lb.count(reason::FWD_SNAT);
    let out = lb.run(&input);
    assert_eq!(out.action, XDP_PASS, "FIB fails in a fresh netns: PASS");
    let v = view(&out.data);
    let lb_addr: IpAddr = if client.is_ipv4() {
        LB4.into()
    } else {
        LB6.into()
    };
    assert_eq!(v.src, lb_addr, "SNAT source address");
    assert!((PORT_MIN..=PORT_MAX).contains(&v.sport), "port {}", v.sport);
    let backend = SocketAddr::new(v.dst, v.dport);
    let svc = lb
        .model
        .services
        .iter()
        .find(|s| s.frontend.addr == vip.ip() && s.frontend.port == vip.port())
        .unwrap();
    assert!(svc.backends.iter().any(|b| b.addr == backend), "{backend}");
    let want = make(SocketAddr::new(v.src, v.sport), backend);
    assert_eq!(hex(&out.data), hex(&want), "rewritten frame");
    verify_checksums(&out.data).unwrap();
    let key = flow_key(client.ip(), client.port(), vip.ip(), vip.port(), proto);
    let ct = lb.ct(&key).expect("conntrack entry");
    assert_eq!(ct.snat_port, v.sport.to_be());
    assert_eq!(lb.count(reason::FWD_SNAT), before + 1);
    (v.sport, backend)
}

pub fn tcp_frame(vlan: Option<u16>) -> impl Fn(SocketAddr, SocketAddr) -> Vec<u8> {
    move |s, d| {
        let seg = tcp(s.port(), d.port(), &TCP_OPTIONS, PAYLOAD);
        ether(&ip(s.ip(), d.ip(), seg), vlan)
    }
}

pub fn udp_frame(s: SocketAddr, d: SocketAddr) -> Vec<u8> {
    ether(
        &ip(s.ip(), d.ip(), udp(s.port(), d.port(), b"dns query")),
        None,
    )
}

/// Asserts a packet passes byte-identical and bumps `reason` by one.
pub fn passes_unchanged(lb: &Lb, pkt: &[u8], r: u32, what: &str) {
    let before = lb.count(r);
    let out = lb.run(pkt);
    assert_eq!(out.action, XDP_PASS, "{what}: action");
    assert_eq!(hex(&out.data), hex(pkt), "{what}: bytes");
    assert_eq!(
        lb.count(r),
        before + 1,
        "{what}: counter {}",
        reason::NAMES[r as usize]
    );
}
