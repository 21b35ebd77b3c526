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
mod run;

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// What to explain: a packet arriving on an interface of the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct Request {
    /// Source address of the packet (a client, a pod).
    #[arg(long)]
    pub from: IpAddr,
    /// Destination address (a VIP, a node address, any address).
    #[arg(long)]
    pub to: IpAddr,
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
}

impl Request {
    /// The query string of `GET /explain`.
    pub fn to_query(&self) -> String {
        let mut q = format!(
            "from={}&to={}&port={}&proto={}&sport={}",
            self.from, self.to, self.port, self.proto, self.sport
        );
        if let Some(i) = &self.iface {
            q += &format!("&iface={i}");
        }
        q
    }

    /// Parses the query string; a missing or bad field is an error naming it.
    pub fn from_query(q: &str) -> anyhow::Result<Request> {
        let mut v = std::collections::HashMap::new();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, val) = pair.split_once('=').unwrap_or((pair, ""));
            if !["from", "to", "port", "proto", "sport", "iface"].contains(&k) {
                anyhow::bail!("unknown field {k:?}");
            }
            v.insert(k, val);
        }
        let get = |k: &str| {
            v.get(k)
                .copied()
                .ok_or_else(|| anyhow::anyhow!("{k}: missing"))
        };
        let addr = |k: &str| -> anyhow::Result<IpAddr> {
            let s = get(k)?;
            s.parse()
                .map_err(|_| anyhow::anyhow!("{k}: {s:?} is not an IP address"))
        };
        let port = |k: &str, s: &str| -> anyhow::Result<u16> {
            s.parse()
                .map_err(|_| anyhow::anyhow!("{k}: {s:?} is not a port"))
        };
        let r = Request {
            from: addr("from")?,
            to: addr("to")?,
            port: port("port", get("port")?)?,
            proto: v.get("proto").copied().unwrap_or("tcp").to_string(),
            sport: port("sport", v.get("sport").copied().unwrap_or("43210"))?,
            iface: v.get("iface").map(|s| s.to_string()),
        };
        if r.proto != "tcp" && r.proto != "udp" {
            anyhow::bail!("proto: {:?} is not tcp or udp", r.proto);
        }
        if r.from.is_ipv4() != r.to.is_ipv4() {
            anyhow::bail!(
                "from / to: {} and {} are of different families",
                r.from,
                r.to
            );
        }
        Ok(r)
    }
}

pub use run::{Hook, explain};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips_and_bad_fields_are_named() {
        let r = Request {
            from: "10.0.0.1".parse().unwrap(),
            to: "10.0.0.2".parse().unwrap(),
            port: 80,
            proto: "udp".into(),
            sport: 1234,
            iface: Some("eth0".into()),
        };
        assert_eq!(Request::from_query(&r.to_query()).unwrap(), r);
        let e = Request::from_query("from=10.0.0.1&to=fd00::1&port=80").unwrap_err();
        assert!(e.to_string().starts_with("from / to"), "{e}");
        let e = Request::from_query("from=10.0.0.1&to=10.0.0.2").unwrap_err();
        assert_eq!(e.to_string(), "port: missing");
        let e = Request::from_query("from=x&to=10.0.0.2&port=1").unwrap_err();
        assert!(e.to_string().starts_with("from:"), "{e}");
    }
}
