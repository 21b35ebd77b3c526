//! Part 2: one service change with 10 000 services present: iptables-restore (full and the
//! `--noflush` partial ones) against the reconciler's apply, then the node agent's paths.
use super::*;

/// Measures and prints part 2; `rec` holds the services of part 1.
pub(crate) fn service_change(run: &Run, rec: &mut Reconciler<Counted>, restores: usize) {
    let (started, ipt) = (run.started, run.ipt);
    let n = *SIZES.last().unwrap();
    let mid = n / 2;
    let plain = Cluster { n, changed: None };
    let changed = Cluster {
        n,
        changed: Some(mid),
    };
    // Alternate A → B → A so that every repeat is a real change.
    let step = |k: usize| {
        if k.is_multiple_of(2) {
            (plain, changed)
        } else {
            (changed, plain)
        }
    };
    println!(
        "\none service change with {n} services [{:.0} s] (service #{mid}: one of its {ENDPOINTS} \
         endpoints replaced), median of {restores} for iptables",
        started.elapsed().as_secs_f64()
    );
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut sizes = [0usize; 3];
    for k in 0..restores {
        let (from, to) = step(k);
        let texts = [
            full_nat(to),
            partial_nat(to, from, true),
            partial_nat(from, to, true),
        ];
        // Full: to; then KUBE-SERVICES + chains back to `from` and forward again to `to`, so the
        // table ends at `to` and the next repeat starts from it.
        let [full, back, fwd] = texts;
        sizes[0] = full.lines().count();
        sizes[1] = fwd.lines().count();
        times[0].push(restore(ipt, &[], full));
        let _ = restore(ipt, &["--noflush"], back);
        times[1].push(restore(ipt, &["--noflush"], fwd));
        let _ = restore(ipt, &["--noflush"], partial_nat(to, from, false));
        let only = partial_nat(from, to, false);
        sizes[2] = only.lines().count();
        times[2].push(restore(ipt, &["--noflush"], only));
    }
    let ipt_full = median(times[0].clone());
    let row = |name: &str, input: &str, d: Duration| {
        println!(
            "  {name:<66} {input:>12} {:>10.2} ms {:>9.1}×",
            ms(d),
            ms(ipt_full) / ms(d)
        )
    };
    let lines = |n: usize| format!("{n} lines");
    println!(
        "  {:<66} {:>12} {:>13} {:>10}",
        "case", "input", "wall time", "full ÷ this"
    );
    row(
        "iptables-restore, whole nat table regenerated (kube-proxy full sync)",
        &lines(sizes[0]),
        ipt_full,
    );
    row(
        "iptables-restore --noflush, KUBE-SERVICES + changed chains (≥1.28)",
        &lines(sizes[1]),
        median(times[1].clone()),
    );
    row(
        "iptables-restore --noflush, only the changed chains (best case)",
        &lines(sizes[2]),
        median(times[2].clone()),
    );
    // oxilium: the agent compiles the model and applies it; the apply writes the difference.
    let apply_repeats = 21;
    let (mut applies, mut noops, mut compiles, mut one) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut kinds: [Vec<Duration>; 3] = Default::default();
    let mut last: Option<(Changes, (usize, usize, usize))> = None;
    let mut current: BTreeMap<ServiceKey, CompiledService> =
        compile::compile(&plain.model()).unwrap();
    rec.apply(&current).unwrap();
    for k in 0..apply_repeats {
        let (_, to) = step(k);
        let model = to.model();
        let t = Instant::now();
        let desired = compile::compile(&model).unwrap();
        compiles.push(t.elapsed());
        // What an event-driven agent could do instead: recompile only the changed service.
        let t = Instant::now();
        let c = compile::compile_service(&model.services[mid], 0).unwrap();
        current.insert(c.key, c);
        one.push(t.elapsed());
        assert_eq!(current, desired);
        let before = rec.datapath().ops;
        let t = Instant::now();
        let ch = rec.apply(&current).expect("apply");
        applies.push(t.elapsed());
        let ops = rec.datapath().ops.since(&before);
        kinds[0].push(ops.table_time);
        kinds[1].push(ops.backend_time + ops.service_time);
        kinds[2].push(ops.flush_time);
        if let Some(prev) = &last {
            assert_eq!(
                prev,
                &(ch.clone(), ops.counts()),
                "every change costs the same"
            );
        }
        last = Some((ch, ops.counts()));
        // The same apply again: nothing to write, only the walk over the model.
        let t = Instant::now();
        assert!(rec.apply(&current).unwrap().is_empty());
        noops.push(t.elapsed());
    }
    let (ch, (updates, deletes, inner_maps)) = last.unwrap();
    let apply = median(applies);
    row(
        &format!("oxilium Reconciler::apply (median of {apply_repeats})"),
        &format!("{} map writes", updates + deletes),
        apply,
    );
    println!(
        "    map writes: {updates} updates + {deletes} deletes = {} (backends written {}, removed \
         {}; tables written {} = {inner_maps} new inner array; services written {}; flows \
         flushed {})",
        updates + deletes,
        ch.backends_written,
        ch.backends_removed,
        ch.tables_written,
        ch.services_written,
        ch.flows_flushed
    );
    let [table, entries, flush] = kinds.map(median);
    println!(
        "    of the apply: selection-table swap {:.2} ms, backend/service writes {:.3} ms, flow \
         flush {:.2} ms; an apply with nothing to change (the walk over {n} services) {:.2} ms",
        ms(table),
        ms(entries),
        ms(flush),
        ms(median(noops))
    );
    println!(
        "    plus, in userspace: compile of the whole model {:.1} ms (the full path, below), \
         compile of the changed service alone {:.1} µs",
        ms(median(compiles)),
        median(one).as_secs_f64() * 1e6
    );
    println!(
        "  iptables full restore ÷ oxilium apply: {:.0}×; best-case partial restore ÷ apply: {:.0}×",
        ms(ipt_full) / ms(apply),
        ms(median(times[2].clone())) / ms(apply)
    );
    agent_path::agent_paths(rec, n, mid, ipt_full, median(times[2].clone()));
}
