//! Identities and the ipcache across nodes through etcd (`--kvstore etcd`). Keys (under
//! `oxilium/`):
//!
//! | key | value | written |
//! |---|---|---|
//! | `identities/id/<n>` | the label set | with `labels/<labels>`, in one compare-and-swap (both absent) |
//! | `identities/labels/<labels>` | `<n>` | same transaction |
//! | `identities/refs/<n>/<node>` | empty | by each node using `<n>`, with its lease |
//! | `ipcache/<node>/<ip>` | `<n>` | by the node holding the endpoint, with its lease |
//!
//! Each agent watches `ipcache/` (etcd's watch stream, [`Etcd::watch`] in a thread of its own)
//! and applies the other nodes' changes as they come; after the watch is (re)opened it reads the
//! whole prefix once, so nothing between two streams is missed. Its own changes are written when
//! its endpoints change ([`KvStore::kicker`]); a full sync (keepalive, writes, read, garbage
//! collection) also runs every `--kvstore-sync-ms` (10 s), the lease's keepalive every 5 s.
//!
//! A node whose lease expires (it stopped) loses its references and ipcache entries. Every agent
//! collects garbage: an identity without references for `--identity-gc-grace` is deleted (a
//! transaction that checks it did not change meanwhile), and its number is free again. Running it
//! in every agent rather than in a separate operator keeps the deployment one DaemonSet; the
//! transaction makes concurrent collectors safe.
use super::etcd::{Etcd, WatchEvent};
use anyhow::Result;
use policy::NumericIdentity;
use policy::identity::{MAX_ALLOCATED, MIN_ALLOCATED};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

const ID: &str = "oxilium/identities/id/";
const LABELS: &str = "oxilium/identities/labels/";
const REFS: &str = "oxilium/identities/refs/";
const IPCACHE: &str = "oxilium/ipcache/";
const LEASE_TTL_S: u64 = 15;

pub struct KvStore {
    etcd: Etcd,
    node: String,
    lease: i64,
    grace: Duration,
    /// Identities this node references, as written.
    refs: BTreeSet<NumericIdentity>,
    /// This node's ipcache entries, as written.
    published: BTreeMap<IpAddr, NumericIdentity>,
    /// Other nodes' ipcache entries: address → (identity, node).
    pub remote: BTreeMap<IpAddr, (NumericIdentity, String)>,
    /// Identities seen without references, since when.
    unreferenced: HashMap<NumericIdentity, Instant>,
    /// Woken when this node's endpoints change (write them now).
    kick: Arc<Notify>,
    /// The watch's events (taken by the task that applies them).
    watch: Option<mpsc::UnboundedReceiver<WatchEvent>>,
}

impl KvStore {
    pub fn open(endpoint: &str, node: &str, grace: Duration) -> Result<KvStore> {
        let etcd = Etcd::parse(endpoint)?;
        let lease = etcd.lease_grant(LEASE_TTL_S)?;
        info!(%endpoint, node, lease, "kvstore: etcd");
        let (tx, rx) = mpsc::unbounded_channel();
        let w = etcd.clone();
        std::thread::Builder::new()
            .name("kvstore-watch".into())
            .spawn(move || watch(&w, &tx))?;
        Ok(KvStore {
            etcd,
            node: node.to_string(),
            lease,
            grace,
            refs: BTreeSet::new(),
            published: BTreeMap::new(),
            remote: BTreeMap::new(),
            unreferenced: HashMap::new(),
            kick: Arc::new(Notify::new()),
            watch: Some(rx),
        })
    }

    /// What wakes the writer of this node's entries.
    pub fn kicker(&self) -> Arc<Notify> {
        self.kick.clone()
    }

    /// The watch's events, once (for the task applying them).
    pub fn take_watch(&mut self) -> Option<mpsc::UnboundedReceiver<WatchEvent>> {
        self.watch.take()
    }

    /// Applies one event of the watch: true when the other nodes' entries changed (after a
    /// `Created`, the whole prefix is read again).
    pub fn apply(&mut self, ev: WatchEvent) -> Result<bool> {
        let (key, value) = match ev {
            WatchEvent::Created => return self.read_remote(),
            WatchEvent::Put(kv) => (kv.key, Some(kv.value)),
            WatchEvent::Delete(key) => (key, None),
        };
        let Some((node, ip)) = key.strip_prefix(IPCACHE).and_then(|k| k.split_once('/')) else {
            return Ok(false);
        };
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return Ok(false);
        };
        if node == self.node {
            return Ok(false);
        }
        let entry = value
            .and_then(|v| v.parse().ok())
            .map(|id| (id, node.to_string()));
        let before = match &entry {
            Some(e) => self.remote.insert(ip, e.clone()),
            // A delete of another node's older entry leaves the newer one.
            None if self.remote.get(&ip).is_some_and(|(_, n)| n == node) => self.remote.remove(&ip),
            None => return Ok(false),
        };
        Ok(before != entry)
    }

    /// A client for the engine's resolver (it runs inside the engine, synchronously).
    pub fn resolver(&self) -> policy::identity::Resolver {
        let etcd = self.etcd.clone();
        Box::new(
            move |labels| match allocate(&etcd, &labels.to_strings().join(";")) {
                Ok(n) => Some(n),
                Err(e) => {
                    warn!("kvstore: allocating an identity: {e:#}");
                    None
                }
            },
        )
    }

    /// Makes this node's references and ipcache entries those given (differences only) and keeps
    /// the lease alive.
    pub fn publish(
        &mut self,
        refs: &BTreeSet<NumericIdentity>,
        ipcache: &BTreeMap<IpAddr, NumericIdentity>,
    ) -> Result<()> {
        if !self.etcd.lease_keepalive(self.lease)? {
            // Expired (the agent stalled): everything is written again with a new lease.
            self.lease = self.etcd.lease_grant(LEASE_TTL_S)?;
            self.refs.clear();
            self.published.clear();
        }
        for id in refs.difference(&self.refs.clone()) {
            self.etcd
                .put(&format!("{REFS}{id}/{}", self.node), "", Some(self.lease))?;
            self.refs.insert(*id);
        }
        for id in self.refs.clone().difference(refs) {
            self.etcd.delete(&format!("{REFS}{id}/{}", self.node))?;
            self.refs.remove(id);
        }
        for (ip, id) in ipcache {
            if self.published.get(ip) != Some(id) {
                self.etcd.put(
                    &format!("{IPCACHE}{}/{ip}", self.node),
                    &id.to_string(),
                    Some(self.lease),
                )?;
                self.published.insert(*ip, *id);
            }
        }
        for ip in self.published.clone().keys() {
            if !ipcache.contains_key(ip) {
                self.etcd.delete(&format!("{IPCACHE}{}/{ip}", self.node))?;
                self.published.remove(ip);
            }
        }
        Ok(())
    }

    /// The full sync: [`KvStore::publish`], every other node's entries read again, garbage
    /// collected. True when the other nodes' entries changed.
    pub fn sync(
        &mut self,
        refs: &BTreeSet<NumericIdentity>,
        ipcache: &BTreeMap<IpAddr, NumericIdentity>,
    ) -> Result<bool> {
        self.publish(refs, ipcache)?;
        let changed = self.read_remote()?;
        self.collect()?;
        Ok(changed)
    }

    /// Reads every other node's entries; true when they changed.
    fn read_remote(&mut self) -> Result<bool> {
        let mut remote = BTreeMap::new();
        for kv in self.etcd.prefix(IPCACHE)? {
            let Some((node, ip)) = kv.key[IPCACHE.len()..].split_once('/') else {
                continue;
            };
            if node != self.node
                && let (Ok(ip), Ok(id)) = (ip.parse(), kv.value.parse())
            {
                remote.insert(ip, (id, node.to_string()));
            }
        }
        let changed = remote != self.remote;
        self.remote = remote;
        Ok(changed)
    }

    /// Deletes identities without references for longer than the grace period.
    fn collect(&mut self) -> Result<()> {
        let referenced: BTreeSet<NumericIdentity> = self
            .etcd
            .prefix(REFS)?
            .iter()
            .filter_map(|kv| kv.key[REFS.len()..].split('/').next()?.parse().ok())
            .collect();
        let now = Instant::now();
        let ids = self.etcd.prefix(ID)?;
        self.unreferenced.retain(|id, _| !referenced.contains(id));
        for kv in ids {
            let Ok(id) = kv.key[ID.len()..].parse::<NumericIdentity>() else {
                continue;
            };
            if referenced.contains(&id) {
                continue;
            }
            let since = *self.unreferenced.entry(id).or_insert(now);
            if now.duration_since(since) >= self.grace {
                let labels_key = format!("{LABELS}{}", kv.value);
                if self.etcd.delete_if_unchanged(
                    &kv.key,
                    kv.mod_revision,
                    &[&kv.key, &labels_key],
                )? {
                    info!(identity = id, labels = %kv.value, "kvstore: identity collected");
                }
                self.unreferenced.remove(&id);
            }
        }
        Ok(())
    }
}

/// The watch thread: `ipcache/` watched, opened again a second after it ends or fails, until
/// the agent's side is gone.
fn watch(etcd: &Etcd, tx: &mpsc::UnboundedSender<WatchEvent>) {
    while !tx.is_closed() {
        if let Err(e) = etcd.watch(IPCACHE, |ev| tx.send(ev).is_ok()) {
            warn!("kvstore: watching {IPCACHE}: {e:#}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The cluster-wide number of a label set: the existing one, or the lowest free number claimed
/// with a compare-and-swap (retried when another node won the race).
fn allocate(etcd: &Etcd, labels: &str) -> Result<NumericIdentity> {
    let lk = format!("{LABELS}{labels}");
    for _ in 0..16 {
        if let Some(kv) = etcd.get(&lk)?
            && let Ok(n) = kv.value.parse()
        {
            return Ok(n);
        }
        let used: BTreeSet<NumericIdentity> = etcd
            .prefix(ID)?
            .iter()
            .filter_map(|kv| kv.key[ID.len()..].parse().ok())
            .collect();
        let Some(n) = (MIN_ALLOCATED..=MAX_ALLOCATED).find(|n| !used.contains(n)) else {
            anyhow::bail!("every identity number is in use");
        };
        if etcd.create_all(&[(&format!("{ID}{n}"), labels), (&lk, &n.to_string())])? {
            return Ok(n);
        }
    }
    anyhow::bail!("identity allocation for {labels} kept losing races")
}
