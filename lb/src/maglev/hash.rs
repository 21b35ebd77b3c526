//! The stable 64-bit hash behind every backend's permutation.
//!
//! This function is part of the table format: every LB box (and every version of oxilium) must compute the
//! same value for the same `(key, seed)`, so it is written out here instead of borrowed from `std`
//! (`DefaultHasher`'s algorithm is explicitly unspecified and may change between Rust releases).
//! Changing anything in this file changes every Maglev table; the golden tests pin it.
//!
//! Construction: the key is read as little-endian 64-bit words (the last one zero-padded, the length folded
//! into the initial state so padding is unambiguous); each word is mixed into the state with a
//! multiply/rotate step and the result goes through the MurmurHash3 64-bit finaliser (`fmix64`), whose
//! avalanche behaviour is well studied. It is not a cryptographic hash: the seed is configuration, not a
//! secret, and the inputs (backend addresses) are chosen by the operator.

const K0: u64 = 0x9e37_79b9_7f4a_7c15;
const K1: u64 = 0xc2b2_ae3d_27d4_eb4f;
const K2: u64 = 0x1656_67b1_9e37_79f9;

/// MurmurHash3's 64-bit finaliser: a bijection with full avalanche.
#[inline]
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[inline]
fn absorb(state: u64, word: u64) -> u64 {
    (state ^ fmix64(word.wrapping_mul(K1)))
        .rotate_left(27)
        .wrapping_mul(K0)
        .wrapping_add(K2)
}

/// Hashes `bytes` under a 64-bit `seed`.
pub(crate) fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut state = fmix64(seed ^ K0) ^ (bytes.len() as u64).wrapping_mul(K1);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(word);
        state = absorb(state, u64::from_le_bytes(buf));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        state = absorb(state, u64::from_le_bytes(buf));
    }
    fmix64(state)
}

/// Domain tags that make the offset and skip hashes two independent functions of `(key, seed)`.
const OFFSET_DOMAIN: u64 = 0x6f66_6673; // "offs"
const SKIP_DOMAIN: u64 = 0x736b_6970; // "skip"

/// A backend's place in the table: its permutation is `(offset + j * skip) mod size` for j = 0, 1, ...
/// `size` must be prime (checked by the caller), so `skip` in `1..size` makes that a full permutation.
pub(crate) fn offset_skip(key: &str, seed: u32, size: u32) -> (u32, u32) {
    let seed = u64::from(seed) << 32;
    let offset = hash64(key.as_bytes(), seed | OFFSET_DOMAIN) % u64::from(size);
    let skip = hash64(key.as_bytes(), seed | SKIP_DOMAIN) % u64::from(size - 1) + 1;
    // Both are below `size`, which is at most 131071.
    (offset as u32, skip as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_values() {
        // The table format depends on these exact values; see the module docs before changing them.
        assert_eq!(hash64(b"", 0), hash64(b"", 0));
        assert_ne!(
            hash64(b"", 0),
            hash64(b"\0", 0),
            "length is part of the input"
        );
        assert_ne!(hash64(b"a", 0), hash64(b"a", 1));
        let pinned = [
            hash64(b"", 0),
            hash64(b"10.0.0.1:80", 0),
            hash64(b"10.0.0.1:80", 7),
            hash64(b"[2001:db8::1]:443", 0),
        ];
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [u64; 4] = [
        0x6393_d51c_06c6_18dc,
        0xb4c6_9ea0_7611_237e,
        0x1e9d_315b_2994_42e8,
        0x7d19_c257_c41f_095c,
    ];

    #[test]
    fn offset_and_skip_in_range() {
        for size in [251u32, 16381, 131071] {
            for i in 0..2000 {
                let key = format!("10.{}.{}.{}:80", i / 65536, (i / 256) % 256, i % 256);
                let (offset, skip) = offset_skip(&key, i, size);
                assert!(offset < size);
                assert!((1..size).contains(&skip));
            }
        }
    }

    #[test]
    fn bits_look_uniform() {
        // Each output bit should be set for about half of 4096 sequential keys.
        let mut ones = [0u32; 64];
        for i in 0..4096u32 {
            let h = hash64(format!("10.0.{}.{}:8080", i / 256, i % 256).as_bytes(), 0);
            for (bit, count) in ones.iter_mut().enumerate() {
                *count += ((h >> bit) & 1) as u32;
            }
        }
        for (bit, &count) in ones.iter().enumerate() {
            assert!((1848..=2248).contains(&count), "bit {bit}: {count}/4096");
        }
    }
}
