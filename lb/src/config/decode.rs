//! From the marked YAML tree to a validated [`Config`]: shape checks (types, required and unknown
//! fields), value rules, cross-field rules and defaults, all in one pass that collects every problem.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::fields::{At, Ctx, Fields, choice, duration, int, parsed, scalar};
use crate::config::yaml::{Kind, Node};
use crate::config::*;
use crate::maglev::is_prime;

const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];
const ALGORITHMS: &[(&str, Algorithm)] =
    &[("maglev", Algorithm::Maglev), ("random", Algorithm::Random)];
const MODES: &[(&str, Mode)] = &[("snat", Mode::Snat), ("dsr", Mode::Dsr)];

fn table_size(ctx: &mut Ctx, node: &Node, path: &str) -> Option<u32> {
    let (lo, hi) = (*TABLE_SIZE_RANGE.start(), *TABLE_SIZE_RANGE.end());
    let v = int(ctx, node, path, 0, u64::from(u32::MAX))?.v as u32;
    if !TABLE_SIZE_RANGE.contains(&v) || !is_prime(v) {
        ctx.err(
            node.line,
            path,
            format!("must be a prime in {lo}..={hi}, got {v}"),
        );
        return None;
    }
    Some(v)
}

fn conntrack_timeout(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Duration> {
    crate::config::conntrack::timeout(ctx, node, path)
}

/// An address a packet can be sent to: not unspecified, multicast or broadcast.
fn unicast(ctx: &mut Ctx, node: &Node, path: &str) -> Option<At<IpAddr>> {
    let a = parsed::<IpAddr>(ctx, node, path, "an IPv4 or IPv6 address")?;
    let bad = a.v.is_unspecified()
        || a.v.is_multicast()
        || matches!(a.v, IpAddr::V4(v4) if v4.is_broadcast());
    if bad {
        ctx.err(
            a.line,
            path,
            format!("must be a unicast address, got {}", a.v),
        );
        return None;
    }
    Some(a)
}

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Per-file defaults for services.
struct Defaults {
    algorithm: Algorithm,
    mode: Mode,
    table_size: u32,
    conntrack_timeout: Option<Duration>,
}

pub(crate) fn config(root: Option<&Node>) -> Result<Config, Vec<Issue>> {
    let mut ctx = Ctx::default();
    let Some(root) = root else {
        return Err(vec![Issue {
            line: 1,
            path: "services".into(),
            message: "required field is missing (the file is empty)".into(),
        }]);
    };
    let Some(mut f) = Fields::of(&mut ctx, root, "") else {
        return Err(ctx.issues);
    };
    let snat = match f.take("snat") {
        Some(n) => snat(&mut ctx, n).unwrap_or_default(),
        None => Snat::default(),
    };
    let conntrack = match f.take("conntrack") {
        Some(n) => crate::config::conntrack::conntrack(&mut ctx, n),
        None => Conntrack::default(),
    };
    let maglev_seed = f
        .take("maglev_seed")
        .and_then(|n| int(&mut ctx, n, "maglev_seed", 0, u64::from(u32::MAX)))
        .map_or(0, |a| a.v as u32);
    use crate::config::limits::{self, MAX_BACKENDS_RANGE, MAX_SERVICES_RANGE};
    let max_services = limits::read(
        &mut ctx,
        &mut f,
        "max_services",
        MAX_SERVICES_RANGE,
        limits::DEFAULT_MAX_SERVICES,
    );
    let max_backends = limits::read(
        &mut ctx,
        &mut f,
        "max_backends",
        MAX_BACKENDS_RANGE,
        limits::DEFAULT_MAX_BACKENDS,
    );
    let defaults = defaults(&mut ctx, f.take("defaults"));
    let services = match f.require(&mut ctx, "services") {
        Some(n) => services(&mut ctx, n, &defaults),
        None => Vec::new(),
    };
    limits::check(&mut ctx, &services, &max_services, &max_backends);
    f.finish(
        &mut ctx,
        &[
            "snat",
            "conntrack",
            "maglev_seed",
            "max_services",
            "max_backends",
            "defaults",
            "services",
        ],
    );
    if ctx.issues.is_empty() {
        Ok(Config {
            snat,
            conntrack,
            maglev_seed,
            max_services: max_services.value,
            max_backends: max_backends.value,
            services,
        })
    } else {
        Err(ctx.issues)
    }
}

fn snat(ctx: &mut Ctx, node: &Node) -> Option<Snat> {
    let mut f = Fields::of(ctx, node, "snat")?;
    let mut s = Snat::default();
    if let Some(n) = f.take("ipv4") {
        s.ipv4 = parsed(ctx, n, "snat.ipv4", "an IPv4 address").map(|a| a.v);
    }
    if let Some(n) = f.take("ipv6") {
        s.ipv6 = parsed(ctx, n, "snat.ipv6", "an IPv6 address").map(|a| a.v);
    }
    if let Some(n) = f.take("ports")
        && let Some(r) = port_range(ctx, n, "snat.ports")
    {
        s.ports = Some(r);
    }
    if let Some(v) = f
        .take("max_entries")
        .and_then(|n| crate::config::conntrack::max_entries(ctx, n, "snat.max_entries"))
    {
        s.max_entries = v;
    }
    f.finish(ctx, &["ipv4", "ipv6", "ports", "max_entries"]);
    Some(s)
}

/// `min-max` or a single port.
fn port_range(ctx: &mut Ctx, node: &Node, path: &str) -> Option<PortRange> {
    let text = scalar(ctx, node, path)?;
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
    match (port(a), port(b)) {
        (Some(min), Some(max)) if min <= max => Some(PortRange { min, max }),
        (Some(_), Some(_)) => {
            ctx.err(node.line, path, format!("min must be <= max, got {text}"));
            None
        }
        _ => {
            let msg =
                format!("expected a port range MIN-MAX with ports in 1..=65535, got `{text}`");
            ctx.err(node.line, path, msg);
            None
        }
    }
}

fn defaults(ctx: &mut Ctx, node: Option<&Node>) -> Defaults {
    let mut d = Defaults {
        algorithm: DEFAULT_ALGORITHM,
        mode: DEFAULT_MODE,
        table_size: DEFAULT_TABLE_SIZE,
        conntrack_timeout: None,
    };
    let Some(mut f) = node.and_then(|n| Fields::of(ctx, n, "defaults")) else {
        return d;
    };
    if let Some(v) = f
        .take("algorithm")
        .and_then(|n| choice(ctx, n, &f.path("algorithm"), ALGORITHMS))
    {
        d.algorithm = v;
    }
    if let Some(v) = f
        .take("mode")
        .and_then(|n| choice(ctx, n, &f.path("mode"), MODES))
    {
        d.mode = v;
    }
    if let Some(v) = f
        .take("table_size")
        .and_then(|n| table_size(ctx, n, &f.path("table_size")))
    {
        d.table_size = v;
    }
    if let Some(v) = f
        .take("conntrack_timeout")
        .and_then(|n| conntrack_timeout(ctx, n, &f.path("conntrack_timeout")))
    {
        d.conntrack_timeout = Some(v);
    }
    f.finish(
        ctx,
        &["algorithm", "mode", "table_size", "conntrack_timeout"],
    );
    d
}

const SERVICE_FIELDS: &[&str] = &[
    "name",
    "vip",
    "port",
    "protocol",
    "algorithm",
    "mode",
    "table_size",
    "conntrack_timeout",
    "health_check",
    "backends",
];

fn services(ctx: &mut Ctx, node: &Node, d: &Defaults) -> Vec<Service> {
    let Kind::Seq(items) = &node.kind else {
        ctx.err(
            node.line,
            "services",
            format!("expected a list, got {}", node.describe()),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    // For the cross-service rules: first occurrence of each name and each (vip, port, protocol).
    let mut names: HashMap<String, (usize, usize)> = HashMap::new();
    let mut frontends: HashMap<(IpAddr, u16, Protocol), (usize, usize)> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("services[{i}]");
        let Some(mut f) = Fields::of(ctx, item, &path) else {
            continue;
        };
        let name = f
            .require(ctx, "name")
            .and_then(|n| service_name(ctx, n, &f.path("name")));
        let vip = f
            .require(ctx, "vip")
            .and_then(|n| unicast(ctx, n, &f.path("vip")));
        let port = f
            .require(ctx, "port")
            .and_then(|n| int(ctx, n, &f.path("port"), 1, 65535));
        let protocol = match f.take("protocol") {
            Some(n) => choice(ctx, n, &f.path("protocol"), PROTOCOLS),
            None => Some(DEFAULT_PROTOCOL),
        };
        let algorithm = match f.take("algorithm") {
            Some(n) => choice(ctx, n, &f.path("algorithm"), ALGORITHMS),
            None => Some(d.algorithm),
        };
        let mode = match f.take("mode") {
            Some(n) => choice(ctx, n, &f.path("mode"), MODES),
            None => Some(d.mode),
        };
        let table = match f.take("table_size") {
            Some(n) => table_size(ctx, n, &f.path("table_size")),
            None => Some(d.table_size),
        };
        let ct = match f.take("conntrack_timeout") {
            Some(n) => conntrack_timeout(ctx, n, &f.path("conntrack_timeout")).map(Some),
            None => Some(d.conntrack_timeout),
        };
        let hc = match f.take("health_check") {
            Some(n) => health_check(ctx, n, &f.path("health_check")).map(Some),
            None => Some(None),
        };
        let port16 = port.map(|p| p.v as u16);
        let backends = match f.take("backends") {
            Some(n) => backends(ctx, n, &f.path("backends"), vip.map(|a| a.v), port16, mode),
            None => Some(Vec::new()),
        };
        f.finish(ctx, SERVICE_FIELDS);

        if let Some(name) = &name {
            match names.get(&name.v) {
                Some(&(j, line)) => ctx.err(
                    name.line,
                    &format!("{path}.name"),
                    format!(
                        "duplicate service name `{}` (also services[{j}], line {line})",
                        name.v
                    ),
                ),
                None => {
                    names.insert(name.v.clone(), (i, name.line));
                }
            }
        }
        if let (Some(vip), Some(port), Some(proto)) = (vip, port16, protocol) {
            match frontends.get(&(vip.v, port, proto)) {
                Some(&(j, line)) => ctx.err(
                    item.line,
                    &path,
                    format!(
                        "same vip, port and protocol ({}:{port}/{}) as services[{j}] (line {line})",
                        vip.v,
                        PROTOCOLS.iter().find(|p| p.1 == proto).map_or("?", |p| p.0)
                    ),
                ),
                None => {
                    frontends.insert((vip.v, port, proto), (i, item.line));
                }
            }
        }
        if let (
            Some(name),
            Some(vip),
            Some(port),
            Some(protocol),
            Some(algorithm),
            Some(mode),
            Some(table_size),
            Some(conntrack_timeout),
            Some(health_check),
            Some(backends),
        ) = (
            name, vip, port16, protocol, algorithm, mode, table, ct, hc, backends,
        ) {
            out.push(Service {
                name: name.v,
                vip: vip.v,
                port,
                protocol,
                algorithm,
                mode,
                table_size,
                conntrack_timeout,
                health_check,
                backends,
            });
        }
    }
    out
}

fn service_name(ctx: &mut Ctx, node: &Node, path: &str) -> Option<At<String>> {
    let text = scalar(ctx, node, path)?;
    let ok = (1..=63).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        ctx.err(
            node.line,
            path,
            format!("must match [a-z0-9-]{{1,63}}, got `{text}`"),
        );
        return None;
    }
    Some(At {
        v: text.to_string(),
        line: node.line,
    })
}

fn backends(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    vip: Option<IpAddr>,
    service_port: Option<u16>,
    mode: Option<Mode>,
) -> Option<Vec<BackendCfg>> {
    let Kind::Seq(items) = &node.kind else {
        ctx.err(
            node.line,
            path,
            format!("expected a list, got {}", node.describe()),
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    let mut seen: HashMap<(IpAddr, u16), (usize, usize)> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let Some(mut f) = Fields::of(ctx, item, &path) else {
            ok = false;
            continue;
        };
        let address = f
            .require(ctx, "address")
            .and_then(|n| unicast(ctx, n, &f.path("address")));
        let port = match f.take("port") {
            Some(n) => int(ctx, n, &f.path("port"), 1, 65535).map(|a| {
                Some(At {
                    v: a.v as u16,
                    line: a.line,
                })
            }),
            None => Some(None),
        };
        let weight = match f.take("weight") {
            Some(n) => int(ctx, n, &f.path("weight"), 1, 65535).map(|a| a.v as u16),
            None => Some(1),
        };
        f.finish(ctx, &["address", "port", "weight"]);
        let (Some(address), Some(port), Some(weight), Some(service_port)) =
            (address, port, weight, service_port)
        else {
            ok = false;
            continue;
        };
        let port_v = port.map_or(service_port, |p| p.v);
        if let (Some(Mode::Dsr), Some(p)) = (mode, port)
            && p.v != service_port
        {
            let msg = format!(
                "in dsr mode the backend gets the packet still addressed to the VIP, so the port \
                     must be the service port {service_port}, got {}",
                p.v
            );
            ctx.err(p.line, &format!("{path}.port"), msg);
            ok = false;
        }
        if let (Some(Mode::Snat), Some(vip)) = (mode, vip)
            && vip.is_ipv4() != address.v.is_ipv4()
        {
            let msg = format!(
                "{} backend for {} VIP {vip} in snat mode (only dsr mode may mix address families)",
                family(&address.v),
                family(&vip)
            );
            ctx.err(address.line, &format!("{path}.address"), msg);
            ok = false;
        }
        match seen.get(&(address.v, port_v)) {
            Some(&(j, line)) => {
                let msg = format!(
                    "duplicate backend {} port {port_v} (also backends[{j}], line {line})",
                    address.v
                );
                ctx.err(item.line, &path, msg);
                ok = false;
            }
            None => {
                seen.insert((address.v, port_v), (i, item.line));
            }
        }
        out.push(BackendCfg {
            address: address.v,
            port: port_v,
            weight,
        });
    }
    ok.then_some(out)
}

const HC_FIELDS: &[&str] = &[
    "type",
    "port",
    "path",
    "expect_status",
    "interval",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
];

fn health_check(ctx: &mut Ctx, node: &Node, path: &str) -> Option<HealthCheck> {
    let mut f = Fields::of(ctx, node, path)?;
    let before = ctx.issues.len();
    let http = f
        .require(ctx, "type")
        .and_then(|n| choice(ctx, n, &f.path("type"), &[("tcp", false), ("http", true)]));
    let port = f
        .take("port")
        .and_then(|n| int(ctx, n, &f.path("port"), 1, 65535))
        .map(|a| a.v as u16);
    let hc_path = f.take("path");
    let expect = f.take("expect_status");
    let kind = match http {
        Some(true) => {
            let p = match hc_path {
                Some(n) => http_path(ctx, n, &f.path("path")),
                None => Some("/".to_string()),
            };
            let status = expect.and_then(|n| int(ctx, n, &f.path("expect_status"), 100, 599));
            p.map(|path| HealthCheckKind::Http {
                path,
                expect_status: status.map(|s| s.v as u16),
            })
        }
        Some(false) => {
            for (key, n) in [("path", hc_path), ("expect_status", expect)] {
                if let Some(n) = n {
                    ctx.err(n.line, &f.path(key), "only allowed with type: http");
                }
            }
            Some(HealthCheckKind::Tcp)
        }
        None => None,
    };
    let interval = match f.take("interval") {
        Some(n) => duration(ctx, n, &f.path("interval")),
        None => Some(At {
            v: DEFAULT_HC_INTERVAL,
            line: f.line,
        }),
    };
    let interval = interval.filter(|i| {
        let ok = i.v >= MIN_HC_INTERVAL;
        if !ok {
            ctx.err(i.line, &f.path("interval"), "must be at least 10ms");
        }
        ok
    });
    let timeout = match f.take("timeout") {
        Some(n) => duration(ctx, n, &f.path("timeout")),
        None => interval.map(|i| {
            let half = Duration::from_millis((i.v / 2).as_millis() as u64);
            At {
                v: DEFAULT_HC_TIMEOUT.min(half),
                line: f.line,
            }
        }),
    };
    if let (Some(t), Some(i)) = (timeout, interval) {
        if t.v.is_zero() {
            ctx.err(t.line, &f.path("timeout"), "must be greater than 0");
        } else if t.v >= i.v {
            let msg = format!(
                "must be less than the interval ({}), got {}",
                crate::config::duration::format(i.v),
                crate::config::duration::format(t.v)
            );
            ctx.err(t.line, &f.path("timeout"), msg);
        }
    }
    let mut threshold = |key: &str, default: u32| match f.take(key) {
        Some(n) => int(ctx, n, &f.path(key), 1, u64::from(u32::MAX)).map(|a| a.v as u32),
        None => Some(default),
    };
    let healthy = threshold("healthy_threshold", DEFAULT_HEALTHY_THRESHOLD);
    let unhealthy = threshold("unhealthy_threshold", DEFAULT_UNHEALTHY_THRESHOLD);
    f.finish(ctx, HC_FIELDS);
    if ctx.issues.len() != before {
        return None;
    }
    Some(HealthCheck {
        kind: kind?,
        port,
        interval: interval?.v,
        timeout: timeout?.v,
        healthy_threshold: healthy?,
        unhealthy_threshold: unhealthy?,
    })
}

/// An absolute request path: starts with `/`, visible ASCII only (it goes verbatim into the request line).
fn http_path(ctx: &mut Ctx, node: &Node, path: &str) -> Option<String> {
    let text = scalar(ctx, node, path)?;
    if !text.starts_with('/') {
        ctx.err(
            node.line,
            path,
            format!("must start with `/`, got `{text}`"),
        );
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        ctx.err(
            node.line,
            path,
            "must be visible ASCII without spaces (percent-encode the rest)",
        );
        return None;
    }
    Some(text.to_string())
}
