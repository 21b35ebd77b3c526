//! ICMP errors from the backend side, end to end: a client sends a UDP datagram on a connected
//! socket to a service whose backend has nothing listening on the target port; the backend's
//! kernel answers "port unreachable" about the translated datagram, and the client's socket must
//! report ECONNREFUSED, which Linux does only when the error quotes the datagram as the socket
//! sent it (client → service address). So each case passes only if the translator rewrote the
//! error (outer and quoted headers, checksums, which the client's kernel verifies); the
//! `icmp_translated` counter says the translator did it (a frontend nobody translated would be
//! refused by the node itself). Paths: the edge LB in SNAT mode (XDP), NodePort to a pod of the
//! node (error at the device's egress), to a pod of another node (SNAT: at ingress) and through
//! DSR (at the backend node's egress), and the pod path (`--socket-lb-host-netns-only`: at the
//! client pod's veth). IPv4 and IPv6 where the bed has both.
//!
//! Kernel features: network namespaces, veth, ICMP / ICMPv6 port unreachable and UDP error
//! reporting on connected sockets, native XDP on veth and bpf_fib_lookup (edge), TCX with
//! bpf_skb_pull_data / bpf_redirect / bpf_skb_adjust_room (NodePort, DSR), cgroup v2 (the node
//! agent's socket LB), bpffs.
mod support;

use serde_json::{Value, json};
use std::{
    io::ErrorKind,
    mem::size_of,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};
use support::{
    agent::AgentProcess,
    cluster::{Cluster, NODE1_EXT4, NODE1_EXT6, NODE1_FAB4, NODE1_FAB6, NODE2_FAB4, NODE2_FAB6},
    fake_api::Res,
    kube_agent::KubeAgent,
    netns::{Netns, enter, pod_ip, unique, wire_pod},
    servers::Servers,
    topology::{Bed, VIP4, VIP6, backend4, backend6, sa},
};

/// Nothing listens here.
const CLOSED: u16 = 9999;

/// One datagram to `to` from a connected socket in `ns`: Ok when the socket reports
/// ECONNREFUSED, Err with what happened otherwise.
fn refused(ns: &Netns, to: SocketAddr) -> Result<(), String> {
    ns.exec(move || {
        let any = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(any).map_err(|e| e.to_string())?;
        s.connect(to).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send(b"anyone?").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        match s.recv(&mut buf) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(format!("{to}: {e}")),
            Ok(n) => Err(format!("{to}: answered ({n} bytes)")),
        }
    })
}

fn counter(status: &Value, name: &str) -> u64 {
    status["counters"][name]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {status}"))
}

#[test]
fn edge_lb_snat_backend_errors_reach_the_client() {
    let mut bed = Bed::new(1);
    let mut y = String::from("services:\n");
    for (fam, vip, b) in [(4, VIP4, backend4(1)), (6, VIP6, backend6(1))] {
        y += &format!(
            "  - name: closed{fam}\n    vip: {vip}\n    port: {CLOSED}\n    protocol: udp\n    backends:\n      - address: {b}\n        port: {CLOSED}\n"
        );
    }
    bed.write_config(&y);
    bed.agent.start();
    for vip in [VIP4, VIP6] {
        let before = counter(&bed.agent.status(), "icmp_translated");
        refused(&bed.client, sa(vip, CLOSED))
            .unwrap_or_else(|e| panic!("{e}\n{}", bed.agent.status_text()));
        let after = counter(&bed.agent.status(), "icmp_translated");
        assert_eq!(after, before + 1, "{vip}");
    }
}

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

/// A dual-stack UDP NodePort Service `name` on `node_port` → `pod`:9999.
fn udp_service(
    c: &Cluster,
    name: &str,
    n: u8,
    node_port: u16,
    pod: &str,
    dsr: bool,
) -> Vec<(Res, Value)> {
    let mut svc = json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "NodePort", "clusterIP": format!("10.96.4.{n}"),
            "clusterIPs": [format!("10.96.4.{n}"), format!("fd96:4::{n}")],
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
            "ports": [{"name": "u", "port": CLOSED, "targetPort": CLOSED, "protocol": "UDP", "nodePort": node_port}],
        },
    });
    if dsr {
        svc["metadata"]["annotations"] = json!({"service.cilium.io/forwarding-mode": "dsr"});
    }
    let p = c.pod(pod);
    let mut out = vec![(Res::Services, svc)];
    for (fam, ty, addr) in [(4, "IPv4", p.v4), (6, "IPv6", p.v6)] {
        out.push((
            Res::EndpointSlices,
            json!({
                "metadata": {"name": format!("{name}-v{fam}"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": ty,
                "ports": [{"name": "u", "port": CLOSED, "protocol": "UDP"}],
                "endpoints": [{"addresses": [addr.to_string()], "nodeName": format!("node{}", p.node),
                               "conditions": {"ready": true}}],
            }),
        ));
    }
    out
}

#[test]
fn nodeport_backend_errors_reach_the_client_on_local_snat_and_dsr_paths() {
    let c = Cluster::new([1, 1]);
    let mut k1 = KubeAgent::serve(&c.node1, "node1", &["ext0", "fab0"]);
    let mut k2 = KubeAgent::serve(&c.node2, "node2", &["fab0"]);
    for k in [&k1, &k2] {
        k.put(nodes());
        k.put(udp_service(&c, "local", 1, 30401, "p11", false));
        k.put(udp_service(&c, "remote", 2, 30402, "p21", false));
        k.put(udp_service(&c, "dsr", 3, 30403, "p21", true));
    }
    k2.start();
    k2.wait_local_endpoints(2);
    k1.start();
    k1.wait_local_endpoints(2);
    // (NodePort, who translates the error: node1 or node2)
    for (port, node) in [(30401, 1), (30402, 1), (30403, 2)] {
        for front in [NODE1_EXT4, NODE1_EXT6] {
            let to = SocketAddr::new(front.parse().unwrap(), port);
            let k = if node == 1 { &k1 } else { &k2 };
            let before = k.counter("icmp_translated", true);
            k1.eventually(&format!("ECONNREFUSED from {to}"), || {
                refused(&c.client, to)
            });
            assert!(
                k.counter("icmp_translated", true) > before,
                "{to}: translated by node{node}: {}",
                k.status()
            );
        }
    }
}

/// The pod-path bed: a node namespace with pods 1 and 2 (10.244.{1,2}.2), the agent with
/// `--socket-lb-host-netns-only` and a dual-stack UDP ClusterIP `closed` (10.96.5.1 /
/// fd96:5::1, port 53) → pod 1 port `target`. Fields drop in order: agent, pods, node.
struct PodBed {
    agent: AgentProcess,
    pods: Vec<Netns>,
    _node: Netns,
}

impl PodBed {
    fn new(target: u16) -> PodBed {
        let p = unique("ie");
        let node = Netns::new(&format!("{p}n"));
        node.run(&["ip", "addr", "add", "10.200.0.1/32", "dev", "lo"]);
        node.run(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]);
        let pods: Vec<Netns> = (1..=2)
            .map(|i| {
                let pod = Netns::new(&format!("{p}p{i}"));
                wire_pod(&node, &pod, i);
                pod
            })
            .collect();
        let mut y = format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nstatus:\n  addresses: [{{type: InternalIP, address: 10.200.0.1}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: closed, namespace: default}}\nspec:\n  clusterIP: 10.96.5.1\n  clusterIPs: [10.96.5.1, \"fd96:5::1\"]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n  ports: [{{name: u, port: 53, targetPort: {target}, protocol: UDP}}]\n"
        );
        for (fam, ty) in [(4, "IPv4"), (6, "IPv6")] {
            let a = pod_ip(1, fam == 6);
            y += &format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: closed-{fam}\n  namespace: default\n  labels: {{kubernetes.io/service-name: closed}}\naddressType: {ty}\nports: [{{name: u, port: {target}, protocol: UDP}}]\nendpoints:\n  - addresses: [\"{a}\"]\n    nodeName: node-a\n"
            );
        }
        let mut agent = AgentProcess::builder(&node, "ie")
            .args(["--role", "node", "--node", "node-a", "--watch-ms", "100"])
            .args(["--socket-lb-host-netns-only"])
            .file_arg("--manifests", "manifests")
            .cgroup()
            .build();
        agent.write_file("manifests/closed.yaml", &y);
        agent.start();
        PodBed {
            agent,
            pods,
            _node: node,
        }
    }

    fn translated(&self) -> u64 {
        counter(&self.agent.status(), "icmp_translated")
    }
}

/// Pod path, backend side: pod 2 asks a ClusterIP whose backend (pod 1) has nothing on the target
/// port; pod 1's "port unreachable" is rewritten at pod 2's veth egress.
#[test]
fn pod_path_backend_errors_reach_the_pod() {
    let bed = PodBed::new(CLOSED);
    for cip in ["10.96.5.1", "fd96:5::1"] {
        let to = SocketAddr::new(cip.parse().unwrap(), 53);
        let before = bed.translated();
        bed.agent.eventually(
            Duration::from_secs(20),
            &format!("ECONNREFUSED from {to}"),
            || refused(&bed.pods[1], to),
        );
        assert!(bed.translated() > before, "{to}: {}", bed.agent.status());
    }
}

/// Pod path, client side: pod 2 asks the ClusterIP (pod 1 answers on 8080) and closes its socket
/// at once; the answer, restored to come from the ClusterIP, meets a closed port, and pod 2's
/// "port unreachable" (to the ClusterIP, quoting ClusterIP:53 → pod 2) is rewritten at its veth
/// ingress. Pod 1 receives it on a raw ICMP socket: from pod 2, quoting pod 1:8080 → pod 2, every
/// checksum right.
#[test]
fn pod_path_pod_errors_reach_the_backend() {
    let bed = PodBed::new(8080);
    let pod1 = pod_ip(1, false);
    let _server = Servers::start(&bed.pods[0], "b1", &[SocketAddr::new(pod1, 8080)]);
    let (tx, rx) = std::sync::mpsc::channel();
    let path = bed.pods[0].path();
    let sniffer = std::thread::spawn(move || {
        enter(&path);
        // SAFETY: plain socket calls on a descriptor this thread owns.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of::<libc::timeval>() as u32,
            );
        }
        tx.send(()).unwrap();
        let mut got = Vec::new();
        for _ in 0..20 {
            let mut buf = [0u8; 1500];
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n > 0 {
                got.push(buf[..n as usize].to_vec());
                break;
            }
        }
        unsafe { libc::close(fd) };
        got
    });
    rx.recv().unwrap();
    let to = SocketAddr::new("10.96.5.1".parse().unwrap(), 53);
    let mut sports = Vec::new();
    for _ in 0..20 {
        sports.push(bed.pods[1].exec(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(to).unwrap();
            s.send(b"ask and go").unwrap();
            s.local_addr().unwrap().port()
        }));
        std::thread::sleep(Duration::from_millis(200));
        if bed.translated() > 0 {
            break;
        }
    }
    let got = sniffer.join().unwrap();
    let pkt = got
        .first()
        .unwrap_or_else(|| panic!("no ICMP at pod 1: {}", bed.agent.status()));
    let frame = support::packet::ether(pkt, None);
    support::packet::verify_checksums(&frame).unwrap();
    let v = support::packet::view(&frame);
    assert_eq!((v.src, v.dst), (pod_ip(2, false), pod1), "outer");
    assert_eq!(&frame[v.l4..v.l4 + 2], &[3, 3], "port unreachable");
    let quote = &frame[v.l4 + 8..v.l3 + v.l3_len];
    assert!(support::packet::ipv4_header_ok(quote), "quoted IPv4 header");
    let q = support::packet::view(&support::packet::ether(quote, None));
    assert_eq!(
        (q.src, q.sport, q.dst),
        (pod1, 8080, pod_ip(2, false)),
        "quoted: the backend's datagram as it sent it"
    );
    assert!(
        sports.contains(&q.dport),
        "quoted port {} of {sports:?}",
        q.dport
    );
}
