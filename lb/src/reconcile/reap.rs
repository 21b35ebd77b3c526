//! Draining backends: removed once no live flow uses them.
//!
//! A reap walks the whole flow maps (conntrack and SNAT: up to millions of entries) and may delete
//! many of their entries, so the agent does it in steps and holds its state only for the short
//! ones (1, 3, 5):
//! 1. [`Reconciler::reap_plan`]: the draining backends, each with its generation, and a
//!    [`FlowWalk`] with handles of its own;
//! 2. [`ReapPlan::walk`] (nothing held, any thread): one walk of the flow maps;
//! 3. [`Reconciler::reap_commit`]: removes the backends that still drain with the same generation
//!    and had no live flow; their ids stay taken;
//! 4. [`ReapFlush::run`] (nothing held): deletes the ended flows the walk listed for them;
//! 5. [`Reconciler::reap_free`]: frees their ids (only now may a new backend get one: no entry
//!    naming the old backend is left).
//!
//! What may change between the walk and the commit, and why the commit stays right:
//! - the backend came back (re-added while it drained): it left `draining`, so it is kept; if it
//!   left and drains again, it has a new generation and is kept until a walk that started after
//!   that. Generations are unique in the process, so a plan never matches another reconciler's
//!   backends either;
//! - its service was removed: the apply removed the backend and flushed its flows itself; it is no
//!   longer in `draining` and the commit skips it. Its id may even have been given to a new backend
//!   (which may drain too): the generation differs, nothing of it is touched;
//! - a new flow to the backend: none can start, a draining backend is in no selection table and
//!   no affinity entry picks it (see `lb::reconcile`'s module doc), so "no live flow" stays true;
//! - a flow seen live ended meanwhile: the backend stays until the next reap;
//! - a flow seen ended sees a late packet, or a new connection reuses its tuple (the datapath then
//!   rewrites that entry for a backend of the table): the entry is deleted all the same at step 4,
//!   and the flow's next packet picks a backend from the table again. The single-step reap had the
//!   same window (its flush deleted the keys its own walk had listed);
//! - the conntrack timeouts changed: the walk judged expiry with the config read at step 1;
//! - entries evicted by the LRU during the walk: gone either way. The kernel walk copies a bucket
//!   at a time under the bucket's lock, so an entry rewritten by the datapath meanwhile is seen
//!   once, old or new.
//!
//! Between steps 3 and 5 the removed backends' ids are neither in use nor free: an apply meanwhile
//! gives out others. A reconciler that never gets step 5 (the agent stopped) loses nothing: a new
//! one adopts the maps, where those backends are gone.
use super::{Changes, Datapath, FlowWalk, Pass, Reconciler, Walked};
use anyhow::Result;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::atomic::{AtomicU64, Ordering},
};

/// A generation for a backend that starts draining, unique in the process.
pub(super) fn generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Step 1 of a reap: what the walk needs (see the module doc).
pub struct ReapPlan<W> {
    walker: W,
    /// Draining backend id → its generation.
    ids: BTreeMap<u32, u64>,
}

/// Step 2's result, for [`Reconciler::reap_commit`].
pub struct ReapWalk<W: FlowWalk> {
    walker: W,
    ids: BTreeMap<u32, u64>,
    walked: Walked<W::Flow>,
}

/// Step 3's result: the ended flows of the removed backends, to delete without the state.
pub struct ReapFlush<W: FlowWalk> {
    walker: W,
    flows: Vec<W::Flow>,
    done: ReapDone,
}

/// Step 4's result, for [`Reconciler::reap_free`].
pub struct ReapDone {
    ids: Vec<u32>,
    ch: Changes,
}

impl<W: FlowWalk> ReapPlan<W> {
    /// The walk of the flow maps: needs neither the reconciler nor its datapath.
    pub fn walk(self) -> Result<ReapWalk<W>> {
        let ids: BTreeSet<u32> = self.ids.keys().copied().collect();
        Ok(ReapWalk {
            walked: self.walker.walk(&ids)?,
            walker: self.walker,
            ids: self.ids,
        })
    }

    /// How many backends the walk is for.
    pub fn backends(&self) -> usize {
        self.ids.len()
    }
}

impl<W: FlowWalk> ReapFlush<W> {
    /// Deletes the ended flows of the removed backends: needs neither the reconciler nor its
    /// datapath. On an error the ids stay taken (nothing names them but leftover entries).
    pub fn run(mut self) -> Result<ReapDone> {
        let flows = std::mem::take(&mut self.flows);
        if !flows.is_empty() {
            self.done.ch.flows_flushed = self.walker.delete(flows)?;
        }
        Ok(self.done)
    }

    /// What the reap changed so far (the backends removed).
    pub fn changes(&self) -> &Changes {
        &self.done.ch
    }
}

impl<D: Datapath> Reconciler<D> {
    /// Removes the draining backends no live flow uses any more (their leftover closed or expired
    /// flows deleted, their ids freed): the steps of the module doc in one call. Cost: one walk of
    /// the flow maps when some backend drains, nothing otherwise.
    pub fn reap(&mut self) -> Result<Changes> {
        match self.reap_plan()? {
            Some(plan) => {
                let flush = self.reap_commit(plan.walk()?)?;
                Ok(self.reap_free(flush.run()?))
            }
            None => Ok(Changes::default()),
        }
    }

    /// Step 1 of a reap: None when no backend drains.
    pub fn reap_plan(&self) -> Result<Option<ReapPlan<D::Walker>>> {
        if self.draining.is_empty() {
            return Ok(None);
        }
        Ok(Some(ReapPlan {
            walker: self.dp.flow_walker()?,
            ids: self
                .draining
                .iter()
                .map(|(id, (_, _, generation))| (*id, *generation))
                .collect(),
        }))
    }

    /// Step 3 of a reap: removes the backends the walk found without a live flow that still
    /// drain with the generation they had at step 1; their ended flows are left to the result.
    pub fn reap_commit(&mut self, walk: ReapWalk<D::Walker>) -> Result<ReapFlush<D::Walker>> {
        let ReapWalk {
            walker,
            ids,
            walked,
        } = walk;
        let gone: BTreeSet<u32> = ids
            .iter()
            .filter(|(id, generation)| {
                !walked.live.contains(id)
                    && self.draining.get(id).map(|d| d.2) == Some(**generation)
            })
            .map(|(id, _)| *id)
            .collect();
        let mut pass = Pass::default();
        let removed = self.remove_drained(&gone, &mut pass)?;
        self.unfreed.extend(&removed);
        let flows = walked
            .ended
            .into_iter()
            .filter(|(id, _)| gone.contains(id))
            .map(|(_, f)| f)
            .collect();
        Ok(ReapFlush {
            walker,
            flows,
            done: ReapDone {
                ids: removed,
                ch: pass.ch,
            },
        })
    }

    /// Step 5 of a reap: frees the ids of the backends removed at step 3 (those this reconciler
    /// removed); returns what the reap changed.
    pub fn reap_free(&mut self, done: ReapDone) -> Changes {
        for id in done.ids {
            if self.unfreed.remove(&id) {
                self.backend_ids.free(id);
            }
        }
        done.ch
    }

    /// How many backends drain now.
    pub fn draining(&self) -> usize {
        self.draining.len()
    }

    /// Of the draining `ids`, removes those without a live flow (flush and free left to `pass`).
    /// Used by an apply, with the state held, for the backends that start draining in it.
    pub(super) fn reap_ids(&mut self, ids: &BTreeSet<u32>, pass: &mut Pass) -> Result<()> {
        let live = self.dp.live_flows(ids)?;
        let gone = ids.difference(&live).copied().collect();
        let removed = self.remove_drained(&gone, pass)?;
        pass.flushed.extend(removed);
        Ok(())
    }

    /// Removes these draining backends (their flows and ids left to the caller, in `pass`);
    /// returns those removed.
    fn remove_drained(&mut self, ids: &BTreeSet<u32>, pass: &mut Pass) -> Result<Vec<u32>> {
        let mut removed = Vec::new();
        for id in ids {
            let Some((key, addr, _)) = self.draining.remove(id) else {
                continue;
            };
            removed.push(*id);
            if let Some(s) = self.services.get_mut(&key) {
                s.draining.remove(&addr);
            }
            self.dp.remove_backend(*id)?;
            pass.ch.backends_removed += 1;
            pass.freed_backends.push(*id);
        }
        Ok(removed)
    }
}
