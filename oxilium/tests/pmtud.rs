//! Path MTU discovery through every translator: 4 MiB HTTP downloads (curl in the client
//! namespace, `python3 -m http.server` in the backends) over a path whose MTU (1400, a router's
//! link towards the client) is smaller than the client's (1500), with no TCP MSS clamping. The
//! client announces an MSS of 1460, so the servers' full-sized segments are too big for the
//! router, which answers with ICMP "fragmentation needed" / ICMPv6 "packet too big" addressed to
//! the frontend (the source of what it could not forward). The file arrives intact only if the
//! translator reverse-translates that error to the server (SNAT, local DNAT) or tunnels it to the
//! backend (DSR): otherwise the connection stalls in a black hole. The servers' route caches are
//! checked for the learnt MTU.
//!
//! ```text
//!  client ─c0──r0─ router ─r1──l0─ edge LB (agent, XDP) ─lb1──e0─ backend (agent --role backend)
//!  1500        1400       1500
//!  client ─c0──r0─ router ─r1──ext0─ node1 (agent) ─fab0──fab0─ node2 (agent)
//! ```
//! GRO, GSO and TSO stay on wherever the bed allows them (the servers send GSO skbs; the router
//! receives with GRO and must split them by the path MTU), except transmit checksum offload on
//! the devices that feed a native XDP program (see support/topology.rs; the kernel itself turns
//! off TSO on such a device's veth peer).
//!
//! Kernel features: network namespaces, veth, IPv4/IPv6 forwarding and ICMP errors, native XDP on
//! veth (XDP_TX / XDP_REDIRECT), bpf_fib_lookup, TCX, bpf_skb_adjust_room IP-in-IP (DSR), bpffs,
//! cgroup v2 (the node agent's socket LB). Requires root, curl and python3 (ci/setup).
mod support;

use serde_json::{Value, json};
use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
};
use support::{
    cluster::{Cluster, NODE1_EXT4, NODE1_EXT6, NODE1_FAB4, NODE1_FAB6, NODE2_FAB4, NODE2_FAB6},
    fake_api::Res,
    kube_agent::KubeAgent,
    netns::{Netns, unique, veth},
    topology::{Bed, LB4, VIP4, VIP6, backend4, backend6},
};

const BLOB: usize = 4 << 20;
const PATH_MTU: &str = "1400";

/// 4 MiB that do not compress (a xorshift stream).
fn blob() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..BLOB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success(), "sha256sum {path:?}");
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

/// A folder holding the blob, removed on drop, and the HTTP servers serving it (killed on drop).
struct Http {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Http {
    fn new() -> Http {
        let dir = std::env::temp_dir().join(unique("pmtud"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("blob"), blob()).unwrap();
        Http {
            dir,
            children: Vec::new(),
        }
    }

    /// `python3 -m http.server PORT` in `ns` on `bind` (`::` is every address of both families).
    fn serve(&mut self, ns: &Netns, bind: &str, port: u16) {
        let d = self.dir.to_str().unwrap().to_string();
        let child = ns
            .command(&[
                "python3",
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                bind,
                "--directory",
                &d,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        self.children.push(child);
    }

    /// Downloads the blob from `url` in `client` (curl, 60 s at most) and checks its length and
    /// sha256 against the served file. Err: curl's complaint.
    fn download(&self, client: &Netns, url: &str) -> Result<(), String> {
        let file = self.dir.join(unique("got"));
        let out = client
            .command(&["curl", "-sS", "--max-time", "60", "-o"])
            .arg(&file)
            .arg(url)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(format!(
                "curl {url}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert_eq!(len as usize, BLOB, "{url}: length");
        assert_eq!(
            sha256(&file),
            sha256(&self.dir.join("blob")),
            "{url}: sha256"
        );
        std::fs::remove_file(&file).unwrap();
        Ok(())
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Puts a router between `client` and `peer`: the client's link `c0` (to `peer`'s `peer_if`) is
/// replaced by client `c0` ── `r0` router `r1` ── `peer_if`. `near` is the router's address on the
/// peer's side (v4, v6), `far` the client link's prefix ("10.x.y", "fdxx:...") with the router at
/// .1 / ::1 and the client at .2 / ::2, `gw` the peer's addresses (/24, /64; the router's
/// default gateway). `r0`'s MTU is [`PATH_MTU`]; the client keeps 1500.
fn router(
    client: &Netns,
    peer: &Netns,
    peer_if: &str,
    near: (&str, &str),
    gw: (&str, &str),
    far: (&str, &str),
) -> Netns {
    let r = Netns::new(&unique("r"));
    for ns in [client, peer, &r] {
        ns.run(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]);
    }
    r.run(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    client.run(&["ip", "link", "del", "c0"]);
    veth(client, "c0", &r, "r0");
    veth(&r, "r1", peer, peer_if);
    r.run(&["ip", "link", "set", "r0", "mtu", PATH_MTU]);
    let (f4, f6) = far;
    r.run(&["ip", "addr", "add", &format!("{f4}.1/24"), "dev", "r0"]);
    r.run(&[
        "ip",
        "addr",
        "add",
        &format!("{f6}::1/64"),
        "dev",
        "r0",
        "nodad",
    ]);
    r.run(&["ip", "addr", "add", &format!("{}/24", near.0), "dev", "r1"]);
    r.run(&[
        "ip",
        "addr",
        "add",
        &format!("{}/64", near.1),
        "dev",
        "r1",
        "nodad",
    ]);
    r.run(&["ip", "route", "add", "default", "via", gw.0]);
    r.run(&["ip", "-6", "route", "add", "default", "via", gw.1]);
    client.run(&["ip", "addr", "add", &format!("{f4}.2/24"), "dev", "c0"]);
    client.run(&[
        "ip",
        "addr",
        "add",
        &format!("{f6}::2/64"),
        "dev",
        "c0",
        "nodad",
    ]);
    client.run(&["ip", "route", "add", "default", "via", &format!("{f4}.1")]);
    client.run(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("{f6}::1"),
    ]);
    // The peer's addresses went with its old device.
    peer.run(&["ip", "addr", "add", &format!("{}/24", gw.0), "dev", peer_if]);
    peer.run(&[
        "ip",
        "addr",
        "add",
        &format!("{}/64", gw.1),
        "dev",
        peer_if,
        "nodad",
    ]);
    peer.run(&["ip", "route", "add", &format!("{f4}.0/24"), "via", near.0]);
    peer.run(&[
        "ip",
        "-6",
        "route",
        "add",
        &format!("{f6}::/64"),
        "via",
        near.1,
    ]);
    r
}

/// The MTU `ns` learnt for `dst` (its route cache), if any.
fn learnt_mtu(ns: &Netns, dst: &str) -> Option<String> {
    let out = ns.run(&["ip", "route", "get", dst]);
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let mut w = s.split_whitespace();
    w.by_ref().find(|t| *t == "mtu")?;
    w.next().map(str::to_string)
}

#[track_caller]
fn assert_learnt(ns: &Netns, dst: &str, what: &str) {
    assert_eq!(
        learnt_mtu(ns, dst).as_deref(),
        Some(PATH_MTU),
        "{what}: the path MTU towards {dst} reached the server"
    );
}

/// Edge LB: an SNAT and a DSR service per family, one backend serving both.
#[test]
fn edge_lb_snat_and_dsr_downloads_over_a_smaller_path_mtu() {
    let mut bed = Bed::new(1);
    let r = router(
        &bed.client,
        &bed.lb,
        "l0",
        ("10.200.1.2", "fd00:200:1::2"),
        ("10.200.1.1", "fd00:200:1::1"),
        ("10.200.2", "fd00:200:2"),
    );
    // The router's end takes the LB's XDP_TX / redirected frames (GRO) and sends complete
    // checksums into the LB's native XDP (no transmit checksum offload).
    r.run(&["ethtool", "-K", "r1", "gro", "on", "tx", "off"]);
    bed.dsr_backends();
    let b = &bed.backends[0];
    let mut http = Http::new();
    http.serve(b, "::", 8000);
    http.serve(b, "::", 8001);
    let mut y = String::from("services:\n");
    for (fam, vip, backend) in [(4, VIP4, backend4(1)), (6, VIP6, backend6(1))] {
        for (mode, port) in [("snat", 8000), ("dsr", 8001)] {
            y += &format!(
                "  - name: {mode}{fam}\n    vip: {vip}\n    port: {port}\n    protocol: tcp\n    mode: {mode}\n    backends:\n      - address: {backend}\n        port: {port}\n"
            );
        }
    }
    bed.write_config(&y);
    bed.agent.start();
    for (vip, port) in [
        (VIP4, 8000),
        (VIP4, 8001),
        (format!("[{VIP6}]").as_str(), 8000),
        (format!("[{VIP6}]").as_str(), 8001),
    ] {
        let url = format!("http://{vip}:{port}/blob");
        // The server may need a moment to listen: retry connection failures only briefly.
        bed.eventually(90, &url, || match http.download(&bed.client, &url) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("{e}");
                false
            }
        });
    }
    let status = bed.agent.status();
    let translated = status["counters"]["icmp_translated"]["packets"]
        .as_u64()
        .unwrap();
    assert!(translated >= 4, "one error per download at least: {status}");
    // SNAT: the backend learnt the MTU towards the LB's address; DSR: towards the client.
    assert_learnt(b, LB4, "SNAT IPv4");
    assert_learnt(b, "10.200.2.2", "DSR IPv4");
    assert_learnt(b, "fd00:200:1::1", "SNAT IPv6");
    assert_learnt(b, "fd00:200:2::2", "DSR IPv6");
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

/// A NodePort Service `name` (IPv4, port 8000 on NodePort `node_port`) served by `pod`.
fn http_service(
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
            "type": "NodePort", "clusterIP": format!("10.96.2.{n}"),
            "clusterIPs": [format!("10.96.2.{n}"), format!("fd96:2::{n}")],
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
            "ports": [{"name": "http", "port": 8000, "targetPort": 8000, "protocol": "TCP", "nodePort": node_port}],
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
                "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
                "endpoints": [{"addresses": [addr.to_string()], "nodeName": format!("node{}", p.node),
                               "conditions": {"ready": true}}],
            }),
        ));
    }
    out
}

/// NodePort with the node agents: a pod of the node (DNAT), a pod of another node (SNAT) and
/// the same through DSR; TSO / GSO / checksum offload on at the client and the pods, GRO on the
/// nodes' devices and the router.
#[test]
fn nodeport_local_snat_and_dsr_downloads_over_a_smaller_path_mtu() {
    let c = Cluster::new([1, 1]);
    let r = router(
        &c.client,
        &c.node1,
        "ext0",
        ("192.168.50.2", "fd50::2"),
        (NODE1_EXT4, NODE1_EXT6),
        ("192.168.60", "fd60"),
    );
    c.node1
        .run(&["sysctl", "-qw", "net.ipv4.conf.ext0.accept_local=1"]);
    c.client
        .run(&["ethtool", "-K", "c0", "tso", "on", "gso", "on", "tx", "on"]);
    r.run(&["ethtool", "-K", "r1", "gro", "on"]);
    for (ns, devs) in [(&c.node1, ["ext0", "fab0"]), (&c.node2, ["fab0", "fab0"])] {
        for d in devs {
            ns.run(&["ethtool", "-K", d, "gro", "on", "tso", "on", "tx", "on"]);
        }
    }
    let mut http = Http::new();
    for p in &c.pods {
        p.ns.run(&[
            "ethtool", "-K", "eth0", "tso", "on", "gso", "on", "tx", "on",
        ]);
        http.serve(&p.ns, "::", 8000);
    }
    let mut k1 = KubeAgent::serve(&c.node1, "node1", &["ext0", "fab0"]);
    let mut k2 = KubeAgent::serve(&c.node2, "node2", &["fab0"]);
    for k in [&k1, &k2] {
        k.put(nodes());
        k.put(http_service(&c, "local", 1, 30201, "p11", false));
        k.put(http_service(&c, "remote", 2, 30202, "p21", false));
        k.put(http_service(&c, "dsr", 3, 30203, "p21", true));
    }
    k2.start();
    k2.wait_local_endpoints(2);
    k1.start();
    k1.wait_local_endpoints(2);
    let fronts = [NODE1_EXT4.to_string(), format!("[{NODE1_EXT6}]")];
    for (front, (port, what)) in fronts
        .iter()
        .flat_map(|f| [(30201, "local"), (30202, "snat"), (30203, "dsr")].map(|c| (f, c)))
    {
        let url = format!("http://{front}:{port}/blob");
        k1.eventually(&format!("{what}: {url}"), || {
            http.download(&c.client, &url)
                .map_err(|e| format!("{e}; node2: {}", k2.status()["counters"]))
        });
    }
    let (s1, s2) = (k1.status(), k2.status());
    // node1 translated errors for the local and SNAT flows and tunnelled the DSR one; node2 took
    // the tunnel off and DNAT'ed the error to the pod.
    assert!(k1.counter("icmp_translated", true) >= 6, "{s1}");
    assert!(k2.counter("icmp_translated", true) >= 2, "{s2}");
    assert_learnt(&c.pod("p11").ns, "192.168.60.2", "local");
    assert_learnt(&c.pod("p21").ns, NODE1_FAB4, "SNAT");
    assert_learnt(&c.pod("p21").ns, "192.168.60.2", "DSR");
    assert_learnt(&c.pod("p11").ns, "fd60::2", "local IPv6");
    assert_learnt(&c.pod("p21").ns, NODE1_FAB6, "SNAT IPv6");
    assert_learnt(&c.pod("p21").ns, "fd60::2", "DSR IPv6");
    assert_eq!(k1.counter("error", false), 0, "{s1}");
    assert_eq!(k2.counter("error", false), 0, "{s2}");
}
