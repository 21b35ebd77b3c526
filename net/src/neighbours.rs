//! Neighbours (`ip neigh`): the resolved link-layer addresses of next hops, and asking the kernel
//! to resolve one.
use crate::{Error, Family, Netlink, Result, routes};
use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState,
};
use std::{collections::HashMap, net::IpAddr};

pub use crate::routes::NextHop;

/// Every neighbour of a family with a usable MAC (not incomplete or failed): (ifindex, address) →
/// MAC.
pub async fn dump(nl: &Netlink, family: Family) -> Result<HashMap<(u32, IpAddr), [u8; 6]>> {
    let mut out = HashMap::new();
    let mut dump = nl
        .handle()
        .neighbours()
        .get()
        .set_address_family(family.netlink())
        .execute();
    while let Some(n) = dump
        .try_next()
        .await
        .map_err(|e| Error::from_netlink("neighbour dump", e))?
    {
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
                NeighbourAttribute::LinkLayerAddress(m) => lladdr = crate::mac(m),
                _ => {}
            }
        }
        if let (Some(d), Some(m)) = (dst, lladdr) {
            out.insert((n.header.ifindex, d), m);
        }
    }
    Ok(out)
}

/// Makes the kernel resolve the next hop towards `dst` (found with [`routes::get`]) ahead of the
/// first packet that needs it, and returns that next hop; None when there is nothing to resolve
/// (not a unicast route, e.g. a local address). No route is an error.
pub async fn resolve(nl: &Netlink, dst: IpAddr) -> Result<Option<NextHop>> {
    let Some(hop) = routes::get(nl, dst).await? else {
        return Ok(None);
    };
    resolve_on(nl, hop).await?;
    Ok(Some(hop))
}

/// `ip neigh replace ADDR dev DEV use`: an `RTM_NEWNEIGH` with `NTF_USE`, which creates the entry
/// if needed and starts its resolution (an ARP request or a neighbour solicitation) when the
/// address is not known yet, as a packet to it would. The request returns at once; the answer
/// lands in the neighbour table (see [`dump`]). The state is left to the kernel: no
/// `NUD_PERMANENT`, so the entry ages and is collected like any learnt one.
pub async fn resolve_on(nl: &Netlink, hop: NextHop) -> Result<()> {
    nl.handle()
        .neighbours()
        .add(hop.ifindex, hop.address)
        .state(NeighbourState::None)
        .flags(NeighbourFlags::Use)
        .replace()
        .execute()
        .await
        .map_err(|e| Error::from_netlink("neighbour resolution", e))
}
