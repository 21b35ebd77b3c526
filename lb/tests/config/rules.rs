//! One test per validation rule of lb.yaml, each checking that the error names the field path and the
//! line; and that all problems of a file are reported at once.

use crate::common::*;
use lb::config::*;

#[test]
fn unknown_fields_everywhere() {
    one("servics: []\nservices: []\n", 1, "servics", "unknown field");
    one(
        "snat:\n  ipv5: 1.2.3.4\nservices: []\n",
        2,
        "snat.ipv5",
        "unknown field",
    );
    one(
        "defaults:\n  algo: maglev\nservices: []\n",
        2,
        "defaults.algo",
        "unknown field",
    );
    one(
        &svc("    protocl: tcp\n", ""),
        5,
        "services[0].protocl",
        "expected one of: name, vip",
    );
    one(
        &svc(
            "",
            "    backends:\n      - address: 10.0.2.1\n        wieght: 2\n",
        ),
        7,
        "services[0].backends[0].wieght",
        "unknown",
    );
    one(
        &svc(
            "    health_check:\n      type: tcp\n      intervl: 1s\n",
            "",
        ),
        7,
        "services[0].health_check.intervl",
        "unknown",
    );
}

#[test]
fn required_fields() {
    one("snat: {}\n", 1, "services", "required");
    one(
        "services:\n  - vip: 10.0.0.1\n    port: 80\n",
        2,
        "services[0].name",
        "required",
    );
    one(
        "services:\n  - name: a\n    port: 80\n",
        2,
        "services[0].vip",
        "required",
    );
    one(
        "services:\n  - name: a\n    vip: 10.0.0.1\n    port:\n",
        4,
        "services[0].port",
        "required",
    );
    one(
        &svc("", "    backends:\n      - port: 80\n"),
        6,
        "services[0].backends[0].address",
        "required",
    );
    one(
        &svc("    health_check:\n      port: 80\n", ""),
        6,
        "services[0].health_check.type",
        "required",
    );
    assert!(issues("")[0].contains("services: required"));
}

#[test]
fn wrong_types() {
    one("services: {}\n", 1, "services", "expected a list");
    one(
        "maglev_seed: -1\nservices: []\n",
        1,
        "maglev_seed",
        "integer",
    );
    one(
        &svc("    backends: 10.0.2.1\n", ""),
        5,
        "services[0].backends",
        "expected a list",
    );
    one(
        "services:\n  - name: a\n    vip: 10.0.0.1\n    port: \"80\"\n",
        4,
        "services[0].port",
        "integer",
    );
    one(
        "services:\n  - name: a\n    vip: [10.0.0.1]\n    port: 80\n",
        3,
        "services[0].vip",
        "single value",
    );
    one(
        &svc("    protocol: sctp\n", ""),
        5,
        "services[0].protocol",
        "tcp, udp",
    );
    one(
        &svc("    algorithm: roundrobin\n", ""),
        5,
        "services[0].algorithm",
        "maglev, random",
    );
    one(
        &svc("    mode: nat\n", ""),
        5,
        "services[0].mode",
        "snat, dsr",
    );
    one(
        &svc("    conntrack_timeout: 5\n", ""),
        5,
        "services[0].conntrack_timeout",
        "duration",
    );
    one(
        &svc("    conntrack_timeout: 500ms\n", ""),
        5,
        "services[0].conntrack_timeout",
        "at least 1s",
    );
}

#[test]
fn port_range() {
    one(
        "services:\n  - name: a\n    vip: 10.0.0.1\n    port: 0\n",
        4,
        "services[0].port",
        "must be 1..=65535, got 0",
    );
    one(
        "services:\n  - name: a\n    vip: 10.0.0.1\n    port: 65536\n",
        4,
        "services[0].port",
        "1..=65535",
    );
    one(
        &svc(
            "",
            "    backends:\n      - address: 10.0.2.1\n        port: 0\n",
        ),
        7,
        "services[0].backends[0].port",
        "1..=65535",
    );
    one(
        &svc(
            "    health_check:\n      type: tcp\n      port: 70000\n",
            "",
        ),
        7,
        "services[0].health_check.port",
        "1..=65535",
    );
}

#[test]
fn weight_range() {
    one(
        &svc(
            "",
            "    backends:\n      - address: 10.0.2.1\n        weight: 65536\n",
        ),
        7,
        "services[0].backends[0].weight",
        "1..=65535",
    );
}

#[test]
fn table_size_prime_in_range() {
    one(
        &svc("    table_size: 250\n", ""),
        5,
        "services[0].table_size",
        "prime in 251..=131071, got 250",
    );
    one(
        &svc("    table_size: 1000\n", ""),
        5,
        "services[0].table_size",
        "prime",
    );
    one(
        &svc("    table_size: 131101\n", ""),
        5,
        "services[0].table_size",
        "prime",
    );
    one(
        "defaults:\n  table_size: 16383\nservices: []\n",
        2,
        "defaults.table_size",
        "prime",
    );
    assert_eq!(
        parse(&svc("    table_size: 131071\n", ""))
            .unwrap()
            .services[0]
            .table_size,
        131071
    );
}

#[test]
fn service_name_rules() {
    one(
        "services:\n  - name: Web_1\n    vip: 10.0.0.1\n    port: 80\n",
        2,
        "services[0].name",
        "[a-z0-9-]{1,63}",
    );
    let long = "a".repeat(64);
    one(
        &format!("services:\n  - name: {long}\n    vip: 10.0.0.1\n    port: 80\n"),
        2,
        "services[0].name",
        "[a-z0-9-]",
    );
}

#[test]
fn unique_service_names() {
    let text = "services:\n  - name: a\n    vip: 10.0.0.1\n    port: 80\n  - name: a\n    vip: 10.0.0.2\n    port: 80\n";
    one(
        text,
        5,
        "services[1].name",
        "duplicate service name `a` (also services[0], line 2)",
    );
}

#[test]
fn unique_frontends() {
    let text = "services:\n  - name: a\n    vip: 10.0.0.1\n    port: 80\n  - name: b\n    vip: 10.0.0.1\n    port: 80\n";
    one(
        text,
        5,
        "services[1]",
        "same vip, port and protocol (10.0.0.1:80/tcp) as services[0]",
    );
    // Same VIP and port with another protocol is a different frontend.
    parse(&format!("{text}    protocol: udp\n")).unwrap();
}

#[test]
fn duplicate_backends() {
    let b = "    backends:\n      - address: 10.0.2.1\n      - address: 10.0.2.2\n      - address: 10.0.2.1\n        port: 80\n";
    one(
        &svc("", b),
        8,
        "services[0].backends[2]",
        "duplicate backend 10.0.2.1 port 80 (also backends[0], line 6)",
    );
    // Same address on another port is a different backend.
    parse(&svc(
        "",
        "    backends:\n      - address: 10.0.2.1\n      - address: 10.0.2.1\n        port: 81\n",
    ))
    .unwrap();
}

#[test]
fn address_families() {
    let b = "    backends:\n      - address: fd00::1\n";
    one(
        &svc("", b),
        6,
        "services[0].backends[0].address",
        "IPv6 backend for IPv4 VIP 10.0.0.1 in snat mode",
    );
    parse(&svc("    mode: dsr\n", b)).unwrap();
    one(
        "snat:\n  ipv4: fd00::1\nservices: []\n",
        2,
        "snat.ipv4",
        "IPv4 address",
    );
    one(
        "snat:\n  ipv6: 10.0.0.1\nservices: []\n",
        2,
        "snat.ipv6",
        "IPv6 address",
    );
    one(
        "services:\n  - name: a\n    vip: 0.0.0.0\n    port: 80\n",
        3,
        "services[0].vip",
        "unicast",
    );
    one(
        &svc("", "    backends:\n      - address: 224.0.0.1\n"),
        6,
        "services[0].backends[0].address",
        "unicast",
    );
    one(
        &svc("", "    backends:\n      - address: 10.0.2\n"),
        6,
        "services[0].backends[0].address",
        "IPv4 or IPv6",
    );
}

#[test]
fn dsr_backend_port_must_match() {
    let b = "    backends:\n      - address: 10.0.2.1\n        port: 8080\n";
    one(
        &svc("    mode: dsr\n", b),
        8,
        "services[0].backends[0].port",
        "service port 80, got 8080",
    );
}

#[test]
fn snat_port_range() {
    one(
        "snat:\n  ports: 61000-40000\nservices: []\n",
        2,
        "snat.ports",
        "min must be <= max",
    );
    one(
        "snat:\n  ports: 0-100\nservices: []\n",
        2,
        "snat.ports",
        "MIN-MAX",
    );
    one(
        "snat:\n  ports: a-b\nservices: []\n",
        2,
        "snat.ports",
        "MIN-MAX",
    );
    assert_eq!(
        parse("snat:\n  ports: 5000\nservices: []\n")
            .unwrap()
            .snat
            .ports,
        Some(PortRange {
            min: 5000,
            max: 5000
        })
    );
}

#[test]
fn health_check_rules() {
    let hc = |body: &str| svc(&format!("    health_check:\n{body}"), "");
    one(
        &hc("      type: tcp\n      interval: 1s\n      timeout: 1s\n"),
        8,
        "services[0].health_check.timeout",
        "less than the interval (1s), got 1s",
    );
    one(
        &hc("      type: tcp\n      timeout: 10s\n"),
        7,
        "services[0].health_check.timeout",
        "less than the interval (5s)",
    );
    one(
        &hc("      type: tcp\n      interval: 0s\n"),
        7,
        "services[0].health_check.interval",
        "at least 10ms",
    );
    one(
        &hc("      type: tcp\n      interval: 9ms\n"),
        7,
        "services[0].health_check.interval",
        "at least 10ms",
    );
    one(
        &hc("      type: tcp\n      interval: 1s\n      timeout: 0s\n"),
        8,
        "services[0].health_check.timeout",
        "greater than 0",
    );
    one(
        &hc("      type: tcp\n      healthy_threshold: 0\n"),
        7,
        "services[0].health_check.healthy_threshold",
        "1..=",
    );
    one(
        &hc("      type: tcp\n      unhealthy_threshold: 0\n"),
        7,
        "services[0].health_check.unhealthy_threshold",
        "1..=",
    );
    one(
        &hc("      type: http\n      path: healthz\n"),
        7,
        "services[0].health_check.path",
        "must start with `/`",
    );
    one(
        &hc("      type: http\n      path: \"/a b\"\n"),
        7,
        "services[0].health_check.path",
        "visible ASCII",
    );
    one(
        &hc("      type: tcp\n      path: /x\n"),
        7,
        "services[0].health_check.path",
        "only allowed with type: http",
    );
    one(
        &hc("      type: tcp\n      expect_status: 200\n"),
        7,
        "services[0].health_check.expect_status",
        "only allowed with type: http",
    );
    one(
        &hc("      type: http\n      expect_status: 99\n"),
        7,
        "services[0].health_check.expect_status",
        "100..=599",
    );
    one(
        &hc("      type: grpc\n"),
        6,
        "services[0].health_check.type",
        "tcp, http",
    );
    one(
        &hc("      type: tcp\n      interval: 2x\n"),
        7,
        "services[0].health_check.interval",
        "duration",
    );
}

#[test]
fn all_errors_reported_at_once() {
    let text = "\
maglev_seed: x
snat:
  ports: 9-1
services:
  - name: BAD
    vip: 10.0.0.1
    port: 0
    table_size: 252
    backends:
      - address: fd00::1
        weight: 0
  - name: ok
    vip: 10.0.0.2
    port: 80
    colour: blue
";
    let got = issues(text);
    let want = [
        "1: maglev_seed:",
        "3: snat.ports:",
        "5: services[0].name:",
        "7: services[0].port:",
        "8: services[0].table_size:",
        "11: services[0].backends[0].weight:",
        "15: services[1].colour:",
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want) {
        assert!(g.starts_with(w), "{g} should start with {w}; all: {got:#?}");
    }
}

#[test]
fn conntrack_section_rules() {
    one(
        "conntrack:\n  timeouts:\n    tcp_established: 500ms\nservices: []\n",
        3,
        "conntrack.timeouts.tcp_established",
        "whole seconds, at least 1s",
    );
    one(
        "conntrack:\n  timeouts:\n    tcp_establshed: 1h\nservices: []\n",
        3,
        "conntrack.timeouts.tcp_establshed",
        "unknown field",
    );
    one(
        "conntrack:\n  max_entries: 10\nservices: []\n",
        2,
        "conntrack.max_entries",
        "1024..=16777216",
    );
    one(
        "snat:\n  max_entries: 0\nservices: []\n",
        2,
        "snat.max_entries",
        "1024..=16777216",
    );
    let c = parse(
        "conntrack:\n  max_entries: 4096\n  timeouts:\n    tcp_established: 2s\n    udp: 5s\nservices: []\n",
    )
    .unwrap();
    assert_eq!(c.conntrack.max_entries, 4096);
    let t = c.conntrack.timeouts.to_abi();
    assert_eq!((t.tcp_established_s, t.udp_s), (2, 5));
    assert_eq!(t.tcp_syn_s, abi::ct::DEFAULT_TIMEOUTS.tcp_syn_s);
}

#[test]
fn automatic_snat_range_avoids_the_ephemeral_range() {
    let r = |min, max| PortRange { min, max };
    // Linux's default ip_local_port_range.
    assert_eq!(PortRange::outside(&[r(32768, 60999)]), Some(r(1024, 32767)));
    assert_eq!(PortRange::outside(&[r(1024, 40000)]), Some(r(40001, 65535)));
    assert_eq!(PortRange::outside(&[r(1024, 65535)]), None);
    assert_eq!(PortRange::outside(&[r(2000, 65000)]), None);
    // A node also keeps the NodePort range (kube-apiserver's default) out, in any order.
    let node_ports = r(30000, 32767);
    assert_eq!(
        PortRange::outside(&[r(32768, 60999), node_ports]),
        Some(r(1024, 29999))
    );
    assert_eq!(
        PortRange::outside(&[node_ports, r(1024, 20000), r(32768, 60999)]),
        Some(r(20001, 29999))
    );
    assert_eq!(
        PortRange::outside(&[r(5000, 64000), r(1500, 6000)]),
        Some(r(64001, 65535))
    );
    assert_eq!(PortRange::outside(&[]), Some(r(1024, 65535)));
    assert_eq!(r(32768, 60999).overlap(&r(1024, 32767)), None);
    assert_eq!(
        r(30000, 40000).overlap(&r(32768, 60999)),
        Some(r(32768, 40000))
    );
}

#[test]
fn map_limits_are_in_range_and_the_file_fits_them() {
    one(
        "max_services: 0\nservices: []\n",
        1,
        "max_services",
        "1..=1048575",
    );
    one(
        "max_backends: 16777216\nservices: []\n",
        1,
        "max_backends",
        "1..=16777215",
    );
    one(
        "max_services: x\nservices: []\n",
        1,
        "max_services",
        "integer",
    );
    let two = "services:\n  - {name: a, vip: 10.0.0.1, port: 80, backends: [{address: 10.0.2.1}, {address: 10.0.2.2}]}\n  - {name: b, vip: 10.0.0.1, port: 81, backends: [{address: 10.0.2.1}]}\n";
    one(
        &format!("max_services: 1\n{two}"),
        1,
        "max_services",
        "the file has 2 services, more than max_services (1)",
    );
    one(
        &format!("max_backends: 2\n{two}"),
        1,
        "max_backends",
        "3 backends, more than max_backends (2)",
    );
    let c = parse(&format!("max_services: 2\nmax_backends: 3\n{two}")).unwrap();
    assert_eq!((c.max_services, c.max_backends), (2, 3));
    let d = parse("services: []\n").unwrap();
    assert_eq!(
        (d.max_services, d.max_backends),
        (
            lb::config::limits::DEFAULT_MAX_SERVICES,
            lb::config::limits::DEFAULT_MAX_BACKENDS
        )
    );
}
