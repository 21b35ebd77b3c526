//! A pod's veth pair, made and removed with rtnetlink ([`net::pod`]).
//!
//! Addressing convention: the pod interface holds its address(es) as /32 and /128; its default
//! routes go through the link-local gateways [`GATEWAY4`] and [`GATEWAY6`], which a permanent
//! neighbour entry resolves to the host-side veth's MAC (no ARP or NDP for the gateway, no
//! address on the host side, nothing taken from the pool). The host side holds a /32 (/128)
//! route to each pod address, marked with [`ROUTE_PROTOCOL`].
use anyhow::{Context, Result};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

pub const GATEWAY4: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1));
pub const GATEWAY6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));
/// The routing protocol id of the routes the agent owns (`ip route ... proto 211`).
pub const ROUTE_PROTOCOL: u8 = 211;

/// What a pod's veth is once made.
#[derive(Clone, Debug)]
pub struct Made {
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
}

/// The host-side name of an attachment's veth: `oxi` + 11 hex digits of a hash of the container
/// id and interface name (stable across restarts, 14 bytes).
pub fn host_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("oxi{:011x}", h & 0xfff_ffff_ffff)
}

/// Whether a device is the host side of an endpoint (by its name, see [`host_name`]).
pub fn is_endpoint_device(name: &str) -> bool {
    name.len() == 14 && name.starts_with("oxi") && name[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Makes the pair (an earlier one of the same host name is removed first), configures the pod
/// side inside `netns` and the host side here.
pub async fn make(
    nl: &net::Netlink,
    host: &str,
    netns: &Path,
    ifname: &str,
    addresses: &[IpAddr],
    mtu: Option<u32>,
) -> Result<Made> {
    if let Some(i) = net::links::index(nl, host).await? {
        net::pod::delete_link(nl, i).await?;
    }
    let ns = net::pod::open_netns(netns)?;
    net::pod::add_veth(nl, host, ifname, &ns, mtu)
        .await
        .with_context(|| format!("creating {host} with {ifname} in {}", netns.display()))?;
    let host_ifindex = net::links::index(nl, host)
        .await?
        .with_context(|| format!("{host} vanished"))?;
    let host_mac = net::links::mac(nl, host_ifindex)
        .await?
        .with_context(|| format!("{host} has no MAC"))?;
    let made = async {
        net::pod::set_up(nl, host_ifindex).await?;
        let pod_mac = configure_pod(netns, ifname, addresses, host_mac)?;
        for ip in addresses {
            net::pod::add_route(nl, *ip, full(ip), host_ifindex, None, ROUTE_PROTOCOL).await?;
        }
        anyhow::Ok(pod_mac)
    }
    .await;
    match made {
        Ok(pod_mac) => Ok(Made {
            host_ifindex,
            host_mac,
            pod_mac,
        }),
        Err(e) => {
            let _ = net::pod::delete_link(nl, host_ifindex).await;
            Err(e)
        }
    }
}

fn full(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// Inside the pod: lo and IFNAME up, the addresses, the gateway neighbours and default routes.
fn configure_pod(
    netns: &Path,
    ifname: &str,
    addresses: &[IpAddr],
    host_mac: [u8; 6],
) -> Result<[u8; 6]> {
    let name = ifname.to_string();
    let addresses = addresses.to_vec();
    let r = tokio::task::block_in_place(|| {
        net::pod::in_netns(netns, move |nl| async move {
            let ifname = name;
            if let Some(lo) = net::links::index(&nl, "lo").await? {
                net::pod::set_up(&nl, lo).await?;
            }
            let i = net::links::index(&nl, &ifname)
                .await?
                .ok_or(net::Error::Refused {
                    what: "the pod interface",
                    source: std::io::Error::from_raw_os_error(19),
                })?;
            let mac = net::links::mac(&nl, i).await?.unwrap_or_default();
            for ip in &addresses {
                net::pod::add_address(&nl, i, *ip, full(ip)).await?;
            }
            net::pod::set_up(&nl, i).await?;
            for ip in &addresses {
                let gw = if ip.is_ipv4() { GATEWAY4 } else { GATEWAY6 };
                net::pod::add_permanent_neighbour(&nl, i, gw, host_mac).await?;
                let any = if ip.is_ipv4() {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                };
                net::pod::add_route(&nl, any, 0, i, Some(gw), 4).await?;
            }
            Ok(mac)
        })
    });
    r.with_context(|| format!("configuring {ifname} in {}", netns.display()))
}

/// The pod interface's addresses as the pod sees them (CHECK); None when it is missing.
pub fn pod_addresses(netns: &Path, ifname: &str) -> Result<Option<Vec<IpAddr>>> {
    let ifname = ifname.to_string();
    let r = tokio::task::block_in_place(|| {
        net::pod::in_netns(netns, move |nl| async move {
            match net::links::index(&nl, &ifname).await? {
                Some(i) => Ok(Some(net::pod::addresses(&nl, i).await?)),
                None => Ok(None),
            }
        })
    });
    Ok(r?)
}

/// Deletes the host side (the pod side goes with it); Ok(false) when it was gone.
pub async fn remove(nl: &net::Netlink, host: &str) -> Result<bool> {
    match net::links::index(nl, host).await? {
        Some(i) => Ok(net::pod::delete_link(nl, i).await?),
        None => Ok(false),
    }
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_and_short() {
        let a = host_name("abc", "eth0");
        assert_eq!(a, host_name("abc", "eth0"));
        assert_ne!(a, host_name("abc", "eth1"));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("oxi"));
        assert_eq!(mac_string(&[2, 0, 0xab, 0, 0, 1]), "02:00:ab:00:00:01");
    }
}
