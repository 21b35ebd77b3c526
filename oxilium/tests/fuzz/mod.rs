//! Differential fuzzing of the datapath programs: a reference model per program (written from
//! the docs and the map layouts in abi/, never calling the datapath crate), random and mutated
//! frames, BPF_PROG_TEST_RUN, and a comparison of verdict, output bytes, counters and map
//! entries. See docs/datapath-tests.md, "Differential fuzzing".
pub mod ct;
pub mod decap;
pub mod decap_run;
pub mod frames;
pub mod harness;
pub mod icmp;
pub mod model;
pub mod traffic;
pub mod wire;
pub mod xdp_lb;
pub mod xdp_run;
