//! Code shared by oxilium's eBPF programs (xdp/, tc/): header layouts, bounds-checked parsing,
//! checksums, the maps, service lookup and backend selection, conntrack, SNAT and route lookup.
//! Written once here; the program crates only glue these pieces to their hook.
#![no_std]
// Inline assembly for the one instruction core cannot express on this target: atomic
// fetch-and-add on map values (crate::bandwidth).
#![feature(asm_experimental_arch)]

pub mod affinity;
pub mod bandwidth;
pub mod csum;
pub mod encap;
pub mod endpoint;
pub mod events;
pub mod fib;
pub mod headers;
pub mod icmp;
pub mod lb;
pub mod maps;
pub mod masq;
pub mod nat;
pub mod nodeport;
pub mod parse;
pub mod podlb;
pub mod policy;
pub mod proxy;
pub mod skb;
pub mod sock;
pub mod stack_redirect;
pub mod stats;
pub mod words;

/// The one panic handler of every oxilium eBPF object (the verifier rejects any path that could
/// reach it, so it is never called).
#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
