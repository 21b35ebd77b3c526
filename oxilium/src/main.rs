//! `oxilium`: the agent, the CLI and (later) the CNI plugin, in one binary.
fn main() -> std::process::ExitCode {
    oxilium::cli::main()
}
