//! `oxilium explain`: what the programs loaded right now would do with one packet, and why,
//! changing nothing.
//!
//! The agent loads a second, private instance of its role's program (the edge LB's XDP
//! `oxilium_lb`, or a node's tc `oxilium_nodeport_ingress`) whose read-only maps are the live
//! pins (services, backends, selection tables, settings, local endpoints, source ranges,
//! affinity timeouts) and whose writable maps are private: conntrack, SNAT and affinity (seeded
//! with the live entries this packet can touch), the counters, and the event ring with every
//! trace point on. The packet runs once through BPF_PROG_TEST_RUN; the report comes from the
//! private ring's records (each counted step, the translation, the drop) and the private maps'
//! new entries. The live maps are never written (the tests compare them byte for byte).
//!
//! On a node with `--cni`, a packet from one of its pods goes through the endpoint programs'
//! from-pod program instead ([`pod`]): service translation, the source's egress policy and, for
//! a pod of this node, the destination's ingress policy, with the deciding policy entries and,
//! for a flow handed to the HTTP proxy, the proxy's verdict on a request.
mod pod;
mod run;

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// What to explain: a packet arriving on an interface of the agent, or leaving one of its pods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct Request {
    /// Source: an address (a client, a pod), or `namespace/name` of a pod of this node.
    #[arg(long)]
    pub from: String,
    /// Destination: an address (a VIP, a node address, a pod), or `namespace/name` of a Service
    /// (its ClusterIP on --port).
    #[arg(long)]
    pub to: String,
    /// Destination port.
    #[arg(long)]
    pub port: u16,
    /// tcp or udp.
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
    pub proto: String,
    /// Source port.
    #[arg(long, default_value_t = 43_210)]
    pub sport: u16,
    /// The interface the packet arrives on (default: the agent's first --iface / --device).
    #[arg(long)]
    pub iface: Option<String>,
    /// For a flow the policy hands to the HTTP proxy: the request (METHOD PATH) whose L7 verdict
    /// to show.
    #[arg(long, num_args = 2, value_names = ["METHOD", "PATH"])]
    pub http: Vec<String>,
}

const FIELDS: [&str; 8] = [
    "from",
    "to",
    "port",
    "proto",
    "sport",
    "iface",
    "http_method",
    "http_path",
];

/// A query value with `%`, `&`, `=`, `+`, `#` and spaces escaped.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '%' | '&' | '=' | '+' | '#' | ' ' => out += &format!("%{:02X}", c as u32),
            c => out.push(c),
        }
    }
    out
}

fn unescape(field: &str, s: &str) -> anyhow::Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| anyhow::anyhow!("{field}: bad escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow::anyhow!("{field}: not UTF-8"))
}

/// True for `namespace/name` (both parts non-empty, no spaces).
fn is_object_key(s: &str) -> bool {
    s.split_once('/').is_some_and(|(ns, n)| {
        !ns.is_empty() && !n.is_empty() && !n.contains('/') && !s.contains(char::is_whitespace)
    })
}

impl Request {
    /// The query string of `GET /explain`.
    pub fn to_query(&self) -> String {
        let mut q = format!(
            "from={}&to={}&port={}&proto={}&sport={}",
            escape(&self.from),
            escape(&self.to),
            self.port,
            self.proto,
            self.sport
        );
        if let Some(i) = &self.iface {
            q += &format!("&iface={}", escape(i));
        }
        if let [m, p] = self.http.as_slice() {
            q += &format!("&http_method={}&http_path={}", escape(m), escape(p));
        }
        q
    }

    /// Parses the query string; a missing or bad field is an error naming it.
    pub fn from_query(q: &str) -> anyhow::Result<Request> {
        let mut v = std::collections::HashMap::new();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, val) = pair.split_once('=').unwrap_or((pair, ""));
            if !FIELDS.contains(&k) {
                anyhow::bail!("unknown field {k:?}");
            }
            v.insert(k, unescape(k, val)?);
        }
        let get = |k: &str| {
            v.get(k)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{k}: missing"))
        };
        let endpoint = |k: &str, what: &str| -> anyhow::Result<String> {
            let s = get(k)?;
            if s.parse::<IpAddr>().is_err() && !is_object_key(&s) {
                anyhow::bail!("{k}: {s:?} is not an IP address or {what}");
            }
            Ok(s)
        };
        let port = |k: &str, s: &str| -> anyhow::Result<u16> {
            s.parse()
                .map_err(|_| anyhow::anyhow!("{k}: {s:?} is not a port"))
        };
        let http = match (v.get("http_method"), v.get("http_path")) {
            (None, None) => Vec::new(),
            (Some(m), Some(p)) => {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    anyhow::bail!("http_method: {m:?} is not an HTTP method (GET, POST, ...)");
                }
                if !p.starts_with('/') {
                    anyhow::bail!("http_path: {p:?} does not start with /");
                }
                vec![m.clone(), p.clone()]
            }
            (Some(_), None) => anyhow::bail!("http_path: missing"),
            (None, Some(_)) => anyhow::bail!("http_method: missing"),
        };
        let r = Request {
            from: endpoint("from", "namespace/pod")?,
            to: endpoint("to", "namespace/service")?,
            port: port("port", &get("port")?)?,
            proto: v.get("proto").cloned().unwrap_or_else(|| "tcp".into()),
            sport: port("sport", v.get("sport").map_or("43210", |s| s.as_str()))?,
            iface: v.get("iface").cloned(),
            http,
        };
        if r.proto != "tcp" && r.proto != "udp" {
            anyhow::bail!("proto: {:?} is not tcp or udp", r.proto);
        }
        if let (Ok(f), Ok(t)) = (r.from.parse::<IpAddr>(), r.to.parse::<IpAddr>())
            && f.is_ipv4() != t.is_ipv4()
        {
            anyhow::bail!("from / to: {f} and {t} are of different families");
        }
        Ok(r)
    }

    /// The packet with both addresses given as addresses (the edge LB's and NodePort's paths).
    pub fn packet(&self) -> anyhow::Result<Packet> {
        let addr = |k: &str, s: &str| -> anyhow::Result<IpAddr> {
            s.parse().map_err(|_| {
                anyhow::anyhow!("{k}: {s:?}: names are for a pod of a node with --cni")
            })
        };
        Ok(Packet {
            from: addr("from", &self.from)?,
            to: addr("to", &self.to)?,
            port: self.port,
            proto: self.proto.clone(),
            sport: self.sport,
        })
    }
}

pub use pod::{PodTarget, explain_pod, local_endpoint};
pub use run::{Hook, Packet, explain};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips_and_bad_fields_are_named() {
        let r = Request {
            from: "10.0.0.1".into(),
            to: "10.0.0.2".into(),
            port: 80,
            proto: "udp".into(),
            sport: 1234,
            iface: Some("eth0".into()),
            http: Vec::new(),
        };
        assert_eq!(Request::from_query(&r.to_query()).unwrap(), r);
        let named = Request {
            from: "default/tiefighter".into(),
            to: "default/deathstar".into(),
            proto: "tcp".into(),
            iface: None,
            http: vec!["POST".into(), "/v1/request landing?a=1&b=%".into()],
            ..r.clone()
        };
        assert_eq!(Request::from_query(&named.to_query()).unwrap(), named);
        let e = Request::from_query("from=a/b&to=10.0.0.2&port=80&http_method=get&http_path=/")
            .unwrap_err();
        assert!(e.to_string().starts_with("http_method:"), "{e}");
        let e = Request::from_query("from=a/b&to=10.0.0.2&port=80&http_method=GET").unwrap_err();
        assert_eq!(e.to_string(), "http_path: missing");
        let e = Request::from_query("from=10.0.0.1&to=fd00::1&port=80").unwrap_err();
        assert!(e.to_string().starts_with("from / to"), "{e}");
        let e = Request::from_query("from=10.0.0.1&to=10.0.0.2").unwrap_err();
        assert_eq!(e.to_string(), "port: missing");
        let e = Request::from_query("from=x&to=10.0.0.2&port=1").unwrap_err();
        assert!(e.to_string().starts_with("from:"), "{e}");
    }
}
