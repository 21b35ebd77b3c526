//! The top level's `max_services` and `max_backends`: how many services and backends the
//! datapath's maps hold (their sizes, read at start; see docs/config.md). The file's own services
//! and backends must fit, checked with the rest of the file.

use crate::config::Service;
use crate::config::fields::{Ctx, Fields, int};

/// Accepted `max_services` (service ids are `1..=max_services`).
pub const MAX_SERVICES_RANGE: std::ops::RangeInclusive<u32> = 1..=1_048_575;
/// Accepted `max_backends` (backend ids are `1..=max_backends`).
pub const MAX_BACKENDS_RANGE: std::ops::RangeInclusive<u32> = 1..=16_777_215;
/// Default `max_services`: the service map's compiled size holds a service and its VIP's marker
/// (one per address) for each, so half of it, less id 0.
pub const DEFAULT_MAX_SERVICES: u32 = abi::lb::MAX_SERVICES / 2 - 1;
/// Default `max_backends`: the backend map's compiled size, less id 0.
pub const DEFAULT_MAX_BACKENDS: u32 = abi::lb::MAX_BACKENDS - 1;

/// One limit read from the file: its value and the line it was on (the file's first line when
/// absent: the default).
pub(crate) struct Limit {
    pub(crate) value: u32,
    line: usize,
}

/// Reads `key` (absent: `default`), in `range`.
pub(crate) fn read(
    ctx: &mut Ctx,
    f: &mut Fields,
    key: &str,
    range: std::ops::RangeInclusive<u32>,
    default: u32,
) -> Limit {
    match f.take(key) {
        Some(n) => Limit {
            value: int(
                ctx,
                n,
                key,
                u64::from(*range.start()),
                u64::from(*range.end()),
            )
            .map_or(default, |a| a.v as u32),
            line: n.line,
        },
        None => Limit {
            value: default,
            line: f.line,
        },
    }
}

/// The file's services and their backends (one id each, per service) must fit the limits.
pub(crate) fn check(
    ctx: &mut Ctx,
    services: &[Service],
    max_services: &Limit,
    max_backends: &Limit,
) {
    let n = services.len();
    if n > max_services.value as usize {
        ctx.err(
            max_services.line,
            "max_services",
            format!(
                "the file has {n} services, more than max_services ({})",
                max_services.value
            ),
        );
    }
    let b: usize = services.iter().map(|s| s.backends.len()).sum();
    if b > max_backends.value as usize {
        ctx.err(
            max_backends.line,
            "max_backends",
            format!(
                "the file's services have {b} backends, more than max_backends ({})",
                max_backends.value
            ),
        );
    }
}
