//! Faults under load through NodePort with the node agent: real HTTP (`hey`, keep-alive off, so
//! every request is a new flow, DNAT'ed and SNAT'ed to the node's address) to a NodePort whose
//! three endpoints are pods of another node, while the agent is SIGKILLed and restarted, stopped
//! and restarted, an endpoint is removed from the EndpointSlice, a malformed manifest is written
//! into the folder, and a pod's server is killed (then marked not ready, as the kubelet would).
//!
//! Each fault gets its own load phase: the restarts, the endpoint removal and the bad manifest
//! must cost 0 requests (the datapath runs from its pinned maps and links; a folder that does not
//! compile changes nothing); only the killed pod's phase may fail requests, those sent to it
//! before its endpoint was marked not ready.
//!
//! ```text
//!  client ─c0──ext0─ node-a (agent --device ext0,nb0) ─nb0──e0─ node-b: pods 10.99.0.{5,6,7}:8080
//!  198.51.100.2      198.51.100.1            10.77.0.1     10.77.0.2
//! ```
//! CI runs short phases; the full soak (60 s at 2,000 requests/s) is
//! `OXILIUM_SOAK_SECONDS=12 OXILIUM_SOAK_RATE=2000 cargo test --release -p oxilium --test soak_nodeport -- --nocapture`.
//! Kernel features: network namespaces, veth, TCX, bpf_fib_lookup, bpf_redirect, LRU hash, BTF
//! maps, bpffs pinning, bpf_link pinning, cgroup v2 sock_addr programs. Needs root and the Debian
//! packages `hey`, `curl` and `python3` (ci/setup).
mod support;

use std::{net::IpAddr, time::Duration};
use support::{
    agent::AgentProcess,
    netns::{Netns, unique, veth},
    soak::{Server, env_u64, http_server, load, phase},
};

const NODE4: &str = "198.51.100.1";
const NODE_PORT: u16 = 30080;

fn pod(i: usize) -> IpAddr {
    format!("10.99.0.{}", 4 + i).parse().unwrap()
}

/// node-a, a NodePort Service `web` and its EndpointSlice: `ready` pods (1-based) ready, `unready`
/// listed but not ready; all on node-b.
fn manifests(ready: &[usize], unready: &[usize]) -> String {
    let mut y = format!(
        r#"apiVersion: v1
kind: Node
metadata: {{name: node-a}}
status:
  addresses: [{{type: InternalIP, address: {NODE4}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  ports:
    - {{name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: {NODE_PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-IPv4
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
"#
    );
    for (list, ok) in [(ready, true), (unready, false)] {
        for i in list {
            y += &format!(
                "  - addresses: [\"{}\"]\n    nodeName: node-b\n    conditions: {{ready: {ok}}}\n",
                pod(*i)
            );
        }
    }
    y
}

/// The namespaces and the agent; dropped in field order (agent, then namespaces).
struct Bed {
    agent: AgentProcess,
    client: Netns,
    _node: Netns,
    nodeb: Netns,
}

fn bed() -> Bed {
    let p = unique("sn");
    let client = Netns::new(&format!("{p}c"));
    let node = Netns::new(&format!("{p}n"));
    let nodeb = Netns::new(&format!("{p}b"));
    veth(&client, "c0", &node, "ext0");
    veth(&node, "nb0", &nodeb, "e0");
    client.run(&["ip", "addr", "add", "198.51.100.2/24", "dev", "c0"]);
    client.run(&["ip", "route", "add", "default", "via", NODE4]);
    node.run(&["ip", "addr", "add", &format!("{NODE4}/24"), "dev", "ext0"]);
    node.run(&["ip", "addr", "add", "10.77.0.1/24", "dev", "nb0"]);
    node.run(&["ip", "route", "add", "10.99.0.0/24", "via", "10.77.0.2"]);
    nodeb.run(&["ip", "addr", "add", "10.77.0.2/24", "dev", "e0"]);
    for i in 1..=3 {
        nodeb.run(&["ip", "addr", "add", &format!("{}/32", pod(i)), "dev", "lo"]);
    }
    nodeb.run(&["ip", "route", "add", "default", "via", "10.77.0.1"]);
    let agent = AgentProcess::builder(&node, "sn")
        .args(["--role", "node", "--node", "node-a", "--device", "ext0,nb0"])
        .args(["--watch-ms", "100"])
        .file_arg("--manifests", "manifests")
        .cgroup()
        .build();
    Bed {
        agent,
        client,
        _node: node,
        nodeb,
    }
}

#[test]
fn nodeport_faults_under_load_cost_no_requests_except_the_killed_pod() {
    let secs = env_u64("OXILIUM_SOAK_SECONDS", 4);
    let rate = env_u64("OXILIUM_SOAK_RATE", 400);
    let mut bed = bed();
    let dir = bed.agent.dir().to_path_buf();
    let mut servers: Vec<Server> = (1..=3)
        .map(|i| http_server(&bed.nodeb, pod(i), 8080, &dir, &format!("p{i}")))
        .collect();
    bed.agent
        .write_file("manifests/cluster.yaml", &manifests(&[1, 2, 3], &[]));
    bed.agent.start();
    let url = format!("http://{NODE4}:{NODE_PORT}/");
    let start = |b: &Bed| load(&b.client, &url, secs, rate);
    bed.agent
        .eventually(Duration::from_secs(10), "NodePort served", || {
            let w = load(&bed.client, &url, 1, 50).join().unwrap();
            if w.ok > 0 && w.errors == 0 {
                Ok(())
            } else {
                Err(w)
            }
        });

    let mut report = Vec::new();
    let kill = phase(
        &mut bed,
        &mut report,
        "agent SIGKILL + start",
        start,
        secs,
        |b| {
            b.agent.kill();
            std::thread::sleep(Duration::from_millis(300));
            b.agent.start();
        },
    );
    let restart = phase(
        &mut bed,
        &mut report,
        "agent SIGTERM + start",
        start,
        secs,
        |b| b.agent.restart(),
    );
    let removed = phase(
        &mut bed,
        &mut report,
        "p3 removed from the EndpointSlice",
        start,
        secs,
        |b| {
            b.agent
                .write_file("manifests/cluster.yaml", &manifests(&[1, 2], &[]))
        },
    );
    let bad = phase(
        &mut bed,
        &mut report,
        "malformed manifest written",
        start,
        secs,
        |b| {
            b.agent.write_file(
                "manifests/broken.yaml",
                "kind: Service\nmetadata: {name: [\n",
            )
        },
    );
    let last_error = bed.agent.status()["last_error"].clone();
    assert!(
        last_error
            .as_str()
            .is_some_and(|e| e.contains("broken.yaml")),
        "the malformed manifest was not reported: {last_error}"
    );
    std::fs::remove_file(dir.join("manifests/broken.yaml")).unwrap();
    bed.agent
        .eventually(Duration::from_secs(10), "folder applied again", || {
            let s = bed.agent.status();
            s["last_error"].is_null().then_some(()).ok_or(s)
        });
    // p2's server dies; 300 ms later its endpoint is marked not ready (the kubelet's readiness
    // probe and the EndpointSlice controller, compressed).
    let killed = phase(&mut bed, &mut report, "pod p2 killed", start, secs, |b| {
        servers[1].kill();
        std::thread::sleep(Duration::from_millis(300));
        b.agent
            .write_file("manifests/cluster.yaml", &manifests(&[1], &[2]))
    });
    println!("{}", report.join("\n"));
    let status = bed.agent.status_text();
    for (name, l) in [
        ("kill", &kill),
        ("restart", &restart),
        ("endpoint removed", &removed),
        ("malformed manifest", &bad),
    ] {
        assert!(
            l.ok > secs * rate / 4,
            "{name}: too few requests went through ({})\n{}\n{status}",
            l.ok,
            l.summary
        );
        assert!(
            (l.errors, l.other_status) == (0, 0),
            "{name}: requests failed ({} stalled)\n{}\n{}\n{status}\n{}",
            l.stalled(),
            report.join("\n"),
            l.summary,
            bed.agent.log()
        );
    }
    // New flows went to p2 for 300 ms plus the folder's debounce and apply (about 0.5 s); allow
    // 1.5 s for a loaded 2-core machine. After that nothing may fail.
    let bound = rate * 3 / 2 / 2 + 20;
    assert!(
        killed.errors + killed.other_status <= bound && killed.ok > secs * rate / 4,
        "killed pod: {killed:?} (bound {bound})\n{status}"
    );
}
