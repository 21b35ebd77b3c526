//! Which endpoints of one Service port and one address family a node uses: conditions, the
//! terminating fallback, topology hints, and the cluster / node-local split of the traffic policies.
use crate::convert::{Ep, Family, Slice, SvcPort};
use crate::frontend::{Backend, BackendState};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One endpoint of one Service port: an EndpointSlice endpoint with the port its slice gives
/// the Service port's name.
#[derive(Clone, Debug)]
pub(crate) struct Candidate<'a> {
    pub ep: &'a Ep,
    pub port: u16,
    /// The ready condition, or true for every endpoint under publishNotReadyAddresses.
    pub ready: bool,
}

impl Candidate<'_> {
    /// Usable only through the terminating fallback.
    fn serving_terminating(&self) -> bool {
        !self.ready && self.ep.serving && self.ep.terminating
    }

    fn rank(&self) -> u8 {
        if self.ready {
            2
        } else if self.serving_terminating() {
            1
        } else {
            0
        }
    }

    fn backend(&self, state: BackendState) -> Backend {
        Backend {
            address: self.ep.address,
            port: self.port,
            state,
            node: self.ep.node.clone(),
            zone: self.ep.zone.clone(),
        }
    }
}

/// The endpoints of `port` in the Service's `slices` of `family`, deduplicated by address and port
/// (an endpoint can sit in two slices while the controller moves it; the readier copy wins, then the
/// first slice by name), sorted by address and port. The backend port is the slice's port of the same
/// name and protocol as the Service port, so a named targetPort resolves per slice, i.e. per endpoint.
pub(crate) fn candidates<'a>(
    slices: impl Iterator<Item = &'a Slice>,
    port: &SvcPort,
    family: Family,
    publish_not_ready: bool,
) -> Vec<Candidate<'a>> {
    let mut by_addr: BTreeMap<(IpAddr, u16), Candidate<'a>> = BTreeMap::new();
    for slice in slices {
        if slice.family != Some(family) {
            continue;
        }
        let Some(p) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let c = Candidate {
                ep,
                port: p,
                ready: publish_not_ready || ep.ready,
            };
            match by_addr.get(&(ep.address, p)) {
                Some(old) if old.rank() >= c.rank() => {}
                _ => {
                    by_addr.insert((ep.address, p), c);
                }
            }
        }
    }
    by_addr.into_values().collect()
}

/// What a node needs to know about itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Locality<'a> {
    pub node: &'a str,
    pub zone: Option<&'a str>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Selection {
    /// For Cluster traffic policies: ready endpoints (topology-filtered), else the terminating fallback.
    pub cluster: Vec<Backend>,
    /// For Local traffic policies: this node's ready endpoints, else its serving+terminating ones.
    pub local: Vec<Backend>,
    /// This node's ready endpoints (the health-check answer).
    pub local_ready: Vec<IpAddr>,
}

pub(crate) fn select(cands: &[Candidate<'_>], at: Locality<'_>) -> Selection {
    let ready: Vec<&Candidate> = cands.iter().filter(|c| c.ready).collect();
    let cluster = if ready.is_empty() {
        cands
            .iter()
            .filter(|c| c.serving_terminating())
            .map(|c| c.backend(BackendState::Terminating))
            .collect()
    } else {
        topology_filter(&ready, at)
            .into_iter()
            .map(|c| c.backend(BackendState::Active))
            .collect()
    };
    let is_local = |c: &&Candidate| c.ep.node.as_deref() == Some(at.node);
    let local_ready: Vec<&Candidate> = ready.iter().copied().filter(is_local).collect();
    let local = if local_ready.is_empty() {
        cands
            .iter()
            .filter(is_local)
            .filter(|c| c.serving_terminating())
            .map(|c| c.backend(BackendState::Terminating))
            .collect()
    } else {
        local_ready
            .iter()
            .map(|c| c.backend(BackendState::Active))
            .collect()
    };
    Selection {
        cluster,
        local,
        local_ready: local_ready.iter().map(|c| c.ep.address).collect(),
    }
}

/// Topology: node hints (trafficDistribution PreferSameNode) when every ready endpoint has one and
/// one names this node; else zone hints when every ready endpoint has one and one names this
/// node's zone; else no filtering. As kube-proxy: trafficDistribution alone (PreferClose,
/// PreferSameZone) filters nothing; only the hints the EndpointSlice controller wrote do.
fn topology_filter<'a, 'b>(
    ready: &[&'b Candidate<'a>],
    at: Locality<'_>,
) -> Vec<&'b Candidate<'a>> {
    let has = |hints: &[std::sync::Arc<str>], v: &str| hints.iter().any(|h| &**h == v);
    let all_node_hinted = ready.iter().all(|c| !c.ep.node_hints().is_empty());
    if all_node_hinted && ready.iter().any(|c| has(c.ep.node_hints(), at.node)) {
        return ready
            .iter()
            .copied()
            .filter(|c| has(c.ep.node_hints(), at.node))
            .collect();
    }
    let Some(zone) = at.zone else {
        return ready.to_vec();
    };
    let zone_hint = |c: &Candidate| -> Option<bool> {
        (!c.ep.zone_hints().is_empty()).then(|| has(c.ep.zone_hints(), zone))
    };
    let hinted: Option<Vec<bool>> = ready.iter().map(|c| zone_hint(c)).collect();
    match hinted {
        Some(h) if h.iter().any(|m| *m) => ready
            .iter()
            .zip(h)
            .filter(|(_, m)| *m)
            .map(|(c, _)| *c)
            .collect(),
        _ => ready.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::SlicePort;
    use crate::frontend::{ApiProtocol, ObjectKey, Protocol};

    fn ep(addr: &str, node: &str, ready: bool, serving: bool, term: bool, zh: &[&str]) -> Ep {
        Ep {
            address: addr.parse().unwrap(),
            ready,
            serving,
            terminating: term,
            node: Some(node.into()),
            zone: None,
            hints: (!zh.is_empty()).then(|| {
                Box::new(crate::convert::Hints {
                    zones: zh.iter().map(|s| (*s).into()).collect(),
                    nodes: Box::new([]),
                })
            }),
        }
    }

    fn slice(name: &str, port: u16, eps: Vec<Ep>) -> Slice {
        Slice {
            key: ObjectKey::new("default", name),
            origin: None,
            service: Some(ObjectKey::new("default", "svc")),
            family: Some(Family::V4),
            ports: vec![SlicePort {
                name: "http".into(),
                protocol: ApiProtocol::Supported(Protocol::Tcp),
                port: Some(port),
            }],
            endpoints: eps,
            notes: vec![],
        }
    }

    fn svc_port() -> SvcPort {
        SvcPort {
            index: 0,
            name: "http".into(),
            protocol: ApiProtocol::Supported(Protocol::Tcp),
            port: 80,
            node_port: None,
        }
    }

    const AT: Locality = Locality {
        node: "a",
        zone: Some("z1"),
    };

    fn addrs(b: &[Backend]) -> Vec<String> {
        b.iter()
            .map(|b| format!("{}:{} {:?}", b.address, b.port, b.state))
            .collect()
    }

    #[test]
    fn dedupe_prefers_ready_copy() {
        let s1 = slice(
            "s1",
            8080,
            vec![ep("10.0.0.1", "a", false, false, false, &[])],
        );
        let s2 = slice(
            "s2",
            8080,
            vec![ep("10.0.0.1", "a", true, true, false, &[])],
        );
        let c = candidates([&s1, &s2].into_iter(), &svc_port(), Family::V4, false);
        assert_eq!(c.len(), 1);
        assert!(c[0].ready);
    }

    #[test]
    fn terminating_fallback_cluster_and_local() {
        let s = slice(
            "s",
            8080,
            vec![
                ep("10.0.0.1", "a", false, true, true, &[]),
                ep("10.0.0.2", "b", true, true, false, &[]),
                ep("10.0.0.3", "b", false, false, true, &[]),
            ],
        );
        let c = candidates([&s].into_iter(), &svc_port(), Family::V4, false);
        let sel = select(&c, AT);
        assert_eq!(addrs(&sel.cluster), ["10.0.0.2:8080 Active"]);
        // No local ready endpoint: the local serving+terminating one, even though a remote one is ready.
        assert_eq!(addrs(&sel.local), ["10.0.0.1:8080 Terminating"]);
        assert!(sel.local_ready.is_empty());
        let s = slice("s", 8080, vec![ep("10.0.0.1", "a", false, true, true, &[])]);
        let c = candidates([&s].into_iter(), &svc_port(), Family::V4, false);
        assert_eq!(
            addrs(&select(&c, AT).cluster),
            ["10.0.0.1:8080 Terminating"]
        );
    }

    #[test]
    fn zone_hints_only_when_all_hinted_and_one_matches() {
        let s = slice(
            "s",
            80,
            vec![
                ep("10.0.0.1", "b", true, true, false, &["z1"]),
                ep("10.0.0.2", "c", true, true, false, &["z2"]),
            ],
        );
        let c = candidates([&s].into_iter(), &svc_port(), Family::V4, false);
        assert_eq!(addrs(&select(&c, AT).cluster), ["10.0.0.1:80 Active"]);
        let other = Locality {
            node: "x",
            zone: Some("z3"),
        };
        assert_eq!(select(&c, other).cluster.len(), 2);
        let s = slice(
            "s",
            80,
            vec![
                ep("10.0.0.1", "b", true, true, false, &["z1"]),
                ep("10.0.0.2", "c", true, true, false, &[]),
            ],
        );
        let c = candidates([&s].into_iter(), &svc_port(), Family::V4, false);
        assert_eq!(select(&c, AT).cluster.len(), 2);
    }

    #[test]
    fn zones_without_hints_filter_nothing() {
        let mut a = ep("10.0.0.1", "a", true, true, false, &[]);
        let mut b = ep("10.0.0.2", "b", true, true, false, &[]);
        a.zone = Some("z1".into());
        b.zone = Some("z2".into());
        let s = slice("s", 80, vec![a, b]);
        let c = candidates([&s].into_iter(), &svc_port(), Family::V4, false);
        assert_eq!(select(&c, AT).cluster.len(), 2);
    }

    #[test]
    fn publish_not_ready_uses_everything() {
        let s = slice("s", 80, vec![ep("10.0.0.1", "b", false, false, false, &[])]);
        let c = candidates([&s].into_iter(), &svc_port(), Family::V4, true);
        assert_eq!(addrs(&select(&c, AT).cluster), ["10.0.0.1:80 Active"]);
        let c = candidates([&s].into_iter(), &svc_port(), Family::V4, false);
        assert!(select(&c, AT).cluster.is_empty());
    }

    #[test]
    fn port_must_match_name_and_protocol() {
        let mut s = slice("s", 80, vec![ep("10.0.0.1", "b", true, true, false, &[])]);
        s.ports[0].protocol = ApiProtocol::Supported(Protocol::Udp);
        assert!(candidates([&s].into_iter(), &svc_port(), Family::V4, false).is_empty());
        s.ports[0].protocol = ApiProtocol::Supported(Protocol::Tcp);
        s.ports[0].name = "other".into();
        assert!(candidates([&s].into_iter(), &svc_port(), Family::V4, false).is_empty());
        assert!(candidates([&s].into_iter(), &svc_port(), Family::V6, false).is_empty());
    }
}
