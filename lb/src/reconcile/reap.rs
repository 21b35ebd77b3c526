//! Draining backends: removed once no live flow uses them.
use super::{Changes, Datapath, Pass, Reconciler};
use anyhow::Result;
use std::collections::BTreeSet;

impl<D: Datapath> Reconciler<D> {
    /// Removes the draining backends no live flow uses any more (their leftover closed or expired
    /// flows flushed, their ids freed). Cost: one walk of the flow maps when some backend drains,
    /// nothing otherwise; the agents call it every few seconds.
    pub fn reap(&mut self) -> Result<Changes> {
        if self.draining.is_empty() {
            return Ok(Changes::default());
        }
        let ids: BTreeSet<u32> = self.draining.keys().copied().collect();
        let mut pass = Pass::default();
        self.reap_ids(&ids, &mut pass)?;
        if !pass.flushed.is_empty() {
            pass.ch.flows_flushed = self.dp.flush_flows(&pass.flushed)?;
        }
        for id in pass.freed_backends {
            self.backend_ids.free(id);
        }
        Ok(pass.ch)
    }

    /// How many backends drain now.
    pub fn draining(&self) -> usize {
        self.draining.len()
    }

    /// Of the draining `ids`, removes those without a live flow (flush and free left to `pass`).
    pub(super) fn reap_ids(&mut self, ids: &BTreeSet<u32>, pass: &mut Pass) -> Result<()> {
        let live = self.dp.live_flows(ids)?;
        for id in ids.difference(&live) {
            let Some((key, addr)) = self.draining.remove(id) else {
                continue;
            };
            if let Some(s) = self.services.get_mut(&key) {
                s.draining.remove(&addr);
            }
            self.dp.remove_backend(*id)?;
            pass.ch.backends_removed += 1;
            pass.flushed.insert(*id);
            pass.freed_backends.push(*id);
        }
        Ok(())
    }
}
