//! The flow maps (conntrack and SNAT) read and cleaned in bulk: lookup batches of
//! [`WALK_CHUNK`](super::batch::WALK_CHUNK) elements per syscall (`BPF_MAP_LOOKUP_BATCH`,
//! Linux ≥ 5.6) instead of aya's iterator (two syscalls per element), deletes in one
//! `BPF_MAP_DELETE_BATCH`. A kernel without batch operations gets the iterator and one delete per
//! key. A [`FlowMaps`] has handles of its own (the maps' fds duplicated): the agent takes one
//! under its state lock and walks after releasing it (reaps of draining backends, `ct` listings,
//! occupancy counts), so the walk of a large table never holds up the API or an apply.
use super::batch;
use abi::{
    ct::Timeouts,
    lb::{CtEntry, FlowKey, SnatEntry},
};
use anyhow::{Context, Result};
use aya::maps::{HashMap, IterableMap, MapData};
use lb::reconcile::{FlowWalk, Walked};
use std::{collections::BTreeSet, os::fd::AsFd};

/// True for a flow neither closed nor expired in its state.
fn is_live(timeouts: Option<&Timeouts>, now: u64, k: &FlowKey, v: &CtEntry) -> bool {
    let idle = now.saturating_sub(v.last_seen_ns);
    abi::ct::state(v.flags) != abi::ct::CLOSED
        && !abi::ct::expired(v.flags, k.proto, idle, timeouts, v.svc_timeout_s)
}

/// One entry of a flow map, as a walk lists it for deletion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Conntrack(FlowKey),
    Snat(FlowKey),
}

/// Handles on the conntrack and SNAT maps, with the conntrack timeouts of the config when taken
/// (a flow's expiry is judged with them).
pub struct FlowMaps {
    conntrack: HashMap<MapData, FlowKey, CtEntry>,
    snat: HashMap<MapData, FlowKey, SnatEntry>,
    timeouts: Option<Timeouts>,
    /// Elements per lookup batch.
    chunk: u32,
}

/// A new handle on an LRU hash map: its fd duplicated.
fn dup_lru<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &str,
) -> Result<HashMap<MapData, K, V>> {
    let fd = IterableMap::map(map)
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .with_context(|| format!("duplicating the {name} map's fd"))?;
    let data = MapData::from_fd(fd).with_context(|| format!("opening the {name} map"))?;
    HashMap::try_from(aya::maps::Map::LruHashMap(data))
        .with_context(|| format!("opening the {name} map"))
}

/// Calls `f` on every element of `map`: lookup batches of `chunk` elements, or aya's iterator
/// (chunk 0, or a kernel without batches).
pub(crate) fn each<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: &HashMap<MapData, K, V>,
    chunk: u32,
    mut f: impl FnMut(&K, &V),
) -> Result<()> {
    let fd = IterableMap::map(map).fd().as_fd();
    let batched = match chunk {
        0 => None,
        _ => Some(batch::walk_hash(fd, chunk, &mut f)),
    };
    match batched {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) if !batch::unsupported(&e) => Err(e.into()),
        _ => {
            for (k, v) in map.iter().filter_map(|r| r.ok()) {
                f(&k, &v);
            }
            Ok(())
        }
    }
}

/// Deletes `keys` from `map` (one batch, or one syscall per key with `one_by_one` or a kernel
/// without batches); returns how many went.
fn delete<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    keys: &[K],
    one_by_one: bool,
) -> Result<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    if one_by_one {
        return Ok(keys.iter().filter(|k| map.remove(k).is_ok()).count());
    }
    match batch::delete_keys(IterableMap::map(map).fd().as_fd(), keys) {
        Ok(n) => Ok(n),
        Err(e) if batch::unsupported(&e) => {
            Ok(keys.iter().filter(|k| map.remove(k).is_ok()).count())
        }
        Err(e) => Err(e.into()),
    }
}

impl FlowMaps {
    pub fn new(
        conntrack: HashMap<MapData, FlowKey, CtEntry>,
        snat: HashMap<MapData, FlowKey, SnatEntry>,
    ) -> Self {
        FlowMaps {
            conntrack,
            snat,
            timeouts: None,
            chunk: batch::WALK_CHUNK,
        }
    }

    /// Second handles on the same maps (their fds duplicated), judging expiry with `timeouts`.
    pub fn handles(&self, timeouts: Option<Timeouts>) -> Result<FlowMaps> {
        Ok(FlowMaps {
            conntrack: dup_lru(&self.conntrack, "conntrack")?,
            snat: dup_lru(&self.snat, "snat")?,
            timeouts,
            chunk: self.chunk,
        })
    }

    /// The same handles walking `chunk` elements per lookup batch (tests and benches); 0: aya's
    /// iterator and one delete per key, as before lookup batches were used.
    pub fn with_chunk(mut self, chunk: u32) -> Self {
        self.set_chunk(chunk);
        self
    }

    /// See [`with_chunk`](Self::with_chunk).
    pub fn set_chunk(&mut self, chunk: u32) {
        self.chunk = chunk;
    }

    /// Writes conntrack entries in one update batch (tests and benches fill the map this way).
    pub fn fill_conntrack(&self, entries: &[(FlowKey, CtEntry)]) -> Result<()> {
        let (k, v): (Vec<FlowKey>, Vec<CtEntry>) = entries.iter().copied().unzip();
        let fd = IterableMap::map(&self.conntrack).fd().as_fd();
        batch::update(fd, &k, &v).context("writing conntrack entries")
    }

    /// Writes SNAT entries in one update batch (tests and benches).
    pub fn fill_snat(&self, entries: &[(FlowKey, SnatEntry)]) -> Result<()> {
        let (k, v): (Vec<FlowKey>, Vec<SnatEntry>) = entries.iter().copied().unzip();
        let fd = IterableMap::map(&self.snat).fd().as_fd();
        batch::update(fd, &k, &v).context("writing SNAT entries")
    }

    /// The conntrack map (tests walk it with [`batch::walk_hash`] directly).
    pub fn conntrack_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        IterableMap::map(&self.conntrack).fd().as_fd()
    }

    /// The conntrack map's size (`max_entries`).
    pub fn conntrack_max(&self) -> u32 {
        self.conntrack.map().info().map_or(0, |i| i.max_entries())
    }

    /// Calls `f` on every conntrack entry.
    pub fn each_conntrack(&self, f: impl FnMut(&FlowKey, &CtEntry)) -> Result<()> {
        each(&self.conntrack, self.chunk, f)
    }

    /// Calls `f` on every SNAT entry.
    pub fn each_snat(&self, f: impl FnMut(&FlowKey, &SnatEntry)) -> Result<()> {
        each(&self.snat, self.chunk, f)
    }

    pub fn conntrack(&self) -> Result<Vec<(FlowKey, CtEntry)>> {
        let mut out = Vec::new();
        self.each_conntrack(|k, v| out.push((*k, *v)))?;
        Ok(out)
    }

    pub fn snat_entries(&self) -> Result<Vec<(FlowKey, SnatEntry)>> {
        let mut out = Vec::new();
        self.each_snat(|k, v| out.push((*k, *v)))?;
        Ok(out)
    }

    /// (name, entries, max_entries) per map. An LRU map at its size evicts its least recently
    /// used entry for each new one.
    pub fn read(&self) -> Vec<(&'static str, usize, u32)> {
        let max = |m: &MapData| m.info().map(|i| i.max_entries()).unwrap_or(0);
        let (mut ct, mut snat) = (0, 0);
        let _ = self.each_conntrack(|_, _| ct += 1);
        let _ = self.each_snat(|_, _| snat += 1);
        vec![
            ("conntrack", ct, max(self.conntrack.map())),
            ("snat", snat, max(self.snat.map())),
        ]
    }

    /// Every conntrack and SNAT entry of flows pinned to these backends.
    pub fn pinned_to(&self, backend_ids: &BTreeSet<u32>) -> Result<Vec<Flow>> {
        let mut out = Vec::new();
        self.each_conntrack(|k, v| {
            if backend_ids.contains(&v.backend_id) {
                out.push(Flow::Conntrack(*k));
            }
        })?;
        self.each_snat(|k, v| {
            if backend_ids.contains(&v.backend_id) {
                out.push(Flow::Snat(*k));
            }
        })?;
        Ok(out)
    }

    /// Deletes these entries (those already gone skipped); returns how many conntrack entries
    /// went.
    pub fn delete_entries(&mut self, flows: &[Flow]) -> Result<usize> {
        let (mut ct, mut snat) = (Vec::new(), Vec::new());
        for f in flows {
            match f {
                Flow::Conntrack(k) => ct.push(*k),
                Flow::Snat(k) => snat.push(*k),
            }
        }
        let one_by_one = self.chunk == 0;
        let n =
            delete(&mut self.conntrack, &ct, one_by_one).context("deleting conntrack entries")?;
        delete(&mut self.snat, &snat, one_by_one).context("deleting SNAT entries")?;
        Ok(n)
    }
}

impl FlowMaps {
    /// The backends among `backend_ids` with a live flow (expiry judged with `timeouts`): one
    /// walk of the conntrack map.
    pub fn live(
        &self,
        backend_ids: &BTreeSet<u32>,
        timeouts: Option<&Timeouts>,
    ) -> Result<BTreeSet<u32>> {
        let now = crate::events::record::monotonic_ns();
        let mut live = BTreeSet::new();
        self.each_conntrack(|k, v| {
            if backend_ids.contains(&v.backend_id) && is_live(timeouts, now, k, v) {
                live.insert(v.backend_id);
            }
        })?;
        Ok(live)
    }
}

impl FlowWalk for FlowMaps {
    type Flow = Flow;

    fn walk(&self, backend_ids: &BTreeSet<u32>) -> Result<Walked<Flow>> {
        let now = crate::events::record::monotonic_ns();
        let mut live = BTreeSet::new();
        let mut ended = Vec::new();
        self.each_conntrack(|k, v| {
            if !backend_ids.contains(&v.backend_id) || live.contains(&v.backend_id) {
                return;
            }
            if is_live(self.timeouts.as_ref(), now, k, v) {
                live.insert(v.backend_id);
            } else {
                ended.push((v.backend_id, Flow::Conntrack(*k)));
            }
        })?;
        // The SNAT entries matter only for backends about to go.
        if live.len() < backend_ids.len() {
            self.each_snat(|k, v| {
                if backend_ids.contains(&v.backend_id) && !live.contains(&v.backend_id) {
                    ended.push((v.backend_id, Flow::Snat(*k)));
                }
            })?;
        }
        ended.retain(|(id, _)| !live.contains(id));
        Ok(Walked { live, ended })
    }

    fn delete(&mut self, flows: Vec<Flow>) -> Result<usize> {
        self.delete_entries(&flows)
    }
}
