//! The edge-LB test bed: client ── lb ── {b1..bN}, each link its own /24 and /64, VIPs on no
//! interface (the client routes everything via the LB), the real agent in the LB namespace.
//! Everything (agents, servers, pins, namespaces, files) goes away on drop, even after a panic.
use super::{
    netns::{Netns, unique, veth},
    servers::Servers,
};
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

pub const VIP4: &str = "10.200.100.1";
pub const VIP6: &str = "fd00:200:100::1";

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
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<Netns>,
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub servers: Vec<Servers>,
    agent: Option<Child>,
    backend_agents: Vec<Child>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_oxilium")
}

impl Bed {
    /// Kernel features: network namespaces, veth, IPv4/IPv6 forwarding.
    pub fn new(n: usize) -> Bed {
        assert!((1..=9).contains(&n));
        let p = unique("");
        let dir = std::env::temp_dir().join(format!("oxilium-test-{p}"));
        std::fs::create_dir_all(&dir).unwrap();
        let client = Netns::new(&format!("{p}c"));
        let lb = Netns::new(&format!("{p}l"));
        let mut bed = Bed {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/oxilium-test-{p}")),
            socket: dir.join("api.sock"),
            dir,
            client,
            lb,
            backends: Vec::new(),
            servers: Vec::new(),
            agent: None,
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

    pub fn ifaces(&self) -> String {
        let mut v = vec!["l0".to_string()];
        v.extend((1..=self.backends.len()).map(|i| format!("lb{i}")));
        v.join(",")
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

    /// DSR backends: the VIPs on loopback, and `oxilium agent --role backend` decapsulating on e0.
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
            let pin = format!("{}-b{}", self.pin_dir.display(), i + 1);
            let sock = self.dir.join(format!("b{}.sock", i + 1));
            let child = b
                .command(&[
                    bin(),
                    "agent",
                    "--role",
                    "backend",
                    "--iface",
                    "e0",
                    "--pin-dir",
                    &pin,
                ])
                .args(["--socket", sock.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(self.dir.join(format!("b{}.log", i + 1))).unwrap(),
                ))
                .spawn()
                .expect("spawn backend agent");
            self.backend_agents.push(child);
            wait_for(&sock, &self.dir.join(format!("b{}.log", i + 1)));
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("lb.yaml")
    }

    /// Replaces the config file atomically (the agent sees the old or the new file, never half).
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.join("lb.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none());
        let log = self.dir.join("agent.log");
        let child = self
            .lb
            .command(&[
                bin(),
                "agent",
                "--config",
                self.config_path().to_str().unwrap(),
                "--iface",
                &self.ifaces(),
            ])
            .args([
                "--pin-dir",
                self.pin_dir.to_str().unwrap(),
                "--socket",
                self.socket.to_str().unwrap(),
            ])
            .args(["--watch-ms", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            ))
            .spawn()
            .expect("spawn agent");
        self.agent = Some(child);
        wait_for(&self.socket, &log);
    }

    /// SIGTERM and wait: the agent leaves its maps and links pinned.
    pub fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Runs an `oxilium` client command against this agent with `-o json`.
    pub fn cli(&self, args: &[&str]) -> serde_json::Value {
        super::netns::oxilium_json(&self.socket, args)
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Polls `f` until it returns true or `secs` pass.
    pub fn eventually(&self, secs: u64, what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {what}\nagent log:\n{}",
            self.agent_log()
        );
    }
}

fn wait_for(sock: &std::path::Path, log: &std::path::Path) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if sock.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "agent did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.stop_agent();
        for mut c in self.backend_agents.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        for i in 1..=self.backends.len() {
            let _ = std::fs::remove_dir_all(format!("{}-b{i}", self.pin_dir.display()));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
