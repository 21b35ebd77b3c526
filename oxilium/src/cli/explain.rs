//! `oxilium explain`: asks the agent what its loaded programs would do with one packet
//! (crate::explain) and prints each step, or the report as JSON with `-o json`.
use super::{ClientArgs, Output};
use crate::explain::Request;
use anyhow::Result;
use serde_json::Value;

#[derive(clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub packet: Request,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: &ExplainArgs) -> Result<()> {
    let query = args.packet.to_query();
    Request::from_query(&query)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let v = rt.block_on(crate::api::get(
        &args.client.socket,
        &format!("/explain?{query}"),
    ))?;
    match args.client.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Text => print!("{}", text(&v)),
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn addr(h: &Value) -> String {
    format!(
        "{}:{} -> {}:{}",
        s(&h["source"]),
        s(&h["source_port"]),
        s(&h["destination"]),
        s(&h["destination_port"])
    )
}

fn text(v: &Value) -> String {
    let mut out = format!(
        "packet   {} on {} ({})\n",
        addr(&v["packet"]),
        s(&v["iface"]),
        s(&v["program"])
    );
    for st in v["steps"].as_array().into_iter().flatten() {
        out += &format!("  step   {}/{}\n", s(&st["set"]), s(&st["step"]));
    }
    if !v["service"].is_null() {
        let svc = &v["service"];
        out += &format!("service  {} ({})\n", s(&svc["name"]), s(&svc["frontend"]));
    }
    if !v["backend"].is_null() {
        out += &format!("backend  {}\n", s(&v["backend"]["address"]));
    }
    out += &format!("why      {}\n", s(&v["why"]));
    if !v["drop"].is_null() {
        out += &format!("drop     {}\n", s(&v["drop"]["desc"]));
    }
    out += &format!("verdict  {}\n", s(&v["verdict"]));
    if !v["output"].is_null() {
        out += &format!("output   {}\n", addr(&v["output"]));
    }
    out
}
