//! `oxilium`: the agent, the CLI and (later) the CNI plugin, in one binary.
mod agent;
mod bpf;
mod cli;
mod compile;
mod model;
mod reconcile;
mod sysctl;

fn main() -> std::process::ExitCode {
    cli::main()
}
