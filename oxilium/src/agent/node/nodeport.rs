//! `--device`: traffic from outside the cluster. The NodePort tc programs on the node's external
//! devices (sharing the pinned LB maps with the socket LB), the datapath settings they need (the
//! node's address as SNAT source towards backends on other nodes), and the services'
//! loadBalancerSourceRanges kept equal to the model. The local endpoints (pods of this node) are
//! resolved by [`super::nodeport_endpoints`]. See docs/nodeport.md.
use crate::bpf::{lb_maps::KernelMaps, nodeport::NodePort};
use abi::{lb::LbConfig, nodeport::Endpoint};
use anyhow::{Context, Result};
use lb::{
    compile,
    model::{IpNetwork, Model, Scope, Service},
    reconcile::{Datapath, Reconciler},
};
use net::addresses::Addresses;
use serde_json::{Value, json};
use std::{collections::BTreeMap, net::IpAddr, path::Path};
use tracing::info;

/// The conntrack settings written with the SNAT source: the SNAT port range (see
/// [`crate::agent::conntrack::snat_ports`]) and the idle timeouts.
#[derive(Clone, Copy, Debug)]
pub struct CtSettings {
    pub ports: lb::config::PortRange,
    pub timeouts: abi::ct::Timeouts,
}

/// The first IPv4 and IPv6 address of the devices, in their order (see
/// [`net::addresses::first_routable`]); none without devices.
pub async fn device_addresses(devices: &[String]) -> Result<Addresses> {
    let mut out = Addresses::default();
    if devices.is_empty() {
        return Ok(out);
    }
    let nl = net::Netlink::connect()?;
    for d in devices {
        let a = net::addresses::first_routable(&nl, d).await?;
        out.v4 = out.v4.or(a.v4);
        out.v6 = out.v6.or(a.v6);
    }
    Ok(out)
}

pub struct NodePortDevices {
    pub devices: Vec<String>,
    np: NodePort,
    ct: CtSettings,
    /// The tc object's handle on the shared maps: `OXI_CONFIG` is written through it.
    maps: KernelMaps,
    config: Option<LbConfig>,
    /// The SNAT source an earlier run left in the kernel, kept until a view gives this node's
    /// InternalIPs: established flows to other nodes are translated with the current address,
    /// so falling back to a device address on restart (before the API server answers) would
    /// cut them.
    adopted: bool,
    /// Source ranges as last written, by service id (only services that have some).
    ranges: BTreeMap<u32, Vec<lb::model::IpNetwork>>,
}

impl NodePortDevices {
    /// Loads and attaches the NodePort programs to `devices` (maps pinned in `pin_dir`, shared
    /// with the socket LB) and sets the kernel settings they rely on. Ranges an earlier run left
    /// in the kernel are adopted, so the first sync removes the ones no longer wanted. With
    /// `xdp`, the XDP acceleration is attached too (else one an earlier run left is removed);
    /// with `l7`, the L7 proxies' program (crate::bpf::nodeport::NodePort::load).
    pub fn load(
        pin_dir: &Path,
        devices: &[String],
        xdp: Option<aya::programs::XdpMode>,
        ct: CtSettings,
        l7: bool,
    ) -> Result<NodePortDevices> {
        crate::sysctl::prepare_lb(devices)?;
        let mut np = NodePort::load(pin_dir, devices, l7)
            .with_context(|| format!("attaching the NodePort programs to {devices:?}"))?;
        np.accelerate(pin_dir, devices, xdp)
            .with_context(|| format!("attaching the NodePort XDP acceleration to {devices:?}"))?;
        let maps = np.lb_maps()?;
        let mut maps = maps;
        let config = maps
            .config()
            .ok()
            .filter(|c| c.ready == 1 && (c.snat_v4 != [0; 16] || c.snat_v6 != [0; 16]));
        // Adopted addresses stay; the ports and timeouts are this run's.
        let config = match config {
            Some(mut c) => {
                c.snat_port_min = ct.ports.min;
                c.snat_port_max = ct.ports.max;
                c.timeouts = ct.timeouts;
                maps.set_config(&c)?;
                Some(c)
            }
            None => None,
        };
        let ranges = np
            .source_range_ids()
            .into_iter()
            .map(|id| (id, np.source_ranges(id)))
            .collect();
        Ok(NodePortDevices {
            devices: devices.to_vec(),
            np,
            ct,
            maps,
            adopted: config.is_some(),
            config,
            ranges,
        })
    }

    /// Writes `OXI_CONFIG` when it changes: the SNAT source per family is the node's first
    /// InternalIP of that family (from its Node object), else the first address of a device
    /// (`devices`, from [`device_addresses`]). Without InternalIPs, the addresses an earlier run
    /// left stay until some are known.
    pub fn set_node_addresses(&mut self, internal: &[IpAddr], devices: Addresses) -> Result<()> {
        if internal.is_empty() && self.adopted {
            return Ok(());
        }
        self.adopted = false;
        let mut v4 = internal.iter().find_map(|a| match a {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        });
        let mut v6 = internal.iter().find_map(|a| match a {
            IpAddr::V6(v) => Some(*v),
            IpAddr::V4(_) => None,
        });
        v4 = v4.or(devices.v4);
        v6 = v6.or(devices.v6);
        let config = LbConfig {
            snat_v4: v4
                .map(|a| abi::lb::v4_mapped(a.octets()))
                .unwrap_or_default(),
            snat_v6: v6.map(|a| a.octets()).unwrap_or_default(),
            snat_port_min: self.ct.ports.min,
            snat_port_max: self.ct.ports.max,
            ready: 1,
            timeouts: self.ct.timeouts,
        };
        if self.config == Some(config) {
            return Ok(());
        }
        self.maps.set_config(&config)?;
        self.config = Some(config);
        info!(?v4, ?v6, "NodePort SNAT source addresses");
        Ok(())
    }

    /// Before an apply writes `services`: writes the source ranges of those that have some
    /// (reserving the id of a new one), so that a new or changed LoadBalancer is never open to
    /// clients outside its ranges, not even between two writes. Returns how many were written;
    /// [`sync_source_ranges`](Self::sync_source_ranges) after the apply clears stale ones.
    pub fn write_ranges_first(
        &mut self,
        rec: &mut Reconciler<KernelMaps>,
        services: &[Service],
    ) -> Result<usize> {
        let (np, have) = (&mut self.np, &mut self.ranges);
        ranges_before_services(rec, services, |id, r| {
            if have.get(&id).map(Vec::as_slice) == Some(r) {
                return Ok(false);
            }
            np.set_source_ranges(id, r)
                .with_context(|| format!("source ranges of service {id}"))?;
            have.insert(id, r.to_vec());
            Ok(true)
        })
    }

    /// Makes the kernel hold the source ranges of every external service of `model` (by the
    /// ids the reconciler gave them), writing only services whose ranges changed and clearing
    /// those of services that lost theirs or are gone. Returns how many services were written.
    pub fn sync_source_ranges(
        &mut self,
        rec: &Reconciler<KernelMaps>,
        model: &Model,
    ) -> Result<usize> {
        let mut want: BTreeMap<u32, Vec<lb::model::IpNetwork>> = BTreeMap::new();
        for s in &model.services {
            if s.scope != Scope::External || s.source_ranges.is_empty() {
                continue;
            }
            let Some(id) = rec.service_id(&compile::service_key(s)) else {
                continue;
            };
            let mut r = s.source_ranges.clone();
            r.sort();
            r.dedup();
            want.insert(id, r);
        }
        let mut written = 0;
        for (id, r) in &want {
            if self.ranges.get(id) != Some(r) {
                self.np
                    .set_source_ranges(*id, r)
                    .with_context(|| format!("source ranges of service {id}"))?;
                self.ranges.insert(*id, r.clone());
                written += 1;
            }
        }
        let stale: Vec<u32> = self
            .ranges
            .keys()
            .filter(|id| !want.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            self.np
                .set_source_ranges(id, &[])
                .with_context(|| format!("clearing the source ranges of service {id}"))?;
            self.ranges.remove(&id);
            written += 1;
        }
        Ok(written)
    }

    pub fn set_endpoint(&mut self, addr: IpAddr, ep: &Endpoint) -> Result<()> {
        self.np.set_endpoint(addr, ep)
    }

    pub fn remove_endpoint(&mut self, addr: IpAddr) -> Result<()> {
        self.np.remove_endpoint(addr)
    }

    /// The local endpoints the kernel holds.
    pub fn endpoints(&self) -> Vec<(IpAddr, Endpoint)> {
        self.np.endpoints()
    }

    /// For `status`: devices, counters (`abi::nodeport::reason`), endpoints and services with
    /// source ranges.
    pub fn status(&self) -> Value {
        let counters: serde_json::Map<String, Value> = abi::nodeport::reason::NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let c = self.np.counter(i as u32);
                (
                    n.to_string(),
                    json!({ "packets": c.packets, "bytes": c.bytes }),
                )
            })
            .collect();
        json!({
            "devices": self.devices,
            "xdp_acceleration": self.np.accelerated(),
            "local_endpoints": self.np.endpoints().len(),
            "source_range_services": self.ranges.len(),
            "counters": counters,
        })
    }
}

/// The ordering of [`NodePortDevices::write_ranges_first`]: for each external service of
/// `services` with source ranges, its id (reserved if it is new) and its sorted ranges go to
/// `write` (which says whether it wrote), before the reconciler writes any service entry.
pub fn ranges_before_services<D: Datapath>(
    rec: &mut Reconciler<D>,
    services: &[Service],
    mut write: impl FnMut(u32, &[IpNetwork]) -> Result<bool>,
) -> Result<usize> {
    let mut written = 0;
    for s in services {
        if s.scope != Scope::External || s.source_ranges.is_empty() {
            continue;
        }
        let id = rec.reserve_id(&compile::service_key(s))?;
        let mut r = s.source_ranges.clone();
        r.sort();
        r.dedup();
        written += usize::from(write(id, &r)?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::lb::{ServiceKey, ServiceValue};
    use lb::reconcile::MemoryDatapath;
    use std::{cell::RefCell, rc::Rc};

    /// The in-memory datapath, logging service entries as they are written.
    struct Recording(MemoryDatapath, Rc<RefCell<Vec<String>>>);

    impl Datapath for Recording {
        fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
            self.0.services()
        }
        fn backends(&self) -> Result<Vec<(u32, abi::lb::Backend)>> {
            self.0.backends()
        }
        fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
            if value.id != 0 {
                self.1.borrow_mut().push(format!("service {}", value.id));
            }
            self.0.set_service(key, value)
        }
        fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
            self.0.remove_service(key)
        }
        fn set_backend(&mut self, id: u32, b: &abi::lb::Backend) -> Result<()> {
            self.0.set_backend(id, b)
        }
        fn remove_backend(&mut self, id: u32) -> Result<()> {
            self.0.remove_backend(id)
        }
        fn set_table(&mut self, id: u32, old: Option<&[u32]>, ids: &[u32]) -> Result<()> {
            self.0.set_table(id, old, ids)
        }
        fn commit_tables(&mut self) -> Result<()> {
            self.0.commit_tables()
        }
        fn flush_flows(&mut self, ids: &std::collections::BTreeSet<u32>) -> Result<usize> {
            self.0.flush_flows(ids)
        }
        type Walker = <MemoryDatapath as Datapath>::Walker;
        fn flow_walker(&self) -> Result<Self::Walker> {
            self.0.flow_walker()
        }

        fn set_affinity(&mut self, id: u32, t: Option<u32>) -> Result<()> {
            self.0.set_affinity(id, t)
        }
    }

    /// The loadbalancer case of k8s/tests/cases (a LoadBalancer with loadBalancerSourceRanges) as
    /// node-a's model: every service with ranges has them written before its entry, under the id
    /// the entry then carries; the others get ids as usual.
    #[test]
    fn source_ranges_are_written_before_the_service_entry() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../k8s/tests/cases/loadbalancer/manifests"
        );
        let nf = k8s::node_frontends(Path::new(dir), "node-a", &Default::default()).unwrap();
        let model = super::super::model_of(&nf.frontends, 251);
        let with_ranges: Vec<&Service> = model
            .services
            .iter()
            .filter(|s| s.scope == Scope::External && !s.source_ranges.is_empty())
            .collect();
        assert!(!with_ranges.is_empty());
        let log = Rc::new(RefCell::new(Vec::new()));
        let dp = Recording(MemoryDatapath::default(), log.clone());
        let mut rec = Reconciler::open(dp).unwrap();
        let n = ranges_before_services(&mut rec, &model.services, |id, r| {
            log.borrow_mut().push(format!("ranges {id} {}", r.len()));
            Ok(true)
        })
        .unwrap();
        assert_eq!(n, with_ranges.len());
        rec.apply(&compile::compile(&model).unwrap()).unwrap();
        let log = log.borrow();
        for s in with_ranges {
            let id = rec.service_id(&compile::service_key(s)).unwrap();
            let at = |what: &str| log.iter().position(|l| l.starts_with(what));
            let ranges = at(&format!("ranges {id} ")).unwrap_or_else(|| panic!("{log:?}"));
            let entry = at(&format!("service {id}")).unwrap_or_else(|| panic!("{log:?}"));
            assert!(ranges < entry, "{log:?}");
        }
        let entries: Vec<u32> = (rec.datapath().0.services.values())
            .map(|v| v.id)
            .filter(|id| *id != 0)
            .collect();
        let ids: std::collections::BTreeSet<u32> = entries.iter().copied().collect();
        assert_eq!(ids.len(), entries.len(), "ids are unique");
    }
}
