//! `OXI_CONNTRACK` entries of an older version, whose `CtEntry` was 48 bytes (it had a creation
//! time; it is 40 now, so that a conntrack element fits two cache lines: docs/edge-lb.md,
//! "Per-packet cost"). A pinned map of the older size cannot be given to the new object: its
//! entries are read and the pin removed before the load (which creates the map anew), then
//! written back converted, so established flows keep their backends and SNAT ports across the
//! upgrade. The older programs keep the older map until their links are replaced.
use abi::lb::{CtEntry, FlowKey, names};
use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use std::{fs, os::fd::AsFd, path::Path};

/// The 48-byte entry of the older version.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct OldCtEntry {
    backend_id: u32,
    service_id: u32,
    created_ns: u64,
    last_seen_ns: u64,
    packets: u64,
    bytes: u64,
    snat_port: u16,
    flags: u16,
    svc_timeout_s: u32,
}

// SAFETY: repr(C), plain integers, no padding.
unsafe impl aya::Pod for OldCtEntry {}

impl From<OldCtEntry> for CtEntry {
    fn from(o: OldCtEntry) -> Self {
        CtEntry {
            backend_id: o.backend_id,
            service_id: o.service_id,
            last_seen_ns: o.last_seen_ns,
            packets: o.packets,
            bytes: o.bytes,
            snat_port: o.snat_port,
            flags: o.flags,
            svc_timeout_s: o.svc_timeout_s,
        }
    }
}

/// The older map (kept open until the load is done) and its entries, converted.
pub type OldConntrack = (MapData, Vec<(FlowKey, CtEntry)>);

/// When the pinned `OXI_CONNTRACK` has the older value size: its entries, the pin removed.
pub fn take(pin_dir: &Path) -> Result<Option<OldConntrack>> {
    let path = pin_dir.join(names::CONNTRACK);
    let Ok(data) = MapData::from_pin(&path) else {
        return Ok(None);
    };
    let info = data.info()?;
    if info.value_size() as usize != size_of::<OldCtEntry>() {
        return Ok(None);
    }
    let fd = data.fd().as_fd().try_clone_to_owned()?;
    let old: HashMap<MapData, FlowKey, OldCtEntry> =
        HashMap::try_from(Map::LruHashMap(MapData::from_fd(fd)?))
            .with_context(|| format!("reading the older {}", names::CONNTRACK))?;
    // Entries may come and go while the map is walked (the older programs still run): those
    // that cannot be read are skipped.
    let entries: Vec<(FlowKey, CtEntry)> = old
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, v)| (k, v.into()))
        .collect();
    fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    tracing::info!(
        flows = entries.len(),
        "{} pinned by an older version (48-byte entries): moved into the new map",
        names::CONNTRACK
    );
    Ok(Some((data, entries)))
}

/// Writes the older entries into the new pinned map (an entry the new programs wrote meanwhile
/// is kept).
pub fn put(pin_dir: &Path, entries: &[(FlowKey, CtEntry)]) -> Result<()> {
    let path = pin_dir.join(names::CONNTRACK);
    let mut map: HashMap<MapData, FlowKey, CtEntry> =
        HashMap::try_from(Map::LruHashMap(MapData::from_pin(&path)?))
            .with_context(|| format!("opening {}", path.display()))?;
    for (k, v) in entries {
        // BPF_NOEXIST: a flow the new programs saw already has its newer entry.
        let _ = map.insert(k, v, 1);
    }
    Ok(())
}
