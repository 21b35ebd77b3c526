//! The edge LB's source: the config file (validated whole, then turned into the model) combined
//! with the backends' health.
use lb::config::Config;
use lb::model::{self, Backend, BackendState, Frontend, Model, Service};
use std::{collections::HashMap, net::SocketAddr};

/// Health-check identity of a backend: (service name, backend address).
pub type HealthKey = (String, SocketAddr);

/// The model for `cfg`, with backends whose health check fails quarantined.
pub fn model(cfg: &Config, health: &HashMap<HealthKey, bool>) -> Model {
    let services = cfg
        .services
        .iter()
        .map(|s| Service {
            name: s.name.clone(),
            frontend: Frontend {
                addr: s.vip,
                port: s.port,
                protocol: s.protocol,
            },
            algorithm: s.algorithm,
            mode: s.mode,
            table_size: s.table_size,
            conntrack_timeout_s: s
                .conntrack_timeout
                .map_or(0, |d| d.as_secs().clamp(1, u32::MAX as u64) as u32),
            scope: model::Scope::External,
            affinity_timeout_s: None,
            source_ranges: Vec::new(),
            backends: s
                .backends
                .iter()
                .map(|b| {
                    let addr = SocketAddr::new(b.address, b.port);
                    let healthy = health.get(&(s.name.clone(), addr)).copied().unwrap_or(true);
                    Backend {
                        addr,
                        weight: b.weight as u32,
                        state: if healthy {
                            BackendState::Active
                        } else {
                            BackendState::Quarantined
                        },
                    }
                })
                .collect(),
        })
        .collect();
    Model {
        maglev_seed: cfg.maglev_seed,
        services,
    }
}

/// Health-check targets of every backend whose service has a health check.
pub fn health_targets(cfg: &Config) -> Vec<(HealthKey, lb::health::Target)> {
    let mut out = Vec::new();
    for s in &cfg.services {
        if let Some(hc) = &s.health_check {
            for b in &s.backends {
                out.push((
                    (s.name.clone(), SocketAddr::new(b.address, b.port)),
                    lb::health::Target::for_backend(hc, b),
                ));
            }
        }
    }
    out
}
