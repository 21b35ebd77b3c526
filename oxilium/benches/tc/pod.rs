//! The endpoint programs on the pods' veths, with policy enforcement on: the client pod
//! (`app: client`, veth `pc`) may reach the server pod (`app: web`, veth `pw`) and the remote
//! backend's network on port 8080 (its egress policy); the server pod takes port 8080 from the
//! client pod and from other nodes' pods in 10.252.0.0/16 (its ingress policy). Policies and
//! identities come from the agent's policy side (`PolicyAgent`, a manifests folder), as in the
//! policy bench.
use super::*;
use abi::{
    endpoint::EndpointInfo,
    policy::{ep_flags, names as policy_names},
    sock::pod::names as pod_names,
};
use common::fd_of;
use oxilium::{
    agent::node::policy::{AllowLocalhost, EnforcementFlag, PolicyAgent, PolicyFlags},
    bpf::endpoint::EndpointLb,
};
use std::{collections::BTreeMap, path::Path};

/// ClusterIP → the server pod; ClusterIP → the backend on another node.
const CIP_LOCAL: &str = "10.96.0.10:80";
const CIP_REMOTE: &str = "10.96.0.11:80";

pub fn services() -> Vec<Service> {
    let local = format!("{SERVER_POD}:{POD_PORT}");
    vec![
        service(
            "cip-local",
            CIP_LOCAL.parse().unwrap(),
            Scope::Internal,
            Mode::Snat,
            &local,
        ),
        service(
            "cip-remote",
            CIP_REMOTE.parse().unwrap(),
            Scope::Internal,
            Mode::Snat,
            REMOTE,
        ),
    ]
}

const MANIFESTS: &str = r#"apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: default, labels: {app: client}}}
  - {apiVersion: v1, kind: Pod, metadata: {name: web, namespace: default, labels: {app: web}}}
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: web, namespace: default}
    spec:
      endpointSelector: {matchLabels: {app: web}}
      ingress:
        - fromEndpoints: [{matchLabels: {app: client}}]
          toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
        - fromCIDR: [10.252.0.0/16]
          toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: client, namespace: default}
    spec:
      endpointSelector: {matchLabels: {app: client}}
      egress:
        - toEndpoints: [{matchLabels: {app: web}}]
          toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
        - toCIDR: [10.10.0.0/24]
          toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#;

/// The policy side as the node agent runs it, over the bench's manifests folder; both pods up.
fn policies(pins: &Path, dir: &Path) -> PolicyAgent {
    std::fs::write(dir.join("bench.yaml"), MANIFESTS).unwrap();
    let flags = PolicyFlags {
        enforcement: EnforcementFlag::Default,
        audit: false,
        allow_localhost: AllowLocalhost::Always,
        kvstore: None,
        kvstore_endpoint: None,
        identity_gc_grace_ms: 0,
        kvstore_sync_ms: 10_000,
        dns: Default::default(),
        l7_proxy: false,
    };
    let mut agent =
        PolicyAgent::open(pins, &flags, Some(dir.to_path_buf()), None).expect("policy agent");
    for (id, pod, addr) in [
        (1, "default/client", CLIENT_POD),
        (2, "default/web", SERVER_POD),
    ] {
        agent
            .endpoint_up(id, Some(pod), "x", &BTreeMap::new(), &[IpAddr::V4(addr)])
            .expect("endpoint up");
    }
    agent
}

pub fn bench(pins: &PinDir, base: &Baselines, n: u32) {
    let mut eps = EndpointLb::load(pins.path()).expect("the endpoint programs");
    for (id, addr, dev) in [(1, CLIENT_POD, "pc"), (2, SERVER_POD, "pw")] {
        let info = EndpointInfo {
            ifindex: ifindex(dev),
            id,
            mac: [2, 0, 0, 0, 0xa0, id as u8],
            node_mac: [2, 0, 0, 0, 0xb0, id as u8],
            ..Default::default()
        };
        eps.set(IpAddr::V4(addr), info).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("oxilium-tc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _agent = policies(pins.path(), &dir);
    for addr in [CLIENT_POD, SERVER_POD] {
        let info = eps.get(IpAddr::V4(addr)).unwrap();
        assert!(info.flags & ep_flags::POLICY != 0, "{addr} under policy");
    }
    let prog = |name: &str| fd_of(eps.program(name).unwrap().fd().unwrap());
    let (from_pod, to_pod) = (
        prog("oxilium_endpoint_from_pod"),
        prog("oxilium_endpoint_to_pod"),
    );
    let (pc, pw) = (skb_ctx("pc"), skb_ctx("pw"));
    let cip = |s: &str| s.parse::<SocketAddr>().unwrap();
    // The client pod's flows: one source port each.
    let from_client = |i: u32, to: SocketAddr| {
        let IpAddr::V4(dst) = to.ip() else {
            unreachable!()
        };
        frame(CLIENT_POD, 1024 + i as u16, dst, to.port())
    };
    let stats = || policy_counters(pins.path());
    let before = stats();
    let redirect = TC_ACT_REDIRECT;
    let next = TCX_NEXT as u32;
    let local = cip(CIP_LOCAL);
    single::case(
        &[(from_pod, String::new())],
        base,
        &pc,
        n,
        "pod → ClusterIP (local pod), new flow",
        redirect,
        &|i| from_client(i, local),
    );
    single::case(
        &[(from_pod, String::new())],
        base,
        &pc,
        n,
        "pod → ClusterIP (local pod), established",
        redirect,
        &|i| from_client(i, local),
    );
    let remote = cip(CIP_REMOTE);
    single::case(
        &[(from_pod, String::new())],
        base,
        &pc,
        n,
        "pod → ClusterIP (other node), new flow",
        next,
        &|i| from_client(n + i, remote),
    );
    single::case(
        &[(from_pod, String::new())],
        base,
        &pc,
        n,
        "pod → ClusterIP (other node), established",
        next,
        &|i| from_client(n + i, remote),
    );
    let from_node = |i: u32| {
        let (c, sport) = client(i, [10, 252], 0);
        frame(c, sport, SERVER_POD, POD_PORT)
    };
    single::case(
        &[(to_pod, String::new())],
        base,
        &pw,
        n,
        "other node's pod → pod, new flow",
        next,
        &from_node,
    );
    single::case(
        &[(to_pod, String::new())],
        base,
        &pw,
        n,
        "other node's pod → pod, established",
        next,
        &from_node,
    );
    let after = stats();
    let translated = after.0 - before.0;
    assert_eq!(
        translated,
        4 * u64::from(n),
        "every pod → ClusterIP packet translated"
    );
    assert!(
        after.1 - before.1 >= 3 * u64::from(n),
        "policy verdicts: every new flow allowed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// (packets translated by the pod path, new flows the policy allowed), summed over CPUs.
fn policy_counters(pins: &Path) -> (u64, u64) {
    use aya::maps::{HashMap, Map, MapData, PerCpuArray};
    let open = |name: &str| MapData::from_pin(pins.join(name)).expect(name);
    let pod: PerCpuArray<_, abi::lb::Counter> =
        PerCpuArray::try_from(Map::PerCpuArray(open(pod_names::STATS))).unwrap();
    let fwd = pod
        .get(&abi::sock::pod::reason::FORWARD, 0)
        .map(|v| v.iter().map(|c| c.packets).sum())
        .unwrap_or(0);
    let pol: HashMap<_, u32, abi::policy::PolicyStats> =
        HashMap::try_from(Map::HashMap(open(policy_names::POLICY_STATS))).unwrap();
    let allowed = [1, 2]
        .iter()
        .map(|id| pol.get(id, 0).map(|s| s.allowed).unwrap_or(0))
        .sum();
    (fwd, allowed)
}
