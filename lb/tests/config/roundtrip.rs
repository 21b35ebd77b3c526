//! Property: any valid Config written with `to_yaml` parses back to the same Config.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;
use std::time::Duration;

use lb::config::*;
use lb::maglev::is_prime;
use proptest::prelude::*;

fn addr(v6: bool, net: u8, i: u16) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, u16::from(net), 0, 0, 0, 0, 0, i + 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, net, (i >> 8) as u8, (i & 0xff) as u8 + 1))
    }
}

fn millis(lo: u64, hi: u64) -> impl Strategy<Value = Duration> {
    (lo..hi).prop_map(Duration::from_millis)
}

fn health_check() -> impl Strategy<Value = HealthCheck> {
    let kind = prop_oneof![
        Just(HealthCheckKind::Tcp),
        ("/[a-z0-9/_.-]{0,12}", proptest::option::of(100u16..600)).prop_map(
            |(path, expect_status)| HealthCheckKind::Http {
                path,
                expect_status
            }
        ),
    ];
    (
        kind,
        proptest::option::of(1u16..),
        millis(10, 100_000),
        1u32..10,
        1u32..10,
    )
        .prop_flat_map(|(kind, port, interval, healthy, unhealthy)| {
            millis(1, interval.as_millis() as u64).prop_map(move |timeout| HealthCheck {
                kind: kind.clone(),
                port,
                interval,
                timeout,
                healthy_threshold: healthy,
                unhealthy_threshold: unhealthy,
            })
        })
}

static PRIMES: LazyLock<Vec<u32>> =
    LazyLock::new(|| TABLE_SIZE_RANGE.filter(|n| is_prime(*n)).collect());

fn service(index: usize) -> impl Strategy<Value = Service> {
    (
        any::<bool>(),
        1u16..,
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
        prop_oneof![Just(Algorithm::Maglev), Just(Algorithm::Random)],
        prop_oneof![Just(Mode::Snat), Just(Mode::Dsr)],
        proptest::sample::select(PRIMES.as_slice()),
        proptest::option::of((1u64..100_000).prop_map(Duration::from_secs)),
        proptest::option::of(health_check()),
        proptest::collection::vec((any::<bool>(), 1u16.., 1u16..), 0..6),
    )
        .prop_map(
            move |(v6, port, protocol, algorithm, mode, table_size, ct, hc, raw)| {
                let backends = raw
                    .into_iter()
                    .enumerate()
                    .map(|(i, (b6, bport, weight))| BackendCfg {
                        // Families may mix only in dsr mode, where the port must be the service's.
                        address: addr(if mode == Mode::Dsr { b6 } else { v6 }, 2, i as u16),
                        port: if mode == Mode::Dsr { port } else { bport },
                        weight,
                    })
                    .collect();
                Service {
                    name: format!("svc-{index}"),
                    vip: addr(v6, 0, index as u16),
                    port,
                    protocol,
                    algorithm,
                    mode,
                    table_size,
                    conntrack_timeout: ct,
                    health_check: hc,
                    backends,
                }
            },
        )
}

fn config() -> impl Strategy<Value = Config> {
    let snat = (
        proptest::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
        proptest::option::of(any::<u128>().prop_map(Ipv6Addr::from)),
        proptest::option::of((1u16.., 1u16..)),
        MAP_ENTRIES_RANGE,
    )
        .prop_map(|(ipv4, ipv6, ports, max_entries)| Snat {
            ipv4,
            ipv6,
            ports: ports.map(|(a, b)| PortRange {
                min: a.min(b),
                max: a.max(b),
            }),
            max_entries,
        });
    let secs = || (1u64..=u64::from(u32::MAX)).prop_map(Duration::from_secs);
    let conntrack = (
        MAP_ENTRIES_RANGE,
        (secs(), secs(), secs(), secs(), secs(), secs()),
    )
        .prop_map(|(max_entries, t)| Conntrack {
            max_entries,
            timeouts: Timeouts {
                tcp_syn: t.0,
                tcp_established: t.1,
                tcp_fin: t.2,
                tcp_close: t.3,
                udp: t.4,
                udp_replied: t.5,
            },
        });
    (snat, conntrack, any::<u32>(), 0usize..5).prop_flat_map(|(snat, conntrack, seed, n)| {
        let services: Vec<_> = (0..n).map(service).collect();
        services.prop_map(move |services| Config {
            snat: snat.clone(),
            conntrack: conntrack.clone(),
            maglev_seed: seed,
            max_services: 64 + seed % 1000,
            max_backends: 256 + seed % 5000,
            services,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn to_yaml_then_parse_is_identity(c in config()) {
        let text = to_yaml(&c);
        let back = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back, c);
    }
}
