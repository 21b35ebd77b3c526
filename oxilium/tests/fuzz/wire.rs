//! The model's own reading of a frame, written from the documented acceptance rules
//! (docs/edge-lb.md "Packet edge cases", docs/datapath-tests.md), not from datapath/src/parse.rs:
//!
//! - Ethernet, then at most one 802.1Q / 802.1ad tag; a second tag (QinQ) or any other ethertype is
//!   "not IP".
//! - IPv4: version 4, IHL ≥ 5, total length ≥ the header, within the packet; MF or an offset makes
//!   a fragment (later fragments carry no ports).
//! - IPv6: version 6, payload length within the packet; up to four extension headers (hop-by-hop,
//!   routing, destination options: `8 * (1 + len)` bytes; fragment: 8 bytes); a fifth one, or one
//!   starting past the first 512 bytes, makes the packet malformed.
//! - TCP (20 bytes) and UDP (8) headers, and the first two bytes of ICMP, must lie inside both the
//!   frame and the IP packet: a header cut short is malformed.
//!
//! etherparse is not used here on purpose: its acceptance rules (it refuses an IPv4 total length
//! shorter than the frame's IP part only sometimes, walks any number of extension headers, ...)
//! are not the datapath's contract. It still checks every output the model calls valid (see
//! harness). Also the checksum arithmetic the harness compares with.

/// Headers are looked for in the first 512 bytes of the frame only.
pub const MAX_HDR_OFF: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    No,
    First,
    Later,
}

/// A frame the model accepts as IP.
#[derive(Clone, Copy, Debug)]
pub struct Pkt {
    pub vlan: bool,
    pub l3_off: usize,
    pub v6: bool,
    /// Addresses in the 16-byte form (IPv4 mapped), as the maps key them.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The upper-layer protocol (after extension headers).
    pub proto: u8,
    pub l4_off: usize,
    /// IP header + payload as the IP header states.
    pub l3_len: usize,
    pub frag: Frag,
    pub ip_id: u16,
    pub df: bool,
    /// Host byte order; 0 without ports.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// ICMP / ICMPv6 type, when the packet is one (not a later fragment).
    pub icmp_type: Option<u8>,
}

#[derive(Clone, Copy, Debug)]
pub enum Read {
    NotIp,
    Malformed,
    Ip(Pkt),
}

/// A field of `n` bytes at `off` can be read: it starts in the first 512 bytes and ends inside
/// the (linear) frame.
fn can(f: &[u8], off: usize, n: usize) -> bool {
    off <= MAX_HDR_OFF && off + n <= f.len()
}

fn be16(f: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([f[off], f[off + 1]])
}

pub fn mapped4(a: &[u8]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[10] = 0xff;
    o[11] = 0xff;
    o[12..].copy_from_slice(&a[..4]);
    o
}

/// Reads a frame whose packet length is `f.len()` (XDP, and tc with a linear skb).
pub fn read(f: &[u8]) -> Read {
    if !can(f, 0, 14) {
        return Read::Malformed;
    }
    let mut et = be16(f, 12);
    let mut l3 = 14;
    let mut vlan = false;
    if et == 0x8100 || et == 0x88a8 {
        if !can(f, 14, 4) {
            return Read::Malformed;
        }
        et = be16(f, 16);
        l3 = 18;
        vlan = true;
    }
    let p = match et {
        0x0800 => read_v4(f, l3),
        0x86dd => read_v6(f, l3),
        _ => return Read::NotIp,
    };
    match p.and_then(|mut p| {
        p.vlan = vlan;
        read_l4(f, &mut p).then_some(p)
    }) {
        Some(p) => Read::Ip(p),
        None => Read::Malformed,
    }
}

fn blank(l3: usize) -> Pkt {
    Pkt {
        vlan: false,
        l3_off: l3,
        v6: false,
        src: [0; 16],
        dst: [0; 16],
        proto: 0,
        l4_off: 0,
        l3_len: 0,
        frag: Frag::No,
        ip_id: 0,
        df: false,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: None,
    }
}

fn read_v4(f: &[u8], l3: usize) -> Option<Pkt> {
    if !can(f, l3, 20) || f[l3] >> 4 != 4 {
        return None;
    }
    let ihl = (f[l3] & 0x0f) as usize * 4;
    let tot = be16(f, l3 + 2) as usize;
    if ihl < 20 || tot < ihl || l3 + tot > f.len() {
        return None;
    }
    let fo = be16(f, l3 + 6);
    let mut p = blank(l3);
    p.frag = match (fo & 0x1fff != 0, fo & 0x2000 != 0) {
        (true, _) => Frag::Later,
        (false, true) => Frag::First,
        _ => Frag::No,
    };
    p.df = fo & 0x4000 != 0;
    p.ip_id = be16(f, l3 + 4);
    p.proto = f[l3 + 9];
    p.src = mapped4(&f[l3 + 12..]);
    p.dst = mapped4(&f[l3 + 16..]);
    p.l4_off = l3 + ihl;
    p.l3_len = tot;
    Some(p)
}

fn read_v6(f: &[u8], l3: usize) -> Option<Pkt> {
    if !can(f, l3, 40) || f[l3] >> 4 != 6 {
        return None;
    }
    let plen = be16(f, l3 + 4) as usize;
    if l3 + 40 + plen > f.len() {
        return None;
    }
    let mut p = blank(l3);
    p.v6 = true;
    p.df = true;
    p.l3_len = 40 + plen;
    p.src.copy_from_slice(&f[l3 + 8..l3 + 24]);
    p.dst.copy_from_slice(&f[l3 + 24..l3 + 40]);
    let mut next = f[l3 + 6];
    let mut off = l3 + 40;
    let mut seen = 0;
    loop {
        let len = match next {
            0 | 43 | 60 => {
                if !can(f, off, 2) {
                    return None;
                }
                (f[off + 1] as usize + 1) * 8
            }
            44 => {
                if !can(f, off, 8) {
                    return None;
                }
                let fo = be16(f, off + 2);
                p.frag = if fo >> 3 != 0 {
                    Frag::Later
                } else {
                    Frag::First
                };
                8
            }
            _ => break,
        };
        if seen == 4 {
            return None;
        }
        seen += 1;
        next = f[off];
        off += len;
    }
    p.proto = next;
    p.l4_off = off;
    Some(p)
}

fn read_l4(f: &[u8], p: &mut Pkt) -> bool {
    if p.frag == Frag::Later {
        return true;
    }
    let end = p.l3_off + p.l3_len;
    let o = p.l4_off;
    let need = match p.proto {
        6 => 20,
        17 => 8,
        1 | 58 => 2,
        _ => return true,
    };
    if !can(f, o, need) || o + need > end {
        return false;
    }
    match p.proto {
        6 | 17 => {
            p.sport = be16(f, o);
            p.dport = be16(f, o + 2);
            if p.proto == 6 {
                p.tcp_flags = f[o + 13];
            }
        }
        _ => p.icmp_type = Some(f[o]),
    }
    true
}

impl Pkt {
    pub fn key(&self) -> abi::lb::FlowKey {
        abi::lb::FlowKey {
            src: self.src,
            dst: self.dst,
            sport: self.sport.to_be(),
            dport: self.dport.to_be(),
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// Offset of the L4 checksum field (TCP / UDP).
    pub fn csum_off(&self) -> usize {
        self.l4_off + if self.proto == 6 { 16 } else { 6 }
    }
}

/// Ones'-complement sum of `data` (big-endian words, an odd byte padded), not folded.
pub fn sum(data: &[u8]) -> u64 {
    let mut s = 0u64;
    for c in data.chunks(2) {
        s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64;
    }
    s
}

pub fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Ones'-complement value modulo 0xffff (0 and 0xffff are the same number).
pub fn norm(v: u16) -> u16 {
    if v == 0xffff { 0 } else { v }
}

/// The residual of a checksummed region: the folded sum over the data including its checksum
/// field (0xffff, i.e. "zero", when the checksum is right). An incremental update (RFC 1624) of
/// the covered fields keeps the residual: a wrong checksum stays exactly as wrong.
pub fn residual(parts: &[&[u8]]) -> u16 {
    norm(fold(parts.iter().map(|p| sum(p)).sum()))
}

/// The TCP / UDP residual of the IP packet at `p` in `f`: pseudo-header + segment (up to the IP
/// length).
pub fn l4_residual(f: &[u8], p: &Pkt) -> u16 {
    let seg = &f[p.l4_off..p.l3_off + p.l3_len];
    let len = (seg.len() as u32).to_be_bytes();
    let proto = [0, p.proto];
    let (s, d): (&[u8], &[u8]) = if p.v6 {
        (&p.src, &p.dst)
    } else {
        (&p.src[12..], &p.dst[12..])
    };
    let l = if p.v6 { &len[..] } else { &len[2..] };
    residual(&[s, d, &proto, l, seg])
}

/// The IPv4 header checksum over `hdr` (its checksum field taken as 0).
pub fn ipv4_checksum(hdr: &[u8]) -> u16 {
    let mut h = hdr.to_vec();
    h[10] = 0;
    h[11] = 0;
    !fold(sum(&h))
}
