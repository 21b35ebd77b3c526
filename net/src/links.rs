//! Links (`ip link`): a device's index and MAC, and the veths whose peer lives in another network
//! namespace (the host side of a pod's veth, as a CNI plugin leaves it).
use crate::{Error, Netlink, Result};
use futures::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};

/// A device of the namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Link {
    pub name: String,
    pub index: u32,
}

/// `ENODEV`: the kernel's answer to a request about a device that does not exist.
const ENODEV: i32 = 19;

/// The index of the device called `name`; None when there is none.
pub async fn index(nl: &Netlink, name: &str) -> Result<Option<u32>> {
    let mut links = nl
        .handle()
        .link()
        .get()
        .match_name(name.to_string())
        .execute();
    match links.try_next().await {
        Ok(l) => Ok(l.map(|l| l.header.index)),
        Err(e) => match Error::from_netlink("link lookup", e) {
            e if e.errno() == Some(ENODEV) => Ok(None),
            e => Err(e),
        },
    }
}

/// The MAC of a device; None for a device without an Ethernet address (or none at all).
pub async fn mac(nl: &Netlink, index: u32) -> Result<Option<[u8; 6]>> {
    let mut links = nl.handle().link().get().match_index(index).execute();
    let link = match links.try_next().await {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(None),
        Err(e) => {
            return match Error::from_netlink("link lookup", e) {
                e if e.errno() == Some(ENODEV) => Ok(None),
                e => Err(e),
            };
        }
    };
    Ok(link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => crate::mac(m),
        _ => None,
    }))
}

/// The peer's ifindex of a veth (IFLA_LINK: an index in the peer's namespace); None for a
/// device without one.
pub async fn peer_index(nl: &Netlink, index: u32) -> Result<Option<u32>> {
    let mut links = nl.handle().link().get().match_index(index).execute();
    let link = match links.try_next().await {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(None),
        Err(e) => {
            return match Error::from_netlink("link lookup", e) {
                e if e.errno() == Some(ENODEV) => Ok(None),
                e => Err(e),
            };
        }
    };
    Ok(link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    }))
}

/// The name of the device with index `index`; None when there is none.
pub async fn name(nl: &Netlink, index: u32) -> Result<Option<String>> {
    let mut links = nl.handle().link().get().match_index(index).execute();
    match links.try_next().await {
        Ok(l) => Ok(l.and_then(|l| {
            l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })
        })),
        Err(e) => match Error::from_netlink("link lookup", e) {
            e if e.errno() == Some(ENODEV) => Ok(None),
            e => Err(e),
        },
    }
}

/// Every veth of the namespace whose peer is in another network namespace (the link carries
/// `IFLA_LINK_NETNSID`). Veth pairs with both ends here are left out.
pub async fn veths_with_peer_elsewhere(nl: &Netlink) -> Result<Vec<Link>> {
    let mut links = nl.handle().link().get().execute();
    let mut out = Vec::new();
    while let Some(l) = links
        .try_next()
        .await
        .map_err(|e| Error::from_netlink("listing links", e))?
    {
        if let Some(l) = veth_with_peer_elsewhere(&l) {
            out.push(l);
        }
    }
    Ok(out)
}

fn veth_with_peer_elsewhere(l: &LinkMessage) -> Option<Link> {
    let mut veth = false;
    let mut other_ns = false;
    let mut name = None;
    for a in &l.attributes {
        match a {
            LinkAttribute::LinkInfo(infos) => {
                veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            LinkAttribute::LinkNetNsId(_) => other_ns = true,
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            _ => {}
        }
    }
    if !(veth && other_ns) {
        return None;
    }
    Some(Link {
        name: name?,
        index: l.header.index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.attributes = attributes;
        m
    }

    #[test]
    fn a_veth_is_a_pod_device_only_with_its_peer_elsewhere() {
        let veth = || LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]);
        let name = || LinkAttribute::IfName("p1".into());
        assert_eq!(
            veth_with_peer_elsewhere(&message(vec![
                name(),
                veth(),
                LinkAttribute::LinkNetNsId(0)
            ])),
            Some(Link {
                name: "p1".into(),
                index: 7
            })
        );
        assert_eq!(
            veth_with_peer_elsewhere(&message(vec![name(), veth()])),
            None
        );
        let dummy = LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Dummy)]);
        assert_eq!(
            veth_with_peer_elsewhere(&message(vec![name(), dummy, LinkAttribute::LinkNetNsId(0)])),
            None
        );
    }
}
