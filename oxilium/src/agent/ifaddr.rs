//! Addresses of an interface (getifaddrs), to pick the LB's own SNAT / tunnel source address.
use std::{
    ffi::CStr,
    net::{Ipv4Addr, Ipv6Addr},
};

/// The first global IPv4 and IPv6 addresses of `iface`.
pub fn addresses(iface: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let mut v4 = None;
    let mut v6 = None;
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return (None, None);
        }
        let mut p = head;
        while !p.is_null() {
            let ifa = &*p;
            p = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || CStr::from_ptr(ifa.ifa_name).to_bytes() != iface.as_bytes()
            {
                continue;
            }
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET if v4.is_none() => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    v4 = Some(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)));
                }
                libc::AF_INET6 if v6.is_none() => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let a = Ipv6Addr::from(sa.sin6_addr.s6_addr);
                    // Link-local addresses cannot source routed traffic.
                    if a.segments()[0] & 0xffc0 != 0xfe80 {
                        v6 = Some(a);
                    }
                }
                _ => {}
            }
        }
        libc::freeifaddrs(head);
    }
    (v4, v6)
}
