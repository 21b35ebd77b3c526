//! Small ordered maps and sets kept as one sorted vector: for the many tiny collections an agent
//! holds per Service (a Service's backends, the candidates for one address, a Service's
//! EndpointSlices). A `BTreeMap` allocates a node of eleven entries for the first one; these hold
//! exactly what they contain while small (and grow by half once past [`EXACT_UP_TO`]), so a
//! Service with five backends costs five entries. Lookups are binary searches; an insert or a
//! removal moves the entries after it (cheap at the sizes these hold).
use std::borrow::Borrow;

/// Up to this many entries the vector holds no spare room.
pub const EXACT_UP_TO: usize = 16;

/// A map sorted by key, iterated in key order (as a `BTreeMap`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VecMap<K, V> {
    items: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap { items: Vec::new() }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    fn find<Q: Ord + ?Sized>(&self, k: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.items.binary_search_by(|(x, _)| x.borrow().cmp(k))
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        match self.find(&k) {
            Ok(i) => Some(std::mem::replace(&mut self.items[i].1, v)),
            Err(i) => {
                grow(&mut self.items);
                self.items.insert(i, (k, v));
                None
            }
        }
    }

    pub fn get<Q: Ord + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(k).ok().map(|i| &self.items[i].1)
    }

    pub fn get_mut<Q: Ord + ?Sized>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.find(k).ok().map(|i| &mut self.items[i].1)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(k).is_ok()
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(k).ok()?;
        let (_, v) = self.items.remove(i);
        shrink(&mut self.items);
        Some(v)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// In key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.items.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.items.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.items.iter().map(|(_, v)| v)
    }

    /// The entry with the smallest key.
    pub fn first(&self) -> Option<(&K, &V)> {
        self.items.first().map(|(k, v)| (k, v))
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    /// A later entry with the same key replaces an earlier one, as in a `BTreeMap`.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(it: I) -> Self {
        let mut items: Vec<(K, V)> = it.into_iter().collect();
        // Stable: equal keys keep their input order, and the last of each run is kept.
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(K, V)> = Vec::with_capacity(items.len());
        for (k, v) in items {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        out.shrink_to_fit();
        VecMap { items: out }
    }
}

impl<'a, K, V> IntoIterator for &'a VecMap<K, V> {
    type Item = &'a (K, V);
    type IntoIter = std::slice::Iter<'a, (K, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// A set sorted by value (as a `BTreeSet`), for a handful of entries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VecSet<T> {
    items: Vec<T>,
}

impl<T> Default for VecSet<T> {
    fn default() -> Self {
        VecSet { items: Vec::new() }
    }
}

impl<T: Ord> VecSet<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// False when it was there already.
    pub fn insert(&mut self, v: T) -> bool {
        match self.items.binary_search(&v) {
            Ok(_) => false,
            Err(i) => {
                grow(&mut self.items);
                self.items.insert(i, v);
                true
            }
        }
    }

    /// False when it was not there.
    pub fn remove<Q: Ord + ?Sized>(&mut self, v: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        match self.items.binary_search_by(|x| x.borrow().cmp(v)) {
            Ok(i) => {
                self.items.remove(i);
                shrink(&mut self.items);
                true
            }
            Err(_) => false,
        }
    }

    pub fn contains<Q: Ord + ?Sized>(&self, v: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.items.binary_search_by(|x| x.borrow().cmp(v)).is_ok()
    }

    pub fn first(&self) -> Option<&T> {
        self.items.first()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// In order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }
}

impl<'a, T> IntoIterator for &'a VecSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// Room for one more entry: exactly one while small, half again beyond.
fn grow<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        let extra = if v.len() < EXACT_UP_TO {
            1
        } else {
            v.len() / 2
        };
        v.reserve_exact(extra);
    }
}

/// Gives spare room back once it is more than the entries need (a map that shrank).
fn shrink<T>(v: &mut Vec<T>) {
    if v.capacity() > EXACT_UP_TO && v.capacity() > v.len() * 2 {
        v.shrink_to(v.len() + v.len() / 2);
    } else if v.len() < EXACT_UP_TO && v.capacity() > EXACT_UP_TO {
        v.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// The same operations on a `VecMap` and a `BTreeMap` give the same contents in the same
    /// order, whatever the sequence (a fixed pseudo-random one, with repeats and removals).
    #[test]
    fn a_map_behaves_as_a_btree_map() {
        let mut m = VecMap::new();
        let mut b = BTreeMap::new();
        let mut x: u32 = 7;
        for step in 0..5000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let k = (x >> 8) % 97;
            if x.is_multiple_of(3) {
                assert_eq!(m.remove(&k), b.remove(&k));
            } else {
                assert_eq!(m.insert(k, step), b.insert(k, step));
            }
            assert_eq!(m.get(&k), b.get(&k));
            assert_eq!(m.contains_key(&k), b.contains_key(&k));
            assert_eq!(m.len(), b.len());
        }
        assert!(m.iter().eq(b.iter()));
        assert!(m.keys().eq(b.keys()));
        assert!(m.values().eq(b.values()));
        assert_eq!(m.first(), b.first_key_value());
        let first = *m.keys().next().unwrap();
        if let Some(v) = m.get_mut(&first) {
            *v = 0;
        }
        assert_eq!(m.first().map(|(_, v)| *v), Some(0));
    }

    #[test]
    fn a_small_map_holds_no_spare_room_and_gives_it_back() {
        let mut m = VecMap::new();
        for k in 0..5u8 {
            m.insert(k, ());
            assert_eq!(m.items.capacity(), m.len());
        }
        for k in 0..100u8 {
            m.insert(k, ());
        }
        assert!(m.items.capacity() <= 100 + 100 / 2);
        for k in 0..98u8 {
            m.remove(&k);
        }
        assert_eq!(m.len(), 2);
        assert!(m.items.capacity() <= EXACT_UP_TO);
    }

    #[test]
    fn collecting_keeps_the_last_of_equal_keys() {
        let m: VecMap<u8, &str> = [(2, "a"), (1, "b"), (2, "c")].into_iter().collect();
        assert_eq!(m.iter().collect::<Vec<_>>(), [(&1, &"b"), (&2, &"c")]);
        assert_eq!(m.items.capacity(), 2);
    }

    #[test]
    fn a_set_behaves_as_a_btree_set() {
        let mut s = VecSet::new();
        let mut b = BTreeSet::new();
        let mut x: u32 = 11;
        for _ in 0..3000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let v = (x >> 8) % 41;
            if x.is_multiple_of(4) {
                assert_eq!(s.remove(&v), b.remove(&v));
            } else {
                assert_eq!(s.insert(v), b.insert(v));
            }
            assert_eq!(s.contains(&v), b.contains(&v));
            assert_eq!(s.len(), b.len());
            assert_eq!(s.first(), b.first());
        }
        assert!(s.iter().eq(b.iter()));
        assert_eq!(s.is_empty(), b.is_empty());
    }
}
