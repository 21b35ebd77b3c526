//! The single-shot harness: one BPF_PROG_TEST_RUN (repeat 1, the kernel's own fresh copy of the
//! packet) per distinct packet, the median of `n` packets, each run paired with runs of the
//! baselines on the same packet right before it (so all medians come from the same moments of
//! a shared machine). Reported as ns above the pass-through baseline and as a ratio to it.
use super::{median, run_raw};

/// The baselines run on every packet: the pass-through program (`r0 = verdict; exit`) and the
/// FIB-lookup-only program, which must return `fib_found` (it found the next hop).
pub struct Baselines {
    pub pass: i32,
    pub fib: i32,
    pub fib_found: u32,
}

/// The medians of one case, in ns.
pub struct Figures {
    pub pass: f64,
    pub fib: f64,
    /// One per program, in the order given.
    pub progs: Vec<f64>,
}

/// Prints the table header; `pass` names the pass-through baseline's column.
pub fn header(pass: &str) {
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>7} {:>10}",
        "case", "oxilium", pass, "above", "ratio", "FIB only"
    );
}

/// One case: `n` packets (`pkt(i)`, all of one length) through the baselines and each of
/// `progs` (descriptor and name), with context `ctx`; every run of a program must return
/// `expect`. Prints one row per program (the first named `name`, the others "… " and their own
/// name: other builds of the same program).
pub fn case(
    progs: &[(i32, String)],
    base: &Baselines,
    ctx: &[u8],
    n: u32,
    name: &str,
    expect: u32,
    pkt: &dyn Fn(u32) -> Vec<u8>,
) -> Figures {
    let (mut pass, mut fib) = (Vec::new(), Vec::new());
    let mut ours = vec![Vec::new(); progs.len()];
    let mut other = None;
    let len = pkt(0).len();
    for i in 0..n {
        let p = pkt(i);
        assert_eq!(p.len(), len, "{name}: packets of one length");
        pass.push(run_raw(base.pass, &p, ctx, 1).1);
        let (found, ns) = run_raw(base.fib, &p, ctx, 1);
        assert_eq!(
            found, base.fib_found,
            "the FIB-only program found its next hop"
        );
        fib.push(ns);
        // The builds take turns at going first: the one run right after the baselines is
        // measurably favoured.
        for k in 0..progs.len() {
            let k = (k + i as usize) % progs.len();
            let (action, ns) = run_raw(progs[k].0, &p, ctx, 1);
            if action != expect {
                other.get_or_insert((i, action));
            }
            ours[k].push(ns);
        }
    }
    if let Some((i, action)) = other {
        panic!("{name}: packet {i} returned {action} (every run must return {expect})");
    }
    let (b, f) = (median(pass), median(fib));
    let medians: Vec<f64> = ours.into_iter().map(median).collect();
    for (k, &o) in medians.iter().enumerate() {
        let name = if k == 0 {
            name.to_string()
        } else {
            format!("  … {}", progs[k].1)
        };
        println!(
            "{name:<44} {o:>7.1} ns  {b:>6.1} ns  {:>7.1} ns  {:>6.2}x  {:>7.1} ns",
            o - b,
            o / b,
            f - b
        );
    }
    Figures {
        pass: b,
        fib: f,
        progs: medians,
    }
}
