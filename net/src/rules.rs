//! Policy routing for marked packets (`ip rule add fwmark M/MASK lookup T` with `ip route add
//! local default dev lo table T`): what makes the stack deliver a packet whose destination is
//! not the node's to a local socket (the L7 proxies' transparent redirect, see abi::proxy).
use crate::{Error, Netlink, Result, links};
use netlink_packet_route::{
    route::{RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute},
};
use rtnetlink::RouteMessageBuilder;
use std::net::{Ipv4Addr, Ipv6Addr};

const EEXIST: i32 = 17;

/// Makes sure that IPv4 and IPv6 packets with `mark` under `mask` are looked up in `table`, and
/// that `table` delivers every destination locally. Idempotent: existing entries are kept.
pub async fn ensure_local_delivery(
    nl: &Netlink,
    mark: u32,
    mask: u32,
    table: u32,
    priority: u32,
) -> Result<()> {
    let lo = links::index(nl, "lo").await?.ok_or(Error::Refused {
        what: "finding the loopback device",
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    for v6 in [false, true] {
        let mut rule = nl
            .handle()
            .rule()
            .add()
            .fw_mark(mark)
            .table_id(table)
            .priority(priority)
            .action(RuleAction::ToTable);
        rule.message_mut()
            .attributes
            .push(RuleAttribute::FwMask(mask));
        let r = if v6 {
            rule.v6().execute().await
        } else {
            rule.v4().execute().await
        };
        ok_if_exists(r, "adding the proxy's fwmark rule")?;
        let route = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
                .output_interface(lo)
                .table_id(table)
                .kind(RouteType::Local)
                .scope(RouteScope::Host)
                .build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .output_interface(lo)
                .table_id(table)
                .kind(RouteType::Local)
                .scope(RouteScope::Host)
                .build()
        };
        let r = nl.handle().route().add(route).replace().execute().await;
        ok_if_exists(r, "adding the proxy's local route")?;
    }
    Ok(())
}

fn ok_if_exists(r: Result<(), rtnetlink::Error>, what: &'static str) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) => match Error::from_netlink(what, e) {
            e if e.errno() == Some(EEXIST) => Ok(()),
            e => Err(e),
        },
    }
}
