//! The node agent (`oxilium agent --role node --device ...`) fed by the fake Kubernetes API
//! server (lb/k8s/tests/support/fake_api.rs): the server listens on the node namespace's own
//! loopback and the agent, run inside that namespace, reaches it through the kubeconfig the
//! server wrote. The test changes objects on the server while the agent runs (watch events).
//! Also: the clients' side (who answered, whom each backend saw). The agent (with its cgroup, pins
//! and files), the server and its runtime go away on drop, even after a panic.
//! Kernel features: network namespaces, cgroup v2 (the agent's socket LB), bpffs.
use super::{
    agent::AgentProcess,
    fake_api::{FakeApi, Res},
    netns::Netns,
    peer::{Seen, spread},
};
use serde_json::Value;
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

/// Every wait of these tests (agent start, a change reaching the datapath) is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

/// Fields drop in order: the agent (killed, pins and cgroup removed), the server, its runtime.
pub struct KubeAgent {
    /// `oxilium agent --role node --node N --device D --kubeconfig K`; more flags (e.g.
    /// `--nodeport-acceleration`) through [`AgentProcess::add_args`] before it starts.
    pub agent: AgentProcess,
    pub api: FakeApi,
    /// Runs the server; dropped after it.
    _rt: tokio::runtime::Runtime,
}

impl KubeAgent {
    /// The API server on `node_ns`'s loopback, empty, and the agent to run there as node `node`
    /// with the NodePort programs on `devices` (started by [`start`](Self::start)).
    pub fn serve(node_ns: &Netns, node: &str, devices: &[&str]) -> KubeAgent {
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
        let agent = AgentProcess::builder(node_ns, "ka")
            .args([
                "--role",
                "node",
                "--node",
                node,
                "--device",
                &devices.join(","),
            ])
            .args(["--kubeconfig".as_ref(), api.kubeconfig().as_os_str()])
            .env("RUST_LOG", "info")
            .cgroup()
            .build();
        KubeAgent {
            agent,
            api,
            _rt: rt,
        }
    }

    /// Creates or replaces each object (watch events once the agent runs).
    pub fn put(&self, objects: impl IntoIterator<Item = (Res, Value)>) {
        for (res, obj) in objects {
            self.api.put(res, obj);
        }
    }

    /// Starts the agent and waits until it applied the cluster state it listed.
    pub fn start(&mut self) {
        self.agent.start();
        self.wait_applied();
    }

    /// Waits until the agent applied a cluster state from the API server.
    pub fn wait_applied(&self) {
        self.eventually("the listed cluster state applied", || {
            let s = self.status();
            (s["reloads"].as_u64() >= Some(1)).then_some(()).ok_or(s)
        });
    }

    pub fn status(&self) -> Value {
        self.agent.status()
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
    pub fn eventually<E: std::fmt::Debug>(&self, what: &str, f: impl FnMut() -> Result<(), E>) {
        self.agent.eventually(WAIT, what, f);
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
