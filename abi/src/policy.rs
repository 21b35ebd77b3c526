//! Per-endpoint policy maps: (identity, direction, protocol, destination port prefix) → verdict.
//!
//! The map is an LPM trie. The key's data is identity (32 bits) · direction (8) · protocol (8) · port
//! (16), all in network byte order; `prefix_len` counts the significant bits. Identity and direction are
//! always exact (40 bits); protocol 0 with `prefix_len` 40 matches any protocol and port; a protocol with
//! `prefix_len` 48 + n matches ports whose n leading bits equal `dport`'s. Identity 0 is the wildcard:
//! it matches every peer.
//!
//! The programs look up twice, once with the peer's identity and once with identity 0. A deny from
//! either lookup wins; otherwise the entry with the longer prefix decides, the peer's on a tie; no entry
//! means drop. An endpoint not under enforcement in a direction has a wildcard allow entry with
//! `prefix_len` 40. The agent computes entries so that this rule gives the union of every policy's
//! allows minus every deny (see the policy crate).

/// Pin name prefix; the map of endpoint `n` is pinned as `OXI_POLICY_<n>`.
pub const MAP_PREFIX: &str = "OXI_POLICY_";
pub const MAX_ENTRIES: u32 = 16_384;

pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Bits always matched exactly: identity (32) and direction (8).
pub const PREFIX_STATIC: u32 = 40;
/// A fully specified key: static bits, protocol (8) and port (16).
pub const PREFIX_FULL: u32 = 64;

pub const ACTION_ALLOW: u8 = 1;
pub const ACTION_DENY: u8 = 2;
/// Allow, but steer the flow to the L7 proxy listening on `proxy_port`.
pub const ACTION_REDIRECT: u8 = 3;

/// Flags of [`PolicyValue`]: the endpoint is in audit mode (report drops, forward anyway).
pub const FLAG_AUDIT: u8 = 1;

/// LPM trie key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyKey {
    /// Significant bits after this field: 40 to 64.
    pub prefix_len: u32,
    /// Network byte order; 0 = any identity.
    pub identity: u32,
    pub direction: u8,
    /// IP protocol number; 0 = any.
    pub proto: u8,
    /// Destination port, network byte order.
    pub dport: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyValue {
    pub action: u8,
    pub flags: u8,
    /// Network byte order; 0 unless `action` is [`ACTION_REDIRECT`].
    pub proxy_port: u16,
    pub _pad: u32,
}

#[cfg(feature = "user")]
crate::pod!(PolicyKey, PolicyValue);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layout() {
        assert_eq!(size_of::<PolicyKey>(), 12);
        assert_eq!(align_of::<PolicyKey>(), 4);
        assert_eq!(size_of::<PolicyValue>(), 8);
        assert_eq!(PREFIX_FULL - PREFIX_STATIC, 24);
    }
}
