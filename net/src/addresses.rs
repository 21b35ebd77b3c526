//! Addresses (`ip addr show dev DEV`): the addresses a device's traffic can be sourced from.
use crate::{Error, Netlink, Result, links};
use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One address of each family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

/// The first IPv4 address of the device called `name` and its first IPv6 address that is not
/// link-local (a link-local address cannot source routed traffic), in the kernel's order (as
/// getifaddrs(3) lists them). A device that does not exist has none.
///
/// One `RTM_GETADDR` dump, which the kernel filters to the device's index.
pub async fn first_routable(nl: &Netlink, name: &str) -> Result<Addresses> {
    let Some(index) = links::index(nl, name).await? else {
        return Ok(Addresses::default());
    };
    let mut req = nl.handle().address().get().set_link_index_filter(index);
    req.message_mut().header.index = index;
    let mut dump = req.execute();
    let mut out = Addresses::default();
    while let Some(m) = dump
        .try_next()
        .await
        .map_err(|e| Error::from_netlink("address dump", e))?
    {
        match address(&m) {
            Some(IpAddr::V4(a)) if out.v4.is_none() => out.v4 = Some(a),
            Some(IpAddr::V6(a)) if out.v6.is_none() && !is_link_local(a) => out.v6 = Some(a),
            _ => {}
        }
    }
    Ok(out)
}

/// The device's own address of an `RTM_NEWADDR`: `IFA_LOCAL` where present (on a point-to-point
/// device `IFA_ADDRESS` is the peer's), else `IFA_ADDRESS`.
fn address(m: &AddressMessage) -> Option<IpAddr> {
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(a) => Some(*a),
        _ => None,
    });
    local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(a) => Some(*a),
            _ => None,
        })
    })
}

/// fe80::/10.
fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_address_wins_over_the_peer() {
        let mut m = AddressMessage::default();
        m.attributes
            .push(AddressAttribute::Address("10.0.0.2".parse().unwrap()));
        assert_eq!(address(&m), Some("10.0.0.2".parse().unwrap()));
        m.attributes
            .push(AddressAttribute::Local("10.0.0.1".parse().unwrap()));
        assert_eq!(address(&m), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn link_local_is_fe80_slash_10() {
        assert!(is_link_local("fe80::1".parse().unwrap()));
        assert!(is_link_local("febf::1".parse().unwrap()));
        assert!(!is_link_local("fec0::1".parse().unwrap()));
        assert!(!is_link_local("fd00::1".parse().unwrap()));
    }
}
