//! A datapath event as a flow record: the JSON `oxilium monitor -o json` prints (one object per
//! line, field names close to Hubble's flow records: docs/observability.md has the mapping) and
//! the human line it prints by default.
use super::Names;
use abi::event::{self as ev, Event};
use abi::lb::{PROTO_TCP, PROTO_UDP};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// Converts the datapath's monotonic timestamps to wall-clock time.
pub struct Clock {
    /// Wall-clock ns minus monotonic ns, taken together.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let mono = clock(libc::CLOCK_MONOTONIC);
        let wall = clock(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: wall - mono,
        }
    }

    fn wall_ns(&self, mono_ns: u64) -> i128 {
        mono_ns as i128 + self.offset_ns
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the programs' `bpf_ktime_get_ns` (event timestamps); the
/// conntrack stamps (`bpf_ktime_get_coarse_ns`) are at most a timer tick behind it.
pub fn monotonic_ns() -> u64 {
    clock(libc::CLOCK_MONOTONIC) as u64
}

fn clock(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a valid timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// RFC 3339 UTC time with nanoseconds (as Hubble prints it).
pub fn rfc3339(ns: i128) -> String {
    let secs = ns.div_euclid(1_000_000_000) as i64;
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FlowRecord {
    pub flow: Flow,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Flow {
    pub time: String,
    /// DROPPED, TRANSLATED, TRACED, FORWARDED / AUDIT (policy).
    pub verdict: String,
    /// Drops: the reason in capitals (`NO_BACKEND`, `SOURCE_RANGE`, ...); policy denials:
    /// `POLICY_DENIED` (nothing allows the flow) or `POLICY_DENY` (a deny entry decided).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_reason_desc: Option<String>,
    /// Policy records: `INGRESS` or `EGRESS` (the endpoint's direction that was checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_direction: Option<String>,
    /// Policy records: the kind of entry that decided (abi::event::MATCH_*: 0 none, 1 L3-only,
    /// 2 L3-L4, 3 L4-only, 4 all, 5 localhost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_match_type: Option<u32>,
    #[serde(rename = "Type")]
    pub type_: String,
    pub event_type: EventType,
    #[serde(rename = "IP")]
    pub ip: Ip,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l4: Option<L4>,
    pub source: Endpoint,
    pub destination: Endpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    pub interface: Interface,
    /// The program that wrote the record and the counter (set and name) it counted under.
    pub program: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_set: Option<String>,
    pub bytes: u32,
    #[serde(rename = "Summary")]
    pub summary: String,
    /// The L7 proxy's request records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7>,
}

/// An HTTP request as the L7 proxy handled it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct L7 {
    /// REQUEST (the record is written once the answer's head is known).
    #[serde(rename = "type")]
    pub kind: String,
    pub latency_ns: u64,
    pub http: Http,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Http {
    pub code: u16,
    pub method: String,
    pub url: String,
    pub protocol: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EventType {
    /// drop, translation, policy, trace, l7.
    #[serde(rename = "type")]
    pub kind: String,
    pub sub_type: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Ip {
    pub source: String,
    pub destination: String,
    #[serde(rename = "ipVersion")]
    pub ip_version: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct L4 {
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Ports>,
    #[serde(rename = "UDP", skip_serializing_if = "Option::is_none")]
    pub udp: Option<Ports>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Ports {
    pub source_port: u16,
    pub destination_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<std::collections::BTreeMap<String, bool>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    pub ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Security identity (policy records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
    /// `namespace/name` of the pod at `ip`: this node's pods, and other nodes' pods the agent
    /// knows (its policy objects' Pods with addresses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The pod's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The namespace of a `namespace/name`.
pub fn namespace_of(key: &str) -> Option<String> {
    key.split_once('/').map(|(ns, _)| ns.to_string())
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Service {
    pub id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub frontend: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Backend {
    pub id: u32,
    pub address: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    pub index: u32,
    /// Empty (and left out) while the agent does not know the interface's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

fn addr(a: &abi::lb::Addr) -> IpAddr {
    lb::compile::bytes_addr(a)
}

fn reason_name(set: u8, r: u32) -> (&'static str, &'static str) {
    let name = match set {
        ev::SET_NODEPORT => abi::nodeport::reason::NAMES.get(r as usize),
        ev::SET_POD => abi::sock::pod::reason::NAMES.get(r as usize),
        _ => abi::lb::reason::NAMES.get(r as usize),
    };
    let set_name = match set {
        ev::SET_NODEPORT => "nodeport",
        ev::SET_POD => "pod",
        _ => "lb",
    };
    (name.copied().unwrap_or("unknown"), set_name)
}

fn tcp_flags(f: u8) -> std::collections::BTreeMap<String, bool> {
    [
        (0x01, "FIN"),
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
    ]
    .into_iter()
    .filter(|(b, _)| f & b != 0)
    .map(|(_, n)| (n.to_string(), true))
    .collect()
}

/// The record of a datapath event.
pub fn from_event(e: &Event, clock: &Clock, names: &Names) -> FlowRecord {
    let (src, dst) = (addr(&e.src), addr(&e.dst));
    let (sport, dport) = (u16::from_be(e.sport), u16::from_be(e.dport));
    let ports = Ports {
        source_port: sport,
        destination_port: dport,
        flags: (e.proto == PROTO_TCP && e.tcp_flags != 0).then(|| tcp_flags(e.tcp_flags)),
    };
    let l4 = match e.proto {
        PROTO_TCP => Some(L4 {
            tcp: Some(ports),
            udp: None,
        }),
        PROTO_UDP => Some(L4 {
            tcp: None,
            udp: Some(ports),
        }),
        _ => None,
    };
    let has_ports = l4.is_some();
    let (rname, set) = reason_name(e.reason_set, e.reason);
    let (kind, verdict, sub) = match e.kind {
        ev::KIND_DROP => ("drop", "DROPPED", e.reason),
        ev::KIND_TRANSLATE => ("translation", "TRANSLATED", 0),
        ev::KIND_POLICY => (
            "policy",
            match e.verdict {
                ev::VERDICT_DENY => "DROPPED",
                ev::VERDICT_AUDIT => "AUDIT",
                _ => "FORWARDED",
            },
            e.rule,
        ),
        ev::KIND_TRACE => ("trace", "TRACED", e.reason),
        _ => ("unknown", "VERDICT_UNKNOWN", 0),
    };
    let service = (e.service_id != 0).then(|| Service {
        id: e.service_id,
        name: names.services.get(&e.service_id).cloned(),
        frontend: SocketAddr::new(dst, dport).to_string(),
    });
    let backend = (e.kind == ev::KIND_TRANSLATE).then(|| Backend {
        id: e.backend_id,
        address: SocketAddr::new(addr(&e.backend), u16::from_be(e.backend_port)).to_string(),
    });
    let with_reason = matches!(e.kind, ev::KIND_DROP | ev::KIND_TRACE);
    let policy = e.kind == ev::KIND_POLICY;
    let drop_reason_desc = match e.kind {
        ev::KIND_DROP => Some(rname.to_uppercase()),
        ev::KIND_POLICY if e.verdict != ev::VERDICT_ALLOW => {
            Some(if e.action == abi::policy::ACTION_DENY {
                "POLICY_DENY".into()
            } else {
                "POLICY_DENIED".into()
            })
        }
        _ => None,
    };
    let (src_pod, dst_pod) = (names.pod(src), names.pod(dst));
    let mut flow = Flow {
        time: rfc3339(clock.wall_ns(e.time_ns)),
        verdict: verdict.into(),
        drop_reason_desc,
        traffic_direction: policy.then(|| {
            if e.direction == abi::policy::DIR_EGRESS {
                "EGRESS"
            } else {
                "INGRESS"
            }
            .into()
        }),
        policy_match_type: policy.then_some(e.rule),
        type_: "L3_L4".into(),
        event_type: EventType {
            kind: kind.into(),
            sub_type: sub,
        },
        ip: Ip {
            source: src.to_string(),
            destination: dst.to_string(),
            ip_version: if src.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
        },
        l4,
        source: Endpoint {
            ip: src.to_string(),
            port: has_ports.then_some(sport),
            identity: (e.kind == ev::KIND_POLICY).then_some(e.src_identity),
            namespace: src_pod.as_deref().and_then(namespace_of),
            pod_name: src_pod,
        },
        destination: Endpoint {
            ip: dst.to_string(),
            port: has_ports.then_some(dport),
            identity: (e.kind == ev::KIND_POLICY).then_some(e.dst_identity),
            namespace: dst_pod.as_deref().and_then(namespace_of),
            pod_name: dst_pod,
        },
        service,
        backend,
        interface: Interface {
            index: e.ifindex,
            name: names.ifaces.get(&e.ifindex).cloned().unwrap_or_default(),
        },
        program: ev::PROG_NAMES
            .get(e.prog as usize)
            .copied()
            .unwrap_or("unknown")
            .into(),
        reason: with_reason.then(|| rname.to_string()),
        reason_set: with_reason.then(|| set.to_string()),
        bytes: e.bytes,
        summary: String::new(),
        l7: None,
    };
    flow.summary = summary(&flow);
    FlowRecord { flow }
}

fn endpoint(e: &Endpoint) -> String {
    let ip: IpAddr = e.ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let a = match e.port {
        Some(p) => SocketAddr::new(ip, p).to_string(),
        None => ip.to_string(),
    };
    match &e.pod_name {
        Some(n) => format!("{a} ({n})"),
        None => a,
    }
}

/// What happened and why, in words.
fn summary(f: &Flow) -> String {
    let proto = match &f.l4 {
        Some(L4 { tcp: Some(_), .. }) => "TCP",
        Some(L4 { udp: Some(_), .. }) => "UDP",
        _ => "IP",
    };
    let svc = f
        .service
        .as_ref()
        .map(|s| match &s.name {
            Some(n) => format!("service {n} ({})", s.frontend),
            None => format!("service #{} ({})", s.id, s.frontend),
        })
        .unwrap_or_default();
    match f.event_type.kind.as_str() {
        "drop" => format!(
            "{proto} dropped: {}",
            f.reason.as_deref().unwrap_or("unknown")
        ),
        "translation" => format!(
            "{proto} new flow of {svc} to backend {}",
            f.backend
                .as_ref()
                .map(|b| b.address.as_str())
                .unwrap_or("?")
        ),
        "trace" => format!(
            "{proto} {}: {}",
            f.reason_set.as_deref().unwrap_or(""),
            f.reason.as_deref().unwrap_or("")
        ),
        "policy" => {
            let m = f.policy_match_type.unwrap_or(0) as usize;
            let what = match (f.verdict.as_str(), f.drop_reason_desc.as_deref()) {
                ("FORWARDED", _) => "ALLOWED",
                ("AUDIT", _) => "AUDITED (would be denied)",
                (_, Some("POLICY_DENY")) => "DENIED (deny rule)",
                _ => "DENIED (no rule allows)",
            };
            format!(
                "{proto} policy-verdict:{} {} {what}, identity {} -> {}",
                ev::MATCH_NAMES.get(m).copied().unwrap_or("unknown"),
                f.traffic_direction.as_deref().unwrap_or(""),
                f.source.identity.unwrap_or(0),
                f.destination.identity.unwrap_or(0),
            )
        }
        k => format!("{proto} {k} {}", f.verdict),
    }
}

/// The human line: time, program@interface, source → destination, what happened and why.
pub fn human(r: &FlowRecord) -> String {
    let f = &r.flow;
    let time = f.time.get(11..23).unwrap_or(&f.time);
    let iface = if f.interface.name.is_empty() {
        format!("if{}", f.interface.index)
    } else {
        f.interface.name.clone()
    };
    format!(
        "{time} {:<10} {}@{iface} {} -> {} {}",
        f.verdict,
        f.program,
        endpoint(&f.source),
        endpoint(&f.destination),
        f.summary
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc3339(951_782_400 * 1_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn a_policy_verdict_reads_like_a_hubble_flow() {
        let e = Event {
            kind: ev::KIND_POLICY,
            prog: ev::PROG_TC_ENDPOINT_TO_POD,
            proto: PROTO_TCP,
            src: abi::lb::v4_mapped([10, 0, 0, 1]),
            dst: abi::lb::v4_mapped([10, 0, 0, 9]),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            tcp_flags: 0x02,
            verdict: ev::VERDICT_DENY,
            src_identity: 300,
            dst_identity: 301,
            rule: ev::MATCH_L3_L4,
            direction: abi::policy::DIR_INGRESS,
            action: abi::policy::ACTION_DENY,
            ..Default::default()
        };
        let r = from_event(&e, &Clock::now(), &Names::default());
        let v = serde_json::to_value(&r).unwrap();
        let f = &v["flow"];
        assert_eq!(f["verdict"], "DROPPED");
        assert_eq!(f["drop_reason_desc"], "POLICY_DENY");
        assert_eq!(f["traffic_direction"], "INGRESS");
        assert_eq!(f["policy_match_type"], 2);
        assert_eq!(f["source"]["identity"], 300);
        assert_eq!(f["destination"]["identity"], 301);
        assert_eq!(f["event_type"]["type"], "policy");
        assert_eq!(f["program"], "tc_endpoint_to_pod");
        let line = human(&r);
        assert!(
            line.contains("10.0.0.1:40000 -> 10.0.0.9:80 TCP policy-verdict:L3-L4 INGRESS DENIED (deny rule), identity 300 -> 301"),
            "{line}"
        );
        // An allowed flow has no drop reason; a flow with no entry is POLICY_DENIED.
        let allowed = Event {
            verdict: ev::VERDICT_ALLOW,
            action: abi::policy::ACTION_ALLOW,
            direction: abi::policy::DIR_EGRESS,
            ..e
        };
        let f = from_event(&allowed, &Clock::now(), &Names::default()).flow;
        assert_eq!(
            (f.verdict.as_str(), f.drop_reason_desc),
            ("FORWARDED", None)
        );
        assert_eq!(f.traffic_direction.as_deref(), Some("EGRESS"));
        let none = Event {
            action: 0,
            rule: ev::MATCH_NONE,
            ..e
        };
        let f = from_event(&none, &Clock::now(), &Names::default()).flow;
        assert_eq!(f.drop_reason_desc.as_deref(), Some("POLICY_DENIED"));
        assert_eq!(f.policy_match_type, Some(0));
        // What `monitor` reads back (an interface without a name included) is what was sent.
        let sent = serde_json::to_string(&r).unwrap();
        let back: FlowRecord = serde_json::from_str(&sent).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_drop_reads_like_a_hubble_flow() {
        let e = Event {
            kind: ev::KIND_DROP,
            prog: ev::PROG_XDP_LB,
            reason: abi::lb::reason::NO_BACKEND,
            proto: PROTO_UDP,
            src: abi::lb::v4_mapped([10, 0, 0, 1]),
            dst: abi::lb::v4_mapped([10, 0, 0, 9]),
            sport: 1234u16.to_be(),
            dport: 53u16.to_be(),
            ifindex: 7,
            ..Default::default()
        };
        let r = from_event(&e, &Clock::now(), &Names::default());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["flow"]["verdict"], "DROPPED");
        assert_eq!(v["flow"]["drop_reason_desc"], "NO_BACKEND");
        assert_eq!(v["flow"]["IP"]["source"], "10.0.0.1");
        assert_eq!(v["flow"]["l4"]["UDP"]["destination_port"], 53);
        assert_eq!(v["flow"]["event_type"]["type"], "drop");
        assert!(
            human(&r).contains("10.0.0.1:1234 -> 10.0.0.9:53"),
            "{}",
            human(&r)
        );
    }
}
