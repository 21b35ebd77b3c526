//! Weighted Maglev consistent-hashing table builder.
//!
//! [`build`] turns a set of backends (a stable key such as `"10.0.0.1:80"` and a weight) into a lookup
//! table of `size` slots; the datapath picks a flow's backend as `table[hash(flow) % size]`. The table is
//! a pure function of the *set* of `(key, weight)` pairs, the size and the seed: the order in which the
//! backends are listed does not matter, so every LB box with the same configuration builds the identical
//! table, and removing one backend moves little more than that backend's own slots.
//!
//! How it works (details and measurements in `docs/maglev.md`):
//! 1. Backends with weight 0 are dropped; the rest are sorted by key.
//! 2. Each backend gets a slot *quota*: its exact share `size * w / Σw` rounded by the largest-remainder
//!    method, so quotas sum to `size` and each differs from the exact share by less than one slot (a
//!    backend whose share rounds to zero still gets one slot, taken from the largest quota).
//! 3. Each backend has a preference list, the permutation `(offset + j * skip) mod size` of all slots,
//!    with `offset` and `skip` two independent hashes of `(key, seed)`; `size` is prime and
//!    `1 <= skip < size`, so the list visits every slot once. Entries are computed on the fly.
//! 4. Backends take turns claiming the next free slot on their list, each at a pace proportional to its
//!    quota (backend `i` makes its `k`-th claim, k = 0, 1, ..., in round `floor(k * qmax / q_i)`; within a
//!    round, first come first served), until every slot is taken. With equal weights this is exactly the
//!    round-robin fill of the Maglev paper: everyone claims in every round, in key order, and the
//!    backends whose quota is one lower sit out the last round.
//!
//! Cost: about `size * ln(size)` probes of a one-bit-per-slot bitmap (which stays in L1 cache), fewer in
//! the last `sqrt(size / 4)` claims, which scan the few free slots instead; plus `O(N log N)` for sorting.
//! Scratch memory is `O(N + size)`, under 1 MiB at the largest size (M = 65521, N = 1000: 1.4 ms, 44 KiB).
#![forbid(unsafe_code)]

mod hash;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Smallest table size accepted.
pub const MIN_SIZE: u32 = 251;
/// Largest table size accepted.
pub const MAX_SIZE: u32 = 131_071;
/// Table size used when a service does not choose one (prime; ≥ 100 × 163 backends).
pub const DEFAULT_SIZE: u32 = 16_381;

/// One backend as seen by the table builder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend<'a> {
    /// Stable identity the permutation is hashed from, e.g. `"10.0.0.1:80"` or `"[2001:db8::1]:443"`.
    /// Two backends of one table must not share a key.
    pub key: &'a str,
    /// Relative share of the slots; 0 leaves the backend out of the table.
    pub weight: u32,
}

/// Why a table could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The table size is not a prime in [`MIN_SIZE`]`..=`[`MAX_SIZE`].
    #[error("Maglev table size {0} is not a prime between {MIN_SIZE} and {MAX_SIZE}")]
    InvalidSize(u32),
    /// More backends with a non-zero weight than slots.
    #[error("{backends} backends with non-zero weight do not fit a Maglev table of {size} slots")]
    TooManyBackends {
        /// Backends with a non-zero weight.
        backends: usize,
        /// The requested table size.
        size: u32,
    },
    /// Two backends have the same key.
    #[error("duplicate Maglev backend key {0:?}")]
    DuplicateKey(String),
}

/// Whether `size` is an accepted table size: a prime in [`MIN_SIZE`]`..=`[`MAX_SIZE`].
pub fn is_valid_size(size: u32) -> bool {
    (MIN_SIZE..=MAX_SIZE).contains(&size) && is_prime(size)
}

/// True if `n` is prime (trial division: fine for table sizes; correct for every `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Builds the Maglev lookup table for `backends`.
///
/// Returns a vector of exactly `size` entries; entry `s` is the index into `backends` of the backend that
/// owns slot `s`. Only backends with a non-zero weight appear. If no backend has a non-zero weight (which
/// includes an empty list) the result is an **empty vector**: the service has nothing to pick from.
///
/// The result depends only on the set of `(key, weight)` pairs, `size` and `seed`, not on the order of
/// `backends` (the returned indices of course refer to the caller's order).
///
/// Errors: [`Error::InvalidSize`] (checked first), [`Error::DuplicateKey`] (any two entries, whatever
/// their weights), [`Error::TooManyBackends`] when more than `size` backends have a non-zero weight.
pub fn build(backends: &[Backend<'_>], size: u32, seed: u32) -> Result<Vec<u32>, Error> {
    if !is_valid_size(size) {
        return Err(Error::InvalidSize(size));
    }
    // Indices of the caller's backends, sorted by key: the canonical order every box agrees on.
    let mut order: Vec<u32> = Vec::with_capacity(backends.len());
    for (i, backend) in backends.iter().enumerate() {
        if backend.weight > 0 {
            // More entries than u32 indices is certainly more than `size`.
            let Ok(i) = u32::try_from(i) else {
                return Err(Error::TooManyBackends { backends: i, size });
            };
            order.push(i);
        }
    }
    check_duplicates(backends)?;
    if order.is_empty() {
        return Ok(Vec::new());
    }
    if order.len() > size as usize {
        return Err(Error::TooManyBackends {
            backends: order.len(),
            size,
        });
    }
    order.sort_unstable_by_key(|&i| backends[i as usize].key);
    let weights: Vec<u32> = order.iter().map(|&i| backends[i as usize].weight).collect();
    let quotas = quotas(&weights, size);
    let lanes = order
        .iter()
        .zip(&quotas)
        .map(|(&index, &quota)| {
            let (pos, skip) = hash::offset_skip(backends[index as usize].key, seed, size);
            Lane {
                pos,
                skip,
                quota,
                taken: 0,
                next: NIL,
                index,
            }
        })
        .collect();
    Ok(fill(lanes, size))
}

/// Rejects two entries with the same key (weight 0 included: a key names one backend).
fn check_duplicates(backends: &[Backend<'_>]) -> Result<(), Error> {
    let mut keys: Vec<&str> = backends.iter().map(|b| b.key).collect();
    keys.sort_unstable();
    match keys.windows(2).find(|pair| pair[0] == pair[1]) {
        Some(pair) => Err(Error::DuplicateKey(pair[0].to_owned())),
        None => Ok(()),
    }
}

/// Slot quotas: `size * w / Σw` by the largest-remainder method (ties to the earlier backend in key
/// order), then every backend lifted to at least one slot at the expense of the largest quota.
/// `weights` are non-zero, at most `size` of them, in key order; the result sums to `size`.
fn quotas(weights: &[u32], size: u32) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let size64 = u64::from(size);
    // size * w < 2^17 * 2^32, no overflow; each quota is at most `size`.
    let mut quotas: Vec<u32> = weights
        .iter()
        .map(|&w| (size64 * u64::from(w) / total) as u32)
        .collect();
    let assigned: u64 = quotas.iter().map(|&q| u64::from(q)).sum();
    let leftover = (size64 - assigned) as usize; // < weights.len()
    if leftover > 0 {
        let mut by_remainder: Vec<usize> = (0..weights.len()).collect();
        by_remainder
            .sort_unstable_by_key(|&i| (Reverse(size64 * u64::from(weights[i]) % total), i));
        for &i in &by_remainder[..leftover] {
            quotas[i] += 1;
        }
    }
    if quotas.contains(&0) {
        let mut largest: BinaryHeap<(u32, Reverse<usize>)> = quotas
            .iter()
            .enumerate()
            .filter(|&(_, &q)| q > 1)
            .map(|(i, &q)| (q, Reverse(i)))
            .collect();
        for i in 0..quotas.len() {
            if quotas[i] == 0 {
                // Σ quotas = size ≥ backends, so while some quota is 0 another is above 1.
                let (q, Reverse(j)) = largest.pop().expect("a quota above 1 exists");
                quotas[j] = q - 1;
                quotas[i] = 1;
                if q - 1 > 1 {
                    largest.push((q - 1, Reverse(j)));
                }
            }
        }
    }
    quotas
}

const NIL: u32 = u32::MAX;

/// A backend's progress through its permutation.
struct Lane {
    /// The next permutation entry to try, `(offset + j * skip) mod size`.
    pos: u32,
    skip: u32,
    quota: u32,
    taken: u32,
    /// Next lane in the same round's queue.
    next: u32,
    /// Index into the caller's `backends`.
    index: u32,
}

/// FIFO queue of lanes per round, linked through `Lane::next`.
struct Rounds {
    head: Vec<u32>,
    tail: Vec<u32>,
}

impl Rounds {
    fn enqueue(&mut self, lanes: &mut [Lane], round: usize, lane: u32) {
        lanes[lane as usize].next = NIL;
        match self.tail[round] {
            NIL => self.head[round] = lane,
            last => lanes[last as usize].next = lane,
        }
        self.tail[round] = lane;
    }
}

/// Runs the weighted Maglev fill. Rounds are FIFO queues of lanes (intrusive lists through `Lane::next`):
/// a lane's claim `k` is queued for round `floor(k * qmax / quota)`, which strictly increases with `k`
/// (`qmax / quota >= 1`), so no per-round scan over all lanes is needed: the work is one queue operation
/// per slot plus the probes. All lanes start in round 0, in key order.
fn fill(lanes: Vec<Lane>, size: u32) -> Vec<u32> {
    fill_with(lanes, size, endgame_threshold(size))
}

/// When this many slots are left free, claims switch from walking the permutation (about
/// `size / free` probes of the bitmap per claim) to scanning the free slots (`free` multiply-and-modulo
/// steps per claim). Both give the same answer; the crossover was measured with `maglev-bench`.
fn endgame_threshold(size: u32) -> u32 {
    (size / ENDGAME_DIVISOR).isqrt()
}

const ENDGAME_DIVISOR: u32 = 4;

fn fill_with(mut lanes: Vec<Lane>, size: u32, endgame: u32) -> Vec<u32> {
    let qmax = lanes.iter().map(|l| l.quota).max().unwrap_or(0);
    // claim < quota <= qmax, so the round is below qmax.
    let round_of =
        |claim: u32, quota: u32| (u64::from(claim) * u64::from(qmax) / u64::from(quota)) as usize;
    let mut rounds = Rounds {
        head: vec![NIL; qmax as usize],
        tail: vec![NIL; qmax as usize],
    };
    for lane in 0..lanes.len() {
        let round = round_of(0, lanes[lane].quota);
        rounds.enqueue(&mut lanes, round, lane as u32);
    }

    let mut slots = Slots {
        size,
        taken: vec![0u64; (size as usize).div_ceil(64)],
        free: size,
        endgame,
        last_free: Vec::new(),
    };
    let mut table = vec![0u32; size as usize];
    for round in 0..qmax as usize {
        let mut current = rounds.head[round];
        while current != NIL {
            let lane = &mut lanes[current as usize];
            let next_in_round = lane.next;
            let slot = slots.claim(&mut lane.pos, lane.skip);
            table[slot as usize] = lane.index;
            lane.taken += 1;
            if lane.taken < lane.quota {
                let later = round_of(lane.taken, lane.quota);
                rounds.enqueue(&mut lanes, later, current);
            }
            current = next_in_round;
        }
    }
    table
}

/// Which slots are taken.
struct Slots {
    size: u32,
    /// One bit per slot, set when taken (8 KiB at size 65521: stays in L1 cache).
    taken: Vec<u64>,
    /// Number of free slots.
    free: u32,
    /// At or below this many free slots, `last_free` lists them and replaces the bitmap walk.
    endgame: u32,
    last_free: Vec<u32>,
}

impl Slots {
    /// Takes the first free slot at or after `*pos` in the permutation with step `skip`, and moves
    /// `*pos` just past it. A free slot must exist; since `size` is prime the walk reaches every slot.
    fn claim(&mut self, pos: &mut u32, skip: u32) -> u32 {
        let slot = if self.free > self.endgame {
            self.walk(pos, skip)
        } else {
            if self.last_free.is_empty() {
                self.last_free = (0..self.size).filter(|&s| !self.is_taken(s)).collect();
            }
            self.scan(pos, skip)
        };
        self.free -= 1;
        slot
    }

    fn is_taken(&self, slot: u32) -> bool {
        self.taken[(slot / 64) as usize] & (1 << (slot % 64)) != 0
    }

    fn walk(&mut self, pos: &mut u32, skip: u32) -> u32 {
        let mut p = *pos;
        loop {
            let (word, bit) = ((p / 64) as usize, 1u64 << (p % 64));
            let free = self.taken[word] & bit == 0;
            let slot = p;
            p += skip;
            if p >= self.size {
                p -= self.size;
            }
            if free {
                self.taken[word] |= bit;
                *pos = p;
                return slot;
            }
        }
    }

    /// The permutation index of slot `s`, counted from `*pos`, is `(s - pos) / skip mod size`; the
    /// nearest free slot is the one with the smallest index (indices are distinct: it is a permutation).
    fn scan(&mut self, pos: &mut u32, skip: u32) -> u32 {
        let size = u64::from(self.size);
        let inverse = u64::from(inverse_mod(skip, self.size));
        let (mut best, mut best_steps) = (0, u64::MAX);
        for (i, &slot) in self.last_free.iter().enumerate() {
            let ahead = if slot >= *pos {
                slot - *pos
            } else {
                slot + self.size - *pos
            };
            let steps = u64::from(ahead) * inverse % size;
            if steps < best_steps {
                (best, best_steps) = (i, steps);
            }
        }
        let slot = self.last_free.swap_remove(best);
        self.taken[(slot / 64) as usize] |= 1 << (slot % 64);
        *pos = ((u64::from(*pos) + (best_steps + 1) * u64::from(skip)) % size) as u32;
        slot
    }
}

/// `a⁻¹ mod m` for a prime `m` and `0 < a < m` (extended Euclid).
fn inverse_mod(a: u32, m: u32) -> u32 {
    let (mut r0, mut r1) = (i64::from(m), i64::from(a));
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    t0.rem_euclid(i64::from(m)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..40).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]);
        assert!(is_prime(65521) && is_prime(131071) && is_prime(16381));
        assert!(!is_prime(65535) && !is_prime(131073) && !is_prime(16383));
        // The whole u32 range, without overflow: the largest u32 prime, and u32::MAX = 3·5·17·257·65537.
        assert!(is_prime(4_294_967_291) && !is_prime(u32::MAX));
    }

    #[test]
    fn quotas_round_to_the_nearest_and_sum_to_size() {
        assert_eq!(quotas(&[1, 1, 1], 251), [84, 84, 83]);
        assert_eq!(quotas(&[1, 2], 251), [84, 167]); // 83.67, 167.33
        assert_eq!(quotas(&[5], 251), [251]);
        // Shares that round to zero are lifted to one slot, from the largest quota.
        let q = quotas(&[1, 1, 1_000_000], 251);
        assert_eq!(q, [1, 1, 249]);
        let q = quotas(&[u32::MAX; 7], 251);
        assert_eq!(q.iter().sum::<u32>(), 251);
    }

    #[test]
    fn round_schedule_is_proportional() {
        // Quotas 3 and 1 over 3 rounds: both claim in round 0 (in order), then the large one alone.
        let lanes = [3u32, 1]
            .iter()
            .enumerate()
            .map(|(i, &quota)| Lane {
                pos: 0,
                skip: 1,
                quota,
                taken: 0,
                next: NIL,
                index: i as u32,
            })
            .collect();
        // size 4 is not prime, but skip 1 visits every slot anyway.
        assert_eq!(fill(lanes, 4), [0, 1, 0, 0]);
    }

    /// The Maglev paper's population loop, written as plainly as possible (permutations materialised).
    fn paper_fill(keys: &[&str], size: u32, seed: u32) -> Vec<u32> {
        let m = size as usize;
        let perms: Vec<Vec<usize>> = keys
            .iter()
            .map(|key| {
                let (offset, skip) = hash::offset_skip(key, seed, size);
                (0..m)
                    .map(|j| (offset as usize + j * skip as usize) % m)
                    .collect()
            })
            .collect();
        let mut next = vec![0usize; keys.len()];
        let mut entry = vec![u32::MAX; m];
        let mut filled = 0;
        'rounds: loop {
            for (i, perm) in perms.iter().enumerate() {
                let mut c = perm[next[i]];
                while entry[c] != u32::MAX {
                    next[i] += 1;
                    c = perm[next[i]];
                }
                entry[c] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'rounds;
                }
            }
        }
        entry
    }

    #[test]
    fn inverse() {
        for m in [251u32, 16381, 131071] {
            for a in [1, 2, 3, 250, m - 1, m / 2] {
                assert_eq!(
                    u64::from(a) * u64::from(inverse_mod(a, m)) % u64::from(m),
                    1
                );
            }
        }
    }

    #[test]
    fn endgame_scan_gives_the_walk_result() {
        let keys: Vec<String> = (0..37).map(|i| format!("b{i}")).collect();
        for size in [251, 1009, 16381] {
            let lanes = || {
                let weights: Vec<u32> = (0..keys.len() as u32).map(|i| 1 + i % 5).collect();
                let quotas = quotas(&weights, size);
                keys.iter()
                    .zip(quotas)
                    .enumerate()
                    .map(|(i, (key, quota))| {
                        let (pos, skip) = hash::offset_skip(key, 11, size);
                        let (taken, next, index) = (0, NIL, i as u32);
                        Lane {
                            pos,
                            skip,
                            quota,
                            taken,
                            next,
                            index,
                        }
                    })
                    .collect()
            };
            let walk_only = fill_with(lanes(), size, 0);
            for endgame in [1, 10, endgame_threshold(size), size.min(1009)] {
                assert_eq!(
                    fill_with(lanes(), size, endgame),
                    walk_only,
                    "size {size}, endgame {endgame}"
                );
            }
        }
    }

    #[test]
    fn equal_weights_fill_exactly_like_the_paper() {
        for (n, size, seed) in [
            (1, 251, 0),
            (7, 251, 3),
            (10, 1009, 1),
            (100, 16381, 9),
            (250, 251, 5),
        ] {
            let keys: Vec<String> = (0..n)
                .map(|i| format!("192.168.{}.{}:443", i / 256, i % 256))
                .collect();
            let mut sorted: Vec<&str> = keys.iter().map(String::as_str).collect();
            sorted.sort_unstable();
            let backends: Vec<Backend> = sorted
                .iter()
                .map(|key| Backend { key, weight: 3 })
                .collect();
            assert_eq!(
                build(&backends, size, seed).unwrap(),
                paper_fill(&sorted, size, seed),
                "n={n} size={size}"
            );
        }
    }
}
