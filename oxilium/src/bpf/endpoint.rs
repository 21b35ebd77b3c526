//! The endpoint programs of the cluster network (tc object: `oxilium_endpoint_from_pod` /
//! `oxilium_endpoint_to_pod`, see datapath::endpoint) and `OXI_ENDPOINTS`. Loaded with every map
//! pinned under the agent's pin folder (shared with the socket LB, NodePort and pod fallback);
//! attached to the host side of each pod veth through TCX links pinned as
//! `link_ep_{from,to}_<device>_<ifindex>`.
use super::{
    loader::{self, prepare_pin_dir},
    objects,
};
use abi::endpoint::{EndpointInfo, EndpointKey, names};
use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{SchedClassifier, TcAttachType},
};
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

pub const PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    ("oxilium_endpoint_from_pod", TcAttachType::Ingress, "from"),
    ("oxilium_endpoint_to_pod", TcAttachType::Egress, "to"),
];

fn link_pin(pin_dir: &Path, dir: &str, dev: &str, ifindex: u32) -> PathBuf {
    pin_dir.join(format!("link_ep_{dir}_{dev}_{ifindex}"))
}

/// The loaded programs and the endpoints map.
pub struct EndpointLb {
    ebpf: Ebpf,
    map: HashMap<MapData, EndpointKey, EndpointInfo>,
    pin_dir: PathBuf,
}

/// The 16-byte map form of an address (IPv4-mapped for IPv4).
pub fn key(ip: IpAddr) -> EndpointKey {
    let addr = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    EndpointKey { addr }
}

impl EndpointLb {
    /// Loads and verifies both programs. Kernel: TCX (≥ 6.6), bpf_redirect_peer (≥ 5.10).
    pub fn load(pin_dir: &Path) -> Result<EndpointLb> {
        prepare_pin_dir(pin_dir)?;
        let mut ebpf = loader::load_pinned(objects::tc(), pin_dir)?;
        for (name, _, _) in PROGRAMS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name}"))?
                .try_into()?;
            loader::verify(name, || prog.load())?;
        }
        let map = loader::take_map(&mut ebpf, names::ENDPOINTS)?;
        Ok(EndpointLb {
            ebpf,
            map,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// Attaches both programs to `dev` (of the calling thread's namespace), re-pointing an
    /// earlier run's pinned links.
    pub fn attach(&mut self, dev: &str, ifindex: u32) -> Result<()> {
        for (name, attach, dir) in PROGRAMS {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name}"))?
                .try_into()?;
            let pin = link_pin(&self.pin_dir, dir, dev, ifindex);
            loader::attach_tc_pinned(prog, dev, attach, &pin)
                .with_context(|| format!("{name} on {dev}"))?;
        }
        Ok(())
    }

    /// Removes the pinned links of a device (its programs detach with it).
    pub fn detach(&self, dev: &str, ifindex: u32) -> Result<()> {
        for (_, _, dir) in PROGRAMS {
            let pin = link_pin(&self.pin_dir, dir, dev, ifindex);
            match std::fs::remove_file(&pin) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", pin.display())),
            }
        }
        Ok(())
    }

    pub fn set(&mut self, ip: IpAddr, info: EndpointInfo) -> Result<()> {
        self.map
            .insert(key(ip), info, 0)
            .map_err(|e| super::sizes::full_error(abi::endpoint::names::ENDPOINTS, e))
            .with_context(|| format!("writing endpoint {ip}"))
    }

    /// Removes `ip`'s entry when it still points at `ifindex` (a newer pod may hold it).
    pub fn remove(&mut self, ip: IpAddr, ifindex: u32) -> Result<()> {
        let k = key(ip);
        match self.map.get(&k, 0) {
            Ok(v) if v.ifindex == ifindex => self
                .map
                .remove(&k)
                .with_context(|| format!("removing endpoint {ip}")),
            _ => Ok(()),
        }
    }

    /// One of the loaded programs (benchmarks run it with BPF_PROG_TEST_RUN).
    pub fn program(&self, name: &str) -> Option<&SchedClassifier> {
        self.ebpf.program(name)?.try_into().ok()
    }

    pub fn get(&self, ip: IpAddr) -> Option<EndpointInfo> {
        self.map.get(&key(ip), 0).ok()
    }
}
