//! The LB maps behind the reconciler, counting and timing every write.
use super::*;

/// The LB maps, counting what the reconciler writes into them and timing the writes by kind.
///
/// `bulk` is for setting up 10 000 services only, never for a reported change: a selection
/// table's swap into the outer map-in-map waits for an RCU grace period in the kernel (~10 ms
/// here), so the agent's one-by-one path would need minutes. In bulk mode the inner arrays are
/// created and filled as `KernelMaps::set_table` does, and their swaps are issued at the end from
/// many threads at once (concurrent grace-period waits are shared). The kernel state is the same.
pub(crate) struct Counted {
    pub(crate) maps: KernelMaps,
    pub(crate) ops: Ops,
    pub(crate) backends: HashSet<u32>,
    pub(crate) tables_pin: PathBuf,
    pub(crate) bulk: RefCell<Option<Vec<PendingSwap>>>,
}

/// A filled selection table waiting for its swap into the outer map (bulk mode).
pub(crate) type PendingSwap = (u32, Array<MapData, u32>);

/// Map writes (element updates and deletes, syscall for syscall), selection tables created, and
/// the time spent per kind of write.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ops {
    pub(crate) updates: usize,
    pub(crate) deletes: usize,
    pub(crate) inner_maps: usize,
    pub(crate) table_time: Duration,
    pub(crate) backend_time: Duration,
    pub(crate) service_time: Duration,
    pub(crate) flush_time: Duration,
}

impl Ops {
    pub(crate) fn since(&self, before: &Ops) -> Ops {
        Ops {
            updates: self.updates - before.updates,
            deletes: self.deletes - before.deletes,
            inner_maps: self.inner_maps - before.inner_maps,
            table_time: self.table_time - before.table_time,
            backend_time: self.backend_time - before.backend_time,
            service_time: self.service_time - before.service_time,
            flush_time: self.flush_time - before.flush_time,
        }
    }

    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        (self.updates, self.deletes, self.inner_maps)
    }
}

pub(crate) fn timed<T>(acc: &mut Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    *acc += t.elapsed();
    r
}

impl Counted {
    /// Issues the swaps collected in bulk mode, from many threads, and leaves bulk mode.
    pub(crate) fn flush_bulk(&self) {
        let pending = self.bulk.take().unwrap_or_default();
        let threads = 64;
        let chunk = pending.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for part in pending.chunks(chunk) {
                let pin = &self.tables_pin;
                s.spawn(move || {
                    let map = Map::from_map_data(MapData::from_pin(pin).unwrap()).unwrap();
                    let mut outer: ArrayOfMaps<MapData, Array<MapData, u32>> =
                        map.try_into().unwrap();
                    for (id, inner) in part {
                        outer
                            .set(*id, inner, 0)
                            .expect("swapping a selection table");
                    }
                });
            }
        });
    }
}

impl Datapath for Counted {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        self.maps.services()
    }
    fn backends(&self) -> Result<Vec<(u32, AbiBackend)>> {
        self.maps.backends()
    }
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.ops.updates += 1;
        timed(&mut self.ops.service_time, || {
            self.maps.set_service(key, value)
        })
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.ops.deletes += 1;
        timed(&mut self.ops.service_time, || self.maps.remove_service(key))
    }
    fn set_backend(&mut self, id: u32, backend: &AbiBackend) -> Result<()> {
        // A new id also has its per-CPU counters zeroed.
        self.ops.updates += 1 + usize::from(self.backends.insert(id));
        timed(&mut self.ops.backend_time, || {
            self.maps.set_backend(id, backend)
        })
    }
    fn remove_backend(&mut self, id: u32) -> Result<()> {
        self.ops.deletes += 1;
        self.backends.remove(&id);
        timed(&mut self.ops.backend_time, || self.maps.remove_backend(id))
    }
    fn set_table(
        &mut self,
        service_id: u32,
        old: Option<&[u32]>,
        backend_ids: &[u32],
    ) -> Result<()> {
        // Same size: the changed slots are rewritten in place (as KernelMaps does). Otherwise a new
        // inner array (size slot + one slot per backend), then one swap in the outer map.
        if let Some(old) = old.filter(|o| o.len() == backend_ids.len()) {
            self.ops.updates += old.iter().zip(backend_ids).filter(|(a, b)| a != b).count();
        } else {
            self.ops.inner_maps += 1;
            self.ops.updates += backend_ids.len() + 2;
        }
        let Some(pending) = self.bulk.get_mut().as_mut() else {
            return timed(&mut self.ops.table_time, || {
                self.maps.set_table(service_id, old, backend_ids)
            });
        };
        pending.push((service_id, oxilium::bpf::lb_maps::new_table(backend_ids)?));
        Ok(())
    }
    // Read back as the agent's maps do: the reconciler patches a table of the same size in place
    // only when it can read the old one (without these the bench timed a swap on every change).
    fn read_table(&self, service_id: u32) -> Result<Option<Vec<u32>>> {
        self.maps.read_table(service_id)
    }
    fn read_affinity(&self, service_id: u32) -> Result<Option<u32>> {
        self.maps.read_affinity(service_id)
    }
    fn commit_tables(&mut self) -> Result<()> {
        timed(&mut self.ops.table_time, || self.maps.commit_tables())
    }
    type Walker = <KernelMaps as Datapath>::Walker;
    fn flow_walker(&self) -> Result<Self::Walker> {
        self.maps.flow_walker()
    }

    fn flush_flows(&mut self, backend_ids: &BTreeSet<u32>) -> Result<usize> {
        let n = timed(&mut self.ops.flush_time, || {
            self.maps.flush_flows(backend_ids)
        })?;
        self.ops.deletes += n;
        Ok(n)
    }
    fn set_affinity(&mut self, service_id: u32, timeout_s: Option<u32>) -> Result<()> {
        self.ops.updates += 1;
        self.maps.set_affinity(service_id, timeout_s)
    }
}
