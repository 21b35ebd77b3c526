//! Policy engine benchmark (run: `cargo bench -p policy --bench policy`). Prints figures with baselines
//! measured in the same run:
//! 1. full compute, 10k identities × 1k rules, vs a naive evaluation without the selector cache;
//! 2. cost of one new identity against the number of selectors it matches, at two cluster sizes, vs
//!    testing it against every selector;
//! 3. memory per identity and per selector (counting allocator), vs the bare label set.
//!
//! `-- --quick` (what `ci/bench-all --quick` runs): 2,000 identities and one cluster size, to show
//! the bench still runs; its figures are not the documented ones.
use policy::engine::EndpointSpec;
use policy::rule::{Action, Direction, Filter, PolicyKind, PolicyRef, PortSel, PortSpec, Rule};
use policy::selector_cache::SelectorCache;
use policy::{Config, Engine, Labels, Selector, Source};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const RULES: usize = 1000;

fn rule(j: usize) -> (PolicyRef, Vec<Rule>) {
    let o = PolicyRef {
        kind: PolicyKind::CiliumNetworkPolicy,
        namespace: Some("bench".into()),
        name: format!("r{j}"),
    };
    let mut r = Rule::new(
        &o,
        Selector::match_labels([("app", format!("svc{j}").as_str())]),
    );
    r.enforces = [true, false];
    r.filters.push(Filter {
        direction: Direction::Ingress,
        peers: vec![Selector::match_labels([(
            "app",
            format!("svc{}", (j + 1) % RULES).as_str(),
        )])],
        ports: vec![PortSpec {
            proto: policy::api::Protocol::Tcp,
            port: PortSel::Range(8000 + (j % 50) as u16, 8000 + (j % 50) as u16),
        }],
        action: Action::Allow,
    });
    (o, vec![r])
}

fn identity(i: usize) -> Labels {
    Labels::new()
        .with(Source::K8s, "app", &format!("svc{}", i % RULES))
        .with(Source::K8s, "version", &format!("v{}", i / RULES))
        .with(Source::K8s, "io.kubernetes.pod.namespace", "bench")
}

/// Identities of the full compute and memory sections: 10,000, or 2,000 with `--quick`.
fn identities() -> usize {
    if quick() { 2_000 } else { 10_000 }
}

fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

fn full_compute() {
    let n_ids = identities();
    let t = Instant::now();
    let mut e = Engine::new(Config::default());
    for i in 0..n_ids {
        e.add_identity(&identity(i));
    }
    for j in 0..RULES {
        let (o, r) = rule(j);
        e.upsert_policy(o, r);
    }
    for j in 0..RULES {
        e.upsert_endpoint(EndpointSpec {
            namespace: "bench".into(),
            name: format!("ep{j}"),
            labels: [("app".to_string(), format!("svc{j}"))].into(),
            ..Default::default()
        });
    }
    let engine_time = t.elapsed();
    let entries: usize = e.endpoints().map(|ep| ep.policy.map.len()).sum();

    // Baseline: the same selections computed naively, every peer selector of every endpoint's rules
    // tested against every identity (no selector cache, no index).
    let ids: Vec<Labels> = (0..n_ids).map(identity).collect();
    let rules: Vec<Rule> = (0..RULES).flat_map(|j| rule(j).1).collect();
    let t = Instant::now();
    let mut selected = 0usize;
    for j in 0..RULES {
        let me = Labels::new()
            .with(Source::K8s, "app", &format!("svc{j}"))
            .with(Source::K8s, "io.kubernetes.pod.namespace", "bench");
        for r in rules.iter().filter(|r| r.subject.matches(&me)) {
            for f in &r.filters {
                for p in &f.peers {
                    selected += ids.iter().filter(|l| p.matches(l)).count();
                }
            }
        }
    }
    let naive = t.elapsed();
    black_box(selected);
    println!(
        "full compute: {n_ids} identities x {RULES} rules, {RULES} local endpoints, {entries} map entries"
    );
    println!(
        "  engine (identities + rules + endpoint maps): {:>9.1} ms",
        engine_time.as_secs_f64() * 1e3
    );
    println!(
        "  baseline naive selection only (no cache):    {:>9.1} ms   ratio engine/baseline {:.2}",
        naive.as_secs_f64() * 1e3,
        engine_time.as_secs_f64() / naive.as_secs_f64()
    );
}

/// An engine with `n` background identities, 1000 rules on one endpoint, rule j allowing peers with
/// label grp<j>=1; returns it and the selector list for the baseline.
fn grouped(n: usize) -> (Engine, Vec<Selector>) {
    let mut e = Engine::new(Config::default());
    let mut sels = Vec::new();
    for j in 0..RULES {
        let o = PolicyRef {
            kind: PolicyKind::CiliumClusterwideNetworkPolicy,
            namespace: None,
            name: format!("g{j}"),
        };
        let mut r = Rule::new(&o, Selector::match_labels([("app", "web")]));
        r.enforces = [true, false];
        let sel = Selector::match_labels([(format!("grp{j}").as_str(), "1")]);
        sels.push(sel.clone());
        r.filters.push(Filter {
            direction: Direction::Ingress,
            peers: vec![sel],
            ports: vec![PortSpec {
                proto: policy::api::Protocol::Tcp,
                port: PortSel::Range(80 + (j % 100) as u16, 80 + (j % 100) as u16),
            }],
            action: Action::Allow,
        });
        e.upsert_policy(o, vec![r]);
    }
    e.upsert_endpoint(EndpointSpec {
        namespace: "bench".into(),
        name: "web".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        ..Default::default()
    });
    for i in 0..n {
        e.add_identity(
            &Labels::new()
                .with(Source::K8s, &format!("grp{}", i % RULES), "1")
                .with(Source::K8s, "pod", &i.to_string()),
        );
    }
    (e, sels)
}

fn new_identity_cost() {
    println!("one new identity (add + release), {RULES} selectors on one endpoint:");
    println!(
        "  {:>8} {:>8} {:>12} {:>14} {:>16} {:>8}",
        "cluster", "matches", "tests run", "engine us/op", "scan-all us/op", "ratio"
    );
    let clusters: &[usize] = if quick() {
        &[2_000]
    } else {
        &[1_000, 10_000, 50_000]
    };
    for &n in clusters {
        let (mut e, sels) = grouped(n);
        for k in [1usize, 10, 100] {
            let mut l = Labels::new().with(Source::K8s, "pod", "new");
            for j in 0..k {
                l = l.with(Source::K8s, &format!("grp{j}"), "1");
            }
            let reps = 200;
            let tests0 = e.selector_cache().tests_run;
            let t = Instant::now();
            for _ in 0..reps {
                let (id, d) = e.add_identity(&l);
                black_box(&d);
                black_box(e.release_identity(id));
            }
            let per = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
            let tests = (e.selector_cache().tests_run - tests0) / (2 * reps as u64);
            // Baseline: test the identity against every selector (what a cache without index does).
            let t = Instant::now();
            for _ in 0..reps {
                black_box(sels.iter().filter(|s| s.matches(&l)).count());
            }
            let base = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
            println!(
                "  {n:>8} {k:>8} {tests:>12} {per:>14.2} {base:>16.2} {:>8.2}",
                per / base
            );
        }
    }
}

fn memory() {
    let n = identities();
    let mut cache = SelectorCache::new();
    let sels: Vec<Selector> = (0..RULES)
        .map(|j| Selector::match_labels([("app", format!("svc{j}").as_str())]))
        .collect();
    let ids: Vec<Labels> = (0..n).map(identity).collect();
    let base_labels: isize = {
        let before = live();
        let copy: Vec<Labels> = ids.clone();
        let b = live() - before;
        drop(copy);
        b
    };
    let m0 = live();
    for (i, l) in ids.iter().enumerate() {
        cache.add_identity(256 + i as u32, l);
    }
    let per_id = (live() - m0) as f64 / n as f64;
    let m1 = live();
    for s in &sels {
        cache.add_selector(s);
    }
    let per_sel = (live() - m1) as f64 / RULES as f64;
    let mut alloc_engine = Engine::new(Config::default());
    let m2 = live();
    for l in &ids {
        alloc_engine.add_identity(l);
    }
    let per_id_engine = (live() - m2) as f64 / n as f64;
    let label_set = base_labels as f64 / n as f64;
    println!(
        "memory ({n} identities, {RULES} selectors each selecting {} identities):",
        n / RULES
    );
    println!("  baseline: one label set (3 labels)           {label_set:>8.0} B");
    println!(
        "  selector cache, per identity                 {per_id:>8.0} B   ratio {:.2}",
        per_id / label_set
    );
    println!(
        "  engine (allocator + cache), per identity     {per_id_engine:>8.0} B   ratio {:.2}",
        per_id_engine / label_set
    );
    println!(
        "  selector cache, per selector                 {per_sel:>8.0} B   ratio {:.2}",
        per_sel / label_set
    );
    black_box(cache.len());
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    full_compute();
    new_identity_cost();
    memory();
}
