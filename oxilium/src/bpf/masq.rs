//! `OXI_MASQ_EXCEPT` (see datapath::masq): the destinations the pods' traffic reaches without
//! masquerade, as prefixes of the 16-byte address form (IPv4-mapped for IPv4). Opened from its
//! pin (the endpoint programs' load creates it).
use abi::{endpoint::names, lb::Addr};
use anyhow::{Context, Result};
use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
use ipnetwork::IpNetwork;
use std::{collections::BTreeSet, path::Path};

pub struct MasqExceptions {
    map: LpmTrie<MapData, Addr, u8>,
}

/// A prefix as the map holds it.
fn key(n: &IpNetwork) -> (u32, Addr) {
    match n {
        IpNetwork::V4(v4) => (
            96 + v4.prefix() as u32,
            v4.network().to_ipv6_mapped().octets(),
        ),
        IpNetwork::V6(v6) => (v6.prefix() as u32, v6.network().octets()),
    }
}

impl MasqExceptions {
    pub fn open(pin_dir: &Path) -> Result<MasqExceptions> {
        let path = pin_dir.join(names::MASQ_EXCEPT);
        let data = MapData::from_pin(&path).with_context(|| format!("{}", path.display()))?;
        let map = LpmTrie::try_from(Map::from_map_data(data)?)?;
        Ok(MasqExceptions { map })
    }

    /// Brings the map to `want`; returns (written, removed).
    pub fn sync(&mut self, want: &BTreeSet<IpNetwork>) -> Result<(usize, usize)> {
        let want: BTreeSet<(u32, Addr)> = want.iter().map(key).collect();
        let have: BTreeSet<(u32, Addr)> = self
            .map
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| (k.prefix_len(), k.data()))
            .collect();
        let mut written = 0;
        for (p, a) in want.difference(&have) {
            self.map
                .insert(&Key::new(*p, *a), 1, 0)
                .context("writing a masquerade exception")?;
            written += 1;
        }
        let mut removed = 0;
        for (p, a) in have.difference(&want) {
            self.map
                .remove(&Key::new(*p, *a))
                .context("removing a masquerade exception")?;
            removed += 1;
        }
        Ok((written, removed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_prefixes_sit_under_the_mapped_prefix() {
        let (p, a) = key(&"10.244.1.0/24".parse().unwrap());
        assert_eq!(p, 120);
        assert_eq!(&a[10..], &[0xff, 0xff, 10, 244, 1, 0]);
        let (p, _) = key(&"fd00::/8".parse().unwrap());
        assert_eq!(p, 8);
    }
}
