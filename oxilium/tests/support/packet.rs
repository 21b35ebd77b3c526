//! Hand-written packet builders (Ethernet, one optional 802.1Q tag, IPv4 with options, IPv6 with
//! extension headers, TCP with options, UDP, ICMP) that compute every checksum in full, and a
//! decoder + checksum verifier for what a program hands back. Deliberately independent of
//! datapath/src/csum.rs: plain RFC 1071 sums over big-endian words, no incremental updates.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const IPIP: u8 = 4;
pub const IPV6_IN_IP: u8 = 41;

/// One's-complement sum of `data` as big-endian 16-bit words (odd length padded with a zero byte),
/// folded to 16 bits.
pub fn ones_sum(data: &[u8], mut acc: u32) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header of TCP / UDP / ICMPv6 over IPv4 or IPv6 (RFC 793, RFC 8200 §8.1).
pub fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed address families in one pseudo-header"),
    }
    p
}

/// An upper-layer segment; its checksum is filled in once the addresses are known.
#[derive(Clone, Debug)]
pub struct L4 {
    pub proto: u8,
    pub bytes: Vec<u8>,
    /// Offset of the checksum field, and whether it covers a pseudo-header.
    csum: Option<(usize, bool)>,
}

impl L4 {
    /// Raw bytes of any protocol (an inner packet for IP-in-IP, a later fragment, ...).
    pub fn raw(proto: u8, bytes: &[u8]) -> L4 {
        L4 {
            proto,
            bytes: bytes.to_vec(),
            csum: None,
        }
    }

    /// Finishes the checksum for these addresses (a no-op for raw segments).
    fn seal(mut self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        if let Some((off, pseudo)) = self.csum {
            self.bytes[off..off + 2].fill(0);
            let acc = if pseudo {
                u32::from(ones_sum(
                    &pseudo_header(src, dst, self.proto, self.bytes.len()),
                    0,
                ))
            } else {
                0
            };
            let mut c = !ones_sum(&self.bytes, acc);
            if self.proto == UDP && c == 0 {
                c = 0xffff;
            }
            self.bytes[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        self.bytes
    }
}

/// TCP (PSH|ACK) with the given options (a multiple of 4 bytes) and payload.
pub fn tcp(sport: u16, dport: u16, options: &[u8], payload: &[u8]) -> L4 {
    assert!(
        options.len().is_multiple_of(4) && options.len() <= 40,
        "TCP options"
    );
    let doff = (20 + options.len()) / 4;
    let mut b = Vec::new();
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // seq
    b.extend_from_slice(&0x9abc_def0u32.to_be_bytes()); // ack
    b.push((doff as u8) << 4);
    b.push(0x18); // PSH|ACK
    b.extend_from_slice(&64240u16.to_be_bytes()); // window
    b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    b.extend_from_slice(options);
    b.extend_from_slice(payload);
    L4 {
        proto: TCP,
        bytes: b,
        csum: Some((16, true)),
    }
}

/// MSS 1460, SACK permitted, timestamps, NOP, window scale 7: 20 bytes of common SYN options.
pub const TCP_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0, 1, 3, 3, 7,
];

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> L4 {
    let mut b = Vec::new();
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(payload);
    L4 {
        proto: UDP,
        bytes: b,
        csum: Some((6, true)),
    }
}

/// UDP over IPv4 with no checksum (the field stays 0).
pub fn udp_no_checksum(sport: u16, dport: u16, payload: &[u8]) -> L4 {
    L4 {
        csum: None,
        ..udp(sport, dport, payload)
    }
}

/// ICMP (v4: no pseudo-header) or ICMPv6 (pseudo-header) message: type, code, 4 bytes of
/// type-specific data, then the body (for errors: the quoted packet).
pub fn icmp(v6: bool, ty: u8, code: u8, body: &[u8]) -> L4 {
    let mut b = vec![ty, code, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(body);
    L4 {
        proto: if v6 { ICMPV6 } else { ICMP },
        bytes: b,
        csum: Some((2, v6)),
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
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        let proto = l4.proto;
        let body = l4.seal(self.src.into(), self.dst.into());
        let ihl = 5 + self.options.len() / 4;
        let tot = ihl * 4 + body.len();
        let mut h = vec![0x40 | ihl as u8, self.tos];
        h.extend_from_slice(&(tot as u16).to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.extend_from_slice(&[self.ttl, proto, 0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let c = !ones_sum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&body);
        h
    }
}

/// IPv6 extension headers the builders can put in front of the upper layer.
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

impl Ipv6 {
    pub fn build(&self, l4: L4) -> Vec<u8> {
        let proto = l4.proto;
        let body = l4.seal(self.src.into(), self.dst.into());
        let code = |e: &Ext| match e {
            Ext::HopByHop(_) => 0u8,
            Ext::DestOpts(_) => 60,
            Ext::Fragment { .. } => 44,
        };
        let mut exts = Vec::new();
        for (i, e) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map(code).unwrap_or(proto);
            match e {
                Ext::HopByHop(len) | Ext::DestOpts(len) => {
                    let n = 8 * (1 + *len as usize);
                    // PadN option covering the rest of the header.
                    exts.extend_from_slice(&[next, *len, 1, (n - 4) as u8]);
                    exts.extend(std::iter::repeat_n(0u8, n - 4));
                }
                Ext::Fragment { offset, more } => {
                    let fo = (offset << 3) | u16::from(*more);
                    exts.extend_from_slice(&[next, 0]);
                    exts.extend_from_slice(&fo.to_be_bytes());
                    exts.extend_from_slice(&0xdead_beefu32.to_be_bytes());
                }
            }
        }
        let first = self.ext.first().map(code).unwrap_or(proto);
        let plen = exts.len() + body.len();
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(plen as u16).to_be_bytes());
        h.extend_from_slice(&[first, self.hop_limit]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&exts);
        h.extend_from_slice(&body);
        h
    }
}

/// An Ethernet frame client → LB around an IP packet (ethertype from the IP version), with an
/// optional 802.1Q tag (TCI).
pub fn ether(l3: &[u8], vlan: Option<u16>) -> Vec<u8> {
    let ethertype: u16 = if l3[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    let mut f = Vec::with_capacity(l3.len() + 18);
    f.extend_from_slice(&LB_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    if let Some(tci) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
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

/// Decodes Ethernet (+ 802.1Q), IPv4 / IPv6 (+ hop-by-hop, destination options, fragment) and
/// the ports of TCP / UDP. Panics on anything it cannot decode: the tests only feed it frames
/// the program should have produced correctly.
pub fn view(f: &[u8]) -> View {
    let mut et = u16::from_be_bytes([f[12], f[13]]);
    let mut l3 = 14;
    let mut vlan = None;
    if et == 0x8100 {
        vlan = Some(u16::from_be_bytes([f[14], f[15]]));
        et = u16::from_be_bytes([f[16], f[17]]);
        l3 = 18;
    }
    let ip = &f[l3..];
    let (src, dst, mut proto, mut l4, l3_len): (IpAddr, IpAddr, u8, usize, usize) = match et {
        0x0800 => {
            assert_eq!(ip[0] >> 4, 4, "IPv4 version");
            let o = |i: usize| Ipv4Addr::new(ip[i], ip[i + 1], ip[i + 2], ip[i + 3]);
            let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            (
                o(12).into(),
                o(16).into(),
                ip[9],
                (ip[0] & 0xf) as usize * 4,
                tot,
            )
        }
        0x86dd => {
            assert_eq!(ip[0] >> 4, 6, "IPv6 version");
            let a = |i: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&ip[i..i + 16]).unwrap());
            let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            (a(8).into(), a(24).into(), ip[6], 40, 40 + plen)
        }
        other => panic!("ethertype {other:#06x} is not IP"),
    };
    if src.is_ipv6() {
        while matches!(proto, 0 | 60 | 44) {
            let next = ip[l4];
            l4 += if proto == 44 {
                8
            } else {
                8 * (1 + ip[l4 + 1] as usize)
            };
            proto = next;
        }
    }
    let (sport, dport) = if proto == TCP || proto == UDP {
        let p = |i: usize| u16::from_be_bytes([ip[l4 + i], ip[l4 + i + 1]]);
        (p(0), p(2))
    } else {
        (0, 0)
    };
    View {
        dst_mac: f[0..6].try_into().unwrap(),
        src_mac: f[6..12].try_into().unwrap(),
        vlan,
        l3,
        src,
        dst,
        proto,
        l4: l3 + l4,
        l3_len,
        sport,
        dport,
    }
}

/// True when the IPv4 header at `ip` (options included) sums to 0xffff.
pub fn ipv4_header_ok(ip: &[u8]) -> bool {
    let ihl = (ip[0] & 0xf) as usize * 4;
    ones_sum(&ip[..ihl], 0) == 0xffff
}

/// Verifies every checksum of a frame: the IPv4 header's, and the TCP / UDP / ICMP one over the
/// pseudo-header (an IPv4 UDP checksum of 0 means "none" and passes). Returns a description of
/// the first wrong one.
pub fn verify_checksums(f: &[u8]) -> Result<(), String> {
    let v = view(f);
    let ip = &f[v.l3..v.l3 + v.l3_len];
    if v.src.is_ipv4() && !ipv4_header_ok(ip) {
        return Err("IPv4 header checksum".into());
    }
    let seg = &f[v.l4..v.l3 + v.l3_len];
    let ok = match v.proto {
        TCP | UDP | ICMPV6 => {
            if v.proto == UDP && v.src.is_ipv4() && seg[6..8] == [0, 0] {
                return Ok(());
            }
            let ph = pseudo_header(v.src, v.dst, v.proto, seg.len());
            ones_sum(seg, u32::from(ones_sum(&ph, 0))) == 0xffff
        }
        ICMP => ones_sum(seg, 0) == 0xffff,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("protocol {} checksum", v.proto))
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
