//! The network-namespace test bed shared by the end-to-end tests.
#![allow(dead_code)]
pub mod cgroup;
pub mod cluster;
pub mod netns;
pub mod packet;
pub mod peer;
pub mod servers;
pub mod topology;
