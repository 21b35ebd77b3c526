//! A service's backends as the reconciler records them: each backend's id and map entry, found by
//! address. The entry holds the address already, so the record keeps only (id, entry) pairs,
//! sorted by the entry's address (half the size of a map keyed by a separate `SocketAddr`, and no
//! tree node: at 50,000 backends that is a few MiB of the agent's resident size).
use crate::compile::bytes_addr;
use abi::lb::Backend;
use std::net::SocketAddr;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Backends {
    items: Vec<(u32, Backend)>,
}

/// The address a backend entry is for.
pub(super) fn address(b: &Backend) -> SocketAddr {
    SocketAddr::new(bytes_addr(&b.addr), u16::from_be(b.port))
}

impl Backends {
    fn find(&self, addr: &SocketAddr) -> Result<usize, usize> {
        self.items.binary_search_by(|(_, b)| address(b).cmp(addr))
    }

    /// Inserts or replaces the entry for its address (`entry.1` holds it).
    pub fn insert(&mut self, entry: (u32, Backend)) {
        match self.find(&address(&entry.1)) {
            Ok(i) => self.items[i] = entry,
            Err(i) => {
                if self.items.len() == self.items.capacity() {
                    // Exact while small (most services have a handful), by half beyond.
                    let extra = if self.items.len() < 16 {
                        1
                    } else {
                        self.items.len() / 2
                    };
                    self.items.reserve_exact(extra);
                }
                self.items.insert(i, entry);
            }
        }
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<&(u32, Backend)> {
        self.find(addr).ok().map(|i| &self.items[i])
    }

    pub fn contains_key(&self, addr: &SocketAddr) -> bool {
        self.find(addr).is_ok()
    }

    pub fn remove(&mut self, addr: &SocketAddr) -> Option<(u32, Backend)> {
        let i = self.find(addr).ok()?;
        let e = self.items.remove(i);
        if self.items.capacity() > 16 && self.items.capacity() > self.items.len() * 2 {
            self.items
                .shrink_to(self.items.len() + self.items.len() / 2);
        }
        Some(e)
    }

    /// In address order.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &(u32, Backend))> {
        self.items.iter().map(|e| (address(&e.1), e))
    }

    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.items.iter().map(|(_, b)| address(b))
    }

    pub fn values(&self) -> impl Iterator<Item = &(u32, Backend)> {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::addr_bytes;
    use std::collections::BTreeMap;

    fn entry(id: u32, a: SocketAddr, state: u8) -> (u32, Backend) {
        let b = Backend {
            addr: addr_bytes(a.ip()),
            port: a.port().to_be(),
            family: if a.is_ipv4() {
                abi::lb::FAMILY_V4
            } else {
                abi::lb::FAMILY_V6
            },
            state,
            service_id: 1,
        };
        (id, b)
    }

    /// Inserts, replacements and removals of v4 and v6 addresses give what a `BTreeMap` keyed
    /// by `SocketAddr` gives, in the same order.
    #[test]
    fn it_behaves_as_a_map_by_address() {
        let mut r = Backends::default();
        let mut m: BTreeMap<SocketAddr, (u32, Backend)> = BTreeMap::new();
        let mut x: u32 = 3;
        for step in 0..4000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let n = (x >> 8) % 50;
            let a: SocketAddr = if n.is_multiple_of(2) {
                format!("10.0.{}.{}:{}", n / 10, n, 8000 + n % 3)
            } else {
                format!("[fd00::{n:x}]:{}", 8000 + n % 3)
            }
            .parse()
            .unwrap();
            if x.is_multiple_of(3) {
                assert_eq!(r.remove(&a), m.remove(&a));
            } else {
                let e = entry(step, a, (step % 2) as u8);
                r.insert(e);
                m.insert(a, e);
            }
            assert_eq!(r.get(&a), m.get(&a));
            assert_eq!(r.contains_key(&a), m.contains_key(&a));
        }
        assert!(
            r.iter()
                .map(|(a, e)| (a, *e))
                .eq(m.iter().map(|(a, e)| (*a, *e)))
        );
        assert!(r.addresses().eq(m.keys().copied()));
        assert!(r.values().eq(m.values()));
    }
}
