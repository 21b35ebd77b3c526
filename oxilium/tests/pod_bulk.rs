//! Multi-MiB transfers through the pod programs of `--socket-lb-host-netns-only` (the tc
//! translation on a pod's host-side veth) with segmentation and receive offloads left on: a
//! 32 MiB iperf3 upload and an 8 MiB curl download from one pod to a ClusterIP served by a pod of
//! the same node. Every packet of these flows is DNAT'ed at the client pod's veth and restored on
//! the way back; the `nonlinear` counter proves that GSO / GRO skbs were rewritten with only
//! their headers linear.
//!
//! ```text
//!  pod p3 (client) ─eth0──p3─ node (agent) ─p1──eth0─ pod p1 (iperf3 :5201, http :8000)
//!  10.244.3.2                                          10.244.1.2
//! ```
//! Kernel features: network namespaces, veth with TSO / GSO / GRO, IPv4 forwarding, TCX, BTF maps
//! (map-in-map, LRU hash), bpffs pinning, bpf_link pinning, cgroup v2 (the agent's socket LB),
//! bpf_skb_pull_data, bpf_l3/l4_csum_replace. Requires root and iperf3, curl, python3 (ci/setup).
mod support;

use oxilium::bpf::podlb;
use std::time::Duration;
use support::{
    agent::AgentProcess,
    bulk::{BulkServers, HTTP, IPERF, curl_download, iperf_upload},
    netns::{Netns, pod_ip, unique, wire_pod},
};

const NODE4: &str = "10.200.0.1";
const CIP4: &str = "10.96.0.20";

fn manifests() -> String {
    format!(
        r#"apiVersion: v1
kind: Node
metadata: {{name: node-a}}
status:
  addresses: [{{type: InternalIP, address: {NODE4}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: bulk, namespace: default}}
spec:
  clusterIP: {CIP4}
  ports:
    - {{name: iperf, port: {IPERF}, targetPort: {IPERF}, protocol: TCP}}
    - {{name: http, port: {HTTP}, targetPort: {HTTP}, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: bulk-IPv4
  namespace: default
  labels: {{kubernetes.io/service-name: bulk}}
addressType: IPv4
ports:
  - {{name: iperf, port: {IPERF}, protocol: TCP}}
  - {{name: http, port: {HTTP}, protocol: TCP}}
endpoints:
  - addresses: ["{}"]
    nodeName: node-a
    conditions: {{ready: true}}
"#,
        pod_ip(1, false)
    )
}

/// A pod-program counter (packets), from its pinned map.
fn pod_counter(agent: &AgentProcess, name: &str) -> u64 {
    let c = podlb::counters(agent.pins()).unwrap();
    c.iter().find(|(n, _)| *n == name).unwrap().1.packets
}

#[test]
fn multi_mib_transfers_with_offloads_on_through_the_pod_programs() {
    let p = unique("pb");
    let node = Netns::new(&format!("{p}n"));
    let server = Netns::new(&format!("{p}p1"));
    let client = Netns::new(&format!("{p}p3"));
    node.run(&["ip", "addr", "add", &format!("{NODE4}/32"), "dev", "lo"]);
    node.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    wire_pod(&node, &server, 1);
    wire_pod(&node, &client, 3);
    for (ns, dev) in [
        (&server, "eth0"),
        (&client, "eth0"),
        (&node, "p1"),
        (&node, "p3"),
    ] {
        ns.run(&[
            "ethtool", "-K", dev, "tso", "on", "gso", "on", "gro", "on", "tx", "on",
        ]);
    }
    let _servers = BulkServers::start(&server, &pod_ip(1, false).to_string());
    let mut agent = AgentProcess::builder(&node, "pb")
        .args(["--role", "node", "--node", "node-a", "--watch-ms", "100"])
        .args(["--socket-lb-host-netns-only"])
        .file_arg("--manifests", "manifests")
        .cgroup()
        .build();
    agent.write_file("manifests/bulk.yaml", &manifests());
    agent.start();
    agent.eventually(Duration::from_secs(20), "pod veths attached", || {
        let devs: Vec<String> = podlb::pinned(agent.pins())
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        (devs.contains(&"p1".to_string()) && devs.contains(&"p3".to_string()))
            .then_some(())
            .ok_or(devs)
    });
    agent.eventually(Duration::from_secs(20), "32 MiB uploaded", || {
        let got = iperf_upload(&client, CIP4, IPERF, "32M")?;
        (got >= 32 << 20)
            .then_some(())
            .ok_or(format!("{got} bytes"))
    });
    curl_download(&client, CIP4, HTTP);
    let status = agent.status();
    let (fwd, rep) = (pod_counter(&agent, "forward"), pod_counter(&agent, "reply"));
    // 40 MiB in ≤ 64 KiB GSO / GRO skbs: at least 640 translated packets one way; the other way
    // carries the acknowledgements and the download.
    assert!(fwd > 640 && rep > 100, "forward {fwd}, reply {rep}");
    assert_eq!(
        pod_counter(&agent, "error") + pod_counter(&agent, "no_backend"),
        0,
        "{status}"
    );
    let nonlinear = status["counters"]["nonlinear"]["packets"].as_u64().unwrap();
    println!("pod programs: forward {fwd}, reply {rep}, nonlinear {nonlinear}");
    assert!(nonlinear > 100, "nonlinear {nonlinear}: {status}");
}
