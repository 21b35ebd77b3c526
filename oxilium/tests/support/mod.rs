//! The network-namespace test bed shared by the end-to-end tests.
#![allow(dead_code)]
pub mod agent;
pub mod bandwidth;
pub mod bpffs;
pub mod bulk;
pub mod cgroup;
pub mod churn;
pub mod cluster;
pub mod cni;
pub mod cni_nodes;
pub mod deathstar;
pub mod dns_server;
pub mod etcd;
#[path = "../../../k8s/tests/support/fake_api.rs"]
pub mod fake_api;
pub mod kube_agent;
pub mod map_dump;
pub mod monitor;
pub mod netns;
pub mod packet;
pub mod peer;
pub mod policy_bed;
pub mod servers;
pub mod soak;
pub mod topology;
