//! On-the-wire header layouts (only the fields oxilium reads or writes).

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
/// Offset of the checksum field inside the TCP and UDP headers.
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;
/// Offset of the flags byte (CWR ECE URG ACK PSH RST SYN FIN) inside the TCP header.
pub const TCP_FLAGS_OFF: usize = 13;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub proto: u16,
}

#[repr(C)]
pub struct VlanHdr {
    pub tci: u16,
    /// Network byte order: the encapsulated protocol.
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_tc_flow: [u8; 4],
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The first bytes of an IPv6 extension header (hop-by-hop, routing, destination options).
#[repr(C)]
pub struct Ipv6ExtHdr {
    pub nexthdr: u8,
    pub len: u8,
}

#[repr(C)]
pub struct Ipv6FragHdr {
    pub nexthdr: u8,
    pub reserved: u8,
    /// Network byte order: offset (13 bits) << 3 | M flag.
    pub frag_off: u16,
    pub id: u32,
}

/// The ports at the start of a TCP or UDP header.
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// The first bytes of an ICMP / ICMPv6 header.
#[repr(C)]
pub struct IcmpHdr {
    pub ty: u8,
    pub code: u8,
}
