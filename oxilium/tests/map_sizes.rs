//! Map sizes follow the role and the settings (`oxilium::bpf::sizes`): the node agent's
//! `--max-services` / `--max-backends` / `--max-endpoints` / `--ct-max-entries` /
//! `--sock-revnat-max-entries` / `--policy-ct-max-entries`, the edge LB's lb.yaml
//! `max_services` / `max_backends` / `conntrack.max_entries`, every role's `--events-max-flows`
//! (or its default, from `--events-ring-bytes`); maps a role never uses keep one entry; a model beyond the limits is refused whole, naming the setting; a restart with other
//! sizes keeps the pinned maps (except those the earlier start left at one entry, unused).
//!
//! Kernel features: BPF map creation with the sizes given at load (BPF_MAP_CREATE
//! `max_entries`), bpffs pinning and reopening pins (BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD for
//! `max_entries`), cgroup v2 sock_addr programs (node), generic XDP on a veth (edge LB).
mod support;

use abi::{endpoint, lb::names, nodeport, policy, sock};
use std::{path::Path, time::Duration};
use support::{agent::AgentProcess, netns::Netns};

/// `max_entries` of the map pinned at `pins/name`.
fn max_entries(pins: &Path, name: &str) -> u32 {
    aya::maps::MapData::from_pin(pins.join(name))
        .unwrap_or_else(|e| panic!("{name} pinned: {e}"))
        .info()
        .unwrap()
        .max_entries()
}

/// Entries of the pinned service map (services and VIP markers).
fn service_entries(pins: &Path) -> Vec<(abi::lb::ServiceKey, abi::lb::ServiceValue)> {
    let data = aya::maps::MapData::from_pin(pins.join(names::SERVICES)).unwrap();
    let map: aya::maps::HashMap<_, abi::lb::ServiceKey, abi::lb::ServiceValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
    let mut v: Vec<_> = map.iter().map(Result::unwrap).collect();
    v.sort_by_key(|(k, _)| *k);
    v
}

/// `n` ClusterIP Services (10.96.0.1.., port 80) of two endpoints each, and the Node.
fn manifests(n: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n\
         status: {addresses: [{type: InternalIP, address: 192.168.0.10}]}\n",
    );
    for i in 0..n {
        y += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n\
             spec: {{clusterIP: 10.96.0.{}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: s{i}-1, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
             endpoints: [{{addresses: [10.1.{i}.1]}}, {{addresses: [10.1.{i}.2]}}]\n",
            i + 1
        );
    }
    y
}

/// Writes `name` (again on every poll: a write between the agent's first read and its watch
/// would go unseen) until the agent's last error contains `needle`.
fn refused_change(agent: &AgentProcess, name: &str, contents: &str, needle: &str) {
    agent.eventually(Duration::from_secs(10), needle, || {
        let s = agent.status();
        if s["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains(needle)
        {
            return Ok(());
        }
        agent.write_file(name, contents);
        Err(s)
    });
}

fn node_agent(ns: &Netns, tag: &str, flags: &[&str]) -> AgentProcess {
    AgentProcess::builder(ns, tag)
        .args(["--role", "node", "--node", "node-a", "--watch-ms", "100"])
        .args(flags)
        .file_arg("--manifests", "manifests")
        .cgroup()
        .build()
}

/// Starts `agent` and waits for it to exit on its own; returns its log.
fn refused(agent: &mut AgentProcess) -> String {
    agent.spawn();
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "the agent started:\n{}", agent.log());
    agent.log()
}

const SMALL: [&str; 12] = [
    "--max-services",
    "16",
    "--max-backends",
    "64",
    "--max-endpoints",
    "8",
    "--ct-max-entries",
    "4096",
    "--sock-revnat-max-entries",
    "2048",
    "--events-max-flows",
    "1500",
];

#[test]
fn node_agent_maps_follow_its_flags_and_refuse_more_services_whole() {
    let ns = Netns::new("msn");
    // Out of range: refused before anything is pinned.
    let mut bad = node_agent(&ns, "msb", &["--max-services", "0"]);
    bad.write_file("manifests/all.yaml", &manifests(1));
    let log = refused(&mut bad);
    assert!(
        log.contains("--max-services: must be 1..=1048575, got 0"),
        "{log}"
    );
    assert!(!bad.pins().join(names::SERVICES).exists());
    for (args, said) in [
        (
            &["--sock-revnat-max-entries", "1000"][..],
            "--sock-revnat-max-entries: must be 1024..=16777216, got 1000",
        ),
        (
            &["--cni", "--policy-ct-max-entries", "16777217"][..],
            "--policy-ct-max-entries: must be 1024..=16777216, got 16777217",
        ),
        // It sizes a map only --cni loads: refused without it rather than ignored.
        (
            &["--policy-ct-max-entries", "4096"][..],
            "the following required arguments were not provided:\n  --cni",
        ),
        (
            &["--events-max-flows", "0"][..],
            "--events-max-flows: must be 1024..=16777216, got 0",
        ),
    ] {
        let mut bad = node_agent(&ns, "msb", args);
        bad.write_file("manifests/all.yaml", &manifests(1));
        let log = refused(&mut bad);
        assert!(log.contains(said), "{log}");
        assert!(!bad.pins().join(names::SERVICES).exists());
    }
    // More services in the folder than the maps hold: refused before anything is loaded.
    let mut big = node_agent(&ns, "msg", &SMALL);
    big.write_file("manifests/all.yaml", &manifests(17));
    let log = refused(&mut big);
    assert!(
        log.contains("--max-services: the manifests need 17 service entries, more than 16"),
        "{log}"
    );
    assert!(!big.pins().join(names::SERVICES).exists());

    let mut agent = node_agent(&ns, "msa", &SMALL);
    agent.write_file("manifests/all.yaml", &manifests(10));
    agent.start();
    let pins = agent.pins().to_path_buf();
    // Sized by the flags (ids start at 1: id-indexed arrays have one more entry; the service
    // map also holds one marker per VIP).
    for (name, want) in [
        (names::SERVICES, 32),
        (names::TABLES, 17),
        (names::BACKENDS, 65),
        (sock::names::AFFINITY_TIMEOUT, 17),
        (sock::names::REVNAT, 2048),
        (sock::names::AFFINITY, 2048),
        // The socket LB alone: no per-packet translation, no NodePort, no cluster network.
        (names::SERVICE_STATS, 1),
        (names::BACKEND_STATS, 1),
        (names::CONNTRACK, 1),
        (names::SNAT, 1),
        (endpoint::names::ENDPOINTS, 1),
        (policy::names::POLICY_CT, 1),
        (policy::names::POLICY, 1),
        // The socket LB writes no events: no per-flow rate limiter.
        (abi::event::names::LIMIT, 1),
    ] {
        assert_eq!(max_entries(&pins, name), want, "{name}");
    }
    let before = service_entries(&pins);
    assert_eq!(before.len(), 20, "10 services and their 10 VIP markers");

    // 17 services: the change is refused whole, the maps keep the 10.
    refused_change(
        &agent,
        "manifests/all.yaml",
        &manifests(17),
        "--max-services (16) leaves room for 6",
    );
    assert_eq!(
        service_entries(&pins),
        before,
        "nothing of the change written"
    );
    // 16 fit.
    agent.write_file("manifests/all.yaml", &manifests(16));
    agent.eventually(Duration::from_secs(10), "16 services", || {
        let n = service_entries(&pins).len();
        (n == 32).then_some(()).ok_or(n)
    });
}

#[test]
fn a_restart_with_other_sizes_keeps_the_pinned_maps_and_their_entries() {
    let ns = Netns::new("msr");
    let mut agent = node_agent(&ns, "msr", &SMALL);
    agent.write_file("manifests/all.yaml", &manifests(10));
    agent.start();
    let pins = agent.pins().to_path_buf();
    let before = service_entries(&pins);
    agent.stop();
    // Larger: the pinned maps stay as they were (with their entries), the start says so, and
    // the limit is what the pinned maps hold.
    agent.set_arg("--max-services", "64");
    agent.set_arg("--ct-max-entries", "8192");
    agent.set_arg("--sock-revnat-max-entries", "8192");
    // The pod programs now: the per-packet maps the socket LB alone left at one entry are
    // created anew at their size.
    assert_eq!(max_entries(&pins, names::CONNTRACK), 1);
    assert_eq!(max_entries(&pins, abi::event::names::LIMIT), 1);
    agent.add_args(["--socket-lb-host-netns-only"]);
    agent.start();
    assert_eq!(max_entries(&pins, names::CONNTRACK), 8192);
    // The pod programs write events: the limiter is made at --events-max-flows.
    assert_eq!(max_entries(&pins, abi::event::names::LIMIT), 1500);
    assert_eq!(max_entries(&pins, names::SERVICE_STATS), 65);
    assert!(
        agent
            .log()
            .contains("a map the earlier start did not use is created anew"),
        "{}",
        agent.log()
    );
    assert_eq!(max_entries(&pins, names::SERVICES), 32);
    assert_eq!(max_entries(&pins, names::TABLES), 17);
    assert_eq!(max_entries(&pins, sock::names::REVNAT), 2048);
    assert!(
        agent
            .log()
            .contains("a pinned map keeps the size an earlier start gave it"),
        "{}",
        agent.log()
    );
    assert_eq!(service_entries(&pins), before, "entries kept");
    refused_change(
        &agent,
        "manifests/all.yaml",
        &manifests(17),
        "the pinned maps (sized by an earlier start",
    );
    assert_eq!(service_entries(&pins), before);
    // After --cleanup the new sizes apply.
    agent.cleanup();
    agent.start();
    assert_eq!(max_entries(&pins, names::SERVICES), 128);
    assert_eq!(max_entries(&pins, sock::names::REVNAT), 8192);
    assert_eq!(max_entries(&pins, names::CONNTRACK), 8192);
    agent.eventually(Duration::from_secs(10), "17 services", || {
        let n = service_entries(&pins).len();
        (n == 34).then_some(()).ok_or(n)
    });
}

/// An lb.yaml of `n` services (one backend each) with `head` lines first.
fn lb_yaml(head: &str, n: usize) -> String {
    let mut y = format!("{head}services:\n");
    for i in 0..n {
        y += &format!(
            "  - {{name: s{i}, vip: 10.200.0.{}, port: 80, algorithm: random, backends: [{{address: 10.99.0.2}}]}}\n",
            i + 1
        );
    }
    y
}

#[test]
fn edge_lb_maps_follow_lb_yaml() {
    let ns = Netns::new("mse");
    ns.run(&[
        "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    for dev in ["v0", "v1"] {
        ns.run(&["ip", "link", "set", dev, "up"]);
    }
    ns.run(&["ip", "addr", "add", "10.99.0.1/24", "dev", "v0"]);
    let head = "max_services: 8\nmax_backends: 32\nconntrack:\n  max_entries: 2048\nsnat:\n  max_entries: 1024\n";
    let edge = |tag: &str| {
        AgentProcess::builder(&ns, tag)
            .args(["--role", "lb", "--iface", "v0", "--xdp-mode", "generic"])
            .args(["--watch-ms", "100", "--events-max-flows", "3000"])
            .file_arg("--config", "lb.yaml")
            .build()
    };
    // A file with more services than max_services: refused at start, naming the field.
    let mut big = edge("mseb");
    big.write_file("lb.yaml", &lb_yaml(head, 9));
    let log = refused(&mut big);
    assert!(
        log.contains("max_services: the file has 9 services, more than max_services (8)"),
        "{log}"
    );
    assert!(!big.pins().join(names::SERVICES).exists());

    let mut agent = edge("msea");
    agent.write_file("lb.yaml", &lb_yaml(head, 3));
    agent.start();
    let pins = agent.pins().to_path_buf();
    for (name, want) in [
        (names::SERVICES, 16),
        (names::TABLES, 9),
        (names::BACKENDS, 33),
        (names::SERVICE_STATS, 9),
        (names::BACKEND_STATS, 33),
        (names::CONNTRACK, 2048),
        (names::SNAT, 1024),
        (abi::event::names::LIMIT, 3000),
        // Not an edge LB's: the node's maps.
        (nodeport::names::ENDPOINTS, 1),
        (endpoint::names::ENDPOINTS, 1),
        (policy::names::POLICY_CT, 1),
        (policy::names::POLICY_STATS, 1),
        (abi::bandwidth::names::BANDWIDTH, 1),
    ] {
        assert_eq!(max_entries(&pins, name), want, "{name}");
    }
    assert_eq!(service_entries(&pins).len(), 6);
    // A reload beyond max_services is refused by the file's validation; nothing changes.
    refused_change(
        &agent,
        "lb.yaml",
        &lb_yaml(head, 9),
        "max_services: the file has 9 services, more than max_services (8)",
    );
    assert_eq!(service_entries(&pins).len(), 6);
}

/// `--cni` with `--max-endpoints 1` and `--policy-ct-max-entries 4096`: the cluster-network maps
/// hold one endpoint, the policy conntrack 4096 flows, the event limiter its default (the events
/// the default 1 MiB ring holds: 1048576 / 112-byte records); the first pod (one address) gets
/// its endpoint, the second ADD fails naming the flag (kernel: E2BIG from a full
/// preallocated hash map, BPF_MAP_UPDATE_ELEM).
#[test]
fn a_cni_node_refuses_the_endpoint_beyond_max_endpoints() {
    use support::cni::{PluginDir, add, cni, conf};
    let p = support::netns::unique("msc");
    let node = Netns::new(&format!("{p}n"));
    let pods: Vec<Netns> = (1..=2).map(|i| Netns::new(&format!("{p}p{i}"))).collect();
    let mut agent = AgentProcess::cni_node(&node, "msc", "node-a")
        .args(["--max-endpoints", "1", "--policy-ct-max-entries", "4096"])
        .cgroup()
        .build();
    agent.write_file(
        "manifests/all.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n\
         spec: {podCIDRs: [\"10.244.1.0/29\"]}\n\
         status: {addresses: [{type: InternalIP, address: 10.200.0.1}]}\n",
    );
    agent.start();
    let pins = agent.pins().to_path_buf();
    assert_eq!(max_entries(&pins, endpoint::names::ENDPOINTS), 1);
    assert_eq!(max_entries(&pins, policy::names::POLICY), 1);
    assert_eq!(max_entries(&pins, policy::names::POLICY_CT), 4096);
    assert_eq!(max_entries(&pins, abi::event::names::LIMIT), 9362);
    let plugin = PluginDir::new(&p);
    let conf = conf("1.1.0", agent.socket());
    add(&plugin, &conf, "c1", &pods[0].path(), "web-1");
    let r = cni(
        &plugin,
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c2"),
            ("CNI_NETNS", &pods[1].path()),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-2",
            ),
        ],
        &conf,
    );
    assert!(!r.ok, "the second ADD succeeded: {}", r.out);
    let said = format!("{} {}", r.out, agent.log());
    assert!(
        said.contains("OXI_ENDPOINTS is full: --max-endpoints is 1"),
        "{said}"
    );
}
