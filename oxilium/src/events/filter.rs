//! Which flow records a subscriber wants: `oxilium monitor`'s flags, sent to the agent as the
//! query string of `GET /events` (`type=drop&port=80&...`) and applied there, so a filtered
//! monitor costs the agent nothing for the records it does not want.
use super::record::FlowRecord;
use anyhow::{Result, bail};
use std::net::IpAddr;

#[derive(Clone, Debug, Default, PartialEq, clap::Args)]
pub struct Filter {
    /// Only these kinds (repeat or comma-separate): drop, translation, trace, policy, l7.
    #[arg(long = "type", value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Only these verdicts (repeat or comma-separate): dropped, translated, traced, forwarded,
    /// audit.
    #[arg(long, value_delimiter = ',')]
    pub verdict: Vec<String>,
    /// Only flows from this address.
    #[arg(long)]
    pub from: Option<IpAddr>,
    /// Only flows to this address.
    #[arg(long)]
    pub to: Option<IpAddr>,
    /// Only flows from or to this address (a pod's, a node's, a backend's).
    #[arg(long)]
    pub endpoint: Option<IpAddr>,
    /// Only flows with this source or destination port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only records naming this security identity (policy records).
    #[arg(long)]
    pub identity: Option<u32>,
    /// Only records of this service (name or id).
    #[arg(long)]
    pub service: Option<String>,
}

const KINDS: [&str; 5] = ["drop", "translation", "trace", "policy", "l7"];
const VERDICTS: [&str; 5] = ["dropped", "translated", "traced", "forwarded", "audit"];

impl Filter {
    /// The query string the agent parses back with [`Filter::from_query`].
    pub fn to_query(&self) -> String {
        let mut q = Vec::new();
        for k in &self.kinds {
            q.push(format!("type={k}"));
        }
        for v in &self.verdict {
            q.push(format!("verdict={v}"));
        }
        let mut opt = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                q.push(format!("{k}={v}"));
            }
        };
        opt("from", self.from.map(|a| a.to_string()));
        opt("to", self.to.map(|a| a.to_string()));
        opt("endpoint", self.endpoint.map(|a| a.to_string()));
        opt("port", self.port.map(|p| p.to_string()));
        opt("identity", self.identity.map(|p| p.to_string()));
        opt("service", self.service.clone());
        q.join("&")
    }

    /// Parses and checks a query string; an unknown key or a bad value is an error naming it.
    pub fn from_query(q: &str) -> Result<Filter> {
        let mut f = Filter::default();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let addr = |v: &str| -> Result<IpAddr> {
                v.parse()
                    .map_err(|_| anyhow::anyhow!("{k}: {v:?} is not an IP address"))
            };
            match k {
                "type" => {
                    if !KINDS.contains(&v) {
                        bail!("type: {v:?} is not one of {KINDS:?}");
                    }
                    f.kinds.push(v.into());
                }
                "verdict" => {
                    let v = v.to_ascii_lowercase();
                    if !VERDICTS.contains(&v.as_str()) {
                        bail!("verdict: {v:?} is not one of {VERDICTS:?}");
                    }
                    f.verdict.push(v);
                }
                "from" => f.from = Some(addr(v)?),
                "to" => f.to = Some(addr(v)?),
                "endpoint" => f.endpoint = Some(addr(v)?),
                "port" => {
                    f.port = Some(
                        v.parse()
                            .map_err(|_| anyhow::anyhow!("port: {v:?} is not a port"))?,
                    )
                }
                "identity" => {
                    f.identity = Some(
                        v.parse()
                            .map_err(|_| anyhow::anyhow!("identity: {v:?} is not a number"))?,
                    )
                }
                "service" => f.service = Some(v.into()),
                _ => bail!("unknown filter {k:?}"),
            }
        }
        Ok(f)
    }

    /// Checks the flags the same way the agent checks the query.
    pub fn check(&self) -> Result<()> {
        Self::from_query(&self.to_query()).map(|_| ())
    }

    pub fn matches(&self, r: &FlowRecord) -> bool {
        let f = &r.flow;
        if !self.kinds.is_empty() && !self.kinds.contains(&f.event_type.kind) {
            return false;
        }
        if !self.verdict.is_empty() && !self.verdict.contains(&f.verdict.to_ascii_lowercase()) {
            return false;
        }
        let is = |want: &Option<IpAddr>, have: &str| {
            want.is_none_or(|w| have.parse::<IpAddr>().is_ok_and(|h| h == w))
        };
        if !is(&self.from, &f.ip.source) || !is(&self.to, &f.ip.destination) {
            return false;
        }
        if self.endpoint.is_some()
            && !is(&self.endpoint, &f.ip.source)
            && !is(&self.endpoint, &f.ip.destination)
            && !f.backend.as_ref().is_some_and(|b| {
                b.address
                    .parse::<std::net::SocketAddr>()
                    .is_ok_and(|a| Some(a.ip()) == self.endpoint)
            })
        {
            return false;
        }
        if let Some(p) = self.port
            && f.source.port != Some(p)
            && f.destination.port != Some(p)
        {
            return false;
        }
        if let Some(i) = self.identity
            && f.source.identity != Some(i)
            && f.destination.identity != Some(i)
        {
            return false;
        }
        if let Some(s) = &self.service {
            let Some(svc) = &f.service else {
                return false;
            };
            if svc.name.as_deref() != Some(s.as_str()) && svc.id.to_string() != *s {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips_and_bad_values_name_their_key() {
        let f = Filter {
            kinds: vec!["drop".into(), "trace".into()],
            verdict: vec!["dropped".into()],
            from: Some("10.0.0.1".parse().unwrap()),
            to: Some("fd00::1".parse().unwrap()),
            endpoint: None,
            port: Some(80),
            identity: Some(7),
            service: Some("web".into()),
        };
        assert_eq!(Filter::from_query(&f.to_query()).unwrap(), f);
        let e = Filter::from_query("port=99999").unwrap_err().to_string();
        assert!(e.starts_with("port:"), "{e}");
        let e = Filter::from_query("type=flows").unwrap_err().to_string();
        assert!(e.starts_with("type:"), "{e}");
        assert!(Filter::from_query("colour=red").is_err());
    }
}
