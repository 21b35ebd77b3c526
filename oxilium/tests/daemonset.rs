//! The shipped DaemonSet (deploy/kubernetes/daemonset.yaml) starts the real agent: its container's
//! exact command line and environment (`spec.nodeName` resolved as the kubelet does) run the
//! `oxilium` binary in a test-made network namespace against the fake Kubernetes API server, and
//! the agent programs the Services as that node sees them. The bed adds only what a test must
//! confine: `--kubeconfig` (in-cluster credentials do not exist here), `--cgroup` (a test cgroup
//! instead of the root one), `--pin-dir` and `--socket`.
//!
//! Kernel features: network namespaces, cgroup v2 sock_addr programs (the socket LB), bpffs
//! pinning, BTF maps. Requires root: fails (never skips) when it cannot set up.
mod support;

use serde_json::{Value, json};
use std::path::Path;
use support::{
    agent::AgentProcess, fake_api::Res, kube_agent::WAIT, monitor::http_get, netns::Netns,
};

/// The agent container of the shipped DaemonSet.
fn agent_container() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/daemonset.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let objects = k8s::manifests::parse_text(Path::new(path), &text).unwrap();
    let ds = &objects[0].value;
    assert_eq!(ds["kind"], "DaemonSet");
    ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .unwrap()
        .clone()
}

/// The agent container's arguments after the binary, and its environment on node `node`.
fn daemonset_command(node: &str) -> (Vec<String>, Vec<(String, String)>) {
    let c = &agent_container();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let cmd = strings(&c["command"]);
    assert!(cmd[0].ends_with("/oxilium"), "{cmd:?}");
    let mut args = cmd[1..].to_vec();
    args.extend(strings(&c["args"]));
    let env = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let value = match e.get("value") {
                Some(v) => v.as_str().unwrap().to_string(),
                None => {
                    let field = &e["valueFrom"]["fieldRef"]["fieldPath"];
                    assert_eq!(field, "spec.nodeName", "{e}");
                    node.to_string()
                }
            };
            (e["name"].as_str().unwrap().to_string(), value)
        })
        .collect();
    (args, env)
}

/// A probe's (path, port) as the kubelet would GET it.
fn probe(c: &Value, which: &str) -> (String, u16) {
    let g = &c[which]["httpGet"];
    let port = g["port"].as_u64().unwrap_or_else(|| panic!("{which}: {g}"));
    (g["path"].as_str().unwrap().to_string(), port as u16)
}

/// A ClusterIP Service with internalTrafficPolicy Local: which backend the agent programs shows
/// which node it believes it is.
fn objects() -> Vec<(Res, Value)> {
    let svc = json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "internalTrafficPolicy": "Local",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    });
    let slice = json!({
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.241.1.1"], "nodeName": "node-a", "conditions": {"ready": true}},
            {"addresses": ["10.241.2.1"], "nodeName": "node-b", "conditions": {"ready": true}},
        ],
    });
    let node = |n: &str, a: &str| {
        json!({"metadata": {"name": n},
               "status": {"addresses": [{"type": "InternalIP", "address": a}]}})
    };
    vec![
        (Res::Services, svc),
        (Res::EndpointSlices, slice),
        (Res::Nodes, node("node-a", "10.77.0.1")),
        (Res::Nodes, node("node-b", "10.77.0.2")),
    ]
}

#[test]
fn the_daemonset_command_line_starts_a_node_agent() {
    let (args, env) = daemonset_command("node-b");
    assert_eq!(args[..3], ["agent", "--role", "node"], "{args:?}");
    assert!(env.iter().any(|(k, v)| k == "NODE_NAME" && v == "node-b"));

    let ns = Netns::new(&support::netns::unique("ds"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = ns.exec(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let api = {
        let _ctx = rt.enter();
        support::fake_api::FakeApi::serve(listener)
    };
    for (res, obj) in objects() {
        api.put(res, obj);
    }
    let mut builder = AgentProcess::builder(&ns, "ds")
        .args(&args[1..])
        .args(["--kubeconfig".as_ref(), api.kubeconfig().as_os_str()])
        .env("RUST_LOG", "info")
        .cgroup();
    for (k, v) in &env {
        builder = builder.env(k, v);
    }
    let mut agent = builder.build();
    agent.start();
    agent.eventually(WAIT, "the Service programmed for node-b", || {
        let list = agent.cli(&["service", "list"]);
        let web: Vec<&Value> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["frontend"] == "10.96.0.10:80/tcp")
            .collect();
        let backends: Vec<&Value> = web
            .iter()
            .flat_map(|s| s["backends"].as_array().into_iter().flatten())
            .map(|b| &b["address"])
            .collect();
        (backends == [&json!("10.241.2.1:8080")])
            .then_some(())
            .ok_or(list)
    });
    // The kubelet's probes, on the address the container's command line serves them: both
    // answer 200 once the Services are programmed.
    let c = agent_container();
    for which in ["livenessProbe", "readinessProbe"] {
        let (path, port) = probe(&c, which);
        let at = args
            .iter()
            .position(|a| a == "--metrics-address")
            .expect("--metrics-address in the command line");
        let addr: std::net::SocketAddr = args[at + 1].parse().unwrap();
        assert_eq!(addr.port(), port, "{which} probes the metrics address");
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let (code, body) = http_get(&ns, to, &path);
        assert_eq!(code, 200, "{which} {path}: {body}");
    }
    let s = support::monitor::scrape(
        &ns,
        std::net::SocketAddr::from(([127, 0, 0, 1], probe(&c, "readinessProbe").1)),
    );
    assert!(s.samples.iter().any(|x| x.metric == "oxilium_services"));
    for (kind, key) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            c["resources"][kind][key].is_string(),
            "resources.{kind}.{key}: {}",
            c["resources"]
        );
    }
    drop(agent);
    drop(api);
    drop(rt);
}
