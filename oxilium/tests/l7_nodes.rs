//! L7 HTTP policy for traffic that reaches a pod through its node's stack: from a pod of another
//! node (native routing, VXLAN tunnel), from the node itself, and through a ClusterIP Service
//! whose backends are on several nodes. The Star Wars demo on the three-node bed of
//! support/cni_nodes.rs (identities and ipcache through etcd): tiefighter and xwing on node 1, a
//! deathstar on nodes 2 and 3 behind the Service `deathstar`, a second tiefighter on node 2.
//! The deathstar's ingress rule sends port 80 to the proxy of the deathstar's node, where the
//! to-pod program sends the packet back to the veth's ingress to be assigned to the proxy, and
//! `oxilium_l7_netdev` on the node's external and tunnel devices marks the connection's later
//! packets for the proxy's socket (datapath::stack_redirect).
//!
//! Kernel features: network namespaces, bridge, veth, vxlan (tunnel mode), tc BPF through TCX
//! links (≥ 6.6; two programs on one hook, ordered, TCX_NEXT) with bpf_redirect_peer and
//! bpf_redirect with BPF_F_INGRESS from tc egress, TCP early demultiplexing,
//! bpf_sk_lookup_tcp + bpf_sk_assign at tc ingress (≥ 5.7), IP_TRANSPARENT and SO_MARK sockets,
//! fwmark policy routing with a `local` route, hash-of-maps with LPM trie inner maps, cgroup v2;
//! the `etcd` and `curl` binaries. Requires root; fails (never skips) when it cannot set up.
mod support;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};
use support::{
    cni_nodes::{Nodes, Setup, node_ip, require_vxlan},
    deathstar::{Deathstar, curl, keep_alive, request},
    netns::Netns,
    peer::{PeerServers, tcp_ask},
};

/// The Service's ClusterIP.
const DEATHSTAR_CIP: &str = "10.96.0.20";

/// The pods of the bed (`web-<node>-<j>`), the Service in front of both deathstars, and the
/// deathstar's ingress: the empire (and, with `--allow-localhost policy`, the node itself) may
/// land on port 80 (HTTP rules, the proxy) and reach port 8080 (L4 only, no proxy).
const FILES: &str = r#"apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Pod, metadata: {name: web-1-0, namespace: default, labels: {org: empire, class: tiefighter}}}
  - {apiVersion: v1, kind: Pod, metadata: {name: web-1-1, namespace: default, labels: {org: alliance, class: xwing}}}
  - {apiVersion: v1, kind: Pod, metadata: {name: web-2-0, namespace: default, labels: {org: empire, class: deathstar}}}
  - {apiVersion: v1, kind: Pod, metadata: {name: web-2-1, namespace: default, labels: {org: empire, class: tiefighter}}}
  - {apiVersion: v1, kind: Pod, metadata: {name: web-3-0, namespace: default, labels: {org: empire, class: deathstar}}}
  - {apiVersion: v1, kind: Pod, metadata: {name: web-3-1, namespace: default, labels: {org: alliance, class: xwing}}}
---
apiVersion: v1
kind: Service
metadata: {name: deathstar, namespace: default}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, targetPort: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: deathstar-1, namespace: default, labels: {kubernetes.io/service-name: deathstar}}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints:
  - addresses: ["10.244.2.1"]
    nodeName: node-2
  - addresses: ["10.244.3.1"]
    nodeName: node-3
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
    - fromEndpoints: [{matchLabels: {org: empire}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules: {http: [{method: POST, path: /v1/request-landing}]}
    - fromEntities: [host]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules: {http: [{method: POST, path: /v1/request-landing}]}
    - fromEndpoints: [{matchLabels: {org: empire}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#;

/// The bed with the demo's servers: a deathstar (port 80) and a peer server (port 8080) in the
/// first pod of nodes 2 and 3.
struct Demo {
    // Servers stop before the bed goes.
    deathstars: Vec<Deathstar>,
    _l4: Vec<PeerServers>,
    b: Nodes,
}

impl Demo {
    fn new(tag: &str, extra: &[&str]) -> Demo {
        let b = Nodes::with(
            tag,
            2,
            extra,
            Setup {
                files: vec![("demo.yaml".into(), FILES.into())],
                etcd: true,
            },
        );
        let ip = |n: usize| -> IpAddr { b.pod_ips[n - 1][0].parse().unwrap() };
        let deathstars = (2..=3)
            .map(|n| Deathstar::start(&b.pods[n - 1][0], SocketAddr::new(ip(n), 80)))
            .collect();
        let l4 = (2..=3)
            .map(|n| {
                PeerServers::start(
                    &b.pods[n - 1][0],
                    &format!("deathstar-{n}"),
                    &[SocketAddr::new(ip(n), 8080)],
                )
            })
            .collect();
        let d = Demo {
            deathstars,
            _l4: l4,
            b,
        };
        // Until node 2 knows node 1's pods (ipcache through etcd) and the policy is in: the
        // tiefighter lands, the xwing does not get in.
        let landing = d.url(2, "/v1/request-landing");
        d.b.agents[1].eventually(Duration::from_secs(30), "the demo's verdicts", || {
            let tie = curl(
                d.pod(1, 0),
                &["-X", "POST", "-w", " %{http_code}", &landing],
            );
            let xwing = curl(
                d.pod(1, 1),
                &["-X", "POST", "-w", " %{http_code}", &landing],
            );
            (tie == (0, "Ship landed\n 200".into()) && xwing.0 != 0)
                .then_some(())
                .ok_or((tie, xwing))
        });
        for s in &d.deathstars {
            s.seen.lock().unwrap().clear();
        }
        d
    }

    fn pod(&self, node: usize, j: usize) -> &Netns {
        &self.b.pods[node - 1][j]
    }

    fn ip(&self, node: usize, j: usize) -> IpAddr {
        self.b.pod_ips[node - 1][j].parse().unwrap()
    }

    /// `http://<deathstar of node>PATH`.
    fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}{path}", self.b.pod_ips[node - 1][0])
    }

    /// Requests each deathstar (of nodes 2, 3) saw, with the peer they came from.
    fn seen(&self, node: usize) -> Vec<(String, IpAddr)> {
        self.deathstars[node - 2]
            .seen()
            .into_iter()
            .map(|s| (s.path, s.peer.ip()))
            .collect()
    }
}

/// One keep-alive connection: POST landing, PUT exhaust port, POST landing.
fn keep_alive_mix(ns: &Netns, landing: &str, exhaust: &str) -> String {
    keep_alive(
        ns,
        &[("POST", landing), ("PUT", exhaust), ("POST", landing)],
    )
}

/// The deathstar's ingress rule enforced by the proxy of its own node for a client on another
/// node (native routing), for the node itself (`--allow-localhost policy`, `fromEntities:
/// [host]`), and through the ClusterIP from both nodes' tiefighters (remote backends only from
/// node 1, a local and a remote one from node 2): landings answered by the deathstar, which sees
/// its node's address (the proxy's connection), exhaust-port PUTs answered 403 and never
/// reaching it, xwings denied at L3/L4, a keep-alive connection mixing both, port 8080 (no L7
/// rule) reached directly with the client's own address.
#[test]
fn starwars_across_nodes_and_service() {
    let d = Demo::new("l7n", &["--allow-localhost", "policy"]);
    let (landing, exhaust) = (
        d.url(2, "/v1/request-landing"),
        d.url(2, "/v1/exhaust-port"),
    );
    let tie = d.pod(1, 0);
    let node2: IpAddr = node_ip(2).parse().unwrap();

    // Pod of node 1 → pod of node 2, through node 2's proxy.
    assert_eq!(
        request(tie, "POST", &landing),
        (200, "Ship landed\n".into())
    );
    assert_eq!(
        request(tie, "PUT", &exhaust),
        (403, "Access denied\n".into())
    );
    assert_eq!(
        keep_alive_mix(tie, &landing, &exhaust),
        "200 1\n403 0\n200 0\n"
    );
    let landed = ("/v1/request-landing".to_string(), node2);
    assert_eq!(d.seen(2), vec![landed.clone(); 3]);
    let (code, out) = curl(d.pod(1, 1), &["-X", "POST", &landing]);
    assert_ne!(code, 0, "xwing got through: {out}");
    assert_eq!(d.seen(2).len(), 3);

    // No L7 rule on 8080: not proxied, the deathstar sees the tiefighter itself.
    let a = tcp_ask(
        tie,
        None,
        SocketAddr::new(d.ip(2, 0), 8080),
        Duration::from_secs(3),
    )
    .expect("tiefighter → deathstar:8080");
    assert_eq!((a.id.as_str(), a.peer), ("deathstar-2", d.ip(1, 0)));

    // The node itself (host identity under `--allow-localhost policy`): its packets carry a
    // local source address, which the stack refuses on the veth's ingress (no accept_local):
    // dropped, never let through unproxied.
    let host = &d.b.nodes[1];
    let (code, out) = curl(host, &["-X", "POST", &landing]);
    assert_ne!(code, 0, "the node got through: {out}");
    assert_eq!(d.seen(2), vec![landed.clone(); 3]);

    // Through the ClusterIP: the policy of the backend chosen, from node 1 (both backends
    // remote) and from node 2 (one local, one remote).
    let cip_landing = format!("http://{DEATHSTAR_CIP}/v1/request-landing");
    let cip_exhaust = format!("http://{DEATHSTAR_CIP}/v1/exhaust-port");
    for (client, name) in [(d.pod(1, 0), "node 1"), (d.pod(2, 1), "node 2")] {
        let before = (d.seen(2).len(), d.seen(3).len());
        for _ in 0..16 {
            assert_eq!(
                request(client, "POST", &cip_landing),
                (200, "Ship landed\n".into()),
                "{name}"
            );
        }
        let after = (d.seen(2).len(), d.seen(3).len());
        assert_eq!(after.0 + after.1 - before.0 - before.1, 16, "{name}");
        assert!(
            after.0 > before.0 && after.1 > before.1,
            "{name}: both backends: {before:?} → {after:?}"
        );
        for _ in 0..4 {
            assert_eq!(request(client, "PUT", &cip_exhaust).0, 403, "{name}");
        }
        assert_eq!((d.seen(2).len(), d.seen(3).len()), after, "{name}");
        assert_eq!(
            keep_alive_mix(client, &cip_landing, &cip_exhaust),
            "200 1\n403 0\n200 0\n",
            "{name}"
        );
    }
    // Every landing came from a proxy of the deathstar's own node.
    let node3: IpAddr = node_ip(3).parse().unwrap();
    assert!(d.seen(2).iter().all(|s| *s == landed), "{:?}", d.seen(2));
    let landed3 = ("/v1/request-landing".to_string(), node3);
    assert!(d.seen(3).iter().all(|s| *s == landed3), "{:?}", d.seen(3));
    // The xwings get nowhere through the ClusterIP either.
    let before = (d.seen(2).len(), d.seen(3).len());
    for xwing in [d.pod(1, 1), d.pod(3, 1)] {
        for _ in 0..4 {
            let (code, out) = curl(xwing, &["-X", "POST", &cip_landing]);
            assert_ne!(code, 0, "xwing got through: {out}");
        }
    }
    assert_eq!((d.seen(2).len(), d.seen(3).len()), before);
}

/// The same rule for a client on another node with VXLAN tunnel routing (`--routing tunnel`):
/// the packet reaches the deathstar's node out of the tunnel device and its stack, landing
/// allowed, exhaust port 403, the xwing denied. Then node 2's proxy is stopped (`--l7-proxy
/// false`): the redirected flow finds no listener and is dropped (fail closed), while port 8080
/// (no L7 rule) still works.
#[test]
fn starwars_across_nodes_tunnel_fails_closed() {
    require_vxlan();
    let mut d = Demo::new("l7t", &["--routing", "tunnel"]);
    let (landing, exhaust) = (
        d.url(2, "/v1/request-landing"),
        d.url(2, "/v1/exhaust-port"),
    );
    let node2: IpAddr = node_ip(2).parse().unwrap();
    assert_eq!(
        keep_alive_mix(d.pod(1, 0), &landing, &exhaust),
        "200 1\n403 0\n200 0\n"
    );
    let landed = ("/v1/request-landing".to_string(), node2);
    assert_eq!(d.seen(2), vec![landed; 2]);
    let (code, out) = curl(d.pod(1, 1), &["-X", "POST", &landing]);
    assert_ne!(code, 0, "xwing got through: {out}");

    let agent = &mut d.b.agents[1];
    agent.add_args(["--l7-proxy", "false"]);
    agent.restart();
    let to_l4 = SocketAddr::new(d.ip(2, 0), 8080);
    d.b.agents[1].eventually(Duration::from_secs(20), "node 2 back", || {
        tcp_ask(d.pod(1, 0), None, to_l4, Duration::from_secs(1)).map(|_| ())
    });
    let (code, out) = curl(d.pod(1, 0), &["-X", "POST", &landing]);
    assert_ne!(code, 0, "got through without the proxy: {out}");
    assert_eq!(d.seen(2).len(), 2, "{:?}", d.seen(2));
}
