//! The selector cache: every distinct selector once, with the set of identities it selects.
//!
//! Selections are `Arc`ed sets replaced copy-on-write, so a reader holding one sees either the old or the
//! new selection, never a mix. Selectors are indexed by one `key=value` they require; a new or departing
//! identity is tested only against the selectors indexed under its own labels plus the few that have no
//! such label, so its cost follows the selectors that can match it, not the size of the cluster.
use crate::identity::NumericIdentity;
use crate::labels::Labels;
use crate::selector::Selector;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Handle of a cached selector; stable while the selector has users.
pub type SelectorId = usize;

/// An identity entering or leaving one selector's selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SelectionChange {
    pub selector: SelectorId,
    pub identity: NumericIdentity,
    pub added: bool,
}

#[derive(Debug)]
struct Cached {
    selector: Selector,
    selections: Arc<BTreeSet<NumericIdentity>>,
    users: usize,
}

#[derive(Debug, Default)]
pub struct SelectorCache {
    slots: Vec<Option<Cached>>,
    free: Vec<SelectorId>,
    by_selector: HashMap<Selector, SelectorId>,
    index: HashMap<(String, String), BTreeSet<SelectorId>>,
    unindexed: BTreeSet<SelectorId>,
    identities: BTreeMap<NumericIdentity, Labels>,
    /// Selector match tests run by identity events (for benchmarks and tests).
    pub tests_run: u64,
}

impl SelectorCache {
    pub fn new() -> SelectorCache {
        SelectorCache::default()
    }

    /// Takes a reference on `sel`, adding it (and computing its selection over the known identities)
    /// when it is new.
    pub fn add_selector(&mut self, sel: &Selector) -> SelectorId {
        if let Some(&id) = self.by_selector.get(sel) {
            self.slots[id].as_mut().expect("live").users += 1;
            return id;
        }
        let selections: BTreeSet<_> = self
            .identities
            .iter()
            .filter(|(_, l)| sel.matches(l))
            .map(|(i, _)| *i)
            .collect();
        let c = Cached {
            selector: sel.clone(),
            selections: Arc::new(selections),
            users: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id] = Some(c);
                id
            }
            None => {
                self.slots.push(Some(c));
                self.slots.len() - 1
            }
        };
        match sel.index_label() {
            Some((k, v)) => {
                self.index
                    .entry((k.to_string(), v.to_string()))
                    .or_default()
                    .insert(id);
            }
            None => {
                self.unindexed.insert(id);
            }
        }
        self.by_selector.insert(sel.clone(), id);
        id
    }

    /// Drops a reference; the selector is forgotten with its last user.
    pub fn remove_selector(&mut self, id: SelectorId) {
        let c = self.slots[id].as_mut().expect("live selector");
        c.users -= 1;
        if c.users > 0 {
            return;
        }
        let c = self.slots[id].take().expect("live");
        match c.selector.index_label() {
            Some((k, v)) => {
                let key = (k.to_string(), v.to_string());
                let set = self.index.get_mut(&key).expect("indexed");
                set.remove(&id);
                if set.is_empty() {
                    self.index.remove(&key);
                }
            }
            None => {
                self.unindexed.remove(&id);
            }
        }
        self.by_selector.remove(&c.selector);
        self.free.push(id);
    }

    pub fn selector(&self, id: SelectorId) -> &Selector {
        &self.slots[id].as_ref().expect("live selector").selector
    }

    /// The current selection (a snapshot: later changes replace it, they never modify it).
    pub fn selections(&self, id: SelectorId) -> Arc<BTreeSet<NumericIdentity>> {
        self.slots[id]
            .as_ref()
            .expect("live selector")
            .selections
            .clone()
    }

    pub fn selects(&self, id: SelectorId, identity: NumericIdentity) -> bool {
        self.slots[id]
            .as_ref()
            .expect("live selector")
            .selections
            .contains(&identity)
    }

    pub fn len(&self) -> usize {
        self.by_selector.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_selector.is_empty()
    }

    pub fn identity_labels(&self, id: NumericIdentity) -> Option<&Labels> {
        self.identities.get(&id)
    }

    pub fn identities(&self) -> impl Iterator<Item = (NumericIdentity, &Labels)> {
        self.identities.iter().map(|(i, l)| (*i, l))
    }

    fn candidates(&self, labels: &Labels) -> Vec<SelectorId> {
        let mut c: Vec<SelectorId> = self.unindexed.iter().copied().collect();
        for (_, k, v) in labels.iter() {
            // Index keys ignore the source; the full match below checks it.
            if let Some(set) = self.index.get(&(k.to_string(), v.to_string())) {
                c.extend(set.iter().copied());
            }
        }
        c.sort_unstable();
        c.dedup();
        c
    }

    /// An identity appeared. Returns the selectors whose selection gained it.
    pub fn add_identity(&mut self, id: NumericIdentity, labels: &Labels) -> Vec<SelectionChange> {
        if self.identities.contains_key(&id) {
            return Vec::new();
        }
        self.identities.insert(id, labels.clone());
        let mut out = Vec::new();
        for s in self.candidates(labels) {
            self.tests_run += 1;
            let c = self.slots[s].as_mut().expect("live");
            if c.selector.matches(labels) {
                Arc::make_mut(&mut c.selections).insert(id);
                out.push(SelectionChange {
                    selector: s,
                    identity: id,
                    added: true,
                });
            }
        }
        out
    }

    /// An identity left. Returns the selectors whose selection lost it.
    pub fn remove_identity(&mut self, id: NumericIdentity) -> Vec<SelectionChange> {
        let Some(labels) = self.identities.remove(&id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for s in self.candidates(&labels) {
            self.tests_run += 1;
            let c = self.slots[s].as_mut().expect("live");
            if c.selections.contains(&id) {
                Arc::make_mut(&mut c.selections).remove(&id);
                out.push(SelectionChange {
                    selector: s,
                    identity: id,
                    added: false,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::{Op, Requirement};

    #[test]
    fn shared_selectors_and_deltas() {
        let mut c = SelectorCache::new();
        c.add_identity(
            256,
            &Labels::parse(["k8s:org=empire", "k8s:class=deathstar"]),
        );
        let empire = Selector::match_labels([("org", "empire")]);
        let a = c.add_selector(&empire);
        let b = c.add_selector(&empire);
        assert_eq!(a, b);
        assert_eq!(c.len(), 1);
        assert_eq!(*c.selections(a), BTreeSet::from([256]));
        let before = c.selections(a);
        let ch = c.add_identity(
            257,
            &Labels::parse(["k8s:org=empire", "k8s:class=tiefighter"]),
        );
        assert_eq!(
            ch,
            vec![SelectionChange {
                selector: a,
                identity: 257,
                added: true
            }]
        );
        // The snapshot taken before is untouched: readers never see a half-applied change.
        assert_eq!(*before, BTreeSet::from([256]));
        assert_eq!(*c.selections(a), BTreeSet::from([256, 257]));
        assert!(
            c.add_identity(258, &Labels::parse(["k8s:org=alliance"]))
                .is_empty()
        );
        assert_eq!(c.remove_identity(256).len(), 1);
        c.remove_selector(a);
        assert_eq!(c.len(), 1);
        c.remove_selector(a);
        assert!(c.is_empty());
    }

    #[test]
    fn identity_tests_only_candidate_selectors() {
        let mut c = SelectorCache::new();
        for i in 0..1000 {
            c.add_selector(&Selector::match_labels([("app", format!("a{i}").as_str())]));
        }
        let notin = Selector::from_requirements(vec![Requirement::new(
            "app",
            Op::NotIn(["x".into()].into()),
        )]);
        c.add_selector(&notin);
        let ch = c.add_identity(300, &Labels::parse(["k8s:app=a7"]));
        assert_eq!(ch.len(), 2);
        // One indexed candidate plus the single unindexed selector, not 1001.
        assert_eq!(c.tests_run, 2);
    }
}
