//! oxilium's userspace: sources → model → compile → reconcile → the BPF maps, plus the agent, its
//! API and the CLI. The `oxilium` binary is `cli::main`.
pub mod agent;
pub mod bpf;
pub mod cli;
pub mod compile;
pub mod model;
pub mod reconcile;
pub mod sysctl;
