//! Routes (`ip route get ADDR`): where the kernel would send a packet.
use crate::{Error, Family, Netlink, Result};
use futures::TryStreamExt;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use std::net::IpAddr;

/// The neighbour a packet is handed to: on device `ifindex`, the gateway of the route or, on a
/// directly connected network, the destination itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NextHop {
    pub ifindex: u32,
    pub address: IpAddr,
}

/// `ip route get DST`: a FIB lookup (a request with a destination is answered with one route).
/// None when the route is not a unicast route out of a device (a local address, a blackhole, a
/// broadcast address, ...). No route at all is the kernel refusing the request
/// ([`Error::Refused`], e.g. `ENETUNREACH`).
pub async fn get(nl: &Netlink, dst: IpAddr) -> Result<Option<NextHop>> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = Family::of(dst).netlink();
    msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    let mut routes = nl.handle().route().get(msg).execute();
    let Some(route) = routes
        .try_next()
        .await
        .map_err(|e| Error::from_netlink("route lookup", e))?
    else {
        return Ok(None);
    };
    Ok(next_hop(&route, dst))
}

fn next_hop(route: &RouteMessage, dst: IpAddr) -> Option<NextHop> {
    if route.header.kind != RouteType::Unicast {
        return None;
    }
    let mut oif = None;
    let mut address = dst;
    for a in &route.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(g) => {
                if let Some(g) = ip(g) {
                    address = g;
                }
            }
            _ => {}
        }
    }
    Some(NextHop {
        ifindex: oif?,
        address,
    })
}

fn ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(kind: RouteType, attributes: Vec<RouteAttribute>) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.kind = kind;
        m.attributes = attributes;
        m
    }

    #[test]
    fn the_next_hop_is_the_gateway_or_the_destination() {
        let dst: IpAddr = "192.0.2.7".parse().unwrap();
        let gw: IpAddr = "10.0.0.2".parse().unwrap();
        let direct = route(RouteType::Unicast, vec![RouteAttribute::Oif(3)]);
        assert_eq!(
            next_hop(&direct, dst),
            Some(NextHop {
                ifindex: 3,
                address: dst
            })
        );
        let via = route(
            RouteType::Unicast,
            vec![
                RouteAttribute::Gateway(RouteAddress::from(gw)),
                RouteAttribute::Oif(3),
            ],
        );
        assert_eq!(
            next_hop(&via, dst),
            Some(NextHop {
                ifindex: 3,
                address: gw
            })
        );
        let local = route(RouteType::Local, vec![RouteAttribute::Oif(1)]);
        assert_eq!(next_hop(&local, dst), None);
        assert_eq!(next_hop(&route(RouteType::Unicast, vec![]), dst), None);
    }
}
