//! One service change through the node agent's own paths, from the API source's store to the
//! maps: the same 10 000 Services (three endpoints each, in one EndpointSlice) as
//! Kubernetes objects in a `k8s::Cluster`; one slice changed (one endpoint replaced), then
//!   - the full path (what the agent did on every event before, and still does on the initial
//!     sync and as fallback): `NodeIndex::build` over the whole store + `model_of`, `compile`,
//!     `Reconciler::apply`;
//!   - the per-change path: `NodeIndex::update` of the one Service + the model delta, the compile
//!     of its services, `Reconciler::apply_services`, the model patched in place.
//!
//! Every repeat measures one change of each (back and forth, so that every change is real).
use super::*;
use k8s::{Manifests, api_source::Changes as SourceChanges};
use oxilium::agent::node::{
    ModelUpdate,
    tracker::{ClusterTracker, apply_to},
};
use serde_json::{Value, json};

fn typed(items: Vec<Value>) -> Manifests {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let mut m = Manifests::default();
    k8s::manifests::parse_file(
        std::path::Path::new("bench.json"),
        &list.to_string(),
        &mut m,
    )
    .expect("bench objects");
    m
}

fn service(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"clusterIP": cluster_ip(i).to_string(),
                 "ports": [{"name": "http", "port": SVC_PORT, "protocol": "TCP"}]}})
}

fn slice(c: &Cluster, i: usize) -> Value {
    let eps: Vec<Value> = c
        .endpoints(i)
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-a"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": BE_PORT, "protocol": "TCP"}],
        "endpoints": eps})
}

/// The agent's state between events: the tracker and the model last applied.
struct Agent {
    tracker: ClusterTracker,
    model: Model,
}

/// Applies the change to the store as the API source does; returns what it reports.
fn change(store: &mut k8s::Cluster, c: &Cluster, i: usize) -> SourceChanges {
    let m = typed(vec![slice(c, i)]);
    let mut ch = SourceChanges::default();
    ch.services
        .extend(store.apply_endpoint_slice(&m.endpoint_slices[0].1, None));
    ch
}

/// Measures both paths and prints them next to the iptables restores of the same change.
pub(crate) fn agent_paths(
    rec: &mut Reconciler<Counted>,
    n: usize,
    mid: usize,
    ipt_full: Duration,
    ipt_best: Duration,
) {
    let (plain, changed) = (
        Cluster { n, changed: None },
        Cluster {
            n,
            changed: Some(mid),
        },
    );
    let t = Instant::now();
    let mut items: Vec<Value> = (0..n).map(service).collect();
    items.extend((0..n).map(|i| slice(&plain, i)));
    let mut store = k8s::Cluster::from_manifests(&typed(items));
    let mut agent = Agent {
        tracker: ClusterTracker::new("bench-node".into(), k8s::Options::default(), 251),
        model: Model::default(),
    };
    // The initial sync: the whole path, which also brings the maps to the store's state.
    // Returns the time of its three steps: the view (compile of the store, model), the compile
    // of the model and the apply.
    let full = |agent: &mut Agent, store: &k8s::Cluster, rec: &mut Reconciler<Counted>| {
        let t = Instant::now();
        let ModelUpdate::Whole(m) = agent.tracker.full(store).expect("full view").model else {
            unreachable!("a full view is whole")
        };
        let viewed = t.elapsed();
        let compiled = compile::compile(&m).unwrap();
        let compiled_at = t.elapsed();
        rec.apply(&compiled).expect("full apply");
        agent.model = m;
        [viewed, compiled_at - viewed, t.elapsed() - compiled_at]
    };
    full(&mut agent, &store, rec);
    println!(
        "\none service change with {n} services through the node agent's paths [store of {n} \
         Services and {n} EndpointSlices built and applied in {:.1} s]",
        t.elapsed().as_secs_f64()
    );
    let repeats = 21;
    let (mut fulls, mut incs, mut views, mut applies) = (vec![], vec![], vec![], vec![]);
    let mut full_steps: [Vec<Duration>; 3] = Default::default();
    let mut kinds: [Vec<Duration>; 2] = Default::default();
    let mut writes = 0;
    // Alternately to `changed` and back, so that every change is real.
    let state = |k: usize| if k.is_multiple_of(2) { changed } else { plain };
    // Full: the store changes, then everything is recompiled and walked.
    for k in 0..repeats {
        change(&mut store, &state(k), mid);
        let t = Instant::now();
        let steps = full(&mut agent, &store, rec);
        fulls.push(t.elapsed());
        for (acc, d) in full_steps.iter_mut().zip(steps) {
            acc.push(d);
        }
    }
    // Per change: only the changed Service is recompiled. Measured in a run of their own, as
    // the agent meets them: right after a full path, the allocator still sorts out what the
    // dropped index freed (up to ~1 ms spread over the next allocations).
    for k in repeats..2 * repeats + 1 {
        let ch = change(&mut store, &state(k), mid);
        let before = rec.datapath().ops;
        let t = Instant::now();
        let view = agent.tracker.changed(&store, &ch).expect("view");
        let viewed = t.elapsed();
        let ModelUpdate::Delta(delta) = view.model else {
            panic!("a slice change is applied per change");
        };
        let t2 = Instant::now();
        let (c, _) = apply_to(rec, &mut agent.model, &delta).expect("per-change apply");
        assert_eq!((c.backends_written, c.backends_removed), (1, 1));
        if k == repeats {
            continue; // the first, right after the last full path
        }
        applies.push(t2.elapsed());
        incs.push(t.elapsed());
        views.push(viewed);
        let ops = rec.datapath().ops.since(&before);
        kinds[0].push(ops.table_time + ops.backend_time + ops.service_time);
        kinds[1].push(ops.flush_time);
        writes = ops.updates + ops.deletes;
    }
    // The per-change path left the model where a full recompile puts it.
    let ModelUpdate::Whole(want) = agent.tracker.full(&store).unwrap().model else {
        unreachable!()
    };
    assert_eq!(
        agent.model, want,
        "per-change model equals a full recompile"
    );
    let (full_ms, inc_ms) = (ms(median(fulls)), ms(median(incs)));
    let [entries, flush] = kinds.map(median);
    println!(
        "  {:<66} {:>12} {:>10.2} ms",
        "full path: NodeIndex::build + model_of, compile, Reconciler::apply",
        format!("{n} services"),
        full_ms
    );
    let [view_d, compile_d, apply_d] = full_steps.map(median);
    println!(
        "    of the full path: compile of the store and model {:.1} ms, compile of the model {:.1} \
         ms, apply (the walk over every service) {:.1} ms",
        ms(view_d),
        ms(compile_d),
        ms(apply_d)
    );
    println!(
        "  {:<66} {:>12} {:>10.3} ms",
        "per-change path: NodeIndex::update + delta, compile, apply_services",
        format!("{writes} map writes"),
        inc_ms
    );
    println!(
        "    of the per-change path: index update and delta {:.1} µs; compile + apply + model \
         patch {:.3} ms, of which map writes {:.3} ms and the flow flush {:.3} ms (a scan of the \
         conntrack and SNAT maps)",
        median(views).as_secs_f64() * 1e6,
        ms(median(applies)),
        ms(entries),
        ms(flush)
    );
    println!(
        "  full ÷ per-change: {:.0}×; iptables full restore ÷ per-change: {:.0}×; best-case \
         partial restore ÷ per-change: {:.0}×",
        full_ms / inc_ms,
        ms(ipt_full) / inc_ms,
        ms(ipt_best) / inc_ms
    );
}
