//! NodePort / LoadBalancer / externalIPs from outside, end to end with real TCP and UDP: an
//! external client, node1 running the NodePort tc programs on its external devices, pods on node1
//! and on node2 (see support/cluster.rs).
//! Kernel features: network namespaces, veth, IPv4/IPv6 forwarding, TCX (tc ingress and egress
//! bpf_links), bpf_skb_store_bytes / bpf_l3_csum_replace / bpf_l4_csum_replace / bpf_csum_diff,
//! bpf_skb_pull_data, bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, BTF maps (hash, LRU hash, LPM trie, per-CPU
//! array, map-in-map), bpffs pinning. Requires root: without it the setup fails (never skips).
mod support;

use abi::{lb::reason, nodeport::reason as np};
use lb::{
    compile::bytes_addr,
    model::{BackendState, Model, Protocol, Service},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};
use support::{
    cluster::{
        CLIENT4, CLIENT4_OUT, CLIENT6, CLIENT6_OUT, Cluster, NODE1_EXT4, NODE1_EXT6, NODE1_FAB4,
        NODE1_FAB6, PORT_MAX, PORT_MIN, ip, service,
    },
    peer::{self, Answer, PeerConn, Seen},
    servers::{Servers, tcp_request, udp_request},
};

fn node(v6: bool) -> &'static str {
    if v6 { NODE1_EXT6 } else { NODE1_EXT4 }
}

fn frontend(v6: bool, port: u16) -> SocketAddr {
    SocketAddr::new(ip(node(v6)), port)
}

/// One service per (family, protocol) on `port`, with the named pods as backends.
fn services(c: &Cluster, port: u16, pods: &[&str]) -> Vec<Service> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let backends: Vec<SocketAddr> = pods.iter().map(|p| c.pod(p).addr(v6)).collect();
            let name = format!("np{port}-{proto:?}-{}", if v6 { 6 } else { 4 });
            out.push(service(&name, frontend(v6, port), proto, &backends));
        }
    }
    out
}

fn ask(c: &Cluster, from: Option<IpAddr>, to: SocketAddr, udp: bool) -> Result<Answer, String> {
    peer::ask(&c.client, from, to, udp)
}

/// `n` new connections (or datagrams from fresh sockets) to `to`: who answered, and whom each
/// backend saw. Every request must succeed.
fn spread(c: &Cluster, to: SocketAddr, udp: bool, n: usize) -> Seen {
    peer::spread(&c.client, to, udp, n).unwrap_or_else(|e| panic!("to {to} (udp={udp}): {e}"))
}

fn client(v6: bool) -> IpAddr {
    ip(if v6 { CLIENT6 } else { CLIENT4 })
}

fn snat_addr(v6: bool) -> IpAddr {
    ip(if v6 { NODE1_FAB6 } else { NODE1_FAB4 })
}

#[test]
fn local_backend_sees_the_client_and_replies_are_reverse_translated() {
    let mut c = Cluster::new([1, 1]);
    let model = Model {
        maglev_seed: 7,
        services: services(&c, 30001, &["p11"]),
    };
    c.start(&model);
    for v6 in [false, true] {
        for udp in [false, true] {
            // udp_ask checks the answer's source is the frontend: reverse DNAT at egress.
            let seen = spread(&c, frontend(v6, 30001), udp, 5);
            let want: BTreeMap<_, _> = [("p11".to_string(), BTreeSet::from([client(v6)]))].into();
            assert_eq!(seen, want, "v6={v6} udp={udp}");
        }
    }
    assert!(c.np_count(np::LOCAL) >= 20);
    assert!(c.np_count(np::REV_DNAT) >= 20);
    assert_eq!(c.np_count(np::REMOTE), 0);
}

#[test]
fn remote_backend_is_snatted_to_the_node_and_replies_come_back_through_it() {
    let mut c = Cluster::new([1, 1]);
    let model = Model {
        maglev_seed: 7,
        services: services(&c, 30002, &["p21"]),
    };
    c.start(&model);
    for v6 in [false, true] {
        for udp in [false, true] {
            let seen = spread(&c, frontend(v6, 30002), udp, 5);
            let want: BTreeMap<_, _> =
                [("p21".to_string(), BTreeSet::from([snat_addr(v6)]))].into();
            assert_eq!(seen, want, "v6={v6} udp={udp}");
        }
    }
    assert!(c.np_count(np::REMOTE) >= 20);
    assert!(c.np_count(np::REV_SNAT) >= 20);
    assert!(c.lb_count(reason::FWD_SNAT) >= 20);
    assert_eq!(c.np_count(np::LOCAL), 0);
    // Every reply entry towards node1's SNAT address holds a port of the configured range.
    let snat = c.rec.as_ref().unwrap().datapath().snat_entries();
    let to_node: Vec<u16> = snat
        .iter()
        .filter(|(k, _)| [snat_addr(false), snat_addr(true)].contains(&bytes_addr(&k.dst)))
        .map(|(k, _)| u16::from_be(k.dport))
        .collect();
    assert!(!to_node.is_empty());
    assert!(
        to_node.iter().all(|p| (PORT_MIN..=PORT_MAX).contains(p)),
        "{to_node:?}"
    );
}

/// The first packets towards node2 find its address without a neighbour entry on node1 (flushed
/// before each family's traffic): bpf_redirect_neigh hands them to fab0's neighbour output, which
/// resolves node2 and sends them — none goes up node1's stack (`fib_pass` stays 0) — and the
/// connections and datagrams get their answers.
#[test]
fn an_unresolved_next_hop_is_resolved_by_redirect_neigh_not_the_stack() {
    let mut c = Cluster::new([1, 1]);
    let model = Model {
        maglev_seed: 7,
        services: services(&c, 30005, &["p21"]),
    };
    c.start(&model);
    let mut before = c.lb_count(reason::NEIGH_REDIRECT);
    for v6 in [false, true] {
        let family = if v6 { "-6" } else { "-4" };
        c.node1
            .run(&["ip", family, "neigh", "flush", "dev", "fab0"]);
        for udp in [false, true] {
            let seen = spread(&c, frontend(v6, 30005), udp, 3);
            let want: BTreeMap<_, _> =
                [("p21".to_string(), BTreeSet::from([snat_addr(v6)]))].into();
            assert_eq!(seen, want, "v6={v6} udp={udp}");
        }
        let now = c.lb_count(reason::NEIGH_REDIRECT);
        assert!(now > before, "v6={v6}: no packet took bpf_redirect_neigh");
        before = now;
    }
    assert_eq!(
        c.lb_count(reason::FIB_PASS),
        0,
        "a packet went up the stack"
    );
    assert!(c.np_count(np::REMOTE) >= 12);
}

#[test]
fn mixed_backends_are_all_used_over_many_connections() {
    let mut c = Cluster::new([2, 2]);
    let model = Model {
        maglev_seed: 7,
        services: services(&c, 30003, &["p11", "p12", "p21", "p22"]),
    };
    c.start(&model);
    for v6 in [false, true] {
        for udp in [false, true] {
            let seen = spread(&c, frontend(v6, 30003), udp, 40);
            let ids: BTreeSet<&str> = seen.keys().map(|s| s.as_str()).collect();
            assert_eq!(
                ids,
                BTreeSet::from(["p11", "p12", "p21", "p22"]),
                "v6={v6} udp={udp}"
            );
            for (id, peers) in &seen {
                let want = if id.starts_with("p1") {
                    client(v6)
                } else {
                    snat_addr(v6)
                };
                assert_eq!(peers, &BTreeSet::from([want]), "{id} v6={v6} udp={udp}");
            }
        }
    }
}

/// ClientIP affinity from outside, over local (DNAT) and remote (SNAT) backends: each client
/// address keeps one backend for every new connection; the same backends without affinity are
/// spread over. Also needs the socket LB's maps (LRU hash, array), loaded but not attached.
#[test]
fn client_ip_affinity_keeps_each_client_on_one_backend() {
    let mut c = Cluster::new([2, 2]);
    let pods = ["p11", "p12", "p21", "p22"];
    let mut svcs = services(&c, 30007, &pods);
    for mut s in services(&c, 30008, &pods) {
        s.affinity_timeout_s = Some(60);
        svcs.push(s);
    }
    let model = Model {
        maglev_seed: 7,
        services: svcs,
    };
    c.start(&model);
    let mut chosen = BTreeSet::new();
    for v6 in [false, true] {
        let plain = spread(&c, frontend(v6, 30007), false, 20);
        assert!(plain.len() >= 2, "without affinity v6={v6}: {plain:?}");
        let out = ip(if v6 { CLIENT6_OUT } else { CLIENT4_OUT });
        for from in [client(v6), out] {
            let mut seen = BTreeSet::new();
            for i in 0..20 {
                let a = ask(&c, Some(from), frontend(v6, 30008), false)
                    .unwrap_or_else(|e| panic!("{from} request {i}: {e}"));
                seen.insert(a.id);
            }
            assert_eq!(seen.len(), 1, "with affinity, {from}: {seen:?}");
            chosen.extend(seen);
        }
    }
    eprintln!("affinity backends: {chosen:?}");
}

#[test]
fn source_ranges_refuse_clients_outside_them() {
    let mut c = Cluster::new([1, 1]);
    let svcs = services(&c, 30004, &["p11", "p21"]);
    let model = Model {
        maglev_seed: 7,
        services: svcs.clone(),
    };
    c.start(&model);
    for s in &svcs {
        let r: &[&str] = if s.frontend.addr.is_ipv4() {
            &["192.168.50.0/28", "203.0.113.0/24"]
        } else {
            &["fd50::/126"]
        };
        c.set_source_ranges(s, r);
    }
    for v6 in [false, true] {
        let (inside, outside) = if v6 {
            (ip(CLIENT6), ip(CLIENT6_OUT))
        } else {
            (ip(CLIENT4), ip(CLIENT4_OUT))
        };
        let fe = frontend(v6, 30004);
        for udp in [false, true] {
            for _ in 0..3 {
                ask(&c, Some(inside), fe, udp)
                    .unwrap_or_else(|e| panic!("inside v6={v6} udp={udp}: {e}"));
            }
            let before = c.np_count(np::SOURCE_RANGE);
            let r = ask(&c, Some(outside), fe, udp);
            assert!(r.is_err(), "outside client answered: {r:?}");
            assert!(c.np_count(np::SOURCE_RANGE) > before, "refusal counted");
        }
    }
    // Ranges read back; clearing them opens the service.
    let s4 = &svcs[0];
    let id = c.service_id(s4);
    let held = c.np.as_ref().unwrap().source_ranges(id);
    assert_eq!(held.len(), 2, "{held:?}");
    c.set_source_ranges(s4, &["192.168.50.64/26"]);
    assert!(ask(&c, Some(ip(CLIENT4_OUT)), frontend(false, 30004), false).is_ok());
    assert!(ask(&c, Some(ip(CLIENT4)), frontend(false, 30004), false).is_err());
    c.set_source_ranges(s4, &[]);
    assert!(c.np.as_ref().unwrap().source_ranges(id).is_empty());
    for from in [CLIENT4, CLIENT4_OUT] {
        ask(&c, Some(ip(from)), frontend(false, 30004), false)
            .unwrap_or_else(|e| panic!("open service from {from}: {e}"));
    }
}

#[test]
fn established_connections_keep_their_backend_while_the_backend_set_changes_and_drain() {
    let mut c = Cluster::new([2, 2]);
    let mut svcs = services(&c, 30005, &["p11", "p21"]);
    svcs.retain(|s| s.frontend.protocol == Protocol::Tcp);
    let mut model = Model {
        maglev_seed: 7,
        services: svcs,
    };
    c.start(&model);
    // A connection to the local and one to the remote backend, per family.
    let mut conns: Vec<(PeerConn, String, bool)> = Vec::new();
    for v6 in [false, true] {
        let mut have = BTreeSet::new();
        for _ in 0..60 {
            let mut conn = PeerConn::open(&c.client, frontend(v6, 30005));
            let id = conn.ask("first").unwrap().id;
            if have.insert(id.clone()) {
                conns.push((conn, id, v6));
            }
            if have.len() == 2 {
                break;
            }
        }
        assert_eq!(have.len(), 2, "v6={v6}: {have:?}");
    }
    // New backends; the old ones terminating (kept, but out of new-flow selection).
    for (s, v6) in model.services.iter_mut().zip([false, true]) {
        for b in &mut s.backends {
            b.state = BackendState::Terminating;
        }
        for p in ["p12", "p22"] {
            s.backends.push(lb::model::Backend {
                addr: c.pod(p).addr(v6),
                weight: 1,
                state: BackendState::Active,
            });
        }
    }
    c.apply(&model);
    for v6 in [false, true] {
        let seen = spread(&c, frontend(v6, 30005), false, 20);
        let ids: BTreeSet<&str> = seen.keys().map(|s| s.as_str()).collect();
        assert_eq!(ids, BTreeSet::from(["p12", "p22"]), "new flows, v6={v6}");
    }
    for (conn, id, v6) in &mut conns {
        for i in 0..5 {
            let a = conn
                .ask(&format!("again{i}"))
                .expect("established connection");
            assert_eq!(&a.id, id, "v6={v6}");
        }
    }
    // Removing the old backends: they drain (TCP), their connections still answered, while
    // new flows go to the new ones only.
    for s in &mut model.services {
        s.backends.retain(|b| b.state == BackendState::Active);
    }
    c.apply(&model);
    let rec = || c.rec.as_ref().unwrap();
    assert_eq!(rec().draining(), 4, "two old backends per family");
    for (conn, id, v6) in &mut conns {
        let a = conn
            .ask("draining")
            .expect("connection to a draining backend");
        assert_eq!(&a.id, id, "v6={v6}");
    }
    for v6 in [false, true] {
        let seen = spread(&c, frontend(v6, 30005), false, 20);
        let ids: BTreeSet<&str> = seen.keys().map(|s| s.as_str()).collect();
        assert_eq!(ids, BTreeSet::from(["p12", "p22"]), "new flows, v6={v6}");
    }
    // Connections closed (client FIN, server FIN): nothing live is left, the entries and their
    // flows (conntrack and reply entries) go.
    let pinned = |c: &Cluster| c.rec.as_ref().unwrap().datapath().conntrack().len();
    let before = pinned(&c);
    drop(conns);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let ch = c.rec.as_mut().unwrap().reap().unwrap();
    assert_eq!(ch.backends_removed, 4, "{ch:?}");
    assert!(ch.flows_flushed >= 4, "{ch:?}");
    assert!(pinned(&c) < before);
    assert_eq!(c.rec.as_ref().unwrap().draining(), 0);
}

#[test]
fn traffic_not_for_a_service_passes_untouched() {
    let mut c = Cluster::new([1, 1]);
    let model = Model {
        maglev_seed: 7,
        services: services(&c, 30006, &["p11"]),
    };
    c.start(&model);
    // node1's own server on a port that is no service, and the frontend's address itself.
    let own = Servers::start(
        &c.node1,
        "node1",
        &[
            SocketAddr::new(ip(NODE1_EXT4), 8080),
            SocketAddr::new(ip(NODE1_EXT6), 8080),
        ],
    );
    let before = c.lb_count(reason::PASS);
    for v6 in [false, true] {
        let to = SocketAddr::new(ip(node(v6)), 8080);
        assert_eq!(tcp_request(&c.client, to).unwrap(), "node1");
        assert_eq!(udp_request(&c.client, to).unwrap(), "node1");
    }
    assert!(c.lb_count(reason::PASS) > before);
    // Pods stay reachable directly (routed by node1, untranslated).
    let a = ask(&c, None, c.pod("p21").addr(false), false).unwrap();
    assert_eq!((a.id.as_str(), a.peer), ("p21", client(false)));
    let a = ask(&c, None, c.pod("p11").addr(true), true).unwrap();
    assert_eq!((a.id.as_str(), a.peer), ("p11", client(true)));
    // ICMP too.
    c.client.run(&["ping", "-c1", "-W2", NODE1_EXT4]);
    drop(own);
    assert_eq!(c.np_count(np::ERROR), 0);
}
