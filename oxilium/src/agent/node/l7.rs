//! The L7 proxies of the node (`--cni`, docs/l7.md): the HTTP proxy (the `proxy` crate) on the
//! policy engine's HTTP proxy ports, the routing that delivers redirected packets to it, the
//! policy it asks per request ([`Endpoints`], kept by the policy agent) and its access records
//! on the event stream (`oxilium monitor --type l7`).
use crate::{
    bpf::policy::IpcacheReader,
    events::{
        Hub,
        record::{
            Endpoint, EventType, Flow, FlowRecord, Http, Interface, Ip, L4, L7, Ports,
            namespace_of, rfc3339,
        },
    },
};
use anyhow::{Context, Result};
use policy::{
    PolicyMap, Verdict, api::Protocol, mapstate::lookup, rule::Direction as PolicyDirection,
};
use proxy::http::{Access, Conn, Decision, Direction, Outcome, Policy, Rules};
use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex, RwLock},
};
use tracing::info;

/// A local endpoint as the proxies see it: its identity and policy map.
struct View {
    key: String,
    identity: u32,
    map: Arc<PolicyMap>,
}

/// The local endpoints' policy, by address: written by the policy agent after each
/// regeneration, read by the proxies for every request. Also the names of the cluster's pods
/// the agent knows (its policy objects' Pods with addresses, other nodes' included), for the
/// monitor's records.
#[derive(Default)]
pub struct Endpoints {
    by_addr: RwLock<HashMap<IpAddr, Arc<View>>>,
    cluster: RwLock<HashMap<IpAddr, Arc<str>>>,
}

impl Endpoints {
    pub fn set(&self, addrs: &[IpAddr], key: &str, identity: u32, map: &PolicyMap) {
        let v = Arc::new(View {
            key: key.to_string(),
            identity,
            map: Arc::new(map.clone()),
        });
        let mut m = self.by_addr.write().unwrap_or_else(|e| e.into_inner());
        for a in addrs {
            m.insert(*a, v.clone());
        }
    }

    pub fn remove(&self, addrs: &[IpAddr]) {
        let mut m = self.by_addr.write().unwrap_or_else(|e| e.into_inner());
        for a in addrs {
            m.remove(a);
        }
    }

    /// Replaces the cluster's pods by address (`namespace/name`).
    pub fn set_cluster(&self, pods: HashMap<IpAddr, Arc<str>>) {
        *self.cluster.write().unwrap_or_else(|e| e.into_inner()) = pods;
    }

    /// `namespace/name` of the pod at `a`: a local endpoint, else a pod of the cluster the agent
    /// knows (on another node); for the monitor's records.
    pub fn pod_name(&self, a: IpAddr) -> Option<String> {
        if let Some(v) = self.get(a) {
            return Some(v.key.clone());
        }
        self.cluster
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&a)
            .map(|k| k.to_string())
    }

    /// The addresses of the local endpoint `namespace/name`.
    pub fn addrs_of(&self, key: &str) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .by_addr
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, v)| v.key == key)
            .map(|(a, _)| *a)
            .collect();
        v.sort();
        v
    }

    /// The policies that produced the kernel entry `k` of the local endpoint at `a`.
    pub fn origins(&self, a: IpAddr, k: &abi::policy::PolicyKey) -> Vec<String> {
        let Some(v) = self.get(a) else {
            return Vec::new();
        };
        v.map
            .iter()
            .find(|(mk, _)| mk.to_abi() == *k)
            .map(|(_, e)| e.origins.iter().map(|o| o.to_string()).collect())
            .unwrap_or_default()
    }

    fn get(&self, a: IpAddr) -> Option<Arc<View>> {
        self.by_addr
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&a)
            .cloned()
    }
}

/// The proxies' [`Policy`]: the endpoint's map looked up as the datapath does, for the peer's
/// identity from the kernel's ipcache.
struct NodePolicy {
    endpoints: Arc<Endpoints>,
    ipcache: Mutex<IpcacheReader>,
}

fn addr16(ip: IpAddr) -> abi::lb::Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

impl NodePolicy {
    fn identity(&self, ip: IpAddr) -> u32 {
        if let Some(v) = self.endpoints.get(ip) {
            return v.identity;
        }
        let r = self.ipcache.lock().unwrap_or_else(|e| e.into_inner());
        r.get(addr16(ip))
            .map(|v| v.identity)
            .unwrap_or(abi::policy::IDENTITY_WORLD)
    }

    fn name(&self, ip: IpAddr) -> Option<String> {
        self.endpoints.get(ip).map(|v| v.key.clone())
    }
}

impl Policy for NodePolicy {
    fn decide(&self, c: &Conn) -> Decision {
        let (ep_ip, peer_ip, dir) = match c.direction {
            Direction::Ingress => (c.original.ip(), c.client.ip(), PolicyDirection::Ingress),
            Direction::Egress => (c.client.ip(), c.original.ip(), PolicyDirection::Egress),
        };
        let peer = self.identity(peer_ip);
        let ep = self.endpoints.get(ep_ip);
        let (src, dst) = match c.direction {
            Direction::Ingress => (peer, ep.as_ref().map_or(0, |e| e.identity)),
            Direction::Egress => (ep.as_ref().map_or(0, |e| e.identity), peer),
        };
        let mark = match c.direction {
            Direction::Ingress => Some(abi::proxy::MARK_FROM_INGRESS_PROXY),
            Direction::Egress => abi::proxy::upstream_egress_mark(src),
        };
        let rules = match (&ep, mark) {
            (Some(ep), Some(_)) => {
                match lookup(&ep.map, peer, dir, Protocol::Tcp, c.original.port()) {
                    Some((_, e)) if e.verdict == Verdict::Redirect => {
                        Rules::Http(Arc::new(e.http.clone()))
                    }
                    Some((_, e)) if e.verdict == Verdict::Allow => Rules::All,
                    _ => Rules::None,
                }
            }
            _ => Rules::None,
        };
        Decision {
            rules,
            source_identity: src,
            destination_identity: dst,
            upstream_mark: mark.unwrap_or(0),
            source_name: self.name(c.client.ip()),
            destination_name: self.name(c.original.ip()),
        }
    }
}

/// Whether the node's HTTP proxy would let `req` through on the redirected connection `c`: the
/// decision it takes per request ([`NodePolicy`], then the proxy crate's matcher).
pub fn http_allows(
    endpoints: &Arc<Endpoints>,
    pin_dir: &Path,
    c: &Conn,
    req: &policy::l7::HttpRequest,
) -> Result<bool> {
    let p = NodePolicy {
        endpoints: endpoints.clone(),
        ipcache: Mutex::new(IpcacheReader::open(pin_dir)?),
    };
    Ok(proxy::http::allows(&p.decide(c).rules, req))
}

/// The flow record of one request.
pub fn record(a: &Access) -> FlowRecord {
    let (src, dst) = (a.conn.client, a.conn.original);
    let verdict = match a.outcome {
        Outcome::Forwarded => "FORWARDED",
        Outcome::Denied | Outcome::Error => "DROPPED",
    };
    let url = format!(
        "http://{}{}",
        a.host.clone().unwrap_or_else(|| dst.to_string()),
        a.path
    );
    let ns = a
        .time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let summary = format!(
        "HTTP/1.1 {} {url} => {} ({})",
        a.method,
        a.status,
        match a.outcome {
            Outcome::Forwarded => "allowed",
            Outcome::Denied => "denied by policy",
            Outcome::Error => "upstream unavailable",
        }
    );
    let endpoint = |s: std::net::SocketAddr, id: u32, name: &Option<String>| Endpoint {
        ip: s.ip().to_string(),
        port: Some(s.port()),
        identity: Some(id),
        pod_name: name.clone(),
        namespace: name.as_deref().and_then(namespace_of),
    };
    FlowRecord {
        flow: Flow {
            time: rfc3339(ns),
            verdict: verdict.into(),
            drop_reason_desc: (a.outcome == Outcome::Denied).then(|| "POLICY_DENIED".into()),
            type_: "L7".into(),
            event_type: EventType {
                kind: "l7".into(),
                sub_type: 0,
            },
            ip: Ip {
                source: src.ip().to_string(),
                destination: dst.ip().to_string(),
                ip_version: if src.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
            },
            l4: Some(L4 {
                tcp: Some(Ports {
                    source_port: src.port(),
                    destination_port: dst.port(),
                    flags: None,
                }),
                udp: None,
            }),
            source: endpoint(src, a.decision.source_identity, &a.decision.source_name),
            destination: endpoint(
                dst,
                a.decision.destination_identity,
                &a.decision.destination_name,
            ),
            traffic_direction: Some(
                match a.conn.direction {
                    Direction::Ingress => "INGRESS",
                    _ => "EGRESS",
                }
                .into(),
            ),
            policy_match_type: None,
            service: None,
            backend: None,
            interface: Interface::default(),
            program: match a.conn.direction {
                Direction::Ingress => "http-proxy-ingress",
                Direction::Egress => "http-proxy-egress",
            }
            .into(),
            reason: None,
            reason_set: None,
            bytes: 0,
            summary,
            l7: Some(L7 {
                kind: "REQUEST".into(),
                latency_ns: a.latency.as_nanos() as u64,
                http: Http {
                    code: a.status,
                    method: a.method.clone(),
                    url,
                    protocol: "HTTP/1.1".into(),
                },
            }),
        },
    }
}

/// Starts the HTTP proxies on `ingress` and `egress` (the engine's HTTP proxy ports): the
/// routing of redirected packets, the listeners, and their tasks. Fails when a port is taken
/// or the routing cannot be set (a redirected flow then finds no listener and is dropped).
pub async fn start(
    pin_dir: &Path,
    ports: (u16, u16),
    endpoints: Arc<Endpoints>,
    hub: Arc<Hub>,
) -> Result<()> {
    let nl = net::Netlink::connect()?;
    net::rules::ensure_local_delivery(
        &nl,
        abi::proxy::MARK_TO_PROXY,
        abi::proxy::MARK_MASK,
        abi::proxy::ROUTE_TABLE,
        abi::proxy::RULE_PRIORITY,
    )
    .await
    .context("routing redirected packets to the proxies")?;
    let policy: Arc<dyn Policy> = Arc::new(NodePolicy {
        endpoints,
        ipcache: Mutex::new(IpcacheReader::open(pin_dir)?),
    });
    let log: proxy::http::AccessLog = Arc::new(move |a: Access| hub.publish(record(&a)));
    for (port, dir) in [(ports.0, Direction::Ingress), (ports.1, Direction::Egress)] {
        for family in proxy::listener::Family::BOTH {
            let what = format!("the HTTP {dir:?} proxy's listener on port {port} ({family:?})");
            match proxy::listener::tcp(port, family) {
                Ok(l) => {
                    tokio::spawn(proxy::http::serve(l, dir, policy.clone(), log.clone()));
                }
                Err(e) => family_failed(family, &what, e)?,
            }
        }
    }
    info!(
        ingress = ports.0,
        egress = ports.1,
        "HTTP proxies listening"
    );
    Ok(())
}

/// A redirect listener could not be bound: an error for IPv4; for IPv6 (a node without IPv6) a
/// warning, the family's redirected flows finding no listener are dropped.
pub fn family_failed(family: proxy::listener::Family, what: &str, e: std::io::Error) -> Result<()> {
    match family {
        proxy::listener::Family::V4 => Err(anyhow::Error::new(e).context(what.to_string())),
        proxy::listener::Family::V6 => {
            tracing::warn!("{what}: {e}; redirected IPv6 flows will be dropped");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::record::human;

    fn access(outcome: Outcome, status: u16) -> Access {
        Access {
            time: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
            conn: Conn {
                direction: Direction::Ingress,
                client: "10.0.0.11:40000".parse().unwrap(),
                original: "10.0.0.10:80".parse().unwrap(),
            },
            decision: Decision {
                rules: Rules::None,
                source_identity: 257,
                destination_identity: 256,
                upstream_mark: abi::proxy::MARK_FROM_INGRESS_PROXY,
                source_name: Some("default/tiefighter".into()),
                destination_name: Some("default/deathstar".into()),
            },
            method: "PUT".into(),
            path: "/v1/exhaust-port".into(),
            host: Some("deathstar".into()),
            status,
            outcome,
            latency: std::time::Duration::from_micros(42),
        }
    }

    #[test]
    fn a_denied_request_reads_back_and_prints() {
        let r = record(&access(Outcome::Denied, 403));
        let text = serde_json::to_string(&r).unwrap();
        // What `oxilium monitor` does with each line.
        let back: FlowRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let f = &back.flow;
        assert_eq!((f.verdict.as_str(), f.type_.as_str()), ("DROPPED", "L7"));
        assert_eq!(f.event_type.kind, "l7");
        assert_eq!(f.source.identity, Some(257));
        let h = f.l7.as_ref().unwrap();
        assert_eq!((h.http.code, h.http.method.as_str()), (403, "PUT"));
        assert_eq!(h.http.url, "http://deathstar/v1/exhaust-port");
        assert_eq!(h.latency_ns, 42_000);
        let line = human(&back);
        assert!(
            line.contains(
                "10.0.0.11:40000 (default/tiefighter) -> 10.0.0.10:80 (default/deathstar)"
            ) && line.contains("PUT http://deathstar/v1/exhaust-port => 403 (denied by policy)"),
            "{line}"
        );
    }

    #[test]
    fn an_allowed_request_is_forwarded() {
        let r = record(&access(Outcome::Forwarded, 200));
        assert_eq!(r.flow.verdict, "FORWARDED");
        assert_eq!(r.flow.drop_reason_desc, None);
        assert_eq!(r.flow.program, "http-proxy-ingress");
    }
}
