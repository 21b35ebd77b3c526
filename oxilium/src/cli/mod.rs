//! Command-line entry: parses flags and dispatches to the agent or a client command.
mod client;
mod explain;
mod maglev_table;
mod monitor;
pub mod policy;
mod policy_text;
mod service_offline;

use crate::agent::{self, AgentArgs};
use clap::{Parser, Subcommand, ValueEnum};
use std::{path::PathBuf, process::ExitCode};

#[derive(Parser)]
#[command(
    name = "oxilium",
    version,
    about = "eBPF load balancer, kube-proxy replacement and CNI"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// Flags every client command takes.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
    /// The agent's API socket.
    #[arg(long, default_value = "/run/oxilium/oxilium.sock")]
    pub socket: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (edge LB or DSR backend).
    Agent(Box<AgentArgs>),
    /// The agent's state and datapath counters.
    Status(ClientArgs),
    /// Services.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// The BPF maps as the kernel holds them.
    #[command(subcommand)]
    Bpf(BpfCmd),
    /// Maglev tables: offline (`table`) or from the kernel (`get`).
    #[command(subcommand)]
    Maglev(MaglevCmd),
    /// Connection tracking.
    #[command(subcommand)]
    Ct(CtCmd),
    /// The pods this node's CNI plugin made (`--cni`).
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Identity and network policy (offline with --manifests).
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Follow the datapath's events live: drops with their reason, translations, trace points.
    Monitor(Box<monitor::MonitorArgs>),
    /// Datapath events: switch trace points, show the events' counters.
    #[command(subcommand)]
    Events(monitor::EventsCmd),
    /// What the loaded programs would do with a packet, step by step (changes nothing).
    Explain(Box<explain::ExplainArgs>),
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// Services with their backends, health and counters (from the agent), or with --manifests
    /// the frontends a node would program, computed offline from a folder of Kubernetes manifests.
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        offline: service_offline::OfflineArgs,
    },
}

#[derive(Subcommand)]
enum BpfCmd {
    /// `bpf lb list`: frontend entries and backends in the LB maps.
    #[command(subcommand)]
    Lb(BpfLbCmd),
}

#[derive(Subcommand)]
enum BpfLbCmd {
    List(ClientArgs),
}

#[derive(Subcommand)]
enum MaglevCmd {
    /// Build a table offline (no kernel, no root).
    Table(maglev_table::TableArgs),
    /// The table of a service as the kernel holds it.
    Get {
        service: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// Endpoints: addresses, pod, host device, MAC, identity.
    List(ClientArgs),
}

#[derive(Subcommand)]
enum CtCmd {
    /// Tracked flows and the backend each is pinned to.
    List(ClientArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Command::Agent(a) => {
            init_tracing();
            agent::run(*a)
        }
        Command::Status(c) => client::show(&c, "/status", client::Kind::Status),
        Command::Service(ServiceCmd::List { client: c, offline }) => match offline.manifests {
            Some(_) => service_offline::run(&offline, c.output),
            None => client::show(&c, "/services", client::Kind::Services),
        },
        Command::Bpf(BpfCmd::Lb(BpfLbCmd::List(c))) => {
            client::show(&c, "/bpf/lb", client::Kind::BpfLb)
        }
        Command::Maglev(MaglevCmd::Table(t)) => maglev_table::run(&t),
        Command::Maglev(MaglevCmd::Get { service, client: c }) => {
            client::show(&c, &format!("/maglev/{service}"), client::Kind::Maglev)
        }
        Command::Ct(CtCmd::List(c)) => client::show(&c, "/ct", client::Kind::Conntrack),
        Command::Policy(c) => policy::run(c),
        Command::Endpoint(EndpointCmd::List(c)) => {
            client::show(&c, "/endpoints", client::Kind::Endpoints)
        }
        Command::Monitor(m) => monitor::run(&m),
        Command::Events(c) => monitor::events(c),
        Command::Explain(e) => explain::run(&e),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OXILIUM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::Parser;

    /// A flag that sizes a map only `--cni` loads is refused without `--cni`, by name, instead
    /// of being accepted and doing nothing.
    #[test]
    fn policy_ct_size_needs_cni() {
        let node = ["oxilium", "agent", "--role", "node"];
        let flag = ["--policy-ct-max-entries", "4096"];
        let e = Cli::try_parse_from(node.iter().chain(&flag))
            .err()
            .expect("accepted without --cni")
            .to_string();
        assert!(
            e.contains("--policy-ct-max-entries") && e.contains("--cni"),
            "{e}"
        );
        assert!(Cli::try_parse_from(node.iter().chain(&flag).chain(&["--cni"])).is_ok());
        // The default alone does not need --cni.
        assert!(Cli::try_parse_from(node).is_ok());
    }
}
