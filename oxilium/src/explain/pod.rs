//! The pod path of `oxilium explain`: a packet leaving one of this node's pods, through a private
//! instance of the endpoint programs' `oxilium_endpoint_from_pod` (tc/src/endpoint.rs): service
//! translation, the source endpoint's egress policy, the L7 redirect and, for a destination that
//! is a pod of this node, its ingress policy (done by the same program before the delivery).
//!
//! Read-only maps are the live pins (services, backends, tables, endpoints, ipcache, ...). The
//! writable ones are private copies holding the live entries the packet can touch: the policy
//! maps of the source and of every local endpoint the destination may be (the programs count
//! packets on the deciding entry: the copies' counters show which entry decided), the policy
//! conntrack entries of the flow, the endpoints' policy counters, the bandwidth entries, the LB
//! conntrack, SNAT and affinity entries ([`super::run::Private`]).
use super::run::{Packet, Private, headers, live, private, tc_verdict};
use crate::{
    agent::node::l7::Endpoints,
    bpf::{loader, objects, policy::PolicyMaps},
    events::{Names, record::Flow},
};
use abi::{
    bandwidth::{Bandwidth, BandwidthKey},
    endpoint::{EndpointInfo, EndpointKey},
    event::MATCH_NAMES,
    lb::names,
    policy::{
        ACTION_ALLOW, ACTION_DENY, ACTION_REDIRECT, DIR_EGRESS, DIR_INGRESS, MAX_ENTRIES,
        PREFIX_STATIC, PolicyCtKey, PolicyCtValue, PolicyData, PolicyKey, PolicyStats, PolicyValue,
        names as pnames,
    },
};
use anyhow::{Context, Result, bail};
use aya::{
    maps::{HashMap, LpmTrie, MapData, of_maps::HashOfMaps},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use serde_json::{Value, json};
use std::{net::IpAddr, path::Path, sync::Arc};

const PROGRAM: &str = "oxilium_endpoint_from_pod";

/// The maps the endpoint programs only read.
const LIVE: [&str; 9] = [
    names::SERVICES,
    names::BACKENDS,
    names::TABLES,
    names::CONFIG,
    abi::endpoint::names::ENDPOINTS,
    abi::endpoint::names::MASQ_EXCEPT,
    pnames::IPCACHE,
    abi::sock::names::AFFINITY_TIMEOUT,
    abi::nodeport::names::ENDPOINTS,
];

/// Size of the private policy conntrack (the flow's seeded entries and its new ones).
const PRIVATE_POLICY_CT: u32 = 1024;

/// `BPF_F_NO_PREALLOC`: LPM tries require it.
const NO_PREALLOC: u32 = 1;

/// `struct __sk_buff`'s size and the offsets of the fields set or read.
const SKB_SIZE: usize = 192;
const SKB_MARK: usize = 8;
const SKB_INGRESS_IFINDEX: usize = 36;
const SKB_IFINDEX: usize = 40;

type Inner = LpmTrie<MapData, PolicyData, PolicyValue>;

/// Where the packet goes: the address (a Service's ClusterIP, or any address) and the local
/// endpoints it may reach (the address itself, or the Service's backends).
pub struct PodTarget {
    pub packet: Packet,
    /// `namespace/name` of the Service, when the destination was given as one.
    pub service: Option<String>,
    pub candidates: Vec<IpAddr>,
    /// METHOD, PATH of `--http`.
    pub http: Option<(String, String)>,
}

fn addr16(a: IpAddr) -> abi::lb::Addr {
    lb::compile::addr_bytes(a)
}

/// The local endpoint at `ip` (its live `OXI_ENDPOINTS` entry).
pub fn local_endpoint(pin_dir: &Path, ip: IpAddr) -> Option<EndpointInfo> {
    live::<EndpointKey, EndpointInfo>(pin_dir, abi::endpoint::names::ENDPOINTS)?
        .get(&EndpointKey { addr: addr16(ip) }, 0)
        .ok()
}

/// A local endpoint whose policy the packet may meet: its private policy map copy.
struct Seeded {
    ip: IpAddr,
    info: EndpointInfo,
    map: Inner,
    /// Packets counted on each entry before the run.
    before: Vec<(PolicyKey, u64)>,
}

fn policy_key(k: &aya::maps::lpm_trie::Key<PolicyData>) -> PolicyKey {
    let d = k.data();
    PolicyKey {
        prefix_len: k.prefix_len(),
        identity: d.identity,
        direction: d.direction,
        proto: d.proto,
        dport: d.dport,
    }
}

fn entries(map: &Inner) -> Vec<(PolicyKey, PolicyValue)> {
    map.iter()
        .filter_map(|r| r.ok())
        .map(|(k, v)| (policy_key(&k), v))
        .collect()
}

/// Explains `t` leaving its source pod; `dir` has the agent's view of the local endpoints' policy
/// (for the entries' origins and the HTTP proxy's decision).
pub fn explain_pod(
    pin_dir: &Path,
    t: &PodTarget,
    names: &Names,
    dir: &Arc<Endpoints>,
) -> Result<Value> {
    let r = &t.packet;
    let Some(src) = local_endpoint(pin_dir, r.from) else {
        bail!("from: {} is not a pod of this node", r.from);
    };
    let sizes = [(pnames::POLICY_CT, PRIVATE_POLICY_CT)];
    let mut p = Private::new(
        objects::tc(),
        pin_dir,
        &LIVE,
        &sizes,
        r,
        abi::sock::SCOPE_INTERNAL,
        false,
    )?;
    // The endpoints the packet can meet: the source, and the local ones it may reach.
    let mut eps = vec![(r.from, src)];
    for ip in &t.candidates {
        if let Some(e) = local_endpoint(pin_dir, *ip)
            && !eps.iter().any(|(_, x)| x.id == e.id)
        {
            eps.push((*ip, e));
        }
    }
    let seeded = seed_policy(&mut p, pin_dir, &eps, r.sport.to_be())?;
    seed_bandwidth(&mut p, pin_dir, &eps)?;

    let pkt = super::run::frame(r, src.mac, src.node_mac)?;
    let mut out = vec![0u8; pkt.len() + 256];
    let mut ctx = vec![0u8; SKB_SIZE];
    ctx[SKB_INGRESS_IFINDEX..SKB_INGRESS_IFINDEX + 4].copy_from_slice(&src.ifindex.to_ne_bytes());
    ctx[SKB_IFINDEX..SKB_IFINDEX + 4].copy_from_slice(&src.ifindex.to_ne_bytes());
    let mut ctx_out = vec![0u8; SKB_SIZE];
    let result = {
        let prog: &mut SchedClassifier =
            p.ebpf.program_mut(PROGRAM).context("program")?.try_into()?;
        loader::verify(PROGRAM, || prog.load())?;
        prog.test_run(TestRunOptions {
            data_in: Some(&pkt),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ctx_out: Some(&mut ctx_out),
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?
    };
    out.truncate(result.data_size_out as usize);
    let mark = u32::from_ne_bytes(ctx_out[SKB_MARK..SKB_MARK + 4].try_into()?);

    let rep = p.report(names);
    let deciders = deciding_entries(&seeded);
    let policy: Vec<Value> = rep
        .policy
        .iter()
        .map(|f| policy_step(f, &deciders, names, dir))
        .collect();
    let redirect = rep.policy.iter().zip(&policy).find_map(|(f, v)| {
        let port = v["entry"]["proxy_port"].as_u64().filter(|p| *p != 0)?;
        Some((f, port as u16))
    });
    let output = if out.is_empty() {
        Value::Null
    } else {
        headers(&out)
    };
    let dst_ip: IpAddr = output["destination"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(r.to);
    let dst = eps.iter().find(|(ip, _)| *ip == dst_ip).map(|(_, e)| *e);
    let denied = rep.policy.iter().find(|f| f.verdict == "DROPPED");
    let outcome = match (&rep.drop, denied, redirect) {
        (_, Some(f), _) => format!(
            "dropped by the {} policy of {}",
            f.traffic_direction.as_deref().unwrap_or("").to_lowercase(),
            side_name(f, names)
        ),
        (_, None, Some((f, port))) => format!(
            "redirected to the {} HTTP proxy on port {port}",
            f.traffic_direction.as_deref().unwrap_or("").to_lowercase()
        ),
        (Some(d), _, _) => format!("dropped: {}", d["reason"].as_str().unwrap_or("unknown")),
        (None, None, None) => match (result.return_value as i32, dst) {
            (7, Some(e)) => format!(
                "delivered to the pod at {dst_ip} (bpf_redirect_peer into ifindex {})",
                e.ifindex
            ),
            (0 | -1, _) => {
                "handed to the node's routing (another node, the host or outside)".into()
            }
            (2, _) => "dropped".into(),
            (rc, _) => format!("return value {rc}"),
        },
    };
    let l7 = match (&t.http, redirect) {
        (Some((m, path)), Some((f, _))) => Some(http_verdict(dir, pin_dir, f, r, dst_ip, m, path)?),
        (Some(_), None) => Some(json!({ "error": "the flow is not redirected to an L7 proxy" })),
        (None, _) => None,
    };
    let endpoint = |ip: IpAddr, e: Option<EndpointInfo>, identity: Option<u32>| {
        json!({
            "ip": ip.to_string(),
            "pod": names.pod(ip),
            "identity": identity.or(e.map(|e| e.identity)),
            "local": e.is_some(),
            "endpoint_id": e.map(|e| e.id),
        })
    };
    let src_identity = rep.policy.first().and_then(|f| f.source.identity);
    let dst_identity = rep.policy.first().and_then(|f| f.destination.identity);
    let t_ = &rep.translation;
    Ok(json!({
        "program": PROGRAM,
        "ifindex": src.ifindex,
        "packet": headers(&pkt),
        "source": endpoint(r.from, Some(src), src_identity),
        "destination": endpoint(dst_ip, dst, dst_identity),
        "service": t_.as_ref().map(|t| t["service"].clone()).or_else(|| p.svc.map(|s| json!({ "id": s.id, "name": t.service }))),
        "backend": t_.as_ref().map(|t| t["backend"].clone()),
        "why": if p.svc.is_some() { Value::from(rep.why) } else { Value::Null },
        "policy": policy,
        "outcome": outcome,
        "l7": l7,
        "verdict": tc_verdict(result.return_value),
        "return_value": result.return_value as i32,
        "mark": mark,
        "drop": rep.drop,
        "steps": rep.steps,
        "seeded_from_live": p.seeded,
        "new_conntrack_entries": rep.new_ct,
        "new_snat_entries": rep.new_snat,
        "counters": p.counters(),
        "output": output,
    }))
}

/// The private policy maps: each endpoint's policy map copied, its counters and the flow's
/// policy conntrack entries (the source's with the packet's source port as its own, the
/// others' with it as the peer's).
fn seed_policy(
    p: &mut Private,
    pin_dir: &Path,
    eps: &[(IpAddr, EndpointInfo)],
    sport_be: u16,
) -> Result<Vec<Seeded>> {
    let live_maps = PolicyMaps::open(pin_dir)?;
    let mut outer: HashOfMaps<MapData, u32, Inner> = loader::take_map(&mut p.ebpf, pnames::POLICY)?;
    let mut stats: HashMap<MapData, u32, PolicyStats> =
        private(&mut p.ebpf, pnames::POLICY_STATS).context("private policy counters")?;
    let mut seeded = Vec::new();
    for (ip, info) in eps {
        let mut map = Inner::create(MAX_ENTRIES, NO_PREALLOC).context("a private policy map")?;
        let mut before = Vec::new();
        for (k, v) in live_maps.entries(info.id) {
            PolicyMaps::set_entry(&mut map, &k, &v)?;
            before.push((k, v.packets));
        }
        outer
            .insert(info.id, &map, 0)
            .with_context(|| format!("private OXI_POLICY[{}]", info.id))?;
        stats.insert(info.id, live_maps.stats(info.id), 0)?;
        seeded.push(Seeded {
            ip: *ip,
            info: *info,
            map,
            before,
        });
    }
    let src = eps[0].1.id;
    let mut ct: HashMap<MapData, PolicyCtKey, PolicyCtValue> =
        private(&mut p.ebpf, pnames::POLICY_CT).context("private policy conntrack")?;
    if let Some(live_ct) = live::<PolicyCtKey, PolicyCtValue>(pin_dir, pnames::POLICY_CT) {
        let mine = |k: &PolicyCtKey| {
            (k.endpoint == src && k.local_port == sport_be)
                || (k.endpoint != src
                    && eps.iter().any(|(_, e)| e.id == k.endpoint)
                    && k.remote_port == sport_be)
        };
        let mut n = 0;
        for (k, v) in live_ct.iter().filter_map(|x| x.ok()) {
            if mine(&k) && n < PRIVATE_POLICY_CT {
                ct.insert(k, v, 0)?;
                n += 1;
            }
        }
        if n > 0 {
            p.seeded.push("policy conntrack");
        }
    }
    p.keep(outer);
    p.keep(stats);
    p.keep(ct);
    Ok(seeded)
}

/// The endpoints' bandwidth entries (rate, schedule), so the run meets the same limits.
fn seed_bandwidth(p: &mut Private, pin_dir: &Path, eps: &[(IpAddr, EndpointInfo)]) -> Result<()> {
    let names = abi::bandwidth::names::BANDWIDTH;
    let (Some(live_bw), Some(mut bw)) = (
        live::<BandwidthKey, Bandwidth>(pin_dir, names),
        private::<BandwidthKey, Bandwidth>(&mut p.ebpf, names),
    ) else {
        return Ok(());
    };
    for (k, v) in live_bw.iter().filter_map(|x| x.ok()) {
        if eps.iter().any(|(_, e)| e.ifindex == k.ifindex) {
            bw.insert(k, v, 0)?;
        }
    }
    p.keep(bw);
    Ok(())
}

/// A policy entry that decided: its endpoint, key and value.
struct Decider {
    endpoint: u32,
    ip: IpAddr,
    key: PolicyKey,
    value: PolicyValue,
}

/// The entries whose packet counter moved in the private copies.
fn deciding_entries(seeded: &[Seeded]) -> Vec<Decider> {
    let mut out = Vec::new();
    for s in seeded.iter() {
        for (k, v) in entries(&s.map) {
            let before = s
                .before
                .iter()
                .find(|(bk, _)| *bk == k)
                .map_or(0, |(_, n)| *n);
            if v.packets > before {
                out.push(Decider {
                    endpoint: s.info.id,
                    ip: s.ip,
                    key: k,
                    value: v,
                });
            }
        }
    }
    out
}

fn action_name(a: u8) -> &'static str {
    match a {
        ACTION_ALLOW => "allow",
        ACTION_DENY => "deny",
        ACTION_REDIRECT => "redirect",
        _ => "unknown",
    }
}

/// A policy key in words: whose, which direction, which ports.
fn key_json(k: &PolicyKey, v: &PolicyValue, origins: Vec<String>) -> Value {
    let port_bits = k.prefix_len.saturating_sub(PREFIX_STATIC);
    let identity = u32::from_be(k.identity);
    let kind = match (identity, port_bits) {
        (0, 0) => "wildcard (any peer, any port)",
        (0, _) => "L4 (any peer, this port)",
        (_, 0) => "L3-only (this peer, any port)",
        (_, _) => "L3-L4 (this peer, this port)",
    };
    json!({
        "kind": kind,
        "identity": identity,
        "direction": if k.direction == DIR_EGRESS { "egress" } else { "ingress" },
        "protocol": (port_bits > 0).then_some(k.proto),
        "port": (port_bits > 8).then_some(u16::from_be(k.dport)),
        "port_prefix_bits": (port_bits > 8).then(|| port_bits - 8),
        "action": action_name(v.action),
        "proxy_port": u16::from_be(v.proxy_port),
        "origins": origins,
    })
}

fn side_name(f: &Flow, names: &Names) -> String {
    let ip = if f.traffic_direction.as_deref() == Some("EGRESS") {
        &f.source.ip
    } else {
        &f.destination.ip
    };
    ip.parse::<IpAddr>()
        .ok()
        .and_then(|a| names.pod(a))
        .unwrap_or_else(|| ip.clone())
}

/// One policy check: its record and the entry that decided it.
fn policy_step(f: &Flow, deciders: &[Decider], names: &Names, dir: &Endpoints) -> Value {
    let egress = f.traffic_direction.as_deref() == Some("EGRESS");
    let ep_ip = if egress {
        &f.source.ip
    } else {
        &f.destination.ip
    };
    let direction = if egress { DIR_EGRESS } else { DIR_INGRESS };
    let decider = deciders
        .iter()
        .find(|d| d.ip.to_string() == *ep_ip && d.key.direction == direction);
    let m = f.policy_match_type.unwrap_or(0) as usize;
    let verdict = match (f.verdict.as_str(), decider) {
        ("FORWARDED", Some(d)) if d.value.action == ACTION_REDIRECT => "redirected",
        ("FORWARDED", _) => "allowed",
        ("AUDIT", _) => "audit (would be denied)",
        _ => "denied",
    };
    let entry = decider.map(|d| {
        let origins = dir.origins(d.ip, &d.key);
        let mut v = key_json(&d.key, &d.value, origins);
        v["endpoint_id"] = json!(d.endpoint);
        v
    });
    json!({
        "direction": f.traffic_direction,
        "endpoint": side_name(f, names),
        "verdict": verdict,
        "match": MATCH_NAMES.get(m).copied().unwrap_or("unknown"),
        "source_identity": f.source.identity,
        "destination_identity": f.destination.identity,
        "reason": f.drop_reason_desc,
        "entry": entry.unwrap_or_else(|| if f.verdict == "DROPPED" || f.policy_match_type == Some(0) {
            json!({ "kind": "none (no entry allows the flow)" })
        } else {
            Value::Null
        }),
        "allowed": f.verdict != "DROPPED",
    })
}

/// What the HTTP proxy would answer `METHOD PATH` on the redirected flow `f`.
fn http_verdict(
    dir: &Arc<Endpoints>,
    pin_dir: &Path,
    f: &Flow,
    r: &Packet,
    dst: IpAddr,
    method: &str,
    path: &str,
) -> Result<Value> {
    let direction = if f.traffic_direction.as_deref() == Some("EGRESS") {
        proxy::http::Direction::Egress
    } else {
        proxy::http::Direction::Ingress
    };
    let conn = proxy::http::Conn {
        direction,
        client: std::net::SocketAddr::new(r.from, r.sport),
        original: std::net::SocketAddr::new(dst, r.port),
    };
    let req = policy::l7::HttpRequest {
        method: method.to_string(),
        path: path.to_string(),
        host: None,
        headers: Vec::new(),
    };
    let allowed = crate::agent::node::l7::http_allows(dir, pin_dir, &conn, &req)?;
    Ok(json!({
        "method": method,
        "path": path,
        "proxy": if direction == proxy::http::Direction::Egress { "egress" } else { "ingress" },
        "allowed": allowed,
        "status": if allowed { "forwarded to the destination" } else { "403 Access denied" },
    }))
}
