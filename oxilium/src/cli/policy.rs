//! `oxilium policy ...`: offline policy verdicts and computed policy maps from a manifests folder.
//! Flag parsing and printing only; the engine and the JSON shapes live in the policy crate.
use super::Output;
use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use policy::offline::{self, Offline, Query};
use policy::{Config, Enforcement};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
pub enum Mode {
    Default,
    Always,
    Never,
}

#[derive(clap::Args)]
pub struct Common {
    /// Folder of YAML manifests (Namespaces, Pods, NetworkPolicies, Cilium policies): compute
    /// offline. Without it `get` asks the agent for what it enforces.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Policy enforcement mode.
    #[arg(long, value_enum, default_value = "default")]
    enforcement: Mode,
    /// Audit mode: report would-be drops as `audit`.
    #[arg(long)]
    audit: bool,
    /// Traffic from the local host into pods: always allowed, or checked by policy.
    #[arg(long, value_enum, default_value = "always")]
    allow_localhost: crate::agent::node::policy::AllowLocalhost,
    /// Output format (offline: JSON only; `get` from the agent: text or json).
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Output,
    /// The agent's API socket (`get` without --manifests).
    #[arg(long, default_value = "/run/oxilium/oxilium.sock")]
    socket: PathBuf,
}

impl Common {
    fn load(&self) -> anyhow::Result<Offline> {
        let Some(manifests) = &self.manifests else {
            anyhow::bail!("--manifests: required (the folder to compute verdicts from)");
        };
        let enforcement = match self.enforcement {
            Mode::Default => Enforcement::Default,
            Mode::Always => Enforcement::Always,
            Mode::Never => Enforcement::Never,
        };
        let cfg = Config {
            enforcement,
            audit: self.audit,
            allow_localhost: self.allow_localhost
                == crate::agent::node::policy::AllowLocalhost::Always,
            ..Config::default()
        };
        // The folder is read by the one manifests-folder reader; the policy crate does no I/O.
        let objects = k8s::manifests::read_folder(manifests)
            .map_err(anyhow::Error::from)
            .and_then(|objects| {
                Ok(Offline::from_objects(
                    objects.into_iter().map(|o| (o.origin, o.value)),
                    cfg,
                )?)
            });
        objects.with_context(|| format!("--manifests {}", manifests.display()))
    }
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// The verdict for one flow: allow, deny, redirect (to the L7 proxy) or audit.
    Verdict {
        #[command(flatten)]
        common: Common,
        /// Source pod, NAMESPACE/POD.
        #[arg(long)]
        from: String,
        /// Destination pod (NAMESPACE/POD) or IP address.
        #[arg(long)]
        to: String,
        /// Destination port and protocol, PORT/PROTO (TCP, UDP, SCTP).
        #[arg(long)]
        port: String,
        /// Evaluate L7 rules for this HTTP request: METHOD PATH.
        #[arg(long, num_args = 2, value_names = ["METHOD", "PATH"])]
        http: Option<Vec<String>>,
        /// Host of the HTTP request.
        #[arg(long, requires = "http")]
        http_host: Option<String>,
        /// Header of the HTTP request, 'Name: value' (repeatable).
        #[arg(long, requires = "http")]
        http_header: Vec<String>,
    },
    /// One endpoint's policy: what the agent enforces with its counters (ENDPOINT: id,
    /// NAMESPACE/POD or address), or with --manifests the computed map (--endpoint NAMESPACE/POD).
    Get {
        #[command(flatten)]
        common: Common,
        /// NAMESPACE/POD (with --manifests).
        #[arg(long)]
        endpoint: Option<String>,
        /// The agent's endpoint: id, NAMESPACE/POD or address.
        name: Option<String>,
    },
}

pub fn run(cmd: PolicyCmd) -> anyhow::Result<()> {
    let out = match cmd {
        PolicyCmd::Verdict {
            common,
            from,
            to,
            port,
            http,
            http_host,
            http_header,
        } => {
            let from = offline::parse_pod_ref("--from", &from)?;
            let to = offline::parse_target("--to", &to)?;
            let (port, proto) = offline::parse_port("--port", &port)?;
            let headers = http_header
                .iter()
                .map(|h| offline::parse_header("--http-header", h))
                .collect::<Result<Vec<_>, _>>()?;
            let http = http.map(|v| policy::l7::HttpRequest {
                method: v[0].clone(),
                path: v[1].clone(),
                host: http_host,
                headers,
            });
            common.load()?.verdict(&Query {
                from,
                to,
                port,
                proto,
                http,
            })?
        }
        PolicyCmd::Get {
            common,
            endpoint,
            name,
        } => match (&common.manifests, endpoint.or(name)) {
            (_, None) => anyhow::bail!("ENDPOINT: required (id, NAMESPACE/POD or address)"),
            (Some(_), Some(endpoint)) => {
                let endpoint = offline::parse_pod_ref("--endpoint", &endpoint)?;
                common.load()?.get(&endpoint)?
            }
            (None, Some(name)) => {
                let args = super::ClientArgs {
                    output: common.output,
                    socket: common.socket.clone(),
                };
                return super::client::show(
                    &args,
                    &format!("/policy/{name}"),
                    super::client::Kind::Policy,
                );
            }
        },
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
