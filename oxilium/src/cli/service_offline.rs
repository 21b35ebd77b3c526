//! `oxilium service list --manifests DIR --node NAME`: the frontends a node would program, from a
//! folder of Kubernetes manifests (no kernel, no root, no API server).
use super::Output;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct OfflineArgs {
    /// A folder of Kubernetes manifests (Services, EndpointSlices, Nodes, Pods).
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// The node whose view to compute (required with --manifests).
    #[arg(long, requires = "manifests")]
    pub node: Option<String>,
    /// NodePort range, MIN-MAX.
    #[arg(long, default_value = "30000-32767", requires = "manifests")]
    pub node_port_range: String,
    /// Backend selection when a Service has no service.cilium.io/lb-algorithm annotation.
    #[arg(long, value_parser = ["random", "maglev"], default_value = "random", requires = "manifests")]
    pub lb_algorithm: String,
    /// Forwarding to other nodes when a Service has no service.cilium.io/forwarding-mode
    /// annotation: snat or dsr.
    #[arg(long, value_parser = ["snat", "dsr"], default_value = "snat", requires = "manifests")]
    pub lb_mode: String,
}

pub fn run(args: &OfflineArgs, output: Output) -> Result<()> {
    let dir = args.manifests.as_ref().expect("checked by the caller");
    let Some(node) = &args.node else {
        bail!("--node: required with --manifests")
    };
    let opts = k8s::per_node::Options {
        node_port_range: k8s::per_node::parse_port_range(&args.node_port_range)
            .map_err(|e| anyhow::anyhow!("--node-port-range: {e}"))?,
        default_algorithm: if args.lb_algorithm == "maglev" {
            k8s::frontend::Algorithm::Maglev
        } else {
            k8s::frontend::Algorithm::Random
        },
        default_forwarding: args
            .lb_mode
            .parse()
            .map_err(|e| anyhow::anyhow!("--lb-mode: {e}"))?,
    };
    let nf = k8s::node_frontends(dir, node, &opts)
        .with_context(|| format!("--manifests {}", dir.display()))?;
    // Each note says its level ("error: ..." for a rejected object, "note: ..." otherwise).
    for n in &nf.notes {
        eprintln!("{n}");
    }
    let json = k8s::output::frontends_json(&nf.frontends);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        Output::Text => {
            for f in json.as_array().into_iter().flatten() {
                println!(
                    "{} {}:{}/{}",
                    f["type"].as_str().unwrap_or("?"),
                    f["address"].as_str().unwrap_or("?"),
                    f["port"],
                    f["protocol"].as_str().unwrap_or("?")
                );
                for b in f["backends"].as_array().into_iter().flatten() {
                    println!(
                        "  -> {}:{} {}",
                        b["address"].as_str().unwrap_or("?"),
                        b["port"],
                        b["state"].as_str().unwrap_or("?")
                    );
                }
            }
        }
    }
    // Like `kubectl apply` with some invalid objects: the rest is listed, the exit status fails.
    let rejected = nf.notes.iter().filter(|n| n.error).count();
    if rejected > 0 {
        bail!("{rejected} object(s) rejected (see the errors above); the rest is listed");
    }
    Ok(())
}
