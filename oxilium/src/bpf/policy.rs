//! The policy maps as the agent sees them (pinned by every load of the tc object, see
//! datapath::policy): per-endpoint policy maps (`OXI_POLICY`: endpoint id → LPM trie), the
//! ipcache, the policy conntrack and the per-endpoint counters. Writes are the reconciler's
//! differences only ([`crate::agent::node::policy`]).
use abi::{
    endpoint::{EndpointInfo, EndpointKey, names as ep_names},
    lb::Addr,
    policy::{
        IpcacheValue, MAX_ENTRIES, PolicyCtKey, PolicyCtValue, PolicyData, PolicyKey, PolicyStats,
        PolicyValue, names,
    },
};
use anyhow::{Context, Result};
use aya::maps::{HashMap, LpmTrie, Map, MapData, lpm_trie::Key, of_maps::HashOfMaps};
use std::path::Path;

/// `BPF_F_NO_PREALLOC`: LPM tries require it.
const NO_PREALLOC: u32 = 1;

type Inner = LpmTrie<MapData, PolicyData, PolicyValue>;

pub struct PolicyMaps {
    outer: HashOfMaps<MapData, u32, Inner>,
    ipcache: LpmTrie<MapData, Addr, IpcacheValue>,
    ct: HashMap<MapData, PolicyCtKey, PolicyCtValue>,
    stats: HashMap<MapData, u32, PolicyStats>,
    endpoints: HashMap<MapData, EndpointKey, EndpointInfo>,
}

fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(pin_dir: &Path, name: &str) -> Result<T> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

/// A handle of its own on the pinned ipcache, for readers outside the reconciler (the L7
/// proxies): the identity of an address, as the programs see it.
pub struct IpcacheReader(LpmTrie<MapData, Addr, IpcacheValue>);

impl IpcacheReader {
    pub fn open(pin_dir: &Path) -> Result<IpcacheReader> {
        Ok(IpcacheReader(open(pin_dir, names::IPCACHE)?))
    }

    /// The longest prefix holding `addr` (16-byte form), None when there is none.
    pub fn get(&self, addr: Addr) -> Option<IpcacheValue> {
        self.0.get(&Key::new(128, addr), 0).ok()
    }
}

impl PolicyMaps {
    /// Opens the pinned maps (the tc object must have been loaded with `pin_dir`).
    pub fn open(pin_dir: &Path) -> Result<PolicyMaps> {
        Ok(PolicyMaps {
            outer: open(pin_dir, names::POLICY)?,
            ipcache: open(pin_dir, names::IPCACHE)?,
            ct: open(pin_dir, names::POLICY_CT)?,
            stats: open(pin_dir, names::POLICY_STATS)?,
            endpoints: open(pin_dir, ep_names::ENDPOINTS)?,
        })
    }

    /// The policy map of endpoint `id`, made (empty) and put in place when it has none.
    pub fn endpoint_map(&mut self, id: u32) -> Result<Inner> {
        if let Ok(m) = self.outer.get(&id, 0) {
            return Ok(m);
        }
        let inner = Inner::create(MAX_ENTRIES, NO_PREALLOC).context("creating a policy map")?;
        self.outer
            .insert(id, &inner, 0)
            .with_context(|| format!("OXI_POLICY[{id}]"))?;
        if self.stats.get(&id, 0).is_err() {
            self.stats.insert(id, PolicyStats::default(), 0)?;
        }
        Ok(inner)
    }

    /// Drops endpoint `id`'s policy map, counters and conntrack entries.
    pub fn remove_endpoint(&mut self, id: u32) -> Result<()> {
        let _ = self.outer.remove(&id);
        let _ = self.stats.remove(&id);
        let keys: Vec<PolicyCtKey> = self
            .ct
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.endpoint == id)
            .collect();
        for k in keys {
            let _ = self.ct.remove(&k);
        }
        Ok(())
    }

    pub fn set_entry(map: &mut Inner, k: &PolicyKey, v: &PolicyValue) -> Result<()> {
        map.insert(&Key::new(k.prefix_len, k.data()), v, 0)
            .context("writing a policy entry")
    }

    pub fn remove_entry(map: &mut Inner, k: &PolicyKey) -> Result<()> {
        map.remove(&Key::new(k.prefix_len, k.data()))
            .context("removing a policy entry")
    }

    /// Every entry of endpoint `id`'s map, with its counters.
    pub fn entries(&self, id: u32) -> Vec<(PolicyKey, PolicyValue)> {
        let Ok(m) = self.outer.get(&id, 0) else {
            return Vec::new();
        };
        m.iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| {
                let d = k.data();
                let key = PolicyKey {
                    prefix_len: k.prefix_len(),
                    identity: d.identity,
                    direction: d.direction,
                    proto: d.proto,
                    dport: d.dport,
                };
                (key, v)
            })
            .collect()
    }

    /// The kernel's memory figure for endpoint `id`'s policy map (`memlock` of its fdinfo), bytes.
    pub fn memory(&self, id: u32) -> Option<u64> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        let m = self.outer.get(&id, 0).ok()?;
        let fd = m.map().fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn stats(&self, id: u32) -> PolicyStats {
        self.stats.get(&id, 0).unwrap_or_default()
    }

    pub fn set_ipcache(&mut self, prefix_len: u32, addr: Addr, v: &IpcacheValue) -> Result<()> {
        self.ipcache
            .insert(&Key::new(prefix_len, addr), v, 0)
            .context("writing an ipcache entry")
    }

    pub fn remove_ipcache(&mut self, prefix_len: u32, addr: Addr) -> Result<()> {
        self.ipcache
            .remove(&Key::new(prefix_len, addr))
            .context("removing an ipcache entry")
    }

    /// Sets the identity and policy flags of the endpoint entry of `addr` (made by the CNI side);
    /// false when there is none.
    pub fn set_endpoint_policy(&mut self, addr: Addr, identity: u32, flags: u32) -> Result<bool> {
        let k = EndpointKey { addr };
        let Ok(mut info) = self.endpoints.get(&k, 0) else {
            return Ok(false);
        };
        if info.identity != identity || info.flags != flags {
            info.identity = identity;
            info.flags = flags;
            self.endpoints.insert(k, info, 0)?;
        }
        Ok(true)
    }
}
