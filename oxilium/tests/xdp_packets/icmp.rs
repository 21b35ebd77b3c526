//! ICMP through `oxilium_lb`: errors quoting translated flows (both directions, SNAT and DSR,
//! IPv4 and IPv6, TCP and UDP, whole and truncated quotes) against the exact frame expected,
//! every checksum checked (the error's, the quoted IPv4 header's, the quoted segment's when
//! whole); errors that quote nothing known pass untouched; DSR packets too big for the egress MTU
//! once encapsulated are answered with "fragmentation needed" / "packet too big".
use crate::xdp_lb::*;

fn mtu4(m: u16) -> [u8; 4] {
    let [a, b] = m.to_be_bytes();
    [0, 0, a, b]
}

fn mtu6(m: u32) -> [u8; 4] {
    m.to_be_bytes()
}

/// An ICMP error `from` → `to` quoting `quoted` (an IP packet, possibly cut).
fn error(from: IpAddr, to: IpAddr, ty: u8, code: u8, data: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let msg = icmp_with(from.is_ipv6(), ty, code, data, quoted);
    ether(&ip(from, to, msg), None)
}

/// The IP packet of the test segment `s` → `d` (as `tcp_frame` / `udp_frame` make it).
fn segment(proto: u8, s: SocketAddr, d: SocketAddr) -> Vec<u8> {
    let f = if proto == TCP {
        tcp_frame(None)(s, d)
    } else {
        udp_frame(s, d)
    };
    f[14..].to_vec()
}

/// IP header + 8 bytes: the least an error quotes.
fn short(v6: bool) -> usize {
    if v6 { 48 } else { 28 }
}

/// Every checksum of an error frame: its own (ICMPv6 with the pseudo-header, the IPv4 header's),
/// the quoted IPv4 header's, and the quoted TCP / UDP one when the quote is whole.
fn verify_error(frame: &[u8], whole: bool) {
    verify_checksums(frame).unwrap();
    let v = view(frame);
    let quote = &frame[v.l4 + 8..v.l3 + v.l3_len];
    if quote[0] >> 4 == 4 {
        assert!(ipv4_header_ok(quote), "quoted IPv4 header checksum");
    }
    if whole {
        verify_checksums(&ether(quote, None)).expect("quoted segment checksum");
    }
}

/// Error types per family (type, code, data): fragmentation needed / packet too big with an MTU,
/// port unreachable, time exceeded, parameter problem (with its pointer).
fn kinds(v6: bool) -> [(u8, u8, [u8; 4]); 4] {
    if v6 {
        [
            (2, 0, mtu6(1400)),
            (1, 4, [0; 4]),
            (3, 0, [0; 4]),
            (4, 0, mtu6(40)),
        ]
    } else {
        [
            (3, 4, mtu4(1400)),
            (3, 3, [0; 4]),
            (11, 0, [0; 4]),
            (12, 0, [20, 0, 0, 0]),
        ]
    }
}

fn lb_ip(v6: bool) -> IpAddr {
    if v6 { LB6.into() } else { LB4.into() }
}

/// Runs `input`, expects exactly `want` (XDP_PASS: the FIB fails in a fresh netns) and one more
/// `icmp_translated`.
fn translated(lb: &Lb, input: &[u8], want: &[u8], whole: bool, what: &str) {
    let before = lb.count(reason::ICMP_XLATE);
    let out = lb.run(input);
    assert_eq!(out.action, XDP_PASS, "{what}");
    assert_eq!(hex(&out.data), hex(want), "{what}");
    verify_error(&out.data, whole);
    assert_eq!(lb.count(reason::ICMP_XLATE), before + 1, "{what}: counter");
}

const SNAT_FLOWS: [(&str, &str, u8); 4] = [
    ("192.168.7.40:33040", "10.10.0.1:80", TCP),
    ("192.168.7.40:5040", "10.10.0.1:53", UDP),
    ("[fd99::40]:33040", "[fd10::1]:443", TCP),
    ("[fd99::40]:5040", "[fd10::1]:53", UDP),
];

/// An error from the backend (or a router on its side) to the LB's SNAT address, about the
/// translated packet LB:port → backend, reaches the client as VIP → client quoting client → VIP.
#[test]
fn backend_side_errors_about_snat_flows_go_to_the_client() {
    let lb = Lb::new(model());
    for (client, vip, proto) in SNAT_FLOWS {
        let (client, vip) = (sa(client), sa(vip));
        let make = |s, d| segment(proto, s, d);
        let (port, backend) =
            snat_forward(&lb, client, vip, proto, |s, d| ether(&make(s, d), None));
        let v6 = client.is_ipv6();
        let lb_ep = SocketAddr::new(lb_ip(v6), port);
        let (seen, sent) = (make(lb_ep, backend), make(client, vip));
        let router: IpAddr = if v6 {
            v4("fd00:1::fe")
        } else {
            v4("10.0.1.254")
        };
        for (ty, code, data) in kinds(v6) {
            for (from, whole) in [(backend.ip(), true), (router, false)] {
                let n = if whole { seen.len() } else { short(v6) };
                let input = error(from, lb_ep.ip(), ty, code, data, &seen[..n]);
                let want = error(vip.ip(), client.ip(), ty, code, data, &sent[..n]);
                let what = format!("{client} {proto} type {ty}/{code} from {from}");
                translated(&lb, &input, &want, whole, &what);
            }
        }
    }
}

/// An error from the client (or a router on its side) to the VIP, about a reply VIP → client,
/// reaches the backend as LB → backend quoting backend → LB:port (what the backend sent).
#[test]
fn client_side_errors_about_snat_replies_go_to_the_backend() {
    let lb = Lb::new(model());
    for (client, vip, proto) in SNAT_FLOWS {
        let (client, vip) = (sa(client), sa(vip));
        let make = |s, d| segment(proto, s, d);
        let (port, backend) =
            snat_forward(&lb, client, vip, proto, |s, d| ether(&make(s, d), None));
        let v6 = client.is_ipv6();
        let lb_ep = SocketAddr::new(lb_ip(v6), port);
        let (got, sent) = (make(vip, client), make(backend, lb_ep));
        let router: IpAddr = if v6 {
            v4("fd99::fe")
        } else {
            v4("192.168.7.254")
        };
        for (ty, code, data) in kinds(v6) {
            for (from, whole) in [(client.ip(), true), (router, false)] {
                let n = if whole { got.len() } else { short(v6) };
                let input = error(from, vip.ip(), ty, code, data, &got[..n]);
                let want = error(lb_ep.ip(), backend.ip(), ty, code, data, &sent[..n]);
                let what = format!("{client} {proto} type {ty}/{code} from {from}");
                translated(&lb, &input, &want, whole, &what);
            }
        }
    }
}

/// A client-side error about a DSR reply (sent by the backend from the VIP) is tunnelled to the
/// flow's backend unchanged: IPv4 in IPv4, IPv6 in IPv6, and IPv4 in IPv6.
#[test]
fn client_side_errors_about_dsr_replies_are_tunnelled_to_the_backend() {
    let lb = Lb::new(model());
    for (client, vip, inner) in [
        ("192.168.7.41:33041", "10.10.0.2:80", IPIP),
        ("[fd99::41]:33041", "[fd10::2]:80", IPV6_IN_IP),
        ("192.168.7.42:33042", "10.10.0.3:80", IPIP),
    ] {
        let (client, vip) = (sa(client), sa(vip));
        let out = lb.run(&tcp_frame(None)(client, vip));
        assert_eq!(out.action, XDP_PASS);
        let backend = view(&out.data).dst;
        let v6 = client.is_ipv6();
        let (ty, code, data) = kinds(v6)[0];
        let input = error(
            client.ip(),
            vip.ip(),
            ty,
            code,
            data,
            &segment(TCP, vip, client),
        );
        let before = lb.count(reason::ICMP_XLATE);
        let out = lb.run(&input);
        assert_eq!(out.action, XDP_PASS, "{client}");
        let v = view(&out.data);
        assert_eq!(
            (v.src, v.dst),
            (lb_ip(backend.is_ipv6()), backend),
            "{client}: outer"
        );
        assert_eq!(
            v.proto, inner,
            "{client}: tunnel protocol (the inner family's)"
        );
        assert_eq!(
            hex(&out.data[v.l4..]),
            hex(&input[14..]),
            "{client}: inner error unchanged"
        );
        verify_checksums(&out.data).unwrap();
        assert_eq!(lb.count(reason::ICMP_XLATE), before + 1);
    }
}

/// Errors that quote no translated flow, are not addressed to the quoted packet's source, or are
/// of a type not translated pass byte-identical (`icmp_error`).
#[test]
fn errors_about_unknown_flows_pass_unchanged() {
    let lb = Lb::new(model());
    let (client, vip) = (sa("192.168.7.43:33043"), sa("10.10.0.1:80"));
    let (port, backend) = snat_forward(&lb, client, vip, TCP, tcp_frame(None));
    let lb_ep = SocketAddr::new(LB4.into(), port);
    let router = v4("10.0.1.254");
    let other = SocketAddr::new(client.ip(), 33044);
    let seen = segment(TCP, lb_ep, backend);
    let cases = [
        (
            "no such flow (another client port)",
            error(
                router,
                vip.ip(),
                3,
                4,
                mtu4(1400),
                &segment(TCP, vip, other),
            ),
        ),
        (
            "no SNAT entry (another LB port)",
            error(
                router,
                LB4.into(),
                3,
                4,
                mtu4(1400),
                &segment(TCP, SocketAddr::new(LB4.into(), port ^ 1), backend),
            ),
        ),
        (
            "not addressed to the quoted source",
            error(router, vip.ip(), 3, 4, mtu4(1400), &seen),
        ),
        (
            "source quench",
            error(router, LB4.into(), 4, 0, [0; 4], &seen),
        ),
        (
            "redirect",
            error(router, LB4.into(), 5, 1, [10, 0, 1, 9], &seen),
        ),
        (
            "quoted ICMP",
            error(
                router,
                LB4.into(),
                3,
                4,
                mtu4(1400),
                &ip(LB4.into(), backend.ip(), icmp(false, 8, 0, b"ping")),
            ),
        ),
        ("quoted later fragment", {
            let IpAddr::V4(b) = backend.ip() else {
                unreachable!()
            };
            let mut h = ipv4(LB4, b);
            h.frag = 185;
            error(
                router,
                LB4.into(),
                3,
                4,
                mtu4(1400),
                &h.build(L4::raw(TCP, &seen[20..])),
            )
        }),
        (
            "quote cut inside the ports",
            error(router, LB4.into(), 3, 4, mtu4(1400), &seen[..22]),
        ),
    ];
    for (what, pkt) in &cases {
        passes_unchanged(&lb, pkt, reason::ICMP_ERROR, what);
    }
    assert_eq!(lb.count(reason::ICMP_XLATE), 0);
}

/// Needs in addition: `ip netns add`, veth, static neighbours, forwarding, bpf_fib_lookup's
/// `mtu_result` (kernel ≥ 5.13), bpf_xdp_adjust_head / adjust_tail.
/// A DSR packet that would exceed the 1500-byte egress MTU once encapsulated is answered, back
/// where it came from (XDP_TX, MACs swapped), with "fragmentation needed" (IPv4, DF) or "packet
/// too big" (IPv6) from the VIP carrying the usable MTU (1500 − 20 or − 40) and quoting the
/// packet's start; without DF it is dropped.
#[test]
fn too_big_dsr_packets_are_answered_with_the_usable_mtu() {
    let ns = ThreadNetns::named(&[
        "ip link set lo up",
        "ip link add va address 02:00:00:00:aa:01 type veth peer name vb address 02:00:00:00:bb:01",
        "ip link set va up",
        "ip link set vb up",
        "ip addr add 192.168.7.254/24 dev va",
        "ip addr add 10.0.2.254/24 dev vb",
        "ip -6 addr add fd00:2::fe/64 dev vb nodad",
        "ip neigh add 10.0.2.1 lladdr 02:00:00:00:02:01 dev vb nud permanent",
        "ip neigh add 10.0.2.2 lladdr 02:00:00:00:02:02 dev vb nud permanent",
        "ip neigh add 10.0.2.3 lladdr 02:00:00:00:02:03 dev vb nud permanent",
        "ip neigh add 10.0.2.4 lladdr 02:00:00:00:02:04 dev vb nud permanent",
        "ip neigh add 10.0.2.5 lladdr 02:00:00:00:02:05 dev vb nud permanent",
        "ip -6 neigh add fd00:2::1 lladdr 02:00:00:00:02:11 dev vb nud permanent",
        "sysctl -qw net.ipv4.ip_forward=1",
        "sysctl -qw net.ipv6.conf.all.forwarding=1",
    ]);
    let lb = Lb::in_netns(model(), ns);
    let va = unsafe { libc::if_nametoindex(c"va".as_ptr()) };
    assert!(va > 0);
    let swap = |mut f: Vec<u8>| {
        let (dst, src) = (f[..6].to_vec(), f[6..12].to_vec());
        f[..6].copy_from_slice(&src);
        f[6..12].copy_from_slice(&dst);
        f
    };
    for (client, vip, mtu, quote, vlan) in [
        (
            "192.168.7.16:33050",
            "10.10.0.2:80",
            1480u32,
            548usize,
            None,
        ),
        (
            "192.168.7.16:33052",
            "10.10.0.2:80",
            1480,
            548,
            Some(0x2064u16),
        ),
        ("[fd99::16]:33050", "[fd10::2]:80", 1460, 1232, None),
    ] {
        let l2 = if vlan.is_some() { 18 } else { 14 };
        let (client, vip) = (sa(client), sa(vip));
        let v6 = client.is_ipv6();
        let hdr = if v6 { 60 } else { 40 };
        let big = ether(
            &ip(
                client.ip(),
                vip.ip(),
                tcp(client.port(), 80, &[], &vec![0x61; 1500 - hdr]),
            ),
            vlan,
        );
        // One that fits is tunnelled.
        let fits = ether(
            &ip(
                client.ip(),
                vip.ip(),
                tcp(client.port(), 80, &[], &vec![0x61; 1400 - hdr]),
            ),
            vlan,
        );
        // (A tagged frame always leaves where it came in.)
        let tunnelled = if vlan.is_some() { XDP_TX } else { XDP_REDIRECT };
        assert_eq!(
            lb.run_on(&fits, Some(va)).action,
            tunnelled,
            "{client}: 1400 bytes"
        );
        let before = lb.count(reason::ICMP_TOO_BIG);
        let out = lb.run_on(&big, Some(va));
        assert_eq!(out.action, XDP_TX, "{client}: 1500 bytes");
        let msg = if v6 {
            icmp_with(true, 2, 0, mtu6(mtu), &big[l2..l2 + quote])
        } else {
            icmp_with(false, 3, 4, mtu4(mtu as u16), &big[l2..l2 + quote])
        };
        let want = match (vip.ip(), client.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = ipv4(s, d);
                (h.id, h.frag, h.ttl) = (0, 0, 64);
                h.build(msg)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut h = ipv6(s, d);
                h.hop_limit = 64;
                h.build(msg)
            }
            _ => unreachable!(),
        };
        let want = swap(ether(&want, vlan));
        assert_eq!(hex(&out.data), hex(&want), "{client}: the error");
        assert!(out.data.len() - l2 <= if v6 { 1280 } else { 576 });
        if vlan.is_none() {
            verify_error(&out.data, false);
        } else {
            verify_checksums(&out.data).unwrap();
        }
        assert_eq!(lb.count(reason::ICMP_TOO_BIG), before + 1);
    }
    // IPv4 without DF: nothing to tell the sender (it lets routers fragment): dropped.
    let IpAddr::V4(c) = v4("192.168.7.16") else {
        unreachable!()
    };
    let mut h = ipv4(c, Ipv4Addr::new(10, 10, 0, 2));
    h.frag = 0;
    let big = ether(&h.build(tcp(33051, 80, &[], &vec![0x61; 1460])), None);
    assert_eq!(lb.run_on(&big, Some(va)).action, XDP_DROP);
    assert_eq!(lb.count(reason::TOO_BIG), 1);
}
