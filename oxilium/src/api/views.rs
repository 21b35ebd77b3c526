//! The JSON the API serves: what the agent was told (config, health) beside what the kernel holds.
use crate::agent::State;
use abi::lb::{self as abi_lb, reason};
use anyhow::{Context, Result};
use lb::{compile, reconcile::family_name};
use serde_json::{Value, json};
use std::net::SocketAddr;

fn frontend(k: &abi_lb::ServiceKey) -> String {
    let proto = match k.proto {
        abi_lb::PROTO_TCP => "tcp",
        abi_lb::PROTO_UDP => "udp",
        _ => "any",
    };
    format!(
        "{}/{proto}",
        SocketAddr::new(compile::bytes_addr(&k.addr), u16::from_be(k.port))
    )
}

pub fn status(st: &State) -> Value {
    let mut v = json!({
        "role": st.role,
        "interfaces": st.ifaces,
        "config": st.config_path.as_ref().map(|p| p.display().to_string()),
        "reloads": st.reloads,
        "last_error": st.last_error,
    });
    if let Some(rec) = &st.reconciler {
        let dp = rec.datapath();
        let counters: serde_json::Map<String, Value> = reason::NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let c = dp.reason_counter(i as u32);
                (
                    n.to_string(),
                    json!({ "packets": c.packets, "bytes": c.bytes }),
                )
            })
            .collect();
        v["services"] = json!(st.model.services.len());
        v["backends"] = json!(
            st.model
                .services
                .iter()
                .map(|s| s.backends.len())
                .sum::<usize>()
        );
        // conntrack_entries and maps: read by the caller, outside the state lock (api::status).
        if let Some(sock) = dp.sock_counters() {
            v["socket_lb"] = Value::Object(
                sock.into_iter()
                    .map(|(n, c)| (n.to_string(), json!(c)))
                    .collect(),
            );
        }
        v["counters"] = Value::Object(counters);
    }
    if let Some(ext) = &st.nodeport {
        v["nodeport"] = ext.status();
    }
    if let Some(d) = &st.decap {
        v["tunnel"] = d.status();
    }
    if let Some(c) = &st.cni
        && let Ok(a) = c.try_lock()
        && let Some(b) = &a.bandwidth
    {
        v["bandwidth"] = b.status();
    }
    v
}

pub fn services(st: &State) -> Value {
    let Some(rec) = &st.reconciler else {
        return json!([]);
    };
    let dp = rec.datapath();
    let model = &st.model;
    let list: Vec<Value> = model
        .services
        .iter()
        .map(|s| {
            let key = compile::service_key(s);
            let id = rec.service_id(&key);
            let ids = rec.backend_ids(&key);
            let c = id.map(|i| dp.service_counter(i)).unwrap_or_default();
            let backends: Vec<Value> = s
                .backends
                .iter()
                .map(|b| {
                    let bid = ids.get(&b.addr).copied();
                    let bc = bid.map(|i| dp.backend_counter(i)).unwrap_or_default();
                    json!({
                        "address": b.addr.to_string(), "weight": b.weight, "state": b.state,
                        "id": bid, "packets": bc.packets, "bytes": bc.bytes,
                    })
                })
                .collect();
            json!({
                "name": s.name,
                "frontend": frontend(&key),
                "algorithm": s.algorithm,
                "mode": s.mode,
                "table_size": s.table_size,
                "id": id,
                "packets": c.packets,
                "bytes": c.bytes,
                "backends": backends,
            })
        })
        .collect();
    Value::Array(list)
}

/// The raw LB maps: every frontend entry with its backends, read from the kernel.
pub fn bpf_lb(st: &State) -> Result<Value> {
    use lb::reconcile::Datapath;
    let rec = st
        .reconciler
        .as_ref()
        .context("no LB datapath in this agent")?;
    let dp = rec.datapath();
    let backends = dp.backends()?;
    let mut out = Vec::new();
    for (k, v) in dp.services()? {
        if v.id == 0 {
            continue; // VIP marker
        }
        let bs: Vec<Value> = backends
            .iter()
            .filter(|(_, b)| b.service_id == v.id)
            .map(|(id, b)| {
                json!({
                    "id": id,
                    "address": SocketAddr::new(compile::bytes_addr(&b.addr), u16::from_be(b.port)).to_string(),
                    "family": family_name(b.family),
                    "state": match b.state { abi_lb::BACKEND_ACTIVE => "active", abi_lb::BACKEND_QUARANTINED => "quarantined", abi_lb::BACKEND_DRAINING => "draining", _ => "terminating" },
                })
            })
            .collect();
        out.push(json!({
            "frontend": frontend(&k),
            "id": v.id,
            "table_size": v.table_size,
            "algorithm": if v.algorithm == abi_lb::ALG_RANDOM { "random" } else { "maglev" },
            "mode": if v.mode == abi_lb::MODE_DSR { "dsr" } else { "snat" },
            "conntrack_timeout_s": v.ct_timeout_s,
            "backends": bs,
        }));
    }
    Ok(Value::Array(out))
}

/// A service's selection table as the kernel holds it, slot by slot.
pub fn maglev(st: &State, name: &str) -> Result<Value> {
    use lb::reconcile::Datapath;
    let rec = st
        .reconciler
        .as_ref()
        .context("no LB datapath in this agent")?;
    let ms = st
        .model
        .services
        .iter()
        .find(|s| s.name == name)
        .with_context(|| format!("no service named {name}"))?;
    let key = compile::service_key(ms);
    let id = rec.service_id(&key).context("service not programmed")?;
    let dp = rec.datapath();
    let addrs: std::collections::HashMap<u32, String> = dp
        .backends()?
        .into_iter()
        .map(|(id, b)| {
            (
                id,
                SocketAddr::new(compile::bytes_addr(&b.addr), u16::from_be(b.port)).to_string(),
            )
        })
        .collect();
    let size = dp
        .services()?
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.table_size)
        .unwrap_or(0);
    let table: Vec<Value> = if size == 0 {
        Vec::new()
    } else {
        dp.table(id)?
            .iter()
            .map(|b| json!(addrs.get(b).cloned().unwrap_or_else(|| format!("#{b}"))))
            .collect()
    };
    Ok(json!({ "service": name, "id": id, "size": table.len(), "table": table }))
}

/// Conntrack entries as the API lists them.
pub fn conntrack(entries: &[(abi_lb::FlowKey, abi_lb::CtEntry)]) -> Result<Value> {
    let list: Vec<Value> = entries
        .iter()
        .map(|(k, v)| {
            json!({
                "protocol": if k.proto == abi_lb::PROTO_TCP { "tcp" } else { "udp" },
                "client": SocketAddr::new(compile::bytes_addr(&k.src), u16::from_be(k.sport)).to_string(),
                "frontend": SocketAddr::new(compile::bytes_addr(&k.dst), u16::from_be(k.dport)).to_string(),
                "service_id": v.service_id,
                "backend_id": v.backend_id,
                "snat_port": u16::from_be(v.snat_port),
                "state": abi::ct::state_name(v.flags, k.proto),
                "packets": v.packets,
                "bytes": v.bytes,
            })
        })
        .collect();
    Ok(Value::Array(list))
}
