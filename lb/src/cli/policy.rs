//! `oxilium policy ...` (placeholder until the policy engine lands).
use clap::Subcommand;

#[derive(Subcommand)]
pub enum PolicyCmd {}

pub fn run(cmd: PolicyCmd) -> anyhow::Result<()> {
    match cmd {}
}
