//! A small ordered set kept as one sorted vector, for the many tiny sets an agent holds per
//! Service or address (the frontends competing for one address, a Service's EndpointSlices). A
//! `BTreeSet` allocates a node of eleven entries for the first one; this holds exactly what it
//! contains while small (and grows by half once past [`EXACT_UP_TO`]). Lookups are binary
//! searches; an insert or a removal moves the entries after it (cheap at the sizes it holds).
use std::borrow::Borrow;

/// Up to this many entries the vector holds no spare room.
pub const EXACT_UP_TO: usize = 16;

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
    use std::collections::BTreeSet;

    #[test]
    fn a_small_set_holds_no_spare_room_and_gives_it_back() {
        let mut s = VecSet::new();
        for k in 0..5u8 {
            s.insert(k);
            assert_eq!(s.items.capacity(), s.len());
        }
        for k in 0..100u8 {
            s.insert(k);
        }
        assert!(s.items.capacity() <= 100 + 100 / 2);
        for k in 0..98u8 {
            s.remove(&k);
        }
        assert_eq!(s.len(), 2);
        assert!(s.items.capacity() <= EXACT_UP_TO);
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
