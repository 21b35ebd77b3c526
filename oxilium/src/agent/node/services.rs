//! Kubernetes frontends → the datapath model of this node: every frontend is served from inside
//! (scope internal, socket LB); NodePort, LoadBalancer, externalIP and HostPort frontends also from
//! outside (scope external, with their forwarding mode, source ranges and the
//! externalTrafficPolicy-filtered backends). Also which of the backends are this node's pods.
use lb::model::{self, Backend, Frontend, Mode, Model, Scope, Service};
use std::{collections::BTreeSet, net::IpAddr};

/// The addresses of this node's pods among the backends of frontends served from outside.
pub fn local_endpoints(frontends: &[k8s::frontend::Frontend], node: &str) -> BTreeSet<IpAddr> {
    frontends.iter().flat_map(|f| local_of(f, node)).collect()
}

/// The addresses of this node's pods among the backends of one frontend served from outside.
pub(super) fn local_of<'a>(
    f: &'a k8s::frontend::Frontend,
    node: &'a str,
) -> impl Iterator<Item = IpAddr> + 'a {
    let external = f.kind != k8s::frontend::FrontendType::ClusterIP;
    external
        .then(|| f.external_backends.as_deref().unwrap_or(&f.backends))
        .into_iter()
        .flatten()
        .filter(move |b| b.node.as_deref() == Some(node))
        .map(|b| b.address)
}

/// Kubernetes frontends → the datapath model: every frontend is served from inside (scope
/// internal, socket LB); NodePort, LoadBalancer, externalIP and HostPort frontends also from
/// outside (scope external), with the externalTrafficPolicy-filtered backends where they differ.
/// The services are sorted by frontend, then scope, as `frontends` are (see [`Model::patch`]).
pub fn model_of(frontends: &[k8s::frontend::Frontend], table_size: u32) -> Model {
    let mut services: Vec<Service> = frontends
        .iter()
        .flat_map(|f| services_of(f, table_size))
        .collect();
    // The agent keeps this model until the next whole view: no spare room.
    services.shrink_to_fit();
    Model {
        maglev_seed: 0,
        services,
    }
}

/// The datapath services of one Kubernetes frontend: the external one first, if any.
pub(super) fn services_of(f: &k8s::frontend::Frontend, table_size: u32) -> Vec<Service> {
    let mut services = Vec::with_capacity(2);
    let mut name = format!("{}:{}/{:?}", f.owner, f.port_name, f.kind);
    name.shrink_to_fit();
    let base = Service {
        name,
        frontend: frontend_of((f.address, f.port, f.protocol)),
        algorithm: f.algorithm,
        mode: Mode::Snat,
        table_size,
        conntrack_timeout_s: 300,
        scope: Scope::Internal,
        affinity_timeout_s: f.affinity_timeout,
        source_ranges: Vec::new(),
        backends: backends(&f.backends),
    };
    if f.kind != k8s::frontend::FrontendType::ClusterIP {
        let mut ext = base.clone();
        ext.scope = Scope::External;
        ext.mode = f.forwarding;
        ext.source_ranges = f.source_ranges.to_vec();
        ext.backends = backends(f.external_backends.as_deref().unwrap_or(&f.backends));
        services.push(ext);
    }
    // The socket LB picks a random slot: keep its table small.
    let mut int = base;
    int.algorithm = model::Algorithm::Random;
    services.push(int);
    services
}

/// The datapath frontend of a Kubernetes address.
pub(super) fn frontend_of((addr, port, protocol): k8s::Slot) -> Frontend {
    Frontend {
        addr,
        port,
        protocol,
    }
}

fn backends(bs: &[k8s::frontend::Backend]) -> Vec<Backend> {
    bs.iter()
        .map(|b| Backend {
            addr: std::net::SocketAddr::new(b.address, b.port),
            weight: 1,
            state: b.state,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s::frontend::{Backend as KBackend, BackendState as KState, FrontendType, ObjectKey};

    fn backend(addr: &str, node: &str) -> KBackend {
        KBackend {
            address: addr.parse().unwrap(),
            port: 8080,
            state: KState::Active,
            node: Some(node.into()),
            zone: None,
        }
    }

    fn frontend(kind: FrontendType, addr: &str, backends: Vec<KBackend>) -> k8s::Frontend {
        k8s::Frontend {
            owner: ObjectKey::new("default", "web"),
            port_name: "http".into(),
            address: addr.parse().unwrap(),
            port: 80,
            protocol: k8s::Protocol::Tcp,
            kind,
            backends,
            external_backends: None,
            algorithm: k8s::Algorithm::Random,
            forwarding: Mode::Dsr,
            affinity_timeout: None,
            source_ranges: vec![model::parse_prefix("198.51.100.0/24").unwrap()],
            health_check: None,
        }
    }

    #[test]
    fn source_ranges_go_to_the_external_scope_only() {
        let f = frontend(
            FrontendType::LoadBalancer,
            "203.0.113.1",
            vec![backend("10.0.0.1", "a")],
        );
        let m = model_of(&[f], 251);
        let ext = m.services.iter().find(|s| s.scope == Scope::External);
        let int = m.services.iter().find(|s| s.scope == Scope::Internal);
        assert_eq!(
            ext.unwrap().source_ranges,
            [model::parse_prefix("198.51.100.0/24").unwrap()]
        );
        assert!(int.unwrap().source_ranges.is_empty());
        // The forwarding mode applies to traffic from outside only.
        assert_eq!(ext.unwrap().mode, Mode::Dsr);
        assert_eq!(int.unwrap().mode, Mode::Snat);
    }

    #[test]
    fn local_endpoints_are_this_nodes_backends_of_external_frontends() {
        let mut np = frontend(
            FrontendType::NodePort,
            "192.0.2.1",
            vec![backend("10.0.0.1", "a"), backend("10.0.0.2", "b")],
        );
        // externalTrafficPolicy Local: the external set decides.
        np.external_backends = Some(vec![backend("10.0.0.3", "a")]);
        let cip = frontend(
            FrontendType::ClusterIP,
            "10.96.0.1",
            vec![backend("10.0.0.4", "a")],
        );
        let local = local_endpoints(&[np, cip], "a");
        assert_eq!(local, BTreeSet::from(["10.0.0.3".parse().unwrap()]));
    }
}
