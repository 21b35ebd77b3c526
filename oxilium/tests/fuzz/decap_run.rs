//! `oxilium_decap` under the fuzzer: the tc object loaded with its maps pinned in a folder of its
//! own, `OXI_TUNNEL_SOURCES` = the LB addresses, fed tunnel packets (IPIP, IPv6-in-IPv6, 4in6,
//! 6in4; from the LBs and from strangers; decorated and mutated like everything else) and the
//! scene's other traffic, each compared with [`DecapModel`].
use super::decap::DecapModel;
use super::frames::{self, Rng, Spec};
use super::harness::{Tally, compare};
use super::model::Shadow;
use super::traffic::Scene;
use super::xdp_run::{Pinned, skb_refused, try_run};
use crate::bpffs::PinDir;
use crate::xdp_lb::{ThreadNetns, unique};
use aya::maps::{HashMap, MapData};
use aya::programs::SchedClassifier;
use oxilium::bpf::{loader, objects};
use std::net::IpAddr;

fn bytes16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// A tunnel packet from `from` (an LB or a stranger) to a backend around a client's packet.
fn tunnel(rng: &mut Rng, scene: &Scene, from: &[IpAddr]) -> Vec<u8> {
    let inner = scene.to_front(rng).ip();
    let src = *rng.pick(from);
    let dst = *rng.pick(
        &scene
            .others
            .iter()
            .filter(|a| a.is_ipv6() == src.is_ipv6())
            .copied()
            .collect::<Vec<_>>(),
    );
    let proto = if inner[0] >> 4 == 6 { 41 } else { 4 };
    let mut s = Spec::new(src, dst, proto, inner);
    if rng.pct(10) && !src.is_ipv6() {
        s.v4_opts = frames::v4_opts(rng);
    }
    if rng.pct(10) && src.is_ipv6() {
        s.exts = frames::ext_chain(rng);
    }
    if rng.pct(8) {
        s.vlan = frames::Vlan::Q(5);
    }
    if rng.pct(8) {
        s.trailer = rng.bytes(6);
    }
    let mut f = s.build();
    if rng.pct(25) {
        frames::mutate(rng, &mut f);
    }
    f
}

pub fn fuzz(scene: &Scene, lbs: &[IpAddr], rng: &mut Rng, n: usize, t: &mut Tally) {
    let _ns = ThreadNetns::fresh();
    let dir = PinDir::new(&unique("fuzz-decap"));
    let mut ebpf = loader::load_pinned(objects::tc(), dir.path()).expect("loading the tc object");
    let mut sources: HashMap<MapData, [u8; 16], u8> =
        loader::take_map(&mut ebpf, abi::lb::names::TUNNEL_SOURCES).unwrap();
    for a in lbs {
        sources.insert(bytes16(*a), 1, 0).unwrap();
    }
    let prog: &mut SchedClassifier = ebpf
        .program_mut("oxilium_decap")
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().expect("verifying oxilium_decap");
    let pins = Pinned::open(dir.path());
    let model = DecapModel {
        sources: lbs.iter().map(|a| bytes16(*a)).collect(),
    };
    let mut from = lbs.to_vec();
    from.extend(["192.0.2.77", "2001:db8::77"].map(|s| s.parse::<IpAddr>().unwrap()));
    let mut before = pins.reasons();
    let mut shadow = Shadow::default();
    for i in 0..n {
        let (f, kind) = if rng.pct(60) {
            (tunnel(rng, scene, &from), "tunnel")
        } else {
            scene.next(rng, &[])
        };
        let prog: &SchedClassifier = ebpf.program("oxilium_decap").unwrap().try_into().unwrap();
        let (action, out) = match try_run(prog, &f) {
            Ok(r) => r,
            Err(e) => {
                // Counted, and only ever for the frames the kernel is known to refuse.
                *t.kinds.entry("refused by the kernel").or_default() += 1;
                if !skb_refused(&f) {
                    t.differ(e);
                }
                continue;
            }
        };
        if skb_refused(&f) {
            t.differ(format!(
                "kernel ran a frame it should refuse: {}",
                super::harness::hex(&f)
            ));
        }
        let after = pins.reasons();
        let delta: Vec<(u64, u64)> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| (a.0 - b.0, a.1 - b.1))
            .collect();
        before = after;
        t.packets += 1;
        *t.verdicts.entry(action).or_default() += 1;
        *t.kinds.entry(kind).or_default() += 1;
        let x = model.step(&f);
        let bad = compare(&x, action, &out, &delta, &pins, &mut shadow, 0, 0);
        if !bad.is_empty() {
            t.differ(format!(
                "{kind} packet {i}:\n  input {}\n  {}",
                super::harness::hex(&f),
                bad.join("\n  ")
            ));
        }
    }
}
