//! `oxilium`: the agent, the CLI and, under the name `oxilium-cni`, the CNI plugin, in one binary.
fn main() -> std::process::ExitCode {
    if oxilium::plugin::invoked_as_plugin() {
        return oxilium::plugin::main();
    }
    oxilium::cli::main()
}
