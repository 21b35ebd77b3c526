//! What a pod's network needs from rtnetlink: a veth pair with one end made directly inside the
//! pod's network namespace, addresses, device and gateway routes, permanent neighbour entries,
//! and running requests inside another network namespace ([`in_netns`]).
use crate::{Error, Netlink, Result};
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags},
    link::{InfoData, InfoKind, InfoVeth},
    neighbour::NeighbourState,
    route::{RouteProtocol, RouteScope},
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::{
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

/// `EEXIST`, `ENOENT`, `ESRCH`, `ENODEV`: answers that idempotent requests accept.
const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;

/// Runs `f` with a netlink socket of the network namespace at `path` (a bind mount such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`), on a thread of its own that entered it (the
/// calling thread's namespace is never changed).
pub fn in_netns<T, F, Fut>(path: &Path, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T>>,
{
    let file = std::fs::File::open(path).map_err(|source| Error::Namespace {
        path: path.into(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                Error::Namespace {
                    path: path.into(),
                    source: e.into(),
                }
            })?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::Socket)?;
            rt.block_on(async move { f(Netlink::connect()?).await })
        })
        .join()
        .expect("namespace thread panicked")
    })
}

/// Opens a network namespace file (for [`add_veth`]).
pub fn open_netns(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|source| Error::Namespace {
        path: PathBuf::from(path),
        source,
    })
}

/// Makes a veth pair: `host` in this namespace, `peer` created directly in the namespace of
/// `netns` (so its name never clashes with one here); both down, with `mtu` when given.
pub async fn add_veth(
    nl: &Netlink,
    host: &str,
    peer: &str,
    netns: &std::fs::File,
    mtu: Option<u32>,
) -> Result<()> {
    let mut p = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_string())
        .setns_by_fd(netns.as_raw_fd());
    let mut h = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth).name(host);
    if let Some(m) = mtu {
        p = p.mtu(m);
        h = h.mtu(m);
    }
    let msg = h
        .set_info_data(InfoData::Veth(InfoVeth::Peer(p.build())))
        .build();
    nl.handle()
        .link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| Error::from_netlink("creating a veth pair", e))
}

/// Sets a device up.
pub async fn set_up(nl: &Netlink, index: u32) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index).up().build();
    nl.handle()
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| Error::from_netlink("setting a device up", e))
}

/// Deletes a device (a veth takes its peer with it); Ok(false) when there was none.
pub async fn delete_link(nl: &Netlink, index: u32) -> Result<bool> {
    match nl.handle().link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) => match Error::from_netlink("deleting a device", e) {
            e if e.errno() == Some(ENODEV) => Ok(false),
            e => Err(e),
        },
    }
}

/// Adds `ip/prefix` to a device (IPv6 without duplicate address detection: the pool owns it).
pub async fn add_address(nl: &Netlink, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
    let mut req = nl.handle().address().add(index, ip, prefix).replace();
    if ip.is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute()
        .await
        .map_err(|e| Error::from_netlink("adding an address", e))
}

/// The addresses of a device.
pub async fn addresses(nl: &Netlink, index: u32) -> Result<Vec<IpAddr>> {
    use futures::TryStreamExt;
    let mut s = nl
        .handle()
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut out = Vec::new();
    while let Some(m) = s
        .try_next()
        .await
        .map_err(|e| Error::from_netlink("listing addresses", e))?
    {
        for a in m.attributes {
            if let AddressAttribute::Address(ip) = a {
                out.push(ip);
            }
        }
    }
    Ok(out)
}

/// A route to `dst/prefix` out of device `index`: through `gateway` (on link: no covering route
/// to it needed), or directly (scope link) without one. `protocol` marks who owns it.
pub async fn add_route(
    nl: &Netlink,
    dst: IpAddr,
    prefix: u8,
    index: u32,
    gateway: Option<IpAddr>,
    protocol: u8,
) -> Result<()> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst, prefix)
        .map_err(bad)?
        .output_interface(index)
        .protocol(RouteProtocol::from(protocol));
    b = match gateway {
        Some(g) => b.gateway(g).map_err(bad)?.onlink(),
        None => b.scope(RouteScope::Link),
    };
    match nl.handle().route().add(b.build()).replace().execute().await {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::from_netlink("adding a route", e)),
    }
}

fn bad(e: impl std::fmt::Display) -> Error {
    Error::Refused {
        what: "building a route",
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
    }
}

/// A permanent neighbour entry `ip` → `mac` on device `index` (replacing one).
pub async fn add_permanent_neighbour(
    nl: &Netlink,
    index: u32,
    ip: IpAddr,
    mac: [u8; 6],
) -> Result<()> {
    nl.handle()
        .neighbours()
        .add(index, ip)
        .link_layer_address(&mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(|e| Error::from_netlink("adding a neighbour", e))
}

/// Whether an error only says the thing is already there / already gone.
pub fn is_exists(e: &Error) -> bool {
    e.errno() == Some(EEXIST)
}

pub fn is_gone(e: &Error) -> bool {
    matches!(e.errno(), Some(ENOENT | ESRCH | ENODEV))
}
