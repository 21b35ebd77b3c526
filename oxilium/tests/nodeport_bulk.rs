//! Multi-MiB transfers through the NodePort tc programs with segmentation and receive offloads
//! left on (TSO / GSO skbs from the client and the pods, GRO on the node devices): to a pod of
//! the node (DNAT), to a pod of another node (SNAT) and through the DSR tunnel (IP-in-IP, the
//! service port in an IPv4 option), uploads (iperf3) and downloads (curl of an 8 MiB file from a
//! Python HTTP server). The `nonlinear` counter proves the programs rewrote skbs whose payload
//! stayed in page fragments: nothing linearises them.
//!
//! ```text
//!  client ─c0──ext0─ node1 (agent) ─fab0──fab0─ node2 (agent)
//!                     vp11 ─ p11                  vp21 ─ p21
//! ```
//! Kernel features: network namespaces, veth with TSO / GSO / GRO, IPv4 forwarding, TCX, BTF maps,
//! bpffs pinning, cgroup v2 (the agent's socket LB), bpf_skb_adjust_room IP-in-IP encapsulation
//! and decapsulation of GSO skbs (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 / DECAP_L3_IPV4, kernel ≥ 6.3),
//! bpf_skb_pull_data, bpf_redirect. Requires root and iperf3, curl, python3 (ci/setup).
mod support;

use serde_json::{Value, json};
use support::{
    bulk::{BulkServers, HTTP, IPERF, curl_download, iperf_upload},
    cluster::{Cluster, NODE1_EXT4, NODE1_FAB4, NODE1_FAB6, NODE2_FAB4, NODE2_FAB6},
    fake_api::Res,
    kube_agent::KubeAgent,
};

fn nodes() -> [(Res, Value); 2] {
    let node = |name: &str, v4: &str, v6: &str| {
        let mut a =
            json!([{"type": "InternalIP", "address": v4}, {"type": "InternalIP", "address": v6}]);
        if name == "node1" {
            a.as_array_mut()
                .unwrap()
                .push(json!({"type": "ExternalIP", "address": NODE1_EXT4}));
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

/// A NodePort Service `name` (IPv4) with the ports iperf (5201) and http (8000) on the NodePorts
/// `base + 1` and `base + 2`, served by `pod`; `dsr` sets the DSR annotation.
fn bulk_service(
    c: &Cluster,
    name: &str,
    n: u8,
    base: u16,
    pod: &str,
    dsr: bool,
) -> Vec<(Res, Value)> {
    let mut svc = json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "NodePort", "clusterIP": format!("10.96.1.{n}"),
            "ports": [
                {"name": "iperf", "port": IPERF, "targetPort": IPERF, "protocol": "TCP", "nodePort": base + 1},
                {"name": "http", "port": HTTP, "targetPort": HTTP, "protocol": "TCP", "nodePort": base + 2},
            ],
        },
    });
    if dsr {
        svc["metadata"]["annotations"] = json!({"service.cilium.io/forwarding-mode": "dsr"});
    }
    let p = c.pod(pod);
    let slice = json!({
        "metadata": {"name": format!("{name}-v4"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "iperf", "port": IPERF, "protocol": "TCP"},
                  {"name": "http", "port": HTTP, "protocol": "TCP"}],
        "endpoints": [{"addresses": [p.v4.to_string()], "nodeName": format!("node{}", p.node),
                       "conditions": {"ready": true}}],
    });
    vec![(Res::Services, svc), (Res::EndpointSlices, slice)]
}

/// Offloads on, explicitly: TSO / GSO / checksum offload on every veth end, GRO on the nodes'.
fn offloads_on(c: &Cluster) {
    c.client
        .run(&["ethtool", "-K", "c0", "tso", "on", "gso", "on", "tx", "on"]);
    for (ns, devs) in [(&c.node1, ["ext0", "fab0"]), (&c.node2, ["fab0", "fab0"])] {
        for d in devs {
            ns.run(&["ethtool", "-K", d, "gro", "on", "tso", "on", "tx", "on"]);
        }
    }
    for p in &c.pods {
        p.ns.run(&[
            "ethtool", "-K", "eth0", "tso", "on", "gso", "on", "tx", "on",
        ]);
    }
}

/// Local pod (DNAT), remote pod (SNAT) and remote pod through DSR, each with a 32 MiB upload and
/// an 8 MiB download; GSO / GRO skbs are translated without being linearised.
#[test]
fn multi_mib_transfers_with_offloads_on_through_local_snat_and_dsr_paths() {
    let c = Cluster::new([1, 1]);
    // The fabric carries the DSR tunnel: 24 bytes of headroom (outer IPv4 header + port option)
    // for full-sized segments that are not GSO skbs (GSO skbs get a smaller gso_size instead).
    for ns in [&c.node1, &c.node2] {
        ns.run(&["ip", "link", "set", "fab0", "mtu", "1600"]);
    }
    offloads_on(&c);
    let _s1 = BulkServers::start(&c.pod("p11").ns, &c.pod("p11").v4.to_string());
    let _s2 = BulkServers::start(&c.pod("p21").ns, &c.pod("p21").v4.to_string());
    let mut k1 = KubeAgent::serve(&c.node1, "node1", &["ext0", "fab0"]);
    let mut k2 = KubeAgent::serve(&c.node2, "node2", &["fab0"]);
    for k in [&k1, &k2] {
        k.put(nodes());
        k.put(bulk_service(&c, "local", 1, 30100, "p11", false));
        k.put(bulk_service(&c, "remote", 2, 30110, "p21", false));
        k.put(bulk_service(&c, "dsr", 3, 30120, "p21", true));
    }
    k2.start();
    k2.wait_local_endpoints(1);
    k1.start();
    k1.wait_local_endpoints(1);
    for (base, what) in [(30100, "local"), (30110, "snat"), (30120, "dsr")] {
        k1.eventually(&format!("{what}: 32 MiB uploaded"), || {
            let got = iperf_upload(&c.client, NODE1_EXT4, base + 1, "32M").map_err(|e| {
                let s2 = k2.status();
                format!(
                    "{e}; node2: {} {}",
                    s2["nodeport"]["counters"], s2["counters"]
                )
            })?;
            (got >= 32 << 20)
                .then_some(())
                .ok_or(format!("{got} bytes"))
        });
        curl_download(&c.client, NODE1_EXT4, base + 2);
    }
    let (s1, s2) = (k1.status(), k2.status());
    for (k, name) in [
        (&k1, "local"),
        (&k1, "remote"),
        (&k1, "dsr"),
        (&k2, "dsr_in"),
    ] {
        assert!(k.counter(name, false) > 0, "{name}: {s1}\n{s2}");
    }
    // Translated in place with only the headers linear, on both nodes (node2: the tunnel's GSO
    // skbs, decapsulated and DNAT'ed).
    assert!(k1.counter("nonlinear", true) > 100, "{s1}");
    assert!(k2.counter("nonlinear", true) > 10, "{s2}");
    assert_eq!(k1.counter("error", false), 0, "{s1}");
    assert_eq!(k2.counter("error", false), 0, "{s2}");
}
