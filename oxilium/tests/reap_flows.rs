//! The flow maps walked in bulk, and the reap of draining backends on a large conntrack map.
//!
//! Kernel features, needed by every test: what the XDP object needs to load (BTF-defined maps
//! with map-in-map, bpffs pins; see docs/datapath-tests.md) and `BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` on (LRU) hash maps: Linux 5.6. Each test
//! loads the XDP object with its own pinned maps on its own thread in a fresh network namespace,
//! fills the conntrack map directly (no packet) and removes everything when it ends. Run as root;
//! without BPF the tests fail, they never skip.
#[path = "support/bpffs.rs"]
#[allow(dead_code)]
mod bpffs;
#[path = "support/packet.rs"]
#[allow(dead_code)]
mod packet;
#[path = "support/xdp_lb.rs"]
mod xdp_lb;

use abi::lb::{PROTO_TCP, SnatEntry};
use lb::reconcile::FlowWalk;
use oxilium::bpf::{batch, flows::FlowMaps};
use std::collections::{BTreeSet, HashMap};
use xdp_lb::*;

/// A distinct client flow to `vip` for each `i`.
fn key(i: u32, vip: &str) -> FlowKey {
    let src = Ipv4Addr::from(0x0a40_0000 + (i >> 14));
    flow_key(
        src.into(),
        1024 + (i & 0x3fff) as u16,
        sa(vip).ip(),
        sa(vip).port(),
        PROTO_TCP,
    )
}

/// A conntrack entry pinned to `backend`: live (established, seen now), closed, or expired (its
/// service's 1 s timeout passed).
fn entry(backend: u32, how: &str) -> CtEntry {
    let now = oxilium::events::record::monotonic_ns();
    CtEntry {
        backend_id: backend,
        service_id: 1,
        last_seen_ns: if how == "expired" {
            now - 5_000_000_000
        } else {
            now
        },
        flags: if how == "closed" {
            abi::ct::CLOSED
        } else {
            abi::ct::ESTABLISHED
        },
        svc_timeout_s: 1,
        ..Default::default()
    }
}

fn walked(flows: &FlowMaps) -> HashMap<FlowKey, CtEntry> {
    flows.conntrack().expect("walk").into_iter().collect()
}

#[test]
fn a_batched_walk_returns_exactly_the_maps_entries() {
    let lb = Lb::new(model());
    let flows = lb.maps().flow_maps().expect("flow maps");
    let n = 150_000u32;
    assert!(
        flows.conntrack_max() >= n,
        "conntrack map smaller than the test"
    );
    let want: HashMap<FlowKey, CtEntry> = (0..n)
        .map(|i| (key(i, "10.10.0.1:80"), entry(i % 7, "live")))
        .collect();
    let list: Vec<_> = want.iter().map(|(k, v)| (*k, *v)).collect();
    for part in list.chunks(50_000) {
        flows.fill_conntrack(part).expect("filling conntrack");
    }
    // aya's iterator (two syscalls per element), and batches of 4096 elements.
    let by_iterator = walked(&flows.handles(None).unwrap().with_chunk(0));
    assert_eq!(by_iterator.len(), n as usize);
    assert!(
        by_iterator == want,
        "the iterator's walk differs from what was written"
    );
    assert!(
        walked(&flows) == want,
        "the batched walk differs from what was written"
    );
    // Batches of one element: every bucket holding two elements or more (150 000 elements in
    // 262 144 buckets) answers ENOSPC first, and the walk grows its chunk.
    let mut one = HashMap::new();
    let chunk = batch::walk_hash(flows.conntrack_fd(), 1, |k: &FlowKey, v: &CtEntry| {
        assert!(one.insert(*k, *v).is_none(), "an element seen twice");
    })
    .expect("walk by one");
    assert!(chunk > 1, "no bucket of two elements: ENOSPC never seen");
    assert!(one == want, "the walk by one differs from what was written");
    // An empty map: one empty last batch.
    let keys: Vec<FlowKey> = want.keys().copied().collect();
    let mut all = flows.handles(None).unwrap();
    let gone = all
        .delete_entries(
            &keys
                .iter()
                .map(|k| oxilium::bpf::flows::Flow::Conntrack(*k))
                .collect::<Vec<_>>(),
        )
        .expect("delete batch");
    assert_eq!(gone, n as usize);
    assert!(walked(&flows).is_empty());
}

#[test]
fn a_draining_backend_with_100k_flows_goes_only_when_they_end_and_the_others_stay() {
    let web = || {
        with(
            service("web4", "10.10.0.1:80", Tcp, Maglev, Snat),
            251,
            &WEB4,
        )
    };
    let mut lb = Lb::new(Model {
        maglev_seed: SEED,
        services: vec![web()],
    });
    let skey = compile::service_key(&web());
    let ids = lb.rec.backend_ids(&skey);
    let (b1, b3) = (ids[&sa(WEB4[0])], ids[&sa(WEB4[2])]);
    let flows = lb.maps().flow_maps().expect("flow maps");
    // 100 000 live flows to b3 (each with its SNAT entry), 50 000 to b1.
    let drained: Vec<(FlowKey, CtEntry)> = (0..100_000)
        .map(|i| (key(i, "10.10.0.1:80"), entry(b3, "live")))
        .collect();
    let kept: Vec<(FlowKey, CtEntry)> = (100_000..150_000)
        .map(|i| (key(i, "10.10.0.1:80"), entry(b1, "live")))
        .collect();
    let snat: Vec<(FlowKey, SnatEntry)> = (0..20_000)
        .map(|i| {
            let k = key(i, "10.0.1.3:8080");
            let e = SnatEntry {
                backend_id: if i % 2 == 0 { b3 } else { b1 },
                service_id: 1,
                ..Default::default()
            };
            (k, e)
        })
        .collect();
    flows.fill_conntrack(&drained).unwrap();
    flows.fill_conntrack(&kept).unwrap();
    flows.fill_snat(&snat).unwrap();
    // b3 leaves the service: it drains (live flows), out of the table.
    let mut m = lb.model.clone();
    m.services[0].backends.pop();
    lb.apply(m.clone());
    assert_eq!(lb.rec.draining(), 1);
    let state = |lb: &Lb| {
        lb.maps()
            .backends()
            .unwrap()
            .into_iter()
            .find(|(id, _)| *id == b3)
            .map(|(_, b)| b.state)
    };
    use lb::reconcile::Datapath;
    assert_eq!(state(&lb), Some(abi::lb::BACKEND_DRAINING));
    assert!(lb.rec.reap().unwrap().is_empty(), "reaped with live flows");
    // The walk alone (what the agent runs without its state) sees b3 live.
    let w = lb.maps().flow_walker().unwrap();
    assert_eq!(
        w.walk(&BTreeSet::from([b1, b3])).unwrap().live,
        BTreeSet::from([b1, b3])
    );
    // All but one of b3's flows end (closed or expired): still there.
    let ended: Vec<(FlowKey, CtEntry)> = drained
        .iter()
        .enumerate()
        .map(|(i, (k, _))| {
            let how = if i == 0 {
                "live"
            } else if i % 2 == 0 {
                "closed"
            } else {
                "expired"
            };
            (*k, entry(b3, how))
        })
        .collect();
    flows.fill_conntrack(&ended).unwrap();
    assert!(
        lb.rec.reap().unwrap().is_empty(),
        "reaped with one live flow"
    );
    assert_eq!(state(&lb), Some(abi::lb::BACKEND_DRAINING));
    // The last one ends, but b3 comes back between the walk and the commit: kept, flows intact.
    let end = |how| [(drained[0].0, entry(b3, how))];
    flows.fill_conntrack(&end("closed")).unwrap();
    let walk = lb
        .rec
        .reap_plan()
        .unwrap()
        .expect("b3 drains")
        .walk()
        .unwrap();
    let without = lb.model.clone();
    let mut with_b3 = without.clone();
    with_b3.services[0].backends = web().backends;
    lb.apply(with_b3);
    let flush = lb.rec.reap_commit(walk).unwrap();
    assert!(flush.changes().is_empty(), "{:?}", flush.changes());
    let done = flush.run().unwrap();
    assert!(lb.rec.reap_free(done).is_empty());
    assert_eq!(state(&lb), Some(abi::lb::BACKEND_ACTIVE));
    assert_eq!(walked(&flows).len(), 150_000);
    // A flow of b3 again, b3 leaves again (drains), the flow ends: b3 goes with its 100 000
    // conntrack and 10 000 SNAT entries.
    flows.fill_conntrack(&end("live")).unwrap();
    lb.apply(without);
    assert_eq!(state(&lb), Some(abi::lb::BACKEND_DRAINING));
    flows.fill_conntrack(&end("closed")).unwrap();
    let ch = lb.rec.reap().unwrap();
    assert_eq!((ch.backends_removed, ch.flows_flushed), (1, 100_000));
    assert_eq!(lb.rec.draining(), 0);
    assert_eq!(state(&lb), None);
    let left = walked(&flows);
    assert_eq!(left.len(), 50_000);
    assert!(left.values().all(|e| e.backend_id == b1));
    let snat_left = flows.snat_entries().unwrap();
    assert_eq!(snat_left.len(), 10_000);
    assert!(snat_left.iter().all(|(_, e)| e.backend_id == b1));
}
