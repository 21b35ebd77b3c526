//! The pinned maps behind the reconciler's `Datapath` trait, plus read access for the API.
use super::flows::FlowMaps;
use abi::lb::{
    BPF_F_INNER_MAP, Backend, Counter, CtEntry, FlowKey, LbConfig, ServiceKey, ServiceSlot,
    ServiceValue, SnatEntry, names,
};
use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Array, ArrayOfMaps, HashMap, MapData, PerCpuArray},
};
use lb::reconcile::Datapath;
use std::{
    collections::BTreeSet,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

pub struct KernelMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    /// Service id → frontend and service (`OXI_SERVICE_IDS`), kept in step with `services` by
    /// [`Datapath::set_service`] / [`Datapath::remove_service`]; only the XDP object has it.
    service_ids: Option<Array<MapData, ServiceSlot>>,
    /// Backend id → backend; a slot whose `service_id` is 0 is free.
    backends: Array<MapData, Backend>,
    tables: ArrayOfMaps<MapData, Array<MapData, u32>>,
    /// `OXI_TABLES` again, for the batched swaps aya has no call for.
    tables_fd: OwnedFd,
    /// New selection tables of this pass, filled, waiting for [`Datapath::commit_tables`].
    pending_tables: Vec<(u32, Array<MapData, u32>)>,
    /// The conntrack and SNAT maps.
    flows: FlowMaps,
    config: Array<MapData, LbConfig>,
    stats: PerCpuArray<MapData, Counter>,
    service_stats: PerCpuArray<MapData, Counter>,
    backend_stats: PerCpuArray<MapData, Counter>,
    /// The socket LB's maps, when the socket LB is loaded (session affinity lives there).
    sock: Option<crate::bpf::socklb::SockMaps>,
}

/// Occupancy of the LRU maps read through handles of their own, taken by
/// [`KernelMaps::occupancy_reader`] under the state lock and used after it is released, so that
/// walking a large table never holds up the agent's loop ([`FlowMaps::read`]).
pub type Occupancy = FlowMaps;

impl KernelMaps {
    /// Takes the maps out of a loaded XDP object (they are the pinned ones).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        let tables = ebpf
            .take_map(names::TABLES)
            .with_context(|| format!("map {} missing from the object", names::TABLES))?;
        let tables_fd = match &tables {
            aya::maps::Map::ArrayOfMaps(data) => data.fd().as_fd().try_clone_to_owned()?,
            _ => anyhow::bail!("map {} is not an array of maps", names::TABLES),
        };
        let backends: Array<MapData, Backend> = super::loader::take_map(ebpf, names::BACKENDS)?;
        // A pinned map is reused whatever its type: one pinned by a version whose backends were
        // a hash map would half work.
        let kind = aya::maps::IterableMap::map(&backends).info()?.map_type()?;
        anyhow::ensure!(
            kind == aya::maps::MapType::Array,
            "map {} is pinned by an older version ({kind:?}, now an array): remove the pins first \
             (`oxilium agent --cleanup`)",
            names::BACKENDS
        );
        let service_ids = match ebpf.map(names::SERVICE_IDS) {
            Some(_) => Some(super::loader::take_map(ebpf, names::SERVICE_IDS)?),
            None => None,
        };
        let mut maps = KernelMaps {
            services: super::loader::take_map(ebpf, names::SERVICES)?,
            service_ids,
            backends,
            tables: ArrayOfMaps::try_from(tables)
                .with_context(|| format!("map {}", names::TABLES))?,
            tables_fd,
            pending_tables: Vec::new(),
            flows: FlowMaps::new(
                super::loader::take_map(ebpf, names::CONNTRACK)?,
                super::loader::take_map(ebpf, names::SNAT)?,
            ),
            config: super::loader::take_map(ebpf, names::CONFIG)?,
            stats: super::loader::take_map(ebpf, names::STATS)?,
            service_stats: super::loader::take_map(ebpf, names::SERVICE_STATS)?,
            backend_stats: super::loader::take_map(ebpf, names::BACKEND_STATS)?,
            sock: None,
        };
        maps.sync_service_ids()?;
        Ok(maps)
    }

    /// Makes `OXI_SERVICE_IDS` hold exactly the services of `OXI_SERVICES` (markers aside): after
    /// a restart it holds them already; after an upgrade from a version without it, or when its
    /// pin was removed, it is filled here, before the reconciler adopts the services.
    fn sync_service_ids(&mut self) -> Result<()> {
        let Some(ids) = self.service_ids.as_mut() else {
            return Ok(());
        };
        let mut want = std::collections::BTreeMap::new();
        for r in self.services.iter() {
            let (key, value) = r?;
            if value.id != 0 && value.id < ids.len() {
                want.insert(value.id, ServiceSlot { key, value });
            }
        }
        let n = ids.len();
        let fd = aya::maps::IterableMap::map(&*ids).fd().as_fd();
        let all: Vec<ServiceSlot> = match super::batch::lookup_array(fd, n) {
            Ok(all) => all,
            // Without batch lookups: one syscall per slot.
            Err(_) => ids.iter().collect::<Result<_, _>>()?,
        };
        for (id, have) in (0..n).zip(all).skip(1) {
            match want.remove(&id) {
                Some(slot) if slot != have => ids.set(id, slot, 0)?,
                Some(_) => {}
                None if have.value.id != 0 => ids.set(id, ServiceSlot::default(), 0)?,
                None => {}
            }
        }
        Ok(())
    }

    /// The by-id view of the services (`OXI_SERVICE_IDS`): its used slots, when the object has it.
    pub fn service_slots(&self) -> Result<Vec<(u32, ServiceSlot)>> {
        let Some(ids) = &self.service_ids else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (id, r) in (0..).zip(ids.iter()) {
            let slot = r?;
            if slot.value.id != 0 {
                out.push((id, slot));
            }
        }
        Ok(out)
    }

    /// The socket LB's counters by name, when it is loaded.
    pub fn sock_counters(&self) -> Option<Vec<(&'static str, u64)>> {
        let s = self.sock.as_ref()?;
        Some(
            abi::sock::reason::NAMES
                .iter()
                .enumerate()
                .map(|(i, n)| (*n, s.counter(i as u32)))
                .collect(),
        )
    }

    /// Lets the reconciler program session affinity into the socket LB's maps.
    pub fn with_sock_maps(mut self, sock: crate::bpf::socklb::SockMaps) -> Self {
        self.sock = Some(sock);
        self
    }

    pub fn set_config(&mut self, c: &LbConfig) -> Result<()> {
        self.config.set(0, c, 0).context("writing OXI_CONFIG")
    }

    pub fn config(&self) -> Result<LbConfig> {
        Ok(self.config.get(&0, 0)?)
    }

    /// The selection table of a service, as the kernel holds it (without its size slot).
    pub fn table(&self, service_id: u32) -> Result<Vec<u32>> {
        let inner = self
            .tables
            .get(&service_id, 0)
            .with_context(|| format!("table of service {service_id}"))?;
        let n = inner.len();
        let fd = aya::maps::IterableMap::map(&inner).fd().as_fd();
        let mut slots = match super::batch::lookup_array_u32(fd, n) {
            Ok(slots) => slots,
            // Without batch lookups: one syscall per slot.
            Err(_) => inner.iter().collect::<Result<_, _>>()?,
        };
        slots.remove(0);
        Ok(slots)
    }

    /// Every conntrack entry (one lookup batch per few thousand: see [`FlowMaps`]); none when
    /// the map cannot be read.
    pub fn conntrack(&self) -> Vec<(FlowKey, CtEntry)> {
        self.flows.conntrack().unwrap_or_default()
    }

    /// Second handles on the LRU maps (their fds duplicated), to read their occupancy without the
    /// agent's state: see [`Occupancy`].
    pub fn occupancy_reader(&self) -> Result<Occupancy> {
        self.flows.handles(None)
    }

    /// Second handles on the flow maps, judging expiry with the config's timeouts: what the API
    /// and the reaps walk after the state lock is released.
    pub fn flow_maps(&self) -> Result<FlowMaps> {
        self.flows.handles(self.config().ok().map(|c| c.timeouts))
    }

    /// Elements per lookup batch of the flow walks (0: aya's iterator, one delete per key; see
    /// [`FlowMaps::with_chunk`]), for benches and tests.
    pub fn set_flow_chunk(&mut self, chunk: u32) {
        self.flows.set_chunk(chunk);
    }

    /// Every SNAT entry; none when the map cannot be read.
    pub fn snat_entries(&self) -> Vec<(FlowKey, SnatEntry)> {
        self.flows.snat_entries().unwrap_or_default()
    }

    fn sum(map: &PerCpuArray<MapData, Counter>, index: u32) -> Counter {
        match map.get(&index, 0) {
            Ok(per_cpu) => per_cpu.iter().fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            }),
            Err(_) => Counter::default(),
        }
    }

    pub fn reason_counter(&self, reason: u32) -> Counter {
        Self::sum(&self.stats, reason)
    }

    pub fn service_counter(&self, id: u32) -> Counter {
        Self::sum(&self.service_stats, id)
    }

    pub fn backend_counter(&self, id: u32) -> Counter {
        Self::sum(&self.backend_stats, id)
    }

    /// Zeroes a counter; nothing when the map has no slot for it (a counter map the role does
    /// not use keeps one entry, see `bpf::sizes`).
    fn zero(map: &mut PerCpuArray<MapData, Counter>, index: u32) -> Result<()> {
        if index >= map.len() {
            return Ok(());
        }
        let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let values = aya::maps::PerCpuValues::try_from(vec![Counter::default(); n])?;
        map.set(index, values, 0)?;
        Ok(())
    }
}

/// A new inner selection table holding `backend_ids`: slot 0 the size, then the ids, written
/// with one batch update (one syscall per slot where batches are not supported).
pub fn new_table(backend_ids: &[u32]) -> Result<Array<MapData, u32>> {
    use aya::maps::IterableMap;
    let n = backend_ids.len() as u32;
    let mut inner = Array::<MapData, u32>::create(n + 1, BPF_F_INNER_MAP)
        .context("creating a selection table")?;
    let keys: Vec<u32> = (0..=n).collect();
    let values: Vec<u32> = std::iter::once(n)
        .chain(backend_ids.iter().copied())
        .collect();
    if super::batch::update_u32(inner.map().fd().as_fd(), &keys, &values).is_err() {
        for (k, v) in keys.iter().zip(&values) {
            inner.set(*k, v, 0)?;
        }
    }
    Ok(inner)
}

impl Datapath for KernelMaps {
    fn limits(&self) -> lb::reconcile::Limits {
        let tables = self
            .tables_fd
            .try_clone()
            .ok()
            .and_then(|fd| MapData::from_fd(fd).ok())
            .and_then(|m| m.info().ok())
            .map_or(0, |i| i.max_entries());
        match super::sizes::current() {
            Some(s) => s.limits(tables, self.backends.len()),
            None => {
                let d = lb::reconcile::Limits::default();
                lb::reconcile::Limits {
                    services: d.services.min(tables.saturating_sub(1)),
                    backends: d.backends.min(self.backends.len().saturating_sub(1)),
                    ..d
                }
            }
        }
    }

    /// Lookup batches (one syscall per few thousand entries; aya's iterator without them): read
    /// at every start and by `bpf lb list`.
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        let mut out = Vec::new();
        super::flows::each(&self.services, super::batch::WALK_CHUNK, |k, v| {
            out.push((*k, *v))
        })
        .with_context(|| format!("reading {}", names::SERVICES))?;
        Ok(out)
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>> {
        let n = self.backends.len();
        let fd = aya::maps::IterableMap::map(&self.backends).fd().as_fd();
        let all: Vec<Backend> = match super::batch::lookup_array(fd, n) {
            Ok(all) => all,
            // Without batch lookups: one syscall per slot.
            Err(_) => self.backends.iter().collect::<Result<_, _>>()?,
        };
        Ok((0..).zip(all).filter(|(_, b)| b.service_id != 0).collect())
    }

    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        let fresh = self
            .services
            .get(key, 0)
            .map(|v| v.id != value.id)
            .unwrap_or(true);
        if fresh && value.id != 0 {
            Self::zero(&mut self.service_stats, value.id)?;
        }
        let old = self.services.get(key, 0).ok();
        self.services.insert(key, value, 0)?;
        // The by-id view after the entry: a flow finds its service there only once the frontend
        // has it. The slot of an id this frontend no longer has is cleared.
        if let Some(ids) = self.service_ids.as_mut() {
            if let Some(old) = old.filter(|o| o.id != value.id && o.id != 0 && o.id < ids.len())
                && ids.get(&old.id, 0)?.key == *key
            {
                ids.set(old.id, ServiceSlot::default(), 0)?;
            }
            if value.id != 0 && value.id < ids.len() {
                let slot = ServiceSlot {
                    key: *key,
                    value: *value,
                };
                ids.set(value.id, slot, 0)
                    .with_context(|| format!("{}: service {}", names::SERVICE_IDS, value.id))?;
            }
        }
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        // The by-id view first: no flow takes the service for its frontend's once it is gone.
        if let (Some(ids), Ok(old)) = (self.service_ids.as_mut(), self.services.get(key, 0))
            && old.id != 0
            && old.id < ids.len()
            && ids.get(&old.id, 0)?.key == *key
        {
            ids.set(old.id, ServiceSlot::default(), 0)?;
        }
        Ok(self.services.remove(key)?)
    }

    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        anyhow::ensure!(
            backend.service_id != 0,
            "backend {id}: service_id 0 marks a free slot"
        );
        if self.backends.get(&id, 0)?.service_id == 0 {
            Self::zero(&mut self.backend_stats, id)?;
        }
        Ok(self.backends.set(id, backend, 0)?)
    }

    fn remove_backend(&mut self, id: u32) -> Result<()> {
        Ok(self.backends.set(id, Backend::default(), 0)?)
    }

    fn set_table(
        &mut self,
        service_id: u32,
        old: Option<&[u32]>,
        backend_ids: &[u32],
    ) -> Result<()> {
        // Same size: rewrite only the slots that change, in place. Readers may meet a mix of old
        // and new slots for a moment, and every id in either table names an existing backend
        // (the reconciler removes old backends only afterwards). No map-in-map update, so no
        // wait for an RCU grace period.
        if let Some(old) = old
            && old.len() == backend_ids.len()
            && let Ok(mut inner) = self.tables.get(&service_id, 0)
            && inner.get(&0, 0).ok() == Some(old.len() as u32)
        {
            for (slot, (a, b)) in old.iter().zip(backend_ids).enumerate() {
                if a != b {
                    inner.set(slot as u32 + 1, b, 0)?;
                }
            }
            return Ok(());
        }
        // Otherwise a new inner map, filled, then swapped in with one update at commit_tables:
        // readers see the old table or the new one. Slot 0 holds the size, the backend ids
        // follow (see datapath::lb::table_pick).
        let inner = new_table(backend_ids)?;
        self.pending_tables.retain(|(id, _)| *id != service_id);
        self.pending_tables.push((service_id, inner));
        Ok(())
    }

    /// One `BPF_MAP_UPDATE_BATCH` for every new table of the pass: one RCU grace period in all
    /// instead of one per table (see [`super::batch`]). A kernel without batch support for maps
    /// of maps gets the swaps one by one.
    fn commit_tables(&mut self) -> Result<()> {
        use aya::maps::IterableMap;
        /// The kernel's internal "operation not supported" (not in libc).
        const ENOTSUPP: i32 = 524;
        let pending = std::mem::take(&mut self.pending_tables);
        let keys: Vec<u32> = pending.iter().map(|(id, _)| *id).collect();
        let fds: Vec<u32> = pending
            .iter()
            .map(|(_, inner)| inner.map().fd().as_fd().as_raw_fd() as u32)
            .collect();
        match super::batch::update_u32(self.tables_fd.as_fd(), &keys, &fds) {
            Ok(()) => Ok(()),
            Err((e, done))
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)
                ) =>
            {
                for (id, inner) in &pending[done..] {
                    self.tables
                        .set(*id, inner, 0)
                        .context("swapping a selection table")?;
                }
                Ok(())
            }
            Err((e, done)) => Err(anyhow::Error::new(e).context(format!(
                "swapping {} selection tables ({done} done)",
                keys.len()
            ))),
        }
    }

    fn flush_flows(&mut self, backend_ids: &BTreeSet<u32>) -> Result<usize> {
        let flows = self.flows.pinned_to(backend_ids)?;
        self.flows.delete_entries(&flows)
    }

    type Walker = FlowMaps;

    fn flow_walker(&self) -> Result<FlowMaps> {
        self.flow_maps()
    }

    fn live_flows(&self, backend_ids: &BTreeSet<u32>) -> Result<BTreeSet<u32>> {
        let timeouts = self.config().ok().map(|c| c.timeouts);
        self.flows.live(backend_ids, timeouts.as_ref())
    }

    fn read_table(&self, service_id: u32) -> Result<Option<Vec<u32>>> {
        self.table(service_id).map(Some)
    }

    fn read_affinity(&self, service_id: u32) -> Result<Option<u32>> {
        Ok(match &self.sock {
            Some(sock) => Some(sock.affinity_timeout(service_id)?).filter(|t| *t != 0),
            None => None,
        })
    }

    fn set_affinity(&mut self, service_id: u32, timeout_s: Option<u32>) -> Result<()> {
        let Some(sock) = self.sock.as_mut() else {
            if timeout_s.is_some() {
                anyhow::bail!("session affinity needs the socket LB, which is not loaded");
            }
            return Ok(());
        };
        match timeout_s {
            Some(t) => sock.set_affinity_timeout(service_id, t),
            None => {
                sock.set_affinity_timeout(service_id, 0)?;
                sock.flush_affinity(service_id).map(|_| ())
            }
        }
    }
}
