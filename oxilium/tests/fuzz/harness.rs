//! What every program's fuzz loop shares: the seed and the packet budget from the environment,
//! the per-program tallies printed at the end, and the comparison of one run with its model's
//! [`Expect`] (verdict, output bytes, counters, map entries), which also brings the model's
//! shadow in line with the kernel so that one difference is reported once.
use super::model::{Expect, NOW, Shadow, same_csum};
use abi::lb::{CtEntry, FlowKey, SnatEntry};
use std::collections::BTreeMap;

/// `OXILIUM_FUZZ_SEED` or a fresh one (printed either way).
pub fn seed() -> u64 {
    match std::env::var("OXILIUM_FUZZ_SEED") {
        Ok(s) => s.parse().expect("OXILIUM_FUZZ_SEED: a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// This program's share of `OXILIUM_FUZZ_PACKETS` (default 20 000 over all programs).
pub fn budget(share: f64) -> usize {
    let total: usize = std::env::var("OXILIUM_FUZZ_PACKETS")
        .map(|s| s.parse().expect("OXILIUM_FUZZ_PACKETS: a count"))
        .unwrap_or(20_000);
    ((total as f64 * share) as usize).max(100)
}

pub fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_MONOTONIC_COARSE: the conntrack clock of the programs (`bpf_ktime_get_coarse_ns`),
/// which lags CLOCK_MONOTONIC by up to a timer tick. A run's time window starts here.
pub fn coarse_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain clock read into a local.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Kernel-side reads a comparison needs.
pub trait KernelView {
    fn ct(&self, k: &FlowKey) -> Option<CtEntry>;
    fn snat(&self, k: &FlowKey) -> Option<SnatEntry>;
}

#[derive(Default)]
pub struct Tally {
    pub program: &'static str,
    pub seed: u64,
    pub packets: u64,
    pub verdicts: BTreeMap<u32, u64>,
    pub kinds: BTreeMap<&'static str, u64>,
    /// Counter increments the model expected, by reason: what the run exercised.
    pub reasons: BTreeMap<u32, u64>,
    pub differences: u64,
    pub shown: Vec<String>,
    pub ambiguous: u64,
    /// Translation paths the model predicted (and the kernel took: the run had no difference).
    pub paths: BTreeMap<&'static str, u64>,
}

impl Tally {
    pub fn new(program: &'static str, seed: u64) -> Tally {
        println!("fuzz {program}: seed {seed} (OXILIUM_FUZZ_SEED={seed} replays)");
        Tally {
            program,
            seed,
            ..Default::default()
        }
    }

    pub fn differ(&mut self, what: String) {
        self.differences += 1;
        if self.shown.len() < 8 {
            println!("fuzz {} DIFFERENCE: {what}", self.program);
            self.shown.push(what);
        }
    }

    pub fn report(&self) {
        let verdicts: Vec<String> = self
            .verdicts
            .iter()
            .map(|(v, n)| format!("{v}:{n}"))
            .collect();
        let kinds: Vec<String> = self.kinds.iter().map(|(k, n)| format!("{k}:{n}")).collect();
        let paths: Vec<String> = self.paths.iter().map(|(k, n)| format!("{k}:{n}")).collect();
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{}:{n}", abi::lb::reason::NAMES[*r as usize]))
            .collect();
        println!(
            "fuzz {}: seed {} packets {} verdicts {{{}}} differences {} (time-ambiguous {})\n  kinds {{{}}}\n  reasons {{{}}}\n  paths {{{}}}",
            self.program,
            self.seed,
            self.packets,
            verdicts.join(" "),
            self.differences,
            self.ambiguous,
            kinds.join(" "),
            reasons.join(" "),
            paths.join(" ")
        );
    }

    /// How many of `need` (reasons) and `paths` the run has not taken yet.
    pub fn missing(&self, need: &[u32], paths: &[&str]) -> usize {
        let reasons = REASONS.with(|m| {
            let m = m.borrow();
            need.iter()
                .filter(|r| m.get(r).copied().unwrap_or(0) == 0)
                .count()
        });
        reasons
            + paths
                .iter()
                .filter(|p| self.paths.get(*p).copied().unwrap_or(0) == 0)
                .count()
    }

    /// Runs `more` (500 packets a time, at most `cap` in all) while a reason of `need` or a path
    /// of `paths` has not been taken (a small budget may miss a rare one), then
    /// [`Tally::assert_clean_hitting`].
    pub fn until_hit(
        &mut self,
        need: &[u32],
        paths: &[&str],
        cap: usize,
        mut more: impl FnMut(&mut Tally, usize),
    ) {
        let mut extra = 0;
        while self.missing(need, paths) > 0 && extra < cap {
            more(self, 500);
            extra += 500;
            *self
                .kinds
                .entry("(extension until every path was taken)")
                .or_default() += 500;
        }
        self.assert_clean_hitting(need, paths);
    }

    /// [`Tally::assert_clean`], and every reason of `need` was expected at least once: the run
    /// reached those paths (a check that cannot pass vacuously).
    pub fn assert_clean_hitting(&mut self, need: &[u32], paths: &[&str]) {
        self.assert_clean();
        for p in paths {
            assert!(
                self.paths.get(p).copied().unwrap_or(0) > 0,
                "{}: path {p} never taken (seed {})",
                self.program,
                self.seed
            );
        }
        for r in need {
            assert!(
                self.reasons.get(r).copied().unwrap_or(0) > 0,
                "{}: no packet counted {} (seed {})",
                self.program,
                abi::lb::reason::NAMES[*r as usize],
                self.seed
            );
        }
    }

    pub fn assert_clean(&mut self) {
        self.collect_reasons();
        self.report();
        assert_eq!(
            self.differences, 0,
            "{}: {} differences with the model (seed {}); first: {:#?}",
            self.program, self.differences, self.seed, self.shown
        );
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn time_ok(want: u64, got: u64, shadow: u64, t0: u64, t1: u64) -> bool {
    if want == NOW {
        (t0..=t1).contains(&got)
    } else {
        let _ = shadow;
        want == got
    }
}

fn ct_same(w: &CtEntry, g: &CtEntry, t0: u64, t1: u64) -> bool {
    let mut a = *w;
    let b = *g;
    let times = time_ok(w.last_seen_ns, b.last_seen_ns, 0, t0, t1);
    a.last_seen_ns = b.last_seen_ns;
    times && a == b
}

fn snat_same(w: &SnatEntry, g: &SnatEntry, t0: u64, t1: u64) -> bool {
    let mut a = *w;
    a.last_seen_ns = g.last_seen_ns;
    time_ok(w.last_seen_ns, g.last_seen_ns, 0, t0, t1) && a == *g
}

/// Compares a run (verdict, output, per-reason (packets, bytes) increments) with the model's
/// expectation; returns what differs. The shadow takes the kernel's entries for every key the
/// expectation names.
#[allow(clippy::too_many_arguments)]
pub fn compare(
    x: &Expect,
    action: u32,
    out: &[u8],
    reasons: &[(u64, u64)],
    k: &dyn KernelView,
    shadow: &mut Shadow,
    t0: u64,
    t1: u64,
) -> Vec<String> {
    let mut bad = Vec::new();
    if x.action != action {
        bad.push(format!("verdict {action}, model {}", x.action));
    }
    let bytes_ok = out.len() == x.out.len()
        && (0..out.len()).all(|i| {
            out[i] == x.out[i]
                || x.csum
                    .iter()
                    .any(|&c| (i == c || i == c + 1) && same_csum(&out[c..c + 2], &x.out[c..c + 2]))
        });
    if !bytes_ok {
        bad.push(format!(
            "output\n   got   {}\n   model {}",
            hex(out),
            hex(&x.out)
        ));
    }
    tally_reasons(x);
    let mut want = vec![(0u64, 0u64); reasons.len()];
    for &(r, b) in &x.reasons {
        want[r as usize].0 += 1;
        want[r as usize].1 += b;
    }
    if want != reasons {
        let show = |v: &[(u64, u64)]| {
            v.iter()
                .enumerate()
                .filter(|(_, c)| c.0 != 0)
                .map(|(i, c)| format!("{i}:{}/{}B", c.0, c.1))
                .collect::<Vec<_>>()
                .join(" ")
        };
        bad.push(format!(
            "counters [{}], model [{}]",
            show(reasons),
            show(&want)
        ));
    }
    for (key, w) in &x.ct {
        let g = k.ct(key);
        let same = match (w, &g) {
            (None, None) => true,
            (Some(w), Some(g)) => ct_same(w, g, t0, t1),
            _ => false,
        };
        if !same {
            bad.push(format!("conntrack {key:?}\n   got   {g:?}\n   model {w:?}"));
        }
        match g {
            Some(g) => shadow.ct.insert(*key, g),
            None => shadow.ct.remove(key),
        };
    }
    for (key, w) in &x.snat {
        let g = k.snat(key);
        let same = match (w, &g) {
            (None, None) => true,
            (Some(w), Some(g)) => snat_same(w, g, t0, t1),
            _ => false,
        };
        if !same {
            bad.push(format!("snat {key:?}\n   got   {g:?}\n   model {w:?}"));
        }
        match g {
            Some(g) => shadow.snat.insert(*key, g),
            None => shadow.snat.remove(key),
        };
    }
    bad
}

thread_local! {
    static REASONS: std::cell::RefCell<BTreeMap<u32, u64>> = Default::default();
}

fn tally_reasons(x: &Expect) {
    REASONS.with(|m| {
        for (r, _) in &x.reasons {
            *m.borrow_mut().entry(*r).or_default() += 1;
        }
    });
}

impl Tally {
    /// Takes the reasons this thread's comparisons expected (call before `assert_clean`).
    pub fn collect_reasons(&mut self) {
        REASONS.with(|m| self.reasons = std::mem::take(&mut *m.borrow_mut()));
    }
}
