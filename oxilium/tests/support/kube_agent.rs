//! The node agent (`oxilium agent --role node --device ...`) fed by the fake Kubernetes API
//! server (lb/k8s/tests/support/fake_api.rs): the server listens on the node namespace's own
//! loopback and the agent, run inside that namespace, reaches it through the kubeconfig the
//! server wrote. The test changes objects on the server while the agent runs (watch events).
//! Also: the clients' side (who answered, whom each backend saw). The agent, the server and its
//! runtime, the test cgroup, pins and files go away on drop, even after a panic.
//! Kernel features: network namespaces, cgroup v2 (the agent's socket LB), bpffs.
use super::{
    cgroup::Cgroup,
    fake_api::{FakeApi, Res},
    netns::{Netns, oxilium_json, unique},
    peer::{Answer, tcp_ask, udp_ask},
};
use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

/// Every wait of these tests (agent start, a change reaching the datapath) is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);
/// One request's time limit.
pub const T: Duration = Duration::from_secs(2);

pub struct KubeAgent {
    agent: Option<Child>,
    pub api: FakeApi,
    /// Runs the server; dropped after it.
    _rt: tokio::runtime::Runtime,
    cg: Cgroup,
    dir: PathBuf,
    pins: PathBuf,
    socket: PathBuf,
    /// More agent flags (e.g. --nodeport-acceleration).
    pub extra_args: Vec<String>,
}

impl KubeAgent {
    /// The API server on `node_ns`'s loopback, empty; the agent is started by [`start`](Self::start).
    pub fn serve(node_ns: &Netns) -> KubeAgent {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = node_ns.exec(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let api = {
            let _ctx = rt.enter();
            FakeApi::serve(listener)
        };
        let p = unique("k");
        let dir = std::env::temp_dir().join(format!("oxilium-kapi-{p}"));
        std::fs::create_dir_all(&dir).unwrap();
        KubeAgent {
            agent: None,
            api,
            _rt: rt,
            cg: Cgroup::new("ka"),
            pins: PathBuf::from(format!("/sys/fs/bpf/oxilium-test-{p}")),
            socket: dir.join("api.sock"),
            dir,
            extra_args: Vec::new(),
        }
    }

    /// Creates or replaces each object (watch events once the agent runs).
    pub fn put(&self, objects: impl IntoIterator<Item = (Res, Value)>) {
        for (res, obj) in objects {
            self.api.put(res, obj);
        }
    }

    /// Starts the agent in `node_ns` as node `node` with the NodePort programs on `devices`, and
    /// waits until it applied the cluster state it listed.
    pub fn start(&mut self, node_ns: &Netns, node: &str, devices: &[&str]) {
        self.spawn(node_ns, node, devices);
        self.wait_applied();
    }

    /// Waits until the agent applied a cluster state from the API server.
    pub fn wait_applied(&self) {
        self.eventually("the listed cluster state applied", || {
            let s = self.status();
            (s["reloads"].as_u64() >= Some(1)).then_some(()).ok_or(s)
        });
    }

    /// Starts the agent and waits for its API socket only.
    pub fn spawn(&mut self, node_ns: &Netns, node: &str, devices: &[&str]) {
        assert!(self.agent.is_none());
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let child = node_ns
            .command(&[env!("CARGO_BIN_EXE_oxilium"), "agent", "--role", "node"])
            .args(["--node", node, "--device", &devices.join(",")])
            .arg("--kubeconfig")
            .arg(self.api.kubeconfig())
            .arg("--cgroup")
            .arg(&self.cg.path)
            .arg("--pin-dir")
            .arg(&self.pins)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let t = Instant::now();
        while !self.socket.exists() {
            if let Some(status) = self.agent.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited ({status}):\n{}", self.log());
            }
            assert!(t.elapsed() < WAIT, "agent did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait: the agent leaves its maps and links pinned (as on an upgrade); then
    /// [`start`](Self::start) again.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while c.try_wait().unwrap().is_none() && t.elapsed() < WAIT {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn status(&self) -> Value {
        oxilium_json(&self.socket, &["status"])
    }

    /// A NodePort counter (`abi::nodeport::reason::NAMES`) or, with `shared`, an LB one.
    pub fn counter(&self, name: &str, shared: bool) -> u64 {
        let s = self.status();
        let c = if shared {
            &s["counters"][name]
        } else {
            &s["nodeport"]["counters"][name]
        };
        c["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}: {s}"))
    }

    /// Polls `f` until it is Ok; after [`WAIT`] panics with its last error, the agent's status
    /// and its log.
    #[track_caller]
    pub fn eventually<E: std::fmt::Debug>(&self, what: &str, mut f: impl FnMut() -> Result<(), E>) {
        let t = Instant::now();
        loop {
            let Err(e) = f() else { return };
            assert!(
                t.elapsed() < WAIT,
                "timed out waiting for {what}; last: {e:?}\nstatus: {}\nagent log:\n{}",
                self.status(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the agent holds `n` local endpoints (looked up asynchronously).
    #[track_caller]
    pub fn wait_local_endpoints(&self, n: u64) {
        self.eventually(&format!("{n} local endpoints"), || {
            let s = self.status();
            let have = s["nodeport"]["local_endpoints"].as_u64();
            (have == Some(n)).then_some(()).ok_or(have)
        });
    }

    /// Waits until `n` requests from `client` to `to` are all answered, by exactly the backends
    /// `want` (id → the one client address it must see); panics with what was seen last.
    #[track_caller]
    pub fn wait_answers(
        &self,
        client: &Netns,
        to: SocketAddr,
        udp: bool,
        n: usize,
        want: &[(&str, IpAddr)],
    ) {
        let want: Seen = want
            .iter()
            .map(|(id, peer)| (id.to_string(), BTreeSet::from([*peer])))
            .collect();
        self.eventually(&format!("{to} (udp={udp}) answered by {want:?}"), || {
            let seen = spread(client, to, udp, n);
            (seen.as_ref() == Ok(&want)).then_some(()).ok_or(seen)
        });
    }
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Removing the pins detaches the cgroup and TCX links and frees the maps.
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Backend id → the client addresses it saw.
pub type Seen = BTreeMap<String, BTreeSet<IpAddr>>;

/// One request (a new TCP connection, or a datagram from a fresh socket) from `client`.
pub fn ask(
    client: &Netns,
    from: Option<IpAddr>,
    to: SocketAddr,
    udp: bool,
) -> Result<Answer, String> {
    if udp {
        udp_ask(client, from, to, T)
    } else {
        tcp_ask(client, from, to, T)
    }
}

/// `n` requests to `to`: who answered and whom each backend saw; the first failure ends it.
pub fn spread(client: &Netns, to: SocketAddr, udp: bool, n: usize) -> Result<Seen, String> {
    let mut seen = Seen::new();
    for i in 0..n {
        let a = ask(client, None, to, udp).map_err(|e| format!("request {i}: {e}"))?;
        seen.entry(a.id).or_default().insert(a.peer);
    }
    Ok(seen)
}
