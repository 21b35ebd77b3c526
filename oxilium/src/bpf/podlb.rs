//! The pod programs of `--socket-lb-host-netns-only` (tc object: `oxilium_pod_ingress` /
//! `oxilium_pod_egress`): loads the tc object with every map pinned under the agent's pin folder
//! (the shared LB maps, the NodePort maps the object also carries, the socket LB's affinity maps
//! and `OXI_POD_STATS`) and attaches both programs to a pod's host-side veth through TCX links
//! pinned as `link_pod_{ingress,egress}_<device>_<ifindex>` (the ifindex tells a recreated device
//! of the same name from the old one, whose link the kernel already detached).
use super::{
    loader::{self, prepare_pin_dir},
    objects,
};
use abi::{
    lb::Counter,
    sock::pod::{self, reason},
};
use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType},
};
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// The programs and where they attach.
pub const PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    ("oxilium_pod_ingress", TcAttachType::Ingress, "ingress"),
    ("oxilium_pod_egress", TcAttachType::Egress, "egress"),
];

const PIN_PREFIX: &str = "link_pod_";

fn link_pin(pin_dir: &Path, dir: &str, dev: &str, ifindex: u32) -> PathBuf {
    pin_dir.join(format!("{PIN_PREFIX}{dir}_{dev}_{ifindex}"))
}

/// A pod device as its pins name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodDevice {
    pub name: String,
    pub ifindex: u32,
}

/// The loaded pod programs. Dropping it keeps the pinned links (and so the datapath) in place.
pub struct PodLb {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl PodLb {
    /// Loads and verifies both programs, every map pinned in `pin_dir` (shared with the socket LB
    /// and the NodePort programs). Kernel: TCX (≥ 6.6) for the attachments.
    pub fn load(pin_dir: &Path) -> Result<PodLb> {
        prepare_pin_dir(pin_dir)?;
        let mut ebpf = loader::load_pinned(objects::tc(), pin_dir)?;
        for (name, _, _) in PROGRAMS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name}"))?
                .try_into()?;
            loader::verify(name, || prog.load())?;
        }
        Ok(PodLb {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// Attaches both programs to `dev` (resolved in the calling thread's network namespace),
    /// replacing the programs of an earlier run's pinned links of the same device.
    pub fn attach(&mut self, dev: &PodDevice) -> Result<()> {
        for (name, attach, dir) in PROGRAMS {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name}"))?
                .try_into()?;
            let pin = link_pin(&self.pin_dir, dir, &dev.name, dev.ifindex);
            loader::attach_tc_pinned(prog, &dev.name, attach, &pin)
                .with_context(|| format!("{name} on {}", dev.name))?;
        }
        Ok(())
    }
}

/// Removes the pinned links of a pod device (detaching the programs if it still exists).
pub fn detach(pin_dir: &Path, dev: &PodDevice) -> Result<()> {
    for (_, _, dir) in PROGRAMS {
        let pin = link_pin(pin_dir, dir, &dev.name, dev.ifindex);
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", pin.display())),
        }
    }
    Ok(())
}

/// The pod devices that have pinned links in `pin_dir` (this run's or an earlier one's).
pub fn pinned(pin_dir: &Path) -> Result<BTreeSet<PodDevice>> {
    let mut out = BTreeSet::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", pin_dir.display())),
    };
    for e in entries.flatten() {
        if let Some(d) = parse_pin(&e.file_name().to_string_lossy()) {
            out.insert(d);
        }
    }
    Ok(out)
}

/// Detaches every pod device (the flag is off, or the agent cleans up); returns how many.
pub fn detach_all(pin_dir: &Path) -> Result<usize> {
    let devs = pinned(pin_dir)?;
    for d in &devs {
        detach(pin_dir, d)?;
    }
    Ok(devs.len())
}

/// `link_pod_<dir>_<device>_<ifindex>` → the device (device names may contain `_`).
fn parse_pin(file: &str) -> Option<PodDevice> {
    let rest = file.strip_prefix(PIN_PREFIX)?;
    let rest = PROGRAMS
        .iter()
        .find_map(|(_, _, dir)| rest.strip_prefix(dir)?.strip_prefix('_'))?;
    let (name, ifindex) = rest.rsplit_once('_')?;
    Some(PodDevice {
        name: name.to_string(),
        ifindex: ifindex.parse().ok()?,
    })
}

/// The pod programs' counters (`abi::sock::pod::reason`, summed over CPUs) from the pinned map.
pub fn counters(pin_dir: &Path) -> Result<Vec<(&'static str, Counter)>> {
    let path = pin_dir.join(pod::names::STATS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map: PerCpuArray<MapData, Counter> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
    Ok(reason::NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let sum = map.get(&(i as u32), 0).map(|v| {
                v.iter().fold(Counter::default(), |a, c| Counter {
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                })
            });
            (*n, sum.unwrap_or_default())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_name_the_device_and_its_ifindex() {
        let p = link_pin(Path::new("/p"), "ingress", "veth_a1", 42);
        assert_eq!(p, Path::new("/p/link_pod_ingress_veth_a1_42"));
        let d = parse_pin("link_pod_ingress_veth_a1_42").unwrap();
        assert_eq!((d.name.as_str(), d.ifindex), ("veth_a1", 42));
        assert_eq!(parse_pin("link_pod_egress_p1_7").unwrap().name, "p1");
        assert!(parse_pin("link_np_ingress_eth0").is_none());
        assert!(parse_pin("link_pod_ingress_p1_x").is_none());
    }
}
