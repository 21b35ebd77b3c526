//! `oxilium explain` on a node's pod path (the endpoint programs of `--cni`): for packets leaving
//! a pod it names the program, the Service and backend, both identities, the policy entry that
//! decided each check (and the policy it came from), the verdict and, for a flow handed to the
//! HTTP proxy, the proxy's answer to a request. Its answers agree with real traffic (an allowed
//! flow, a flow denied by a deny rule (L3), one denied for its port (L4), a ClusterIP translated
//! to its backend, a Service without backends, L7 allowed and answered 403) and it changes
//! nothing: every live map (bpftool dumps, inner policy maps and per-CPU counters included) is
//! the same before and after.
//!
//! Kernel features: network namespaces, veth, tc BPF through TCX links with bpf_redirect_peer,
//! BPF_PROG_TEST_RUN for tc with an `__sk_buff` context (ifindex), hash-of-maps with LPM trie
//! inner maps, bpf_sk_lookup_tcp + bpf_sk_assign, BPF ring buffers, cgroup v2, bpffs pinning.
//! Requires root, bpftool; fails (never skips) when it cannot set up.
mod support;

use serde_json::Value;
use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};
use support::{
    deathstar::{Deathstar, PODS},
    map_dump,
    netns::Netns,
    policy_bed::{PolicyNode, probe_all},
};

/// The `web` pod and the policies, beside the demo's pods (deathstar::PODS).
const FILES: &str = "apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
    - fromEndpoints: [{matchLabels: {org: empire}}]
      toPorts:
        - ports: [{port: \"80\", protocol: TCP}]
          rules:
            http: [{method: POST, path: /v1/request-landing}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {class: tiefighter}}]
      toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {class: xwing}}]
";

const WEB_VIP: &str = "10.96.0.10";
const EMPTY_VIP: &str = "10.96.0.11";

/// Two ClusterIP Services: `web` (80 → web:8080) and `empty` (no endpoints).
fn services(web: IpAddr) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {WEB_VIP}
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
  - addresses: [\"{web}\"]
    nodeName: node-a
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: default}}
spec:
  clusterIP: {EMPTY_VIP}
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
"
    )
}

fn explain(node: &PolicyNode, from: &str, to: &str, port: u16, http: &[&str]) -> Value {
    let port = port.to_string();
    let mut a = vec!["explain", "--from", from, "--to", to, "--port", &port];
    if !http.is_empty() {
        a.push("--http");
        a.extend_from_slice(http);
    }
    node.agent.cli(&a)
}

/// The policy check of `dir` (INGRESS / EGRESS) in an explain report.
fn check<'a>(e: &'a Value, dir: &str) -> &'a Value {
    e["policy"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["direction"] == dir)
        .unwrap_or_else(|| panic!("no {dir} check: {e:#}"))
}

/// One HTTP/1.1 request over a new connection made inside `ns`: the response's status.
fn http_status(ns: &Netns, to: SocketAddr, method: &str, path: &str) -> u16 {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n\r\n");
    ns.exec(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {line:?}"))
    })
}

#[test]
fn explain_pod_paths_agree_with_real_packets_and_change_nothing() {
    let mut node = PolicyNode::new(
        "xpod",
        &[
            ("10-pods.yaml".into(), PODS.into()),
            ("11-web.yaml".into(), FILES.into()),
        ],
        &[],
    );
    for p in ["deathstar", "tiefighter", "xwing", "web"] {
        node.add_pod(&format!("default/{p}"));
    }
    let ip = |node: &PolicyNode, p: &str| node.pods[&format!("default/{p}")].ip;
    let (web, ds, tie_ip) = (
        ip(&node, "web"),
        ip(&node, "deathstar"),
        ip(&node, "tiefighter"),
    );
    let _deathstar = Deathstar::start(&node.pods["default/deathstar"].ns, (ds, 80).into());
    node.serve("default/web", "web", (web, 8080).into());
    node.serve("default/web", "web", (web, 9090).into());
    node.agent
        .write_file("manifests/20-services.yaml", &services(web));
    let ns = |p: &str| node.pods[&format!("default/{p}")].ns.path();
    let vip: SocketAddr = format!("{WEB_VIP}:80").parse().unwrap();
    // Ready: the Service answers, web's ingress policy is enforced.
    node.agent
        .eventually(Duration::from_secs(15), "service and policy in", || {
            let r = probe_all(
                vec![
                    (ns("tiefighter"), vip, false),
                    (ns("xwing"), (web, 8080).into(), false),
                ],
                Duration::from_millis(500),
                2,
            );
            (r[0].as_deref() == Ok("web") && r[1].is_err())
                .then_some(())
                .ok_or(format!("{r:?}"))
        });
    let ids: std::collections::BTreeMap<String, u64> = node
        .agent
        .cli(&["endpoint", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["pod"].as_str().unwrap().to_string(),
                e["identity"].as_u64().unwrap(),
            )
        })
        .collect();
    let id = |p: &str| ids[&format!("default/{p}")];
    let web_s = web.to_string();
    let ds_s = ds.to_string();

    let before = map_dump::dump_all(node.agent.pins());
    // Allowed: tiefighter's own port entry in web's ingress (L3-L4), delivered to web.
    let allowed = explain(&node, "default/tiefighter", &web_s, 8080, &[]);
    let denied_l3 = explain(&node, "default/xwing", &web_s, 8080, &[]);
    let denied_l4 = explain(&node, &tie_ip.to_string(), &web_s, 9090, &[]);
    let via_vip = explain(&node, "default/tiefighter", "default/web", 80, &[]);
    let no_backend = explain(&node, "default/tiefighter", EMPTY_VIP, 80, &[]);
    let landing = explain(
        &node,
        "default/tiefighter",
        &ds_s,
        80,
        &["POST", "/v1/request-landing"],
    );
    let exhaust = explain(
        &node,
        "default/tiefighter",
        &ds_s,
        80,
        &["PUT", "/v1/exhaust-port"],
    );
    let after = map_dump::dump_all(node.agent.pins());
    assert!(
        before.keys().any(|k| k.starts_with("OXI_POLICY["))
            && before.contains_key("OXI_POLICY_CT")
            && before.contains_key("OXI_SNAT"),
        "the dump misses the policy maps: {:?}",
        before.keys().collect::<Vec<_>>()
    );
    let changed = map_dump::changed(&before, &after);
    assert!(changed.is_empty(), "explain changed live maps: {changed:?}");

    // What explain said.
    assert_eq!(
        allowed["program"], "oxilium_endpoint_from_pod",
        "{allowed:#}"
    );
    assert_eq!(
        allowed["source"]["pod"], "default/tiefighter",
        "{allowed:#}"
    );
    assert_eq!(
        allowed["source"]["identity"],
        id("tiefighter"),
        "{allowed:#}"
    );
    assert_eq!(allowed["destination"]["pod"], "default/web", "{allowed:#}");
    assert_eq!(allowed["destination"]["identity"], id("web"), "{allowed:#}");
    assert_eq!(allowed["destination"]["local"], true, "{allowed:#}");
    let ing = check(&allowed, "INGRESS");
    assert_eq!(ing["verdict"], "allowed", "{allowed:#}");
    assert_eq!(ing["match"], "L3-L4", "{allowed:#}");
    assert_eq!(ing["entry"]["identity"], id("tiefighter"), "{allowed:#}");
    assert_eq!(ing["entry"]["port"], 8080, "{allowed:#}");
    assert_eq!(ing["entry"]["action"], "allow", "{allowed:#}");
    assert!(
        ing["entry"]["origins"].to_string().contains("web-ingress"),
        "{allowed:#}"
    );
    assert_eq!(allowed["verdict"], "TC_ACT_REDIRECT", "{allowed:#}");
    assert!(
        allowed["outcome"]
            .as_str()
            .unwrap()
            .starts_with("delivered to the pod"),
        "{allowed:#}"
    );

    let ing = check(&denied_l3, "INGRESS");
    assert_eq!(ing["verdict"], "denied", "{denied_l3:#}");
    assert_eq!(ing["reason"], "POLICY_DENY", "{denied_l3:#}");
    assert_eq!(ing["match"], "L3-Only", "{denied_l3:#}");
    assert_eq!(ing["entry"]["action"], "deny", "{denied_l3:#}");
    assert_eq!(ing["entry"]["identity"], id("xwing"), "{denied_l3:#}");
    assert_eq!(denied_l3["verdict"], "TC_ACT_SHOT", "{denied_l3:#}");

    let ing = check(&denied_l4, "INGRESS");
    assert_eq!(ing["verdict"], "denied", "{denied_l4:#}");
    assert_eq!(ing["reason"], "POLICY_DENIED", "{denied_l4:#}");
    assert_eq!(ing["match"], "none", "{denied_l4:#}");
    assert_eq!(
        denied_l4["source"]["pod"], "default/tiefighter",
        "{denied_l4:#}"
    );
    assert_eq!(denied_l4["verdict"], "TC_ACT_SHOT", "{denied_l4:#}");

    assert!(
        via_vip["service"]["name"]
            .as_str()
            .unwrap_or("")
            .contains("web"),
        "{via_vip:#}"
    );
    assert_eq!(
        via_vip["backend"]["address"],
        format!("{web}:8080"),
        "{via_vip:#}"
    );
    assert_eq!(via_vip["output"]["destination"], web_s, "{via_vip:#}");
    assert_eq!(via_vip["output"]["destination_port"], 8080, "{via_vip:#}");
    assert_eq!(
        check(&via_vip, "INGRESS")["verdict"],
        "allowed",
        "{via_vip:#}"
    );
    assert_eq!(via_vip["verdict"], "TC_ACT_REDIRECT", "{via_vip:#}");

    assert_eq!(no_backend["drop"]["reason"], "no_backend", "{no_backend:#}");
    assert_eq!(
        no_backend["why"], "the service has no usable backend",
        "{no_backend:#}"
    );
    assert_eq!(no_backend["verdict"], "TC_ACT_SHOT", "{no_backend:#}");

    for (e, allowed_l7) in [(&landing, true), (&exhaust, false)] {
        let ing = check(e, "INGRESS");
        assert_eq!(ing["verdict"], "redirected", "{e:#}");
        assert_eq!(ing["entry"]["action"], "redirect", "{e:#}");
        let port = ing["entry"]["proxy_port"].as_u64().unwrap_or(0);
        assert_ne!(port, 0, "{e:#}");
        assert_eq!(
            e["outcome"],
            format!("redirected to the ingress HTTP proxy on port {port}"),
            "{e:#}"
        );
        assert_eq!(e["l7"]["allowed"], allowed_l7, "{e:#}");
        assert_eq!(e["l7"]["proxy"], "ingress", "{e:#}");
    }
    assert_eq!(exhaust["l7"]["status"], "403 Access denied", "{exhaust:#}");

    // The same packets for real.
    let empty: SocketAddr = format!("{EMPTY_VIP}:80").parse().unwrap();
    let r = probe_all(
        vec![
            (ns("tiefighter"), (web, 8080).into(), false),
            (ns("xwing"), (web, 8080).into(), false),
            (ns("tiefighter"), (web, 9090).into(), false),
            (ns("tiefighter"), vip, false),
            (ns("tiefighter"), empty, false),
        ],
        Duration::from_secs(1),
        5,
    );
    assert_eq!(r[0].as_deref(), Ok("web"), "{r:?}");
    assert!(r[1].is_err() && r[2].is_err(), "{r:?}");
    assert_eq!(r[3].as_deref(), Ok("web"), "{r:?}");
    assert!(r[4].is_err(), "{r:?}");
    let tie = &node.pods["default/tiefighter"].ns;
    let ds_addr: SocketAddr = (ds, 80).into();
    assert_eq!(
        http_status(tie, ds_addr, "POST", "/v1/request-landing"),
        200
    );
    assert_eq!(http_status(tie, ds_addr, "PUT", "/v1/exhaust-port"), 403);

    // The human form says the same.
    let out = std::process::Command::new(support::agent::bin())
        .args([
            "explain",
            "--from",
            "default/xwing",
            "--to",
            &web_s,
            "--port",
            "8080",
        ])
        .arg("--socket")
        .arg(node.agent.socket())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "policy   ingress of default/web: denied by L3-only (this peer, any port), deny (from"
        ),
        "{text}"
    );
}
