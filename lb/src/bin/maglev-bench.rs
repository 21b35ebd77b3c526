//! Maglev table build benchmark (not a test): build time and peak heap for M × N, each beside a baseline
//! measured in the same run, plus the disruption caused by removing one backend.
//!
//! Run: `cargo run --release -p lb --bin maglev-bench` (about 10 s).
//! Baseline: allocating the M-slot `Vec<u32>` and filling it with `slot % N`, i.e. the cost of merely
//! writing a table of that size; the ratio says how much the Maglev fill costs on top of that.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lb::maglev::{Backend, build};

/// Counts live heap bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            grow(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak heap bytes above the level at entry while `f` runs (its result included).
fn peak_bytes<T>(f: impl FnOnce() -> T) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    drop(black_box(out));
    peak
}

/// Median wall time of `f` over enough runs to take about `budget` (at least 5, after 2 warm-ups).
fn median_time<T>(budget: Duration, mut f: impl FnMut() -> T) -> Duration {
    for _ in 0..2 {
        black_box(f());
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 5 || (start.elapsed() < budget && samples.len() < 1001) {
        let t = Instant::now();
        black_box(f());
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256))
        .collect()
}

fn baseline(size: u32, n: u32) -> Vec<u32> {
    (0..size).map(|slot| slot % n).collect()
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn kib(bytes: usize) -> String {
    format!("{:.0}", bytes as f64 / 1024.0)
}

struct Row {
    label: &'static str,
    size: u32,
    n: usize,
    weight: fn(usize) -> u32,
}

fn run(row: &Row, budget: Duration) {
    let keys = keys(row.n);
    let backends: Vec<Backend> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| Backend {
            key,
            weight: (row.weight)(i),
        })
        .collect();
    let build_time = median_time(budget, || build(&backends, row.size, 0).unwrap());
    let build_peak = peak_bytes(|| build(&backends, row.size, 0).unwrap());
    let base_time = median_time(budget / 4, || baseline(row.size, row.n as u32));
    let base_peak = peak_bytes(|| baseline(row.size, row.n as u32));
    let output = row.size as usize * 4;
    println!(
        "| {:<8} | {:>6} | {:>4} | {:>9} | {:>11} | {:>6.1} | {:>13} | {:>12} | {:>12} |",
        row.label,
        row.size,
        row.n,
        ms(build_time),
        ms(base_time),
        build_time.as_secs_f64() / base_time.as_secs_f64(),
        kib(build_peak),
        kib(build_peak.saturating_sub(output)),
        kib(base_peak),
    );
}

/// Slots that change owner when one backend (the middle one in key order) is removed.
fn disruption(size: u32, n: usize) {
    let keys = keys(n);
    let all: Vec<Backend> = keys.iter().map(|key| Backend { key, weight: 1 }).collect();
    let removed = n / 2;
    let mut rest = all.clone();
    rest.remove(removed);
    let before = build(&all, size, 0).unwrap();
    let after = build(&rest, size, 0).unwrap();
    let mut own = 0usize;
    let mut others = 0usize;
    for (&b, &a) in before.iter().zip(&after) {
        if b as usize == removed {
            own += 1;
        } else if all[b as usize].key != rest[a as usize].key {
            others += 1;
        }
    }
    let m = f64::from(size);
    println!(
        "| {:>6} | {:>4} | {:>6} ({:.3}%) | {:>6} ({:.3}%) | {:>6.1} |",
        size,
        n,
        own,
        100.0 * own as f64 / m,
        others,
        100.0 * others as f64 / m,
        others as f64 / own as f64 * 100.0,
    );
}

/// Random removals with M ≥ 100·N (equal and 1..=10 weights): the worst "other slots moved" per M,
/// against the bound the property tests assert (`2 · own + M / 50`).
fn churn_survey(trials: usize) {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let sizes = [251u32, 1009, 4093, 16381, 65521];
    // (trials, worst others/own, worst others/M, worst others/bound)
    let mut worst = [(0usize, 0f64, 0f64, 0f64); 5];
    for trial in 0..trials {
        let which = (next() % sizes.len() as u64) as usize;
        let size = sizes[which];
        let n = 2 + (next() % u64::from(size / 100).min(1000)) as usize;
        let keys: Vec<String> = (0..n)
            .map(|_| {
                format!(
                    "{}:{}",
                    std::net::Ipv4Addr::from(next() as u32),
                    next() % 65536
                )
            })
            .collect();
        let all: Vec<Backend> = keys
            .iter()
            .map(|key| Backend {
                key,
                weight: if trial % 2 == 0 {
                    1
                } else {
                    1 + (next() % 10) as u32
                },
            })
            .collect();
        let seed = next() as u32;
        let Ok(before) = build(&all, size, seed) else {
            continue; // a duplicate key: vanishingly rare, skip
        };
        let victim = (next() % n as u64) as usize;
        let mut rest = all.clone();
        rest.remove(victim);
        let after = build(&rest, size, seed).unwrap();
        let (mut own, mut others) = (0usize, 0usize);
        for (&b, &a) in before.iter().zip(&after) {
            if b as usize == victim {
                own += 1;
            } else if all[b as usize].key != rest[a as usize].key {
                others += 1;
            }
        }
        let w = &mut worst[which];
        w.0 += 1;
        w.1 = w.1.max(others as f64 / own as f64);
        w.2 = w.2.max(others as f64 / f64::from(size));
        w.3 =
            w.3.max(others as f64 / (2 * own + size as usize / 50) as f64);
    }
    println!("\nRandom removals, M ≥ 100·N, half equal weights, half 1..=10 (worst case per M)\n");
    println!("|      M | trials | others / own | others / M | others / (2·own + M/50) |");
    println!("|-------:|-------:|-------------:|-----------:|-----------------------:|");
    for (size, (count, per_own, per_m, per_bound)) in sizes.iter().zip(worst) {
        println!(
            "| {size:>6} | {count:>6} | {per_own:>12.2} | {:>9.2}% | {per_bound:>22.2} |",
            per_m * 100.0
        );
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 50 } else { 600 });
    let started = Instant::now();
    println!(
        "Maglev table build (median wall time; peak = heap high-water mark above the start, output included)\n"
    );
    println!(
        "| weights  |      M |    N | build, ms | baseline, ms |  ratio | peak heap KiB | scratch KiB | baseline KiB |"
    );
    println!(
        "|----------|-------:|-----:|----------:|------------:|-------:|--------------:|------------:|-------------:|"
    );
    let equal: fn(usize) -> u32 = |_| 1;
    for size in [16_381, 65_521, 131_071] {
        for n in [10, 100, 1000] {
            let row = Row {
                label: "equal",
                size,
                n,
                weight: equal,
            };
            run(&row, budget);
        }
    }
    // Uneven weights cost more rounds; the skewed case is the worst shape for the round schedule.
    run(
        &Row {
            label: "1..=10",
            size: 65_521,
            n: 1000,
            weight: |i| (i % 10) as u32 + 1,
        },
        budget,
    );
    run(
        &Row {
            label: "1000:1",
            size: 65_521,
            n: 1000,
            weight: |i| if i == 0 { 1000 } else { 1 },
        },
        budget,
    );

    println!(
        "\nRemoving one of N equal-weight backends (seed 0): slots it owned, and other slots that moved\n"
    );
    println!("|      M |    N | its own slots | other slots moved | others per 100 own |");
    println!("|-------:|-----:|--------------:|------------------:|-------------------:|");
    for size in [16_381, 65_521, 131_071] {
        for n in [10, 100, 1000] {
            disruption(size, n);
        }
    }
    churn_survey(if quick { 300 } else { 3000 });
    println!("\ntotal run time {:.1} s", started.elapsed().as_secs_f64());
}
