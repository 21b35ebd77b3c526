//! Code shared by oxilium's eBPF programs (xdp/, tc/): header layouts, bounds-checked parsing,
//! checksums, the maps, service lookup and backend selection, conntrack, SNAT and route lookup.
//! Written once here; the program crates only glue these pieces to their hook.
#![no_std]

pub mod csum;
pub mod fib;
pub mod headers;
pub mod lb;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod sock;
pub mod stats;
