//! Offline mode: the objects of a manifests folder → engine → verdicts and policy maps as JSON (what
//! `oxilium policy verdict|get --manifests DIR` print; the binary reads the folder with
//! `k8s::manifests::read_folder` and hands the objects over). Argument parsing helpers live here too
//! so that the CLI only parses flags and prints.
use crate::api::Protocol;
use crate::engine::{Config, Endpoint, Engine};
use crate::identity::NumericIdentity;
use crate::l7::{HttpRequest, http_allows};
use crate::manifests::{LoadError, Manifests, endpoint_spec};
use crate::mapstate::{MapKey, Verdict, lookup};
use crate::rule::Direction;
use serde_json::{Value, json};
use std::fmt::Display;
use std::net::IpAddr;

/// A bad query: names the flag and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{flag}: {msg}")]
pub struct QueryError {
    pub flag: &'static str,
    pub msg: String,
}

fn qerr<T>(flag: &'static str, msg: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError {
        flag,
        msg: msg.into(),
    })
}

/// Destination of a verdict query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pod(String),
    Ip(IpAddr),
}

#[derive(Clone, Debug)]
pub struct Query {
    pub from: String,
    pub to: Target,
    pub port: u16,
    pub proto: Protocol,
    pub http: Option<HttpRequest>,
}

/// Parses `NS/POD`.
pub fn parse_pod_ref(flag: &'static str, s: &str) -> Result<String, QueryError> {
    match s.split_once('/') {
        Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {
            Ok(s.to_string())
        }
        _ => qerr(flag, format!("expected NAMESPACE/POD, got {s:?}")),
    }
}

/// Parses `NS/POD` or an IP address.
pub fn parse_target(flag: &'static str, s: &str) -> Result<Target, QueryError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Target::Ip(ip));
    }
    parse_pod_ref(flag, s)
        .map(Target::Pod)
        .map_err(|_| QueryError {
            flag,
            msg: format!("expected NAMESPACE/POD or an IP address, got {s:?}"),
        })
}

/// Parses `PORT/PROTO` (PROTO: TCP, UDP or SCTP; default TCP).
pub fn parse_port(flag: &'static str, s: &str) -> Result<(u16, Protocol), QueryError> {
    let (p, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = match p.parse() {
        Ok(n) if n > 0 => n,
        _ => return qerr(flag, format!("invalid port {p:?} (1-65535)")),
    };
    match Protocol::parse(proto) {
        Some(Protocol::Any) | None => qerr(
            flag,
            format!("invalid protocol {proto:?} (TCP, UDP or SCTP)"),
        ),
        Some(pr) => Ok((port, pr)),
    }
}

/// Parses `Name: value` header flags.
pub fn parse_header(flag: &'static str, s: &str) -> Result<(String, String), QueryError> {
    match s.split_once(':') {
        Some((n, v)) if !n.trim().is_empty() => Ok((n.trim().to_string(), v.trim().to_string())),
        _ => qerr(flag, format!("expected 'Name: value', got {s:?}")),
    }
}

/// An engine loaded from the objects of a manifests folder.
pub struct Offline {
    pub engine: Engine,
}

impl Offline {
    /// The objects as the manifests-folder reader yields them, with their origins (file and line).
    pub fn from_objects<O: Display>(
        objects: impl IntoIterator<Item = (O, Value)>,
        cfg: Config,
    ) -> Result<Offline, LoadError> {
        let m = Manifests::from_objects(objects, &cfg.cluster)?;
        Ok(Self::from_manifests(m, cfg))
    }

    pub fn from_manifests(m: Manifests, cfg: Config) -> Offline {
        let mut engine = Engine::new(cfg);
        for ns in &m.namespaces {
            engine.upsert_namespace(&ns.metadata.name, ns.metadata.labels.clone());
        }
        for (origin, rules) in m.policies {
            engine.upsert_policy(origin, rules);
        }
        for p in &m.pods {
            engine.upsert_endpoint(endpoint_spec(p));
        }
        Offline { engine }
    }

    fn endpoint(&self, flag: &'static str, key: &str) -> Result<&Endpoint, QueryError> {
        self.engine.endpoint(key).ok_or_else(|| QueryError {
            flag,
            msg: format!("no pod {key} in the manifests"),
        })
    }

    fn peer_json(&self, id: NumericIdentity, ep: Option<&Endpoint>, ip: Option<IpAddr>) -> Value {
        json!({
            "endpoint": ep.map(|e| e.spec.key()),
            "ip": ip.map(|i| i.to_string()),
            "identity": id,
            "labels": self.engine.identity_labels(id).map(|l| l.to_strings()).unwrap_or_default(),
        })
    }

    /// The decision for one flow, as the datapath (and, with an HTTP request, the proxy) would make it.
    pub fn verdict(&self, q: &Query) -> Result<Value, QueryError> {
        let src = self.endpoint("--from", &q.from)?;
        let (dst_id, dst, dst_ip) = match &q.to {
            Target::Pod(k) => {
                let e = self.endpoint("--to", k)?;
                (e.identity, Some(e), e.spec.ips.first().copied())
            }
            Target::Ip(ip) => {
                let (id, e) = self.engine.identity_of_ip(*ip);
                (id, e, Some(*ip))
            }
        };
        let egress = step(src, Direction::Egress, dst_id, q);
        let ingress = dst.map(|d| {
            let mut s = step(d, Direction::Ingress, src.identity, q);
            if src.identity == crate::identity::reserved::HOST
                && self.engine.cfg.allow_localhost
                && d.identity != crate::identity::reserved::HOST
            {
                s.verdict = "allow";
                s.reason =
                    "traffic from the local host into a pod is allowed (allow-localhost)".into();
                s.policies.clear();
            }
            s
        });
        let steps: Vec<&Step> = std::iter::once(&egress).chain(ingress.as_ref()).collect();
        let deciding = steps
            .iter()
            .find(|s| s.verdict == "deny")
            .or_else(|| steps.iter().find(|s| s.verdict == "redirect"))
            .or_else(|| steps.iter().rev().find(|s| !s.policies.is_empty()))
            .unwrap_or(&steps[0]);
        let audit = self.engine.cfg.audit;
        let verdict = match deciding.verdict {
            "deny" if audit => "audit",
            v => v,
        };
        Ok(json!({
            "verdict": verdict,
            "policy": deciding.policies.first(),
            "policies": deciding.policies,
            "direction": deciding.dir.name(),
            "reason": deciding.reason,
            "from": self.peer_json(src.identity, Some(src), src.spec.ips.first().copied()),
            "to": self.peer_json(dst_id, dst, dst_ip),
            "port": q.port,
            "protocol": q.proto.name(),
            "http": q.http.as_ref().map(|h| json!({"method": h.method, "path": h.path, "host": h.host})),
            "audit": audit,
            "egress": egress.to_json(),
            "ingress": ingress.as_ref().map(Step::to_json),
        }))
    }

    /// An endpoint's computed policy map.
    pub fn get(&self, key: &str) -> Result<Value, QueryError> {
        let ep = self.endpoint("--endpoint", key)?;
        let entries: Vec<Value> = ep
            .policy
            .map
            .iter()
            .map(|(k, e)| {
                let (lo, hi) = k.port.range();
                let kernel = k.to_abi();
                json!({
                    "identity": k.identity,
                    "peer": if k.identity == 0 { vec!["*".to_string()] } else { self.engine.identity_labels(k.identity).map(|l| l.to_strings()).unwrap_or_default() },
                    "direction": k.direction.name(),
                    "protocol": Protocol::from_number(k.port.proto).map_or("?", Protocol::name),
                    "ports": if k.port.proto == 0 { Value::Null } else { json!([lo, hi]) },
                    "prefix_len": kernel.prefix_len,
                    "verdict": e.verdict,
                    "proxy_port": e.proxy_port,
                    "http": e.http,
                    "dns": e.dns,
                    "policies": e.origins.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(json!({
            "endpoint": key,
            "identity": ep.identity,
            "labels": ep.labels.to_strings(),
            "ips": ep.spec.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            "enforcement": {"ingress": ep.policy.enforced[0], "egress": ep.policy.enforced[1]},
            "enforcing_policies": {
                "ingress": ep.policy.enforcing[0].iter().map(|o| o.to_string()).collect::<Vec<_>>(),
                "egress": ep.policy.enforcing[1].iter().map(|o| o.to_string()).collect::<Vec<_>>(),
            },
            "audit": self.engine.cfg.audit,
            "entries": entries,
        }))
    }
}

struct Step {
    dir: Direction,
    endpoint: String,
    enforced: bool,
    verdict: &'static str,
    reason: String,
    policies: Vec<String>,
    key: Option<MapKey>,
    proxy_port: u16,
}

impl Step {
    fn to_json(&self) -> Value {
        json!({
            "endpoint": self.endpoint,
            "enforced": self.enforced,
            "verdict": self.verdict,
            "reason": self.reason,
            "policies": self.policies,
            "key": self.key.map(|k| json!({"identity": k.identity, "protocol": k.port.proto, "port": k.port.port, "prefix_len": k.to_abi().prefix_len})),
            "proxy_port": self.proxy_port,
        })
    }
}

/// One endpoint's side of a flow: its policy map looked up for the peer identity.
fn step(ep: &Endpoint, dir: Direction, peer: NumericIdentity, q: &Query) -> Step {
    let enforced = ep.policy.enforced[dir.index()];
    let mut s = Step {
        dir,
        endpoint: ep.spec.key(),
        enforced,
        verdict: "deny",
        reason: String::new(),
        policies: Vec::new(),
        key: None,
        proxy_port: 0,
    };
    let Some((key, e)) = lookup(&ep.policy.map, peer, dir, q.proto, q.port) else {
        s.reason = format!(
            "default deny: {} is selected for {} and no rule allows this flow",
            s.endpoint,
            dir.name()
        );
        s.policies = ep.policy.enforcing[dir.index()]
            .iter()
            .map(|o| o.to_string())
            .collect();
        return s;
    };
    s.key = Some(key);
    s.policies = e.origins.iter().map(|o| o.to_string()).collect();
    match e.verdict {
        Verdict::Deny => {
            s.reason = "denied by a deny rule (deny takes precedence over allow)".into();
        }
        Verdict::Allow if e.origins.is_empty() => {
            s.verdict = "allow";
            s.reason = format!(
                "{} not enforced: no policy selects the endpoint",
                dir.name()
            );
        }
        Verdict::Allow => {
            s.verdict = "allow";
            s.reason = "allowed by rule".into();
        }
        Verdict::Redirect => {
            s.proxy_port = e.proxy_port;
            match &q.http {
                None => {
                    s.verdict = "redirect";
                    s.reason = format!(
                        "L7 rules apply: redirected to the proxy on port {}",
                        e.proxy_port
                    );
                }
                Some(req) => match http_allows(&e.http, req) {
                    Some(_) => {
                        s.verdict = "allow";
                        s.reason = "allowed by an L7 HTTP rule".into();
                    }
                    None => {
                        s.reason = format!("no L7 HTTP rule allows {} {}", req.method, req.path);
                    }
                },
            }
        }
    }
    s
}
