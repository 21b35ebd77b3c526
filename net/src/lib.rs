//! The node's network configuration through rtnetlink: links, addresses, routes and neighbours of
//! the calling thread's network namespace, as `ip link`, `ip addr`, `ip route get` and `ip neigh`
//! would read or ask for them.
//!
//! Every function takes a [`Netlink`] connection. Requests are asynchronous: the connection runs
//! as a task of the tokio runtime it was opened in, and ends when the last [`Netlink`] is dropped.
pub mod addresses;
pub mod links;
pub mod neighbours;
pub mod pod;
pub mod qdisc;
pub mod routes;
pub mod routing;
pub mod rules;
pub mod tunnel;

use std::{io, net::IpAddr};

/// A netlink route socket of the network namespace of the thread that opened it.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens the socket (with strict checking: the kernel applies the filters of a dump request
    /// itself, or refuses the request) and spawns its connection on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) =
            rtnetlink::new_connection_with_strict_check().map_err(Error::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }
}

/// An address family of the IP neighbour and route tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn netlink(self) -> netlink_packet_route::AddressFamily {
        match self {
            Family::V4 => netlink_packet_route::AddressFamily::Inet,
            Family::V6 => netlink_packet_route::AddressFamily::Inet6,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// A network namespace could not be opened or entered.
    #[error("network namespace {path}: {source}")]
    Namespace {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel answered the request with an error (e.g. no route: `ENETUNREACH`).
    #[error("{what}: {source}")]
    Refused {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The connection failed, or its answer could not be read.
    #[error("{what}: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

impl Error {
    fn from_netlink(what: &'static str, e: rtnetlink::Error) -> Error {
        match e {
            rtnetlink::Error::NetlinkError(m) => Error::Refused {
                what,
                source: m.to_io(),
            },
            source => Error::Netlink { what, source },
        }
    }

    /// The kernel's errno, when it refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A six-byte hardware address, or None for a missing or all-zero one (devices without an
/// Ethernet address).
fn mac(b: &[u8]) -> Option<[u8; 6]> {
    let m: [u8; 6] = b.try_into().ok()?;
    (m != [0; 6]).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_six_non_zero_bytes() {
        assert_eq!(mac(&[2, 0, 0, 0, 0, 1]), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(mac(&[0; 6]), None);
        assert_eq!(mac(&[1, 2, 3, 4]), None);
    }

    #[test]
    fn refusals_keep_the_errno() {
        const ENETUNREACH: i32 = 101;
        let mut m = rtnetlink::packet_core::ErrorMessage::default();
        m.code = std::num::NonZeroI32::new(-ENETUNREACH);
        let e = Error::from_netlink("route lookup", rtnetlink::Error::NetlinkError(m));
        assert_eq!(e.errno(), Some(ENETUNREACH));
        assert!(e.to_string().starts_with("route lookup: "), "{e}");
    }
}
