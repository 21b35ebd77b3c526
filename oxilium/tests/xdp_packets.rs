//! Packet-in → packet-out tests of the XDP program `oxilium_lb` through BPF_PROG_TEST_RUN, every
//! case with repeat = 1 (a repeated run would see its own output). The maps are set up through the
//! real path: model → compile → Reconciler<KernelMaps> → pinned maps.
//!
//! Kernel features, needed by every test unless a test says more: BPF_PROG_TEST_RUN for XDP,
//! BTF-defined maps with map-in-map (the selection tables), bpffs (pinned maps), network
//! namespaces (each test runs on its own thread in a fresh netns, so the FIB lookups fail the same
//! way whatever the host's routes and forwarding settings are). Run as root; without BPF the tests
//! fail, they never skip. See docs/datapath-tests.md.
#[path = "support/packet.rs"]
#[allow(dead_code)]
mod packet;
#[path = "support/xdp_lb.rs"]
mod xdp_lb;

use xdp_lb::*;
#[test]
fn snat_ipv4_tcp_rewrites_to_backend_and_lb_port() {
    let lb = Lb::new(model());
    snat_forward(
        &lb,
        sa("192.168.7.1:33000"),
        sa("10.10.0.1:80"),
        TCP,
        tcp_frame(None),
    );
}

#[test]
fn snat_keeps_the_vlan_tag() {
    let lb = Lb::new(model());
    let (_, b) = snat_forward(
        &lb,
        sa("192.168.7.2:33001"),
        sa("10.10.0.1:80"),
        TCP,
        tcp_frame(Some(0x2064)),
    );
    assert!(WEB4.contains(&b.to_string().as_str()));
}

#[test]
fn snat_ipv6_tcp_with_hop_by_hop_header_and_udp() {
    let lb = Lb::new(model());
    snat_forward(
        &lb,
        sa("[fd99::7]:33002"),
        sa("[fd10::1]:443"),
        TCP,
        tcp_frame(None),
    );
    // IPv6 with a hop-by-hop and a destination options header before TCP.
    let ext = |s: SocketAddr, d: SocketAddr| {
        let (IpAddr::V6(si), IpAddr::V6(di)) = (s.ip(), d.ip()) else {
            unreachable!()
        };
        let mut h = ipv6(si, di);
        h.ext = vec![Ext::HopByHop(0), Ext::DestOpts(1)];
        ether(
            &h.build(tcp(s.port(), d.port(), &TCP_OPTIONS, PAYLOAD)),
            None,
        )
    };
    snat_forward(&lb, sa("[fd99::7]:33003"), sa("[fd10::1]:443"), TCP, ext);
    snat_forward(
        &lb,
        sa("[fd99::8]:5000"),
        sa("[fd10::1]:53"),
        UDP,
        udp_frame,
    );
}

#[test]
fn snat_ipv4_udp_zero_checksum_stays_zero() {
    let lb = Lb::new(model());
    let make = |s: SocketAddr, d: SocketAddr| {
        let seg = udp_no_checksum(s.port(), d.port(), b"no checksum");
        ether(&ip(s.ip(), d.ip(), seg), None)
    };
    snat_forward(&lb, sa("192.168.7.3:5000"), sa("10.10.0.1:53"), UDP, make);
    snat_forward(
        &lb,
        sa("192.168.7.3:5001"),
        sa("10.10.0.1:53"),
        UDP,
        udp_frame,
    );
}

#[test]
fn snat_ipv4_with_options_is_rewritten() {
    let lb = Lb::new(model());
    let opts: [&[u8]; 2] = [&[1, 1, 1, 0], &[148, 4, 0, 0, 1, 1, 1, 0]]; // NOPs; router alert
    for (i, o) in opts.into_iter().enumerate() {
        let make = |s: SocketAddr, d: SocketAddr| {
            let (IpAddr::V4(si), IpAddr::V4(di)) = (s.ip(), d.ip()) else {
                unreachable!()
            };
            let mut h = ipv4(si, di);
            h.options = o.to_vec();
            ether(
                &h.build(tcp(s.port(), d.port(), &TCP_OPTIONS, PAYLOAD)),
                None,
            )
        };
        let client = SocketAddr::new(v4("192.168.7.4"), 34000 + i as u16);
        snat_forward(&lb, client, sa("10.10.0.1:80"), TCP, make);
    }
}

#[test]
fn snat_frame_with_ethernet_padding_keeps_the_trailer() {
    let lb = Lb::new(model());
    let make = |s: SocketAddr, d: SocketAddr| {
        let mut f = udp_frame(s, d);
        f.resize(60, 0xee); // minimum Ethernet frame: a trailer after the IP packet
        f
    };
    snat_forward(&lb, sa("192.168.7.5:5002"), sa("10.10.0.1:53"), UDP, make);
}

#[test]
fn snat_reply_is_reverse_translated() {
    let lb = Lb::new(model());
    for (client, vip, proto) in [
        (sa("192.168.7.6:33004"), sa("10.10.0.1:80"), TCP),
        (sa("[fd99::6]:33005"), sa("[fd10::1]:443"), TCP),
        (sa("192.168.7.6:5003"), sa("10.10.0.1:53"), UDP),
    ] {
        let make = |s: SocketAddr, d: SocketAddr| {
            if proto == TCP {
                tcp_frame(None)(s, d)
            } else {
                udp_frame(s, d)
            }
        };
        let (port, backend) = snat_forward(&lb, client, vip, proto, make);
        let lb_ep = SocketAddr::new(
            if client.is_ipv4() {
                LB4.into()
            } else {
                LB6.into()
            },
            port,
        );
        let before = lb.count(reason::REV_SNAT);
        let out = lb.run(&make(backend, lb_ep));
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(hex(&out.data), hex(&make(vip, client)), "reply to {client}");
        verify_checksums(&out.data).unwrap();
        assert_eq!(lb.count(reason::REV_SNAT), before + 1);
    }
}

/// Runs a DSR packet; checks the frame is exactly `outer(inner)` behind the original MACs (kept,
/// so a packet the FIB cannot send yet still reaches the stack as addressed to this host).
fn dsr_case(lb: &Lb, input: &[u8], vlan: bool, outer: impl Fn(&[u8], IpAddr) -> Vec<u8>) {
    let out = lb.run(input);
    assert_eq!(out.action, XDP_PASS, "FIB fails in a fresh netns: PASS");
    let v = view(&out.data);
    let l2 = if vlan { 18 } else { 14 };
    let want = ether(&outer(&input[l2..], v.dst), vlan.then_some(0x2064));
    assert_eq!(hex(&out.data), hex(&want), "encapsulated frame");
    assert!(
        v.src.is_ipv6() || ipv4_header_ok(&out.data[v.l3..]),
        "outer header checksum"
    );
    assert_eq!(
        &out.data[v.l4..],
        &input[l2..],
        "inner packet byte-identical"
    );
}

fn ipip(inner: &[u8], backend: IpAddr) -> Vec<u8> {
    let IpAddr::V4(b) = backend else {
        panic!("v4 backend")
    };
    let mut h = ipv4(LB4, b);
    (h.id, h.frag, h.ttl) = (0, 0, 64);
    h.build(L4::raw(IPIP, inner))
}

fn ip6ip(inner: &[u8], backend: IpAddr) -> Vec<u8> {
    let IpAddr::V6(b) = backend else {
        panic!("v6 backend")
    };
    let mut h = ipv6(LB6, b);
    h.hop_limit = 64;
    let proto = if inner[0] >> 4 == 6 { IPV6_IN_IP } else { IPIP };
    h.build(L4::raw(proto, inner))
}

#[test]
fn dsr_ipv4_encapsulates_in_ipip() {
    let lb = Lb::new(model());
    let input = tcp_frame(None)(sa("192.168.7.7:33006"), sa("10.10.0.2:80"));
    dsr_case(&lb, &input, false, ipip);
    let tagged = tcp_frame(Some(0x2064))(sa("192.168.7.7:33007"), sa("10.10.0.2:80"));
    dsr_case(&lb, &tagged, true, ipip);
    assert_eq!(lb.count(reason::FWD_DSR), 2);
}

#[test]
fn dsr_ipv6_encapsulates_in_ipv6() {
    let lb = Lb::new(model());
    let input = tcp_frame(None)(sa("[fd99::9]:33008"), sa("[fd10::2]:80"));
    dsr_case(&lb, &input, false, ip6ip);
    assert_eq!(view(&lb.run(&input).data).proto, IPV6_IN_IP);
    // IPv4 VIP, IPv6 backend: IPv4-in-IPv6 (next header 4).
    let mixed = tcp_frame(None)(sa("192.168.7.8:33009"), sa("10.10.0.3:80"));
    dsr_case(&lb, &mixed, false, ip6ip);
}

#[test]
fn traffic_for_no_service_passes_unchanged() {
    let lb = Lb::new(model());
    let f = tcp_frame(None);
    passes_unchanged(
        &lb,
        &f(sa("192.168.7.10:1"), sa("10.99.0.1:80")),
        reason::PASS,
        "other host",
    );
    passes_unchanged(
        &lb,
        &f(sa("192.168.7.10:1"), sa("10.10.0.1:81")),
        reason::PASS,
        "VIP, port",
    );
    passes_unchanged(
        &lb,
        &udp_frame(sa("[fd99::1]:1"), sa("[fd10::1]:443")),
        reason::PASS,
        "proto",
    );
    let echo = ether(
        &ip(
            v4("192.168.7.10"),
            v4("10.10.0.1"),
            icmp(false, 8, 0, b"ping"),
        ),
        None,
    );
    passes_unchanged(&lb, &echo, reason::PASS, "ICMP echo to VIP");
    let mut arp = ether(&[0x45; 28], None);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let out = lb.run(&arp);
    assert_eq!((out.action, hex(&out.data)), (XDP_PASS, hex(&arp)), "ARP");
}

fn fragments(dst: IpAddr) -> Vec<(&'static str, Vec<u8>)> {
    let seg = || tcp(33011, 80, &[], PAYLOAD);
    let mut out = Vec::new();
    if let IpAddr::V4(d) = dst {
        let mut h = ipv4(Ipv4Addr::new(192, 168, 7, 11), d);
        h.frag = 0x2000;
        out.push(("IPv4 first fragment (MF)", ether(&h.build(seg()), None)));
        h.frag = 185; // offset 1480, last fragment
        out.push((
            "IPv4 later fragment",
            ether(&h.build(L4::raw(TCP, PAYLOAD)), None),
        ));
    } else if let IpAddr::V6(d) = dst {
        let mut h = ipv6("fd99::11".parse().unwrap(), d);
        h.ext = vec![Ext::Fragment {
            offset: 0,
            more: true,
        }];
        out.push(("IPv6 first fragment", ether(&h.build(seg()), None)));
        h.ext = vec![Ext::Fragment {
            offset: 185,
            more: false,
        }];
        out.push((
            "IPv6 later fragment",
            ether(&h.build(L4::raw(TCP, PAYLOAD)), None),
        ));
    }
    out
}

#[test]
fn fragments_to_a_vip_are_dropped_others_pass() {
    let lb = Lb::new(model());
    for vip in [v4("10.10.0.1"), "fd10::1".parse().unwrap(), v4("10.10.0.2")] {
        for (what, pkt) in fragments(vip) {
            let before = lb.count(reason::FRAGMENT);
            assert_eq!(lb.run(&pkt).action, XDP_DROP, "{what} to {vip}");
            assert_eq!(lb.count(reason::FRAGMENT), before + 1, "{what}");
        }
    }
    for other in [v4("10.99.0.1"), "fd99::99".parse().unwrap()] {
        for (what, pkt) in fragments(other) {
            passes_unchanged(&lb, &pkt, reason::PASS, what);
        }
    }
    assert!(lb.maps().conntrack().is_empty(), "no flow from a fragment");
}

/// The per-CPU scratch space keeps the last packet's parse: a later fragment (no L4 header) must
/// not inherit the previous packet's "ICMP error" flag. Pins the thread to one CPU so that both
/// runs share the scratch entry.
#[test]
fn later_fragment_after_an_icmp_error_is_still_dropped() {
    let lb = Lb::new(model());
    // SAFETY: cpu_set_t is plain data; affinity of the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    let quoted = ip(
        v4("10.10.0.1"),
        v4("192.168.7.12"),
        tcp(80, 33012, &[], b""),
    );
    let err = ether(
        &ip(
            v4("10.0.0.1"),
            v4("10.10.0.1"),
            icmp(false, 3, 4, &quoted[..28]),
        ),
        None,
    );
    passes_unchanged(&lb, &err, reason::ICMP_ERROR, "ICMP error");
    let (what, later) = fragments(v4("10.10.0.1")).pop().unwrap();
    let out = lb.run(&later);
    assert_eq!(out.action, XDP_DROP, "{what} after an ICMP error");
}

#[test]
fn icmp_errors_to_a_vip_pass_unchanged() {
    let lb = Lb::new(model());
    let quoted = ip(
        v4("10.10.0.1"),
        v4("192.168.7.13"),
        tcp(80, 33013, &[], b""),
    );
    let err = ether(
        &ip(
            v4("10.0.0.1"),
            v4("10.10.0.1"),
            icmp(false, 3, 4, &quoted[..28]),
        ),
        None,
    );
    passes_unchanged(&lb, &err, reason::ICMP_ERROR, "ICMP frag needed");
    let (c, vip): (IpAddr, IpAddr) = ("fd99::13".parse().unwrap(), "fd10::1".parse().unwrap());
    let quoted6 = ip(vip, c, tcp(443, 33013, &[], b""));
    let err6 = ether(
        &ip("fd00::1".parse().unwrap(), vip, icmp(true, 2, 0, &quoted6)),
        None,
    );
    passes_unchanged(&lb, &err6, reason::ICMP_ERROR, "ICMPv6 packet too big");
    verify_checksums(&err6).unwrap();
}

#[test]
fn truncated_and_malformed_packets_pass_unchanged_and_are_counted() {
    let lb = Lb::new(model());
    let full = tcp_frame(None)(sa("192.168.7.14:33014"), sa("10.10.0.1:80"));
    let full6 = tcp_frame(None)(sa("[fd99::14]:33014"), sa("[fd10::1]:443"));
    let tagged = tcp_frame(Some(5))(sa("192.168.7.14:33014"), sa("10.10.0.1:80"));
    let edit = |f: &[u8], i: usize, b: &[u8]| {
        let mut f = f.to_vec();
        f[i..i + b.len()].copy_from_slice(b);
        f
    };
    // An IP packet whose TCP / UDP header is cut short, with a consistent tot_len.
    let short_l4 = |proto, n| {
        let seg = tcp(33014, 80, &[], b"");
        ether(
            &ip(
                v4("192.168.7.14"),
                v4("10.10.0.1"),
                L4::raw(proto, &seg.bytes[..n]),
            ),
            None,
        )
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("cut inside the VLAN tag", tagged[..16].to_vec()),
        ("cut inside the IPv4 header", full[..14 + 12].to_vec()),
        ("cut inside the IPv6 header", full6[..14 + 30].to_vec()),
        (
            "cut inside the TCP header (tot_len > frame)",
            full[..14 + 20 + 10].to_vec(),
        ),
        ("TCP header shorter than 20 bytes", short_l4(TCP, 12)),
        ("UDP header shorter than 8 bytes", short_l4(UDP, 6)),
        ("IPv4 ihl 4", edit(&full, 14, &[0x44])),
        ("IPv4 ihl 0", edit(&full, 14, &[0x40])),
        (
            "IPv4 tot_len > frame",
            edit(&full, 16, &((full.len() - 14 + 1) as u16).to_be_bytes()),
        ),
        ("IPv4 tot_len < ihl", edit(&full, 16, &[0, 16])),
        (
            "IPv4 version 6 in an IPv4 ethertype",
            edit(&full, 14, &[0x65]),
        ),
        ("IPv6 payload_len > frame", edit(&full6, 18, &[0x10, 0])),
    ];
    for (what, pkt) in &cases {
        passes_unchanged(&lb, pkt, reason::MALFORMED, what);
    }
    assert!(lb.maps().conntrack().is_empty());
    // Below an Ethernet header the kernel refuses the run itself (EINVAL).
    let prog: &Xdp = lb.ebpf.program("oxilium_lb").unwrap().try_into().unwrap();
    let opts = TestRunOptions {
        data_in: Some(&full[..13]),
        ..Default::default()
    };
    assert!(prog.test_run(opts).is_err(), "13-byte frame");
}

#[test]
fn service_without_backends_drops() {
    let lb = Lb::new(model());
    let out = lb.run(&tcp_frame(None)(
        sa("192.168.7.15:33015"),
        sa("10.10.0.4:80"),
    ));
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(lb.count(reason::NO_BACKEND), 1);
}

#[test]
fn conntrack_keeps_the_backend_when_the_backend_set_changes() {
    let mut lb = Lb::new(model());
    let vip = sa("10.10.0.1:80");
    let mut next = model();
    let web = next.services.iter_mut().find(|s| s.name == "web4").unwrap();
    // Remove 10.0.1.3, add three: the table changes everywhere.
    *web = with(
        web.clone(),
        251,
        &[
            "10.0.1.1:8080",
            "10.0.1.2:8080",
            "10.0.1.6:8080",
            "10.0.1.7:8080",
            "10.0.1.8:8080",
        ],
    );
    let key = |c: SocketAddr| flow_key(c.ip(), c.port(), vip.ip(), vip.port(), TCP);
    // A flow on a kept backend that the new table would send elsewhere.
    let client = (1..5000)
        .map(|p| SocketAddr::new(v4("192.168.8.1"), 20_000 + p))
        .find(|c| {
            let (old, new) = (
                predict(&lb.model, "web4", &key(*c)),
                predict(&next, "web4", &key(*c)),
            );
            old.to_string() != "10.0.1.3:8080" && old != new
        })
        .expect("a flow whose slot moves");
    let first = snat_forward(&lb, client, vip, TCP, tcp_frame(None));
    assert_eq!(first.1, predict(&lb.model, "web4", &key(client)));
    lb.apply(next.clone());
    let out = lb.run(&tcp_frame(None)(client, vip));
    let v = view(&out.data);
    assert_eq!(
        (v.sport, SocketAddr::new(v.dst, v.dport)),
        first,
        "same SNAT port and backend"
    );
    assert_eq!(lb.ct(&key(client)).unwrap().packets, 2);
    // A new flow follows the new table.
    let fresh = SocketAddr::new(v4("192.168.8.2"), 40_000);
    let (_, b) = snat_forward(&lb, fresh, vip, TCP, tcp_frame(None));
    assert_eq!(b, predict(&next, "web4", &key(fresh)));
    // Random selection is sticky too.
    let c = sa("192.168.8.3:5004");
    let (p, b) = snat_forward(&lb, c, sa("10.10.0.1:53"), UDP, udp_frame);
    for _ in 0..8 {
        let v = view(&lb.run(&udp_frame(c, sa("10.10.0.1:53"))).data);
        assert_eq!((v.sport, SocketAddr::new(v.dst, v.dport)), (p, b));
    }
}

#[test]
fn maglev_selection_matches_the_userspace_prediction() {
    let lb = Lb::new(model());
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..400 {
        let r = next();
        let client = SocketAddr::new(
            IpAddr::from((r as u32).to_be_bytes()),
            (r >> 32) as u16 | 1024,
        );
        let vip = sa("10.10.0.2:80");
        let out = lb.run(&tcp_frame(None)(client, vip));
        let got = view(&out.data).dst;
        let want = predict(
            &lb.model,
            "dsr4",
            &flow_key(client.ip(), client.port(), vip.ip(), 80, TCP),
        );
        assert_eq!(got, want.ip(), "flow {client} → {vip}");
        seen.insert(got);
    }
    assert_eq!(seen.len(), DSR4.len(), "every backend chosen at least once");
    for i in 0..100u16 {
        let client = SocketAddr::new(
            format!("fd99::{:x}", next() as u16).parse().unwrap(),
            1024 + i,
        );
        let vip = sa("[fd10::1]:443");
        let want = predict(
            &lb.model,
            "web6",
            &flow_key(client.ip(), client.port(), vip.ip(), 443, TCP),
        );
        let (_, got) = snat_forward(&lb, client, vip, TCP, tcp_frame(None));
        assert_eq!(got, want, "flow {client} → {vip}");
    }
}

/// Needs in addition: `ip netns add`, veth, static neighbours (nud permanent), forwarding.
/// In a namespace where the FIB answers, a translated packet leaves with the next hop's MACs:
/// XDP_TX when it goes out where it came in, XDP_REDIRECT otherwise; DSR checks the MTU.
#[test]
fn fib_success_rewrites_macs_and_transmits() {
    let ns = ThreadNetns::named(&[
        "ip link set lo up",
        "ip link add va address 02:00:00:00:aa:01 type veth peer name vb address 02:00:00:00:bb:01",
        "ip link set va up",
        "ip link set vb up",
        "ip addr add 192.168.7.254/24 dev va",
        "ip addr add 10.0.1.254/24 dev vb",
        "ip route add 10.0.2.0/24 via 10.0.1.250",
        "ip neigh add 10.0.1.1 lladdr 02:00:00:00:01:01 dev vb nud permanent",
        "ip neigh add 10.0.1.2 lladdr 02:00:00:00:01:02 dev vb nud permanent",
        "ip neigh add 10.0.1.3 lladdr 02:00:00:00:01:03 dev vb nud permanent",
        "ip neigh add 10.0.1.250 lladdr 02:00:00:00:01:fa dev vb nud permanent",
        "ip neigh add 192.168.7.16 lladdr 02:00:00:00:07:10 dev va nud permanent",
        "sysctl -qw net.ipv4.ip_forward=1",
    ]);
    let lb = Lb::in_netns(model(), ns);
    let index =
        |n: &str| unsafe { libc::if_nametoindex(std::ffi::CString::new(n).unwrap().as_ptr()) };
    let (va, vb) = (index("va"), index("vb"));
    assert!(va > 0 && vb > 0);
    let vb_mac = [2, 0, 0, 0, 0xbb, 1];
    let (client, vip) = (sa("192.168.7.16:33016"), sa("10.10.0.1:80"));
    for (ingress, action) in [(va, XDP_REDIRECT), (vb, XDP_TX)] {
        let out = lb.run_on(&tcp_frame(None)(client, vip), Some(ingress));
        assert_eq!(out.action, action, "ingress {ingress}");
        let v = view(&out.data);
        let IpAddr::V4(b) = v.dst else { panic!() };
        assert_eq!(v.src_mac, vb_mac);
        assert_eq!(
            v.dst_mac,
            [2, 0, 0, 0, 1, b.octets()[3]],
            "neighbour of {b}"
        );
        verify_checksums(&out.data).unwrap();
    }
    // The reply goes back out towards the client.
    let out = lb.run_on(&tcp_frame(None)(client, vip), Some(va));
    let v = view(&out.data);
    let reply = tcp_frame(None)(
        SocketAddr::new(v.dst, v.dport),
        SocketAddr::new(v.src, v.sport),
    );
    let back = lb.run_on(&reply, Some(vb));
    assert_eq!(back.action, XDP_REDIRECT);
    let bv = view(&back.data);
    assert_eq!(
        (bv.src_mac, bv.dst_mac),
        ([2, 0, 0, 0, 0xaa, 1], [2, 0, 0, 0, 7, 0x10])
    );
    assert_eq!(SocketAddr::new(bv.dst, bv.dport), client);
    // DSR through the gateway, and a packet that would not fit the MTU once encapsulated.
    let out = lb.run_on(&tcp_frame(None)(client, sa("10.10.0.2:80")), Some(va));
    assert_eq!(out.action, XDP_REDIRECT);
    let v = view(&out.data);
    assert_eq!(
        (v.proto, v.src_mac, v.dst_mac),
        (IPIP, vb_mac, [2, 0, 0, 0, 1, 0xfa])
    );
    let big = ether(
        &ip(
            client.ip(),
            v4("10.10.0.2"),
            tcp(33017, 80, &[], &vec![0x61; 1500 - 40]),
        ),
        None,
    );
    assert_eq!(
        lb.run_on(&big, Some(va)).action,
        XDP_DROP,
        "1520 bytes on a 1500 MTU"
    );
    assert_eq!(lb.count(reason::TOO_BIG), 1);
    assert_eq!(lb.count(reason::FIB_PASS), 0);
}
