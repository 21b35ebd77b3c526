//! A Kubernetes NetworkPolicy conformance-style matrix on real packets: 3 namespaces × 3 pods
//! made through the CNI plugin, TCP and UDP on two ports, a dozen policies applied one after the
//! other through the manifests folder; for every policy, the reachability of every ordered pair
//! of pods (72 pairs × 2 protocols × 2 ports) equals the one `oxilium policy verdict` computes
//! from the same folder.
//!
//! Kernel features: network namespaces, veth made through rtnetlink with IFLA_NET_NS_FD, tc BPF
//! through TCX links (≥ 6.6) with bpf_redirect_peer (≥ 5.10), hash-of-maps with LPM trie inner
//! maps, cgroup v2 with BPF_PROG_TYPE_CGROUP_SOCK_ADDR, bpf_link pinning. Requires root; fails
//! (never skips) when it cannot set up.
mod support;

use policy::{
    Config,
    api::Protocol,
    offline::{Offline, Query, Target},
};
use std::{net::SocketAddr, time::Duration};
use support::policy_bed::{PolicyNode, probe_all};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn objects() -> String {
    let mut y = String::new();
    for ns in NAMESPACES {
        y += &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n---\n"
        );
        for p in PODS {
            y += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {p}, namespace: {ns}, labels: {{pod: {p}}}}}\nspec: {{containers: [{{name: c, image: i, ports: [{{name: serve-p1-tcp, containerPort: P1, protocol: TCP}}]}}]}}\n---\n"
            );
        }
    }
    y
}

fn np(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n"
    )
}

/// The policies, one scenario each (P1 / P2 are the scenario's ports).
fn scenarios() -> Vec<(&'static str, String)> {
    vec![
        (
            "deny-all-ingress-x",
            np("deny", "x", "  podSelector: {}\n  policyTypes: [Ingress]"),
        ),
        (
            "allow-same-namespace-x",
            np(
                "same-ns",
                "x",
                "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]",
            ),
        ),
        (
            "xa-from-namespace-y",
            np(
                "from-y",
                "x",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
            ),
        ),
        (
            "xa-from-pod-b-anywhere",
            np(
                "from-b",
                "x",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]",
            ),
        ),
        (
            "xa-port-p1-tcp",
            np(
                "p1",
                "x",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: P1, protocol: TCP}]}]",
            ),
        ),
        (
            "deny-all-egress-x",
            np("deny-eg", "x", "  podSelector: {}\n  policyTypes: [Egress]"),
        ),
        (
            "xa-egress-z-p2-udp",
            np(
                "eg-z",
                "x",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: P2, protocol: UDP}]}]",
            ),
        ),
        (
            "xa-from-not-y",
            np(
                "not-y",
                "x",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}]}}]}]",
            ),
        ),
        (
            "xa-union-y-and-z-c",
            np(
                "u1",
                "x",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
            ) + &np(
                "u2",
                "x",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}]}]",
            ),
        ),
        (
            "xa-tcp-range-p1-p2",
            np(
                "range",
                "x",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: P1, endPort: P2, protocol: TCP}]}]",
            ),
        ),
        (
            "y-deny-egress-x-allow-all",
            np("deny-eg", "y", "  podSelector: {}\n  policyTypes: [Egress]")
                + &np("all", "x", "  podSelector: {}\n  ingress: [{}]"),
        ),
        (
            "xb-isolated-both-ways",
            np(
                "iso",
                "x",
                "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress, Egress]\n  ingress: []\n  egress: []",
            ),
        ),
        (
            "xa-named-port",
            np(
                "named",
                "x",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {}}], ports: [{port: serve-p1-tcp}]}]",
            ),
        ),
    ]
}

/// The entries of a `policy get` answer (agent or offline) as comparable tuples.
fn entries(v: &serde_json::Value) -> std::collections::BTreeSet<(u64, String, u64, u64, String)> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["identity"].as_u64().unwrap(),
                e["direction"].as_str().unwrap().to_string(),
                e["prefix_len"].as_u64().unwrap(),
                e["ports"][0].as_u64().unwrap_or(0),
                e["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn network_policy_matrix() {
    let scenarios = scenarios();
    assert!(scenarios.len() >= 12);
    let mut bed = PolicyNode::new(
        "pmx",
        &[("pods.yaml".into(), objects().replace("P1", "9000"))],
        &[],
    );
    let keys: Vec<String> = NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect();
    for k in &keys {
        bed.add_pod(k);
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for (i, (name, policy)) in scenarios.iter().enumerate() {
        // Fresh ports per scenario: no flow of an earlier scenario is in the policy conntrack.
        let (p1, p2) = (9100 + 2 * i as u16, 9101 + 2 * i as u16);
        let pods = objects().replace("P1", &p1.to_string());
        let policy = policy
            .replace("P1", &p1.to_string())
            .replace("P2", &p2.to_string());
        bed.agent.write_file("manifests/pods.yaml", &pods);
        bed.agent.write_file("manifests/policy.yaml", &policy);
        // Expected: the offline engine on the same objects.
        let text = format!("{pods}{policy}");
        let objects = k8s::manifests::parse_text(std::path::Path::new("m.yaml"), &text).unwrap();
        let off = Offline::from_objects(
            objects.into_iter().map(|o| (o.origin, o.value)),
            Config::default(),
        )
        .unwrap();
        // Enforced when every agent map holds the offline entries.
        bed.agent.eventually(Duration::from_secs(15), name, || {
            for key in &keys {
                let got = entries(&bed.agent.cli(&["policy", "get", key]));
                let want = entries(&off.get(key).unwrap());
                if got != want {
                    return Err(format!("{key}: {got:?}, want {want:?}"));
                }
            }
            Ok(())
        });
        let mut servers = Vec::new();
        for k in &keys {
            for port in [p1, p2] {
                let addr = SocketAddr::new(bed.pods[k].ip, port);
                servers.push(support::servers::Servers::start(
                    &bed.pods[k].ns,
                    k,
                    &[addr],
                ));
            }
        }
        let mut probes = Vec::new();
        let mut want = Vec::new();
        for from in &keys {
            for to in keys.iter().filter(|t| *t != from) {
                for port in [p1, p2] {
                    for (udp, proto) in [(false, Protocol::Tcp), (true, Protocol::Udp)] {
                        let q = Query {
                            from: from.clone(),
                            to: Target::Pod(to.clone()),
                            port,
                            proto,
                            http: None,
                        };
                        let v = off.verdict(&q).unwrap()["verdict"]
                            .as_str()
                            .unwrap()
                            .to_string();
                        want.push((
                            format!("{from} -> {to} {port}/{}", proto.name()),
                            v == "allow",
                        ));
                        probes.push((
                            bed.pods[from].ns.path(),
                            SocketAddr::new(bed.pods[to].ip, port),
                            udp,
                        ));
                    }
                }
            }
        }
        let allowed = want.iter().filter(|w| w.1).count();
        assert!(
            allowed > 0 && allowed < want.len(),
            "{name}: a trivial expectation ({allowed} of {})",
            want.len()
        );
        let got = probe_all(probes, Duration::from_millis(700), 96);
        for ((what, ok), got) in want.iter().zip(&got) {
            checked += 1;
            if got.is_ok() != *ok {
                if failures.is_empty() {
                    let to = what.split(' ').nth(2).unwrap();
                    let from = what.split(' ').next().unwrap();
                    let dump = std::process::Command::new("bpftool")
                        .args(["map", "dump", "pinned"])
                        .arg(bed.agent.pins().join("OXI_IPCACHE"))
                        .output()
                        .unwrap();
                    eprintln!("ipcache: {}", String::from_utf8_lossy(&dump.stdout));
                    eprintln!(
                        "agent {to}: {:#}\noffline: {:#}\nagent {from}: {:#}\nlist: {:#}",
                        bed.agent.cli(&["policy", "get", to]),
                        off.get(to).unwrap(),
                        bed.agent.cli(&["policy", "get", from]),
                        bed.agent.cli(&["endpoint", "list"])
                    );
                }
                failures.push(format!(
                    "{name}: {what}: expected {}, got {got:?}",
                    if *ok { "reachable" } else { "blocked" }
                ));
            }
        }
        drop(servers);
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} probes differ:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        bed.agent.log()
    );
    assert_eq!(checked, scenarios.len() * 72 * 4);
}
