//! Test packets, built and read with `etherparse` (independent of the datapath's parser and of
//! datapath/src/csum.rs): Ethernet with one optional 802.1Q tag, IPv4 with options, IPv6 with
//! extension headers, TCP with options, UDP, ICMP / ICMPv6, every length and checksum computed in
//! full; a decoder and a checksum verifier for what a program hands back.
//!
//! Deliberately broken packets (cut short, bad lengths, a wrong version nibble, a raw segment
//! behind a fragment) are not expressible as etherparse headers: the tests make them from these
//! well-formed ones by cutting or editing bytes, or with [`L4::raw`].
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, EtherType, Ethernet2Header, Icmpv4Header, Icmpv6Header, IpDscp,
    IpEcn, IpFragOffset, IpNumber, Ipv4Header, Ipv4HeaderSlice, Ipv6Extensions, Ipv6FlowLabel,
    Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, LinkSlice, NetSlice, SingleVlanHeader,
    SlicedPacket, TcpHeader, TcpHeaderSlice, TransportHeader, TransportSlice, UdpHeader,
    UdpHeaderSlice, VlanSlice,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub const TCP: u8 = IpNumber::TCP.0;
pub const UDP: u8 = IpNumber::UDP.0;
pub const ICMP: u8 = IpNumber::ICMP.0;
pub const ICMPV6: u8 = IpNumber::IPV6_ICMP.0;
pub const IPIP: u8 = IpNumber::IPV4.0;
pub const IPV6_IN_IP: u8 = IpNumber::IPV6.0;

/// An upper-layer segment; its checksum is filled in once the IP header is known.
#[derive(Clone, Debug)]
pub struct L4 {
    pub proto: u8,
    /// None: raw bytes (an inner packet for IP-in-IP, a later fragment, a cut header).
    header: Option<TransportHeader>,
    payload: Vec<u8>,
    /// False: the checksum field stays 0 (UDP over IPv4 without a checksum).
    checksum: bool,
}

impl L4 {
    /// Raw bytes of any protocol, carried as they are.
    pub fn raw(proto: u8, bytes: &[u8]) -> L4 {
        L4 {
            proto,
            header: None,
            payload: bytes.to_vec(),
            checksum: false,
        }
    }

    fn len(&self) -> usize {
        self.header.as_ref().map_or(0, |h| h.header_len()) + self.payload.len()
    }

    /// The segment's bytes with the checksum as it stands (0 before [`Ipv4::build`] /
    /// [`Ipv6::build`] fill it in): what a test cuts to make a short header.
    pub fn unsealed(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        if let Some(h) = &self.header {
            h.write(&mut out).unwrap();
        }
        out.extend_from_slice(&self.payload);
        out
    }

    fn seal_v4(mut self, ip: &Ipv4Header) -> Vec<u8> {
        if let Some(h) = &mut self.header
            && self.checksum
        {
            h.update_checksum_ipv4(ip, &self.payload).unwrap();
        }
        self.unsealed()
    }

    fn seal_v6(mut self, ip: &Ipv6Header) -> Vec<u8> {
        if let Some(h) = &mut self.header
            && self.checksum
        {
            h.update_checksum_ipv6(ip, &self.payload).unwrap();
        }
        self.unsealed()
    }
}

/// TCP (PSH|ACK) with the given options (a multiple of 4 bytes) and payload.
pub fn tcp(sport: u16, dport: u16, options: &[u8], payload: &[u8]) -> L4 {
    let mut h = TcpHeader::new(sport, dport, 0x1234_5678, 64240);
    h.acknowledgment_number = 0x9abc_def0;
    (h.psh, h.ack) = (true, true);
    h.set_options_raw(options).expect("TCP options");
    L4 {
        proto: TCP,
        header: Some(TransportHeader::Tcp(h)),
        payload: payload.to_vec(),
        checksum: true,
    }
}

/// MSS 1460, SACK permitted, timestamps, NOP, window scale 7: 20 bytes of common SYN options.
pub const TCP_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0, 1, 3, 3, 7,
];

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> L4 {
    let h = UdpHeader::without_ipv4_checksum(sport, dport, payload.len()).unwrap();
    L4 {
        proto: UDP,
        header: Some(TransportHeader::Udp(h)),
        payload: payload.to_vec(),
        checksum: true,
    }
}

/// UDP over IPv4 with no checksum (the field stays 0).
pub fn udp_no_checksum(sport: u16, dport: u16, payload: &[u8]) -> L4 {
    L4 {
        checksum: false,
        ..udp(sport, dport, payload)
    }
}

/// ICMP (v4) or ICMPv6 message: type, code, 4 bytes of type-specific data (zero), then the body
/// (for errors: the quoted packet).
pub fn icmp(v6: bool, ty: u8, code: u8, body: &[u8]) -> L4 {
    icmp_with(v6, ty, code, [0; 4], body)
}

/// An ICMP / ICMPv6 message with its 4 bytes of type-specific data (e.g. the next-hop MTU of
/// "fragmentation needed" in the last two, the MTU of "packet too big" in all four).
pub fn icmp_with(v6: bool, ty: u8, code: u8, data: [u8; 4], body: &[u8]) -> L4 {
    let [d0, d1, d2, d3] = data;
    let first = [ty, code, 0, 0, d0, d1, d2, d3];
    let (proto, header) = if v6 {
        let (h, _) = Icmpv6Header::from_slice(&first).unwrap();
        (ICMPV6, TransportHeader::Icmpv6(h))
    } else {
        let (h, _) = Icmpv4Header::from_slice(&first).unwrap();
        (ICMP, TransportHeader::Icmpv4(h))
    };
    L4 {
        proto,
        header: Some(header),
        payload: body.to_vec(),
        checksum: true,
    }
}

/// An IPv4 header description; `build` computes tot_len and the header checksum.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Options, a multiple of 4 bytes (ihl = 5 + len / 4).
    pub options: Vec<u8>,
    pub id: u16,
    /// Flags and fragment offset as on the wire (0x4000 = DF, 0x2000 = MF, offset in 8-byte units).
    pub frag: u16,
    pub ttl: u8,
    pub tos: u8,
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr) -> Ipv4 {
    Ipv4 {
        src,
        dst,
        options: Vec::new(),
        id: 0x4242,
        frag: 0x4000,
        ttl: 63,
        tos: 0,
    }
}

impl Ipv4 {
    pub fn build(&self, l4: L4) -> Vec<u8> {
        let mut h = Ipv4Header::new(
            0,
            self.ttl,
            IpNumber(l4.proto),
            self.src.octets(),
            self.dst.octets(),
        )
        .unwrap();
        h.dscp = IpDscp::try_new(self.tos >> 2).unwrap();
        h.ecn = IpEcn::try_new(self.tos & 3).unwrap();
        h.identification = self.id;
        h.dont_fragment = self.frag & 0x4000 != 0;
        h.more_fragments = self.frag & 0x2000 != 0;
        h.fragment_offset = IpFragOffset::try_new(self.frag & 0x1fff).unwrap();
        h.options = self.options.as_slice().try_into().expect("IPv4 options");
        h.set_payload_len(l4.len()).unwrap();
        h.header_checksum = h.calc_header_checksum();
        let body = l4.seal_v4(&h);
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }
}

/// IPv6 extension headers the builders can put in front of the upper layer (written in the
/// order of RFC 8200 §4.1, whatever the order of the list).
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop options (next header 0) of `8 * (1 + len)` bytes, PadN filled.
    HopByHop(u8),
    /// Destination options (60).
    DestOpts(u8),
    /// Fragment header (44): offset in 8-byte units, more-fragments flag.
    Fragment { offset: u16, more: bool },
}

#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub ext: Vec<Ext>,
    pub hop_limit: u8,
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr) -> Ipv6 {
    Ipv6 {
        src,
        dst,
        ext: Vec::new(),
        hop_limit: 63,
    }
}

/// An options header of `8 * (1 + len)` bytes holding one PadN option.
fn padded(len: u8) -> Ipv6RawExtHeader {
    let n = 8 * (1 + len as usize);
    let mut options = vec![0u8; n - 2];
    options[..2].copy_from_slice(&[1, (n - 4) as u8]);
    Ipv6RawExtHeader::new_raw(IpNumber(0), &options).unwrap()
}

impl Ipv6 {
    pub fn build(&self, l4: L4) -> Vec<u8> {
        let mut exts = Ipv6Extensions::default();
        for e in &self.ext {
            match *e {
                Ext::HopByHop(len) => exts.hop_by_hop_options = Some(padded(len)),
                Ext::DestOpts(len) => exts.destination_options = Some(padded(len)),
                Ext::Fragment { offset, more } => {
                    let offset = IpFragOffset::try_new(offset).unwrap();
                    exts.fragment = Some(Ipv6FragmentHeader::new(
                        IpNumber(0),
                        offset,
                        more,
                        0xdead_beef,
                    ));
                }
            }
        }
        let first = exts.set_next_headers(IpNumber(l4.proto));
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: (exts.header_len() + l4.len()) as u16,
            next_header: first,
            hop_limit: self.hop_limit,
            source: self.src.octets(),
            destination: self.dst.octets(),
        };
        let body = l4.seal_v6(&h);
        let mut out = h.to_bytes().to_vec();
        exts.write(&mut out, first).unwrap();
        out.extend_from_slice(&body);
        out
    }
}

/// An Ethernet frame client → LB around an IP packet (ethertype from the IP version), with an
/// optional 802.1Q tag (TCI).
pub fn ether(l3: &[u8], vlan: Option<u16>) -> Vec<u8> {
    let ether_type = if l3[0] >> 4 == 6 {
        EtherType::IPV6
    } else {
        EtherType::IPV4
    };
    ether_typed(ether_type, l3, vlan)
}

/// An Ethernet frame client → LB of any ethertype, with an optional 802.1Q tag (TCI).
pub fn ether_typed(ether_type: EtherType, payload: &[u8], vlan: Option<u16>) -> Vec<u8> {
    let mut eth = Ethernet2Header {
        source: CLIENT_MAC,
        destination: LB_MAC,
        ether_type,
    };
    let mut f = Vec::with_capacity(payload.len() + 18);
    if let Some(tci) = vlan {
        eth.ether_type = EtherType::VLAN_TAGGED_FRAME;
        let [t0, t1] = tci.to_be_bytes();
        let [e0, e1] = ether_type.0.to_be_bytes();
        f.extend_from_slice(&eth.to_bytes());
        f.extend_from_slice(&SingleVlanHeader::from_bytes([t0, t1, e0, e1]).to_bytes());
    } else {
        f.extend_from_slice(&eth.to_bytes());
    }
    f.extend_from_slice(payload);
    f
}

/// An ARP request (Ethernet, IPv4) from the client for `target`.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: CLIENT_MAC,
        sender_ipv4: sender.octets(),
        target_mac: [0; 6],
        target_ipv4: target.octets(),
    };
    ether_typed(EtherType::ARP, &arp.to_bytes(), None)
}

/// What a frame holds, decoded independently of the datapath's parser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    /// Offset of the IP header.
    pub l3: usize,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Upper-layer protocol after IPv6 extension headers.
    pub proto: u8,
    /// Offset of the upper-layer header, and the IP packet's length.
    pub l4: usize,
    pub l3_len: usize,
    pub sport: u16,
    pub dport: u16,
}

fn offset(frame: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - frame.as_ptr() as usize
}

/// Decodes Ethernet (+ 802.1Q), IPv4 / IPv6 (+ extension headers) and the ports of TCP / UDP.
/// Panics on anything it cannot decode: the tests only feed it frames the program should have
/// produced correctly.
pub fn view(f: &[u8]) -> View {
    let p = SlicedPacket::from_ethernet(f).unwrap_or_else(|e| panic!("undecodable frame: {e}"));
    let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
        panic!("not Ethernet II")
    };
    let vlan = match p.vlan() {
        None => None,
        Some(VlanSlice::SingleVlan(v)) => Some(u16::from_be_bytes([v.slice()[0], v.slice()[1]])),
        Some(VlanSlice::DoubleVlan(_)) => panic!("two 802.1Q tags"),
    };
    let (l3, src, dst, l3_len, payload): (usize, IpAddr, IpAddr, usize, _) =
        match p.net.as_ref().expect("an IP packet") {
            NetSlice::Ipv4(ip) => {
                let h = ip.header();
                let len = h.total_len() as usize;
                let (s, d) = (h.source_addr().into(), h.destination_addr().into());
                (offset(f, h.slice()), s, d, len, ip.payload())
            }
            NetSlice::Ipv6(ip) => {
                let h = ip.header();
                let len = 40 + h.payload_length() as usize;
                let (s, d) = (h.source_addr().into(), h.destination_addr().into());
                (offset(f, h.slice()), s, d, len, ip.payload())
            }
            NetSlice::Arp(_) => panic!("ARP is not IP"),
        };
    let (sport, dport) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        // A fragment is not sliced further: the first one still starts with the ports.
        None if payload.fragmented => match payload.ip_number {
            IpNumber::TCP => TcpHeaderSlice::from_slice(payload.payload)
                .map_or((0, 0), |t| (t.source_port(), t.destination_port())),
            IpNumber::UDP => UdpHeaderSlice::from_slice(payload.payload)
                .map_or((0, 0), |u| (u.source_port(), u.destination_port())),
            _ => (0, 0),
        },
        _ => (0, 0),
    };
    View {
        dst_mac: eth.destination(),
        src_mac: eth.source(),
        vlan,
        l3,
        src,
        dst,
        proto: payload.ip_number.0,
        l4: offset(f, payload.payload),
        l3_len,
        sport,
        dport,
    }
}

/// Ones'-complement checksums have two zeros: a stored 0xffff and a computed 0x0000 (or the
/// reverse) are the same sum, which the receiver accepts.
fn same_sum(stored: u16, computed: u16) -> bool {
    stored == computed || matches!((stored, computed), (0, 0xffff) | (0xffff, 0))
}

/// True when the checksum of the IPv4 header at the start of `ip` (options included) is right.
pub fn ipv4_header_ok(ip: &[u8]) -> bool {
    let h = Ipv4HeaderSlice::from_slice(ip).expect("IPv4 header");
    same_sum(h.header_checksum(), h.to_header().calc_header_checksum())
}

/// The addresses of the pseudo-header.
enum Addrs {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

/// Verifies every checksum of a frame: the IPv4 header's, and the TCP / UDP / ICMP one over the
/// pseudo-header (an IPv4 UDP checksum of 0 means "none" and passes). Returns a description of
/// the first wrong one.
pub fn verify_checksums(f: &[u8]) -> Result<(), String> {
    let p = SlicedPacket::from_ethernet(f).map_err(|e| format!("undecodable frame: {e}"))?;
    let addrs = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            if !ipv4_header_ok(h.slice()) {
                return Err("IPv4 header checksum".into());
            }
            Addrs::V4(h.source(), h.destination())
        }
        Some(NetSlice::Ipv6(ip)) => Addrs::V6(ip.header().source(), ip.header().destination()),
        _ => return Ok(()),
    };
    let (proto, stored, computed) = match (&p.transport, addrs) {
        (Some(TransportSlice::Tcp(t)), Addrs::V4(s, d)) => {
            (TCP, t.checksum(), t.calc_checksum_ipv4(s, d).unwrap())
        }
        (Some(TransportSlice::Tcp(t)), Addrs::V6(s, d)) => {
            (TCP, t.checksum(), t.calc_checksum_ipv6(s, d).unwrap())
        }
        (Some(TransportSlice::Udp(u)), Addrs::V4(_, _)) if u.checksum() == 0 => return Ok(()),
        (Some(TransportSlice::Udp(u)), Addrs::V4(s, d)) => {
            let c = u.to_header().calc_checksum_ipv4_raw(s, d, u.payload());
            (UDP, u.checksum(), c.unwrap())
        }
        (Some(TransportSlice::Udp(u)), Addrs::V6(s, d)) => {
            let c = u.to_header().calc_checksum_ipv6_raw(s, d, u.payload());
            (UDP, u.checksum(), c.unwrap())
        }
        (Some(TransportSlice::Icmpv4(i)), _) => {
            let c = Icmpv4Header::with_checksum(i.icmp_type(), i.payload()).checksum;
            (ICMP, i.checksum(), c)
        }
        (Some(TransportSlice::Icmpv6(i)), Addrs::V6(s, d)) => {
            let c = Icmpv6Header::with_checksum(i.icmp_type(), s, d, i.payload());
            (ICMPV6, i.checksum(), c.unwrap().checksum)
        }
        _ => return Ok(()),
    };
    if same_sum(stored, computed) {
        Ok(())
    } else {
        Err(format!("protocol {proto} checksum"))
    }
}

/// Hex dump for assertion messages.
pub fn hex(f: &[u8]) -> String {
    f.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join("")
}

/// An IP packet of either family with default header fields (IPv4: DF, TTL 63; IPv6: hop limit 63).
pub fn ip(src: IpAddr, dst: IpAddr, l4: L4) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(s, d).build(l4),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s, d).build(l4),
        _ => panic!("mixed address families"),
    }
}
