//! Parsing, defaults, error format, files and serialisation of lb.yaml.

use std::time::Duration;

use crate::common::*;
use lb::config::*;

#[test]
fn full_example_parses() {
    let c = parse(FULL).unwrap();
    assert_eq!(c.maglev_seed, 42);
    assert_eq!(c.snat.ipv4, Some("10.0.1.1".parse().unwrap()));
    assert_eq!(c.snat.ipv6, Some("fd00:1::1".parse().unwrap()));
    assert_eq!(
        c.snat.ports,
        Some(PortRange {
            min: 40000,
            max: 50000
        })
    );
    assert_eq!(c.services.len(), 3);
    let web = &c.services[0];
    assert_eq!(
        *web,
        Service {
            name: "web".into(),
            vip: ip("10.0.0.100"),
            port: 80,
            protocol: Protocol::Tcp,
            algorithm: Algorithm::Maglev,
            mode: Mode::Snat,
            table_size: 251,
            conntrack_timeout: Some(Duration::from_secs(30)),
            health_check: Some(HealthCheck {
                kind: HealthCheckKind::Http {
                    path: "/healthz".into(),
                    expect_status: Some(204)
                },
                port: Some(8080),
                interval: Duration::from_secs(2),
                timeout: Duration::from_millis(500),
                healthy_threshold: 2,
                unhealthy_threshold: 3,
            }),
            backends: vec![
                BackendCfg {
                    address: ip("10.0.2.10"),
                    port: 8080,
                    weight: 3
                },
                BackendCfg {
                    address: ip("10.0.2.11"),
                    port: 80,
                    weight: 1
                },
            ],
        }
    );
    // File-level defaults apply where the service is silent.
    let dns = &c.services[1];
    assert_eq!(
        (dns.algorithm, dns.mode, dns.table_size),
        (Algorithm::Random, Mode::Dsr, 1021)
    );
    assert_eq!(dns.conntrack_timeout, Some(Duration::from_secs(120)));
    assert_eq!(dns.protocol, Protocol::Udp);
    assert_eq!(dns.backends.len(), 2, "dsr may mix address families");
    assert!(
        c.services[2].backends.is_empty(),
        "a service without backends is allowed"
    );
}

#[test]
fn builtin_defaults() {
    let c = parse(&svc(
        "    health_check:\n      type: tcp\n",
        "    backends:\n      - address: 10.0.2.1\n",
    ))
    .unwrap();
    assert_eq!(
        c.snat,
        Snat {
            ipv4: None,
            ipv6: None,
            ports: None,
            max_entries: 262_144,
        }
    );
    assert_eq!(c.conntrack, Conntrack::default());
    assert_eq!(
        c.conntrack.timeouts.tcp_established,
        Duration::from_secs(86_400)
    );
    assert_eq!(c.maglev_seed, 0);
    let s = &c.services[0];
    assert_eq!(s.protocol, Protocol::Tcp);
    assert_eq!(s.algorithm, Algorithm::Maglev);
    assert_eq!(s.mode, Mode::Snat);
    assert_eq!(s.table_size, 16381);
    // No per-service timeout: the global per-protocol, per-state ones apply.
    assert_eq!(s.conntrack_timeout, None);
    assert_eq!(
        s.backends,
        vec![BackendCfg {
            address: ip("10.0.2.1"),
            port: 80,
            weight: 1
        }]
    );
    let hc = s.health_check.as_ref().unwrap();
    assert_eq!(hc.kind, HealthCheckKind::Tcp);
    assert_eq!((hc.port, hc.port_for(&s.backends[0])), (None, 80));
    assert_eq!(
        (hc.interval, hc.timeout),
        (Duration::from_secs(5), Duration::from_secs(1))
    );
    assert_eq!((hc.healthy_threshold, hc.unhealthy_threshold), (2, 3));
    // HTTP defaults, and a short interval shrinks the default timeout to half of it.
    let c = parse(&svc(
        "    health_check:\n      type: http\n      interval: 100ms\n",
        "",
    ))
    .unwrap();
    let hc = c.services[0].health_check.as_ref().unwrap();
    assert_eq!(
        hc.kind,
        HealthCheckKind::Http {
            path: "/".into(),
            expect_status: None
        }
    );
    assert_eq!(hc.timeout, Duration::from_millis(50));
    let c = parse(&svc(
        "    health_check:\n      type: http\n      interval: 11ms\n",
        "",
    ))
    .unwrap();
    assert_eq!(
        c.services[0].health_check.as_ref().unwrap().timeout,
        Duration::from_millis(5)
    );
}

#[test]
fn error_display_names_file_line_and_path() {
    let e = parse_named(
        "lb.yaml",
        &svc(
            "",
            "    backends:\n      - address: 10.0.2.1\n        weight: 0\n",
        ),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "lb.yaml:7: services[0].backends[0].weight: must be 1..=65535, got 0"
    );
}

#[test]
fn syntax_error_has_line() {
    let got = issues("services:\n  - name: web\n    vip: [10.0.0.1\n    port: 80\n");
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("YAML syntax error"), "{got:?}");
    let line: usize = got[0].split(':').next().unwrap().parse().unwrap();
    assert!((3..=5).contains(&line), "{got:?}");
    let got = issues("services: []\n  bad: indent\n");
    assert!(got[0].starts_with("2: "), "{got:?}");
}

#[test]
fn duplicate_yaml_key() {
    let got = issues("services: []\nmaglev_seed: 1\nmaglev_seed: 2\n");
    assert!(
        got[0].starts_with("3: ") && got[0].contains("duplicate key `maglev_seed`"),
        "{got:?}"
    );
}

#[test]
fn anchors_and_flow_style_work() {
    let text = "\
services:
  - name: a
    vip: 10.0.0.1
    port: 80
    health_check: &hc {type: tcp, interval: 1s, timeout: 200ms}
    backends: [{address: 10.0.2.1}, {address: 10.0.2.2, weight: 2}]
  - name: b
    vip: 10.0.0.1
    port: 81
    health_check: *hc
";
    let c = parse(text).unwrap();
    assert_eq!(c.services[0].health_check, c.services[1].health_check);
    assert_eq!(c.services[0].backends[1].weight, 2);
}

/// "Billion laughs": nine levels of nine aliases each would expand to 9^9 (387 million) scalars.
#[test]
fn alias_bomb_is_refused_quickly() {
    let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..=9 {
        let item = format!("*a{}", i - 1);
        text += &format!("a{i}: &a{i} [{}]\n", vec![item; 9].join(", "));
    }
    let start = std::time::Instant::now();
    let got = issues(&text);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    // Nodes a copy of a(n) adds: 10, 91, 820, 7381, 66430. The copies a1..a4 make 74,709 in all, so the
    // second alias on line 6 (a5) is the one that goes over 100,000.
    assert_eq!(
        got,
        [
            "6: YAML syntax error: aliases expand to more than 100000 nodes \
          (nested aliases such as a \"billion laughs\" document are refused)"
        ],
    );
}

/// The alias budget counts copies only: a long file written out in full is not refused.
#[test]
fn large_file_without_aliases_is_not_limited() {
    let mut text =
        String::from("services:\n  - name: big\n    vip: 10.0.0.1\n    port: 80\n    backends:\n");
    for i in 0..30_000u32 {
        text += &format!(
            "      - {{address: 10.{}.{}.{}}}\n",
            1 + i / 65536,
            (i / 256) % 256,
            i % 256
        );
    }
    let c = parse(&text).unwrap();
    assert_eq!(c.services[0].backends.len(), 30_000);
}

#[test]
fn load_reads_a_file_and_names_it() {
    let dir = std::env::temp_dir().join(format!("oxilium-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.yaml");
    std::fs::write(&path, FULL).unwrap();
    assert_eq!(load(&path).unwrap(), parse(FULL).unwrap());
    std::fs::write(&path, "services: 3\n").unwrap();
    let msg = load(&path).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("{}:1: services: expected a list", path.display())),
        "{msg}"
    );
    assert!(matches!(
        load(&dir.join("missing.yaml")),
        Err(ConfigError::Read { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn to_yaml_round_trips_the_example() {
    let c = parse(FULL).unwrap();
    let text = to_yaml(&c);
    assert_eq!(parse(&text).unwrap(), c, "{text}");
}

#[test]
fn serialises_to_json_readably() {
    let c = parse(FULL).unwrap();
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["services"][0]["conntrack_timeout"], "30s");
    assert_eq!(v["services"][0]["health_check"]["type"], "http");
    assert_eq!(v["snat"]["ports"], "40000-50000");
}
