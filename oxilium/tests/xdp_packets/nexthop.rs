//! The next-hop cache of `oxilium_lb` (`OXI_NEXTHOP`, xdp/src/nexthop.rs): a resolved next hop
//! towards a backend is kept in the backend's slot and used, without a FIB lookup, for
//! `NEXTHOP_TTL_NS`; then it is looked up again. The tests read and write the slot from user
//! space: a MAC written there (fresh) must appear on the next packet, an expired slot must be
//! replaced by the FIB's answer, and a neighbour change must reach packets once the slot expired.
use crate::{fib_netns, ifindex, xdp_lb::*};
use abi::lb::{NEXTHOP_SLOTS, NEXTHOP_TTL_NS, NextHop};
use aya::maps::{Array, MapData};
use std::time::Duration;

/// The cache's clock, the conntrack clock: bpf_ktime_get_coarse_ns(), CLOCK_MONOTONIC_COARSE.
fn coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the timespec only.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cache(lb: &mut Lb) -> Array<&mut MapData, NextHop> {
    Array::try_from(lb.ebpf.map_mut("OXI_NEXTHOP").expect("OXI_NEXTHOP")).unwrap()
}

/// Needs in addition: `ip netns add`, veth, static neighbours (nud permanent), forwarding,
/// BPF array maps written from user space while the program runs.
#[test]
fn a_cached_next_hop_is_used_while_fresh_and_looked_up_again_once_expired() {
    let mut lb = Lb::in_netns(model(), fib_netns());
    let (va, vb) = (ifindex("va"), ifindex("vb"));
    let (client, vip) = (sa("192.168.7.16:33016"), sa("10.10.0.1:80"));
    let pkt = tcp_frame(None)(client, vip);
    let before = coarse_ns();
    let out = lb.run_on(&pkt, Some(va));
    assert_eq!(out.action, XDP_REDIRECT);
    let v = view(&out.data);
    let IpAddr::V4(b) = v.dst else { panic!() };
    let real = [2, 0, 0, 0, 1, b.octets()[3]];
    assert_eq!(v.dst_mac, real);
    let key = flow_key(client.ip(), client.port(), vip.ip(), vip.port(), TCP);
    let slot = lb.ct(&key).expect("conntrack entry").backend_id % NEXTHOP_SLOTS;

    // The FIB's answer was cached in the backend's slot.
    let e = cache(&mut lb).get(&slot, 0).unwrap();
    assert_eq!(e.addr, compile::addr_bytes(v.dst));
    assert_eq!((e.ingress, e.ifindex, e.dmac), (va, vb, real));
    assert_eq!(e.smac, [2, 0, 0, 0, 0xbb, 1]);
    assert!(e.checked_ns >= before && e.checked_ns <= coarse_ns());

    // A fresh slot is used as it is: a MAC written there goes out. Retried when the machine was
    // too slow to run the packet within the time to live.
    let fake = [2, 0, 0, 0, 0xee, 0xee];
    let fresh_hit = (0..5).any(|_| {
        let written = coarse_ns();
        cache(&mut lb)
            .set(
                slot,
                NextHop {
                    dmac: fake,
                    checked_ns: written,
                    ..e
                },
                0,
            )
            .unwrap();
        let out = lb.run_on(&pkt, Some(va));
        assert_eq!(out.action, XDP_REDIRECT);
        let mac = view(&out.data).dst_mac;
        if coarse_ns() - written < NEXTHOP_TTL_NS {
            assert_eq!(mac, fake, "a fresh cached next hop is used");
            true
        } else {
            false
        }
    });
    assert!(fresh_hit, "five tries, each slower than the time to live");

    // An expired slot is looked up again and refreshed with the FIB's answer.
    let stale = coarse_ns() - 2 * NEXTHOP_TTL_NS;
    cache(&mut lb)
        .set(
            slot,
            NextHop {
                dmac: fake,
                checked_ns: stale,
                ..e
            },
            0,
        )
        .unwrap();
    let out = lb.run_on(&pkt, Some(va));
    assert_eq!(view(&out.data).dst_mac, real, "expired: the FIB answers");
    let e2 = cache(&mut lb).get(&slot, 0).unwrap();
    assert_eq!(e2.dmac, real);
    assert!(e2.checked_ns > stale + NEXTHOP_TTL_NS);

    // A slot holding another address (a reused backend id) is never used for this backend.
    cache(&mut lb)
        .set(
            slot,
            NextHop {
                addr: compile::addr_bytes(v4("10.0.1.99")),
                dmac: fake,
                checked_ns: coarse_ns(),
                ..e
            },
            0,
        )
        .unwrap();
    let out = lb.run_on(&pkt, Some(va));
    assert_eq!(view(&out.data).dst_mac, real, "another address's slot");

    // A real neighbour change reaches the flow once the cached next hop expired.
    let new_mac = "02:00:00:00:0e:01";
    sh(&[
        "ip",
        "neigh",
        "replace",
        &b.to_string(),
        "lladdr",
        new_mac,
        "dev",
        "vb",
        "nud",
        "permanent",
    ]);
    std::thread::sleep(Duration::from_nanos(2 * NEXTHOP_TTL_NS));
    let out = lb.run_on(&pkt, Some(va));
    assert_eq!(view(&out.data).dst_mac, [2, 0, 0, 0, 0x0e, 1]);
    assert_eq!(lb.count(reason::FIB_PASS), 0);
}
