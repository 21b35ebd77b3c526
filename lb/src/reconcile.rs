//! Writes the compiled tables into the datapath, touching only what differs from what it holds,
//! in an order that never leaves a frontend pointing at nothing: backends → selection table →
//! service entry → removal of old backends (and of the flows pinned to them).
//!
//! A backend that leaves a TCP service while live flows still use it **drains**: its entry stays
//! (state `BACKEND_DRAINING`, in no table, so no new flow and no affinity picks it) and its
//! established connections keep reaching it until they close or expire, as kube-proxy's conntrack
//! does; [`Reconciler::reap`] removes it (and frees its id) once no live flow is left. A backend
//! that leaves any other service (UDP: no end of a flow to wait for) is removed with its flows at
//! once, so its clients move to the backends left.
use crate::compile::{CompiledService, addr_bytes, vip_marker};
use abi::lb::{self as abi_lb, Addr, Backend, FAMILY_V4, FAMILY_V6, ServiceKey, ServiceValue};
use anyhow::Result;
use backends::Backends;
use digest::TableDigest;
use ids::Ids;
use serde::Serialize;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

/// The operations the reconciler needs from the datapath (the pinned maps, or a fake in tests).
pub trait Datapath {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>>;
    fn backends(&self) -> Result<Vec<(u32, Backend)>>;
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()>;
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()>;
    fn remove_backend(&mut self, id: u32) -> Result<()>;
    /// Makes a service's selection table `backend_ids`. `old` is the table the datapath holds (when
    /// known): a table of the same size may be updated slot by slot (every id in either table
    /// names an existing backend meanwhile); otherwise the whole table is replaced in one step.
    fn set_table(
        &mut self,
        service_id: u32,
        old: Option<&[u32]>,
        backend_ids: &[u32],
    ) -> Result<()>;
    /// Makes every table [`set_table`](Self::set_table) queued in this pass visible. A datapath may
    /// defer replacing whole tables until here to swap them in one batch; the reconciler calls it
    /// after the pass's tables and before any of its service entries.
    fn commit_tables(&mut self) -> Result<()> {
        Ok(())
    }
    /// Deletes the conntrack and SNAT entries of flows pinned to these backends; returns how many.
    fn flush_flows(&mut self, backend_ids: &BTreeSet<u32>) -> Result<usize>;
    /// What walks the flow maps through handles of its own (see [`FlowWalk`]).
    type Walker: FlowWalk;
    /// A walker of the flow maps that needs nothing of `self` afterwards: a reap takes one under
    /// the agent's lock and walks with it after the lock is released (see [`Reconciler::reap_plan`]).
    fn flow_walker(&self) -> Result<Self::Walker>;
    /// The backends among `backend_ids` that live flows still use (a flow neither closed nor
    /// expired in its state): a draining backend stays while it is listed.
    fn live_flows(&self, backend_ids: &BTreeSet<u32>) -> Result<BTreeSet<u32>> {
        Ok(self.flow_walker()?.walk(backend_ids)?.live)
    }
    /// ClientIP affinity of a service (socket LB): `Some(timeout)` is written before the service
    /// entry that switches the flag on; `None` forgets the service's affinity entries.
    fn set_affinity(&mut self, service_id: u32, timeout_s: Option<u32>) -> Result<()>;
    /// The selection table the datapath holds for a service, read when a restart adopts it, so
    /// that an unchanged table is not written again. None (the default): unknown, written by the
    /// next apply.
    fn read_table(&self, _service_id: u32) -> Result<Option<Vec<u32>>> {
        Ok(None)
    }
    /// The affinity timeout the datapath holds for a service (Some only when on), read on
    /// adoption like [`read_table`](Self::read_table).
    fn read_affinity(&self, _service_id: u32) -> Result<Option<u32>> {
        Ok(None)
    }
    /// How many services and backends the maps hold (ids are given out below these).
    fn limits(&self) -> Limits {
        Limits::default()
    }
}

/// Reads the flow maps without the datapath (handles of its own, sendable to another thread).
pub trait FlowWalk: Send + 'static {
    /// One flow's entries (what [`FlowWalk::delete`] deletes).
    type Flow: Send + 'static;
    /// One walk: which of `backend_ids` have a live flow, and the ended (closed or expired)
    /// flows of the others.
    fn walk(&self, backend_ids: &BTreeSet<u32>) -> Result<Walked<Self::Flow>>;
    /// Deletes flows a walk listed as ended (those already gone are skipped); returns how many
    /// conntrack entries went.
    fn delete(&mut self, flows: Vec<Self::Flow>) -> Result<usize>;
}

/// What one walk of the flow maps found for some backends.
#[derive(Debug)]
pub struct Walked<F> {
    /// Backends with a live flow.
    pub live: BTreeSet<u32>,
    /// Ended flows of the backends without a live flow, with their backend id.
    pub ended: Vec<(u32, F)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Realised {
    id: u32,
    value: ServiceValue,
    backends: Backends,
    /// Backends that left the service and drain (see the module doc), by address.
    draining: Backends,
    /// None: unknown (a restart that could not read it) and rewritten on the next apply.
    table: Option<TableDigest>,
    /// None: off, or unknown (a restart that could not read it).
    affinity: Option<u32>,
}

/// What one apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub services_written: usize,
    pub services_removed: usize,
    pub backends_written: usize,
    pub backends_removed: usize,
    pub tables_written: usize,
    pub flows_flushed: usize,
    /// Backends that left a TCP service with live flows: kept, draining.
    pub backends_draining: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

pub struct Reconciler<D> {
    dp: D,
    services: BTreeMap<ServiceKey, Realised>,
    markers: BTreeSet<ServiceKey>,
    /// VIP address → how many programmed services use it (its marker exists while > 0).
    vip_users: BTreeMap<Addr, usize>,
    service_ids: Ids,
    backend_ids: Ids,
    limits: Limits,
    /// Ids given out by [`Reconciler::reserve_id`] to services not yet written.
    reserved: BTreeMap<ServiceKey, u32>,
    /// Draining backend id → its service, address and generation (the entry is in that
    /// service's `draining`). The generation tells a reap that the backend drained all along.
    draining: BTreeMap<u32, (ServiceKey, SocketAddr, u64)>,
    /// Backends a reap removed whose ended flows are being deleted: their ids are freed by
    /// [`Reconciler::reap_free`] (see `reap`).
    unfreed: BTreeSet<u32>,
}

/// What one apply collects before its last step (markers, removals, flush, freed ids).
#[derive(Default)]
struct Pass {
    ch: Changes,
    /// Backends that started draining.
    drained: BTreeSet<u32>,
    flushed: BTreeSet<u32>,
    freed_backends: Vec<u32>,
    freed_services: Vec<u32>,
    /// VIP addresses whose marker may have to be written or removed.
    vips: BTreeSet<Addr>,
}

impl<D: Datapath> Reconciler<D> {
    /// Adopts what the datapath already holds (an agent restart keeps ids, so flows keep going):
    /// service entries, backends, and the selection tables and affinity timeouts it can read, so
    /// that a restart with an unchanged model writes nothing (no table swapped, no RCU wait).
    pub fn open(dp: D) -> Result<Self> {
        let mut services = BTreeMap::new();
        let mut markers = BTreeSet::new();
        let mut vip_users: BTreeMap<Addr, usize> = BTreeMap::new();
        let limits = dp.limits();
        let mut service_ids = Ids::new(limits.services + 1);
        let mut backend_ids = Ids::new(limits.backends + 1);
        let mut by_id = BTreeMap::new();
        for (k, v) in dp.services()? {
            if k.port == 0 && k.proto == 0 {
                markers.insert(k);
                continue;
            }
            service_ids.take(v.id);
            by_id.insert(v.id, k);
            *vip_users.entry(k.addr).or_default() += 1;
            // A table or timeout that cannot be read stays unknown and is rewritten.
            let table = if v.table_size > 0 {
                dp.read_table(v.id)
                    .ok()
                    .flatten()
                    .map(|t| TableDigest::of(&t))
            } else {
                Some(TableDigest::of(&[]))
            };
            services.insert(
                k,
                Realised {
                    id: v.id,
                    value: v,
                    table,
                    affinity: dp.read_affinity(v.id).ok().flatten(),
                    ..Default::default()
                },
            );
        }
        let mut orphans = Vec::new();
        let mut draining = BTreeMap::new();
        for (id, b) in dp.backends()? {
            match by_id
                .get(&b.service_id)
                .and_then(|k| Some((*k, services.get_mut(k)?)))
            {
                Some((key, s)) => {
                    backend_ids.take(id);
                    let addr =
                        SocketAddr::new(crate::compile::bytes_addr(&b.addr), u16::from_be(b.port));
                    if b.state == abi_lb::BACKEND_DRAINING {
                        s.draining.insert((id, b));
                        draining.insert(id, (key, addr, reap::generation()));
                    } else {
                        s.backends.insert((id, b));
                    }
                }
                None => orphans.push(id),
            }
        }
        let mut r = Reconciler {
            dp,
            services,
            markers,
            vip_users,
            service_ids,
            backend_ids,
            limits,
            reserved: BTreeMap::new(),
            unfreed: BTreeSet::new(),
            draining,
        };
        for id in orphans {
            r.dp.remove_backend(id)?;
        }
        Ok(r)
    }

    pub fn datapath(&self) -> &D {
        &self.dp
    }

    /// The datapath, for settings outside the model (e.g. the kernel's global config).
    pub fn datapath_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    /// Service id of a frontend, if it is programmed.
    pub fn service_id(&self, key: &ServiceKey) -> Option<u32> {
        self.services.get(key).map(|s| s.id)
    }

    /// The id `key` has, or will have when the next apply writes it (reserved now, nothing is
    /// written): what is keyed by the service id elsewhere (e.g. its source ranges) can be
    /// written before the service entry makes the frontend live. A reservation the next apply
    /// does not use is released by it.
    pub fn reserve_id(&mut self, key: &ServiceKey) -> Result<u32> {
        if let Some(id) = self
            .service_id(key)
            .or_else(|| self.reserved.get(key).copied())
        {
            return Ok(id);
        }
        let id = self.service_ids.alloc()?;
        self.reserved.insert(*key, id);
        Ok(id)
    }

    /// Backend ids of a programmed service, by address.
    pub fn backend_ids(&self, key: &ServiceKey) -> BTreeMap<SocketAddr, u32> {
        self.services
            .get(key)
            .map(|s| s.backends.iter().map(|(a, (id, _))| (a, *id)).collect())
            .unwrap_or_default()
    }

    /// Makes the datapath hold exactly `desired`. Cost: a walk over every service.
    pub fn apply(&mut self, desired: &BTreeMap<ServiceKey, CompiledService>) -> Result<Changes> {
        let mut pass = Pass::default();
        // Every marker is checked: those of every wanted VIP (one may be missing after a
        // restart) and those adopted from the datapath (their services may be gone).
        pass.vips.extend(desired.keys().map(|k| k.addr));
        pass.vips.extend(self.markers.iter().map(|m| m.addr));
        self.apply_all(desired, &mut pass)?;
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        self.finish(&gone, pass)
    }

    /// Makes the datapath hold `updated` and no longer hold `removed`, leaving every other
    /// service as it is: the same writes, in the same order, as [`apply`](Self::apply) of the
    /// whole model with that change, at a cost proportional to the services named.
    pub fn apply_services(
        &mut self,
        updated: &BTreeMap<ServiceKey, CompiledService>,
        removed: &BTreeSet<ServiceKey>,
    ) -> Result<Changes> {
        let mut pass = Pass::default();
        self.apply_all(updated, &mut pass)?;
        let gone: Vec<ServiceKey> = removed
            .iter()
            .filter(|k| !updated.contains_key(k) && self.services.contains_key(k))
            .copied()
            .collect();
        self.finish(&gone, pass)
    }

    /// The markers of the addresses in `pass.vips` that programmed (or about to be written)
    /// services use and that have none yet. Written before the services of a new address: the
    /// datapath skips the frontend check of SNAT ports on an address without a marker
    /// (datapath::lb::snat_port), so no frontend may exist on an address before its marker.
    fn add_markers(&mut self, pass: &Pass) -> Result<()> {
        for addr in &pass.vips {
            let m = vip_marker(crate::compile::bytes_addr(addr));
            if used(&self.vip_users, addr) && !self.markers.contains(&m) {
                self.dp.set_service(&m, &ServiceValue::default())?;
                self.markers.insert(m);
            }
        }
        Ok(())
    }

    /// The second half of an apply: the services `gone`, then markers no longer used (after
    /// their last service), then the flows of removed backends; ids are freed last.
    fn finish(&mut self, gone: &[ServiceKey], mut pass: Pass) -> Result<Changes> {
        for key in gone {
            let s = self.services.remove(key).expect("listed by the caller");
            self.dp.remove_service(key)?;
            if let Some(n) = self.vip_users.get_mut(&key.addr) {
                *n -= 1;
                if *n == 0 {
                    self.vip_users.remove(&key.addr);
                }
            }
            pass.vips.insert(key.addr);
            if s.affinity.is_some() {
                self.dp.set_affinity(s.id, None)?;
            }
            pass.ch.services_removed += 1;
            for (id, _) in s.backends.values().chain(s.draining.values()) {
                self.dp.remove_backend(*id)?;
                pass.ch.backends_removed += 1;
                pass.flushed.insert(*id);
                pass.freed_backends.push(*id);
                self.draining.remove(id);
            }
            pass.freed_services.push(s.id);
        }
        for addr in &pass.vips {
            let m = vip_marker(crate::compile::bytes_addr(addr));
            if !used(&self.vip_users, addr) && self.markers.remove(&m) {
                self.dp.remove_service(&m)?;
            }
        }
        // Backends that started draining in this apply without a live flow go at once.
        if !pass.drained.is_empty() {
            let drained = std::mem::take(&mut pass.drained);
            self.reap_ids(&drained, &mut pass)?;
        }
        if !pass.flushed.is_empty() {
            pass.ch.flows_flushed = self.dp.flush_flows(&pass.flushed)?;
        }
        // Ids are reused only after the flows that named them are gone.
        for id in pass.freed_backends {
            self.backend_ids.free(id);
        }
        for id in pass.freed_services {
            self.service_ids.free(id);
        }
        for (_, id) in std::mem::take(&mut self.reserved) {
            self.service_ids.free(id);
        }
        Ok(pass.ch)
    }

    /// Every service's backends and table first, the tables committed together (one batch: see
    /// [`Datapath::commit_tables`]), then every service entry and the backends that left.
    fn apply_all(
        &mut self,
        services: &BTreeMap<ServiceKey, CompiledService>,
        pass: &mut Pass,
    ) -> Result<()> {
        // Room for every new id first: a change too big for the maps writes nothing.
        let (new_services, new_backends) = limits::needed(&self.services, &self.reserved, services);
        let l = &self.limits;
        let room = self.service_ids.room();
        limits::check(
            "services",
            new_services,
            room,
            l.services,
            l.services_setting,
        )?;
        let room = self.backend_ids.room();
        limits::check(
            "backends",
            new_backends,
            room,
            l.backends,
            l.backends_setting,
        )?;
        for (key, cs) in services {
            self.apply_backends(key, cs, pass)?;
        }
        self.dp.commit_tables()?;
        self.add_markers(pass)?;
        for (key, cs) in services {
            self.apply_entry(key, cs, pass)?;
        }
        Ok(())
    }

    /// Steps 1 and 2 of a service: its backends, then its selection table.
    fn apply_backends(
        &mut self,
        key: &ServiceKey,
        cs: &CompiledService,
        pass: &mut Pass,
    ) -> Result<()> {
        if !self.services.contains_key(key) {
            let id = match self.reserved.remove(key) {
                Some(id) => id,
                None => self.service_ids.alloc()?,
            };
            self.services.insert(
                *key,
                Realised {
                    id,
                    ..Default::default()
                },
            );
            *self.vip_users.entry(key.addr).or_default() += 1;
            pass.vips.insert(key.addr);
        }
        let ch = &mut pass.ch;
        let real = self.services.get_mut(key).expect("inserted above");
        let sid = real.id;

        // 1. Backends.
        let mut ids = Vec::with_capacity(cs.backends.len());
        for (addr, state) in &cs.backends {
            let want = Backend {
                addr: addr_bytes(addr.ip()),
                port: addr.port().to_be(),
                family: if addr.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 },
                state: *state,
                service_id: sid,
            };
            let id = match real.backends.get(addr) {
                Some((id, have)) if *have == want => *id,
                Some((id, _)) => {
                    self.dp.set_backend(*id, &want)?;
                    ch.backends_written += 1;
                    *id
                }
                // Back while it drains: the same entry serves again (its flows never moved).
                None if real.draining.contains_key(addr) => {
                    let (id, _) = real.draining.remove(addr).expect("checked");
                    self.draining.remove(&id);
                    self.dp.set_backend(id, &want)?;
                    ch.backends_written += 1;
                    id
                }
                None => {
                    let id = self.backend_ids.alloc()?;
                    self.dp.set_backend(id, &want)?;
                    ch.backends_written += 1;
                    id
                }
            };
            real.backends.insert((id, want));
            ids.push(id);
        }
        // 2. Selection table.
        let table: Vec<u32> = cs.table.iter().map(|&i| ids[i as usize]).collect();
        let digest = TableDigest::of(&table);
        if real.table != Some(digest) {
            if !table.is_empty() {
                // A table of the same size is patched in place: the old one is read back.
                let old = match real.table {
                    Some(d) if d.len == digest.len => self.dp.read_table(sid).ok().flatten(),
                    _ => None,
                };
                self.dp.set_table(sid, old.as_deref(), &table)?;
            }
            ch.tables_written += 1;
            real.table = Some(digest);
        }
        Ok(())
    }

    /// Steps 3 and 4 of a service (its table committed): the affinity timeout and the service
    /// entry, then the backends that left it.
    fn apply_entry(
        &mut self,
        key: &ServiceKey,
        cs: &CompiledService,
        pass: &mut Pass,
    ) -> Result<()> {
        let ch = &mut pass.ch;
        let real = self.services.get_mut(key).expect("added by apply_backends");
        let sid = real.id;
        let table_size = real.table.map_or(0, |t| t.len);
        // 3. Affinity timeout, then the service entry (whose flag turns affinity on).
        if real.affinity != cs.affinity_timeout_s {
            self.dp.set_affinity(sid, cs.affinity_timeout_s)?;
            real.affinity = cs.affinity_timeout_s;
        }
        let value = ServiceValue {
            id: sid,
            table_size,
            algorithm: cs.algorithm,
            mode: cs.mode,
            flags: cs.flags,
            ct_timeout_s: cs.ct_timeout_s,
        };
        if real.value != value {
            self.dp.set_service(key, &value)?;
            ch.services_written += 1;
            real.value = value;
        }
        // 4. Backends that left the service.
        let keep: BTreeSet<SocketAddr> = cs.backends.iter().map(|(a, _)| *a).collect();
        let gone: Vec<SocketAddr> = real
            .backends
            .addresses()
            .filter(|a| !keep.contains(a))
            .collect();
        for addr in gone {
            let (id, b) = real.backends.remove(&addr).expect("listed above");
            if drains(key.proto) {
                // Kept for its flows (checked at the end of the apply: one without any is
                // removed there); out of every table already.
                let b = Backend {
                    state: abi_lb::BACKEND_DRAINING,
                    ..b
                };
                self.dp.set_backend(id, &b)?;
                ch.backends_draining += 1;
                real.draining.insert((id, b));
                self.draining.insert(id, (*key, addr, reap::generation()));
                pass.drained.insert(id);
                continue;
            }
            self.dp.remove_backend(id)?;
            ch.backends_removed += 1;
            pass.flushed.insert(id);
            pass.freed_backends.push(id);
        }
        Ok(())
    }
}

/// True when a programmed service uses `a` (its marker exists).
fn used(users: &BTreeMap<Addr, usize>, a: &Addr) -> bool {
    users.get(a).is_some_and(|n| *n > 0)
}

/// Whether a backend leaving a service of this protocol drains (TCP: connections end) rather
/// than being removed with its flows at once.
fn drains(proto: u8) -> bool {
    proto == abi_lb::PROTO_TCP
}

/// Family of an address in a `Backend` entry, for display.
pub fn family_name(family: u8) -> &'static str {
    if family == abi_lb::FAMILY_V6 {
        "ipv6"
    } else {
        "ipv4"
    }
}

mod backends;
mod digest;
mod ids;
mod limits;
mod memory;
mod reap;
pub use limits::Limits;
pub use memory::{MemoryDatapath, Snapshot};
pub use reap::{ReapDone, ReapFlush, ReapPlan, ReapWalk};

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
