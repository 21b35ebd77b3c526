//! Model → the datapath's tables: service entries, backend entries and each service's selection
//! table (Maglev, or the weighted slot list for random). Pure: no kernel, testable, and what the
//! offline commands print.
use crate::model::{Algorithm, BackendState, Mode, Model, Scope, Service};
use abi::lb::{self as abi_lb, Addr, ServiceKey};
use anyhow::{Context, Result, bail};
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

/// One service as the datapath will hold it (ids are assigned by the reconciler).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledService {
    pub name: String,
    pub key: ServiceKey,
    pub algorithm: u8,
    pub mode: u8,
    pub ct_timeout_s: u32,
    /// Service flags (`abi::sock::SVC_FLAG_AFFINITY`).
    pub flags: u16,
    pub affinity_timeout_s: Option<u32>,
    /// Every configured backend, in config order, with its datapath state.
    pub backends: Vec<(SocketAddr, u8)>,
    /// For each slot, an index into `backends`. Empty when no backend may take new flows.
    pub table: Vec<u32>,
}

pub fn addr_bytes(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => abi_lb::v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn bytes_addr(a: &Addr) -> IpAddr {
    if abi_lb::is_v4_mapped(a) {
        IpAddr::from([a[12], a[13], a[14], a[15]])
    } else {
        IpAddr::from(*a)
    }
}

pub fn service_key(s: &Service) -> ServiceKey {
    ServiceKey {
        addr: addr_bytes(s.frontend.addr),
        port: s.frontend.port.to_be(),
        proto: s.frontend.protocol.number(),
        scope: match s.scope {
            Scope::External => abi_lb::SCOPE_EXTERNAL,
            Scope::Internal => abi::sock::SCOPE_INTERNAL,
        },
    }
}

/// The port-0 marker entry that tells the datapath an address is a VIP (for fragments) and may
/// have frontends (the SNAT port search checks its ports only then). Written before the first
/// service of its address, removed after the last one (crate::reconcile).
pub fn vip_marker(addr: IpAddr) -> ServiceKey {
    ServiceKey {
        addr: addr_bytes(addr),
        port: 0,
        proto: 0,
        scope: abi_lb::SCOPE_EXTERNAL,
    }
}

pub fn compile(model: &Model) -> Result<BTreeMap<ServiceKey, CompiledService>> {
    let mut out = BTreeMap::new();
    for s in &model.services {
        let c =
            compile_service(s, model.maglev_seed).with_context(|| format!("service {}", s.name))?;
        if out.insert(c.key, c).is_some() {
            bail!(
                "service {}: frontend {:?} is defined twice",
                s.name,
                s.frontend
            );
        }
    }
    Ok(out)
}

pub fn compile_service(s: &Service, seed: u32) -> Result<CompiledService> {
    let backends: Vec<(SocketAddr, u8)> = s
        .backends
        .iter()
        .map(|b| {
            let state = match b.state {
                BackendState::Active => abi_lb::BACKEND_ACTIVE,
                BackendState::Quarantined => abi_lb::BACKEND_QUARANTINED,
                BackendState::Terminating => abi_lb::BACKEND_TERMINATING,
            };
            (b.addr, state)
        })
        .collect();
    // Active backends with a weight take new flows; terminating ones only when no active one is
    // left (the terminating fallback); quarantined ones never.
    let usable = |state| s.backends.iter().any(|b| b.state == state && b.weight > 0);
    let take = if usable(BackendState::Active) {
        BackendState::Active
    } else {
        BackendState::Terminating
    };
    let eligible: Vec<(usize, String, u32)> = s
        .backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.state == take && b.weight > 0)
        .map(|(i, b)| (i, b.addr.to_string(), b.weight))
        .collect();
    let table = match s.algorithm {
        Algorithm::Maglev => maglev_table(&eligible, s.table_size, seed)?,
        Algorithm::Random => weighted_slots(&eligible),
    };
    Ok(CompiledService {
        name: s.name.clone(),
        key: service_key(s),
        algorithm: match s.algorithm {
            Algorithm::Maglev => abi_lb::ALG_MAGLEV,
            Algorithm::Random => abi_lb::ALG_RANDOM,
        },
        mode: match s.mode {
            Mode::Snat => abi_lb::MODE_SNAT,
            Mode::Dsr => abi_lb::MODE_DSR,
        },
        ct_timeout_s: s.conntrack_timeout_s,
        flags: if s.affinity_timeout_s.is_some() {
            abi::sock::SVC_FLAG_AFFINITY
        } else {
            0
        },
        affinity_timeout_s: s.affinity_timeout_s,
        backends,
        table,
    })
}

fn maglev_table(eligible: &[(usize, String, u32)], size: u32, seed: u32) -> Result<Vec<u32>> {
    if eligible.is_empty() {
        return Ok(Vec::new());
    }
    let input: Vec<crate::maglev::Backend> = eligible
        .iter()
        .map(|(_, key, w)| crate::maglev::Backend { key, weight: *w })
        .collect();
    let slots = crate::maglev::build(&input, size, seed)?;
    Ok(slots
        .into_iter()
        .map(|i| eligible[i as usize].0 as u32)
        .collect())
}

/// Random selection draws a slot uniformly; each backend holds weight/gcd slots.
fn weighted_slots(eligible: &[(usize, String, u32)]) -> Vec<u32> {
    let g = eligible.iter().fold(0, |g, (_, _, w)| gcd(g, *w)).max(1);
    let total: u64 = eligible.iter().map(|(_, _, w)| (*w / g) as u64).sum();
    // Keep the list within the largest table the datapath accepts, scaling weights down if needed.
    let scale = (total as f64 / abi_lb::MAX_TABLE_SIZE as f64).max(1.0);
    let mut out = Vec::new();
    for (i, _, w) in eligible {
        let n = (((*w / g) as f64 / scale).round() as u64).max(1);
        out.extend(std::iter::repeat_n(*i as u32, n as usize));
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, Frontend, Protocol};

    fn svc(alg: Algorithm, weights: &[u32]) -> Service {
        Service {
            name: "web".into(),
            frontend: Frontend {
                addr: "10.0.0.1".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
            },
            algorithm: alg,
            mode: Mode::Snat,
            table_size: 251,
            conntrack_timeout_s: 60,
            scope: Scope::External,
            affinity_timeout_s: None,
            source_ranges: Vec::new(),
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, w)| Backend {
                    addr: format!("10.0.1.{}:8080", i + 1).parse().unwrap(),
                    weight: *w,
                    state: BackendState::Active,
                })
                .collect(),
        }
    }

    #[test]
    fn random_slots_follow_weights() {
        let c = compile_service(&svc(Algorithm::Random, &[2, 4, 6]), 0).unwrap();
        let count = |i| c.table.iter().filter(|&&x| x == i).count();
        assert_eq!((count(0), count(1), count(2)), (1, 2, 3));
    }

    #[test]
    fn quarantined_backends_leave_the_table_but_stay_listed() {
        let mut s = svc(Algorithm::Maglev, &[1, 1, 1]);
        s.backends[1].state = BackendState::Quarantined;
        let c = compile_service(&s, 0).unwrap();
        assert_eq!(c.backends.len(), 3);
        assert_eq!(c.backends[1].1, abi_lb::BACKEND_QUARANTINED);
        assert_eq!(c.table.len(), 251);
        assert!(c.table.iter().all(|&i| i != 1));
        assert!(c.table.contains(&0) && c.table.contains(&2));
    }

    #[test]
    fn no_eligible_backend_gives_an_empty_table() {
        let c = compile_service(&svc(Algorithm::Maglev, &[]), 0).unwrap();
        assert!(c.table.is_empty());
    }

    #[test]
    fn keys_use_network_order_and_mapped_v4() {
        let k = service_key(&svc(Algorithm::Maglev, &[1]));
        assert_eq!(k.port, 80u16.to_be());
        assert_eq!(bytes_addr(&k.addr), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
