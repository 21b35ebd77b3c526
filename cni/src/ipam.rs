//! Host-scope IPAM: the node's PodCIDRs (one or two: dual-stack) are the pools; every attachment
//! (container id + interface name) gets one address from each family's pool. Allocations are
//! kept in a small JSON file written atomically (temporary file, fsync, rename) before an address
//! is handed out, so an agent restart never hands one out twice.
//!
//! Which addresses are handed out: every address of a pool except its network address (and, for
//! IPv4 pools up to /30, the broadcast address). No gateway address is taken from the pool: pods
//! route through a link-local gateway (see the agent's endpoints). The search starts after the
//! last address handed out from that pool, so a released address is reused only once the rest of
//! the pool was handed out (or, in a full pool, right away).
//!
//! Each allocation carries the caller's data `T` (the agent keeps its endpoint record there), so
//! one file says what exists.
use crate::config::Attachment;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no pod CIDR is configured on this node (Node.spec.podCIDRs or --pod-cidr)")]
    NoPool,
    #[error("the pod address pool {0} is exhausted")]
    Exhausted(IpNetwork),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an IPAM state file: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One attachment's addresses and the caller's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<T> {
    pub addresses: Vec<IpAddr>,
    pub data: T,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: DeserializeOwned"))]
struct File<T> {
    /// The last address handed out per pool (the next search starts after it).
    #[serde(default)]
    cursors: BTreeMap<IpNetwork, IpAddr>,
    /// Attachments as `containerID/ifname` → entry (JSON map keys are strings).
    #[serde(default)]
    allocations: BTreeMap<String, Entry<T>>,
}

/// The pools and the allocations, mirrored in the state file.
pub struct Ipam<T> {
    path: PathBuf,
    pools: Vec<IpNetwork>,
    file: File<T>,
    used: BTreeSet<IpAddr>,
}

fn key(a: &Attachment) -> String {
    format!("{}/{}", a.container_id, a.ifname)
}

fn attachment(k: &str) -> Attachment {
    let (c, i) = k.rsplit_once('/').unwrap_or((k, ""));
    Attachment {
        container_id: c.into(),
        ifname: i.into(),
    }
}

impl<T: Serialize + DeserializeOwned + Clone> Ipam<T> {
    /// Opens (or starts) the state file at `path`.
    pub fn open(path: &Path, pools: Vec<IpNetwork>) -> Result<Ipam<T>, IpamError> {
        let file = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| IpamError::Corrupt {
                path: path.into(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File {
                cursors: BTreeMap::new(),
                allocations: BTreeMap::new(),
            },
            Err(source) => {
                return Err(IpamError::Io {
                    path: path.into(),
                    source,
                });
            }
        };
        let used = file
            .allocations
            .values()
            .flat_map(|e: &Entry<T>| e.addresses.iter().copied())
            .collect();
        Ok(Ipam {
            path: path.into(),
            pools: normalise(pools),
            file,
            used,
        })
    }

    /// Replaces the pools (a Node's podCIDRs changed). Allocations outside them stay until
    /// released.
    pub fn set_pools(&mut self, pools: Vec<IpNetwork>) {
        self.pools = normalise(pools);
    }

    pub fn pools(&self) -> &[IpNetwork] {
        &self.pools
    }

    pub fn get(&self, a: &Attachment) -> Option<&Entry<T>> {
        self.file.allocations.get(&key(a))
    }

    /// Every allocation.
    pub fn entries(&self) -> impl Iterator<Item = (Attachment, &Entry<T>)> {
        self.file
            .allocations
            .iter()
            .map(|(k, e)| (attachment(k), e))
    }

    /// One address per family for `a` (its existing entry when it has one), persisted before
    /// it returns.
    pub fn allocate(&mut self, a: &Attachment, data: T) -> Result<Entry<T>, IpamError> {
        if let Some(e) = self.get(a) {
            return Ok(e.clone());
        }
        let entry = self.reserve(a, data)?;
        if let Err(e) = self.save() {
            self.forget(a);
            return Err(e);
        }
        Ok(entry)
    }

    /// [`Ipam::allocate`] without writing the file: the addresses are taken in memory only, and
    /// persisted by the next [`Ipam::set_data`] (which must come before they are handed out) or
    /// dropped by [`Ipam::release`]. Saves one fsync per ADD.
    pub fn reserve(&mut self, a: &Attachment, data: T) -> Result<Entry<T>, IpamError> {
        if let Some(e) = self.get(a) {
            return Ok(e.clone());
        }
        if self.pools.is_empty() {
            return Err(IpamError::NoPool);
        }
        let mut addresses = Vec::new();
        let mut cursors = Vec::new();
        for fam in [true, false] {
            let pools: Vec<IpNetwork> = self
                .pools
                .iter()
                .filter(|p| p.is_ipv4() == fam)
                .copied()
                .collect();
            let mut last_full = None;
            for p in &pools {
                match self.next_free(p) {
                    Some(ip) => {
                        addresses.push(ip);
                        cursors.push((*p, ip));
                        last_full = None;
                        break;
                    }
                    None => last_full = Some(*p),
                }
            }
            if let Some(p) = last_full {
                return Err(IpamError::Exhausted(p));
            }
        }
        let entry = Entry { addresses, data };
        self.file.cursors.extend(cursors);
        self.file.allocations.insert(key(a), entry.clone());
        self.used.extend(entry.addresses.iter().copied());
        Ok(entry)
    }

    /// Records `a` with addresses handed out by someone else (a chained plugin's first plugin):
    /// persisted like an allocation, released like one; the pools are not consulted.
    pub fn record(
        &mut self,
        a: &Attachment,
        addresses: Vec<IpAddr>,
        data: T,
    ) -> Result<Entry<T>, IpamError> {
        let entry = Entry { addresses, data };
        if let Some(old) = self.forget(a) {
            self.used.retain(|ip| !old.addresses.contains(ip));
        }
        self.file.allocations.insert(key(a), entry.clone());
        self.used.extend(entry.addresses.iter().copied());
        if let Err(e) = self.save() {
            self.forget(a);
            return Err(e);
        }
        Ok(entry)
    }

    /// Replaces the data of an existing entry (persisted).
    pub fn set_data(&mut self, a: &Attachment, data: T) -> Result<(), IpamError> {
        if let Some(e) = self.file.allocations.get_mut(&key(a)) {
            e.data = data;
            self.save()?;
        }
        Ok(())
    }

    /// Releases `a`'s addresses; returns its entry (None: nothing was allocated).
    pub fn release(&mut self, a: &Attachment) -> Result<Option<Entry<T>>, IpamError> {
        let Some(e) = self.forget(a) else {
            return Ok(None);
        };
        self.save()?;
        Ok(Some(e))
    }

    /// GC: releases every attachment not in `valid`; returns them.
    pub fn retain(
        &mut self,
        valid: &BTreeSet<Attachment>,
    ) -> Result<Vec<(Attachment, Entry<T>)>, IpamError> {
        let gone: Vec<Attachment> = self
            .entries()
            .map(|(a, _)| a)
            .filter(|a| !valid.contains(a))
            .collect();
        let out: Vec<_> = gone
            .into_iter()
            .filter_map(|a| self.forget(&a).map(|e| (a, e)))
            .collect();
        if !out.is_empty() {
            self.save()?;
        }
        Ok(out)
    }

    fn forget(&mut self, a: &Attachment) -> Option<Entry<T>> {
        let e = self.file.allocations.remove(&key(a))?;
        for ip in &e.addresses {
            self.used.remove(ip);
        }
        Some(e)
    }

    /// The first free address of `p` after its cursor, wrapping. At most `used in p + 1`
    /// candidates are looked at, so a large pool costs what its allocations cost.
    fn next_free(&self, p: &IpNetwork) -> Option<IpAddr> {
        let (first, last) = usable(p)?;
        let span = last - first + 1;
        let start = match self.file.cursors.get(p) {
            Some(c) if p.contains(*c) => offset(p, *c).saturating_sub(first) + 1,
            _ => 0,
        };
        let taken = self.used.iter().filter(|ip| p.contains(**ip)).count() as u128;
        for i in 0..span.min(taken + 1) {
            let ip = at(p, first + (start + i) % span);
            if !self.used.contains(&ip) {
                return Some(ip);
            }
        }
        None
    }

    fn save(&self) -> Result<(), IpamError> {
        let io = |source| IpamError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(&self.file).expect("plain data");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// Pools as networks (host bits cleared), without duplicates.
fn normalise(pools: Vec<IpNetwork>) -> Vec<IpNetwork> {
    let mut out: Vec<IpNetwork> = Vec::new();
    for p in pools {
        let n = IpNetwork::new(p.network(), p.prefix()).expect("same prefix");
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn offset(p: &IpNetwork, ip: IpAddr) -> u128 {
    bits(ip) - bits(p.network())
}

fn at(p: &IpNetwork, off: u128) -> IpAddr {
    let b = bits(p.network()) + off;
    match p {
        IpNetwork::V4(_) => IpAddr::V4((b as u32).into()),
        IpNetwork::V6(_) => IpAddr::V6(b.into()),
    }
}

/// The offsets handed out: [first, last].
fn usable(p: &IpNetwork) -> Option<(u128, u128)> {
    let host_bits = if p.is_ipv4() { 32 } else { 128 } - p.prefix() as u32;
    let last_off = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    match (p.is_ipv4(), host_bits) {
        (_, 0) => Some((0, 0)),
        (true, 1) => Some((0, 1)),
        (true, _) => Some((1, last_off - 1)),
        (false, _) => Some((1, last_off)),
    }
}

/// Parses a pod CIDR (`--pod-cidr`, `Node.spec.podCIDRs`); Err names the value.
pub fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    s.parse::<IpNetwork>()
        .map_err(|e| format!("{s:?} is not a CIDR ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oxilium-ipam-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn att(c: &str) -> Attachment {
        Attachment {
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    fn cidrs(s: &[&str]) -> Vec<IpNetwork> {
        s.iter().map(|c| parse_cidr(c).unwrap()).collect()
    }

    #[test]
    fn dual_stack_addresses_survive_a_restart_and_are_never_given_twice() {
        let d = dir("dual");
        let path = d.join("ipam.json");
        let pools = cidrs(&["10.1.0.0/29", "fd00:1::/120"]);
        let mut ipam: Ipam<u32> = Ipam::open(&path, pools.clone()).unwrap();
        let a = ipam.allocate(&att("a"), 1).unwrap();
        assert_eq!(
            a.addresses,
            vec![
                "10.1.0.1".parse::<IpAddr>().unwrap(),
                "fd00:1::1".parse().unwrap()
            ]
        );
        // Idempotent.
        assert_eq!(ipam.allocate(&att("a"), 9).unwrap(), a);
        drop(ipam);
        let mut ipam: Ipam<u32> = Ipam::open(&path, pools.clone()).unwrap();
        assert_eq!(ipam.get(&att("a")).unwrap().data, 1);
        let mut seen = BTreeSet::from([a.addresses[0]]);
        // /29: .1 to .6 usable; a holds .1, five more fit.
        for i in 0..5 {
            let e = ipam.allocate(&att(&format!("p{i}")), 0).unwrap();
            assert!(seen.insert(e.addresses[0]), "{e:?} given twice");
        }
        let full = ipam.allocate(&att("x"), 0).unwrap_err();
        assert!(matches!(full, IpamError::Exhausted(_)), "{full}");
        assert!(full.to_string().contains("10.1.0.0/29"), "{full}");
        // Released → handed out again; still allocated → never.
        let p2 = ipam.release(&att("p2")).unwrap().unwrap();
        assert!(ipam.release(&att("p2")).unwrap().is_none());
        let again = ipam.allocate(&att("y"), 0).unwrap();
        assert_eq!(again.addresses[0], p2.addresses[0]);
        // GC keeps only what is valid.
        let valid = BTreeSet::from([att("a"), att("y")]);
        let gone = ipam.retain(&valid).unwrap();
        assert_eq!(gone.len(), 4);
        assert_eq!(ipam.entries().count(), 2);
        let reread: Ipam<u32> = Ipam::open(&path, pools).unwrap();
        assert_eq!(reread.entries().count(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn released_addresses_wait_for_the_rest_of_the_pool() {
        let d = dir("rot");
        let mut ipam: Ipam<()> = Ipam::open(&d.join("s.json"), cidrs(&["10.2.0.0/24"])).unwrap();
        let a = ipam.allocate(&att("a"), ()).unwrap().addresses[0];
        ipam.release(&att("a")).unwrap();
        let b = ipam.allocate(&att("b"), ()).unwrap().addresses[0];
        assert_ne!(a, b);
        assert_eq!(b, "10.2.0.2".parse::<IpAddr>().unwrap());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn no_pool_and_bad_files_are_errors() {
        let d = dir("err");
        let mut ipam: Ipam<()> = Ipam::open(&d.join("s.json"), vec![]).unwrap();
        assert!(matches!(
            ipam.allocate(&att("a"), ()),
            Err(IpamError::NoPool)
        ));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("bad.json"), b"[1,2").unwrap();
        let e = Ipam::<()>::open(&d.join("bad.json"), vec![]).err().unwrap();
        assert!(e.to_string().contains("bad.json"), "{e}");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        // Host bits are cleared; /32 pools hand out their one address.
        let mut one: Ipam<()> =
            Ipam::open(&d.join("one.json"), cidrs(&["10.3.0.7/32", "10.3.0.7/32"])).unwrap();
        assert_eq!(one.pools().len(), 1);
        assert_eq!(
            one.allocate(&att("a"), ()).unwrap().addresses,
            vec!["10.3.0.7".parse::<IpAddr>().unwrap()]
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
