//! `--socket-lb-host-netns-only`: keeps the pod programs ([`crate::bpf::podlb`]) attached to the
//! host side of every pod's veth. A pod device is a veth of the node's network namespace whose
//! peer lives in another network namespace (the link carries `IFLA_LINK_NETNSID`), as a CNI
//! plugin leaves it: routed (/32, /128 host routes) and bridged (port of a bridge) set-ups alike.
//! Veth pairs with both ends in the node's namespace are not pods.
//!
//! The devices are listed with rtnetlink every [`RECHECK`] (from the node loop's tick): new ones
//! are attached, pins of devices that are gone (the kernel already detached their links) or were
//! recreated under a new ifindex are removed.
use crate::bpf::podlb::{self, PodDevice, PodLb};
use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};
use tracing::{info, warn};

/// How often the node's devices are listed.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The pod devices wanted and attached.
pub struct PodDevices {
    lb: PodLb,
    pin_dir: PathBuf,
    handle: Option<rtnetlink::Handle>,
    /// Attached by this run.
    attached: BTreeSet<PodDevice>,
    checked: Option<Instant>,
}

/// `start` loads the programs (errors stop the agent before it is ready); the node loop takes
/// them here to follow the devices.
static HANDOFF: Mutex<Option<PodDevices>> = Mutex::new(None);

impl PodDevices {
    pub fn load(pin_dir: &Path) -> Result<PodDevices> {
        let lb = PodLb::load(pin_dir).context("loading the pod programs")?;
        Ok(PodDevices {
            lb,
            pin_dir: pin_dir.to_path_buf(),
            handle: None,
            attached: BTreeSet::new(),
            checked: None,
        })
    }

    pub fn hand_over(self) {
        *HANDOFF.lock().unwrap() = Some(self);
    }

    pub fn take() -> Option<PodDevices> {
        HANDOFF.lock().unwrap().take()
    }

    /// Syncs when [`RECHECK`] has passed since the last sync. Returns an error to report.
    pub async fn tick(&mut self) -> Result<()> {
        if self.checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return Ok(());
        }
        self.checked = Some(Instant::now());
        self.sync().await
    }

    /// Attaches the pod devices not attached yet (an earlier run's pins are re-pointed at this
    /// run's programs) and removes the pins of devices that are no longer pods.
    pub async fn sync(&mut self) -> Result<()> {
        let want = self.list().await?;
        self.attached.retain(|d| want.contains(d));
        let mut failed = None;
        for d in &want {
            if self.attached.contains(d) {
                continue;
            }
            match self.lb.attach(d) {
                Ok(()) => {
                    info!(device = %d.name, ifindex = d.ifindex, "pod device attached");
                    self.attached.insert(d.clone());
                }
                // The device may have gone since the listing: retried on the next sync.
                Err(e) => failed = Some(e),
            }
        }
        for d in podlb::pinned(&self.pin_dir)? {
            if !want.contains(&d) {
                podlb::detach(&self.pin_dir, &d)?;
                info!(device = %d.name, ifindex = d.ifindex, "pod device detached");
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The pod devices of the calling thread's network namespace.
    async fn list(&mut self) -> Result<BTreeSet<PodDevice>> {
        if self.handle.is_none() {
            let (conn, handle, _) =
                rtnetlink::new_connection().context("opening a netlink socket")?;
            tokio::spawn(conn);
            self.handle = Some(handle);
        }
        let handle = self.handle.as_ref().expect("just set");
        let mut links = handle.link().get().execute();
        let mut out = BTreeSet::new();
        while let Some(l) = links.try_next().await.context("listing links")? {
            if let Some(d) = pod_device(&l) {
                out.insert(d);
            }
        }
        Ok(out)
    }
}

/// A veth whose peer is in another network namespace.
fn pod_device(l: &LinkMessage) -> Option<PodDevice> {
    let mut veth = false;
    let mut other_ns = false;
    let mut name = None;
    for a in &l.attributes {
        match a {
            LinkAttribute::LinkInfo(infos) => {
                veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            LinkAttribute::LinkNetNsId(_) => other_ns = true,
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            _ => {}
        }
    }
    if !(veth && other_ns) {
        return None;
    }
    Some(PodDevice {
        name: name?,
        ifindex: l.header.index,
    })
}

/// Logs a failed sync (kept going: the next tick retries).
pub fn report(result: Result<()>) -> Option<String> {
    let e = result.err()?;
    warn!("pod devices: {e:#}");
    Some(format!("pod devices: {e:#}"))
}
