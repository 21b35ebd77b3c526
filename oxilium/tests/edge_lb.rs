//! End-to-end tests of the edge load balancer: real TCP and UDP through the real kernel.
//! Kernel features: network namespaces, veth, native XDP on veth (XDP_TX / XDP_REDIRECT),
//! bpf_fib_lookup, BTF maps with map-in-map (BPF_F_INNER_MAP), LRU hash, bpffs pinning,
//! bpf_link pinning and BPF_LINK_UPDATE; for DSR also TCX (tc ingress) and bpf_skb_adjust_room.
//! Requires root; a test that cannot set up its namespaces or load the programs fails.
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};
use support::{
    servers::{Conn, tcp_request, udp_request},
    topology::{Bed, VIP4, VIP6, backend4, backend6, sa},
};

const PORT: u16 = 8080;

/// A config with one service per (vip, protocol), all with the given algorithm and mode.
fn config(alg: &str, mode: &str, backends: &[usize], extra: &str) -> String {
    let mut y = String::from("maglev_seed: 7\nservices:\n");
    for (vip, fam) in [(VIP4, 4), (VIP6, 6)] {
        for proto in ["tcp", "udp"] {
            y += &format!(
                "  - name: {proto}{fam}\n    vip: {vip}\n    port: {PORT}\n    protocol: {proto}\n    algorithm: {alg}\n    mode: {mode}\n    table_size: 251\n{extra}    backends:\n"
            );
            for i in backends {
                let a = if fam == 4 { backend4(*i) } else { backend6(*i) };
                y += &format!("      - address: {a}\n        port: {PORT}\n");
            }
        }
    }
    y
}

/// Sends `n` new connections / datagrams and counts answers per backend; every one must succeed.
fn spread(bed: &Bed, vip: &str, udp: bool, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = if udp {
            udp_request(&bed.client, sa(vip, PORT))
        } else {
            tcp_request(&bed.client, sa(vip, PORT))
        };
        let id = r.unwrap_or_else(|e| {
            panic!(
                "request to {vip} (udp={udp}) failed: {e}\nstatus: {}\n{}",
                bed.agent.cli(&["status"]),
                bed.agent.log()
            )
        });
        *seen.entry(id).or_default() += 1;
    }
    seen
}

fn all_three(seen: &BTreeMap<String, usize>) -> bool {
    seen.keys().cloned().collect::<BTreeSet<_>>() == ["b1", "b2", "b3"].map(String::from).into()
}

#[test]
fn snat_tcp_and_udp_over_ipv4_and_ipv6() {
    let mut bed = Bed::new(3);
    bed.serve(PORT, false);
    bed.write_config(&config("maglev", "snat", &[1, 2, 3], ""));
    bed.agent.start();
    for vip in [VIP4, VIP6] {
        for udp in [false, true] {
            let seen = spread(&bed, vip, udp, 45);
            assert!(all_three(&seen), "{vip} udp={udp}: {seen:?}");
        }
    }
    // The datapath did the work: per-service and per-backend counters moved.
    let services = bed.agent.cli(&["service", "list"]);
    for s in services.as_array().unwrap() {
        assert!(s["packets"].as_u64().unwrap() > 0, "{s}");
        for b in s["backends"].as_array().unwrap() {
            assert!(b["packets"].as_u64().unwrap() > 0, "{b}");
        }
    }
    let status = bed.agent.cli(&["status"]);
    assert!(status["counters"]["fwd_snat"]["packets"].as_u64().unwrap() > 0);
    assert!(status["counters"]["rev_snat"]["packets"].as_u64().unwrap() > 0);
}

#[test]
fn dsr_tcp_and_udp_over_ipv4_and_ipv6() {
    let mut bed = Bed::new(3);
    bed.dsr_backends();
    bed.serve(PORT, true);
    bed.write_config(&config("random", "dsr", &[1, 2, 3], ""));
    bed.agent.start();
    for vip in [VIP4, VIP6] {
        for udp in [false, true] {
            let seen = spread(&bed, vip, udp, 45);
            assert!(all_three(&seen), "{vip} udp={udp}: {seen:?}");
        }
    }
    let status = bed.agent.cli(&["status"]);
    assert!(status["counters"]["fwd_dsr"]["packets"].as_u64().unwrap() > 0);
    assert_eq!(
        status["counters"]["rev_snat"]["packets"].as_u64().unwrap(),
        0,
        "DSR replies bypass the LB's NAT"
    );
}

#[test]
fn established_flow_keeps_its_backend_when_the_set_changes_and_drains_after_removal() {
    let mut bed = Bed::new(3);
    bed.serve(PORT, false);
    bed.write_config(&config("maglev", "snat", &[1, 2, 3], ""));
    bed.agent.start();
    let mut conn = Conn::open(&bed.client, sa(VIP4, PORT));
    let mine = conn.ask("one").unwrap();
    let n: usize = mine[1..].parse().unwrap();
    // Remove another backend: the Maglev table changes, the flow must stay put.
    let other = if n == 1 { 2 } else { 1 };
    let keep: Vec<usize> = (1..=3).filter(|i| *i != other).collect();
    bed.write_config(&config("maglev", "snat", &keep, ""));
    bed.eventually(10, "reload", || {
        bed.agent.cli(&["bpf", "lb", "list"])[0]["backends"]
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    for i in 0..20 {
        assert_eq!(
            conn.ask(&format!("m{i}")).unwrap(),
            mine,
            "flow moved after the backend set changed"
        );
    }
    // The status counts the conntrack entries (keys walked after the state lock is released):
    // as many as `ct list` copies out.
    let listed = bed.agent.cli(&["ct", "list"]).as_array().unwrap().len();
    assert!(listed > 0);
    assert_eq!(
        bed.agent.status()["conntrack_entries"].as_u64(),
        Some(listed as u64)
    );
    // New flows never reach the removed backend.
    let seen = spread(&bed, VIP4, false, 30);
    assert!(!seen.contains_key(&format!("b{other}")), "{seen:?}");
    // Removing the flow's own backend drops its conntrack entries.
    let ct_has = |bed: &Bed, addr: &str| {
        let ct = bed.agent.cli(&["ct", "list"]);
        let lb = bed.agent.cli(&["bpf", "lb", "list"]);
        let ids: BTreeSet<u64> = lb
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["backends"].as_array().unwrap().clone())
            .filter(|b| b["address"].as_str().unwrap().starts_with(addr))
            .map(|b| b["id"].as_u64().unwrap())
            .collect();
        (ct.as_array().unwrap().len(), ids)
    };
    let (_, ids) = ct_has(&bed, &format!("{}:", backend4(n)));
    assert_eq!(
        ids.len(),
        2,
        "one backend entry per IPv4 service (tcp4, udp4)"
    );
    let keep: Vec<usize> = (1..=3).filter(|i| *i != n).collect();
    bed.write_config(&config("maglev", "snat", &keep, ""));
    // The TCP service's entry drains (the connection is live); the UDP service's, without
    // flows, goes at once.
    let state_of = |bed: &Bed| -> Vec<String> {
        bed.agent
            .cli(&["bpf", "lb", "list"])
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["backends"].as_array().unwrap().clone())
            .filter(|b| ids.contains(&b["id"].as_u64().unwrap()))
            .map(|b| b["state"].as_str().unwrap().to_string())
            .collect()
    };
    bed.eventually(10, "the removed backend drains", || {
        state_of(&bed) == ["draining"]
    });
    // Its established connection still reaches it; new flows never do.
    for i in 0..5 {
        assert_eq!(
            conn.ask(&format!("d{i}")).unwrap(),
            mine,
            "draining flow moved"
        );
    }
    let seen = spread(&bed, VIP4, false, 30);
    assert!(!seen.contains_key(&mine), "{seen:?}");
    // The connection closes: within the agent's reap period the entry and its flows are gone.
    drop(conn);
    bed.eventually(15, "the drained backend removed with its flows", || {
        state_of(&bed).is_empty()
            && bed
                .agent
                .cli(&["ct", "list"])
                .as_array()
                .unwrap()
                .iter()
                .all(|c| !ids.contains(&c["backend_id"].as_u64().unwrap()))
    });
}

#[test]
fn health_checks_quarantine_and_restore_a_backend() {
    let mut bed = Bed::new(3);
    bed.serve(PORT, false);
    let hc = "    health_check:\n      type: http\n      path: /healthz\n      interval: 100ms\n      timeout: 50ms\n      healthy_threshold: 2\n      unhealthy_threshold: 2\n";
    bed.write_config(&config("maglev", "snat", &[1, 2, 3], hc));
    bed.agent.start();
    assert!(all_three(&spread(&bed, VIP4, false, 45)));
    let state_of_b2 = |bed: &Bed| -> Vec<String> {
        bed.agent
            .cli(&["service", "list"])
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["backends"].as_array().unwrap().clone())
            .filter(|b| {
                b["address"].as_str().unwrap().contains("10.200.12.2")
                    || b["address"].as_str().unwrap().contains("fd00:200:12::2")
            })
            .map(|b| b["state"].as_str().unwrap().to_string())
            .collect()
    };
    bed.servers[1]
        .healthy
        .store(false, std::sync::atomic::Ordering::Relaxed);
    bed.eventually(10, "b2 quarantined", || {
        state_of_b2(&bed).iter().all(|s| s == "quarantined")
    });
    let seen = spread(&bed, VIP4, false, 45);
    assert!(
        !seen.contains_key("b2"),
        "quarantined backend took new flows: {seen:?}"
    );
    bed.servers[1]
        .healthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    bed.eventually(10, "b2 active again", || {
        state_of_b2(&bed).iter().all(|s| s == "active")
    });
    assert!(all_three(&spread(&bed, VIP4, false, 45)));
}

#[test]
fn reload_applies_valid_changes_and_rejects_invalid_ones_whole() {
    let mut bed = Bed::new(3);
    bed.serve(PORT, false);
    bed.write_config(&config("maglev", "snat", &[1], ""));
    bed.agent.start();
    assert_eq!(
        spread(&bed, VIP4, true, 10).keys().collect::<Vec<_>>(),
        ["b1"]
    );
    // An invalid file (bad weight in a later service) changes nothing and says where.
    let last = format!("      - address: {}\n        port: {PORT}\n", backend6(3));
    let bad = config("maglev", "snat", &[1, 2, 3], "")
        .replace(&last, &format!("{last}        weight: 0\n"));
    assert_ne!(bad, config("maglev", "snat", &[1, 2, 3], ""));
    bed.write_config(&bad);
    bed.eventually(10, "the reload error", || {
        bed.agent.cli(&["status"])["last_error"].as_str().is_some()
    });
    let err = bed.agent.cli(&["status"])["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("weight") && err.contains("lb.yaml:"), "{err}");
    assert_eq!(
        spread(&bed, VIP4, true, 10).keys().collect::<Vec<_>>(),
        ["b1"],
        "half-applied config"
    );
    // A valid file is applied.
    bed.write_config(&config("maglev", "snat", &[1, 2, 3], ""));
    bed.eventually(10, "the new backends", || {
        all_three(&spread(&bed, VIP4, true, 30))
    });
    assert!(bed.agent.cli(&["status"])["last_error"].is_null());
}

#[test]
fn agent_restart_keeps_established_connections() {
    let mut bed = Bed::new(3);
    bed.serve(PORT, false);
    bed.write_config(&config("maglev", "snat", &[1, 2, 3], ""));
    bed.agent.start();
    let mut v4 = Conn::open(&bed.client, sa(VIP4, PORT));
    let mut v6 = Conn::open(&bed.client, sa(VIP6, PORT));
    let (a, b) = (v4.ask("before").unwrap(), v6.ask("before").unwrap());
    bed.agent.stop();
    // The datapath runs on from its pinned maps and links while no agent is there.
    assert_eq!(v4.ask("during").unwrap(), a);
    assert_eq!(v6.ask("during").unwrap(), b);
    bed.agent.start();
    assert_eq!(v4.ask("after").unwrap(), a);
    assert_eq!(v6.ask("after").unwrap(), b);
    assert!(all_three(&spread(&bed, VIP4, false, 45)));
}

#[test]
fn kernel_maglev_table_matches_the_offline_builder() {
    let mut bed = Bed::new(3);
    bed.serve(PORT, false);
    bed.write_config(&config("maglev", "snat", &[1, 2, 3], ""));
    bed.agent.start();
    let kernel = bed.agent.cli(&["maglev", "get", "tcp4"]);
    let out = std::process::Command::new(support::agent::bin())
        .args([
            "maglev", "table", "--size", "251", "--seed", "7", "-o", "json",
        ])
        .args((1..=3).flat_map(|i| ["--backend".to_string(), format!("{}:{PORT}:1", backend4(i))]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(kernel["size"], 251);
    assert_eq!(kernel["table"], offline["table"]);
}

/// A DSR backend takes off only the LB's tunnels (`--tunnel-source`): the LB's are decapsulated
/// (the DSR flows answer), an IP-in-IP packet the client sends itself to the backend is dropped
/// and counted as `tunnel_refused` in the backend agent's `oxilium status`, and its inner UDP
/// datagram to the VIP never reaches the server there. Kernel features: the file's header, plus
/// raw IPPROTO_IPIP sockets.
#[test]
fn dsr_backend_takes_tunnels_only_from_its_lb() {
    let mut bed = Bed::new(1);
    bed.dsr_backends();
    bed.serve(PORT, true);
    bed.write_config(&config("random", "dsr", &[1], ""));
    bed.agent.start();
    assert_eq!(spread(&bed, VIP4, true, 5).get("b1"), Some(&5));
    let b1 = bed.backend_agent(1);
    let tunnel = |b: &support::agent::AgentProcess| b.status()["tunnel"].clone();
    let before = tunnel(b1);
    assert_eq!(
        before["sources"],
        serde_json::json!([support::topology::LB4, support::topology::LB6])
    );
    assert!(
        before["counters"]["decap"]["packets"].as_u64().unwrap() >= 5,
        "{before}"
    );
    assert_eq!(
        before["counters"]["tunnel_refused"]["packets"], 0,
        "{before}"
    );
    // The client's own tunnel: outer 10.200.1.2 → b1, inner client → VIP4 (UDP).
    let client = std::net::Ipv4Addr::new(10, 200, 1, 2);
    let inner = support::packet::ipv4(client, VIP4.parse().unwrap()).build(support::packet::udp(
        40404,
        PORT,
        b"smuggled",
    ));
    let IpAddr::V4(b1_addr) = backend4(1) else {
        unreachable!()
    };
    bed.client.exec(move || {
        // SAFETY: a raw socket of this thread's namespace, closed below.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_IPIP);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let to = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(b1_addr.octets()),
                },
                sin_zero: [0; 8],
            };
            for _ in 0..3 {
                let n = libc::sendto(
                    fd,
                    inner.as_ptr().cast(),
                    inner.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                );
                assert_eq!(
                    n,
                    inner.len() as isize,
                    "{}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    });
    b1.eventually(
        std::time::Duration::from_secs(10),
        "3 tunnel packets refused",
        || {
            let t = tunnel(b1);
            (t["counters"]["tunnel_refused"]["packets"] == 3)
                .then_some(())
                .ok_or(t)
        },
    );
    let after = tunnel(b1);
    assert_eq!(
        after["counters"]["decap"], before["counters"]["decap"],
        "{after}"
    );
}

/// Without `--tunnel-source` a DSR backend refuses every tunnel; the flag is refused for other
/// roles. Kernel features: the file's header.
#[test]
fn dsr_backend_without_tunnel_sources_refuses_everything() {
    let mut bed = Bed::new(1);
    let b = &bed.backends[0];
    b.run(&["ip", "addr", "add", &format!("{VIP4}/32"), "dev", "lo"]);
    b.run(&[
        "ip",
        "addr",
        "add",
        &format!("{VIP6}/128"),
        "dev",
        "lo",
        "nodad",
    ]);
    let backend = support::agent::AgentProcess::builder(b, "edge-open")
        .args(["--role", "backend", "--iface", "e0"])
        .start();
    bed.serve(PORT, true);
    bed.write_config(&config("random", "dsr", &[1], ""));
    bed.agent.start();
    assert!(udp_request(&bed.client, sa(VIP4, PORT)).is_err());
    let t = backend.status()["tunnel"].clone();
    assert_eq!(t["sources"], serde_json::json!([]), "{t}");
    assert!(
        t["counters"]["tunnel_refused"]["packets"].as_u64().unwrap() >= 1,
        "{t}"
    );
    assert_eq!(t["counters"]["decap"]["packets"], 0, "{t}");
    let out = std::process::Command::new(support::agent::bin())
        .args([
            "agent",
            "--iface",
            "lo",
            "--role",
            "lb",
            "--tunnel-source",
            "10.0.0.1",
        ])
        .args(["--config", "/nonexistent.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--tunnel-source"),
        "{err}"
    );
}

/// One's-complement sum of `b` (16-bit words in memory order), folded.
fn sum16(b: &[u8], mut acc: u32) -> u32 {
    for w in b.chunks(2) {
        acc += u16::from_ne_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// The TCP frames (to the service port) arriving at a backend's e0, captured through an
/// AF_PACKET socket in its namespace until `stop`.
fn capture(
    ns: &support::netns::Netns,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let path = ns.path();
    std::thread::spawn(move || {
        support::netns::enter(&path);
        // SAFETY: a packet socket of this thread's namespace, closed below.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            );
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            );
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut from: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                );
                // Incoming on e0 only (not loopback, not outgoing).
                if n > 0 && from.sll_pkttype != libc::PACKET_OUTGOING && from.sll_hatype == 1 {
                    frames.push(buf[..n as usize].to_vec());
                }
            }
            libc::close(fd);
            frames
        }
    })
}

/// Generic XDP (`--xdp-mode generic`) with TX checksum offload ON on the client's veth: the
/// client's TCP segments reach the program as CHECKSUM_PARTIAL skbs whose checksum field is the
/// pseudo-header seed. After SNAT each one arriving at the backend must carry either a complete
/// checksum or the seed of its new addresses (what the NIC / skb_checksum_help completes), in
/// both families. Kernel features: the file's header, generic XDP (XDP_REDIRECT of skbs),
/// AF_PACKET sockets.
#[test]
fn generic_xdp_keeps_checksum_seeds_of_partial_packets_right() {
    let mut bed = Bed::new(1);
    bed.client.run(&["ethtool", "-K", "c0", "tx", "on"]);
    bed.serve(PORT, false);
    bed.write_config(&config("maglev", "snat", &[1], ""));
    bed.agent.add_args(["--xdp-mode", "generic"]);
    bed.agent.start();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sniffer = capture(&bed.backends[0], stop.clone());
    std::thread::sleep(std::time::Duration::from_millis(200));
    for vip in [VIP4, VIP6] {
        assert_eq!(spread(&bed, vip, false, 10).get("b1"), Some(&10));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let frames = sniffer.join().unwrap();
    let (mut partial, mut complete) = (0, 0);
    for f in frames {
        // The capture takes every frame the backend sees, ARP included: only IP is looked at.
        if f.len() < 14 || !matches!(u16::from_be_bytes([f[12], f[13]]), 0x0800 | 0x86dd) {
            continue;
        }
        let v = support::packet::view(&f);
        if v.proto != 6 || v.dport != PORT {
            continue;
        }
        if support::packet::verify_checksums(&f).is_ok() {
            complete += 1;
            continue;
        }
        let l4_len = (v.l3_len - (v.l4 - v.l3)) as u16;
        let addrs = |a: IpAddr| match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let mut acc = sum16(&addrs(v.src), 0);
        acc = sum16(&addrs(v.dst), acc);
        acc = sum16(&[0, 6], acc);
        acc = sum16(&l4_len.to_be_bytes(), acc);
        let field = u16::from_ne_bytes([f[v.l4 + 16], f[v.l4 + 17]]);
        assert_eq!(
            field as u32, acc,
            "neither a checksum nor the seed of {v:?}"
        );
        partial += 1;
    }
    assert!(
        partial >= 20,
        "partial segments seen: {partial} (complete: {complete})"
    );
}
