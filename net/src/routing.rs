//! The route manager: routes to other nodes' pod CIDRs that the agent owns. Every route it makes
//! carries the agent's routing protocol id and a gateway (the pod routes of the same protocol
//! have none), so it can tell its routes from everyone else's; [`sync`] brings the main table to
//! the wanted set touching only those, and [`RouteEvents`] reports the route changes made by
//! anyone (RTNLGRP_IPV4_ROUTE / RTNLGRP_IPV6_ROUTE) so that a route deleted or changed by hand is
//! put back at once.
use crate::{Error, Family, Netlink, Result};
use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::{
    RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
};
use rtnetlink::{MulticastGroup, RouteMessageBuilder};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

/// A route to a pod CIDR: `dst/prefix via gateway [dev oif onlink]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeRoute {
    pub dst: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
    /// Out of this device with the gateway on-link (a tunnel device); None: the kernel resolves
    /// the gateway through its own routes (native routing).
    pub oif: Option<u32>,
}

impl NodeRoute {
    /// The key of the route in the main table (metric 0).
    pub fn key(&self) -> (IpAddr, u8) {
        (self.dst, self.prefix)
    }

    fn matches(&self, have: &Held) -> bool {
        have.gateway == Some(self.gateway)
            && have.protocol_ours
            && self.oif.is_none_or(|o| have.oif == Some(o))
    }
}

impl std::fmt::Display for NodeRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} via {}", self.dst, self.prefix, self.gateway)?;
        if let Some(o) = self.oif {
            write!(f, " dev #{o} onlink")?;
        }
        Ok(())
    }
}

/// A route of the main table as dumped.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    protocol_ours: bool,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    message: RouteMessage,
}

/// What a [`sync`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: Vec<NodeRoute>,
    pub removed: Vec<(IpAddr, u8)>,
    /// Wanted keys held by a route of another protocol the agent never replaced: left alone.
    pub conflicts: Vec<(IpAddr, u8)>,
    /// Routes the kernel refused (e.g. an unreachable gateway), with why.
    pub failed: Vec<(NodeRoute, String)>,
}

impl SyncReport {
    pub fn changed(&self) -> bool {
        !self.added.is_empty() || !self.removed.is_empty()
    }
}

/// Brings the main table to `want`: a wanted route missing or different is written (replacing a
/// route of the same key only if it is the agent's, or `mine` says the agent made it: a route
/// changed by hand); a route of `protocol` with a gateway that is not wanted is deleted. Keys the
/// agent wrote are added to `mine` (and forgotten once deleted).
pub async fn sync(
    nl: &Netlink,
    protocol: u8,
    want: &[NodeRoute],
    mine: &mut BTreeSet<(IpAddr, u8)>,
) -> Result<SyncReport> {
    let mut held = BTreeMap::new();
    for f in [Family::V4, Family::V6] {
        dump(nl, f, protocol, &mut held).await?;
    }
    let mut report = SyncReport::default();
    let wanted: BTreeSet<(IpAddr, u8)> = want.iter().map(NodeRoute::key).collect();
    for (key, h) in &held {
        if h.protocol_ours && h.gateway.is_some() && !wanted.contains(key) {
            match nl.handle().route().del(h.message.clone()).execute().await {
                Ok(()) => report.removed.push(*key),
                Err(e) => {
                    let e = Error::from_netlink("deleting a route", e);
                    if !crate::pod::is_gone(&e) {
                        return Err(e);
                    }
                }
            }
            mine.remove(key);
        }
    }
    for r in want {
        let key = r.key();
        match held.get(&key) {
            Some(h) if r.matches(h) => {
                mine.insert(key);
                continue;
            }
            Some(h) if !h.protocol_ours && !mine.contains(&key) => {
                report.conflicts.push(key);
                continue;
            }
            _ => {}
        }
        match write(nl, r, protocol).await {
            Ok(()) => {
                mine.insert(key);
                report.added.push(*r);
            }
            Err(e) => report.failed.push((*r, e.to_string())),
        }
    }
    Ok(report)
}

/// Writes (replaces) one route.
async fn write(nl: &Netlink, r: &NodeRoute, protocol: u8) -> Result<()> {
    let bad = |e: String| Error::Refused {
        what: "building a route",
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    };
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst, r.prefix)
        .map_err(|e| bad(e.to_string()))?
        .protocol(RouteProtocol::from(protocol))
        .gateway(r.gateway)
        .map_err(|e| bad(e.to_string()))?;
    if let Some(o) = r.oif {
        b = b.output_interface(o).onlink();
    }
    b = b.scope(RouteScope::Universe);
    nl.handle()
        .route()
        .add(b.build())
        .replace()
        .execute()
        .await
        .map_err(|e| Error::from_netlink("adding a route", e))
}

/// The main table's unicast routes of a family, by key (metric 0 only).
async fn dump(
    nl: &Netlink,
    family: Family,
    protocol: u8,
    out: &mut BTreeMap<(IpAddr, u8), Held>,
) -> Result<()> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family.netlink();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    let mut s = nl.handle().route().get(msg).execute();
    while let Some(m) = s
        .try_next()
        .await
        .map_err(|e| Error::from_netlink("route dump", e))?
    {
        if m.header.table != RouteHeader::RT_TABLE_MAIN || m.header.kind != RouteType::Unicast {
            continue;
        }
        let Some(info) = parse(&m) else { continue };
        if info.priority != 0 {
            continue;
        }
        out.insert(
            (info.dst, info.prefix),
            Held {
                protocol_ours: u8::from(m.header.protocol) == protocol,
                gateway: info.gateway,
                oif: info.oif,
                message: m,
            },
        );
    }
    Ok(())
}

struct Parsed {
    dst: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    priority: u32,
}

fn parse(m: &RouteMessage) -> Option<Parsed> {
    let mut p = Parsed {
        dst: match m.header.address_family {
            netlink_packet_route::AddressFamily::Inet => IpAddr::from([0u8; 4]),
            netlink_packet_route::AddressFamily::Inet6 => IpAddr::from([0u8; 16]),
            _ => return None,
        },
        prefix: m.header.destination_prefix_length,
        gateway: None,
        oif: None,
        priority: 0,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => p.dst = ip(d)?,
            RouteAttribute::Gateway(g) => p.gateway = ip(g),
            RouteAttribute::Oif(i) => p.oif = Some(*i),
            RouteAttribute::Priority(x) => p.priority = *x,
            _ => {}
        }
    }
    Some(p)
}

fn ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A route change anyone made in the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteEvent {
    pub deleted: bool,
    pub dst: IpAddr,
    pub prefix: u8,
    pub protocol: u8,
    pub has_gateway: bool,
}

/// A subscription to the route groups of the calling thread's network namespace.
pub struct RouteEvents {
    rx: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    _handle: rtnetlink::Handle,
}

impl RouteEvents {
    /// Subscribes to RTNLGRP_IPV4_ROUTE and RTNLGRP_IPV6_ROUTE (spawns the connection on the
    /// current tokio runtime).
    pub fn subscribe() -> Result<RouteEvents> {
        let (conn, handle, rx) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ])
        .map_err(Error::Socket)?;
        tokio::spawn(conn);
        Ok(RouteEvents {
            rx,
            _handle: handle,
        })
    }

    /// The next change of a main-table route; None when the socket closed.
    pub async fn next(&mut self) -> Option<RouteEvent> {
        loop {
            let (msg, _) = self.rx.next().await?;
            let (deleted, m) = match msg.payload {
                rtnetlink::packet_core::NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewRoute(m),
                ) => (false, m),
                rtnetlink::packet_core::NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::DelRoute(m),
                ) => (true, m),
                _ => continue,
            };
            if m.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let Some(p) = parse(&m) else { continue };
            return Some(RouteEvent {
                deleted,
                dst: p.dst,
                prefix: p.prefix,
                protocol: m.header.protocol.into(),
                has_gateway: p.gateway.is_some(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_matches_only_its_own_kind() {
        let r = NodeRoute {
            dst: "10.244.2.0".parse().unwrap(),
            prefix: 24,
            gateway: "10.0.0.2".parse().unwrap(),
            oif: None,
        };
        let mut h = Held {
            protocol_ours: true,
            gateway: Some("10.0.0.2".parse().unwrap()),
            oif: Some(4),
            message: RouteMessage::default(),
        };
        assert!(r.matches(&h), "native: any device");
        assert!(!NodeRoute { oif: Some(5), ..r }.matches(&h));
        assert!(NodeRoute { oif: Some(4), ..r }.matches(&h));
        h.gateway = Some("10.0.0.3".parse().unwrap());
        assert!(!r.matches(&h), "changed gateway");
        h.gateway = Some(r.gateway);
        h.protocol_ours = false;
        assert!(!r.matches(&h), "someone else's");
        assert_eq!(r.to_string(), "10.244.2.0/24 via 10.0.0.2");
    }
}
