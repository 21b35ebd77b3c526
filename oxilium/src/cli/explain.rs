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

fn endpoint(e: &Value) -> String {
    let mut out = s(&e["ip"]);
    if let Some(p) = e["pod"].as_str() {
        out += &format!(" ({p})");
    }
    if !e["identity"].is_null() {
        out += &format!(", identity {}", e["identity"]);
    }
    out
}

fn text(v: &Value) -> String {
    let on = if v["iface"].is_null() {
        format!("ifindex {}", s(&v["ifindex"]))
    } else {
        s(&v["iface"])
    };
    let mut out = format!(
        "packet   {} on {on} ({})\n",
        addr(&v["packet"]),
        s(&v["program"])
    );
    if !v["source"].is_null() {
        out += &format!("source   {}\n", endpoint(&v["source"]));
        out += &format!("dest     {}\n", endpoint(&v["destination"]));
    }
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
    if !v["why"].is_null() {
        out += &format!("why      {}\n", s(&v["why"]));
    }
    for p in v["policy"].as_array().into_iter().flatten() {
        let e = &p["entry"];
        let mut entry = s(&e["kind"]);
        if !e["port"].is_null() {
            entry += &format!(", {}/{}", s(&e["protocol"]), s(&e["port"]));
        }
        if let Some(a) = e["action"].as_str() {
            entry += &format!(", {a}");
        }
        if e["proxy_port"].as_u64().is_some_and(|p| p != 0) {
            entry += &format!(" to proxy port {}", e["proxy_port"]);
        }
        if let Some(o) = e["origins"].as_array().filter(|o| !o.is_empty()) {
            let o: Vec<String> = o.iter().map(s).collect();
            entry += &format!(" (from {})", o.join(", "));
        }
        out += &format!(
            "policy   {} of {}: {} by {} [match {}], identity {} -> {}\n",
            s(&p["direction"]).to_lowercase(),
            s(&p["endpoint"]),
            s(&p["verdict"]),
            entry,
            s(&p["match"]),
            s(&p["source_identity"]),
            s(&p["destination_identity"]),
        );
    }
    if !v["l7"].is_null() {
        let l = &v["l7"];
        match l["error"].as_str() {
            Some(e) => out += &format!("http     {e}\n"),
            None => {
                out += &format!(
                    "http     {} {} at the {} proxy: {}\n",
                    s(&l["method"]),
                    s(&l["path"]),
                    s(&l["proxy"]),
                    s(&l["status"])
                )
            }
        }
    }
    if !v["outcome"].is_null() {
        out += &format!("outcome  {}\n", s(&v["outcome"]));
    }
    if !v["drop"].is_null() {
        out += &format!("drop     {}\n", s(&v["drop"]["desc"]));
    }
    out += &format!("verdict  {}\n", s(&v["verdict"]));
    if !v["output"].is_null() {
        out += &format!("output   {}\n", addr(&v["output"]));
    }
    out
}
