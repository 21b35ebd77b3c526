//! Canonical IPv4/IPv6 prefixes for policy: parsing, containment and the chain of enclosing prefixes a
//! CIDR identity carries as labels. The prefix is `ipnetwork`'s type (the project's one prefix type);
//! this wrapper only adds the invariant that the host bits are clear, because an identity must be
//! canonical: `10.1.2.3/8` and `10.0.0.0/8` select the same peers and must get the same identity.
use ipnetwork::IpNetwork;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(IpNetwork);

impl Cidr {
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, String> {
        let n = IpNetwork::new(addr, len).map_err(|e| e.to_string())?;
        Ok(Cidr::canonical(n))
    }

    fn canonical(n: IpNetwork) -> Cidr {
        Cidr(IpNetwork::new(n.network(), n.prefix()).expect("same prefix length"))
    }

    /// The host prefix (/32 or /128) of an address.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr(IpNetwork::from(addr))
    }

    pub fn network(&self) -> IpNetwork {
        self.0
    }

    pub fn addr(&self) -> IpAddr {
        self.0.ip()
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix()
    }

    pub fn is_ipv4(&self) -> bool {
        self.0.is_ipv4()
    }

    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        self.0.contains(ip)
    }

    /// True when `other` lies inside `self` (or equals it).
    pub fn contains(&self, other: &Cidr) -> bool {
        other.prefix_len() >= self.prefix_len() && self.contains_ip(other.addr())
    }

    /// This prefix and every shorter prefix enclosing it, down to /0.
    pub fn ancestors(&self) -> impl Iterator<Item = Cidr> + '_ {
        (0..=self.prefix_len())
            .rev()
            .map(|l| Cidr::new(self.addr(), l).expect("shorter than a valid prefix"))
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let n = IpNetwork::from_str(s).map_err(|e| format!("invalid CIDR {s:?}: {e}"))?;
        Ok(Cidr::canonical(n))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix_len())
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
