//! Client commands: ask the agent over its socket, print JSON or a table.
use super::{ClientArgs, Output};
use anyhow::Result;
use serde_json::Value;

pub enum Kind {
    Status,
    Services,
    BpfLb,
    Maglev,
    Conntrack,
    Endpoints,
    /// One endpoint's enforced policy (`policy get ENDPOINT`).
    Policy,
}

pub fn show(args: &ClientArgs, path: &str, kind: Kind) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let v = rt.block_on(crate::agent::api_get(&args.socket, path))?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Text => print!("{}", text(&v, kind)),
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

/// An endpoint's rates and counters: `10000000 (5/1/2) / -`, or the refused annotation.
fn bandwidth(b: &Value) -> String {
    if let Some(e) = b["error"].as_str() {
        return format!("refused: {e}");
    }
    let dir = |d: &Value| {
        if d.is_null() {
            return "-".to_string();
        }
        format!(
            "{} ({}/{}/{})",
            s(&d["bits_per_second"]),
            s(&d["passed"]),
            s(&d["marked"]),
            s(&d["dropped"])
        )
    };
    format!("{} / {}", dir(&b["egress"]), dir(&b["ingress"]))
}

fn text(v: &Value, kind: Kind) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    let list = v.as_array().unwrap_or(&empty);
    match kind {
        Kind::Status => {
            for key in [
                "role",
                "interfaces",
                "config",
                "services",
                "backends",
                "conntrack_entries",
                "reloads",
                "last_error",
            ] {
                out += &format!("{key:<18} {}\n", s(&v[key]));
            }
            if v["bandwidth"].is_object() {
                let b = &v["bandwidth"];
                out += &format!(
                    "bandwidth          egress {}, ingress {} ({})\n",
                    s(&b["egress"]),
                    s(&b["ingress"]),
                    s(&b["reason"])
                );
            }
            if let Some(m) = v["maps"].as_object() {
                out += "maps:\n";
                for (name, m) in m {
                    out += &format!(
                        "  {name:<16} {:>12} / {} entries{}\n",
                        s(&m["entries"]),
                        s(&m["max_entries"]),
                        if m["full"] == true {
                            " (full: evicting least recently used)"
                        } else {
                            ""
                        }
                    );
                }
            }
            if let Some(c) = v["counters"].as_object() {
                out += "counters:\n";
                for (name, c) in c {
                    out += &format!(
                        "  {name:<16} {:>12} pkts {:>14} bytes\n",
                        s(&c["packets"]),
                        s(&c["bytes"])
                    );
                }
            }
        }
        Kind::Services => {
            for svc in list {
                out += &format!(
                    "{} {} ({}, {}, M={}) {} pkts {} bytes\n",
                    s(&svc["name"]),
                    s(&svc["frontend"]),
                    s(&svc["algorithm"]),
                    s(&svc["mode"]),
                    s(&svc["table_size"]),
                    s(&svc["packets"]),
                    s(&svc["bytes"])
                );
                for b in svc["backends"].as_array().unwrap_or(&empty) {
                    out += &format!(
                        "  -> {:<28} weight {:<5} {:<12} {} pkts {} bytes\n",
                        s(&b["address"]),
                        s(&b["weight"]),
                        s(&b["state"]),
                        s(&b["packets"]),
                        s(&b["bytes"])
                    );
                }
            }
        }
        Kind::BpfLb => {
            for svc in list {
                out += &format!(
                    "{:<32} id {:<5} {} {} slots {}\n",
                    s(&svc["frontend"]),
                    s(&svc["id"]),
                    s(&svc["algorithm"]),
                    s(&svc["mode"]),
                    s(&svc["table_size"])
                );
                for b in svc["backends"].as_array().unwrap_or(&empty) {
                    out += &format!(
                        "  {:>6} {:<28} {}\n",
                        s(&b["id"]),
                        s(&b["address"]),
                        s(&b["state"])
                    );
                }
            }
        }
        Kind::Maglev => {
            let table = v["table"].as_array().unwrap_or(&empty);
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for b in table {
                *counts.entry(s(b)).or_default() += 1;
            }
            out += &format!("service {} size {}\n", s(&v["service"]), table.len());
            for (b, n) in counts {
                out += &format!("  {b:<28} {n:>7} slots\n");
            }
        }
        Kind::Policy => return super::policy_text::text(v),
        Kind::Endpoints => {
            out += "ID    ADDRESSES                       POD                       DEVICE          IFINDEX  IDENTITY  BANDWIDTH (egress/ingress bit/s, passed/marked/dropped)  POLICY (ingress/egress, allowed/denied/audited)\n";
            for e in list {
                let addrs: Vec<String> = e["addresses"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect())
                    .unwrap_or_default();
                out += &format!(
                    "{:<5} {:<31} {:<25} {:<15} {:<8} {:<9} {:<55} {}\n",
                    s(&e["id"]),
                    addrs.join(","),
                    s(&e["pod"]),
                    s(&e["device"]),
                    s(&e["ifindex"]),
                    s(&e["identity"]),
                    bandwidth(&e["bandwidth"]),
                    super::policy_text::summary(&e["policy"]),
                );
            }
        }
        Kind::Conntrack => {
            for c in list {
                out += &format!(
                    "{} {} {} -> {} backend {} snat_port {} {} pkts\n",
                    s(&c["protocol"]),
                    s(&c["state"]),
                    s(&c["client"]),
                    s(&c["frontend"]),
                    s(&c["backend_id"]),
                    s(&c["snat_port"]),
                    s(&c["packets"])
                );
            }
        }
    }
    out
}
