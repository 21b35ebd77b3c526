//! A two-node cluster in network namespaces for the NodePort tests:
//!
//! ```text
//!  client ─c0──ext0─ node1 ─fab0──fab0─ node2
//!  192.168.50.2/.66   │  10.77.0.1   10.77.0.2  │
//!  fd50::2/::66       │  fd77::1     fd77::2    │
//!           vp1N ─ pods 10.241.1.1N        vp2N ─ pods 10.241.2.1N
//!                       fd41:1::1N                    fd41:2::1N
//! ```
//! node1 runs oxilium's NodePort tc programs on ext0 and fab0 (loaded from the test, maps
//! programmed through the reconciler and the NodePort API), with routes to node2's pod CIDR via
//! node2. Pods are namespaces behind veths with host routes, answering with [`PeerServers`].
//! Everything (servers, programs, pinned links and maps, namespaces) goes away on drop.
use super::{
    netns::{Netns, unique, veth},
    peer::PeerServers,
};
use abi::{lb::LbConfig, nodeport::Endpoint};
use lb::{
    compile,
    model::{Algorithm, Backend, BackendState, Frontend, Mode, Model, Protocol, Scope, Service},
    reconcile::Reconciler,
};
use oxilium::bpf::{lb_maps::KernelMaps, nodeport::NodePort, socklb::SockLb};
use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    path::PathBuf,
};

pub const NODE1_EXT4: &str = "192.168.50.1";
pub const NODE1_EXT6: &str = "fd50::1";
pub const CLIENT4: &str = "192.168.50.2";
pub const CLIENT6: &str = "fd50::2";
/// A second client address, used as "outside the source ranges".
pub const CLIENT4_OUT: &str = "192.168.50.66";
pub const CLIENT6_OUT: &str = "fd50::66";
pub const NODE1_FAB4: &str = "10.77.0.1";
pub const NODE1_FAB6: &str = "fd77::1";
pub const NODE2_FAB4: &str = "10.77.0.2";
pub const NODE2_FAB6: &str = "fd77::2";
pub const POD_PORT: u16 = 8080;
pub const PORT_MIN: u16 = 40_000;
pub const PORT_MAX: u16 = 40_999;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub struct Pod {
    pub name: String,
    pub ns: Netns,
    pub node: usize,
    pub v4: IpAddr,
    pub v6: IpAddr,
    /// The host side of its veth, in its node's namespace.
    pub host_if: String,
}

impl Pod {
    pub fn addr(&self, v6: bool) -> SocketAddr {
        SocketAddr::new(if v6 { self.v6 } else { self.v4 }, POD_PORT)
    }
}

pub struct Cluster {
    pub client: Netns,
    pub node1: Netns,
    pub node2: Netns,
    pub pods: Vec<Pod>,
    pub pin_dir: PathBuf,
    pub np: Option<NodePort>,
    pub rec: Option<Reconciler<KernelMaps>>,
    pub servers: Vec<PeerServers>,
}

/// Runs `f` with the calling thread inside `ns`, then returns the thread to its namespace.
pub fn in_netns<R>(ns: &Netns, f: impl FnOnce() -> R) -> R {
    let home = File::open("/proc/thread-self/ns/net").expect("own netns");
    let target = File::open(ns.path()).expect("netns file");
    // SAFETY: setns of the calling thread only.
    let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    struct Back(File);
    impl Drop for Back {
        fn drop(&mut self) {
            // SAFETY: as above.
            unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
        }
    }
    let _back = Back(home);
    f()
}

fn sysctl(ns: &Netns, kv: &[&str]) {
    let mut args = vec!["sysctl", "-qw"];
    args.extend_from_slice(kv);
    ns.run(&args);
}

/// A namespace whose new devices skip IPv6 duplicate address detection: link-local addresses are
/// usable at once (a tentative one cannot resolve neighbours, losing the first packets).
fn fresh(name: &str) -> Netns {
    let ns = Netns::new(name);
    sysctl(
        &ns,
        &[
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ],
    );
    ns
}

/// (ifindex, MAC) of a device inside `ns`, from `ip -o link`.
pub fn link_info(ns: &Netns, dev: &str) -> (u32, [u8; 6]) {
    let out = ns.run(&["ip", "-o", "link", "show", "dev", dev]);
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let ifindex = s.split(':').next().unwrap().trim().parse().unwrap();
    let mac = s
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {s}"));
    let mut m = [0u8; 6];
    for (i, h) in mac.split(':').enumerate() {
        m[i] = u8::from_str_radix(h, 16).unwrap();
    }
    (ifindex, m)
}

impl Cluster {
    /// Kernel features: network namespaces, veth, IPv4/IPv6 forwarding. `pods[n]` pods on node n+1.
    pub fn new(pods: [usize; 2]) -> Cluster {
        let p = unique("");
        let mut c = Cluster {
            client: fresh(&format!("{p}c")),
            node1: fresh(&format!("{p}n1")),
            node2: fresh(&format!("{p}n2")),
            pods: Vec::new(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/oxilium-np-{p}")),
            np: None,
            rec: None,
            servers: Vec::new(),
        };
        veth(&c.client, "c0", &c.node1, "ext0");
        for a in [CLIENT4, CLIENT4_OUT] {
            c.client
                .run(&["ip", "addr", "add", &format!("{a}/24"), "dev", "c0"]);
        }
        for (a, lft) in [(CLIENT6, "forever"), (CLIENT6_OUT, "0")] {
            // The second address is deprecated: never the default source, usable when bound.
            c.client.run(&[
                "ip",
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                "c0",
                "nodad",
                "preferred_lft",
                lft,
            ]);
        }
        c.client
            .run(&["ip", "route", "add", "default", "via", NODE1_EXT4]);
        c.client
            .run(&["ip", "-6", "route", "add", "default", "via", NODE1_EXT6]);
        c.node1.run(&[
            "ip",
            "addr",
            "add",
            &format!("{NODE1_EXT4}/24"),
            "dev",
            "ext0",
        ]);
        c.node1.run(&[
            "ip",
            "addr",
            "add",
            &format!("{NODE1_EXT6}/64"),
            "dev",
            "ext0",
            "nodad",
        ]);
        veth(&c.node1, "fab0", &c.node2, "fab0");
        for (ns, me, peer, other) in [(&c.node1, 1, 2, 2), (&c.node2, 2, 1, 1)] {
            ns.run(&[
                "ip",
                "addr",
                "add",
                &format!("10.77.0.{me}/24"),
                "dev",
                "fab0",
            ]);
            ns.run(&[
                "ip",
                "addr",
                "add",
                &format!("fd77::{me}/64"),
                "dev",
                "fab0",
                "nodad",
            ]);
            ns.run(&[
                "ip",
                "route",
                "add",
                &format!("10.241.{other}.0/24"),
                "via",
                &format!("10.77.0.{peer}"),
            ]);
            ns.run(&[
                "ip",
                "-6",
                "route",
                "add",
                &format!("fd41:{other}::/64"),
                "via",
                &format!("fd77::{peer}"),
            ]);
            sysctl(
                ns,
                &[
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    "net.ipv4.conf.all.accept_local=1",
                ],
            );
        }
        // node2 sends anything else (e.g. replies a pod would address to a client) back to node1.
        c.node2
            .run(&["ip", "route", "add", "default", "via", NODE1_FAB4]);
        c.node2
            .run(&["ip", "-6", "route", "add", "default", "via", NODE1_FAB6]);
        // What the agent does on its devices (lb/src/sysctl.rs): the translated packets the FIB
        // cannot send yet go up the stack with the node's own address as source.
        for dev in ["ext0", "fab0"] {
            sysctl(&c.node1, &[&format!("net.ipv4.conf.{dev}.accept_local=1")]);
        }
        for (n, count) in pods.iter().enumerate() {
            for i in 1..=*count {
                c.add_pod(n + 1, i);
            }
        }
        c
    }

    fn add_pod(&mut self, node: usize, i: usize) {
        let name = format!("p{node}{i}");
        let ns = fresh(&format!("{}{name}", self.node1.name));
        let host_if = format!("vp{node}{i}");
        let node_ns = if node == 1 { &self.node1 } else { &self.node2 };
        veth(&ns, "eth0", node_ns, &host_if);
        let (v4, v6) = (
            ip(&format!("10.241.{node}.{}", 10 + i)),
            ip(&format!("fd41:{node}::{}", 10 + i)),
        );
        ns.run(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        ns.run(&[
            "ip",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.run(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.241.{node}.1"),
        ]);
        ns.run(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd41:{node}::1"),
        ]);
        node_ns.run(&[
            "ip",
            "addr",
            "add",
            &format!("10.241.{node}.1/32"),
            "dev",
            &host_if,
        ]);
        node_ns.run(&[
            "ip",
            "addr",
            "add",
            &format!("fd41:{node}::1/128"),
            "dev",
            &host_if,
            "nodad",
        ]);
        node_ns.run(&["ip", "route", "add", &format!("{v4}/32"), "dev", &host_if]);
        node_ns.run(&[
            "ip",
            "-6",
            "route",
            "add",
            &format!("{v6}/128"),
            "dev",
            &host_if,
        ]);
        self.servers.push(PeerServers::start(
            &ns,
            &name,
            &[SocketAddr::new(v4, POD_PORT), SocketAddr::new(v6, POD_PORT)],
        ));
        self.pods.push(Pod {
            name,
            ns,
            node,
            v4,
            v6,
            host_if,
        });
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap()
    }

    /// Loads the NodePort programs on node1's ext0 and fab0 (kernel: TCX, BTF maps, bpffs pins,
    /// LPM trie, LRU hash, map-in-map), programs the config (SNAT source = node1's fabric
    /// address), the local endpoints (node1's pods) and the services of `model` (with the socket
    /// LB's maps when one has ClientIP affinity).
    pub fn start(&mut self, model: &Model) {
        let devices = ["ext0".to_string(), "fab0".to_string()];
        let mut np = in_netns(&self.node1, || {
            NodePort::load(&self.pin_dir, &devices, false)
        })
        .expect("loading the NodePort programs (root, kernel ≥ 6.6 with TCX?)");
        let mut maps = np.lb_maps().expect("LB maps");
        maps.set_config(&LbConfig {
            snat_v4: compile::addr_bytes(ip(NODE1_FAB4)),
            snat_v6: compile::addr_bytes(ip(NODE1_FAB6)),
            snat_port_min: PORT_MIN,
            snat_port_max: PORT_MAX,
            ready: 1,
            timeouts: Default::default(),
        })
        .expect("config");
        for pod in self.pods.iter().filter(|p| p.node == 1) {
            let (ifindex, node_mac) = link_info(&self.node1, &pod.host_if);
            let (_, mac) = link_info(&pod.ns, "eth0");
            let ep = Endpoint {
                ifindex,
                flags: 0,
                mac,
                node_mac,
            };
            for a in [pod.v4, pod.v6] {
                np.set_endpoint(a, &ep).expect("endpoint");
            }
        }
        // ClientIP affinity lives in the socket LB's maps (loaded, never attached).
        let maps = if model
            .services
            .iter()
            .any(|s| s.affinity_timeout_s.is_some())
        {
            let sock = SockLb::load(&self.pin_dir).expect("socket LB maps (affinity)");
            maps.with_sock_maps(sock.into_parts().1)
        } else {
            maps
        };
        let mut rec = Reconciler::open(maps).expect("reconciler");
        rec.apply(&compile::compile(model).expect("compile"))
            .expect("apply");
        self.np = Some(np);
        self.rec = Some(rec);
    }

    pub fn apply(&mut self, model: &Model) {
        self.rec
            .as_mut()
            .unwrap()
            .apply(&compile::compile(model).expect("compile"))
            .expect("apply");
    }

    pub fn service_id(&self, s: &Service) -> u32 {
        self.rec
            .as_ref()
            .unwrap()
            .service_id(&compile::service_key(s))
            .expect("service id")
    }

    pub fn set_source_ranges(&mut self, s: &Service, ranges: &[&str]) {
        let id = self.service_id(s);
        let r: Vec<lb::model::IpNetwork> = ranges
            .iter()
            .map(|r| lb::model::parse_prefix(r).unwrap())
            .collect();
        self.np
            .as_mut()
            .unwrap()
            .set_source_ranges(id, &r)
            .expect("source ranges");
    }

    /// A NodePort counter (abi::nodeport::reason).
    pub fn np_count(&self, reason: u32) -> u64 {
        self.np.as_ref().unwrap().counter(reason).packets
    }

    /// A shared LB counter (abi::lb::reason).
    pub fn lb_count(&self, reason: u32) -> u64 {
        self.rec
            .as_ref()
            .unwrap()
            .datapath()
            .reason_counter(reason)
            .packets
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.servers.clear();
        self.rec = None;
        self.np = None;
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        // The namespaces (and with them every device and TCX link) go with the fields.
    }
}

/// A NodePort-style service on `frontend` with the given pod backends (random selection, so
/// that many connections spread over every backend).
pub fn service(
    name: &str,
    frontend: SocketAddr,
    proto: Protocol,
    backends: &[SocketAddr],
) -> Service {
    Service {
        name: name.into(),
        frontend: Frontend {
            addr: frontend.ip(),
            port: frontend.port(),
            protocol: proto,
        },
        algorithm: Algorithm::Random,
        mode: Mode::Snat,
        table_size: 251,
        conntrack_timeout_s: 300,
        scope: Scope::External,
        affinity_timeout_s: None,
        source_ranges: Vec::new(),
        backends: backends
            .iter()
            .map(|a| Backend {
                addr: *a,
                weight: 1,
                state: BackendState::Active,
            })
            .collect(),
    }
}
