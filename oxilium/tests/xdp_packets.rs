//! Packet-in → packet-out tests of the XDP program `oxilium_lb` through BPF_PROG_TEST_RUN, every
//! case with repeat = 1 (a repeated run would see its own output). The maps are set up through the
//! real path: model → compile → Reconciler<KernelMaps> → pinned maps.
//!
//! Kernel features, needed by every test unless a test says more: BPF_PROG_TEST_RUN for XDP,
//! BTF-defined maps with map-in-map (the selection tables), bpffs (pinned maps), network
//! namespaces (each test runs on its own thread in a fresh netns, so the FIB lookups fail the same
//! way whatever the host's routes and forwarding settings are). Run as root; without BPF the tests
//! fail, they never skip. See docs/datapath-tests.md.
#[path = "support/bpffs.rs"]
#[allow(dead_code)]
mod bpffs;
/// ICMP errors quoting translated flows, and "fragmentation needed" for too-big DSR packets.
#[path = "xdp_packets/icmp.rs"]
mod icmp;
/// The next-hop cache (`OXI_NEXTHOP`): used while fresh, looked up again once expired.
#[path = "xdp_packets/nexthop.rs"]
mod nexthop;
#[path = "support/packet.rs"]
#[allow(dead_code)]
mod packet;
/// Pins of an older version: a hash-map `OXI_BACKENDS` is moved into the array.
#[path = "xdp_packets/pins.rs"]
mod pins;
/// SNAT and DSR forwarding, replies, conntrack and Maglev against the userspace's prediction.
#[path = "xdp_packets/translate.rs"]
mod translate;
/// What passes or drops untranslated: other traffic, fragments, ICMP errors, malformed packets.
#[path = "xdp_packets/untranslated.rs"]
mod untranslated;
#[path = "support/xdp_lb.rs"]
mod xdp_lb;

use xdp_lb::*;

/// Needs in addition: `ip netns add`, veth, static neighbours (nud permanent), forwarding.
/// In a namespace where the FIB answers, a translated packet leaves with the next hop's MACs:
/// XDP_TX when it goes out where it came in, XDP_REDIRECT otherwise; DSR checks the MTU.
#[test]
fn fib_success_rewrites_macs_and_transmits() {
    let lb = Lb::in_netns(model(), fib_netns());
    let (va, vb) = (ifindex("va"), ifindex("vb"));
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
        XDP_TX,
        "1520 bytes on a 1500 MTU: answered with ICMP fragmentation needed (see icmp.rs)"
    );
    assert_eq!(lb.count(reason::ICMP_TOO_BIG), 1);
    assert_eq!(lb.count(reason::FIB_PASS), 0);
}

/// A namespace where the FIB answers: clients on `va` (192.168.7.0/24), backends on `vb`
/// (10.0.1.0/24, MACs 02:00:00:00:01:<last octet>), 10.0.2.0/24 behind the gateway 10.0.1.250.
pub fn fib_netns() -> ThreadNetns {
    ThreadNetns::named(&[
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
    ])
}

/// The index of interface `name` in the calling thread's namespace (asserted to exist).
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i > 0, "interface {name}");
    i
}
