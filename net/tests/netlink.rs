//! The `net` functions against a real kernel, each test in network namespaces of its own (see
//! `support`): run as root, with network namespaces (CONFIG_NET_NS), veth (CONFIG_VETH) and IPv6.
mod support;

use net::{Family, Netlink, addresses, links, neighbours, routes};
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};
use support::{A_MAC, B_MAC, Netns, Pair};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Addresses of a veth with IPv4 and IPv6 (RTM_GETADDR filtered to the device): the first IPv4,
/// the first IPv6 that is not link-local; another device's addresses never leak in. Needs veth
/// and IPv6.
#[test]
fn addresses_of_a_veth() {
    let ns = Netns::new("addr");
    ns.ip("link add c0 type veth peer name c1");
    ns.ip("link set c0 up");
    ns.ip("link set c1 up");
    ns.ip("addr add 10.1.0.2/24 dev c1");
    ns.ip("addr add fd01::2/64 dev c1 nodad");
    let (bare, link_local_only, v4_added, both, peer, missing) = ns.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        let bare = addresses::first_routable(&nl, "c0").await.unwrap();
        // An up veth gets a link-local IPv6 address, which cannot source routed traffic.
        let t = Instant::now();
        while !run(&["ip", "-6", "addr", "show", "dev", "c0"]).contains("fe80:") {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no link-local address"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let link_local_only = addresses::first_routable(&nl, "c0").await.unwrap();
        run(&["ip", "addr", "add", "10.1.0.1/24", "dev", "c0"]);
        run(&["ip", "addr", "add", "10.1.0.9/24", "dev", "c0"]);
        let v4_added = addresses::first_routable(&nl, "c0").await.unwrap();
        run(&["ip", "addr", "add", "fd01::1/64", "dev", "c0", "nodad"]);
        let both = addresses::first_routable(&nl, "c0").await.unwrap();
        let peer = addresses::first_routable(&nl, "c1").await.unwrap();
        let missing = addresses::first_routable(&nl, "nosuchdev").await.unwrap();
        (bare, link_local_only, v4_added, both, peer, missing)
    });
    assert_eq!(bare, addresses::Addresses::default());
    assert_eq!(link_local_only, addresses::Addresses::default());
    assert_eq!(v4_added.v4, Some("10.1.0.1".parse().unwrap()));
    assert_eq!(v4_added.v6, None);
    assert_eq!(both.v4, Some("10.1.0.1".parse().unwrap()));
    assert_eq!(both.v6, Some("fd01::1".parse().unwrap()));
    assert_eq!(peer.v4, Some("10.1.0.2".parse().unwrap()));
    assert_eq!(peer.v6, Some("fd01::2".parse().unwrap()));
    assert_eq!(missing, addresses::Addresses::default());
}

/// A command run by the calling thread's namespace (a child process inherits it).
fn run(args: &[&str]) -> String {
    support::run(args)
}

/// `ip route get` (RTM_GETROUTE with a destination): a connected address is its own next hop, a
/// routed one goes to the gateway, a local address has none, no route is ENETUNREACH. Needs veth
/// and IPv6.
#[test]
fn route_get() {
    let p = Pair::new();
    p.a.ip("route add 192.0.2.0/24 via 10.2.0.2");
    p.a.ip("route add 2001:db8::/64 via fd02::2");
    let a0 = p.a.ip("-o link show a0");
    let a0: u32 = a0.split(':').next().unwrap().trim().parse().unwrap();
    p.a.block_on(|| async move {
        let nl = Netlink::connect().unwrap();
        for (dst, hop) in [
            ("10.2.0.2", "10.2.0.2"),
            ("192.0.2.7", "10.2.0.2"),
            ("fd02::2", "fd02::2"),
            ("2001:db8::7", "fd02::2"),
        ] {
            assert_eq!(
                routes::get(&nl, ip(dst)).await.unwrap(),
                Some(routes::NextHop {
                    ifindex: a0,
                    address: ip(hop)
                }),
                "{dst}"
            );
        }
        assert_eq!(routes::get(&nl, ip("10.2.0.1")).await.unwrap(), None);
        let e = routes::get(&nl, ip("198.51.100.1")).await.unwrap_err();
        assert_eq!(e.errno(), Some(101), "{e}"); // ENETUNREACH
    });
}

/// Waits until the neighbour table holds `(ifindex, addr)`; returns its MAC.
async fn learnt(nl: &Netlink, ifindex: u32, addr: IpAddr) -> Option<[u8; 6]> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        let table = neighbours::dump(nl, Family::of(addr)).await.unwrap();
        if let Some(m) = table.get(&(ifindex, addr)) {
            return Some(*m);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Neighbour resolution (RTM_NEWNEIGH with NTF_USE on the device of the route): nothing is known
/// before; after the request the peer's ARP reply / neighbour advertisement fills the table with
/// its MAC, for the address itself and for a gateway. Needs veth and IPv6 (neighbour discovery).
#[test]
fn neighbour_resolve_populates_the_table() {
    let p = Pair::new();
    p.a.ip("route add 192.0.2.0/24 via 10.2.0.2");
    p.a.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        let a0 = links::index(&nl, "a0").await.unwrap().unwrap();
        // The peers are not known before they are resolved (the kernel may list its own
        // multicast entries on a0, e.g. ff02::16 for MLD reports: those are not under test).
        for f in [Family::V4, Family::V6] {
            let t = neighbours::dump(&nl, f).await.unwrap();
            assert!(
                !t.keys()
                    .any(|(i, a)| *i == a0 && [ip("10.2.0.2"), ip("fd02::2")].contains(a)),
                "{f:?} already known: {t:?}"
            );
        }
        for dst in ["10.2.0.2", "fd02::2"] {
            let hop = neighbours::resolve(&nl, ip(dst)).await.unwrap().unwrap();
            assert_eq!((hop.ifindex, hop.address), (a0, ip(dst)));
            assert_eq!(learnt(&nl, a0, ip(dst)).await, Some(B_MAC), "{dst}");
        }
        let hop = neighbours::resolve(&nl, ip("192.0.2.9")).await.unwrap();
        assert_eq!(hop.map(|h| h.address), Some(ip("10.2.0.2")));
        // Nothing to resolve for a local address; no route is an error.
        assert_eq!(
            neighbours::resolve(&nl, ip("10.2.0.1")).await.unwrap(),
            None
        );
        assert!(neighbours::resolve(&nl, ip("198.51.100.1")).await.is_err());
    });
    // Learnt (reachable), not a permanent entry.
    let shown = p.a.ip("neigh show dev a0 10.2.0.2");
    assert!(!shown.contains("PERMANENT"), "{shown}");
}

/// A fresh resolution of an address nobody answers for stays out of the dump (incomplete or
/// failed entries have no MAC). Needs veth.
#[test]
fn unanswered_neighbours_are_not_listed() {
    let p = Pair::new();
    p.a.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        let hop = neighbours::resolve(&nl, ip("10.2.0.77"))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = neighbours::dump(&nl, Family::V4).await.unwrap();
        assert!(!t.contains_key(&(hop.ifindex, hop.address)), "{t:?}");
    });
}

/// Link MACs and veth peer detection (IFLA_LINK_NETNSID on a veth whose peer is in another
/// namespace): a veth pair inside one namespace is not listed. Needs veth.
#[test]
fn links_macs_and_veth_peers_elsewhere() {
    let p = Pair::new();
    p.a.ip("link add c0 type veth peer name c1");
    let (listed, a_mac, lo_mac, gone) = p.a.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        let a0 = links::index(&nl, "a0").await.unwrap().unwrap();
        let lo = links::index(&nl, "lo").await.unwrap().unwrap();
        (
            links::veths_with_peer_elsewhere(&nl).await.unwrap(),
            links::mac(&nl, a0).await.unwrap(),
            links::mac(&nl, lo).await.unwrap(),
            links::index(&nl, "nosuchdev").await.unwrap(),
        )
    });
    let names: Vec<&str> = listed.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["a0"]);
    assert_eq!(a_mac, Some(A_MAC));
    assert_eq!(lo_mac, None);
    assert_eq!(gone, None);
    let in_b = p.b.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        links::veths_with_peer_elsewhere(&nl).await.unwrap()
    });
    assert_eq!(
        in_b.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["b0"]
    );
}
