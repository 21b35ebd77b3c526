//! How many services and backends the datapath's maps hold, and the settings that sized them: the
//! reconciler gives out ids below these limits and refuses, before it writes anything, an apply
//! that needs more (an error naming the setting, instead of a map update failing half-way).
use super::Realised;
use crate::compile::CompiledService;
use crate::config::limits::{DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICES};
use abi::lb::ServiceKey;
use anyhow::{Result, bail};
use std::collections::BTreeMap;

/// Capacity of the datapath's service and backend maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Service entries (frontends: address, port, protocol, scope); ids 1..=services.
    pub services: u32,
    /// Backend entries (one per backend of each service); ids 1..=backends.
    pub backends: u32,
    /// The setting that sizes `services`, named in errors (`--max-services`, `max_services`).
    pub services_setting: &'static str,
    /// The setting that sizes `backends`.
    pub backends_setting: &'static str,
}

impl Default for Limits {
    /// What the maps' compiled-in sizes hold (see `crate::config::limits`).
    fn default() -> Self {
        Limits {
            services: DEFAULT_MAX_SERVICES,
            backends: DEFAULT_MAX_BACKENDS,
            services_setting: "the compiled service map size",
            backends_setting: "the compiled backend map size",
        }
    }
}

/// New ids an apply of `desired` needs beyond what is realised or reserved: (services, backends).
pub(super) fn needed(
    realised: &BTreeMap<ServiceKey, Realised>,
    reserved: &BTreeMap<ServiceKey, u32>,
    desired: &BTreeMap<ServiceKey, CompiledService>,
) -> (usize, usize) {
    let (mut services, mut backends) = (0, 0);
    for (key, cs) in desired {
        let real = realised.get(key);
        if real.is_none() && !reserved.contains_key(key) {
            services += 1;
        }
        backends += cs
            .backends
            .iter()
            .filter(|(addr, _)| {
                real.is_none_or(|r| {
                    !r.backends.contains_key(addr) && !r.draining.contains_key(addr)
                })
            })
            .count();
    }
    (services, backends)
}

/// An error when `need` new ids of a kind exceed the `room` left under `limit`.
pub(super) fn check(what: &str, need: usize, room: usize, limit: u32, setting: &str) -> Result<()> {
    if need > room {
        bail!(
            "the change needs {need} more {what} but {setting} ({limit}) leaves room for {room}; \
             nothing was written"
        );
    }
    Ok(())
}
