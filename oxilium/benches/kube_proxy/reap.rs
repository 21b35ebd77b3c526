//! 3. The reap of a draining backend with a full conntrack map (its default size, 262 144
//!    entries, and as many SNAT entries; one backend of four pins an eighth of them): what one
//!    check every 5 s costs while the backend's flows live, and the reap that removes it once they
//!    ended (their entries deleted), each before and after lookup batches, in the same run:
//!    - before: aya's iterator (two syscalls per element), one delete per key, the whole reap under
//!      the agent's state lock, as the agent did (a walk for the live check, a second one to
//!      flush);
//!    - after: lookup batches of 4096 elements, delete batches, the walk and the deletes without
//!      the lock (the plan, the removal and the freeing of the ids under it).
//!
//!    A second thread stands for the API: it takes the lock every 0.2 ms during the reap and the
//!    longest wait is reported. Standalone: `OXILIUM_BENCH_ONLY=reap` (env OXILIUM_BENCH_REAPS:
//!    repeats of the live check, median reported).
use super::*;
use abi::lb::{CtEntry, FlowKey, LbConfig, PROTO_TCP, SnatEntry};
use oxilium::bpf::flows::FlowMaps;
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

type Shared = Arc<Mutex<Reconciler<KernelMaps>>>;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 200, 1);

fn reap_model(with_last: bool) -> Model {
    let n = if with_last { 4 } else { 3 };
    Model {
        maglev_seed: 0,
        services: vec![Service {
            name: "reap".into(),
            frontend: Frontend {
                addr: IpAddr::V4(VIP),
                port: SVC_PORT,
                protocol: Protocol::Tcp,
            },
            algorithm: Algorithm::Random,
            mode: Mode::Snat,
            table_size: 0,
            conntrack_timeout_s: 0,
            scope: Internal,
            affinity_timeout_s: None,
            source_ranges: Vec::new(),
            backends: (0..n)
                .map(|j| Backend {
                    addr: SocketAddr::new(IpAddr::V4(endpoint_ip(60_000 + j)), BE_PORT),
                    weight: 1,
                    state: BackendState::Active,
                })
                .collect(),
        }],
    }
}

fn flow(i: usize, dst: Ipv4Addr) -> FlowKey {
    FlowKey {
        src: compile::addr_bytes(IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + (i as u32 >> 14)))),
        dst: compile::addr_bytes(IpAddr::V4(dst)),
        sport: (1024 + (i & 0x3fff) as u16).to_be(),
        dport: SVC_PORT.to_be(),
        proto: PROTO_TCP,
        _pad: [0; 3],
    }
}

/// Fills `n` conntrack and SNAT entries, flow `i` pinned to `ids[i % 8 == 7 ? 3 : i % 3]`; the
/// last backend's flows `closed` or live.
fn fill(flows: &FlowMaps, n: usize, ids: [u32; 4], closed: bool) {
    let now = oxilium::events::record::monotonic_ns();
    let backend = |i: usize| if i % 8 == 7 { ids[3] } else { ids[i % 3] };
    let ct: Vec<(FlowKey, CtEntry)> = (0..n)
        .map(|i| {
            let b = backend(i);
            let state = if closed && b == ids[3] {
                abi::ct::CLOSED
            } else {
                abi::ct::ESTABLISHED
            };
            let e = CtEntry {
                backend_id: b,
                service_id: 1,
                last_seen_ns: now,
                flags: state,
                ..Default::default()
            };
            (flow(i, VIP), e)
        })
        .collect();
    let snat: Vec<(FlowKey, SnatEntry)> = (0..n)
        .map(|i| {
            let e = SnatEntry {
                backend_id: backend(i),
                service_id: 1,
                ..Default::default()
            };
            (flow(i, endpoint_ip(60_000 + i % 4)), e)
        })
        .collect();
    for part in ct.chunks(65_536) {
        flows.fill_conntrack(part).expect("filling conntrack");
    }
    for part in snat.chunks(65_536) {
        flows.fill_snat(part).expect("filling SNAT");
    }
}

/// The agent's live check before lookup batches (`KernelMaps::live_flows` then): a walk of the
/// conntrack map (`flows` walks with aya's iterator).
fn old_live(flows: &FlowMaps, ids: &BTreeSet<u32>) -> BTreeSet<u32> {
    flows
        .live(ids, Some(&abi::ct::Timeouts::default()))
        .expect("walk")
}

/// Runs `work` while another thread takes the lock every 0.2 ms: (work's result, its time, the
/// longest wait for the lock).
fn probed<T>(rec: &Shared, work: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let mut longest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                drop(rec.lock().unwrap());
                longest = longest.max(t.elapsed());
                std::thread::sleep(Duration::from_micros(200));
            }
            longest
        });
        std::thread::sleep(Duration::from_millis(5));
        let t = Instant::now();
        let out = work();
        let took = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        (out, took, prober.join().unwrap())
    })
}

/// Before: the whole reap under the lock, iterator walks (the live check, then the reap's own
/// walk and flush); returns the changes.
fn reap_before(rec: &Shared, flows0: &FlowMaps, d: u32) -> Changes {
    let mut r = rec.lock().unwrap();
    let live = old_live(flows0, &BTreeSet::from([d]));
    if live.contains(&d) {
        return Changes::default();
    }
    r.datapath_mut().set_flow_chunk(0);
    let ch = r.reap().expect("reap");
    r.datapath_mut()
        .set_flow_chunk(oxilium::bpf::batch::WALK_CHUNK);
    ch
}

/// After: plan, commit and free under the lock, the batched walk and the delete batches without
/// it; returns the changes and the time the lock was held.
fn reap_after(rec: &Shared) -> (Changes, Duration) {
    let t = Instant::now();
    let plan = rec
        .lock()
        .unwrap()
        .reap_plan()
        .expect("plan")
        .expect("a backend drains");
    let mut held = t.elapsed();
    let walk = plan.walk().expect("walk");
    let t = Instant::now();
    let flush = rec.lock().unwrap().reap_commit(walk).expect("commit");
    held += t.elapsed();
    let done = flush.run().expect("deletes");
    let t = Instant::now();
    let ch = rec.lock().unwrap().reap_free(done);
    held += t.elapsed();
    (ch, held)
}

fn backend_ids(rec: &Shared) -> [u32; 4] {
    let r = rec.lock().unwrap();
    let ids = r.backend_ids(&compile::service_key(&reap_model(true).services[0]));
    let id = |j: usize| ids[&SocketAddr::new(IpAddr::V4(endpoint_ip(60_000 + j)), BE_PORT)];
    [id(0), id(1), id(2), id(3)]
}

fn apply(rec: &Shared, with_last: bool) -> Duration {
    let c = compile::compile(&reap_model(with_last)).expect("compile");
    let t = Instant::now();
    rec.lock().unwrap().apply(&c).expect("apply");
    t.elapsed()
}

pub fn reap_bench() {
    let reps = env_or("OXILIUM_BENCH_REAPS", 5).max(1);
    let pins = PinDir::new(&unique("kpr"));
    let mut xdp = loader::load_xdp(pins.path(), &[], Default::default()).expect("loading XDP");
    let mut maps = KernelMaps::from_ebpf(&mut xdp).expect("LB maps");
    maps.set_config(&LbConfig {
        ready: 1,
        ..Default::default()
    })
    .expect("config");
    let rec: Shared = Arc::new(Mutex::new(Reconciler::open(maps).expect("reconciler")));
    apply(&rec, true);
    let ids = backend_ids(&rec);
    let flows = rec
        .lock()
        .unwrap()
        .datapath()
        .flow_maps()
        .expect("flow maps");
    let flows0 = flows.handles(None).expect("handles").with_chunk(0);
    let n = flows.conntrack_max() as usize;
    fill(&flows, n, ids, false);
    let (ct, snat) = (
        flows.conntrack().unwrap().len(),
        flows.snat_entries().unwrap().len(),
    );
    println!(
        "\nreap of a draining backend: {ct} conntrack and {snat} SNAT entries (maps of {n}), \
         the backend pins an eighth; {reps} repeats of the live check (median)"
    );
    let drain = apply(&rec, false);
    assert_eq!(rec.lock().unwrap().draining(), 1);
    println!(
        "  the apply that starts the drain (its live check walks with batches, under the lock): \
         {:.1} ms",
        ms(drain)
    );
    let d = ids[3];
    // The check every 5 s while the flows live: nothing removed.
    let mut before = Vec::new();
    let mut after = Vec::new();
    for _ in 0..reps {
        let (ch, took, wait) = probed(&rec, || reap_before(&rec, &flows0, d));
        assert!(ch.is_empty());
        before.push((took, wait));
        let ((ch, held), took, wait) = probed(&rec, || reap_after(&rec));
        assert!(ch.is_empty());
        after.push((took, wait, held));
    }
    let med = |v: Vec<Duration>| ms(median(v));
    println!(
        "  live check, before: {:.1} ms, API waits up to {:.1} ms | after: {:.1} ms, lock held \
         {:.3} ms, API waits up to {:.3} ms",
        med(before.iter().map(|b| b.0).collect()),
        med(before.iter().map(|b| b.1).collect()),
        med(after.iter().map(|a| a.0).collect()),
        med(after.iter().map(|a| a.2).collect()),
        med(after.iter().map(|a| a.1).collect()),
    );
    // The backend's flows ended: the reap removes it and deletes its entries.
    fill(&flows, n, ids, true);
    let (ch, took_b, wait_b) = probed(&rec, || reap_before(&rec, &flows0, d));
    assert_eq!(ch.backends_removed, 1, "{ch:?}");
    let flushed_b = ch.flows_flushed;
    // Again for the batched reap: the backend back, draining again with live flows, then ended.
    apply(&rec, true);
    let ids = backend_ids(&rec);
    fill(&flows, n, ids, false);
    apply(&rec, false);
    fill(&flows, n, ids, true);
    let ((ch, held), took_a, wait_a) = probed(&rec, || reap_after(&rec));
    assert_eq!(ch.backends_removed, 1, "{ch:?}");
    println!(
        "  final reap ({flushed_b} / {} conntrack entries deleted), before: {:.1} ms, API waits \
         up to {:.1} ms | after: {:.1} ms, lock held {:.1} ms, API waits up to {:.1} ms",
        ch.flows_flushed,
        ms(took_b),
        ms(wait_b),
        ms(took_a),
        ms(held),
        ms(wait_a)
    );
    // Empty maps: what a flush costs an apply that removes a backend on an idle node.
    let mut all = flows.handles(None).expect("handles");
    let every = all.pinned_to(&ids.into_iter().collect()).expect("walk");
    all.delete_entries(&every).expect("delete");
    let ids: BTreeSet<u32> = ids.into_iter().collect();
    let time = |f: &FlowMaps| {
        median(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    f.pinned_to(&ids).expect("walk");
                    t.elapsed()
                })
                .collect(),
        )
    };
    println!(
        "  walk of the empty conntrack and SNAT maps (a flush on an idle node), before: {:.2} ms \
         | after: {:.2} ms",
        ms(time(&flows0)),
        ms(time(&flows))
    );
}
