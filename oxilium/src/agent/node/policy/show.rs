//! What the API shows of the policy: per endpoint its enforcement state (for `endpoint list`) and
//! its enforced entries with their counters (`policy get ENDPOINT`).
use super::PolicyAgent;
use abi::policy::{ACTION_ALLOW, ACTION_DENY, ACTION_REDIRECT, DIR_INGRESS, PREFIX_STATIC};
use serde_json::{Value, json};
use std::time::Duration;

fn pct(v: &[Duration], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s: Vec<Duration> = v.to_vec();
    s.sort();
    let i = ((s.len() - 1) as f64 * q).round() as usize;
    Some(s[i].as_secs_f64() * 1e6)
}

impl PolicyAgent {
    /// The endpoint id of `name`: a number, `namespace/pod`, or a pod address.
    pub fn find(&self, name: &str) -> Option<u32> {
        if let Ok(id) = name.parse::<u32>()
            && self.local.contains_key(&id)
        {
            return Some(id);
        }
        self.local
            .iter()
            .find(|(_, l)| l.key == name || l.addrs.iter().any(|a| a.to_string() == name))
            .map(|(id, _)| *id)
    }

    /// The enforcement state of endpoint `id` (for `endpoint list`).
    pub fn summary(&self, id: u32) -> Value {
        let Some(l) = self.local.get(&id) else {
            return Value::Null;
        };
        let Some(ep) = self.engine.endpoint(&l.key) else {
            return Value::Null;
        };
        let s = self.maps.stats(id);
        json!({
            "identity": ep.identity,
            "endpoint": l.key,
            "ingress": ep.policy.enforced[0],
            "egress": ep.policy.enforced[1],
            "mode": format!("{:?}", self.flags.enforcement).to_lowercase(),
            "audit": self.flags.audit,
            "entries": ep.policy.map.len(),
            "counters": {"allowed": s.allowed, "denied": s.denied, "audited": s.audited, "established": s.established},
        })
    }

    /// `policy get ENDPOINT`: the entries in the kernel with their counters.
    pub fn get(&self, name: &str) -> Option<Value> {
        let id = self.find(name)?;
        let mut entries: Vec<Value> = self
            .maps
            .entries(id)
            .into_iter()
            .map(|(k, v)| {
                let identity = u32::from_be(k.identity);
                let port_bits = k.prefix_len.saturating_sub(PREFIX_STATIC + 8);
                let port = u16::from_be(k.dport);
                let span = if k.proto == 0 || port_bits >= 16 {
                    0
                } else {
                    (1u32 << (16 - port_bits)) - 1
                };
                json!({
                    "identity": identity,
                    "peer": if identity == 0 { vec!["*".to_string()] } else { self.engine.identity_labels(identity).map(|l| l.to_strings()).unwrap_or_default() },
                    "direction": if k.direction == DIR_INGRESS { "ingress" } else { "egress" },
                    "protocol": k.proto,
                    "ports": if k.proto == 0 { Value::Null } else { json!([port, u32::from(port) + span]) },
                    "prefix_len": k.prefix_len,
                    "verdict": match v.action { ACTION_ALLOW => "allow", ACTION_DENY => "deny", ACTION_REDIRECT => "redirect", _ => "?" },
                    "packets": v.packets,
                    "bytes": v.bytes,
                })
            })
            .collect();
        entries.sort_by_key(|e| e.to_string());
        let mut out = self.summary(id);
        out["id"] = id.into();
        out["entries"] = entries.into();
        Some(out)
    }

    /// Regeneration times (map fill + flags) in µs.
    pub fn regeneration_stats(&self) -> Value {
        json!({
            "count": self.regenerations.len(),
            "p50_us": pct(&self.regenerations, 0.5),
            "p99_us": pct(&self.regenerations, 0.99),
            "last_error": self.last_error,
        })
    }
}

impl PolicyAgent {
    /// The kernel's memory figure of endpoint `id`'s policy map, with its number of entries.
    pub fn policy_memory(&self, id: u32) -> Option<(u64, usize)> {
        Some((self.maps.memory(id)?, self.maps.entries(id).len()))
    }
}
