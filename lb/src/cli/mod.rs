//! Command-line entry: parses flags and dispatches to the agent or a client command.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub mod policy;

#[derive(Parser)]
#[command(name = "oxilium", version, about = "eBPF load balancer, kube-proxy replacement and CNI")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Identity and network policy (offline with --manifests).
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Command::Policy(c) => policy::run(c),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
