//! The local endpoints of the NodePort datapath (`OXI_NP_ENDPOINTS`): for every pod of this node
//! that backs an external frontend, the device the node reaches it through and the two MACs a
//! redirected frame carries. Found with rtnetlink ([`net`]), as `ip route get`, `ip link` and
//! `ip neigh` would: a FIB lookup of the pod address gives the output device (and a gateway, if
//! the pod is behind one), the device's MAC is the frame's source, and the neighbour entry of the
//! pod (or of the gateway) on that device is its destination.
//!
//! A pod whose neighbour is not known yet is resolved by the kernel on request
//! ([`net::neighbours::resolve_on`]) and looked up again after a moment, then on every later
//! sync. Only differences are written: a sync resolves the addresses that are new or still
//! waiting (every wanted address when asked to re-check, e.g. after a pod's veth was recreated
//! with the same address).
use abi::nodeport::Endpoint;
use anyhow::Result;
use net::{Family, Netlink, links, neighbours, routes};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};
use tracing::{info, warn};

/// How a pod address resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lookup {
    Found(Endpoint),
    /// Routed through a device, but the next hop's MAC is not known (yet).
    NoNeighbour(routes::NextHop),
    /// Not reachable through a device of its own (no route, or a local address).
    NoRoute,
}

/// `ip route get ADDR`; no route is an answer, not a failure.
async fn route(nl: &Netlink, ip: IpAddr) -> Result<Option<routes::NextHop>> {
    match routes::get(nl, ip).await {
        Ok(hop) => Ok(hop),
        // ENETUNREACH and friends.
        Err(e @ net::Error::Refused { .. }) => {
            warn!(%ip, "route lookup: {e}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes the kernel resolve a pod's next hop (the answer is looked up again later).
async fn probe(nl: &Netlink, hop: routes::NextHop) {
    let _ = neighbours::resolve_on(nl, hop).await;
}

/// What a sync writes: endpoints to set (new or changed) and addresses to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub set: Vec<(IpAddr, Endpoint)>,
    pub remove: Vec<IpAddr>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// How long a sync waits for the neighbours it probed before looking again.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// The local endpoints the datapath holds, kept equal to a wanted set of pod addresses.
#[derive(Default)]
pub struct LocalEndpoints {
    netlink: Option<Netlink>,
    written: BTreeMap<IpAddr, Endpoint>,
    /// Wanted, but without a resolved neighbour (or route) yet.
    waiting: BTreeSet<IpAddr>,
}

impl LocalEndpoints {
    /// Starts from what the map already holds (an agent restart): those entries stay until a
    /// sync finds them unwanted or different.
    pub fn adopt(existing: Vec<(IpAddr, Endpoint)>) -> Self {
        LocalEndpoints {
            written: existing.into_iter().collect(),
            ..Default::default()
        }
    }

    /// `want` plus every address held now: syncing to it adds without removing anything.
    pub fn with_held(&self, want: &BTreeSet<IpAddr>) -> BTreeSet<IpAddr> {
        want.iter().chain(self.written.keys()).copied().collect()
    }

    /// Some wanted pod is still unresolved: sync again soon.
    pub fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Resolves what is needed to hold exactly `want` (with `recheck`, every wanted address;
    /// otherwise only new and waiting ones), hands the difference to `write` and records it
    /// once written. Netlink is queried without `write`'s lock.
    pub async fn sync(
        &mut self,
        want: &BTreeSet<IpAddr>,
        recheck: bool,
        write: impl FnOnce(&Plan) -> Result<()>,
    ) -> Result<Plan> {
        self.waiting.retain(|a| want.contains(a));
        let todo: Vec<IpAddr> = want
            .iter()
            .filter(|a| recheck || !self.written.contains_key(a) || self.waiting.contains(a))
            .copied()
            .collect();
        let mut plan = Plan {
            remove: self
                .written
                .keys()
                .filter(|a| !want.contains(a))
                .copied()
                .collect(),
            ..Default::default()
        };
        if !todo.is_empty() {
            let mut found = self.resolve(&todo).await?;
            // Pods nobody talked to yet: probe them, give the kernel a moment, look once more.
            let unresolved: Vec<(IpAddr, routes::NextHop)> = found
                .iter()
                .filter_map(|(ip, l)| match l {
                    Lookup::NoNeighbour(hop) => Some((*ip, *hop)),
                    _ => None,
                })
                .collect();
            if !unresolved.is_empty() {
                let nl = self.netlink()?;
                for (_, hop) in &unresolved {
                    probe(&nl, *hop).await;
                }
                let unresolved: Vec<IpAddr> = unresolved.iter().map(|(ip, _)| *ip).collect();
                tokio::time::sleep(PROBE_WAIT).await;
                let again: BTreeMap<IpAddr, Lookup> =
                    self.resolve(&unresolved).await?.into_iter().collect();
                for (ip, lookup) in &mut found {
                    if let Some(l) = again.get(ip) {
                        *lookup = *l;
                    }
                }
            }
            for (ip, lookup) in found {
                match lookup {
                    Lookup::Found(ep) => {
                        self.waiting.remove(&ip);
                        if self.written.get(&ip) != Some(&ep) {
                            plan.set.push((ip, ep));
                        }
                    }
                    Lookup::NoNeighbour(hop) => {
                        if self.waiting.insert(ip) {
                            info!(%ip, ifindex = hop.ifindex, "local endpoint: neighbour not resolved yet; probing again on the next tick");
                        }
                        probe(&self.netlink()?, hop).await;
                    }
                    Lookup::NoRoute => {
                        if self.waiting.insert(ip) {
                            warn!(%ip, "local endpoint: no route to the pod through an Ethernet device; retrying");
                        }
                    }
                }
            }
        }
        if plan.is_empty() {
            return Ok(plan);
        }
        write(&plan)?;
        for a in &plan.remove {
            self.written.remove(a);
        }
        for (a, ep) in &plan.set {
            self.written.insert(*a, *ep);
        }
        Ok(plan)
    }

    /// The netlink socket, opened on first use (in the node loop's runtime).
    fn netlink(&mut self) -> Result<Netlink> {
        if self.netlink.is_none() {
            self.netlink = Some(Netlink::connect()?);
        }
        Ok(self.netlink.clone().expect("just set"))
    }

    async fn resolve(&mut self, ips: &[IpAddr]) -> Result<Vec<(IpAddr, Lookup)>> {
        let nl = self.netlink()?;
        let mut macs: HashMap<u32, Option<[u8; 6]>> = HashMap::new();
        // Neighbour tables (IPv4, IPv6), dumped at most once per family and sync.
        type Table = HashMap<(u32, IpAddr), [u8; 6]>;
        let mut tables: [Option<Table>; 2] = [None, None];
        let mut out = Vec::with_capacity(ips.len());
        for &ip in ips {
            let Some(hop) = route(&nl, ip).await? else {
                out.push((ip, Lookup::NoRoute));
                continue;
            };
            let node_mac = match macs.get(&hop.ifindex) {
                Some(m) => *m,
                None => {
                    let m = links::mac(&nl, hop.ifindex).await?;
                    macs.insert(hop.ifindex, m);
                    m
                }
            };
            let Some(node_mac) = node_mac else {
                // Not a veth or other Ethernet device: frames cannot be redirected to it.
                out.push((ip, Lookup::NoRoute));
                continue;
            };
            let family = Family::of(hop.address);
            let table = &mut tables[usize::from(family == Family::V6)];
            if table.is_none() {
                *table = Some(neighbours::dump(&nl, family).await?);
            }
            let known = table
                .as_ref()
                .and_then(|t| t.get(&(hop.ifindex, hop.address)));
            let lookup = match known {
                Some(mac) => Lookup::Found(Endpoint {
                    ifindex: hop.ifindex,
                    flags: 0,
                    mac: *mac,
                    node_mac,
                }),
                None => Lookup::NoNeighbour(hop),
            };
            out.push((ip, lookup));
        }
        Ok(out)
    }
}
