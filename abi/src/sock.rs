//! Socket-LB maps (cgroup connect / sendmsg / recvmsg / getpeername translation) and the constants
//! that tell socket-level frontends and session affinity apart.
//!
//! The socket programs share `OXI_SERVICES`, `OXI_BACKENDS` and `OXI_TABLES` with the packet
//! programs (see [`crate::lb`]); they look frontends up with [`SCOPE_INTERNAL`], so an agent can
//! give traffic from inside the node a different view (e.g. internalTrafficPolicy) than traffic
//! from outside ([`crate::lb::SCOPE_EXTERNAL`]).
//!
//! Session affinity: the service value's `flags` carries [`SVC_FLAG_AFFINITY`]; the timeout lives
//! in `OXI_SOCK_AFFINITY_TIMEOUT[service id]` (seconds), because `ct_timeout_s` keeps its conntrack
//! meaning for the packet programs. The flag gates the lookup, so a service id reused after a
//! removal never inherits a stale timeout: without the flag the timeout entry is ignored.
use crate::lb::Addr;

pub use crate::lb::SCOPE_EXTERNAL;

/// Scope of frontends used by clients inside the node (pods and host processes): the scope the
/// socket programs look up.
pub const SCOPE_INTERNAL: u8 = 1;

/// `ServiceValue::flags`: ClientIP session affinity (timeout in `OXI_SOCK_AFFINITY_TIMEOUT`).
pub const SVC_FLAG_AFFINITY: u16 = 1 << 0;

/// Default Kubernetes sessionAffinityConfig.clientIP.timeoutSeconds (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// `OXI_SOCK_REVNAT`'s compiled size; the agent sizes it at load (`--sock-revnat-max-entries`).
pub const MAX_SOCK_REVNAT: u32 = 262_144;
/// Slots of `OXI_SOCK_REVNAT_RING` (a power of two: the slot is the cookie's low bits).
pub const SOCK_REVNAT_RING: u32 = 262_144;
pub const MAX_AFFINITY: u32 = 131_072;

/// Pin names of the socket-LB maps, relative to the agent's pin folder.
pub mod names {
    pub const REVNAT: &str = "OXI_SOCK_REVNAT";
    /// Socket-local storage of connected sockets ([`super::SockRevNat`]).
    pub const REVNAT_SK: &str = "OXI_SOCK_REVNAT_SK";
    /// TCP connects' reverse entries by socket cookie ([`super::RingRevNat`]).
    pub const REVNAT_RING: &str = "OXI_SOCK_REVNAT_RING";
    pub const AFFINITY: &str = "OXI_SOCK_AFFINITY";
    pub const AFFINITY_TIMEOUT: &str = "OXI_SOCK_AFFINITY_TIMEOUT";
    pub const STATS: &str = "OXI_SOCK_STATS";
    pub const CONFIG: &str = "OXI_SOCK_CONFIG";
    /// Every pinned socket-LB map (the shared LB maps are in `crate::lb::names::PINNED`).
    pub const PINNED: [&str; 7] = [
        REVNAT,
        REVNAT_SK,
        REVNAT_RING,
        AFFINITY,
        AFFINITY_TIMEOUT,
        STATS,
        CONFIG,
    ];
}

/// `OXI_SOCK_CONFIG[0]`: the socket LB's settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockConfig {
    /// 0: every socket of the cgroup is translated. Otherwise only sockets of the network
    /// namespace with this cookie (the node's, `SO_NETNS_COOKIE` / `bpf_get_netns_cookie`); the
    /// pods' traffic is then translated per packet by the pod tc programs ([`pod`]).
    pub host_netns_cookie: u64,
}

/// (socket cookie, backend address, backend port) → the service address the application asked
/// for. Written at unconnected UDP sendmsg, read at recvmsg (connected sockets keep theirs in
/// [`SockRevNat`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RevKey {
    pub cookie: u64,
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevValue {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub _pad: u16,
    pub service_id: u32,
}

/// The reverse entry of a connected socket (TCP, connected UDP), kept in the socket's own storage
/// (`OXI_SOCK_REVNAT_SK`, a BPF_MAP_TYPE_SK_STORAGE map): the backend connect() went to and the
/// service address the application asked for. Written at connect(), read at getpeername() /
/// recvmsg() when the peer is that backend, freed by the kernel with the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevNat {
    pub backend: Addr,
    pub service: Addr,
    /// Network byte order.
    pub backend_port: u16,
    /// Network byte order.
    pub service_port: u16,
    pub service_id: u32,
}

/// A slot of `OXI_SOCK_REVNAT_RING` (an array indexed by the socket cookie's low bits): the
/// reverse entry of a TCP connect, written without a lock or an allocation. Valid for the socket
/// whose cookie it holds; the socket [`SOCK_REVNAT_RING`] cookies later takes the slot over. The
/// first getpeername() copies it into the socket's storage, where it then stays.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RingRevNat {
    pub cookie: u64,
    pub rev: SockRevNat,
}

/// (service id, client) → backend. The client is the network namespace of the socket
/// (`bpf_get_netns_cookie`): a pod, or the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    pub netns_cookie: u64,
    pub service_id: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    /// bpf_ktime_get_ns() of the latest connect / sendmsg that used this entry.
    pub last_used_ns: u64,
}

/// Indexes of `OXI_SOCK_STATS` (per-CPU u64 counters).
pub mod reason {
    /// connect() translated to a backend.
    pub const CONNECT: u32 = 0;
    /// Unconnected UDP datagram translated at sendmsg().
    pub const SENDMSG: u32 = 1;
    /// Service without a usable backend: connect / sendmsg refused (ECONNREFUSED).
    pub const NO_BACKEND: u32 = 2;
    /// Datagram source restored to the service address at recvmsg().
    pub const RECVMSG: u32 = 3;
    /// getpeername() answered with the service address.
    pub const GETPEERNAME: u32 = 4;
    /// Backend taken from a fresh affinity entry.
    pub const AFFINITY_HIT: u32 = 5;
    pub const COUNT: u32 = 6;
    pub const NAMES: [&str; COUNT as usize] = [
        "connect",
        "sendmsg",
        "no_backend",
        "recvmsg",
        "getpeername",
        "affinity_hit",
    ];
}

/// The per-packet fallback for pods when the socket LB serves the node's namespace only: tc
/// programs on the host side of every pod's veth translate `SCOPE_INTERNAL` frontends (DNAT,
/// source kept) and restore the replies. They share `OXI_SERVICES`, `OXI_BACKENDS`,
/// `OXI_TABLES`, `OXI_CONNTRACK` and `OXI_SNAT` with the other programs and the socket LB's
/// affinity maps (`OXI_SOCK_AFFINITY`, `OXI_SOCK_AFFINITY_TIMEOUT`), with the client keyed by
/// [`pod::affinity_client`] instead of a netns cookie.
pub mod pod {
    use crate::lb::Addr;

    pub mod names {
        pub const STATS: &str = "OXI_POD_STATS";
        /// The maps of the pod programs (besides the shared LB maps): their own counters and
        /// the socket LB's affinity maps.
        pub const PINNED: [&str; 3] = [
            STATS,
            super::super::names::AFFINITY,
            super::super::names::AFFINITY_TIMEOUT,
        ];
    }

    /// Marks an affinity client that is a pod address (netns cookies are counted up from 1 and
    /// never reach this bit).
    pub const AFFINITY_ADDR_BIT: u64 = 1 << 63;

    /// The `AffinityKey::netns_cookie` of a pod client on the packet path: a 63-bit FNV-1a hash
    /// of its address with [`AFFINITY_ADDR_BIT`] set.
    #[inline(always)]
    pub const fn affinity_client(addr: &Addr) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut i = 0;
        while i < 16 {
            h ^= addr[i] as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        h | AFFINITY_ADDR_BIT
    }

    /// The affinity entry of an address-identified client (the packet path: pods, and clients
    /// from outside through NodePort) for one service.
    #[inline(always)]
    pub const fn affinity_key(client: &Addr, service_id: u32) -> super::AffinityKey {
        super::AffinityKey {
            netns_cookie: affinity_client(client),
            service_id,
            _pad: 0,
        }
    }

    /// Indexes of `OXI_POD_STATS` (per-CPU [`crate::lb::Counter`]s).
    pub mod reason {
        /// Packet from a pod to a frontend DNAT'ed to a backend (tc ingress of the pod's veth).
        pub const FORWARD: u32 = 0;
        /// Reply to a pod restored to come from the frontend (tc egress of the pod's veth).
        pub const REPLY: u32 = 1;
        /// Frontend without a usable backend (dropped).
        pub const NO_BACKEND: u32 = 2;
        /// Backend of another address family than the packet (dropped).
        pub const FAMILY: u32 = 3;
        /// A checksum / store helper failed (dropped).
        pub const ERROR: u32 = 4;
        /// Backend taken from a fresh ClientIP affinity entry.
        pub const AFFINITY_HIT: u32 = 5;
        pub const COUNT: u32 = 6;
        pub const NAMES: [&str; COUNT as usize] = [
            "forward",
            "reply",
            "no_backend",
            "family",
            "error",
            "affinity_hit",
        ];
    }
}

#[cfg(feature = "user")]
crate::pod!(
    RevKey,
    RevValue,
    SockRevNat,
    RingRevNat,
    AffinityKey,
    AffinityValue,
    SockConfig
);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(size_of::<RevKey>(), 32);
        assert_eq!(size_of::<RevValue>(), 24);
        assert_eq!(size_of::<SockRevNat>(), 40);
        assert_eq!(size_of::<RingRevNat>(), 48);
        assert!(SOCK_REVNAT_RING.is_power_of_two());
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<SockConfig>(), 8);
    }

    #[test]
    fn pod_clients_never_look_like_netns_cookies() {
        let a = crate::lb::v4_mapped([10, 244, 1, 2]);
        let b = crate::lb::v4_mapped([10, 244, 2, 1]);
        assert_ne!(pod::affinity_client(&a), pod::affinity_client(&b));
        assert!(pod::affinity_client(&a) & pod::AFFINITY_ADDR_BIT != 0);
    }

    #[test]
    fn scopes_differ() {
        assert_ne!(SCOPE_INTERNAL, SCOPE_EXTERNAL);
    }
}
