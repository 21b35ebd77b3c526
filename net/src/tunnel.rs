//! The VXLAN device of tunnel routing and its static forwarding state: per peer node, an FDB
//! entry (the peer's tunnel MAC → its underlay address) and permanent neighbour entries (the
//! peer's inner gateway addresses → the peer's tunnel MAC). No learning, no multicast: the agent
//! writes every entry from the Node objects ([`sync_peers`]).
use crate::{Error, Family, Netlink, Result};
use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    link::LinkAttribute,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
};
use rtnetlink::{LinkUnspec, LinkVxlan};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

/// The UDP port of the tunnel (the Linux VXLAN default).
pub const PORT: u16 = 8472;
/// The VXLAN network id of the pod network.
pub const VNI: u32 = 2;
/// Bytes a VXLAN packet adds over an IPv4 underlay (outer IPv4 20, UDP 8, VXLAN 8, inner
/// Ethernet 14).
pub const OVERHEAD_V4: u32 = 50;
/// Over an IPv6 underlay (outer IPv6 40).
pub const OVERHEAD_V6: u32 = 70;

/// The tunnel MAC of a node, from its underlay address: locally administered, unicast
/// `0a:58:` + the address' last four bytes (the whole of an IPv4 address).
pub fn mac_of(underlay: IpAddr) -> [u8; 6] {
    let b: [u8; 4] = match underlay {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => v6.octets()[12..].try_into().expect("four bytes"),
    };
    [0x0a, 0x58, b[0], b[1], b[2], b[3]]
}

/// Makes the device `name` (or takes over the one an earlier run made), up, with `mac` and
/// `mtu` when given (an MTU of 0 leaves it). Returns its index.
pub async fn ensure_device(
    nl: &Netlink,
    name: &str,
    mac: Option<[u8; 6]>,
    mtu: u32,
) -> Result<u32> {
    if crate::links::index(nl, name).await?.is_none() {
        let msg = LinkVxlan::new(name, VNI).port(PORT).learning(false).build();
        nl.handle()
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| Error::from_netlink("creating the VXLAN device", e))?;
    }
    let index = crate::links::index(nl, name).await?.ok_or(Error::Refused {
        what: "the VXLAN device",
        source: std::io::Error::from_raw_os_error(19),
    })?;
    if let Some(m) = mac
        && crate::links::mac(nl, index).await? != Some(m)
    {
        // The address of a running device cannot change: down, address, then up below.
        for msg in [
            LinkUnspec::new_with_index(index).down().build(),
            LinkUnspec::new_with_index(index)
                .address(m.to_vec())
                .build(),
        ] {
            nl.handle()
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| Error::from_netlink("setting the VXLAN device's MAC", e))?;
        }
    }
    let mut b = LinkUnspec::new_with_index(index).up();
    if mtu != 0 {
        b = b.mtu(mtu);
    }
    let msg = b.build();
    nl.handle()
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| Error::from_netlink("configuring the VXLAN device", e))?;
    Ok(index)
}

/// The MTU of a device.
pub async fn mtu(nl: &Netlink, index: u32) -> Result<Option<u32>> {
    let mut links = nl.handle().link().get().match_index(index).execute();
    let l = links
        .try_next()
        .await
        .map_err(|e| Error::from_netlink("link lookup", e))?;
    Ok(l.and_then(|l| {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
    }))
}

/// One peer node as the tunnel sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// Where its VXLAN packets go.
    pub underlay: IpAddr,
    /// Its tunnel MAC ([`mac_of`] its underlay address).
    pub mac: [u8; 6],
    /// The gateways the routes to its pod CIDRs name (its InternalIPs, one per family).
    pub gateways: Vec<IpAddr>,
}

/// Brings the device's FDB and neighbour entries to `peers`: the wanted ones written
/// (replacing), the others removed. Returns how many entries were removed.
pub async fn sync_peers(nl: &Netlink, index: u32, peers: &[Peer]) -> Result<usize> {
    let mut fdb_want = BTreeMap::new();
    let mut neigh_want = BTreeMap::new();
    for p in peers {
        fdb_want.insert(p.mac, p.underlay);
        for g in &p.gateways {
            neigh_want.insert(*g, p.mac);
        }
    }
    let mut removed = 0;
    // FDB entries of the device.
    let mut stale = Vec::new();
    let mut dump = nl
        .handle()
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(n) = dump
        .try_next()
        .await
        .map_err(|e| Error::from_netlink("FDB dump", e))?
    {
        if n.header.ifindex != index {
            continue;
        }
        let (mac, dst) = fdb_of(&n.attributes);
        let keep = matches!((mac, dst), (Some(m), Some(d)) if fdb_want.get(&m) == Some(&d));
        if !keep && mac.is_some_and(|m| m != [0; 6]) {
            stale.push(n);
        }
    }
    for n in stale {
        if nl.handle().neighbours().del(n).execute().await.is_ok() {
            removed += 1;
        }
    }
    for (mac, dst) in &fdb_want {
        nl.handle()
            .neighbours()
            .add_bridge(index, mac)
            .destination(*dst)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::from_netlink("adding an FDB entry", e))?;
    }
    // Neighbour entries of the device.
    let mut have = BTreeSet::new();
    for f in [Family::V4, Family::V6] {
        for ((i, ip), mac) in crate::neighbours::dump(nl, f).await? {
            if i == index {
                have.insert((ip, mac));
            }
        }
    }
    for (ip, mac) in &have {
        if neigh_want.get(ip) != Some(mac) {
            let mut m = netlink_packet_route::neighbour::NeighbourMessage::default();
            m.header.family = Family::of(*ip).netlink();
            m.header.ifindex = index;
            m.attributes.push(NeighbourAttribute::Destination(match ip {
                IpAddr::V4(v) => NeighbourAddress::Inet(*v),
                IpAddr::V6(v) => NeighbourAddress::Inet6(*v),
            }));
            if nl.handle().neighbours().del(m).execute().await.is_ok() {
                removed += 1;
            }
        }
    }
    for (ip, mac) in &neigh_want {
        if !have.contains(&(*ip, *mac)) {
            crate::pod::add_permanent_neighbour(nl, index, *ip, *mac).await?;
        }
    }
    Ok(removed)
}

fn fdb_of(attrs: &[NeighbourAttribute]) -> (Option<[u8; 6]>, Option<IpAddr>) {
    let mut mac = None;
    let mut dst = None;
    for a in attrs {
        match a {
            NeighbourAttribute::LinkLayerAddress(m) => mac = m.as_slice().try_into().ok(),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                dst = Some(IpAddr::V4(*v))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                dst = Some(IpAddr::V6(*v))
            }
            _ => {}
        }
    }
    (mac, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_macs_are_local_unicast_and_follow_the_address() {
        let m = mac_of("10.200.0.3".parse().unwrap());
        assert_eq!(m, [0x0a, 0x58, 10, 200, 0, 3]);
        assert_eq!(m[0] & 1, 0, "unicast");
        assert_eq!(m[0] & 2, 2, "locally administered");
        assert_eq!(
            mac_of("fd00::1:2:3:4".parse().unwrap()),
            [0x0a, 0x58, 0, 3, 0, 4]
        );
    }
}
