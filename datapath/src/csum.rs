//! Internet checksum arithmetic (RFC 1071 / RFC 1624). Values are 16-bit words exactly as they sit in
//! memory; one's-complement sums do not depend on byte order as long as every word is read the same way.

/// Folds a 32-bit one's-complement accumulator to 16 bits.
#[inline(always)]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// An incremental update: starts from a stored checksum, accumulates removed and added words.
#[derive(Clone, Copy)]
pub struct Delta(u32);

impl Delta {
    #[inline(always)]
    pub fn new() -> Self {
        Delta(0)
    }

    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 += (!old) as u32 + new as u32;
    }

    #[inline(always)]
    pub fn bytes<const N: usize>(&mut self, old: &[u8; N], new: &[u8; N]) {
        let mut i = 0;
        while i + 1 < N {
            self.word(
                u16::from_ne_bytes([old[i], old[i + 1]]),
                u16::from_ne_bytes([new[i], new[i + 1]]),
            );
            i += 2;
        }
    }

    /// Accumulates the change of a 16-byte address through bpf_csum_diff (one helper call: an
    /// open-coded sum over packet memory makes the compiler load every word first and spill
    /// them to the stack). False when the helper refused (bounds: the caller checked them).
    #[inline(always)]
    pub fn addr16(&mut self, old: *const [u8; 16], new: *const [u8; 16]) -> bool {
        // SAFETY: both point to 16 readable bytes; the helper only reads them.
        let d = unsafe {
            aya_ebpf::helpers::generated::bpf_csum_diff(old as *mut u32, 16, new as *mut u32, 16, 0)
        };
        if d < 0 {
            return false;
        }
        self.0 += fold(d as u32) as u32;
        true
    }

    /// The change so far, folded to 16 bits (to carry it between functions).
    #[inline(always)]
    pub fn folded(&self) -> u16 {
        fold(self.0)
    }

    /// Adds a change folded by [`Delta::folded`].
    #[inline(always)]
    pub fn add_folded(&mut self, d: u16) {
        self.0 += d as u32;
    }

    /// Applies the accumulated change to a stored checksum (RFC 1624: HC' = ~(~HC + ~m + m')).
    #[inline(always)]
    pub fn apply(&self, check: u16) -> u16 {
        let s = (!check) as u32 + fold(self.0) as u32;
        !fold(s)
    }
}

impl Default for Delta {
    fn default() -> Self {
        Self::new()
    }
}

/// Full checksum of an IPv4 header of `N` 16-bit words (the header's own check field must be 0).
#[inline(always)]
pub fn ipv4_header<const N: usize>(words: &[u16; N]) -> u16 {
    let mut s: u32 = 0;
    let mut i = 0;
    while i < N {
        s += words[i] as u32;
        i += 1;
    }
    !fold(s)
}
