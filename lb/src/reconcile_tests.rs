//! The reconciler against an in-memory datapath: only differences are written, in a safe order,
//! ids survive restarts, backends leaving a TCP service drain while their flows live, and flows
//! of other removed backends are flushed.
use super::*;
use crate::{
    compile::compile,
    model::{
        Algorithm, Backend as MBackend, BackendState, Frontend, Mode, Model, Protocol, Service,
    },
};
use proptest::prelude::*;

fn service(name: &str, port: u16, backends: &[u8]) -> Service {
    Service {
        name: name.into(),
        frontend: Frontend {
            addr: "10.0.0.1".parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
        },
        algorithm: Algorithm::Maglev,
        mode: Mode::Snat,
        table_size: 251,
        conntrack_timeout_s: 60,
        scope: crate::model::Scope::External,
        affinity_timeout_s: None,
        source_ranges: Vec::new(),
        backends: backends
            .iter()
            .map(|b| MBackend {
                addr: format!("10.0.1.{b}:80").parse().unwrap(),
                weight: 1,
                state: BackendState::Active,
            })
            .collect(),
    }
}

fn model(services: Vec<Service>) -> Model {
    Model {
        maglev_seed: 0,
        services,
    }
}

#[test]
fn applying_the_same_model_twice_writes_nothing() {
    let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
    let m = compile(&model(vec![service("a", 80, &[1, 2, 3])])).unwrap();
    let first = r.apply(&m).unwrap();
    assert_eq!(
        (
            first.services_written,
            first.backends_written,
            first.tables_written
        ),
        (1, 3, 1)
    );
    let writes = r.datapath().writes;
    assert!(r.apply(&m).unwrap().is_empty());
    assert_eq!(r.datapath().writes, writes);
}

#[test]
fn a_change_costs_writes_proportional_to_its_own_backends() {
    let many: Vec<Service> = (0..200)
        .map(|i| service(&format!("s{i}"), 1000 + i, &[1, 2]))
        .collect();
    let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
    r.apply(&compile(&model(many.clone())).unwrap()).unwrap();
    let before = r.datapath().writes;
    let mut changed = many;
    changed[7] = service("s7", 1007, &[1, 2, 3]);
    let ch = r.apply(&compile(&model(changed)).unwrap()).unwrap();
    assert_eq!(
        (ch.backends_written, ch.tables_written, ch.services_written),
        (1, 1, 0)
    );
    assert_eq!(r.datapath().writes - before, 2, "one backend + one table");
}

#[test]
fn a_backend_leaving_a_tcp_service_drains_until_its_flows_end_across_a_restart() {
    let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
    r.apply(&compile(&model(vec![service("a", 80, &[1, 2, 3])])).unwrap())
        .unwrap();
    let key = crate::compile::service_key(&service("a", 80, &[]));
    let ids = r.backend_ids(&key);
    let b2 = ids[&"10.0.1.2:80".parse().unwrap()];
    let b1 = ids[&"10.0.1.1:80".parse().unwrap()];
    let mut dp = r.datapath().clone();
    dp.flows.insert(1, b1);
    dp.flows.insert(2, b2);
    // Restart: a new reconciler adopts the datapath's ids.
    let mut r = Reconciler::open(dp).unwrap();
    assert_eq!(r.backend_ids(&key), ids);
    let ch = r
        .apply(&compile(&model(vec![service("a", 80, &[1, 3])])).unwrap())
        .unwrap();
    // b2 has a live flow: kept, draining, out of the table; its flow untouched.
    assert_eq!(
        (ch.backends_draining, ch.backends_removed, ch.flows_flushed),
        (1, 0, 0)
    );
    let dp = r.datapath();
    assert_eq!(dp.backends[&b2].state, abi_lb::BACKEND_DRAINING);
    let sid = r.service_id(&key).unwrap();
    assert!(!dp.tables[&sid].contains(&b2));
    assert_eq!(dp.flows.len(), 2);
    assert_eq!(r.draining(), 1);
    // Nothing to reap while the flow lives, also after another restart.
    let mut r = Reconciler::open(r.datapath().clone()).unwrap();
    assert_eq!(r.draining(), 1);
    assert!(
        !r.backend_ids(&key)
            .contains_key(&"10.0.1.2:80".parse().unwrap())
    );
    assert!(r.reap().unwrap().is_empty());
    assert!(r.datapath().backends.contains_key(&b2));
    // The flow ends: the backend goes, its id is free for the next new backend.
    r.datapath_mut().flows.remove(&2);
    let ch = r.reap().unwrap();
    assert_eq!(ch.backends_removed, 1);
    assert!(!r.datapath().backends.contains_key(&b2));
    assert_eq!(r.draining(), 0);
    r.apply(&compile(&model(vec![service("a", 80, &[1, 3, 4])])).unwrap())
        .unwrap();
    assert_eq!(r.backend_ids(&key)[&"10.0.1.4:80".parse().unwrap()], b2);
}

#[test]
fn a_draining_backend_that_comes_back_keeps_its_id_and_one_without_flows_goes_at_once() {
    let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
    r.apply(&compile(&model(vec![service("a", 80, &[1, 2, 3])])).unwrap())
        .unwrap();
    let key = crate::compile::service_key(&service("a", 80, &[]));
    let ids = r.backend_ids(&key);
    let b2 = ids[&"10.0.1.2:80".parse().unwrap()];
    let b3 = ids[&"10.0.1.3:80".parse().unwrap()];
    r.datapath_mut().flows.insert(1, b2);
    let ch = r
        .apply(&compile(&model(vec![service("a", 80, &[1])])).unwrap())
        .unwrap();
    // b3 had no flow: removed in the same apply; b2 drains.
    assert_eq!((ch.backends_draining, ch.backends_removed), (2, 1));
    assert!(!r.datapath().backends.contains_key(&b3));
    assert_eq!(r.draining(), 1);
    // b2 is back (a readiness flap): same id, active, in the table again.
    r.apply(&compile(&model(vec![service("a", 80, &[1, 2])])).unwrap())
        .unwrap();
    assert_eq!(r.backend_ids(&key)[&"10.0.1.2:80".parse().unwrap()], b2);
    assert_eq!(r.datapath().backends[&b2].state, abi_lb::BACKEND_ACTIVE);
    assert_eq!(r.draining(), 0);
    let sid = r.service_id(&key).unwrap();
    assert!(r.datapath().tables[&sid].contains(&b2));
    // The service goes away while a backend drains: everything of it goes, flows included.
    r.apply(&compile(&model(vec![service("a", 80, &[1])])).unwrap())
        .unwrap();
    assert_eq!(r.draining(), 1);
    let ch = r.apply(&compile(&model(vec![])).unwrap()).unwrap();
    assert_eq!((ch.backends_removed, ch.flows_flushed), (2, 1));
    assert!(r.datapath().backends.is_empty() && r.datapath().flows.is_empty());
    assert_eq!(r.draining(), 0);
}

#[test]
fn a_reap_walked_without_the_state_keeps_backends_that_came_back_or_changed_meanwhile() {
    let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
    let addr = |n: u8| -> SocketAddr { format!("10.0.1.{n}:80").parse().unwrap() };
    r.apply(&compile(&model(vec![service("a", 80, &[1, 2, 3])])).unwrap())
        .unwrap();
    let key = crate::compile::service_key(&service("a", 80, &[]));
    let ids = r.backend_ids(&key);
    let (b2, b3) = (ids[&addr(2)], ids[&addr(3)]);
    r.datapath_mut().flows.insert(1, b2);
    r.datapath_mut().flows.insert(2, b3);
    r.apply(&compile(&model(vec![service("a", 80, &[1])])).unwrap())
        .unwrap();
    assert_eq!(r.draining(), 2);
    // Walked while both flows live: nothing goes, whatever ends before the commit.
    let walk = r.reap_plan().unwrap().unwrap().walk().unwrap();
    r.datapath_mut().flows.clear();
    let flush = r.reap_commit(walk).unwrap();
    assert!(r.reap_free(flush.run().unwrap()).is_empty());
    // Walked without flows; meanwhile b2 comes back, b3 leaves and drains again (its flow back).
    let walk = r.reap_plan().unwrap().unwrap().walk().unwrap();
    r.apply(&compile(&model(vec![service("a", 80, &[1, 2, 3])])).unwrap())
        .unwrap();
    r.datapath_mut().flows.insert(3, b3);
    r.apply(&compile(&model(vec![service("a", 80, &[1, 2])])).unwrap())
        .unwrap();
    assert_eq!(r.draining(), 1);
    let done = r.reap_commit(walk).unwrap().run().unwrap();
    let ch = r.reap_free(done);
    assert!(ch.is_empty(), "{ch:?}");
    assert_eq!(r.datapath().backends[&b2].state, abi_lb::BACKEND_ACTIVE);
    assert_eq!(r.datapath().backends[&b3].state, abi_lb::BACKEND_DRAINING);
    // Its flow ends: the next reap removes it; its id is given out again only once freed, after
    // its flows are deleted.
    r.datapath_mut().flows.clear();
    let walk = r.reap_plan().unwrap().unwrap().walk().unwrap();
    let flush = r.reap_commit(walk).unwrap();
    assert_eq!(flush.changes().backends_removed, 1);
    assert_eq!(r.draining(), 0);
    assert!(!r.datapath().backends.contains_key(&b3));
    r.apply(&compile(&model(vec![service("a", 80, &[1, 2, 4])])).unwrap())
        .unwrap();
    assert_ne!(
        r.backend_ids(&key)[&addr(4)],
        b3,
        "an id given out before its flows went"
    );
    let ch = r.reap_free(flush.run().unwrap());
    assert_eq!(ch.backends_removed, 1);
    r.apply(&compile(&model(vec![service("a", 80, &[1, 2, 4, 5])])).unwrap())
        .unwrap();
    assert_eq!(r.backend_ids(&key)[&addr(5)], b3);
}

#[test]
fn a_backend_leaving_a_udp_service_loses_its_flows_at_once() {
    let mut udp = service("d", 53, &[1, 2]);
    udp.frontend.protocol = Protocol::Udp;
    let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
    r.apply(&compile(&model(vec![udp.clone()])).unwrap())
        .unwrap();
    let key = crate::compile::service_key(&udp);
    let b2 = r.backend_ids(&key)[&"10.0.1.2:80".parse().unwrap()];
    r.datapath_mut().flows.insert(1, b2);
    udp.backends.pop();
    let ch = r.apply(&compile(&model(vec![udp])).unwrap()).unwrap();
    assert_eq!(
        (ch.backends_draining, ch.backends_removed, ch.flows_flushed),
        (0, 1, 1)
    );
    assert!(r.datapath().flows.is_empty());
    assert!(!r.datapath().backends.contains_key(&b2));
}

#[test]
fn removing_a_service_removes_its_entries_and_vip_marker() {
    let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
    r.apply(&compile(&model(vec![service("a", 80, &[1]), service("b", 81, &[2])])).unwrap())
        .unwrap();
    assert_eq!(
        r.datapath().services.len(),
        3,
        "two services and one VIP marker"
    );
    r.apply(&compile(&model(vec![service("b", 81, &[2])])).unwrap())
        .unwrap();
    assert_eq!(r.datapath().services.len(), 2);
    assert_eq!(r.datapath().backends.len(), 1);
    r.apply(&compile(&model(vec![])).unwrap()).unwrap();
    assert!(r.datapath().services.is_empty() && r.datapath().backends.is_empty());
}

#[test]
fn a_full_apply_rewrites_a_missing_vip_marker_of_an_adopted_service() {
    let m = compile(&model(vec![service("a", 80, &[1])])).unwrap();
    let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
    r.apply(&m).unwrap();
    let mut dp = r.datapath().clone();
    let marker = vip_marker("10.0.0.1".parse().unwrap());
    assert!(dp.services.remove(&marker).is_some());
    let mut r = Reconciler::open(dp).unwrap();
    r.apply(&m).unwrap();
    assert!(r.datapath().services.contains_key(&marker));
}

/// The datapath skips the frontend check of SNAT ports on an address without a VIP marker, so the
/// marker must exist whenever a service of its address does: written before the first (the
/// in-memory datapath refuses a service entry without its marker, and a marker removal while a
/// service uses the address), removed after the last; by a full apply and by a partial one.
#[test]
fn a_vip_marker_exists_while_any_service_of_its_address_does() {
    let on = |name: &str, addr: &str, port: u16| {
        let mut s = service(name, port, &[1]);
        s.frontend.addr = addr.parse().unwrap();
        s
    };
    let marker = |a: &str| vip_marker(a.parse().unwrap());
    let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
    r.apply(&compile(&model(vec![on("a", "10.0.0.1", 80)])).unwrap())
        .unwrap();
    assert!(r.datapath().services.contains_key(&marker("10.0.0.1")));
    // A new address through a partial apply, then the old one's last service removed.
    let b = compile(&model(vec![on("b", "10.0.0.2", 80)])).unwrap();
    let gone = compile(&model(vec![on("a", "10.0.0.1", 80)])).unwrap();
    r.apply_services(&b, &gone.keys().copied().collect())
        .unwrap();
    let dp = r.datapath();
    assert!(dp.services.contains_key(&marker("10.0.0.2")));
    assert!(!dp.services.contains_key(&marker("10.0.0.1")));
    assert_eq!(dp.services.len(), 2, "service b and its marker");
}

proptest! {
    /// After any sequence of models, the datapath holds exactly the last one (and the in-memory
    /// datapath refuses writes in an unsafe order, so every sequence also respects the ordering).
    #[test]
    fn the_datapath_converges_to_the_last_model(steps in proptest::collection::vec(
        proptest::collection::vec((0u16..6, proptest::collection::btree_set(1u8..8, 0..5)), 0..6), 1..6)) {
        let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
        let mut last = Model::default();
        for step in steps {
            let svcs: std::collections::BTreeMap<u16, Vec<u8>> =
                step.into_iter().map(|(p, b)| (p, b.into_iter().collect())).collect();
            last = model(svcs.iter().map(|(p, b)| service(&format!("s{p}"), 80 + p, b)).collect());
            r.apply(&compile(&last).unwrap()).unwrap();
        }
        let fresh = {
            let mut f = Reconciler::open(MemoryDatapath::default()).unwrap();
            f.apply(&compile(&last).unwrap()).unwrap();
            f
        };
        let summary = |dp: &MemoryDatapath| {
            let mut by_service: Vec<(ServiceKey, Vec<SocketAddr>, usize)> = dp
                .services
                .iter()
                .filter(|(_, v)| v.id != 0)
                .map(|(k, v)| {
                    let mut bs: Vec<SocketAddr> = dp
                        .backends
                        .values()
                        .filter(|b| b.service_id == v.id)
                        .map(|b| SocketAddr::new(crate::compile::bytes_addr(&b.addr), u16::from_be(b.port)))
                        .collect();
                    bs.sort();
                    (*k, bs, v.table_size as usize)
                })
                .collect();
            by_service.sort();
            by_service
        };
        prop_assert_eq!(summary(r.datapath()), summary(fresh.datapath()));
        prop_assert_eq!(r.datapath().backends.len(), fresh.datapath().backends.len());
    }
}

/// The services of one step of the incremental property: port → (backends, affinity on); even
/// ports on one VIP, odd ones on another, so that VIP markers come and go.
fn step_model(step: &BTreeMap<u16, (BTreeSet<u8>, bool)>) -> Model {
    model(
        step.iter()
            .map(|(p, (b, aff))| {
                let b: Vec<u8> = b.iter().copied().collect();
                let mut s = service(&format!("s{p}"), 80 + p, &b);
                s.frontend.addr = format!("10.0.0.{}", 1 + p % 2).parse().unwrap();
                s.affinity_timeout_s = aff.then_some(30);
                s
            })
            .collect(),
    )
}

#[test]
fn applying_services_writes_only_those_and_keeps_the_others() {
    let many: Vec<Service> = (0..50)
        .map(|i| service(&format!("s{i}"), 1000 + i, &[1, 2]))
        .collect();
    let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
    r.apply(&compile(&model(many.clone())).unwrap()).unwrap();
    let before = r.datapath().writes;
    let changed = compile(&model(vec![service("s7", 1007, &[1, 2, 3])])).unwrap();
    let gone = crate::compile::service_key(&many[8]);
    let ch = r.apply_services(&changed, &BTreeSet::from([gone])).unwrap();
    assert_eq!(
        (
            ch.backends_written,
            ch.tables_written,
            ch.services_removed,
            ch.backends_removed
        ),
        (1, 1, 1, 2)
    );
    assert_eq!(
        r.datapath().writes - before,
        2 + 3,
        "one backend, one table; one service and its two backends"
    );
    let mut want = many;
    want[7] = service("s7", 1007, &[1, 2, 3]);
    want.remove(8);
    let mut fresh = Reconciler::open(MemoryDatapath::default()).unwrap();
    fresh.apply(&compile(&model(want)).unwrap()).unwrap();
    assert_eq!(r.datapath().snapshot(), fresh.datapath().snapshot());
}

proptest! {
    /// Applying only the services that changed (and removing those that left) leaves the datapath
    /// as a fresh full apply of the last model would: entries, tables, affinity and VIP markers.
    #[test]
    fn applying_the_changed_services_equals_a_full_apply(steps in proptest::collection::vec(
        proptest::collection::btree_map(0u16..6, (proptest::collection::btree_set(1u8..8, 0..5), any::<bool>()), 0..6), 1..8)) {
        let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
        let mut have: BTreeMap<ServiceKey, crate::compile::CompiledService> = BTreeMap::new();
        for step in &steps {
            let mut want = compile(&step_model(step)).unwrap();
            let updated: BTreeMap<_, _> = want.iter().filter(|(k, c)| have.get(k) != Some(c))
                .map(|(k, c)| (*k, c.clone())).collect();
            let removed: BTreeSet<_> = have.keys().filter(|k| !want.contains_key(k)).copied().collect();
            r.apply_services(&updated, &removed).unwrap();
            have = std::mem::take(&mut want);
        }
        let mut fresh = Reconciler::open(MemoryDatapath::default()).unwrap();
        fresh.apply(&have).unwrap();
        prop_assert_eq!(r.datapath().snapshot(), fresh.datapath().snapshot());
    }
}

/// A reserved id is the one the next apply writes the service with; nothing is written before,
/// and a reservation the apply does not use is released.
#[test]
fn reserved_ids_are_used_by_the_next_apply_or_released() {
    let compiled = compile(&model(vec![service("a", 80, &[1])])).unwrap();
    let other = compile(&model(vec![service("b", 81, &[2])])).unwrap();
    let (key, other_key) = (
        *compiled.keys().next().unwrap(),
        *other.keys().next().unwrap(),
    );
    let mut rec = Reconciler::open(MemoryDatapath::default()).unwrap();
    let unused = rec.reserve_id(&other_key).unwrap();
    let id = rec.reserve_id(&key).unwrap();
    assert_eq!(rec.reserve_id(&key).unwrap(), id);
    assert_eq!(rec.datapath().writes, 0);
    rec.apply(&compiled).unwrap();
    assert_eq!(rec.service_id(&key), Some(id));
    assert_eq!(rec.datapath().services[&key].id, id);
    // The unused reservation was released: the next new service may take it.
    rec.apply(&other).unwrap();
    assert_eq!(rec.service_id(&other_key), Some(unused));
}

/// A restart adopts the tables (and affinity timeouts) the datapath holds: applying the same
/// model again writes nothing at all, in particular no table.
#[test]
fn a_restart_with_the_same_model_writes_no_table() {
    let mut svcs = vec![service("a", 80, &[1, 2, 3]), service("b", 81, &[4])];
    svcs[1].algorithm = Algorithm::Random;
    svcs[1].affinity_timeout_s = Some(30);
    svcs.push(service("empty", 82, &[]));
    let m = compile(&model(svcs)).unwrap();
    let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
    assert_eq!(r.apply(&m).unwrap().tables_written, 3);
    let mut dp = r.datapath().clone();
    dp.writes = 0;
    let mut r = Reconciler::open(dp).unwrap();
    let ch = r.apply(&m).unwrap();
    assert!(ch.is_empty(), "{ch:?}");
    assert_eq!(r.datapath().writes, 0);
    // A table that changed while the agent was away is rewritten (only that one).
    let mut dp = r.datapath().clone();
    let t = dp.tables.values_mut().find(|t| t.len() > 3).unwrap();
    let last = *t.last().unwrap();
    t[0] = if t[0] == last { t[1] } else { last };
    let mut r = Reconciler::open(dp).unwrap();
    assert_eq!(r.apply(&m).unwrap().tables_written, 1);
}

fn limited(services: u32, backends: u32) -> Reconciler<MemoryDatapath> {
    let dp = MemoryDatapath {
        limits: Limits {
            services,
            backends,
            services_setting: "--max-services",
            backends_setting: "--max-backends",
        },
        ..Default::default()
    };
    Reconciler::open(dp).unwrap()
}

#[test]
fn a_change_beyond_the_limits_is_refused_whole_naming_the_setting() {
    let three: Vec<Service> = (0..3)
        .map(|i| service(&format!("s{i}"), 80 + i, &[1]))
        .collect();
    // Services: 3 fit in 3; a fourth is refused, and nothing of the change is written.
    let mut r = limited(3, 100);
    r.apply(&compile(&model(three.clone())).unwrap()).unwrap();
    let (writes, before) = (r.datapath().writes, r.datapath().services.clone());
    let mut four = three.clone();
    four[0] = service("s0", 80, &[1, 2]);
    four.push(service("s3", 83, &[1]));
    let e = r
        .apply(&compile(&model(four.clone())).unwrap())
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("--max-services (3)") && msg.contains("1 more services"),
        "{msg}"
    );
    assert_eq!(r.datapath().writes, writes, "nothing written");
    assert_eq!(r.datapath().services, before);
    // The same through the per-service path.
    let one: BTreeMap<_, _> = compile(&model(vec![service("s3", 83, &[1])]))
        .unwrap()
        .into_iter()
        .collect();
    let e = r.apply_services(&one, &BTreeSet::new()).unwrap_err();
    assert!(format!("{e:#}").contains("--max-services"), "{e:#}");
    // Removing one makes room (its id is free once the apply that removed it ends).
    let mut swapped = three.clone();
    swapped.remove(2);
    r.apply(&compile(&model(swapped.clone())).unwrap()).unwrap();
    swapped.push(service("s3", 83, &[1]));
    r.apply(&compile(&model(swapped)).unwrap()).unwrap();
    assert_eq!(
        r.datapath().services.values().filter(|v| v.id != 0).count(),
        3
    );
    assert!(r.datapath().services.values().all(|v| v.id <= 3));

    // Backends: 4 ids; a service asking for a fifth backend is refused whole.
    let mut r = limited(10, 4);
    r.apply(&compile(&model(vec![service("a", 80, &[1, 2, 3])])).unwrap())
        .unwrap();
    let writes = r.datapath().writes;
    let e = r
        .apply(
            &compile(&model(vec![
                service("a", 80, &[1, 2, 3]),
                service("b", 81, &[1, 2]),
            ]))
            .unwrap(),
        )
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("2 more backends") && msg.contains("--max-backends (4) leaves room for 1"),
        "{msg}"
    );
    assert_eq!(r.datapath().writes, writes);
    r.apply(
        &compile(&model(vec![
            service("a", 80, &[1, 2, 3]),
            service("b", 81, &[1]),
        ]))
        .unwrap(),
    )
    .unwrap();
    assert!(r.datapath().backends.keys().all(|id| (1..=4).contains(id)));
}

/// The by-id view of the services (`OXI_SERVICE_IDS`, the XDP program's established path) follows
/// every change of a service: a new timeout or mode reaches it with the entry, a removed service
/// leaves no slot, and an id given to another frontend names that frontend.
#[test]
fn services_by_id_follow_timeout_mode_removal_and_id_reuse() {
    let mut r = Reconciler::open(MemoryDatapath::default()).unwrap();
    let a = service("a", 80, &[1, 2]);
    r.apply(&compile(&model(vec![a.clone()])).unwrap()).unwrap();
    let key = |port| ServiceKey {
        addr: addr_bytes("10.0.0.1".parse().unwrap()),
        port: u16::to_be(port),
        proto: abi_lb::PROTO_TCP,
        scope: abi_lb::SCOPE_EXTERNAL,
    };
    let id = r.service_id(&key(80)).unwrap();
    let slot = |r: &Reconciler<MemoryDatapath>, id| r.datapath().by_id.get(&id).copied();
    assert_eq!(slot(&r, id).unwrap().key, key(80));
    assert_eq!(slot(&r, id).unwrap().value.ct_timeout_s, 60);

    let longer = Service {
        conntrack_timeout_s: 600,
        ..a.clone()
    };
    r.apply(&compile(&model(vec![longer.clone()])).unwrap())
        .unwrap();
    assert_eq!(slot(&r, id).unwrap().value.ct_timeout_s, 600);
    let dsr = Service {
        mode: Mode::Dsr,
        ..longer
    };
    r.apply(&compile(&model(vec![dsr])).unwrap()).unwrap();
    assert_eq!(slot(&r, id).unwrap().value.mode, abi_lb::MODE_DSR);

    r.apply(&compile(&model(vec![])).unwrap()).unwrap();
    assert_eq!(slot(&r, id), None, "a removed service leaves no slot");
    assert!(r.datapath().by_id.is_empty());

    // The freed id goes to another frontend: its slot names that frontend.
    r.apply(&compile(&model(vec![service("b", 81, &[3])])).unwrap())
        .unwrap();
    let id2 = r.service_id(&key(81)).unwrap();
    assert_eq!(slot(&r, id2).unwrap().key, key(81));
    r.datapath().check_by_id().unwrap();

    // A restart adopts the services; the view is unchanged.
    let dp = r.datapath().clone();
    let r2 = Reconciler::open(dp).unwrap();
    r2.datapath().check_by_id().unwrap();
}
