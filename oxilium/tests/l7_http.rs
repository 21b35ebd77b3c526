//! L7 HTTP policy on real traffic: the Star Wars demo as pods made through the CNI plugin, with
//! `curl` and raw HTTP/1.1 clients. The endpoint programs redirect flows with HTTP rules to the
//! agent's HTTP proxy (bpf_sk_assign to a transparent listener); the proxy allows or answers 403
//! per request; its records reach `oxilium monitor --type l7`.
//!
//! Kernel features: network namespaces, veth, tc BPF through TCX links (≥ 6.6) with
//! bpf_redirect_peer, bpf_sk_lookup_tcp + bpf_sk_assign at tc ingress (≥ 5.7), IP_TRANSPARENT
//! and SO_MARK sockets, fwmark policy routing with a `local` route, hash-of-maps with LPM trie
//! inner maps, cgroup v2. Requires root and curl; fails (never skips) when it cannot set up.
mod support;

use serde_json::Value;
use std::{
    io::{BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};
use support::{
    deathstar::{Deathstar, PODS, curl, keep_alive, read_response, request},
    monitor::Monitor,
    netns::Netns,
    policy_bed::{NODE_IP, PolicyNode},
};

/// A pod beside the demo's (deathstar::PODS).
const OUTPOST: &str = "apiVersion: v1
kind: Pod
metadata: {name: outpost, namespace: default, labels: {class: outpost}}
";

/// The demo's rule1 (ingress of the deathstar), with `extra` more HTTP rules.
fn rule1(extra: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: rule1, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{org: empire, class: deathstar}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{org: empire}}}}]
      toPorts:
        - ports: [{{port: \"80\", protocol: TCP}}]
          rules:
            http:
              - {{method: POST, path: /v1/request-landing}}
              - {{method: GET, path: /v1/stream, headers: [\"Upgrade: echo\"]}}
{extra}"
    )
}

/// The tiefighter's egress: the deathstar at L4, the outpost's public paths at L7.
const EGRESS: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tiefighter-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: tiefighter}}
  egress:
    - toEndpoints: [{matchLabels: {class: deathstar}}]
      toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]
    - toEndpoints: [{matchLabels: {class: outpost}}]
      toPorts:
        - ports: [{port: \"80\", protocol: TCP}]
          rules:
            http: [{method: GET, path: \"/public.*\"}]
";

fn files(rules: &str) -> Vec<(String, String)> {
    vec![
        ("10-pods.yaml".into(), PODS.into()),
        ("11-outpost.yaml".into(), OUTPOST.into()),
        ("20-rule1.yaml".into(), rules.into()),
        ("30-egress.yaml".into(), EGRESS.into()),
    ]
}

struct Demo {
    node: PolicyNode,
    deathstar: Deathstar,
    outpost: Deathstar,
}

impl Demo {
    fn new(tag: &str, extra: &[&str]) -> Demo {
        let mut node = PolicyNode::new(tag, &files(&rule1("")), extra);
        for p in ["deathstar", "tiefighter", "xwing", "outpost"] {
            node.add_pod(&format!("default/{p}"));
        }
        let deathstar = Deathstar::start(ns(&node, "deathstar"), addr(&node, "deathstar"));
        let outpost = Deathstar::start(ns(&node, "outpost"), addr(&node, "outpost"));
        Demo {
            node,
            deathstar,
            outpost,
        }
    }

    fn url(&self, pod: &str, path: &str) -> String {
        format!("http://{}{path}", addr(&self.node, pod))
    }
}

fn ns<'a>(node: &'a PolicyNode, pod: &str) -> &'a Netns {
    &node.pods[&format!("default/{pod}")].ns
}

fn addr(node: &PolicyNode, pod: &str) -> SocketAddr {
    SocketAddr::new(node.pods[&format!("default/{pod}")].ip, 80)
}

/// A TCP connection made inside `ns` (it stays in that namespace).
fn connect(ns: &Netns, to: SocketAddr) -> TcpStream {
    let s = ns.exec(move || TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn l7_records(m: &Monitor) -> Vec<Value> {
    m.records()
        .into_iter()
        .filter(|r| r["flow"]["event_type"]["type"] == "l7")
        .collect()
}

/// The demo: xwing denied at L3/L4, tiefighter's landing allowed and its exhaust-port PUT
/// answered 403, a keep-alive connection mixing both, pipelined requests with a chunked body, an
/// allowed upgrade, the egress proxy, a policy change seen by the next request of an open
/// connection, and the access records in `oxilium monitor`.
#[test]
fn starwars_demo_ingress_and_egress() {
    let d = Demo::new("l7demo", &[]);
    let node = &d.node;
    let mon = Monitor::start(
        &node.node,
        node.agent.socket(),
        &["--type", "l7", "-o", "json"],
    );
    let (tie, xwing) = (ns(node, "tiefighter"), ns(node, "xwing"));
    let landing = d.url("deathstar", "/v1/request-landing");
    let exhaust = d.url("deathstar", "/v1/exhaust-port");

    // xwing: no rule allows it at L3/L4 — its SYN is dropped, nothing reaches the deathstar.
    let (code, out) = curl(xwing, &["-X", "POST", &landing]);
    assert_ne!(code, 0, "xwing got through: {out}");
    assert!(d.deathstar.seen().is_empty(), "{:?}", d.deathstar.seen());

    // tiefighter: the landing is allowed, the exhaust port is not.
    assert_eq!(
        request(tie, "POST", &landing),
        (200, "Ship landed\n".into())
    );
    let (status, body) = request(tie, "PUT", &exhaust);
    assert_eq!((status, body.as_str()), (403, "Access denied\n"));
    let seen = d.deathstar.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/v1/request-landing");
    // The deathstar is reached by the proxy (from the node), not by the tiefighter itself.
    assert_eq!(seen[0].peer.ip(), NODE_IP.parse::<IpAddr>().unwrap());

    // One keep-alive connection: allowed and denied requests mixed, one connect.
    let root = d.url("deathstar", "/");
    let out = keep_alive(
        tie,
        &[
            ("POST", &landing),
            ("PUT", &exhaust),
            ("POST", &landing),
            ("GET", &root),
        ],
    );
    assert_eq!(
        out, "200 1\n403 0\n200 0\n403 0\n",
        "status and new connections per request"
    );
    let seen = d.deathstar.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        seen[1].peer, seen[2].peer,
        "one upstream connection per client connection"
    );

    // Pipelined requests in one write, the first with a chunked body: answered in order.
    let mut s = connect(tie, addr(node, "deathstar"));
    s.write_all(
        b"POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
          PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 3\r\n\r\nabc\
          POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 2\r\n\r\nhi",
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let got: Vec<(u16, String)> = (0..3).map(|_| read_response(&mut r)).collect();
    assert_eq!(
        got,
        vec![
            (200, "Ship landed\n".into()),
            (403, "Access denied\n".into()),
            (200, "Ship landed\n".into()),
        ]
    );
    let seen = d.deathstar.seen();
    let lens: Vec<usize> = seen[3..].iter().map(|s| s.body_len).collect();
    assert_eq!(lens, vec![11, 2], "bodies as received: {seen:?}");

    // A policy change applies to the next request of this open connection.
    node.agent.write_file(
        "manifests/20-rule1.yaml",
        &rule1("              - {method: PUT, path: /v1/exhaust-port}\n"),
    );
    let t = Instant::now();
    loop {
        s.write_all(
            b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let (status, body) = read_response(&mut r);
        if status == 200 {
            assert_eq!(body, "Panic: deathstar exploded\n");
            break;
        }
        assert_eq!(status, 403);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the new rule never applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop((r, s));

    // An allowed upgrade is passed through: after 101, bytes go both ways.
    let mut s = connect(tie, addr(node, "deathstar"));
    s.write_all(b"GET /v1/stream HTTP/1.1\r\nHost: deathstar\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(read_response(&mut r).0, 101);
    s.write_all(b"ping through the proxy").unwrap();
    let mut echo = [0u8; 22];
    r.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping through the proxy");
    drop((r, s));

    // Egress: the tiefighter's own rules, in its egress proxy.
    let public = d.url("outpost", "/public/info");
    let (status, body) = request(tie, "GET", &public);
    assert_eq!(
        (status, body.as_str()),
        (200, "deathstar GET /public/info body=0\n")
    );
    assert_eq!(request(tie, "GET", &d.url("outpost", "/private")).0, 403);
    let seen = d.outpost.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].peer.ip(), NODE_IP.parse::<IpAddr>().unwrap());
    // xwing has no egress rules; the outpost no ingress rules: direct, no proxy.
    assert_eq!(request(xwing, "GET", &d.url("outpost", "/private")).0, 200);
    let seen = d.outpost.seen();
    assert_eq!(seen[1].peer.ip(), node.pods["default/xwing"].ip);

    // The proxy's records: allowed and denied requests, both proxies, with identities.
    let recs = mon.wait(Duration::from_secs(5), "l7 records", |r| {
        r.iter().any(|v| {
            v["flow"]["l7"]["http"]["url"]
                .as_str()
                .is_some_and(|u| u.ends_with("/private"))
        })
    });
    let recs: Vec<&Value> = recs
        .iter()
        .filter(|r| r["flow"]["event_type"]["type"] == "l7")
        .collect();
    let denied = recs
        .iter()
        .find(|r| {
            r["flow"]["l7"]["http"]["method"] == "PUT" && r["flow"]["l7"]["http"]["code"] == 403
        })
        .unwrap_or_else(|| panic!("no denied PUT: {recs:?}"));
    assert_eq!(denied["flow"]["verdict"], "DROPPED");
    assert_eq!(denied["flow"]["Type"], "L7");
    assert_eq!(denied["flow"]["program"], "http-proxy-ingress");
    assert_eq!(denied["flow"]["source"]["pod_name"], "default/tiefighter");
    assert_eq!(
        denied["flow"]["destination"]["pod_name"],
        "default/deathstar"
    );
    assert!(denied["flow"]["source"]["identity"].as_u64().unwrap() >= 256);
    let allowed = recs
        .iter()
        .find(|r| {
            r["flow"]["l7"]["http"]["url"]
                .as_str()
                .is_some_and(|u| u.ends_with("/public/info"))
        })
        .unwrap();
    assert_eq!(allowed["flow"]["verdict"], "FORWARDED");
    assert_eq!(allowed["flow"]["program"], "http-proxy-egress");
    assert_eq!(allowed["flow"]["l7"]["http"]["code"], 200);
    let _ = l7_records(&mon);
}

/// With the proxies off (`--l7-proxy false`), a flow an L7 rule redirects finds no listener and
/// is dropped: never let through without its proxy. Flows without L7 rules still pass.
#[test]
fn proxy_down_fails_closed() {
    let d = Demo::new("l7down", &["--l7-proxy", "false"]);
    let tie = ns(&d.node, "tiefighter");
    let (code, out) = curl(
        tie,
        &["-X", "POST", &d.url("deathstar", "/v1/request-landing")],
    );
    assert_ne!(code, 0, "got through without the proxy: {out}");
    let (code, out) = curl(tie, &[&d.url("outpost", "/public/info")]);
    assert_ne!(code, 0, "got through without the proxy: {out}");
    assert!(d.deathstar.seen().is_empty() && d.outpost.seen().is_empty());
    // The xwing's flow to the outpost has no L7 rule: unaffected.
    assert_eq!(
        request(ns(&d.node, "xwing"), "GET", &d.url("outpost", "/x")).0,
        200
    );
}

/// HTTP rules over IPv6 (dual-stack pods, `curl -6`): the tiefighter's landing is answered by
/// the deathstar through the proxy, its exhaust-port PUT answered 403 and never delivered, the
/// xwing denied at L3/L4.
///
/// Kernel features (besides the file's): IPv6 on veth, `bpf_sk_lookup_tcp` with an IPv6 tuple
/// and `bpf_sk_assign` of an IPv6 SYN at tc ingress, an `IPV6_TRANSPARENT` listener on `[::1]`,
/// the IPv6 fwmark rule and `local ::/0` route of table 2005.
#[test]
fn http_over_ipv6() {
    const NODE_IP6: &str = "fd00:200::1";
    let mut node = PolicyNode::new(
        "l7v6",
        &files(&rule1("")),
        &["--pod-cidr", "fd00:250::/120"],
    );
    // The node's own IPv6 address: the source of the proxy's upstream connections.
    node.node
        .run(&["ip", "addr", "add", &format!("{NODE_IP6}/128"), "dev", "lo"]);
    for p in ["deathstar", "tiefighter", "xwing"] {
        node.add_pod(&format!("default/{p}"));
    }
    let v6 = |pod: &str| -> IpAddr {
        let ips = &node.pods[&format!("default/{pod}")].ips;
        *ips.iter()
            .find(|a| a.is_ipv6())
            .unwrap_or_else(|| panic!("{pod} has no IPv6 address: {ips:?}"))
    };
    let deathstar = Deathstar::start(ns(&node, "deathstar"), SocketAddr::new(v6("deathstar"), 80));
    let url = |path: &str| format!("http://[{}]{path}", v6("deathstar"));
    let curl6 = |pod: &str, method: &str, path: &str| {
        let (code, out) = curl(
            ns(&node, pod),
            &["-6", "-X", method, "-w", "\n%{http_code}", &url(path)],
        );
        (code, out)
    };

    node.wait_ipv6_ready();
    let (code, out) = curl6("tiefighter", "POST", "/v1/request-landing");
    assert_eq!(code, 0, "curl -6: {out}\n{}", node.agent.log());
    assert_eq!(out, "Ship landed\n\n200");
    let (code, out) = curl6("tiefighter", "PUT", "/v1/exhaust-port");
    assert_eq!((code, out.as_str()), (0, "Access denied\n\n403"));
    let (code, out) = curl6("xwing", "POST", "/v1/request-landing");
    assert_ne!(code, 0, "xwing got through: {out}");

    let seen = deathstar.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/request-landing")
    );
    // The proxy's connection, from the node's address.
    assert_eq!(seen[0].peer.ip(), NODE_IP6.parse::<IpAddr>().unwrap());
}
