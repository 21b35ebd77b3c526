//! The edge-LB test bed: client ── lb ── {b1..bN}, each link its own /24 and /64, VIPs on no
//! interface (the client routes everything via the LB), the real agent in the LB namespace.
//! Everything (agents with their pins and files, servers, namespaces) goes away on drop, even after
//! a panic.
use super::{
    agent::AgentProcess,
    netns::{Netns, unique, veth},
    servers::Servers,
};
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

pub const VIP4: &str = "10.200.100.1";
pub const VIP6: &str = "fd00:200:100::1";
/// The LB's addresses on the client link (l0): its SNAT and tunnel source.
pub const LB4: &str = "10.200.1.1";
pub const LB6: &str = "fd00:200:1::1";

pub fn backend4(i: usize) -> IpAddr {
    format!("10.200.1{i}.2").parse().unwrap()
}

pub fn backend6(i: usize) -> IpAddr {
    format!("fd00:200:1{i}::2").parse().unwrap()
}

pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

pub struct Bed {
    /// The LB's agent (`--config DIR/lb.yaml --iface l0,lb1..`): folders made, started by the
    /// test. Fields drop in order: agents, servers, namespaces.
    pub agent: AgentProcess,
    backend_agents: Vec<AgentProcess>,
    pub servers: Vec<Servers>,
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<Netns>,
}

impl Bed {
    /// Kernel features: network namespaces, veth, IPv4/IPv6 forwarding.
    pub fn new(n: usize) -> Bed {
        assert!((1..=9).contains(&n));
        let p = unique("");
        let client = Netns::new(&format!("{p}c"));
        let lb = Netns::new(&format!("{p}l"));
        let ifaces: Vec<String> = std::iter::once("l0".to_string())
            .chain((1..=n).map(|i| format!("lb{i}")))
            .collect();
        let agent = AgentProcess::builder(&lb, "edge")
            .file_arg("--config", "lb.yaml")
            .args(["--iface", &ifaces.join(","), "--watch-ms", "100"])
            .build();
        let mut bed = Bed {
            agent,
            client,
            lb,
            backends: Vec::new(),
            servers: Vec::new(),
            backend_agents: Vec::new(),
        };
        veth(&bed.client, "c0", &bed.lb, "l0");
        bed.client
            .run(&["ip", "addr", "add", "10.200.1.2/24", "dev", "c0"]);
        bed.client.run(&[
            "ip",
            "addr",
            "add",
            "fd00:200:1::2/64",
            "dev",
            "c0",
            "nodad",
        ]);
        bed.client
            .run(&["ip", "route", "add", "default", "via", "10.200.1.1"]);
        bed.client.run(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:200:1::1",
        ]);
        bed.lb
            .run(&["ip", "addr", "add", "10.200.1.1/24", "dev", "l0"]);
        bed.lb.run(&[
            "ip",
            "addr",
            "add",
            "fd00:200:1::1/64",
            "dev",
            "l0",
            "nodad",
        ]);
        // veth peers of XDP interfaces need GRO to take XDP_TX/REDIRECT frames, and full checksums
        // (no tx offload) because the datapath updates them incrementally.
        bed.client
            .run(&["ethtool", "-K", "c0", "gro", "on", "tx", "off"]);
        for i in 1..=n {
            let b = Netns::new(&format!("{p}b{i}"));
            let lbif = format!("lb{i}");
            veth(&b, "e0", &bed.lb, &lbif);
            b.run(&[
                "ip",
                "addr",
                "add",
                &format!("10.200.1{i}.2/24"),
                "dev",
                "e0",
            ]);
            b.run(&[
                "ip",
                "addr",
                "add",
                &format!("fd00:200:1{i}::2/64"),
                "dev",
                "e0",
                "nodad",
            ]);
            b.run(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.200.1{i}.1"),
            ]);
            b.run(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:200:1{i}::1"),
            ]);
            b.run(&["ethtool", "-K", "e0", "gro", "on", "tx", "off"]);
            bed.lb.run(&[
                "ip",
                "addr",
                "add",
                &format!("10.200.1{i}.1/24"),
                "dev",
                &lbif,
            ]);
            bed.lb.run(&[
                "ip",
                "addr",
                "add",
                &format!("fd00:200:1{i}::1/64"),
                "dev",
                &lbif,
                "nodad",
            ]);
            bed.backends.push(b);
        }
        bed
    }

    /// Identity servers "b1".."bN" on each backend's addresses (and the VIPs, for DSR) at `port`.
    pub fn serve(&mut self, port: u16, on_vips: bool) {
        for (i, b) in self.backends.iter().enumerate() {
            let mut addrs = vec![
                SocketAddr::new(backend4(i + 1), port),
                SocketAddr::new(backend6(i + 1), port),
            ];
            if on_vips {
                addrs.push(sa(VIP4, port));
                addrs.push(sa(VIP6, port));
            }
            self.servers
                .push(Servers::start(b, &format!("b{}", i + 1), &addrs));
        }
    }

    /// DSR backends: the VIPs on loopback, and `oxilium agent --role backend` decapsulating on e0
    /// the tunnels of the LB (its address on l0, the tunnels' source).
    pub fn dsr_backends(&mut self) {
        for (i, b) in self.backends.iter().enumerate() {
            b.run(&["ip", "addr", "add", &format!("{VIP4}/32"), "dev", "lo"]);
            b.run(&[
                "ip",
                "addr",
                "add",
                &format!("{VIP6}/128"),
                "dev",
                "lo",
                "nodad",
            ]);
            let agent = AgentProcess::builder(b, &format!("edge-b{}", i + 1))
                .args(["--role", "backend", "--iface", "e0"])
                .args(["--tunnel-source", LB4, "--tunnel-source", LB6])
                .start();
            self.backend_agents.push(agent);
        }
    }

    /// The agent of DSR backend `i` (1-based), after [`dsr_backends`](Self::dsr_backends).
    pub fn backend_agent(&self, i: usize) -> &AgentProcess {
        &self.backend_agents[i - 1]
    }

    /// Replaces the config file atomically (the agent sees the old or the new file, never half).
    pub fn write_config(&self, yaml: &str) {
        self.agent.write_file("lb.yaml", yaml);
    }

    /// Polls `f` until it returns true; panics after `secs` with the agent's status and log.
    #[track_caller]
    pub fn eventually(&self, secs: u64, what: &str, mut f: impl FnMut() -> bool) {
        self.agent.eventually(Duration::from_secs(secs), what, || {
            f().then_some(()).ok_or("not yet")
        });
    }
}
