//! Sockets of the transparent redirect: the listener a redirected flow is assigned to, and the
//! proxy's marked connection to the real destination.
//!
//! A listener is bound to `127.0.0.1:PORT` (abi::proxy::LISTEN_V4: not reachable from pods by
//! address) with `IP_TRANSPARENT`, which lets its accepted sockets use the flow's original
//! destination as their own address: the client's connection ends at the proxy while the client
//! still talks to the address it chose, and `local_addr()` of an accepted socket is that original
//! destination.
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn listen_addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(abi::proxy::LISTEN_V4), port))
}

/// The transparent TCP listener of proxy port `port`.
pub fn tcp(port: u16) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_ip_transparent_v4(true)?;
    s.set_mark(abi::proxy::MARK_LISTENER)?;
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(listen_addr(port)))?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// The transparent UDP socket of proxy port `port` (datagrams assigned to it keep their original
/// destination, read with `IP_RECVORIGDSTADDR`).
pub fn udp(port: u16) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_ip_transparent_v4(true)?;
    s.set_mark(abi::proxy::MARK_LISTENER)?;
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(listen_addr(port)))?;
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
