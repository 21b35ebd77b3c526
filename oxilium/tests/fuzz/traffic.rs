//! The traffic of a scenario: clients of its frontends from a bounded pool of tuples (so flows
//! recur and conntrack sees SYN, data, FIN / RST and the replies of flows it knows), replies to
//! the flows the model says are translated, fragments, ICMP errors quoting known and unknown
//! flows, other protocols, non-IP frames; every IP frame decorated at random (VLAN tags, IPv4
//! options, IPv6 extension chains, trailers, TCP options, UDP without checksum) and a share of
//! them mutated (frames::mutate).
use super::frames::{self, Rng, Spec, Vlan};
use abi::lb::FlowKey;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub struct Scene {
    /// (address, port, protocol) of every frontend.
    pub fronts: Vec<(IpAddr, u16, u8)>,
    pub clients4: Vec<IpAddr>,
    pub clients6: Vec<IpAddr>,
    /// Other addresses seen on the wire (backends, the LB / node, strangers).
    pub others: Vec<IpAddr>,
    /// Client source ports are drawn from `1024..1024 + ports`.
    pub ports: u16,
}

pub fn to_ip(a: &[u8; 16]) -> IpAddr {
    if a[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
        IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

fn client_flags(rng: &mut Rng) -> u8 {
    match rng.below(20) {
        0..=5 => 0x02,
        6..=9 => 0x10,
        10..=13 => 0x18,
        14 | 15 => 0x11,
        16 => 0x04,
        17 => 0x14,
        _ => rng.u64() as u8,
    }
}

fn reply_flags(rng: &mut Rng) -> u8 {
    match rng.below(20) {
        0..=5 => 0x12,
        6..=11 => 0x10,
        12..=14 => 0x11,
        15 | 16 => 0x04,
        _ => rng.u64() as u8,
    }
}

fn l4(rng: &mut Rng, proto: u8, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let n = [0, 0, 1, 7, 30, 64][rng.below(6)];
    let payload = rng.bytes(n);
    match proto {
        6 => {
            let opts: &[u8] = match rng.below(4) {
                0 => &[2, 4, 5, 0xb4],
                1 => &[1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8],
                _ => &[],
            };
            frames::tcp(sport, dport, flags, opts, &payload)
        }
        17 => frames::udp(sport, dport, &payload),
        _ => frames::icmp(8, 0, &payload),
    }
}

impl Scene {
    fn client_of(&self, rng: &mut Rng, v6: bool) -> IpAddr {
        *rng.pick(if v6 { &self.clients6 } else { &self.clients4 })
    }

    fn other(&self, rng: &mut Rng, v6: bool) -> IpAddr {
        let same: Vec<_> = self.others.iter().filter(|a| a.is_ipv6() == v6).collect();
        *same[rng.below(same.len())]
    }

    /// A client → frontend packet of a pooled tuple (sometimes a neighbouring port or protocol).
    pub fn to_front(&self, rng: &mut Rng) -> Spec {
        let &(addr, mut port, mut proto) = rng.pick(&self.fronts);
        if rng.pct(8) {
            port = port.wrapping_add(1);
        }
        if rng.pct(4) {
            proto = if proto == 6 { 17 } else { 6 };
        }
        let src = self.client_of(rng, addr.is_ipv6());
        let sport = 1024 + rng.below(self.ports as usize) as u16;
        let flags = client_flags(rng);
        Spec::new(src, addr, proto, l4(rng, proto, sport, port, flags))
    }

    fn reply(&self, rng: &mut Rng, k: &FlowKey) -> Spec {
        let (s, d) = (to_ip(&k.src), to_ip(&k.dst));
        let (sp, dp) = (u16::from_be(k.sport), u16::from_be(k.dport));
        let flags = reply_flags(rng);
        Spec::new(s, d, k.proto, l4(rng, k.proto, sp, dp, flags))
    }

    /// The next frame and what kind it is.
    pub fn next(&self, rng: &mut Rng, replies: &[FlowKey]) -> (Vec<u8>, &'static str) {
        let kind = rng.below(100);
        let mut spec = match kind {
            0..=39 => self.to_front(rng),
            40..=61 if !replies.is_empty() => {
                let k = *rng.pick(replies);
                self.reply(rng, &k)
            }
            62..=69 => {
                let mut s = if rng.pct(70) {
                    self.to_front(rng)
                } else {
                    let v6 = rng.pct(50);
                    let (a, b) = (self.other(rng, v6), self.other(rng, v6));
                    Spec::new(a, b, 6, l4(rng, 6, 1234, 80, 0x18))
                };
                if s.src.is_ipv6() {
                    let off: u16 = if rng.pct(50) { 0 } else { 8 };
                    let fo = (off << 3) | rng.pct(50) as u16;
                    let mut b = vec![0];
                    b.extend_from_slice(&fo.to_be_bytes());
                    b.extend_from_slice(&[1, 2, 3, 4]);
                    s.exts.push((44, b));
                } else {
                    s.v4_frag = *rng.pick(&[0x2000, 0x2000 | 8, 8, 0x6000]);
                }
                s
            }
            70..=77 => self.icmp_error(rng, replies),
            78..=83 => {
                let (et, body) = match rng.below(3) {
                    0 => (0x0806, rng.bytes(28)),
                    1 => (0x88cc, rng.bytes(40)),
                    _ => {
                        let s = self.to_front(rng);
                        let et = if s.src.is_ipv6() { 0x86dd } else { 0x0800 };
                        return (frames::ether(et, Vlan::QinQ, &s.ip(), &[]), "qinq");
                    }
                };
                return (frames::ether(et, Vlan::None, &body, &[]), "non-ip");
            }
            _ => {
                let v6 = rng.pct(40);
                let (a, b) = (self.other(rng, v6), self.other(rng, v6));
                let proto = *rng.pick(&[6u8, 17, 1, 47, 58, 132]);
                let (sp, dp) = (rng.u64() as u16, rng.u64() as u16);
                let flags = client_flags(rng);
                Spec::new(a, b, proto, l4(rng, proto, sp, dp, flags))
            }
        };
        self.decorate(rng, &mut spec);
        let mut f = spec.build();
        let mut what = if kind < 40 { "client" } else { "other" };
        if rng.pct(25) {
            what = frames::mutate(rng, &mut f);
            if rng.pct(30) {
                frames::mutate(rng, &mut f);
            }
        }
        (f, what)
    }

    fn decorate(&self, rng: &mut Rng, s: &mut Spec) {
        s.vlan = match rng.below(100) {
            0..=11 => Vlan::Q(rng.u64() as u16 & 0x0fff),
            12..=15 => Vlan::Ad(7),
            16..=17 => Vlan::QinQ,
            _ => Vlan::None,
        };
        if s.src.is_ipv6() {
            if rng.pct(20) {
                let mut chain = frames::ext_chain(rng);
                chain.append(&mut s.exts);
                s.exts = chain;
            }
        } else {
            if rng.pct(10) {
                s.v4_opts = frames::v4_opts(rng);
            }
            if s.proto == 17 && rng.pct(30) {
                s.no_csum = true;
            }
            s.id = rng.u64() as u16;
            if rng.pct(20) {
                s.v4_frag &= !0x4000;
            }
        }
        if rng.pct(10) {
            let n = 1 + rng.below(20);
            s.trailer = rng.bytes(n);
        }
    }

    /// An ICMP / ICMPv6 error (or, one time in five, an echo request) quoting a client → frontend
    /// packet, a reply of a translated flow, or anything.
    fn icmp_error(&self, rng: &mut Rng, replies: &[FlowKey]) -> Spec {
        let quoted = match rng.below(3) {
            0 => self.to_front(rng),
            1 if !replies.is_empty() => {
                let k = *rng.pick(replies);
                self.reply(rng, &k)
            }
            _ => {
                let v6 = rng.pct(40);
                let (a, b) = (self.other(rng, v6), self.other(rng, v6));
                Spec::new(a, b, 17, l4(rng, 17, 53, 5353, 0))
            }
        };
        let v6 = quoted.src.is_ipv6();
        let mut body = quoted.ip();
        body.truncate(if rng.pct(50) {
            body.len()
        } else {
            (if v6 { 48 } else { 28 }).min(body.len())
        });
        let (ty, proto) = match (v6, rng.pct(20)) {
            (false, false) => (*rng.pick(&[3u8, 11, 12, 4, 5]), 1),
            (false, true) => (8, 1),
            (true, false) => (*rng.pick(&[1u8, 2, 3, 4]), 58),
            (true, true) => (128, 58),
        };
        // Sent to the quoted packet's source, from somewhere on its path.
        let from = if rng.pct(50) {
            quoted.dst
        } else {
            self.other(rng, v6)
        };
        Spec::new(
            from,
            quoted.src,
            proto,
            frames::icmp(ty, rng.below(5) as u8, &body),
        )
    }
}
