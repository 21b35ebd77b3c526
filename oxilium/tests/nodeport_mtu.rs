//! The NodePort DSR tunnel and the MTU: an upload from a client through a DSR NodePort whose
//! node-to-node path has the clients' MTU (1500), so a full-sized client segment no longer fits
//! once wrapped in the tunnel's 24 (IPv4) / 40 (IPv6) bytes. node1's tc program answers such a
//! packet with ICMP "fragmentation needed" / ICMPv6 "packet too big" carrying the usable MTU
//! (1476 / 1460) instead of tunnelling it into a drop;
//! the client's TCP lowers its segment size and the upload completes (iperf3, 4 MiB). Once with
//! plain packets (GRO off on the node's device: every full segment is a single skb), once with
//! GSO skbs (client and node device at MTU 9000, GRO on: a GRO super-packet whose segments would
//! not fit the 1500-byte fabric is judged by its `gso_size`).
//!
//! Kernel features: network namespaces, veth (TSO / GSO / GRO), IPv4 forwarding, TCX, bpffs,
//! cgroup v2 (the agent's socket LB), bpf_fib_lookup with an MTU check (`mtu_result`),
//! bpf_skb_change_tail, bpf_skb_adjust_room (IP-in-IP and plain room), bpf_redirect. Requires
//! root and iperf3 (ci/setup).
mod support;

use serde_json::{Value, json};
use std::process::{Child, Stdio};
use support::{
    cluster::{Cluster, NODE1_EXT4, NODE1_EXT6, NODE1_FAB4, NODE1_FAB6, NODE2_FAB4, NODE2_FAB6},
    fake_api::Res,
    kube_agent::KubeAgent,
};

const IPERF: u16 = 5201;
const NODE_PORT: u16 = 30301;

fn nodes() -> [(Res, Value); 2] {
    let node = |name: &str, v4: &str, v6: &str| {
        let mut a =
            json!([{"type": "InternalIP", "address": v4}, {"type": "InternalIP", "address": v6}]);
        if name == "node1" {
            a.as_array_mut().unwrap().extend([
                json!({"type": "ExternalIP", "address": NODE1_EXT4}),
                json!({"type": "ExternalIP", "address": NODE1_EXT6}),
            ]);
        }
        (
            Res::Nodes,
            json!({"metadata": {"name": name}, "status": {"addresses": a}}),
        )
    };
    [
        node("node1", NODE1_FAB4, NODE1_FAB6),
        node("node2", NODE2_FAB4, NODE2_FAB6),
    ]
}

/// A dual-stack DSR NodePort Service for iperf3 served by pod p21 (on node2).
fn dsr_service(c: &Cluster) -> Vec<(Res, Value)> {
    let p = c.pod("p21");
    let svc = json!({
        "metadata": {"name": "up", "namespace": "default",
                     "annotations": {"service.cilium.io/forwarding-mode": "dsr"}},
        "spec": {
            "type": "NodePort", "clusterIP": "10.96.3.1", "clusterIPs": ["10.96.3.1", "fd96:3::1"],
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
            "ports": [{"name": "iperf", "port": IPERF, "targetPort": IPERF, "protocol": "TCP", "nodePort": NODE_PORT}],
        },
    });
    let mut out = vec![(Res::Services, svc)];
    for (fam, ty, addr) in [(4, "IPv4", p.v4), (6, "IPv6", p.v6)] {
        out.push((
            Res::EndpointSlices,
            json!({
                "metadata": {"name": format!("up-v{fam}"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "up"}},
                "addressType": ty,
                "ports": [{"name": "iperf", "port": IPERF, "protocol": "TCP"}],
                "endpoints": [{"addresses": [addr.to_string()], "nodeName": "node2",
                               "conditions": {"ready": true}}],
            }),
        ));
    }
    out
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Uploads 4 MiB with iperf3 through node1's NodePort on `front`; the bytes the server received.
fn upload(c: &Cluster, front: &str) -> Result<u64, String> {
    let out = c
        .client
        .command(&[
            "timeout",
            "60",
            "iperf3",
            "-c",
            front,
            "-p",
            &NODE_PORT.to_string(),
            "-n",
            "4M",
            "-J",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("iperf3: {e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    if !v["error"].is_null() {
        return Err(format!("iperf3: {}", v["error"]));
    }
    v["end"]["sum_received"]["bytes"]
        .as_u64()
        .ok_or_else(|| "iperf3: no result".to_string())
}

/// The MTU the client learnt towards `front` (its route cache), if any.
fn learnt_mtu(c: &Cluster, front: &str) -> Option<String> {
    let out = c.client.run(&["ip", "route", "get", front]);
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let mut w = s.split_whitespace();
    w.by_ref().find(|t| *t == "mtu")?;
    w.next().map(str::to_string)
}

/// Runs the upload over a bed prepared by `setup` (the fabric stays at 1500).
fn upload_through_dsr(setup: impl Fn(&Cluster)) {
    let c = Cluster::new([0, 1]);
    setup(&c);
    let p = c.pod("p21");
    p.ns.run(&[
        "ethtool", "-K", "eth0", "tso", "on", "gso", "on", "tx", "on",
    ]);
    let _server = Killed(
        p.ns.command(&["iperf3", "-s", "-p", &IPERF.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 -s"),
    );
    let mut k1 = KubeAgent::serve(&c.node1, "node1", &["ext0", "fab0"]);
    let mut k2 = KubeAgent::serve(&c.node2, "node2", &["fab0"]);
    for k in [&k1, &k2] {
        k.put(nodes());
        k.put(dsr_service(&c));
    }
    k2.start();
    k2.wait_local_endpoints(2);
    k1.start();
    // The usable MTU: 1500 − 24 (IPv4 outer header with the port option), 1500 − 40 (IPv6).
    for (front, usable) in [(NODE1_EXT4, "1476"), (NODE1_EXT6, "1460")] {
        let before = k1.counter("icmp_too_big_sent", true);
        k1.eventually(
            &format!("4 MiB uploaded to {front} through the DSR tunnel"),
            || {
                let got = upload(&c, front).map_err(|e| {
                    let s2 = k2.status();
                    format!(
                        "{e}; node2: {} {}",
                        s2["nodeport"]["counters"], s2["counters"]
                    )
                })?;
                (got >= 4 << 20).then_some(()).ok_or(format!("{got} bytes"))
            },
        );
        let s1 = k1.status();
        assert!(
            k1.counter("icmp_too_big_sent", true) > before,
            "{front}: {s1}"
        );
        assert_eq!(
            learnt_mtu(&c, front).as_deref(),
            Some(usable),
            "{front}: the client learnt the usable MTU"
        );
    }
    assert!(k1.counter("dsr", false) > 0, "{}", k1.status());
}

/// Plain (non-GSO) full-sized segments: GRO off on node1's device.
#[test]
fn dsr_upload_of_full_sized_packets_learns_the_tunnel_mtu() {
    upload_through_dsr(|c| {
        c.client
            .run(&["ethtool", "-K", "c0", "tso", "on", "gso", "on", "tx", "on"]);
        c.node1.run(&[
            "ethtool", "-K", "ext0", "gro", "off", "tso", "on", "tx", "on",
        ]);
    });
}

/// GSO skbs whose segments (MTU 9000 between client and node1) do not fit the fabric.
#[test]
fn dsr_upload_of_gso_packets_learns_the_tunnel_mtu() {
    upload_through_dsr(|c| {
        c.client.run(&["ip", "link", "set", "c0", "mtu", "9000"]);
        c.node1.run(&["ip", "link", "set", "ext0", "mtu", "9000"]);
        c.client
            .run(&["ethtool", "-K", "c0", "tso", "on", "gso", "on", "tx", "on"]);
        c.node1.run(&[
            "ethtool", "-K", "ext0", "gro", "on", "tso", "on", "tx", "on",
        ]);
    });
}
