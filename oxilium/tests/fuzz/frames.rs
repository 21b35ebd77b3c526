//! Random and mutated frames: a seeded generator (SplitMix64, a dozen lines, so that a seed
//! replays the same packets on any build), a frame builder that can write what etherparse
//! refuses to (any IPv6 extension chain, unknown headers, QinQ), and the mutations: truncation,
//! bad lengths, bad IHL / version, byte flips, trailers, wrong checksums, TCP data offsets.
use super::wire::{fold, sum};
use std::net::IpAddr;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n.max(1) as u64) as usize
    }
    /// True with probability `pct` %.
    pub fn pct(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u64() as u8).collect()
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Vlan {
    None,
    Q(u16),
    Ad(u16),
    QinQ,
}

/// An IPv6 extension header: type and its bytes after the next-header byte.
pub type Ext = (u8, Vec<u8>);

/// A frame to build: addresses, L3 options, the upper layer as bytes with its checksum field
/// (if any) filled in by [`Spec::build`].
#[derive(Clone, Debug)]
pub struct Spec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub l4: Vec<u8>,
    pub v4_opts: Vec<u8>,
    pub v4_frag: u16,
    pub id: u16,
    pub exts: Vec<Ext>,
    pub vlan: Vlan,
    pub trailer: Vec<u8>,
    /// IPv4 UDP sent without a checksum.
    pub no_csum: bool,
}

pub fn tcp(sport: u16, dport: u16, flags: u8, opts: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + opts.len() + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&0x1122_3344u32.to_be_bytes());
    t.extend_from_slice(&0x5566_7788u32.to_be_bytes());
    t.push(((5 + opts.len() / 4) as u8) << 4);
    t.push(flags);
    t.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
    t.extend_from_slice(opts);
    t.extend_from_slice(payload);
    t
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

pub fn icmp(ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut i = vec![ty, code, 0, 0, 0, 0, 0, 0];
    i.extend_from_slice(body);
    i
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

impl Spec {
    pub fn new(src: IpAddr, dst: IpAddr, proto: u8, l4: Vec<u8>) -> Spec {
        Spec {
            src,
            dst,
            proto,
            l4,
            v4_opts: Vec::new(),
            v4_frag: 0x4000,
            id: 0x4242,
            exts: Vec::new(),
            vlan: Vlan::None,
            trailer: Vec::new(),
            no_csum: false,
        }
    }

    /// The IP packet (no L2).
    pub fn ip(&self) -> Vec<u8> {
        let v6 = self.src.is_ipv6();
        let mut l4 = self.l4.clone();
        let csum_at = match self.proto {
            6 if l4.len() >= 18 => Some(16),
            17 if l4.len() >= 8 => Some(6),
            1 | 58 if l4.len() >= 4 => Some(2),
            _ => None,
        };
        if let Some(at) = csum_at
            && !(self.no_csum && self.proto == 17 && !v6)
        {
            let (s, d) = (octets(self.src), octets(self.dst));
            let len = (l4.len() as u32).to_be_bytes();
            let pseudo = if self.proto == 1 {
                0
            } else if v6 {
                sum(&s) + sum(&d) + sum(&len) + self.proto as u64
            } else {
                sum(&s) + sum(&d) + sum(&len[2..]) + self.proto as u64
            };
            let mut c = !fold(pseudo + sum(&l4));
            if c == 0 && self.proto == 17 {
                c = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        let mut out = Vec::new();
        if v6 {
            let mut chain = Vec::new();
            let mut types: Vec<u8> = self.exts.iter().map(|e| e.0).collect();
            types.push(self.proto);
            for (i, (_, body)) in self.exts.iter().enumerate() {
                chain.push(types[i + 1]);
                chain.extend_from_slice(body);
            }
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
            out.push(types[0]);
            out.push(64);
            out.extend_from_slice(&octets(self.src));
            out.extend_from_slice(&octets(self.dst));
            out.extend_from_slice(&chain);
        } else {
            let hl = 20 + self.v4_opts.len();
            let tot = (hl + l4.len()) as u16;
            out.push(0x40 | (hl / 4) as u8);
            out.push(0);
            out.extend_from_slice(&tot.to_be_bytes());
            out.extend_from_slice(&self.id.to_be_bytes());
            out.extend_from_slice(&self.v4_frag.to_be_bytes());
            out.extend_from_slice(&[64, self.proto, 0, 0]);
            out.extend_from_slice(&octets(self.src));
            out.extend_from_slice(&octets(self.dst));
            out.extend_from_slice(&self.v4_opts);
            let c = !fold(sum(&out));
            out[10..12].copy_from_slice(&c.to_be_bytes());
        }
        out.extend_from_slice(&l4);
        out
    }

    pub fn build(&self) -> Vec<u8> {
        let et: u16 = if self.src.is_ipv6() { 0x86dd } else { 0x0800 };
        ether(et, self.vlan, &self.ip(), &self.trailer)
    }
}

pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

pub fn ether(et: u16, vlan: Vlan, payload: &[u8], trailer: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 26);
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    let tag = |f: &mut Vec<u8>, tpid: u16, tci: u16| {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    };
    match vlan {
        Vlan::None => {}
        Vlan::Q(t) => tag(&mut f, 0x8100, t),
        Vlan::Ad(t) => tag(&mut f, 0x88a8, t),
        Vlan::QinQ => {
            tag(&mut f, 0x88a8, 100);
            tag(&mut f, 0x8100, 200);
        }
    }
    f.extend_from_slice(&et.to_be_bytes());
    f.extend_from_slice(payload);
    f.extend_from_slice(trailer);
    f
}

/// A random IPv6 extension chain of 0-6 headers: hop-by-hop, routing, destination options,
/// fragment (first or later), or an unknown type (which ends the chain for a reader).
pub fn ext_chain(rng: &mut Rng) -> Vec<Ext> {
    let n = [0, 0, 0, 1, 1, 2, 3, 4, 5, 6][rng.below(10)];
    (0..n)
        .map(|_| {
            let ty = *rng.pick(&[0u8, 43, 60, 44, 44, 253]);
            if ty == 44 {
                let off: u16 = if rng.pct(50) {
                    0
                } else {
                    rng.below(100) as u16 + 1
                };
                let fo = (off << 3) | rng.pct(50) as u16;
                let mut b = vec![0];
                b.extend_from_slice(&fo.to_be_bytes());
                b.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
                (ty, b)
            } else {
                let len = rng.below(3);
                let mut b = vec![len as u8];
                b.extend_from_slice(&[1, (len * 8 + 4) as u8]);
                b.resize(len * 8 + 7, 0);
                (ty, b)
            }
        })
        .collect()
}

/// IPv4 options: NOPs, a router alert, or random bytes (a multiple of 4, up to 40).
pub fn v4_opts(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => vec![1, 1, 1, 1],
        1 => vec![0x94, 4, 0, 0],
        2 => {
            let n = 4 * (1 + rng.below(10));
            rng.bytes(n)
        }
        _ => vec![1, 1, 1, 0, 0, 0, 0, 0],
    }
}

/// One of the mutations, in place. Returns its name.
pub fn mutate(rng: &mut Rng, f: &mut Vec<u8>) -> &'static str {
    let l3 = match u16::from_be_bytes([f[12], f[13]]) {
        0x8100 | 0x88a8 => 18,
        _ => 14,
    };
    let v6 = f.len() > l3 && f[l3] >> 4 == 6;
    match rng.below(9) {
        0 => {
            let n = 14 + rng.below(f.len() - 14);
            f.truncate(n);
            "truncated"
        }
        1 if f.len() >= l3 + 8 => {
            let at = if v6 { l3 + 4 } else { l3 + 2 };
            let cur = u16::from_be_bytes([f[at], f[at + 1]]);
            let v = match rng.below(3) {
                0 => rng.u64() as u16,
                1 => cur.wrapping_add(1 + rng.below(8) as u16),
                _ => cur.wrapping_sub(1 + rng.below(40) as u16),
            };
            f[at..at + 2].copy_from_slice(&v.to_be_bytes());
            "ip length"
        }
        2 if f.len() > l3 && !v6 => {
            f[l3] = 0x40 | rng.below(16) as u8;
            "ihl"
        }
        3 if f.len() > l3 => {
            f[l3] = (f[l3] & 0x0f) | ((rng.below(16) as u8) << 4);
            "version"
        }
        4 => {
            let at = rng.below(f.len().min(90));
            f[at] ^= 1 << rng.below(8);
            "bit flip"
        }
        5 => {
            let n = 1 + rng.below(24);
            f.extend(rng.bytes(n));
            "trailer"
        }
        6 if f.len() > l3 + 44 => {
            // A byte of the upper layer's first bytes (checksum, data offset, flags).
            let at = l3 + if v6 { 40 } else { 20 } + rng.below(20).min(f.len() - l3 - 41);
            f[at] = rng.u64() as u8;
            "l4 byte"
        }
        7 if f.len() > l3 + 8 && !v6 => {
            let fo: u16 = *rng.pick(&[0x2000, 0x0001, 0x2010, 0x4000, 0x0000]);
            f[l3 + 6..l3 + 8].copy_from_slice(&fo.to_be_bytes());
            "v4 fragment bits"
        }
        _ => {
            let at = rng.below(f.len() - 12) + 12;
            f[at] = rng.u64() as u8;
            "random byte"
        }
    }
}
