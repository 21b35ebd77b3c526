//! The JSON of `oxilium service list -o json`: one object per frontend with `address`, `port`,
//! `protocol`, `type` and `backends` (`address`, `port`, `state`), `external_backends` only where
//! traffic from outside gets other backends, and descriptive extras.
use crate::frontend::{Backend, Frontend, FrontendType};
use serde_json::{Map, Value, json};

fn backends(b: &[Backend]) -> Value {
    Value::Array(
        b.iter()
            .map(|b| json!({"address": b.address.to_string(), "port": b.port, "state": b.state}))
            .collect(),
    )
}

/// One frontend as a JSON object.
pub fn frontend_json(f: &Frontend) -> Value {
    let mut m = Map::new();
    m.insert("address".into(), json!(f.address.to_string()));
    m.insert("port".into(), json!(f.port));
    m.insert("protocol".into(), json!(f.protocol.as_str()));
    m.insert("type".into(), json!(f.kind));
    m.insert("backends".into(), backends(&f.backends));
    if let Some(ext) = &f.external_backends {
        m.insert("external_backends".into(), backends(ext));
    }
    m.insert("namespace".into(), json!(&*f.owner.namespace));
    m.insert("name".into(), json!(&*f.owner.name));
    m.insert("port_name".into(), json!(&*f.port_name));
    m.insert("algorithm".into(), json!(f.algorithm));
    if f.kind != FrontendType::ClusterIP && f.kind != FrontendType::HostPort {
        m.insert("forwarding".into(), json!(f.forwarding));
    }
    if let Some(t) = f.affinity_timeout {
        m.insert("session_affinity_timeout".into(), json!(t));
    }
    if !f.source_ranges.is_empty() {
        m.insert("source_ranges".into(), json!(f.source_ranges));
    }
    if let Some(hc) = &f.health_check {
        m.insert("health_check_node_port".into(), json!(hc.node_port));
        m.insert("local_endpoints".into(), json!(hc.local_endpoints));
    }
    Value::Object(m)
}

/// The list, in the order given (compile_node sorts).
pub fn frontends_json(frontends: &[Frontend]) -> Value {
    Value::Array(frontends.iter().map(frontend_json).collect())
}
