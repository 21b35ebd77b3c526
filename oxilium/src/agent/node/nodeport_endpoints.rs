//! The local endpoints of the NodePort datapath (`OXI_NP_ENDPOINTS`): for every pod of this node
//! that backs an external frontend, the device the node reaches it through and the two MACs a
//! redirected frame carries. Found with rtnetlink, as `ip route get`, `ip link` and `ip neigh`
//! would: a FIB lookup of the pod address gives the output device (and a gateway, if the pod is
//! behind one), the device's MAC is the frame's source, and the neighbour entry of the pod (or of
//! the gateway) on that device is its destination.
//!
//! A pod whose neighbour is not known yet gets one empty UDP datagram on its discard port (the
//! kernel then resolves it) and is looked up again after a moment, then on every later sync. Only differences are
//! written: a sync resolves the addresses that are new or still waiting (every wanted address
//! when asked to re-check, e.g. after a pod's veth was recreated with the same address).
use abi::nodeport::Endpoint;
use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    link::LinkAttribute,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr, UdpSocket},
};
use tracing::{info, warn};

/// How a pod address resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lookup {
    Found(Endpoint),
    /// Routed through `ifindex`, but the next hop's MAC is not known (yet).
    NoNeighbour {
        ifindex: u32,
    },
    /// Not reachable through a device of its own (no route, or a local address).
    NoRoute,
}

/// rtnetlink queries of the agent's network namespace.
struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a netlink socket; its connection runs as a task of the current tokio runtime.
    fn new() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// `ip route get ADDR`: the output device and the gateway, if any. A request with a
    /// destination is a FIB lookup, answered with one route.
    async fn route(&self, ip: IpAddr) -> Result<Option<(u32, IpAddr)>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(ip);
        msg.header.destination_prefix_length = if ip.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(ip)));
        let mut routes = self.handle.route().get(msg).execute();
        let route = match routes.try_next().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            // ENETUNREACH and friends: no route is an answer, not a failure.
            Err(rtnetlink::Error::NetlinkError(e)) => {
                warn!(%ip, "route lookup: {e}");
                return Ok(None);
            }
            Err(e) => return Err(e).context("route lookup"),
        };
        if route.header.kind != RouteType::Unicast {
            return Ok(None);
        }
        let mut oif = None;
        let mut next_hop = ip;
        for a in &route.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(g) => {
                    if let Some(g) = route_ip(g) {
                        next_hop = g;
                    }
                }
                _ => {}
            }
        }
        Ok(oif.map(|i| (i, next_hop)))
    }

    /// The MAC of a device (None for devices without an Ethernet address).
    async fn link_mac(&self, ifindex: u32) -> Result<Option<[u8; 6]>> {
        let mut links = self.handle.link().get().match_index(ifindex).execute();
        let Some(link) = links.try_next().await.context("link lookup")? else {
            return Ok(None);
        };
        Ok(link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(m) => mac(m),
            _ => None,
        }))
    }

    /// Every resolved neighbour of a family: (ifindex, address) → MAC.
    async fn neighbours(&self, af: AddressFamily) -> Result<HashMap<(u32, IpAddr), [u8; 6]>> {
        let mut out = HashMap::new();
        let mut dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(af)
            .execute();
        while let Some(n) = dump.try_next().await.context("neighbour dump")? {
            if matches!(
                n.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            ) {
                continue;
            }
            let mut dst = None;
            let mut lladdr = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        dst = Some(IpAddr::V4(*v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        dst = Some(IpAddr::V6(*v6))
                    }
                    NeighbourAttribute::LinkLayerAddress(m) => lladdr = mac(m),
                    _ => {}
                }
            }
            if let (Some(d), Some(m)) = (dst, lladdr) {
                out.insert((n.header.ifindex, d), m);
            }
        }
        Ok(out)
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn mac(b: &[u8]) -> Option<[u8; 6]> {
    let m: [u8; 6] = b.try_into().ok()?;
    (m != [0; 6]).then_some(m)
}

/// Makes the kernel resolve `ip`'s neighbour: one empty datagram to its discard port.
fn poke(ip: IpAddr) {
    let any: IpAddr = if ip.is_ipv4() {
        [0u8; 4].into()
    } else {
        [0u8; 16].into()
    };
    if let Ok(s) = UdpSocket::bind(SocketAddr::new(any, 0)) {
        let _ = s.send_to(&[], SocketAddr::new(ip, 9));
    }
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
            let unresolved: Vec<IpAddr> = found
                .iter()
                .filter(|(_, l)| matches!(l, Lookup::NoNeighbour { .. }))
                .map(|(ip, _)| *ip)
                .collect();
            if !unresolved.is_empty() {
                unresolved.iter().for_each(|ip| poke(*ip));
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
                    Lookup::NoNeighbour { ifindex } => {
                        if self.waiting.insert(ip) {
                            info!(%ip, ifindex, "local endpoint: neighbour not resolved yet; probing again on the next tick");
                        }
                        poke(ip);
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

    async fn resolve(&mut self, ips: &[IpAddr]) -> Result<Vec<(IpAddr, Lookup)>> {
        if self.netlink.is_none() {
            self.netlink = Some(Netlink::new()?);
        }
        let nl = self.netlink.as_ref().expect("just set");
        let mut macs: HashMap<u32, Option<[u8; 6]>> = HashMap::new();
        // Neighbour tables (IPv4, IPv6), dumped at most once per family and sync.
        type Table = HashMap<(u32, IpAddr), [u8; 6]>;
        let mut tables: [Option<Table>; 2] = [None, None];
        let mut out = Vec::with_capacity(ips.len());
        for &ip in ips {
            let Some((ifindex, next_hop)) = nl.route(ip).await? else {
                out.push((ip, Lookup::NoRoute));
                continue;
            };
            let node_mac = match macs.get(&ifindex) {
                Some(m) => *m,
                None => {
                    let m = nl.link_mac(ifindex).await?;
                    macs.insert(ifindex, m);
                    m
                }
            };
            let Some(node_mac) = node_mac else {
                // Not a veth or other Ethernet device: frames cannot be redirected to it.
                out.push((ip, Lookup::NoRoute));
                continue;
            };
            let table = &mut tables[usize::from(next_hop.is_ipv6())];
            if table.is_none() {
                *table = Some(nl.neighbours(family(next_hop)).await?);
            }
            let known = table.as_ref().and_then(|t| t.get(&(ifindex, next_hop)));
            let lookup = match known {
                Some(mac) => Lookup::Found(Endpoint {
                    ifindex,
                    flags: 0,
                    mac: *mac,
                    node_mac,
                }),
                None => Lookup::NoNeighbour { ifindex },
            };
            out.push((ip, lookup));
        }
        Ok(out)
    }
}
