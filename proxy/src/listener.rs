//! Sockets of the transparent redirect: the listener a redirected flow is assigned to, and the
//! proxy's marked connection to the real destination.
//!
//! A listener is bound to `127.0.0.1:PORT` (abi::proxy::LISTEN_V4) for IPv4 flows or `[::1]:PORT`
//! (abi::proxy::LISTEN_V6, `IPV6_V6ONLY`) for IPv6 flows — loopback, not reachable from pods by
//! address — with `IP_TRANSPARENT`, which lets its accepted sockets use the flow's original
//! destination as their own address: the client's connection ends at the proxy while the client
//! still talks to the address it chose, and `local_addr()` of an accepted socket is that original
//! destination.
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// The IP family of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// Where the endpoint programs look the listener of `port` up.
    pub fn listen_addr(self, port: u16) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::from((Ipv4Addr::from(abi::proxy::LISTEN_V4), port)),
            Family::V6 => SocketAddr::from((Ipv6Addr::from(abi::proxy::LISTEN_V6), port)),
        }
    }
}

/// A transparent, marked socket of proxy port `port`, not yet bound.
fn socket(family: Family, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let (domain, v6) = match family {
        Family::V4 => (Domain::IPV4, false),
        Family::V6 => (Domain::IPV6, true),
    };
    let s = Socket::new(domain, ty, Some(proto))?;
    s.set_reuse_address(true)?;
    if v6 {
        s.set_only_v6(true)?;
        s.set_ip_transparent_v6(true)?;
    } else {
        s.set_ip_transparent_v4(true)?;
    }
    s.set_mark(abi::proxy::MARK_LISTENER)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// The transparent TCP listener of proxy port `port`.
pub fn tcp(port: u16, family: Family) -> io::Result<TcpListener> {
    let s = socket(family, Type::STREAM, Protocol::TCP)?;
    s.bind(&SockAddr::from(family.listen_addr(port)))?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// The transparent UDP socket of proxy port `port`: datagrams assigned to it keep their
/// original destination, reported with each datagram (`IP_RECVORIGDSTADDR` /
/// `IPV6_RECVORIGDSTADDR`, read by [`crate::dns`]).
pub fn udp(port: u16, family: Family) -> io::Result<UdpSocket> {
    let s = socket(family, Type::DGRAM, Protocol::UDP)?;
    let (level, opt) = match family {
        Family::V4 => (libc::SOL_IP, libc::IP_RECVORIGDSTADDR),
        Family::V6 => (libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR),
    };
    crate::dns::socket::setsockopt_int(&s, level, opt)?;
    s.bind(&SockAddr::from(family.listen_addr(port)))?;
    UdpSocket::from_std(s.into())
}

/// A TCP connection to `to` whose packets carry `mark` (`SO_MARK`; 0 = none): how the endpoint
/// programs tell the proxy's upstream connections from the flows they redirect.
pub async fn connect_marked(to: SocketAddr, mark: u32) -> io::Result<TcpStream> {
    let domain = if to.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if mark != 0 {
        s.set_mark(mark)?;
    }
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    let s = tokio::net::TcpSocket::from_std_stream(s.into());
    s.connect(to).await
}
