//! Traffic the program leaves alone (passes byte-identical, counted by reason) or drops: no
//! service, fragments, ICMP errors, truncated and malformed packets, a service without backends.
use crate::xdp_lb::*;

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
    let arp = arp_request(Ipv4Addr::new(192, 168, 7, 10), Ipv4Addr::new(10, 10, 0, 1));
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

/// A router's ICMP "fragmentation needed" to the VIP about a TCP segment 10.10.0.1:80 → `client`
/// (quoting its IP header and 8 bytes of TCP).
fn frag_needed_from_vip(client: &str, port: u16) -> Vec<u8> {
    let quoted = ip(v4("10.10.0.1"), v4(client), tcp(80, port, &[], b""));
    let err = icmp(false, 3, 4, &quoted[..28]);
    ether(&ip(v4("10.0.0.1"), v4("10.10.0.1"), err), None)
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
    let err = frag_needed_from_vip("192.168.7.12", 33012);
    passes_unchanged(&lb, &err, reason::ICMP_ERROR, "ICMP error");
    let (what, later) = fragments(v4("10.10.0.1")).pop().unwrap();
    let out = lb.run(&later);
    assert_eq!(out.action, XDP_DROP, "{what} after an ICMP error");
}

#[test]
fn icmp_errors_to_a_vip_pass_unchanged() {
    let lb = Lb::new(model());
    let err = frag_needed_from_vip("192.168.7.13", 33013);
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
    // Malformed packets are well-formed ones cut short or with header bytes overwritten: no
    // packet library writes a wrong length or version on purpose.
    let edit = |f: &[u8], i: usize, b: &[u8]| {
        let mut f = f.to_vec();
        f[i..i + b.len()].copy_from_slice(b);
        f
    };
    // An IP packet whose TCP / UDP header is cut short, with a consistent tot_len.
    let short_l4 = |proto, n| {
        let seg = tcp(33014, 80, &[], b"").unsealed();
        let cut = L4::raw(proto, &seg[..n]);
        ether(&ip(v4("192.168.7.14"), v4("10.10.0.1"), cut), None)
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
