//! Service and backend ids given out by the reconciler.
use anyhow::{Result, bail};
use std::collections::BTreeSet;

/// Id allocation: lowest free id first, ids start at 1 (0 means "none" in the maps).
pub(super) struct Ids {
    max: u32,
    used: BTreeSet<u32>,
    next: u32,
    free: BTreeSet<u32>,
}

impl Ids {
    pub(super) fn new(max: u32) -> Self {
        Ids {
            max,
            used: BTreeSet::new(),
            next: 1,
            free: BTreeSet::new(),
        }
    }

    pub(super) fn take(&mut self, id: u32) {
        self.used.insert(id);
        self.free.remove(&id);
        while self.next <= id {
            if !self.used.contains(&self.next) {
                self.free.insert(self.next);
            }
            self.next += 1;
        }
    }

    pub(super) fn alloc(&mut self) -> Result<u32> {
        let id = if let Some(id) = self.free.pop_first() {
            id
        } else if self.next < self.max {
            self.next += 1;
            self.next - 1
        } else {
            bail!("all {} ids are in use", self.max - 1);
        };
        self.used.insert(id);
        Ok(id)
    }

    pub(super) fn free(&mut self, id: u32) {
        if self.used.remove(&id) {
            self.free.insert(id);
        }
    }

    /// How many ids [`alloc`](Self::alloc) can still give out.
    pub(super) fn room(&self) -> usize {
        self.free.len() + self.max.saturating_sub(self.next) as usize
    }
}
