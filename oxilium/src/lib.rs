//! The `oxilium` binary: the agent roles (edge LB, DSR backend, Kubernetes node), its API server, the
//! BPF object loading and the CLI. The data path it drives is in the library crates: sources (`k8s`,
//! `lb::config`) → model and compile (`lb`, `policy`) → reconcile (`lb::reconcile`) → the maps.
pub mod agent;
pub mod api;
pub mod bpf;
pub mod cli;
pub mod events;
pub mod explain;
pub mod metrics;
pub mod plugin;
pub mod sysctl;
