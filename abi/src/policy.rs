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

use crate::lb::Addr;

/// Pin names, relative to the agent's pin folder.
pub mod names {
    /// Endpoint id → that endpoint's policy map (hash of LPM tries).
    pub const POLICY: &str = "OXI_POLICY";
    /// Address prefix → security identity (LPM trie).
    pub const IPCACHE: &str = "OXI_IPCACHE";
    /// The policy's own conntrack: flows an endpoint's policy let through.
    pub const POLICY_CT: &str = "OXI_POLICY_CT";
    /// Endpoint id → allow / deny / audit counters.
    pub const POLICY_STATS: &str = "OXI_POLICY_STATS";
    pub const PINNED: [&str; 4] = [POLICY, IPCACHE, POLICY_CT, POLICY_STATS];
}

/// Entries of one endpoint's policy map.
pub const MAX_ENTRIES: u32 = 16_384;
/// Endpoints with a policy map (`OXI_POLICY` outer entries).
pub const MAX_POLICY_ENDPOINTS: u32 = 65_536;
pub const MAX_IPCACHE: u32 = 262_144;
/// `OXI_POLICY_CT`'s compiled size; the agent sizes it at load (`--policy-ct-max-entries`).
pub const MAX_POLICY_CT: u32 = 65_536;

/// `EndpointInfo::flags` (abi::endpoint) bits the policy uses.
pub mod ep_flags {
    /// The endpoint's policy map is in force: look it up for every new flow (no map = drop).
    pub const POLICY: u32 = 1 << 0;
    /// Audit mode: a flow the policy would drop is counted and let through.
    pub const AUDIT: u32 = 1 << 1;
    /// Traffic from the local host (identity 1) into the pod is checked like any other instead of
    /// being allowed.
    pub const NO_HOST_ALLOW: u32 = 1 << 2;
}

/// Well-known identities the datapath needs.
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;

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

/// The data of a policy map key, after the LPM trie's `prefix_len` (the programs' view:
/// `Key<PolicyData>`; same layout as [`PolicyKey`] without its first field).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct PolicyData {
    /// Network byte order; 0 = any identity.
    pub identity: u32,
    pub direction: u8,
    pub proto: u8,
    /// Network byte order.
    pub dport: u16,
}

impl PolicyKey {
    pub fn data(&self) -> PolicyData {
        PolicyData {
            identity: self.identity,
            direction: self.direction,
            proto: self.proto,
            dport: self.dport,
        }
    }
}

/// LPM trie key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
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
    /// The entry's key's `prefix_len` (an LPM lookup does not say which prefix matched).
    pub prefix_len: u8,
    pub _pad: [u8; 3],
    /// Packets and bytes of new flows this entry decided (atomic adds by the programs; the agent
    /// writes 0 and never rewrites an entry that did not change).
    pub packets: u64,
    pub bytes: u64,
}

/// Which lookup decides, following the rule in this module's documentation: a deny from either
/// wins, otherwise the longer prefix, the peer's on a tie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    Peer,
    Any,
    /// No entry: drop.
    None,
}

#[inline(always)]
pub fn pick(peer: Option<(u8, u8)>, any: Option<(u8, u8)>) -> Pick {
    // (action, prefix_len) of each lookup.
    match (peer, any) {
        (Some((a, _)), _) if a == ACTION_DENY => Pick::Peer,
        (_, Some((a, _))) if a == ACTION_DENY => Pick::Any,
        (Some((_, lp)), Some((_, la))) => {
            if la > lp {
                Pick::Any
            } else {
                Pick::Peer
            }
        }
        (Some(_), None) => Pick::Peer,
        (None, Some(_)) => Pick::Any,
        (None, None) => Pick::None,
    }
}

/// `OXI_IPCACHE` value: the identity of the longest prefix holding an address, and the node it
/// lives on (zero when local or outside the cluster).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IpcacheValue {
    pub identity: u32,
    pub flags: u32,
    pub node: Addr,
}

/// `OXI_POLICY_CT` key: a flow as one endpoint sees it (its own address is implied).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyCtKey {
    pub endpoint: u32,
    pub remote: Addr,
    /// The endpoint's port, network byte order.
    pub local_port: u16,
    /// The peer's port, network byte order.
    pub remote_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyCtValue {
    /// bpf_ktime_get_ns of the last packet.
    pub last_ns: u64,
    /// The direction that opened the flow ([`DIR_INGRESS`] / [`DIR_EGRESS`]).
    pub direction: u8,
    /// Opened in audit mode (would have been dropped).
    pub audit: u8,
    /// Redirected: the proxy listener's port (network byte order) every packet of the flow in
    /// `direction` is handed to; 0 for a plain allow.
    pub proxy_port: u16,
    pub _pad: [u8; 4],
}

/// Idle time after which a policy conntrack entry no longer lets packets through unchecked.
pub const CT_TIMEOUT_TCP_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const CT_TIMEOUT_OTHER_NS: u64 = 180 * 1_000_000_000;

/// `OXI_POLICY_STATS` value: packets per outcome of one endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyStats {
    /// New flows allowed by an entry (or by the host rule).
    pub allowed: u64,
    /// Packets dropped by a deny entry, a missing entry or a redirect without proxy.
    pub denied: u64,
    /// Packets that would have been dropped, let through in audit mode.
    pub audited: u64,
    /// Packets of flows already allowed (conntrack).
    pub established: u64,
}

#[cfg(feature = "user")]
crate::pod!(
    PolicyKey,
    PolicyData,
    PolicyValue,
    IpcacheValue,
    PolicyCtKey,
    PolicyCtValue,
    PolicyStats
);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layout() {
        assert_eq!(size_of::<PolicyKey>(), 12);
        assert_eq!(align_of::<PolicyKey>(), 4);
        assert_eq!(size_of::<PolicyValue>(), 24);
        assert_eq!(size_of::<PolicyData>(), 8);
        assert_eq!(size_of::<PolicyCtKey>(), 28);
        assert_eq!(size_of::<IpcacheValue>(), 24);
        assert_eq!(PREFIX_FULL - PREFIX_STATIC, 24);
    }

    #[test]
    fn deny_wins_then_longest_then_peer() {
        let (allow, deny) = (ACTION_ALLOW, ACTION_DENY);
        assert_eq!(pick(Some((allow, 64)), Some((deny, 40))), Pick::Any);
        assert_eq!(pick(Some((deny, 40)), Some((allow, 64))), Pick::Peer);
        assert_eq!(pick(Some((allow, 48)), Some((allow, 64))), Pick::Any);
        assert_eq!(pick(Some((allow, 64)), Some((allow, 64))), Pick::Peer);
        assert_eq!(pick(None, Some((allow, 40))), Pick::Any);
        assert_eq!(pick(None, None), Pick::None);
    }
}
