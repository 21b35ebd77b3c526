//! IPv4/IPv6 prefixes: parsing, containment and the chain of enclosing prefixes a CIDR identity carries
//! as labels.
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, String> {
        let max = Self::max_len(&addr);
        if len > max {
            return Err(format!("prefix length {len} exceeds {max}"));
        }
        Ok(Cidr {
            addr: mask(addr, len),
            len,
        })
    }

    /// The host prefix (/32 or /128) of an address.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            len: Self::max_len(&addr),
        }
    }

    fn max_len(addr: &IpAddr) -> u8 {
        if addr.is_ipv4() { 32 } else { 128 }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && mask(ip, self.len) == self.addr
    }

    /// True when `other` lies inside `self` (or equals it).
    pub fn contains(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains_ip(other.addr)
    }

    /// This prefix and every shorter prefix enclosing it, down to /0.
    pub fn ancestors(&self) -> impl Iterator<Item = Cidr> + '_ {
        (0..=self.len).rev().map(|l| Cidr {
            addr: mask(self.addr, l),
            len: l,
        })
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("invalid address {a:?} in CIDR {s:?}"))?;
        let len = match l {
            Some(l) => l
                .parse::<u8>()
                .map_err(|_| format!("invalid prefix length in CIDR {s:?}"))?,
            None => Self::max_len(&addr),
        };
        Cidr::new(addr, len).map_err(|e| format!("invalid CIDR {s:?}: {e}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_masks_and_contains() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains_ip("10.200.0.1".parse().unwrap()));
        assert!(!c.contains_ip("11.0.0.1".parse().unwrap()));
        assert!(!c.contains_ip("::ffff:10.0.0.1".parse().unwrap()));
        let h: Cidr = "192.0.2.3".parse().unwrap();
        assert_eq!(h.prefix_len(), 32);
        assert!(c.contains(&"10.1.0.0/16".parse().unwrap()));
        assert!(!"10.1.0.0/16".parse::<Cidr>().unwrap().contains(&c));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        let v6: Cidr = "2001:db8::1/32".parse().unwrap();
        assert_eq!(v6.to_string(), "2001:db8::/32");
    }

    #[test]
    fn ancestors_run_to_zero() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        let a: Vec<String> = c.ancestors().map(|c| c.to_string()).collect();
        assert_eq!(a.len(), 17);
        assert_eq!(a[0], "10.1.0.0/16");
        assert_eq!(a[8], "10.0.0.0/8");
        assert_eq!(a[16], "0.0.0.0/0");
    }
}
