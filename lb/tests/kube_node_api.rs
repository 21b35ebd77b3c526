//! End-to-end test of `oxilium agent --role node` following the Kubernetes API: a fake API server
//! (lb/k8s/tests/support/fake_api.rs) listening inside the node's network namespace, the real
//! agent watching it, pods behind veth pairs, real client processes in a test-made cgroup. The
//! initial sync is applied whole; EndpointSlice and Service changes per change (only the Services
//! they name are recompiled and written); a Node change whole again. Kernel features: cgroup v2,
//! BPF_PROG_TYPE_CGROUP_SOCK_ADDR (connect), bpf_link pinning, BTF maps with map-in-map, network
//! namespaces, veth. Requires root; fails (never skips) when it cannot set up.
extern crate k8s as oxilium_k8s;
#[path = "../k8s/tests/support/fake_api.rs"]
#[allow(dead_code)]
mod fake_api;
mod support;

use fake_api::{FakeApi, Res};
use serde_json::{Value, json};
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};
use support::{
    cgroup::{Answer, Cgroup, run_client},
    netns::{Netns, enter, oxilium_json, unique, wire_pod},
    servers::Servers,
};

const WEB: &str = "10.96.0.10";
const API: &str = "10.96.0.11";

fn node(zone: &str) -> Value {
    json!({"metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": zone}},
           "status": {"addresses": [{"type": "InternalIP", "address": "10.200.0.1"}]}})
}

fn service(name: &str, ip: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default"},
           "spec": {"clusterIP": ip,
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
}

/// The EndpointSlice of `svc` with pods `pods` (all ready, on this node).
fn slice(svc: &str, pods: &[usize]) -> Value {
    let eps: Vec<Value> = pods
        .iter()
        .map(|i| {
            json!({"addresses": [format!("10.244.{i}.2")], "nodeName": "node-a",
                        "conditions": {"ready": true}})
        })
        .collect();
    json!({"metadata": {"name": format!("{svc}-1"), "namespace": "default",
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": eps})
}

/// The node, its pods and their servers, the fake API server (its runtime's threads live in the
/// node's namespace) and the agent. Dropped in order: agent, API server, runtime, namespaces.
struct Bed {
    agent: Option<Child>,
    api: FakeApi,
    _rt: tokio::runtime::Runtime,
    _servers: Vec<Servers>,
    cg: Cgroup,
    _pods: Vec<Netns>,
    node: Netns,
    dir: PathBuf,
    pins: PathBuf,
    socket: PathBuf,
}

impl Bed {
    fn new() -> Bed {
        let p = unique("ka");
        let node = Netns::new(&format!("{p}n"));
        let mut pods = Vec::new();
        let mut servers = Vec::new();
        for i in 1..=3 {
            let pod = Netns::new(&format!("{p}p{i}"));
            wire_pod(&node, &pod, i);
            let addr = SocketAddr::new(format!("10.244.{i}.2").parse().unwrap(), 8080);
            servers.push(Servers::start(&pod, &format!("b{i}"), &[addr]));
            pods.push(pod);
        }
        let path = node.path();
        let (rt, api) = std::thread::spawn(move || {
            enter(&path); // the runtime's worker threads are created here, inside the node
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let api = rt.block_on(FakeApi::start());
            (rt, api)
        })
        .join()
        .expect("fake API server in the node's namespace");
        let dir = std::env::temp_dir().join(format!("oxilium-kube-api-{p}"));
        std::fs::create_dir_all(&dir).unwrap();
        Bed {
            agent: None,
            api,
            _rt: rt,
            _servers: servers,
            cg: Cgroup::new("ka"),
            _pods: pods,
            node,
            pins: PathBuf::from(format!("/sys/fs/bpf/oxilium-test-{p}")),
            socket: dir.join("api.sock"),
            dir,
        }
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("agent.log")).unwrap();
        let child = self
            .node
            .command(&[env!("CARGO_BIN_EXE_oxilium"), "agent", "--role", "node"])
            .args(["--node", "node-a", "--kubeconfig"])
            .arg(self.api.kubeconfig())
            .args(["--cgroup", self.cg.path.to_str().unwrap()])
            .args(["--pin-dir", self.pins.to_str().unwrap()])
            .args(["--socket", self.socket.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.agent = Some(child);
        self.eventually("agent started", || self.socket.exists());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Waits (up to 20 s) for `cond`; fails with the agent's log.
    #[track_caller]
    fn eventually(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let t = Instant::now();
        while !cond() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{what}: not reached\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The backends answering 20 TCP connects to `ip`:80 from the node (inside the translated
    /// cgroup); None when a connect fails.
    fn backends(&self, ip: &str) -> Option<BTreeSet<String>> {
        let mut seen = BTreeSet::new();
        for a in run_client(Some(&self.cg.path), &self.node, "tcp", ip, 80, 20) {
            match a {
                Answer::Ok { id, .. } => seen.insert(id),
                Answer::Err(_) => return None,
            };
        }
        Some(seen)
    }

    #[track_caller]
    fn serves(&self, ip: &str, ids: &[&str]) {
        let want: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
        self.eventually(&format!("{ip} served by {ids:?}"), || {
            self.backends(ip).as_ref() == Some(&want)
        });
    }

    fn names(&self) -> BTreeSet<String> {
        let list = oxilium_json(&self.socket, &["service", "list"]);
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Removing the pins detaches the cgroup links and frees the maps.
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn service_and_endpoint_slice_changes_from_the_api_are_applied() {
    let mut b = Bed::new();
    b.api.put(Res::Nodes, node("z1"));
    b.api.put(Res::Services, service("web", WEB));
    b.api.put(Res::EndpointSlices, slice("web", &[1]));
    b.start();
    // The initial sync.
    b.serves(WEB, &["b1"]);
    // An EndpointSlice change: web's backends replaced.
    b.api.put(Res::EndpointSlices, slice("web", &[2, 3]));
    b.serves(WEB, &["b2", "b3"]);
    // A new Service and its slice: a new frontend; web keeps its backends.
    b.api.put(Res::Services, service("api", API));
    b.api.put(Res::EndpointSlices, slice("api", &[1]));
    b.serves(API, &["b1"]);
    b.serves(WEB, &["b2", "b3"]);
    // A Service deleted: its frontend leaves the datapath and the model.
    b.api.delete(Res::Services, "default", "web");
    b.eventually("web gone from the service list", || {
        !b.names().iter().any(|n| n.contains("default/web:"))
    });
    assert!(b.names().iter().any(|n| n.contains("default/api:")));
    // A Node change (applied whole) keeps what the changes before it built.
    b.api.put(Res::Nodes, node("z2"));
    b.api.put(Res::EndpointSlices, slice("api", &[1, 3]));
    b.serves(API, &["b1", "b3"]);
    let status = oxilium_json(&b.socket, &["status"]);
    assert!(status["last_error"].is_null(), "{status}");
}
