//! SNAT port reuse on the NodePort path, end to end with the real node agent: sequential
//! connect-then-RST connections from one client to a NodePort whose only endpoint is a pod of
//! another node, so every flow is DNAT'ed and SNAT'ed to the node's address, many times the SNAT
//! range (automatic: below the node namespace's ip_local_port_range, set to 10000-65535, so 8976
//! ports). `OXILIUM_CHURN` sets the count (default 20 000).
//!
//! ```text
//!  client ─c0──ext0─ node-a (agent --device ext0,nb0) ─nb0──e0─ node-b: pod 10.99.0.5:8080
//!  198.51.100.2      198.51.100.1            10.77.0.1     10.77.0.2
//! ```
//! Kernel features: network namespaces, veth, TCX, bpf_fib_lookup, bpf_redirect, cgroup v2
//! sock_addr programs, BTF maps, LRU hash, bpffs. Requires root: fails (never skips) when it
//! cannot set up.
mod support;

use std::{net::SocketAddr, time::Duration};
use support::{
    agent::AgentProcess,
    churn::{Sink, churn, count},
    netns::{Netns, unique, veth},
};

const NODE4: &str = "198.51.100.1";
const POD: &str = "10.99.0.5";

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
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  ports:
    - {{name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}}
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
  - addresses: ["{POD}"]
    nodeName: node-b
    conditions: {{ready: true}}
"#
    )
}

#[test]
fn nodeport_snat_short_connections_never_exhaust_ports() {
    let p = unique("nc");
    let client = Netns::new(&format!("{p}c"));
    let node = Netns::new(&format!("{p}n"));
    let nodeb = Netns::new(&format!("{p}b"));
    veth(&client, "c0", &node, "ext0");
    veth(&node, "nb0", &nodeb, "e0");
    client.run(&["ip", "addr", "add", "198.51.100.2/24", "dev", "c0"]);
    client.run(&["ip", "route", "add", "default", "via", NODE4]);
    client.run(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"]);
    node.run(&["ip", "addr", "add", &format!("{NODE4}/24"), "dev", "ext0"]);
    node.run(&["ip", "addr", "add", "10.77.0.1/24", "dev", "nb0"]);
    node.run(&[
        "ip",
        "route",
        "add",
        &format!("{POD}/32"),
        "via",
        "10.77.0.2",
    ]);
    node.run(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65535"]);
    nodeb.run(&["ip", "addr", "add", "10.77.0.2/24", "dev", "e0"]);
    nodeb.run(&["ip", "addr", "add", &format!("{POD}/32"), "dev", "lo"]);
    nodeb.run(&["ip", "route", "add", "default", "via", "10.77.0.1"]);
    let _sink = Sink::start(&nodeb, SocketAddr::new(POD.parse().unwrap(), 8080));
    let mut agent = AgentProcess::builder(&node, "nc")
        .args(["--role", "node", "--node", "node-a", "--device", "ext0,nb0"])
        .args(["--watch-ms", "100"])
        .file_arg("--manifests", "manifests")
        .cgroup()
        .build();
    agent.write_file("manifests/cluster.yaml", &manifests());
    agent.start();
    let to = SocketAddr::new(NODE4.parse().unwrap(), 30080);
    agent.eventually(Duration::from_secs(10), "NodePort served", || {
        let r = churn(&client, to, 1, Duration::from_secs(2));
        if r.ok == 1 {
            Ok(())
        } else {
            Err(r.first_error)
        }
    });
    let n = count(20_000);
    let r = churn(&client, to, n, Duration::from_secs(3));
    let status = agent.status();
    let c = |name: &str| status["counters"][name]["packets"].as_u64().unwrap();
    println!(
        "NodePort SNAT: {} ok, {} failed in {:.1?} ({:.0} conn/s); snat_exhausted {}, snat_reuse {}; maps {}",
        r.ok,
        r.failed,
        r.elapsed,
        r.rate(),
        c("snat_exhausted"),
        c("snat_reuse"),
        status["maps"]
    );
    assert_eq!(
        (r.failed, c("snat_exhausted")),
        (0, 0),
        "{:?} at {:?}\n{status:#}\n{}",
        r.first_error,
        r.failures,
        agent.log()
    );
    assert!(c("snat_reuse") > 0, "{status:#}");
    assert!(
        status["nodeport"]["counters"]["remote"]["packets"]
            .as_u64()
            .unwrap()
            >= n as u64,
        "{status:#}"
    );
}
