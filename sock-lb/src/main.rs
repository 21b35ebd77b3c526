//! oxilium's cgroup socket programs: service translation at connect() and unconnected UDP
//! sendmsg(), reverse translation at recvmsg() and getpeername(), for IPv4 and IPv6 sockets
//! (IPv4-mapped destinations on IPv6 sockets included). The logic is in datapath::sock; see
//! docs/sock-lb.md.
#![no_std]
#![no_main]

use abi::sock::reason;
use aya_ebpf::{
    btf_maps::{Array, LruHashMap, PerCpuArray, SkStorage},
    macros::{btf_map, cgroup_sock_addr},
    programs::SockAddrContext,
};
use datapath::sock::{
    AffinityMap, AffinityTimeoutMap, RevNatMap, RevNatRingMap, RevNatSkMap, SockConfigMap,
    SockMaps, SockStatsMap, forward, reverse,
};

// The socket-LB's own maps (see datapath::sock::SockMaps for why they are defined here). Their
// names are abi::sock::names; the shared LB maps come from datapath::maps.
#[btf_map]
static OXI_SOCK_REVNAT: RevNatMap = LruHashMap::new();
#[btf_map]
static OXI_SOCK_REVNAT_SK: RevNatSkMap = SkStorage::new();
#[btf_map]
static OXI_SOCK_REVNAT_RING: RevNatRingMap = Array::new();
#[btf_map]
static OXI_SOCK_AFFINITY: AffinityMap = LruHashMap::new();
#[btf_map]
static OXI_SOCK_AFFINITY_TIMEOUT: AffinityTimeoutMap = Array::new();
#[btf_map]
static OXI_SOCK_STATS: SockStatsMap = PerCpuArray::new();
#[btf_map]
static OXI_SOCK_CONFIG: SockConfigMap = Array::new();

struct Maps;

impl SockMaps for Maps {
    #[inline(always)]
    fn revnat() -> &'static RevNatMap {
        &OXI_SOCK_REVNAT
    }
    #[inline(always)]
    fn revnat_sk() -> &'static RevNatSkMap {
        &OXI_SOCK_REVNAT_SK
    }
    #[inline(always)]
    fn revnat_ring() -> &'static RevNatRingMap {
        &OXI_SOCK_REVNAT_RING
    }
    #[inline(always)]
    fn affinity() -> &'static AffinityMap {
        &OXI_SOCK_AFFINITY
    }
    #[inline(always)]
    fn affinity_timeout() -> &'static AffinityTimeoutMap {
        &OXI_SOCK_AFFINITY_TIMEOUT
    }
    #[inline(always)]
    fn stats() -> &'static SockStatsMap {
        &OXI_SOCK_STATS
    }
    #[inline(always)]
    fn config() -> &'static SockConfigMap {
        &OXI_SOCK_CONFIG
    }
}

#[cgroup_sock_addr(connect4)]
pub fn oxilium_connect4(ctx: SockAddrContext) -> i32 {
    forward::<Maps>(&ctx, false, reason::CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn oxilium_connect6(ctx: SockAddrContext) -> i32 {
    forward::<Maps>(&ctx, true, reason::CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn oxilium_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward::<Maps>(&ctx, false, reason::SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn oxilium_sendmsg6(ctx: SockAddrContext) -> i32 {
    forward::<Maps>(&ctx, true, reason::SENDMSG)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn oxilium_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse::<Maps>(&ctx, false, reason::RECVMSG)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn oxilium_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse::<Maps>(&ctx, true, reason::RECVMSG)
}

#[cgroup_sock_addr(getpeername4)]
pub fn oxilium_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse::<Maps>(&ctx, false, reason::GETPEERNAME)
}

#[cgroup_sock_addr(getpeername6)]
pub fn oxilium_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse::<Maps>(&ctx, true, reason::GETPEERNAME)
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
