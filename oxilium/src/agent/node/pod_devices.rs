//! `--socket-lb-host-netns-only`: keeps the pod programs ([`crate::bpf::podlb`]) attached to the
//! host side of every pod's veth. A pod device is a veth of the node's network namespace whose
//! peer lives in another network namespace (the link carries `IFLA_LINK_NETNSID`), as a CNI
//! plugin leaves it: routed (/32, /128 host routes) and bridged (port of a bridge) set-ups alike.
//! Veth pairs with both ends in the node's namespace are not pods.
//!
//! The devices are listed with rtnetlink ([`net::links::veths_with_peer_elsewhere`]) every [`RECHECK`] (from the node loop's tick): new ones
//! are attached, pins of devices that are gone (the kernel already detached their links) or were
//! recreated under a new ifindex are removed.
use crate::bpf::podlb::{self, PodDevice, PodLb};
use anyhow::{Context, Result};
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tracing::{info, warn};

/// How often the node's devices are listed.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The pod devices wanted and attached.
pub struct PodDevices {
    lb: PodLb,
    pin_dir: PathBuf,
    netlink: Option<net::Netlink>,
    /// Attached by this run.
    attached: BTreeSet<PodDevice>,
    checked: Option<Instant>,
}

impl PodDevices {
    /// Loads the programs (`start` does, so that errors stop the agent before it is ready; the
    /// node loop then follows the devices).
    pub fn load(pin_dir: &Path) -> Result<PodDevices> {
        let lb = PodLb::load(pin_dir).context("loading the pod programs")?;
        Ok(PodDevices {
            lb,
            pin_dir: pin_dir.to_path_buf(),
            netlink: None,
            attached: BTreeSet::new(),
            checked: None,
        })
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
        if self.netlink.is_none() {
            self.netlink = Some(net::Netlink::connect()?);
        }
        let nl = self.netlink.as_ref().expect("just set");
        Ok(net::links::veths_with_peer_elsewhere(nl)
            .await?
            .into_iter()
            // The CNI's own endpoints carry the endpoint programs, which include this fallback.
            .filter(|l| !super::endpoints::veth::is_endpoint_device(&l.name))
            .map(|l| PodDevice {
                name: l.name,
                ifindex: l.index,
            })
            .collect())
    }
}

/// Logs a failed sync (kept going: the next tick retries).
pub fn report(result: Result<()>) -> Option<String> {
    let e = result.err()?;
    warn!("pod devices: {e:#}");
    Some(format!("pod devices: {e:#}"))
}
