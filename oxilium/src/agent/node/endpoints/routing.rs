//! `--routing`: how pod traffic reaches the pods of other nodes. A task follows the Node objects
//! (every whole view of the source hands it all of them) and the kernel's route events, and keeps
//! the main table (and in tunnel mode the VXLAN device's FDB and neighbours) as the Nodes say,
//! through [`net::routing`] and [`net::tunnel`]:
//! - native: `PODCIDR via INTERNALIP` per other node and family;
//! - tunnel: `PODCIDR via INTERNALIP dev oxi_vxlan onlink`, the gateway resolved by a permanent
//!   neighbour entry to the peer's tunnel MAC, whose FDB entry names the peer's underlay address.
//!
//! A route of the agent deleted or changed by anyone is written again at once (route events, no
//! polling); routes of other protocols are never touched.
use super::veth::ROUTE_PROTOCOL;
use crate::bpf::masq::MasqExceptions;
use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use k8s::NodeInfo;
use net::routing::{NodeRoute, RouteEvents};
use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};
use tokio::sync::watch;
use tracing::{info, warn};

/// The tunnel device.
pub const TUNNEL_DEVICE: &str = "oxi_vxlan";
/// How long route events are gathered before the table is synced (a burst costs one sync).
const SETTLE: Duration = Duration::from_millis(50);
/// A sync that failed (a gateway unreachable for now) is retried after this long.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoutingMode {
    /// A route to every other node's pod CIDRs via its InternalIP (the nodes share an L2 or
    /// the network routes pod CIDRs).
    Native,
    /// VXLAN between the nodes' InternalIPs (UDP 8472); pods get the tunnel's MTU.
    Tunnel,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RoutingFlags {
    /// --cni: how pod traffic reaches other nodes' pods.
    #[arg(long, value_enum, default_value = "native")]
    pub routing: RoutingMode,
    /// --routing tunnel: the MTU of the network between the nodes; the tunnel device and the
    /// pods' veths get it minus the VXLAN overhead (50 bytes).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1280..=65535))]
    pub underlay_mtu: u32,
    /// --cni: the pods' traffic to destinations outside the cluster (no Node's pod CIDR or
    /// address) leaves the --device(s) with the node's address (SNAT in BPF).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub masquerade: bool,
    /// --cni: a destination CIDR the pods reach without masquerade (repeat).
    #[arg(long = "non-masquerade-cidr", value_name = "CIDR")]
    pub non_masquerade_cidrs: Vec<String>,
}

impl RoutingFlags {
    /// `--non-masquerade-cidr`, parsed.
    pub fn exceptions(&self) -> Result<Vec<IpNetwork>> {
        self.non_masquerade_cidrs
            .iter()
            .map(|c| {
                cni::ipam::parse_cidr(c).map_err(|e| anyhow::anyhow!("--non-masquerade-cidr: {e}"))
            })
            .collect()
    }

    /// The largest MTU a pod may have (tunnel mode), or None.
    pub fn pod_mtu_cap(&self) -> Option<u32> {
        (self.routing == RoutingMode::Tunnel).then(|| self.underlay_mtu - net::tunnel::OVERHEAD_V4)
    }
}

/// The running route manager: hand it the Nodes.
pub struct Router {
    nodes: watch::Sender<Option<Vec<NodeInfo>>>,
}

impl Router {
    /// Starts the task (tunnel mode: the device is made first). `node`: this node's name;
    /// `pools`: its `--pod-cidr`s (never masqueraded, like every Node's pod CIDRs); `l7`: the L7
    /// proxies run (`--l7-proxy`), so the tunnel device gets their program.
    pub async fn start(
        flags: &RoutingFlags,
        node: String,
        pin_dir: &std::path::Path,
        pools: &[IpNetwork],
        l7: bool,
    ) -> Result<Router> {
        let mut except = flags.exceptions()?;
        except.extend_from_slice(pools);
        let masq = MasqExceptions::open(pin_dir).context("the masquerade exceptions map")?;
        let nl = net::Netlink::connect()?;
        let tunnel = match flags.routing {
            RoutingMode::Native => {
                // An earlier run's tunnel goes, with the routes through it (the sync then writes
                // the native ones).
                if let Some(i) = net::links::index(&nl, TUNNEL_DEVICE).await? {
                    net::pod::delete_link(&nl, i).await?;
                    info!(
                        device = TUNNEL_DEVICE,
                        "tunnel device of an earlier run removed"
                    );
                }
                crate::bpf::nodeport::l7_on_tunnel(pin_dir, TUNNEL_DEVICE, false)?;
                None
            }
            RoutingMode::Tunnel => {
                let mtu = flags.pod_mtu_cap().expect("tunnel");
                let i = net::tunnel::ensure_device(&nl, TUNNEL_DEVICE, None, mtu)
                    .await
                    .with_context(|| format!("making the tunnel device {TUNNEL_DEVICE}"))?;
                // Packets out of the tunnel to a pod whose L7 proxy holds their flow (docs/l7.md).
                crate::bpf::nodeport::l7_on_tunnel(pin_dir, TUNNEL_DEVICE, l7)
                    .with_context(|| format!("the L7 program on {TUNNEL_DEVICE}"))?;
                Some(i)
            }
        };
        let events = RouteEvents::subscribe().context("subscribing to route events")?;
        let (tx, rx) = watch::channel(None);
        let mode = flags.routing;
        tokio::spawn(async move {
            let mut t = Task {
                nl,
                node,
                tunnel,
                mine: BTreeSet::new(),
                want: Vec::new(),
                tunnel_mac: None,
                masq,
                except,
                masq_want: BTreeSet::new(),
                masq_have: None,
            };
            t.run(rx, events).await;
        });
        info!(?mode, "pod routing started");
        Ok(Router { nodes: tx })
    }

    /// The Nodes as the source has them now (all of them, this one included).
    pub fn set_nodes(&self, nodes: Vec<NodeInfo>) {
        self.nodes.send_replace(Some(nodes));
    }
}

struct Task {
    nl: net::Netlink,
    node: String,
    /// Tunnel mode: the device's index.
    tunnel: Option<u32>,
    /// Route keys the agent wrote (a route changed by hand there is put back).
    mine: BTreeSet<(IpAddr, u8)>,
    want: Vec<NodeRoute>,
    tunnel_mac: Option<[u8; 6]>,
    masq: MasqExceptions,
    /// `--non-masquerade-cidr` and `--pod-cidr`.
    except: Vec<IpNetwork>,
    /// The destinations never masqueraded: `except`, every Node's pod CIDRs and addresses.
    masq_want: BTreeSet<IpNetwork>,
    /// What the map holds (None: not written by this run yet).
    masq_have: Option<BTreeSet<IpNetwork>>,
}

impl Task {
    async fn run(
        &mut self,
        mut rx: watch::Receiver<Option<Vec<NodeInfo>>>,
        mut events: RouteEvents,
    ) {
        let mut due: Option<Instant> = None;
        let mut peers = Vec::new();
        loop {
            let sleep = async {
                match due {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let nodes = rx.borrow_and_update().clone().unwrap_or_default();
                    let (want, p) = self.wanted(&nodes);
                    self.want = want;
                    peers = p;
                    due = Some(Instant::now());
                }
                ev = events.next() => {
                    let Some(ev) = ev else {
                        // The subscription ended (e.g. its socket overran): a new one, and a
                        // sync for whatever was missed meanwhile.
                        warn!("route events stopped; subscribing again");
                        match RouteEvents::subscribe() {
                            Ok(e) => events = e,
                            Err(e) => {
                                warn!("route events: {e}; routes are no longer repaired");
                                return;
                            }
                        }
                        due = Some(Instant::now());
                        continue;
                    };
                    let ours = ev.protocol == ROUTE_PROTOCOL && ev.has_gateway;
                    let wanted = self.want.iter().any(|r| r.key() == (ev.dst, ev.prefix));
                    if (ours || wanted) && due.is_none() {
                        due = Some(Instant::now() + SETTLE);
                    }
                }
                _ = sleep => {
                    due = match self.sync(&peers).await {
                        Ok(()) => None,
                        Err(e) => {
                            warn!("pod routes: {e:#}; retrying");
                            Some(Instant::now() + RETRY)
                        }
                    };
                }
            }
        }
    }

    /// The routes (and tunnel peers) the Nodes ask for.
    fn wanted(&mut self, nodes: &[NodeInfo]) -> (Vec<NodeRoute>, Vec<net::tunnel::Peer>) {
        let mut routes = Vec::new();
        let mut peers = Vec::new();
        self.masq_want = self.except.iter().copied().collect();
        for n in nodes {
            for a in &n.addresses {
                self.masq_want
                    .insert(IpNetwork::new(*a, if a.is_ipv4() { 32 } else { 128 }).expect("full"));
            }
            self.masq_want.extend(
                n.pod_cidrs
                    .iter()
                    .filter_map(|c| cni::ipam::parse_cidr(c).ok())
                    .map(|c| IpNetwork::new(c.network(), c.prefix()).expect("valid")),
            );
        }
        for n in nodes {
            let underlay = underlay_of(n);
            if n.name == self.node {
                self.tunnel_mac = underlay.map(net::tunnel::mac_of);
                continue;
            }
            let mut gateways = Vec::new();
            for c in &n.pod_cidrs {
                let Ok(net) = cni::ipam::parse_cidr(c) else {
                    warn!(node = %n.name, cidr = %c, "Node spec.podCIDRs: not a CIDR; no route");
                    continue;
                };
                let Some(gw) = n
                    .internal_addresses
                    .iter()
                    .find(|a| a.is_ipv4() == net.is_ipv4())
                    .copied()
                else {
                    warn!(node = %n.name, cidr = %c, "no InternalIP of this family; no route");
                    continue;
                };
                gateways.push(gw);
                routes.push(NodeRoute {
                    dst: net.network(),
                    prefix: net.prefix(),
                    gateway: gw,
                    oif: self.tunnel,
                });
            }
            if let Some(u) = underlay {
                peers.push(net::tunnel::Peer {
                    underlay: u,
                    mac: net::tunnel::mac_of(u),
                    gateways,
                });
            }
        }
        routes.sort();
        (routes, peers)
    }

    async fn sync(&mut self, peers: &[net::tunnel::Peer]) -> Result<()> {
        if self.masq_have.as_ref() != Some(&self.masq_want) {
            let (w, r) = self.masq.sync(&self.masq_want)?;
            if w + r > 0 {
                info!(written = w, removed = r, "masquerade exceptions");
            }
            self.masq_have = Some(self.masq_want.clone());
        }
        if let Some(i) = self.tunnel {
            // The tunnel state first: a route's gateway resolves from its first packet.
            if let Some(mac) = self.tunnel_mac {
                net::tunnel::ensure_device(&self.nl, TUNNEL_DEVICE, Some(mac), 0).await?;
            }
            net::tunnel::sync_peers(&self.nl, i, peers).await?;
        }
        let r = net::routing::sync(&self.nl, ROUTE_PROTOCOL, &self.want, &mut self.mine).await?;
        for a in &r.added {
            info!(route = %a, "pod route written");
        }
        for (d, p) in &r.removed {
            info!(route = %format!("{d}/{p}"), "pod route removed");
        }
        for (d, p) in &r.conflicts {
            warn!(route = %format!("{d}/{p}"), "a route of another protocol holds this pod CIDR; left alone");
        }
        if let Some((route, e)) = r.failed.first() {
            anyhow::bail!("{} route(s) refused, first {route}: {e}", r.failed.len());
        }
        Ok(())
    }
}

/// Where a node's tunnel packets go: its first IPv4 InternalIP, else its first InternalIP.
fn underlay_of(n: &NodeInfo) -> Option<IpAddr> {
    n.internal_addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(n.internal_addresses.first())
        .copied()
}
