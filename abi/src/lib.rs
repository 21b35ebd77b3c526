//! The map ABI between oxilium's eBPF programs and its agent: one definition of every key, value and
//! constant, compiled into both sides. Every type is `#[repr(C)]` with explicit padding so that the
//! layout is the same on the host and on `bpfel-unknown-none`.
//!
//! Addresses are stored as 16 bytes in network byte order; IPv4 addresses use the IPv4-mapped IPv6
//! form `::ffff:a.b.c.d`, so one map and one code path serve both families. Ports are stored in
//! network byte order, as they appear in packets.
#![no_std]

pub mod bandwidth;
pub mod ct;
pub mod endpoint;
pub mod event;
pub mod lb;
pub mod nodeport;
pub mod policy;
pub mod proxy;
pub mod sock;

/// Implements `aya::Pod` for map types on the userspace side.
#[cfg(feature = "user")]
macro_rules! pod {
    ($($t:ty),* $(,)?) => { $( unsafe impl aya::Pod for $t {} )* };
}
#[cfg(feature = "user")]
pub(crate) use pod;
