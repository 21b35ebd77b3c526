//! The proxy's sockets. Plain mode: ordinary UDP and TCP listeners. Transparent mode (the datapath
//! hands the pod's DNS flows over with socket assignment or TPROXY): the listeners are
//! `IP_TRANSPARENT`, a UDP datagram's original destination comes from `IP_RECVORIGDSTADDR` /
//! `IPV6_RECVORIGDSTADDR`, the reply leaves from that address (a transparent socket bound to it), and
//! a TCP connection's original destination is its local address.
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::{TcpListener, UdpSocket};

fn domain(a: &SocketAddr) -> Domain {
    if a.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn set_transparent(s: &Socket, v6: bool) -> io::Result<()> {
    if v6 {
        s.set_ip_transparent_v6(true)
    } else {
        s.set_ip_transparent_v4(true)
    }
}

/// Sets an integer socket option to 1.
pub(crate) fn setsockopt_int(s: &Socket, level: i32, opt: i32) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The UDP listener.
pub fn udp_listener(addr: SocketAddr, transparent: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(domain(&addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if transparent {
        let v6 = addr.is_ipv6();
        set_transparent(&s, v6)?;
        if v6 {
            setsockopt_int(&s, libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR)?;
        } else {
            setsockopt_int(&s, libc::SOL_IP, libc::IP_RECVORIGDSTADDR)?;
        }
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// The TCP listener.
pub fn tcp_listener(addr: SocketAddr, transparent: bool) -> io::Result<TcpListener> {
    let s = Socket::new(domain(&addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if transparent {
        set_transparent(&s, addr.is_ipv6())?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// A UDP socket that sends from `from`, an address that need not be local (transparent), to reply
/// to a pod as the server it asked.
pub fn reply_socket(from: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(domain(&from), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    set_transparent(&s, from.is_ipv6())?;
    s.set_nonblocking(true)?;
    s.bind(&from.into())?;
    UdpSocket::from_std(s.into())
}

/// A datagram: its length, source, and original destination when the socket reports it.
pub struct Datagram {
    pub len: usize,
    pub src: SocketAddr,
    pub orig_dst: Option<SocketAddr>,
}

/// Receives one datagram with its original destination (`IP_RECVORIGDSTADDR` control message).
pub async fn recv(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Datagram> {
    sock.async_io(Interest::READABLE, || recvmsg(sock, buf))
        .await
}

fn recvmsg(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Datagram> {
    // SAFETY: recvmsg into buffers we own, sized as told to the kernel; the control messages are
    // walked with the libc CMSG macros within `controllen`, and addresses read with their own size.
    unsafe {
        let mut src: libc::sockaddr_storage = zeroed();
        let mut control = [MaybeUninit::<u64>::uninit(); 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = (&raw mut src).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 16]>();
        let n = libc::recvmsg(sock.as_raw_fd(), &raw mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let src = sockaddr(&src).ok_or_else(|| io::Error::other("datagram without a source"))?;
        let mut orig_dst = None;
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
            if (level == libc::SOL_IP && ty == libc::IP_ORIGDSTADDR)
                || (level == libc::SOL_IPV6 && ty == libc::IPV6_ORIGDSTADDR)
            {
                let mut ss: libc::sockaddr_storage = zeroed();
                let len = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    .min(size_of::<libc::sockaddr_storage>());
                std::ptr::copy_nonoverlapping(libc::CMSG_DATA(c), (&raw mut ss).cast::<u8>(), len);
                orig_dst = sockaddr(&ss);
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
        Ok(Datagram {
            len: n as usize,
            src,
            orig_dst,
        })
    }
}

fn sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let v6 = SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            );
            // A v4 client of a dual-stack socket: report it as v4.
            Some(match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
                None => SocketAddr::V6(v6),
            })
        }
        _ => None,
    }
}
