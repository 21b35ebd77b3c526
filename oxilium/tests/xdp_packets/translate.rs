//! SNAT and DSR forwarding through BPF_PROG_TEST_RUN in a namespace where the FIB fails (XDP_PASS
//! with the rewritten frame): the exact bytes, checksums, conntrack, and the backend choice.
use crate::xdp_lb::*;

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
    // The inner packet's identification and DF (RFC 2003 §3.1); no port option (edge LB).
    let (id, df) = (
        u16::from_be_bytes([inner[4], inner[5]]),
        inner[6] & 0x40 != 0,
    );
    (h.id, h.frag, h.ttl) = (id, if df { 0x4000 } else { 0 }, 64);
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
    // DF clear and another identification inside: the outer header follows.
    let mut may_fragment = tcp_frame(None)(sa("192.168.7.7:33010"), sa("10.10.0.2:80"));
    may_fragment[14 + 4..14 + 8].copy_from_slice(&[0x12, 0x34, 0, 0]);
    dsr_case(&lb, &may_fragment, false, ipip);
    assert_eq!(lb.count(reason::FWD_DSR), 3);
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

/// An established flow finds its service by its conntrack entry's id (`OXI_SERVICE_IDS`), not by
/// its frontend: what the agent changes in the service still reaches it at once. A new timeout
/// is the one its entry keeps, a switch of a DSR service to SNAT drops its DSR flows (no SNAT
/// port to reuse), and a removed service's flows pass untouched.
#[test]
fn established_flows_follow_their_services_timeout_mode_and_removal() {
    let mut lb = Lb::new(model());
    let (client, vip) = (sa("192.168.9.1:33100"), sa("10.10.0.2:80"));
    let key = flow_key(client.ip(), client.port(), vip.ip(), vip.port(), TCP);
    let pkt = tcp_frame(None)(client, vip);
    // Encapsulated, then passed: the FIB fails in a fresh netns (see dsr_case).
    let sent = |lb: &Lb| {
        let n = lb.count(reason::FWD_DSR);
        lb.run(&pkt).action == XDP_PASS && lb.count(reason::FWD_DSR) == n + 1
    };
    assert!(sent(&lb));
    assert!(sent(&lb));
    let e = lb.ct(&key).unwrap();
    assert_eq!(e.packets, 2);
    let id = e.service_id;
    let slots = lb.maps().service_slots().unwrap();
    let slot = slots
        .iter()
        .find(|(i, _)| *i == id)
        .expect("the service by id")
        .1;
    assert_eq!(slot.value.id, id);

    let mut next = model();
    let dsr = next.services.iter_mut().find(|s| s.name == "dsr4").unwrap();
    dsr.conntrack_timeout_s = 4321;
    lb.apply(next.clone());
    assert!(sent(&lb));
    let e = lb.ct(&key).unwrap();
    assert_eq!((e.packets, e.svc_timeout_s), (3, 4321), "the new timeout");

    let dsr = next.services.iter_mut().find(|s| s.name == "dsr4").unwrap();
    dsr.mode = lb::model::Mode::Snat;
    lb.apply(next.clone());
    let dropped = lb.count(reason::NO_BACKEND);
    assert_eq!(
        lb.run(&pkt).action,
        XDP_DROP,
        "a DSR flow of a SNAT service"
    );
    assert_eq!(lb.count(reason::NO_BACKEND), dropped + 1);

    next.services.retain(|s| s.name != "dsr4");
    lb.apply(next);
    assert!(
        lb.maps()
            .service_slots()
            .unwrap()
            .iter()
            .all(|(i, _)| *i != id),
        "the removed service's slot is cleared"
    );
    let passed = lb.count(reason::PASS);
    assert_eq!(lb.run(&pkt).action, XDP_PASS, "no service any more");
    assert_eq!(lb.count(reason::PASS), passed + 1);
}
