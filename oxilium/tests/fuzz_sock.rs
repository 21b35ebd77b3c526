//! Differential fuzzing of the socket LB (sock-lb/: connect4/6, sendmsg4/6, recvmsg4/6,
//! getpeername4/6) against a model of its decisions. BPF_PROG_TEST_RUN cannot run cgroup
//! sock_addr programs, so the programs are driven by real system calls: a seeded random sequence
//! of operations (TCP connect + getpeername + a request, unconnected UDP sendto + recvfrom; over
//! IPv4 sockets, IPv6 sockets and IPv4-mapped destinations) to ClusterIPs with backends, one
//! without, one whose only backends are of the other family, one with ClientIP affinity, a
//! ClusterIP on a port no service uses, backends directly and an unrouted address, run by
//! python3 clients in a test cgroup inside a test network namespace in batches of 40. Every
//! answer (error number, answering backend, the peer address the socket reports) is compared
//! with the model, and every batch's counter increments exactly. `OXILIUM_FUZZ_SOCK_OPS`
//! (default 400) is the number of operations, `OXILIUM_FUZZ_SEED` replays a printed seed. See
//! docs/datapath-tests.md, "Differential fuzzing".
//!
//! Kernel features: cgroup v2, BPF_PROG_TYPE_CGROUP_SOCK_ADDR (the eight hooks) with bpf_link,
//! bpf_set_retval, bpf_get_socket_cookie, bpf_get_netns_cookie, bpffs pinning, network
//! namespaces. Requires root and python3; a test that cannot set up fails.
mod support;

use abi::sock::reason;
use aya::programs::XdpMode;
use lb::{
    compile::{CompiledService, compile_service},
    model::{Algorithm, Backend, BackendState, Frontend, Mode, Protocol, Service},
    reconcile::Reconciler,
};
use oxilium::bpf::{
    lb_maps::KernelMaps,
    loader::load_xdp,
    socklb::{SockLb, with_affinity},
};
use std::{collections::BTreeMap, net::SocketAddr, process::Command};
use support::{
    bpffs::{CgroupLinks, PinDir},
    cgroup::Cgroup,
    netns::{Netns, unique},
    servers::Servers,
};

const CIP4: &str = "10.96.0.10";
const CIP4_AFF: &str = "10.96.0.11";
const CIP4_EMPTY: &str = "10.96.0.12";
const CIP4_MIX: &str = "10.96.0.13";
const CIP6: &str = "fd00:96::10";
const BE_PORT: u16 = 8080;
const ECONNREFUSED: &str = "111";
const ENETUNREACH: &str = "101";

/// One operation: protocol, destination, port.
type Op = (&'static str, String, u16);

/// The client: one line per operation ("OK id peer port" or "ERR errno").
const CLIENT: &str = r#"
import socket, sys
a = sys.argv[1:]
for i in range(0, len(a), 3):
    mode, host, port = a[i], a[i + 1], int(a[i + 2])
    fam = socket.AF_INET6 if ':' in host else socket.AF_INET
    s = None
    try:
        if mode == 'tcp':
            s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(2)
            s.connect((host, port)); peer = s.getpeername()
            s.sendall(b'hello\n'); line = s.makefile().readline()
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(2)
            s.sendto(b'hello', (host, port)); data, peer = s.recvfrom(512); line = data.decode()
        print('OK', line.split()[0], peer[0], peer[1], flush=True)
    except OSError as e:
        print('ERR', e.errno if e.errno is not None else 'timeout', flush=True)
    finally:
        if s is not None: s.close()
"#;

fn service(addr: &str, proto: Protocol, backends: &[String]) -> CompiledService {
    let s = Service {
        name: format!("{addr}-{proto:?}"),
        frontend: Frontend {
            addr: addr.parse().unwrap(),
            port: 80,
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
    compile_service(&s, 0).unwrap()
}

/// SplitMix64, as the packet fuzzer's.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// What the model says of one operation: refused / unreachable, or answered by one of `ids`
/// with the socket's peer `peer`:`port`; `count` the counters it adds.
struct Want {
    err: Option<&'static str>,
    ids: Vec<String>,
    peer: (String, u16),
    count: Vec<u32>,
}

/// The socket LB as docs/kube-proxy-replacement.md states it, for this bed.
struct Model {
    /// The affinity service's backend, once the first connection (per protocol) chose it.
    affinity: BTreeMap<&'static str, String>,
}

impl Model {
    fn want(&self, (proto, host, port): &Op) -> Want {
        let all = || (1..=3).map(|i| format!("b{i}")).collect::<Vec<_>>();
        let (done, reverse) = if *proto == "tcp" {
            (reason::CONNECT, reason::GETPEERNAME)
        } else {
            (reason::SENDMSG, reason::RECVMSG)
        };
        let peer = (host.clone(), *port);
        let plain = host.trim_start_matches("::ffff:");
        let ok = |ids: Vec<String>, count: Vec<u32>| Want {
            err: None,
            ids,
            peer: peer.clone(),
            count,
        };
        let fail = |e: &'static str, count: Vec<u32>| Want {
            err: Some(e),
            ids: Vec::new(),
            peer: peer.clone(),
            count,
        };
        if *port == BE_PORT {
            // A backend itself: untouched.
            let i = plain.rsplit(['.', ':']).next().unwrap();
            return ok(vec![format!("b{i}")], vec![]);
        }
        match (plain, *port) {
            (CIP4 | CIP6, 80) => ok(all(), vec![done, reverse]),
            (CIP4_AFF, 80) => match self.affinity.get(proto) {
                Some(b) => ok(vec![b.clone()], vec![reason::AFFINITY_HIT, done, reverse]),
                None => ok(all(), vec![done, reverse]),
            },
            (CIP4_EMPTY | CIP4_MIX, 80) => fail(ECONNREFUSED, vec![reason::NO_BACKEND]),
            _ => fail(ENETUNREACH, vec![]),
        }
    }
}

fn op(rng: &mut Rng) -> Op {
    let proto = if rng.below(2) == 0 { "tcp" } else { "udp" };
    let i = 1 + rng.below(3);
    let (host, port) = match rng.below(12) {
        0..=2 => (CIP4.to_string(), 80),
        3 => (format!("::ffff:{CIP4}"), 80),
        4 | 5 => (CIP6.to_string(), 80),
        6 => (CIP4_AFF.to_string(), 80),
        7 => (CIP4_EMPTY.to_string(), 80),
        8 => (CIP4_MIX.to_string(), 80),
        9 => (CIP4.to_string(), 81),
        10 => (
            if rng.below(2) == 0 {
                format!("10.244.0.{i}")
            } else {
                format!("fd00:244::{i}")
            },
            BE_PORT,
        ),
        _ => ("10.99.0.1".to_string(), 80),
    };
    (proto, host, port)
}

/// Needs: see the file's doc. The eight socket-LB programs attached to a test cgroup; the
/// services programmed through the reconciler (affinity through the socket LB's maps).
#[test]
fn socket_lb_matches_the_model() {
    let seed: u64 = match std::env::var("OXILIUM_FUZZ_SEED") {
        Ok(s) => s.parse().expect("OXILIUM_FUZZ_SEED: a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    let n: usize = std::env::var("OXILIUM_FUZZ_SOCK_OPS")
        .map(|s| s.parse().expect("OXILIUM_FUZZ_SOCK_OPS: a count"))
        .unwrap_or(400);
    println!("fuzz sock_lb: seed {seed} (OXILIUM_FUZZ_SEED={seed} replays)");
    let node = Netns::new(&unique("fsock"));
    let pins = PinDir::new(&unique("fsock"));
    let cg = Cgroup::new("fsock");
    let mut servers = Vec::new();
    for i in 1..=3 {
        let (a4, a6) = (format!("10.244.0.{i}"), format!("fd00:244::{i}"));
        node.run(&["ip", "addr", "add", &format!("{a4}/32"), "dev", "lo"]);
        node.run(&[
            "ip",
            "addr",
            "add",
            &format!("{a6}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
        let addrs: Vec<SocketAddr> = [a4, a6]
            .iter()
            .map(|a| SocketAddr::new(a.parse().unwrap(), BE_PORT))
            .collect();
        servers.push(Servers::start(&node, &format!("b{i}"), &addrs));
    }
    let mut xdp = load_xdp(pins.path(), &[], XdpMode::default()).expect("loading the XDP object");
    let mut sock = SockLb::load(pins.path()).expect("loading the sock-lb object");
    let maps = KernelMaps::from_ebpf(&mut xdp).expect("LB maps");
    let mut rec = Reconciler::open(maps).expect("reconciler");
    let b4: Vec<String> = (1..=3).map(|i| format!("10.244.0.{i}")).collect();
    let b6: Vec<String> = (1..=3).map(|i| format!("fd00:244::{i}")).collect();
    let mut desired = BTreeMap::new();
    for proto in [Protocol::Tcp, Protocol::Udp] {
        for c in [
            service(CIP4, proto, &b4),
            service(CIP4_AFF, proto, &b4),
            service(CIP4_EMPTY, proto, &[]),
            service(CIP4_MIX, proto, &b6),
            service(CIP6, proto, &b6),
        ] {
            desired.insert(c.key, c);
        }
    }
    rec.apply(&desired).expect("programming the services");
    let mut services: aya::maps::HashMap<_, abi::lb::ServiceKey, abi::lb::ServiceValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
            aya::maps::MapData::from_pin(pins.path().join(abi::lb::names::SERVICES)).unwrap(),
        ))
        .unwrap();
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let key = service(CIP4_AFF, proto, &[]).key;
        let id = rec.service_id(&key).unwrap();
        // An hour: no entry expires during the run.
        sock.maps.set_affinity_timeout(id, 3600).unwrap();
        let v = services.get(&key, 0).unwrap();
        services.insert(key, with_affinity(v, true), 0).unwrap();
    }
    sock.attach(&cg.path, Some(pins.path()))
        .expect("attaching to the cgroup");
    let _links = CgroupLinks::new(pins.path(), &cg.path);

    let mut rng = Rng(seed);
    let mut model = Model {
        affinity: BTreeMap::new(),
    };
    let counters =
        |s: &SockLb| -> Vec<u64> { (0..reason::COUNT).map(|r| s.maps.counter(r)).collect() };
    let (mut done, mut differences, mut answered, mut refused) = (0, 0u64, 0u64, 0u64);
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut before = counters(&sock);
    while done < n {
        let ops: Vec<Op> = (0..40.min(n - done)).map(|_| op(&mut rng)).collect();
        let mut args: Vec<String> = Vec::new();
        for (p, h, port) in &ops {
            args.extend([p.to_string(), h.clone(), port.to_string()]);
        }
        let script = r#"echo $$ > "$1/cgroup.procs" || exit 9; shift; exec nsenter --net="$@""#;
        let cgp = cg.path.display().to_string();
        let out = Command::new("sh")
            .args([
                "-c",
                script,
                "sh",
                &cgp,
                &node.path(),
                "python3",
                "-c",
                CLIENT,
            ])
            .args(&args)
            .output()
            .expect("spawning the client");
        assert!(
            out.status.success(),
            "client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), ops.len(), "one answer per operation");
        let mut want_counts = vec![0u64; reason::COUNT as usize];
        for (o, line) in ops.iter().zip(&lines) {
            let w = model.want(o);
            for c in &w.count {
                want_counts[*c as usize] += 1;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let ok = match (&w.err, f.as_slice()) {
                (Some(e), ["ERR", got]) => {
                    refused += 1;
                    e == got
                }
                (None, ["OK", id, peer, port]) => {
                    answered += 1;
                    let aff = o.1 == CIP4_AFF && !model.affinity.contains_key(o.0);
                    if aff {
                        model.affinity.insert(o.0, id.to_string());
                    }
                    w.ids.iter().any(|i| i == id)
                        && *peer == w.peer.0
                        && port.parse::<u16>() == Ok(w.peer.1)
                }
                _ => false,
            };
            *kinds.entry(format!("{} {}:{}", o.0, o.1, o.2)).or_default() += 1;
            if !ok {
                differences += 1;
                println!(
                    "fuzz sock_lb DIFFERENCE: {o:?}: got {line:?}, model err {:?} ids {:?} peer {:?}",
                    w.err, w.ids, w.peer
                );
            }
        }
        let after = counters(&sock);
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        before = after;
        if delta != want_counts {
            differences += 1;
            println!(
                "fuzz sock_lb DIFFERENCE: counters {delta:?}, model {want_counts:?} (batch from {done})"
            );
        }
        done += ops.len();
    }
    let ks: Vec<String> = kinds.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "fuzz sock_lb: seed {seed} operations {done} answered {answered} failed {refused} differences {differences}\n  kinds {{{}}}",
        ks.join(" ")
    );
    assert!(
        answered > 0 && refused > 0 && model.affinity.len() == 2,
        "every path taken"
    );
    assert_eq!(
        differences, 0,
        "socket LB differs from the model (seed {seed})"
    );
    drop(servers);
}
