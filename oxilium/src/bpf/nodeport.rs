//! NodePort / LoadBalancer / externalIPs from outside: loads the tc object with every map pinned
//! under the agent's pin folder (the shared LB maps of `abi::lb::names` and the NodePort maps of
//! `abi::nodeport::names`), attaches `oxilium_nodeport_ingress` and `oxilium_nodeport_egress` to
//! the node's external devices through TCX links pinned as `link_np_{ingress,egress}_<device>`
//! (a restarted agent swaps its programs in atomically), and writes the NodePort maps: the pods of
//! this node (local endpoints) and the services' loadBalancerSourceRanges.
//!
//! The frontends themselves are ordinary `SCOPE_EXTERNAL` services written by the reconciler
//! (`KernelMaps`); `OXI_CONFIG.snat_v4/v6` is the node address used as SNAT source towards
//! backends on other nodes. See docs/nodeport.md.
use super::{
    lb_maps::KernelMaps,
    loader::{self, prepare_pin_dir},
    objects,
};
use abi::{
    lb::{Addr, Counter},
    nodeport::{
        Endpoint, RANGE_ALLOW, RANGE_DENY, RANGE_ID_BITS, RangeData, names, range_prefix_len,
    },
};
use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode},
};
use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

/// The programs and where they attach.
pub const PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    ("oxilium_nodeport_ingress", TcAttachType::Ingress, "ingress"),
    ("oxilium_nodeport_egress", TcAttachType::Egress, "egress"),
];

use lb::model::IpNetwork;

/// The LPM key of a range for a service: IPv4 prefixes count in the IPv4-mapped form.
fn range_key(r: &IpNetwork, service_id: u32) -> Key<RangeData> {
    let bits = match r.ip() {
        IpAddr::V4(_) => 96 + r.prefix() as u32,
        IpAddr::V6(_) => r.prefix() as u32,
    };
    let mut addr = addr_bytes(r.ip());
    // The kernel ignores bits past the prefix; clearing them keeps one key per range.
    for (i, b) in addr.iter_mut().enumerate() {
        let start = i as u32 * 8;
        if start >= bits {
            *b = 0;
        } else if start + 8 > bits {
            *b &= 0xffu8 << (8 - (bits - start));
        }
    }
    Key::new(
        range_prefix_len(bits),
        RangeData {
            service_id_be: service_id.to_be(),
            addr,
        },
    )
}

fn addr_bytes(ip: IpAddr) -> Addr {
    lb::compile::addr_bytes(ip)
}

fn deny_key(service_id: u32) -> Key<RangeData> {
    Key::new(
        RANGE_ID_BITS,
        RangeData {
            service_id_be: service_id.to_be(),
            addr: [0; 16],
        },
    )
}

/// The loaded NodePort programs and their maps. Dropping it keeps the pinned links (and so the
/// datapath) in place; [`NodePort::detach`] removes them.
pub struct NodePort {
    pub ebpf: Ebpf,
    /// The XDP acceleration (`oxilium_nodeport_xdp` of the XDP object), when attached.
    xdp: Option<Ebpf>,
    endpoints: HashMap<MapData, Addr, Endpoint>,
    ranges: LpmTrie<MapData, RangeData, u8>,
    stats: PerCpuArray<MapData, Counter>,
}

/// Marks the packets of flows an L7 proxy of this node holds for local pods (tc/src/endpoint.rs;
/// docs/l7.md), first on every device's tc ingress.
pub const L7_PROGRAM: &str = "oxilium_l7_netdev";

/// The XDP acceleration's program (xdp/src/nodeport.rs).
pub const XDP_PROGRAM: &str = "oxilium_nodeport_xdp";

fn link_pin(pin_dir: &Path, dir: &str, dev: &str) -> PathBuf {
    pin_dir.join(format!("link_np_{dir}_{dev}"))
}

/// Removes the pinned links of `devices` for the hooks `dirs` (ingress, egress, xdp).
fn remove_links(pin_dir: &Path, devices: &[String], dirs: &[&str]) -> Result<()> {
    for dev in devices {
        for dir in dirs {
            let pin = link_pin(pin_dir, dir, dev);
            if pin.exists() {
                std::fs::remove_file(&pin)
                    .with_context(|| format!("removing {}", pin.display()))?;
            }
        }
    }
    Ok(())
}

/// Attaches [`L7_PROGRAM`] of the loaded tc object first on the tc ingress of every device (before
/// the NodePort program, which may redirect or drop what it decides on), through links pinned as
/// `link_np_l7_<device>`.
fn attach_l7(ebpf: &mut Ebpf, pin_dir: &Path, devices: &[String]) -> Result<()> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(L7_PROGRAM)
        .context(L7_PROGRAM)?
        .try_into()?;
    loader::verify(L7_PROGRAM, || prog.load())?;
    for dev in devices {
        let pin = link_pin(pin_dir, "l7", dev);
        loader::attach_tc_pinned_in(prog, dev, TcAttachType::Ingress, &pin, LinkOrder::first())
            .with_context(|| format!("{L7_PROGRAM} on {dev}"))?;
    }
    Ok(())
}

/// [`L7_PROGRAM`] alone on `device` (the pod tunnel's device: packets out of the tunnel), or,
/// without `attach`, the link an earlier run left on it removed.
pub fn l7_on_tunnel(pin_dir: &Path, device: &str, attach: bool) -> Result<()> {
    let devices = [device.to_string()];
    if !attach {
        return remove_links(pin_dir, &devices, &["l7"]);
    }
    let mut ebpf = loader::load_pinned(objects::tc(), pin_dir)?;
    attach_l7(&mut ebpf, pin_dir, &devices)
}

impl NodePort {
    /// Loads the tc object (maps pinned under `pin_dir`) and attaches both programs to every
    /// device (names resolved in the calling thread's network namespace), and with `l7` (the L7
    /// proxies run: `--cni`, `--l7-proxy`) [`L7_PROGRAM`] before them; without it, a link to
    /// [`L7_PROGRAM`] an earlier run left is removed, so a node without proxies does not parse
    /// every packet for them. Kernel: TCX (≥ 6.6).
    pub fn load(pin_dir: &Path, devices: &[String], l7: bool) -> Result<NodePort> {
        prepare_pin_dir(pin_dir)?;
        let mut ebpf = loader::load_pinned(objects::tc(), pin_dir)?;
        for (name, attach, dir) in PROGRAMS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name}"))?
                .try_into()?;
            loader::verify(name, || prog.load())?;
            for dev in devices {
                loader::attach_tc_pinned(prog, dev, attach, &link_pin(pin_dir, dir, dev))
                    .with_context(|| format!("{name} on {dev}"))?;
            }
        }
        if l7 {
            attach_l7(&mut ebpf, pin_dir, devices)?;
        } else {
            remove_links(pin_dir, devices, &["l7"])?;
        }
        Ok(NodePort {
            endpoints: loader::take_map(&mut ebpf, names::ENDPOINTS)?,
            ranges: loader::take_map(&mut ebpf, names::SOURCE_RANGES)?,
            stats: loader::take_map(&mut ebpf, names::STATS)?,
            ebpf,
            xdp: None,
        })
    }

    /// With a mode: also attaches `oxilium_nodeport_xdp` (the XDP object, maps shared through
    /// the pins) to every device, through links pinned as `link_np_xdp_<device>`, so flows to
    /// backends on other nodes and their replies are served before the skb exists. Without one:
    /// removes such links an earlier run left. Kernel: XDP bpf_links (≥ 5.9).
    pub fn accelerate(
        &mut self,
        pin_dir: &Path,
        devices: &[String],
        mode: Option<XdpMode>,
    ) -> Result<()> {
        let Some(mode) = mode else {
            self.xdp = None;
            return remove_links(pin_dir, devices, &["xdp"]);
        };
        let mut ebpf = loader::load_xdp_object(pin_dir, mode)?;
        let prog: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .context("program oxilium_nodeport_xdp")?
            .try_into()?;
        loader::verify("oxilium_nodeport_xdp", || prog.load())?;
        for dev in devices {
            loader::attach_xdp_pinned(prog, dev, mode, &link_pin(pin_dir, "xdp", dev))
                .with_context(|| format!("{XDP_PROGRAM} on {dev}"))?;
        }
        self.xdp = Some(ebpf);
        Ok(())
    }

    /// True when the XDP acceleration is attached.
    pub fn accelerated(&self) -> bool {
        self.xdp.is_some()
    }

    /// The shared LB maps of this object (the pinned ones), for a reconciler or for reading
    /// counters and conntrack. Call at most once.
    pub fn lb_maps(&mut self) -> Result<KernelMaps> {
        KernelMaps::from_ebpf(&mut self.ebpf)
    }

    /// Removes the pinned links of `devices` (detaching the programs once no one holds them).
    pub fn detach(pin_dir: &Path, devices: &[String]) -> Result<()> {
        remove_links(pin_dir, devices, &["ingress", "egress", "xdp", "l7"])
    }

    /// A pod of this node: flows DNAT'ed to `addr` are redirected to `endpoint.ifindex`.
    pub fn set_endpoint(&mut self, addr: IpAddr, endpoint: &Endpoint) -> Result<()> {
        self.endpoints
            .insert(addr_bytes(addr), endpoint, 0)
            .map_err(|e| super::sizes::full_error(abi::nodeport::names::ENDPOINTS, e))
            .with_context(|| format!("writing endpoint {addr}"))
    }

    pub fn remove_endpoint(&mut self, addr: IpAddr) -> Result<()> {
        match self.endpoints.remove(&addr_bytes(addr)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing endpoint {addr}")),
        }
    }

    pub fn endpoints(&self) -> Vec<(IpAddr, Endpoint)> {
        self.endpoints
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| (lb::compile::bytes_addr(&k), v))
            .collect()
    }

    /// Replaces the loadBalancerSourceRanges of a service (by datapath id): new flows from
    /// clients outside every range are dropped; an empty list opens the service to everyone.
    /// Established flows keep going. Cost: proportional to this service's old and new ranges.
    pub fn set_source_ranges(&mut self, service_id: u32, ranges: &[IpNetwork]) -> Result<()> {
        let want: BTreeSet<Vec<u8>> = ranges
            .iter()
            .map(|r| key_bytes(&range_key(r, service_id)))
            .collect();
        let have = self.range_keys(service_id);
        // Allows first, then the deny marker, then stale entries: never refuse an allowed client.
        for r in ranges {
            self.ranges
                .insert(&range_key(r, service_id), RANGE_ALLOW, 0)
                .context("writing a source range")?;
        }
        if ranges.is_empty() {
            let _ = self.ranges.remove(&deny_key(service_id));
        } else {
            self.ranges
                .insert(&deny_key(service_id), RANGE_DENY, 0)
                .context("writing the source-range marker")?;
        }
        let deny = key_bytes(&deny_key(service_id));
        for k in have {
            let b = key_bytes(&k);
            if b != deny && !want.contains(&b) {
                let _ = self.ranges.remove(&k);
            }
        }
        Ok(())
    }

    /// The ids of the services that have source ranges in the kernel (e.g. from an earlier run).
    pub fn source_range_ids(&self) -> BTreeSet<u32> {
        self.ranges
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| u32::from_be(k.data().service_id_be))
            .collect()
    }

    /// Every LPM key of a service (the deny marker included).
    fn range_keys(&self, service_id: u32) -> Vec<Key<RangeData>> {
        self.ranges
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.data().service_id_be == service_id.to_be())
            .collect()
    }

    /// The ranges of a service as the kernel holds them.
    pub fn source_ranges(&self, service_id: u32) -> Vec<IpNetwork> {
        let mut out: Vec<IpNetwork> = self
            .range_keys(service_id)
            .into_iter()
            .filter(|k| k.prefix_len() > RANGE_ID_BITS)
            .map(|k| {
                let bits = k.prefix_len() - RANGE_ID_BITS;
                let addr = lb::compile::bytes_addr(&k.data().addr);
                let prefix_len = if addr.is_ipv4() { bits - 96 } else { bits } as u8;
                IpNetwork::new(addr, prefix_len).expect("the kernel's prefix fits the address")
            })
            .collect();
        out.sort();
        out
    }

    /// A NodePort counter (`abi::nodeport::reason`), summed over CPUs.
    pub fn counter(&self, reason: u32) -> Counter {
        match self.stats.get(&reason, 0) {
            Ok(v) => v.iter().fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            }),
            Err(_) => Counter::default(),
        }
    }
}

fn key_bytes(k: &Key<RangeData>) -> Vec<u8> {
    let d = k.data();
    let mut v = k.prefix_len().to_be_bytes().to_vec();
    v.extend_from_slice(&d.service_id_be.to_ne_bytes());
    v.extend_from_slice(&d.addr);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb::model::parse_prefix;

    #[test]
    fn ranges_parse_and_mask() {
        let r = parse_prefix("10.1.2.3/24").unwrap();
        assert_eq!(r.prefix(), 24);
        let k = range_key(&r, 7);
        assert_eq!(k.prefix_len(), 32 + 96 + 24);
        assert_eq!(&k.data().addr[12..], &[10, 1, 2, 0]);
        assert_eq!(k.data().service_id_be, 7u32.to_be());
        let r6 = parse_prefix("fd00:1:2::ff/44").unwrap();
        let a = range_key(&r6, 1).data().addr;
        assert_eq!(&a[..6], &[0xfd, 0, 0, 1, 0, 0]);
        assert!(a[6..].iter().all(|b| *b == 0));
        assert_eq!(parse_prefix("10.0.0.1").unwrap().prefix(), 32);
        assert!(parse_prefix("10.0.0.0/33").is_err());
        assert!(parse_prefix("nonsense/8").is_err());
    }
}
