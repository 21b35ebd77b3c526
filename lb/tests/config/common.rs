//! Helpers shared by the config tests.
#![allow(dead_code)]

use std::net::IpAddr;

use lb::config::*;

pub const FULL: &str = "\
snat:
  ipv4: 10.0.1.1
  ipv6: fd00:1::1
  ports: 40000-50000
maglev_seed: 42
defaults:
  algorithm: random
  mode: dsr
  table_size: 1021
  conntrack_timeout: 2m
services:
  - name: web
    vip: 10.0.0.100
    port: 80
    protocol: tcp
    algorithm: maglev
    mode: snat
    table_size: 251
    conntrack_timeout: 30s
    health_check:
      type: http
      port: 8080
      path: /healthz
      expect_status: 204
      interval: 2s
      timeout: 500ms
      healthy_threshold: 2
      unhealthy_threshold: 3
    backends:
      - address: 10.0.2.10
        port: 8080
        weight: 3
      - address: 10.0.2.11
  - name: dns6
    vip: fd00::53
    port: 53
    protocol: udp
    health_check:
      type: tcp
    backends:
      - address: 10.0.3.1
      - address: fd00:3::1
  - name: empty
    vip: 10.0.0.101
    port: 443
";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The issues of an invalid file, as `line: path: message`.
pub fn issues(text: &str) -> Vec<String> {
    match parse_named("lb.yaml", text) {
        Ok(c) => panic!("expected errors, parsed {c:?}"),
        Err(e) => e.issues().iter().map(|i| i.to_string()).collect(),
    }
}

/// Exactly one issue, on `line`, for `path`, whose message contains `needle`.
#[track_caller]
pub fn one(text: &str, line: usize, path: &str, needle: &str) {
    let got = issues(text);
    assert_eq!(got.len(), 1, "{got:#?}");
    let want = format!("{line}: {path}: ");
    assert!(
        got[0].starts_with(&want) && got[0].contains(needle),
        "want `{want}…{needle}…`, got {got:#?}"
    );
}

/// A one-service file with `extra` lines appended to the service and `backends` as its backend list.
pub fn svc(extra: &str, backends: &str) -> String {
    // lines: 1 services:, 2 - name, 3 vip, 4 port, then `extra`, then backends.
    format!("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n{extra}{backends}")
}
