//! `oxilium`: the agent, the CLI and (later) the CNI plugin, in one binary.
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
