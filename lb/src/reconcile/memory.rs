//! An in-memory [`Datapath`]: the reconciler's tests, and `--dry-run` style use.
use super::Datapath;
use abi::lb::{Backend, ServiceKey, ServiceSlot, ServiceValue};
use anyhow::{Result, bail};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

/// An in-memory datapath: the reconciler's tests, and `--dry-run` style use.
#[derive(Default, Debug, Clone)]
pub struct MemoryDatapath {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// Service id → frontend and entry, standing in for `OXI_SERVICE_IDS` (the XDP program's
    /// established path, which finds a flow's service by its conntrack entry's id): kept in step
    /// with `services` as the kernel datapath keeps it; [`MemoryDatapath::check_by_id`] says
    /// whether it is.
    pub by_id: BTreeMap<u32, ServiceSlot>,
    pub backends: BTreeMap<u32, Backend>,
    pub tables: BTreeMap<u32, Vec<u32>>,
    /// Tables written but not yet committed (as the kernel datapath defers whole-table swaps):
    /// invisible to the service-entry checks until [`Datapath::commit_tables`].
    pub pending: BTreeMap<u32, Vec<u32>>,
    /// Flow → backend id, standing in for conntrack.
    pub flows: BTreeMap<u32, u32>,
    /// Service id → affinity timeout.
    pub affinity: BTreeMap<u32, u32>,
    pub writes: usize,
    /// What [`Datapath::limits`] answers (default: the compiled map sizes).
    pub limits: super::Limits,
}

impl Datapath for MemoryDatapath {
    fn limits(&self) -> super::Limits {
        self.limits
    }
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn backends(&self) -> Result<Vec<(u32, Backend)>> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        // A frontend must never point at a table that references missing backends.
        if value.id != 0 && value.table_size > 0 {
            let t = self.tables.get(&value.id).map(Vec::as_slice).unwrap_or(&[]);
            if t.len() != value.table_size as usize
                || t.iter().any(|b| !self.backends.contains_key(b))
            {
                bail!("service {} written before its table or backends", value.id);
            }
        }
        if value.flags & abi::sock::SVC_FLAG_AFFINITY != 0 && !self.affinity.contains_key(&value.id)
        {
            bail!(
                "service {} has affinity on before its timeout is written",
                value.id
            );
        }
        // The datapath takes an address without a marker for one without frontends (its SNAT
        // port search skips the frontend check there).
        if !is_marker(key) && !self.services.contains_key(&marker_of(key)) {
            bail!(
                "service {} written before its address's VIP marker",
                value.id
            );
        }
        self.writes += 1;
        // As the kernel datapath: the by-id view after the entry; an id the frontend no longer
        // has is cleared.
        if let Some(old) = self.services.insert(*key, *value)
            && old.id != value.id
            && self.by_id.get(&old.id).is_some_and(|s| s.key == *key)
        {
            self.by_id.remove(&old.id);
        }
        if value.id != 0 {
            let slot = ServiceSlot {
                key: *key,
                value: *value,
            };
            self.by_id.insert(value.id, slot);
        }
        self.check_by_id()
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        if is_marker(key)
            && self
                .services
                .keys()
                .any(|k| !is_marker(k) && marker_of(k) == *key)
        {
            bail!("VIP marker removed while a service uses its address");
        }
        self.writes += 1;
        if let Some(old) = self.services.remove(key)
            && self.by_id.get(&old.id).is_some_and(|s| s.key == *key)
        {
            self.by_id.remove(&old.id);
        }
        self.check_by_id()
    }
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.writes += 1;
        self.backends.insert(id, *backend);
        Ok(())
    }
    fn remove_backend(&mut self, id: u32) -> Result<()> {
        self.writes += 1;
        self.backends.remove(&id);
        Ok(())
    }
    fn set_table(
        &mut self,
        service_id: u32,
        _old: Option<&[u32]>,
        backend_ids: &[u32],
    ) -> Result<()> {
        if backend_ids.iter().any(|b| !self.backends.contains_key(b)) {
            bail!("table of service {service_id} written before its backends");
        }
        self.writes += 1;
        self.pending.insert(service_id, backend_ids.to_vec());
        Ok(())
    }
    fn commit_tables(&mut self) -> Result<()> {
        self.tables.append(&mut self.pending);
        Ok(())
    }
    fn flush_flows(&mut self, backend_ids: &BTreeSet<u32>) -> Result<usize> {
        let before = self.flows.len();
        self.flows.retain(|_, b| !backend_ids.contains(b));
        Ok(before - self.flows.len())
    }
    type Walker = FlowSnapshot;
    /// A copy of `flows`: a test may change them between the walk and the commit of a reap.
    fn flow_walker(&self) -> Result<FlowSnapshot> {
        Ok(FlowSnapshot(self.flows.clone()))
    }

    fn set_affinity(&mut self, service_id: u32, timeout_s: Option<u32>) -> Result<()> {
        self.writes += 1;
        match timeout_s {
            Some(t) => self.affinity.insert(service_id, t),
            None => self.affinity.remove(&service_id),
        };
        Ok(())
    }
    fn read_table(&self, service_id: u32) -> Result<Option<Vec<u32>>> {
        Ok(self.tables.get(&service_id).cloned())
    }
    fn read_affinity(&self, service_id: u32) -> Result<Option<u32>> {
        Ok(self.affinity.get(&service_id).copied())
    }
}

/// The flows of a [`MemoryDatapath`] when its walker was taken. Every flow of the fake is live
/// (a test ends one by removing it from `flows`), so no walk lists an ended one.
#[derive(Debug, Clone)]
pub struct FlowSnapshot(BTreeMap<u32, u32>);

impl super::FlowWalk for FlowSnapshot {
    type Flow = u32;
    fn walk(&self, backend_ids: &BTreeSet<u32>) -> Result<super::Walked<u32>> {
        Ok(super::Walked {
            live: self
                .0
                .values()
                .filter(|b| backend_ids.contains(b))
                .copied()
                .collect(),
            ended: Vec::new(),
        })
    }
    /// Never called with a flow: no walk lists one.
    fn delete(&mut self, flows: Vec<u32>) -> Result<usize> {
        Ok(flows.len())
    }
}

/// True for a VIP marker entry (port 0, protocol 0: crate::compile::vip_marker).
fn is_marker(k: &ServiceKey) -> bool {
    k.port == 0 && k.proto == 0
}

/// The VIP marker of a service's address.
fn marker_of(k: &ServiceKey) -> ServiceKey {
    crate::compile::vip_marker(crate::compile::bytes_addr(&k.addr))
}

/// What a datapath holds, named by service key and backend address instead of ids: two
/// reconcilers that reached the same services by different paths hold equal snapshots.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Service (or VIP marker) → its entry with the id zeroed, the backends of its selection
    /// table slot by slot, and its affinity timeout.
    pub services: BTreeMap<ServiceKey, (ServiceValue, Vec<SocketAddr>, Option<u32>)>,
    /// Every backend entry: the key of its service (the default key when none has its id), its
    /// address and state.
    pub backends: Vec<(ServiceKey, SocketAddr, u8)>,
}

impl MemoryDatapath {
    /// The by-id view holds exactly the services (markers aside), each under its own id: what an
    /// established flow finds by its service id is what the frontend lookup finds.
    pub fn check_by_id(&self) -> Result<()> {
        let want: BTreeMap<u32, ServiceSlot> = self
            .services
            .iter()
            .filter(|(_, v)| v.id != 0)
            .map(|(k, v)| (v.id, ServiceSlot { key: *k, value: *v }))
            .collect();
        if want.len() != self.services.values().filter(|v| v.id != 0).count() {
            bail!("two frontends share a service id");
        }
        if want != self.by_id {
            bail!("the services by id differ from the services by frontend");
        }
        Ok(())
    }

    pub fn snapshot(&self) -> Snapshot {
        let key_of: BTreeMap<u32, ServiceKey> = self
            .services
            .iter()
            .filter(|(_, v)| v.id != 0)
            .map(|(k, v)| (v.id, *k))
            .collect();
        let addr = |b: &Backend| {
            SocketAddr::new(crate::compile::bytes_addr(&b.addr), u16::from_be(b.port))
        };
        let services = self
            .services
            .iter()
            .map(|(k, v)| {
                let table = match self.tables.get(&v.id) {
                    Some(t) if v.table_size > 0 => {
                        t.iter().map(|b| addr(&self.backends[b])).collect()
                    }
                    _ => Vec::new(),
                };
                let value = ServiceValue { id: 0, ..*v };
                let affinity = self.affinity.get(&v.id).copied().filter(|_| v.id != 0);
                (*k, (value, table, affinity))
            })
            .collect();
        let mut backends: Vec<_> = self
            .backends
            .values()
            .map(|b| {
                let k = key_of.get(&b.service_id).copied().unwrap_or_default();
                (k, addr(b), b.state)
            })
            .collect();
        backends.sort();
        Snapshot { services, backends }
    }
}
