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
    let n = harness::budget(0.7);
    let variants = 4;
    std::thread::spawn(move || {
        for v in 0..variants {
            let mut m = xdp_lb::model();
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
            let mut lb = XdpLb::new(&m, cfg);
            fuzz::xdp_run::fuzz(&mut lb, &scene, &mut rng, n / variants, &mut t);
        }
        t.assert_clean();
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
    let n = harness::budget(0.3);
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
    })
    .join()
    .unwrap();
}
