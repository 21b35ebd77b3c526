//! End-to-end tests of the socket-LB: real client processes in a cgroup and a network namespace,
//! translated at connect()/sendmsg() and reverse-translated at recvmsg()/getpeername().
//! Kernel features: cgroup v2 (an existing mount, or one the test mounts and unmounts),
//! BPF_PROG_TYPE_CGROUP_SOCK_ADDR (connect4/6, sendmsg4/6, recvmsg4/6, getpeername4/6),
//! bpf_link for cgroups and bpf_link pinning, bpf_set_retval, bpf_get_socket_cookie,
//! bpf_get_netns_cookie, BTF maps with map-in-map, LRU hash, BPF_MAP_TYPE_SK_STORAGE
//! (bpf_sk_storage_get from sock_addr programs), bpffs pinning, network namespaces.
//! Requires root; a test that cannot set up its cgroup, namespace or programs fails.
#[path = "sock_lb/storage.rs"]
mod storage;
mod support;

use abi::{
    lb::{ServiceKey, ServiceValue, names as lb_names},
    sock::{SCOPE_INTERNAL, reason},
};
use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData},
    programs::XdpMode,
};
use lb::{
    compile::{CompiledService, compile_service},
    model::{Algorithm, Backend, BackendState, Frontend, Mode, Protocol, Service},
    reconcile::{Datapath, Reconciler},
};
use oxilium::bpf::{
    lb_maps::KernelMaps,
    loader::load_xdp,
    socklb::{self, SockLb, with_affinity},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};
use support::{
    bpffs::{CgroupLinks, PinDir},
    cgroup::{Answer, Cgroup, run_client},
    netns::{Netns, unique},
    servers::Servers,
};

const CIP4: &str = "10.96.0.10";
const CIP4_AFF: &str = "10.96.0.11";
const CIP4_EMPTY: &str = "10.96.0.12";
const CIP6: &str = "fd00:96::10";
const SVC_PORT: u16 = 80;
const BE_PORT: u16 = 8080;

fn be4(i: usize) -> String {
    format!("10.244.0.{i}")
}
fn be6(i: usize) -> String {
    format!("fd00:244::{i}")
}

/// Node netns with backends on its loopback, a cgroup with the socket-LB attached, the services.
/// Fields drop in order: servers, programs, links, cgroup, pins, netns.
struct Bed {
    _servers: Vec<Servers>,
    sock: SockLb,
    reconciler: Reconciler<KernelMaps>,
    _links: CgroupLinks,
    cg: Cgroup,
    pins: PinDir,
    node: Netns,
}

fn service(addr: &str, proto: Protocol, backends: &[String]) -> CompiledService {
    let s = Service {
        name: format!("{addr}-{proto:?}"),
        frontend: Frontend {
            addr: addr.parse().unwrap(),
            port: SVC_PORT,
            protocol: proto,
        },
        algorithm: Algorithm::Random,
        mode: Mode::Snat,
        table_size: 0,
        conntrack_timeout_s: 60,
        scope: lb::model::Scope::Internal,
        affinity_timeout_s: None,
        source_ranges: Vec::new(),
        backends: backends
            .iter()
            .map(|a| Backend {
                addr: SocketAddr::new(a.parse().unwrap(), BE_PORT),
                weight: 1,
                state: BackendState::Active,
            })
            .collect(),
    };
    let c = compile_service(&s, 0).unwrap();
    assert_eq!(c.key.scope, SCOPE_INTERNAL);
    c
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let node = Netns::new(&unique(tag));
        let pins = PinDir::new(&unique(tag));
        let cg = Cgroup::new(tag);
        let mut servers = Vec::new();
        for i in 1..=3 {
            node.run(&["ip", "addr", "add", &format!("{}/32", be4(i)), "dev", "lo"]);
            node.run(&[
                "ip",
                "addr",
                "add",
                &format!("{}/128", be6(i)),
                "dev",
                "lo",
                "nodad",
            ]);
            let addrs: Vec<SocketAddr> = [be4(i), be6(i)]
                .iter()
                .map(|a| SocketAddr::new(a.parse().unwrap(), BE_PORT))
                .collect();
            servers.push(Servers::start(&node, &format!("b{i}"), &addrs));
        }
        // As in the agent: the XDP object creates and owns the LB maps, the sock-lb object
        // reuses their pins (and adds its own maps).
        let mut xdp =
            load_xdp(pins.path(), &[], XdpMode::default()).expect("loading the XDP object");
        let maps = KernelMaps::from_ebpf(&mut xdp).expect("LB maps");
        let mut sock = SockLb::load(pins.path()).expect("loading the sock-lb object");
        let mut reconciler = Reconciler::open(maps).expect("reconciler");
        let b4: Vec<String> = (1..=3).map(be4).collect();
        let b6: Vec<String> = (1..=3).map(be6).collect();
        let mut desired = BTreeMap::new();
        for proto in [Protocol::Tcp, Protocol::Udp] {
            for c in [
                service(CIP4, proto, &b4),
                service(CIP4_AFF, proto, &b4),
                service(CIP4_EMPTY, proto, &[]),
                service(CIP6, proto, &b6),
            ] {
                desired.insert(c.key, c);
            }
        }
        reconciler
            .apply(&desired)
            .expect("programming the services");
        sock.attach(&cg.path, Some(pins.path()))
            .expect("attaching to the cgroup");
        let links = CgroupLinks::new(pins.path(), &cg.path);
        Bed {
            _servers: servers,
            sock,
            reconciler,
            _links: links,
            cg,
            pins,
            node,
        }
    }

    fn key(addr: &str, proto: Protocol) -> ServiceKey {
        service(addr, proto, &[]).key
    }

    /// Runs the client `n` times in one process; `in_cgroup` puts the process in the test cgroup
    /// before it creates any socket.
    fn client(&self, in_cgroup: bool, mode: &str, host: &str, n: usize) -> Vec<Answer> {
        run_client(
            in_cgroup.then_some(self.cg.path.as_path()),
            &self.node,
            mode,
            host,
            SVC_PORT,
            n,
        )
    }

    /// Every answer must be OK and name `peer`:80 as the peer; returns the backend ids seen.
    fn backends(&self, mode: &str, host: &str, peer: &str, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for a in self.client(true, mode, host, n) {
            match a {
                Answer::Ok { id, peer: p, port } => {
                    assert_eq!((p.as_str(), port), (peer, SVC_PORT), "{mode} peer address");
                    *seen.entry(id).or_default() += 1;
                }
                Answer::Err(e) => panic!("{mode} to {host}: errno {e}"),
            }
        }
        seen
    }
}

fn ids(seen: &BTreeMap<String, usize>) -> BTreeSet<&str> {
    seen.keys().map(String::as_str).collect()
}

const ALL: [&str; 3] = ["b1", "b2", "b3"];

#[test]
fn tcp_to_cluster_ip_reaches_every_backend_and_getpeername_gives_the_service() {
    let bed = Bed::new("st");
    // getpeername is checked on every connection by `backends`.
    let seen = bed.backends("tcp", CIP4, CIP4, 40);
    assert_eq!(
        ids(&seen),
        BTreeSet::from(ALL),
        "spread over backends: {seen:?}"
    );
    assert!(bed.sock.maps.counter(reason::CONNECT) >= 40);
    assert!(bed.sock.maps.counter(reason::GETPEERNAME) >= 40);
    // Connected sockets keep their reverse entry in their own storage: none in the LRU.
    assert!(bed.sock.maps.revnat_entries().is_empty());
}

#[test]
fn udp_to_cluster_ip_is_answered_from_the_service_address() {
    let bed = Bed::new("su");
    let seen = bed.backends("udp", CIP4, CIP4, 30);
    assert_eq!(
        ids(&seen),
        BTreeSet::from(ALL),
        "spread over backends: {seen:?}"
    );
    assert!(bed.sock.maps.counter(reason::SENDMSG) >= 30);
    assert!(bed.sock.maps.counter(reason::RECVMSG) >= 30);
    // Unconnected datagrams are restored through the LRU (socket cookie, backend).
    assert!(bed.sock.maps.revnat_entries().len() >= 30);
}

#[test]
fn ipv6_cluster_ip_and_v4_mapped_destinations() {
    let bed = Bed::new("s6");
    for mode in ["tcp", "udp"] {
        let seen = bed.backends(mode, CIP6, CIP6, 30);
        assert_eq!(
            ids(&seen),
            BTreeSet::from(ALL),
            "{mode} over IPv6: {seen:?}"
        );
        // An IPv6 socket reaching the IPv4 ClusterIP as ::ffff:a.b.c.d.
        let mapped = format!("::ffff:{CIP4}");
        let seen = bed.backends(mode, &mapped, &mapped, 20);
        assert!(seen.len() >= 2, "{mode} v4-mapped: {seen:?}");
    }
}

#[test]
fn session_affinity_pins_a_client_until_the_timeout() {
    let mut bed = Bed::new("sa");
    let timeout_s = 1;
    let mut services: BpfHashMap<MapData, ServiceKey, ServiceValue> = BpfHashMap::try_from(
        Map::HashMap(MapData::from_pin(bed.pins.path().join(lb_names::SERVICES)).unwrap()),
    )
    .unwrap();
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let key = Bed::key(CIP4_AFF, proto);
        let id = bed.reconciler.service_id(&key).unwrap();
        // Timeout first, then the flag: the service never has the flag without its timeout.
        bed.sock.maps.set_affinity_timeout(id, timeout_s).unwrap();
        let v = services.get(&key, 0).unwrap();
        services.insert(key, with_affinity(v, true), 0).unwrap();
    }
    for mode in ["tcp", "udp"] {
        let seen = bed.backends(mode, CIP4_AFF, CIP4_AFF, 20);
        assert_eq!(seen.len(), 1, "{mode} with affinity: {seen:?}");
        // Without affinity the same client spreads.
        let seen = bed.backends(mode, CIP4, CIP4, 20);
        assert!(seen.len() >= 2, "{mode} without affinity: {seen:?}");
    }
    let hits = bed.sock.maps.counter(reason::AFFINITY_HIT);
    assert!(hits >= 38, "affinity hits {hits}");
    // Past the timeout the entry no longer pins: the next connect is a fresh pick.
    std::thread::sleep(Duration::from_millis(1300));
    bed.backends("tcp", CIP4_AFF, CIP4_AFF, 1);
    assert_eq!(bed.sock.maps.counter(reason::AFFINITY_HIT), hits);
    assert!(bed.sock.maps.affinity_entries().len() >= 2);
    // Removing the service forgets its entries.
    let id = bed
        .reconciler
        .service_id(&Bed::key(CIP4_AFF, Protocol::Tcp))
        .unwrap();
    assert!(bed.sock.maps.flush_affinity(id).unwrap() >= 1);
}

#[test]
fn processes_outside_the_cgroup_are_not_translated() {
    let bed = Bed::new("so");
    // No route leaves the node namespace: untranslated, the ClusterIP is unreachable.
    let unreachable = || Answer::Err("101".into()); // ENETUNREACH
    assert_eq!(
        bed.client(false, "tcp", CIP4, 2),
        [unreachable(), unreachable()]
    );
    assert_eq!(bed.client(false, "udp", CIP4, 1), [unreachable()]);
    assert_eq!(bed.sock.maps.counter(reason::CONNECT), 0);
    assert_eq!(bed.sock.maps.counter(reason::SENDMSG), 0);
    // The same client inside the cgroup gets through.
    assert_eq!(
        bed.backends("tcp", CIP4, CIP4, 3).values().sum::<usize>(),
        3
    );
}

#[test]
fn service_without_backends_refuses_and_links_survive_a_reload() {
    let mut bed = Bed::new("se");
    let refused = || Answer::Err("111".into()); // ECONNREFUSED
    assert_eq!(
        bed.client(true, "tcp", CIP4_EMPTY, 2),
        [refused(), refused()]
    );
    assert_eq!(bed.client(true, "udp", CIP4_EMPTY, 1), [refused()]);
    assert!(bed.sock.maps.counter(reason::NO_BACKEND) >= 3);
    // A restarted agent: new object, same pinned maps, links replaced in place; the old object
    // going away leaves the pinned links (and so the translation) in place.
    let mut again = SockLb::load(bed.pins.path()).expect("reloading");
    let services = again.lb_maps().unwrap().services().unwrap();
    assert!(
        services
            .iter()
            .any(|(k, _)| *k == Bed::key(CIP4, Protocol::Tcp))
    );
    again.attach(&bed.cg.path, Some(bed.pins.path())).unwrap();
    bed.sock = again;
    assert_eq!(
        bed.backends("tcp", CIP4, CIP4, 5).values().sum::<usize>(),
        5
    );
    assert!(bed.sock.maps.counter(reason::NO_BACKEND) >= 3, "maps kept");
    // Removing the link pins detaches: the ClusterIP is no longer translated. The kernel frees an
    // unpinned link from a work queue, so the detach takes effect shortly after the unlink.
    assert_eq!(socklb::detach(bed.pins.path(), &bed.cg.path).unwrap(), 8);
    let t = std::time::Instant::now();
    while bed.client(true, "tcp", CIP4, 1) != [Answer::Err("101".into())] {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still translated after detach"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
