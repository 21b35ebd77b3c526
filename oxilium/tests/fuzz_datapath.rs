//! Differential fuzzing of every datapath program against a reference model (tests/fuzz/): random
//! and mutated frames through BPF_PROG_TEST_RUN (repeat 1), verdict + output bytes + counters +
//! conntrack / SNAT entries compared with the model after every packet; 0 differences pass.
//!
//! Seeded: the seed is printed, `OXILIUM_FUZZ_SEED=N` replays it. `OXILIUM_FUZZ_PACKETS=N`
//! (default 20 000) is the total over the programs; each prints its counts of packets, verdicts
//! and differences (`-- --nocapture`). See docs/datapath-tests.md.
//!
//! Kernel features, needed by every test unless a test says more: BPF_PROG_TEST_RUN for XDP and
//! tc (SchedClassifier), BTF-defined maps with map-in-map, bpffs (pinned maps), network
//! namespaces (each program runs on its own thread in a fresh netns, so the FIB never answers).
//! Run as root; without BPF the tests fail, they never skip.
#[path = "support/bpffs.rs"]
#[allow(dead_code)]
mod bpffs;
#[allow(dead_code)]
mod fuzz;
#[path = "support/packet.rs"]
#[allow(dead_code)]
mod packet;
#[path = "support/xdp_lb.rs"]
mod xdp_lb;

use abi::lb::LbConfig;
use fuzz::{frames::Rng, harness, traffic::Scene, xdp_run::XdpLb};
use std::net::IpAddr;
use xdp_lb::{LB4, LB6, compile};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn lb_config(min: u16, max: u16, v6: bool) -> LbConfig {
    LbConfig {
        snat_v4: compile::addr_bytes(LB4.into()),
        snat_v6: if v6 {
            compile::addr_bytes(LB6.into())
        } else {
            [0; 16]
        },
        snat_port_min: min,
        snat_port_max: max,
        ready: 1,
        timeouts: Default::default(),
    }
}

/// Adds a frontend on the SNAT address itself, at a port inside the 8-port SNAT range the
/// small-range variants use (as a NodePort is on the node's address): never a SNAT port.
fn with_frontend_in_snat_range(m: &mut lb::model::Model) {
    let s = xdp_lb::with(
        xdp_lb::service(
            "snatport",
            &format!("{LB4}:40003"),
            lb::model::Protocol::Tcp,
            lb::model::Algorithm::Maglev,
            lb::model::Mode::Snat,
        ),
        251,
        &["10.0.1.4:8080"],
    );
    m.services.push(s);
}

/// The edge LB's scene: the frontends of support/xdp_lb.rs's model (SNAT and DSR, Maglev and
/// random, IPv4 and IPv6, IPv4 VIP with an IPv6 backend, a service without backends).
fn edge_scene(m: &lb::model::Model) -> Scene {
    let mut others: Vec<IpAddr> = vec![LB4.into(), LB6.into(), ip("192.0.2.9"), ip("2001:db8::9")];
    for s in &m.services {
        others.extend(s.backends.iter().map(|b| b.addr.ip()));
    }
    Scene {
        fronts: m
            .services
            .iter()
            .map(|s| {
                let proto = if s.frontend.protocol == lb::model::Protocol::Udp {
                    17
                } else {
                    6
                };
                (s.frontend.addr, s.frontend.port, proto)
            })
            .collect(),
        clients4: (1..=24).map(|i| ip(&format!("192.168.7.{i}"))).collect(),
        clients6: (1..=16)
            .map(|i| ip(&format!("2001:db8:7::{i:x}")))
            .collect(),
        others,
        ports: 24,
    }
}

/// Needs in addition: nothing. The edge LB (`oxilium_lb`) in four configurations: the standard
/// one (1000 SNAT ports), an eight-port SNAT range (exhaustion and take-overs of finished flows'
/// ports), no IPv6 LB address (IPv6 SNAT refused as `error`), and a one-second service conntrack
/// timeout on every service.
#[test]
fn xdp_lb_matches_the_model() {
    let seed = harness::seed();
    let mut t = harness::Tally::new("xdp_lb", seed);
    let mut rng = Rng::new(seed);
    let n = harness::budget(0.25);
    let variants = 4;
    std::thread::spawn(move || {
        let mut first = None;
        for v in 0..variants {
            let mut m = xdp_lb::model();
            if v == 1 {
                with_frontend_in_snat_range(&mut m);
            }
            let cfg = match v {
                1 => lb_config(40_000, 40_007, true),
                2 => lb_config(40_000, 40_999, false),
                _ => lb_config(40_000, 40_999, true),
            };
            if v == 3 {
                for s in &mut m.services {
                    s.conntrack_timeout_s = 1;
                }
            }
            let scene = edge_scene(&m);
            let mtu = [(1000, 1350), (1200, 1280), (1000, 1400), (1500, 1500)][v];
            let mut lb = XdpLb::new(&m, cfg, mtu);
            fuzz::xdp_run::fuzz(&mut lb, &scene, &mut rng, n / variants, &mut t);
            if v == 0 {
                // Kept (its namespace outlives the later ones') for the extension below.
                first = Some((lb, scene));
            }
        }
        let (mut lb, scene) = first.unwrap();
        use abi::lb::reason as r;
        t.until_hit(
            &[r::ICMP_XLATE, r::ICMP_TOO_BIG, r::TOO_BIG, r::ICMP_ERROR],
            &[
                "icmp to the client",
                "icmp to a SNAT backend",
                "icmp tunnelled to a DSR backend",
                "too-big answer",
            ],
            4 * n,
            |t, k| fuzz::xdp_run::fuzz(&mut lb, &scene, &mut rng, k, t),
        );
    })
    .join()
    .unwrap();
}

/// The edge LB's frontends as NodePort services: source ranges on web4 and web6, and the pods of
/// this node among the backends.
fn nodeport_model() -> (lb::model::Model, [IpAddr; 3]) {
    let mut m = xdp_lb::model();
    for s in &mut m.services {
        match s.name.as_str() {
            "web4" => s.source_ranges = vec!["192.168.7.0/28".parse().unwrap()],
            "web6" => s.source_ranges = vec!["2001:db8:7::/125".parse().unwrap()],
            _ => {}
        }
    }
    (m, [ip("10.0.1.1"), ip("fd00:1::2"), ip("10.0.2.1")])
}

/// Needs in addition: TCX-capable tc test runs (SchedClassifier), bpf_skb_adjust_room with the
/// ENCAP_L3 flags, bpf_redirect. The NodePort tc programs, each frame through
/// `oxilium_nodeport_ingress` (7 in 10) or `oxilium_nodeport_egress` over the same maps: clients
/// of the NodePort frontends (source ranges, pods of this node DNAT'ed and redirected, remote
/// backends SNAT'ed, DSR tunnelled with the backend port, a backend of the other family), the
/// replies of remote backends (ingress) and pods (egress), ICMP errors both ways.
#[test]
fn tc_nodeport_matches_the_model() {
    let seed = harness::seed();
    let mut t = harness::Tally::new("tc_nodeport", seed);
    let mut rng = Rng::new(seed ^ 0x7c);
    let n = harness::budget(0.25);
    std::thread::spawn(move || {
        let (m, local) = nodeport_model();
        let mut first = None;
        for v in 0..2 {
            let mut m = m.clone();
            let (cfg, mtu) = match v {
                0 => (lb_config(40_000, 40_999, true), (1000, 1350)),
                _ => {
                    with_frontend_in_snat_range(&mut m);
                    (lb_config(40_000, 40_007, true), (1200, 1280))
                }
            };
            let scene = edge_scene(&m);
            let mut lb = fuzz::np_run::nodeport(&m, cfg, mtu, &local, "tc");
            fuzz::xdp_run::fuzz(&mut lb, &scene, &mut rng, n / 2, &mut t);
            if v == 0 {
                first = Some((lb, scene));
            }
        }
        let (mut lb, scene) = first.unwrap();
        use abi::lb::reason as r;
        t.until_hit(
            &[
                r::FWD_SNAT,
                r::FWD_DSR,
                r::REV_SNAT,
                r::ICMP_XLATE,
                r::ICMP_ERROR,
            ],
            &[
                "np source range refused",
                "np reply entry of a pod",
                "np family",
                "np pod of this node",
                "tc icmp to the client",
                "tc icmp to a SNAT backend",
                "tc icmp to a pod of this node",
                "tc icmp tunnelled to a DSR backend",
            ],
            4 * n,
            |t, k| fuzz::xdp_run::fuzz(&mut lb, &scene, &mut rng, k, t),
        );
    })
    .join()
    .unwrap();
}

/// Needs in addition: cgroup sock_addr programs loadable (the socket LB's object is loaded, not
/// attached, for its affinity maps). The pod programs, each frame through `oxilium_pod_ingress`
/// (leaving a pod, 65 in 100) or `oxilium_pod_egress` over the same maps: the edge LB's
/// frontends as cluster-internal services, ClientIP affinity (2 s) on dns4 and web6, the replies
/// of the backends, ICMP errors both ways.
#[test]
fn pod_programs_match_the_model() {
    let seed = harness::seed();
    let mut t = harness::Tally::new("tc_pod", seed);
    let mut rng = Rng::new(seed ^ 0x90d);
    let n = harness::budget(0.15);
    std::thread::spawn(move || {
        let mut m = xdp_lb::model();
        for s in &mut m.services {
            s.scope = lb::model::Scope::Internal;
            if s.name == "dns4" || s.name == "web6" {
                s.affinity_timeout_s = Some(2);
            }
        }
        let scene = edge_scene(&m);
        let mut lb = fuzz::pod_run::pods(&m, lb_config(40_000, 40_999, true));
        fuzz::xdp_run::fuzz(&mut lb, &scene, &mut rng, n, &mut t);
        use abi::lb::reason as r;
        t.until_hit(
            &[r::ICMP_XLATE, r::NO_BACKEND],
            &[
                "pod affinity hit",
                "pod family",
                "pod icmp to the backend",
                "pod icmp to the pod",
            ],
            4 * n,
            |t, k| fuzz::xdp_run::fuzz(&mut lb, &scene, &mut rng, k, t),
        );
    })
    .join()
    .unwrap();
}

/// Needs in addition: `ip netns add`, veth, forwarding, bpf_fib_lookup's `mtu_result` (kernel ≥
/// 5.13), bpf_xdp_adjust_head / adjust_tail. The NodePort acceleration (`oxilium_nodeport_xdp`)
/// over the edge LB's frontends as NodePort services: source ranges on web4 and web6 (clients
/// outside refused), pods of this node among the
/// backends (left to tc after their entries), an IPv4 frontend with an IPv6 backend (`family`),
/// DSR carrying the backend port; a standard and an eight-port SNAT range.
#[test]
fn xdp_nodeport_matches_the_model() {
    let seed = harness::seed();
    let mut t = harness::Tally::new("xdp_nodeport", seed);
    let mut rng = Rng::new(seed ^ 0x0de9);
    let n = harness::budget(0.25);
    std::thread::spawn(move || {
        let (m, local) = nodeport_model();
        let scene = edge_scene(&m);
        let mut first = None;
        for v in 0..2 {
            let (cfg, mtu) = match v {
                0 => (lb_config(40_000, 40_999, true), (1000, 1350)),
                _ => (lb_config(40_000, 40_007, true), (1200, 1280)),
            };
            let mut lb = fuzz::np_run::nodeport(&m, cfg, mtu, &local, "oxilium_nodeport_xdp");
            fuzz::xdp_run::fuzz(&mut lb, &scene, &mut rng, n / 2, &mut t);
            if v == 0 {
                first = Some(lb);
            }
        }
        let mut lb = first.unwrap();
        use abi::lb::reason as r;
        t.until_hit(
            &[r::FWD_SNAT, r::FWD_DSR, r::REV_SNAT, r::ICMP_TOO_BIG],
            &[
                "np source range refused",
                "np reply entry of a pod",
                "np family",
                "np pod of this node",
                "too-big answer",
            ],
            4 * n,
            |t, k| fuzz::xdp_run::fuzz(&mut lb, &scene, &mut rng, k, t),
        );
    })
    .join()
    .unwrap();
}

/// Needs in addition: bpf_skb_adjust_room with the DECAP_L3 flags (kernel >= 6.3). The DSR
/// backend's `oxilium_decap`, tunnels from the two LB addresses accepted, others refused.
#[test]
fn decap_matches_the_model() {
    let seed = harness::seed();
    let mut t = harness::Tally::new("decap", seed);
    let mut rng = Rng::new(seed ^ 0xdeca);
    let n = harness::budget(0.1);
    std::thread::spawn(move || {
        let scene = edge_scene(&xdp_lb::model());
        fuzz::decap_run::fuzz(&scene, &[LB4.into(), LB6.into()], &mut rng, n, &mut t);
        t.assert_clean();
    })
    .join()
    .unwrap();
}

/// Regressions of the differences the fuzzer found in the parser (datapath/src/parse.rs), each
/// through the real program: passed unchanged and counted `malformed`.
/// - An IPv4 total length that ends inside the TCP header, the rest of the header in the frame's
///   trailer: the ports were read from the trailer and the packet translated.
/// - An IPv6 packet with five extension headers: the fifth one's type was taken for the upper
///   layer (counted `pass`), where docs/edge-lb.md says more than four are malformed.
/// - An IPv4 packet of protocol 58 (ICMPv6) with type 3 quoting a SNAT'ed flow's packet was
///   translated like an ICMP "destination unreachable" (and ICMP in IPv6 like ICMPv6, its
///   checksum then updated with a pseudo-header ICMP has not): only ICMP in IPv4 and ICMPv6 in
///   IPv6 are (docs/edge-lb.md "ICMP errors and the MTU"); now passed, counted `icmp_error`.
#[test]
fn parser_regressions_found_by_fuzzing() {
    std::thread::spawn(|| {
        let lb = xdp_lb::Lb::new(xdp_lb::model());
        let client = xdp_lb::sa("192.168.7.7:1043");
        let vip = xdp_lb::sa("10.10.0.1:80");
        let mut f = xdp_lb::tcp_frame(None)(client, vip);
        // tot_len = 20 + 10: half the TCP header (and the payload) left in the trailer.
        f[16..18].copy_from_slice(&30u16.to_be_bytes());
        let c = fuzz::wire::ipv4_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        xdp_lb::passes_unchanged(
            &lb,
            &f,
            abi::lb::reason::MALFORMED,
            "L4 header past tot_len",
        );

        let hbh = |next: u8| vec![next, 0, 1, 4, 0, 0, 0, 0];
        let mut l3 = vec![0x60, 0, 0, 0];
        let tcp = fuzz::frames::tcp(1043, 443, 0x02, &[], &[]);
        let mut chain = Vec::new();
        for next in [60, 60, 60, 60, 6] {
            chain.extend(hbh(next));
        }
        l3.extend_from_slice(&((chain.len() + tcp.len()) as u16).to_be_bytes());
        l3.extend_from_slice(&[0, 64]);
        l3.extend_from_slice(
            &"2001:db8:7::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        l3.extend_from_slice(&"fd10::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        l3.extend(chain);
        l3.extend(tcp);
        let f = fuzz::frames::ether(0x86dd, fuzz::frames::Vlan::None, &l3, &[]);
        xdp_lb::passes_unchanged(
            &lb,
            &f,
            abi::lb::reason::MALFORMED,
            "five extension headers",
        );

        let lb4: std::net::IpAddr = LB4.into();
        let (port, backend) =
            xdp_lb::snat_forward(&lb, client, vip, 6, |s, d| xdp_lb::tcp_frame(None)(s, d));
        let seen = &xdp_lb::tcp_frame(None)(std::net::SocketAddr::new(lb4, port), backend)[14..];
        for proto in [1u8, 58] {
            let body = fuzz::frames::icmp(3, 3, &seen[..28]);
            let err = fuzz::frames::Spec::new(backend.ip(), lb4, proto, body).build();
            let (r, what) = if proto == 1 {
                (abi::lb::reason::ICMP_XLATE, "ICMP in IPv4")
            } else {
                (abi::lb::reason::ICMP_ERROR, "ICMPv6 in IPv4")
            };
            let before = lb.count(r);
            let out = lb.run(&err);
            assert_eq!(lb.count(r), before + 1, "{what}");
            assert_eq!(
                out.data == err,
                proto == 58,
                "{what}: translated or untouched"
            );
        }
    })
    .join()
    .unwrap();
}
