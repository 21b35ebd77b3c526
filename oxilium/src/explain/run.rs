//! Runs one packet through a private instance of the role's program (see the module's doc).
use crate::bpf::{loader, objects};
use crate::events::{Names, record};
use abi::event::{CFG_TRACE, Event, EventConfig, KIND_TRANSLATE};
use abi::lb::{CtEntry, FlowKey, ServiceKey, ServiceValue, SnatEntry, names};
use abi::sock::{AffinityKey, AffinityValue};
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use serde_json::{Value, json};
use std::{net::IpAddr, path::Path};

/// The maps the programs only read: the private instance uses the live pins.
const LIVE: [&str; 8] = [
    names::SERVICES,
    names::SERVICE_IDS,
    names::BACKENDS,
    names::TABLES,
    names::CONFIG,
    abi::nodeport::names::ENDPOINTS,
    abi::nodeport::names::SOURCE_RANGES,
    abi::sock::names::AFFINITY_TIMEOUT,
];

/// Size of the private conntrack, SNAT and affinity maps (they hold the seeded entries and the
/// packet's new ones).
const PRIVATE_ENTRIES: u32 = 64;

/// Which program explains a packet for the agent's role.
pub enum Hook {
    Xdp,
    TcNodePort,
}

/// Loads the object with the `live` maps taken from their pins and every other map private;
/// `sizes` are private maps' sizes.
pub(super) fn load_private(
    object: &[u8],
    pin_dir: &Path,
    live: &[&str],
    sizes: &[(&str, u32)],
) -> Result<Ebpf> {
    let paths: Vec<(&str, std::path::PathBuf)> =
        live.iter().map(|n| (*n, pin_dir.join(n))).collect();
    for (n, p) in &paths {
        if *n == names::SERVICES && !p.exists() {
            bail!("no datapath pinned at {}", pin_dir.display());
        }
    }
    let mut l = EbpfLoader::new();
    for (n, p) in &paths {
        if p.exists() {
            l.map_pin_path(n, p.as_path());
        }
    }
    for n in [names::CONNTRACK, names::SNAT, abi::sock::names::AFFINITY] {
        l.map_max_entries(n, PRIVATE_ENTRIES);
    }
    for (n, size) in sizes {
        l.map_max_entries(n, *size);
    }
    l.map_max_entries(abi::event::names::EVENTS, 64 * 1024);
    l.load(object)
        .context("loading the private program instance")
}

pub(super) fn live<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &str,
) -> Option<HashMap<MapData, K, V>> {
    let data = MapData::from_pin(pin_dir.join(name)).ok()?;
    let map = match data.info().ok()?.map_type() {
        Ok(aya::maps::MapType::LruHash) => Map::LruHashMap(data),
        _ => Map::HashMap(data),
    };
    HashMap::try_from(map).ok()
}

pub(super) fn private<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Option<HashMap<MapData, K, V>> {
    loader::take_map(ebpf, name).ok()
}

/// The packet to explain, its addresses resolved.
pub struct Packet {
    pub from: IpAddr,
    pub to: IpAddr,
    pub port: u16,
    pub proto: String,
    pub sport: u16,
}

impl Packet {
    fn flow_key(&self) -> FlowKey {
        FlowKey {
            src: addr16(self.from),
            dst: addr16(self.to),
            sport: self.sport.to_be(),
            dport: self.port.to_be(),
            proto: self.proto_number(),
            _pad: [0; 3],
        }
    }

    fn proto_number(&self) -> u8 {
        if self.proto == "udp" {
            abi::lb::PROTO_UDP
        } else {
            abi::lb::PROTO_TCP
        }
    }
}

/// The frame of `r` (a TCP SYN or a UDP datagram) with these MACs.
pub(super) fn frame(r: &Packet, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Result<Vec<u8>> {
    use etherparse::PacketBuilder;
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let ip = match (r.from, r.to) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => bail!("from / to: different families"),
    };
    let payload = b"oxilium explain";
    let mut out = Vec::new();
    if r.proto == "udp" {
        ip.udp(r.sport, r.port).write(&mut out, payload)?;
    } else {
        ip.tcp(r.sport, r.port, 1, 64_240)
            .syn()
            .write(&mut out, payload)?;
    }
    Ok(out)
}

fn addr16(a: IpAddr) -> abi::lb::Addr {
    lb::compile::addr_bytes(a)
}

/// The headers of the packet the program returned.
pub(super) fn headers(pkt: &[u8]) -> Value {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let Ok(p) = SlicedPacket::from_ethernet(pkt) else {
        return json!({ "error": "not an Ethernet frame" });
    };
    let (src, dst, proto) = match &p.net {
        Some(NetSlice::Ipv4(h)) => (
            IpAddr::from(h.header().source_addr()),
            IpAddr::from(h.header().destination_addr()),
            h.header().protocol().0,
        ),
        Some(NetSlice::Ipv6(h)) => (
            IpAddr::from(h.header().source_addr()),
            IpAddr::from(h.header().destination_addr()),
            h.payload().ip_number.0,
        ),
        _ => return json!({ "error": "not IP" }),
    };
    let ports = match &p.transport {
        Some(TransportSlice::Tcp(t)) => Some((t.source_port(), t.destination_port())),
        Some(TransportSlice::Udp(u)) => Some((u.source_port(), u.destination_port())),
        _ => None,
    };
    let mut v =
        json!({ "source": src.to_string(), "destination": dst.to_string(), "protocol": proto });
    if let Some((s, d)) = ports {
        v["source_port"] = json!(s);
        v["destination_port"] = json!(d);
    }
    if proto == 4 || proto == 41 {
        v["encapsulation"] = json!("ip-in-ip (DSR)");
    }
    v
}

/// The name of a tc program's return value.
pub(super) fn tc_verdict(rc: u32) -> &'static str {
    verdict(&Hook::TcNodePort, rc)
}

fn verdict(hook: &Hook, rc: u32) -> &'static str {
    match hook {
        Hook::Xdp => match rc {
            0 => "XDP_ABORTED",
            1 => "XDP_DROP",
            2 => "XDP_PASS",
            3 => "XDP_TX",
            4 => "XDP_REDIRECT",
            _ => "unknown",
        },
        Hook::TcNodePort => match rc as i32 {
            -1 => "TCX_NEXT (passed on)",
            0 => "TC_ACT_OK",
            2 => "TC_ACT_SHOT",
            7 => "TC_ACT_REDIRECT",
            _ => "unknown",
        },
    }
}

/// A private instance of a program, its writable maps seeded with the live entries the packet
/// can touch.
pub(super) struct Private {
    pub ebpf: Ebpf,
    pub key: FlowKey,
    /// The service at the packet's destination, as the program looks it up.
    pub svc: Option<ServiceValue>,
    /// The live conntrack entry of the packet's flow.
    pub ct_entry: Option<CtEntry>,
    pub seeded: Vec<&'static str>,
    ct: HashMap<MapData, FlowKey, CtEntry>,
    snat: HashMap<MapData, FlowKey, SnatEntry>,
    ring: RingBuf<MapData>,
    /// Maps taken out of `ebpf` to be written: kept open until the program is loaded and run
    /// (a map whose last descriptor is closed before the load is gone).
    keep: Vec<Box<dyn std::any::Any>>,
}

/// What the private ring and maps tell after the run.
pub(super) struct Report {
    pub steps: Vec<Value>,
    /// The translation record (service, backend).
    pub translation: Option<Value>,
    pub drop: Option<Value>,
    /// The policy verdict records, in order.
    pub policy: Vec<record::Flow>,
    pub why: String,
    pub new_ct: Vec<Value>,
    pub new_snat: usize,
}

impl Private {
    /// Loads `object` (see [`load_private`]) and seeds its conntrack, SNAT and affinity maps for
    /// `r`, whose service is looked up with `scope`; events unlimited, with the trace points
    /// when `trace` (a packet keeps at most `MAX_PENDING` records: the pod path leaves them to
    /// its translation and policy records).
    pub(super) fn new(
        object: &[u8],
        pin_dir: &Path,
        live_maps: &[&str],
        sizes: &[(&str, u32)],
        r: &Packet,
        scope: u8,
        trace: bool,
    ) -> Result<Private> {
        let mut ebpf = load_private(object, pin_dir, live_maps, sizes)?;
        let key = r.flow_key();
        let proto = key.proto;
        let svc: Option<ServiceValue> = live::<ServiceKey, ServiceValue>(pin_dir, names::SERVICES)
            .and_then(|m| {
                m.get(
                    &ServiceKey {
                        addr: key.dst,
                        port: key.dport,
                        proto,
                        scope,
                    },
                    0,
                )
                .ok()
            });
        let mut seeded = Vec::new();
        let live_ct = live::<FlowKey, CtEntry>(pin_dir, names::CONNTRACK);
        let ct_entry = live_ct.as_ref().and_then(|m| m.get(&key, 0).ok());
        let mut ct: HashMap<MapData, FlowKey, CtEntry> =
            private(&mut ebpf, names::CONNTRACK).context("private conntrack")?;
        let mut snat: HashMap<MapData, FlowKey, SnatEntry> =
            private(&mut ebpf, names::SNAT).context("private SNAT map")?;
        if let Some(e) = ct_entry {
            ct.insert(key, e, 0)?;
            seeded.push("conntrack");
            if e.snat_port != 0
                && let (Some(b), Some(c)) =
                    (live_backend(pin_dir, e.backend_id), lb_config(pin_dir))
            {
                let lb = if r.from.is_ipv4() {
                    c.snat_v4
                } else {
                    c.snat_v6
                };
                let rkey = FlowKey {
                    src: b.addr,
                    dst: lb,
                    sport: b.port,
                    dport: e.snat_port,
                    proto,
                    _pad: [0; 3],
                };
                if let Some(s) = live::<FlowKey, SnatEntry>(pin_dir, names::SNAT)
                    .and_then(|m| m.get(&rkey, 0).ok())
                {
                    snat.insert(rkey, s, 0)?;
                    seeded.push("snat");
                }
            }
        }
        let mut affinity: Option<HashMap<MapData, AffinityKey, AffinityValue>> =
            private(&mut ebpf, abi::sock::names::AFFINITY);
        if let (Some(svc), Some(aff)) = (&svc, affinity.as_mut()) {
            let akey = abi::sock::pod::affinity_key(&key.src, svc.id);
            if let Some(v) = live::<AffinityKey, AffinityValue>(pin_dir, abi::sock::names::AFFINITY)
                .and_then(|m| m.get(&akey, 0).ok())
            {
                aff.insert(akey, v, 0)?;
                seeded.push("affinity");
            }
        }
        let mut cfg: Array<MapData, EventConfig> =
            loader::take_map(&mut ebpf, abi::event::names::CONFIG)?;
        cfg.set(
            0,
            EventConfig {
                flags: if trace { CFG_TRACE } else { 0 },
                flow_rate: u32::MAX,
                flow_burst: u32::MAX,
                _pad: 0,
            },
            0,
        )?;
        let ring: RingBuf<MapData> = loader::take_map(&mut ebpf, abi::event::names::EVENTS)?;
        let mut keep: Vec<Box<dyn std::any::Any>> = vec![Box::new(cfg)];
        if let Some(a) = affinity {
            keep.push(Box::new(a));
        }
        Ok(Private {
            ebpf,
            key,
            svc,
            ct_entry,
            seeded,
            ct,
            snat,
            ring,
            keep,
        })
    }

    /// Keeps a map taken out of the object open until the run is over.
    pub(super) fn keep<T: 'static>(&mut self, map: T) {
        self.keep.push(Box::new(map));
    }

    /// The private ring's records and the private maps' new entries.
    pub(super) fn report(&mut self, names: &Names) -> Report {
        let clock = record::Clock::now();
        let mut steps = Vec::new();
        let mut translation = None;
        let mut drop = None;
        let mut policy = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the program writes whole `Event`s.
            let e = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
            let f = record::from_event(&e, &clock, names).flow;
            match f.event_type.kind.as_str() {
                "trace" => steps.push(json!({
                    "set": f.reason_set, "step": f.reason, "program": f.program,
                })),
                "drop" => {
                    drop = Some(
                        json!({ "reason": f.reason, "set": f.reason_set, "desc": f.drop_reason_desc }),
                    )
                }
                "policy" => policy.push(f),
                _ if e.kind == KIND_TRANSLATE => {
                    translation = Some(json!({
                        "service": f.service, "backend": f.backend,
                    }))
                }
                _ => {}
            }
        }
        let (key, ct_entry) = (self.key, self.ct_entry);
        let new_ct: Vec<Value> = self
            .ct
            .iter()
            .filter_map(|x| x.ok())
            .filter(|(k, _)| !(ct_entry.is_some() && *k == key))
            .map(|(_, v)| json!({ "backend_id": v.backend_id, "service_id": v.service_id, "snat_port": u16::from_be(v.snat_port) }))
            .collect();
        let new_snat = self.snat.iter().filter_map(|x| x.ok()).count()
            - self.seeded.iter().filter(|s| **s == "snat").count();
        let why = match (&self.svc, ct_entry, &translation) {
            (None, _, _) => "no service at this destination (address, port, protocol)".to_string(),
            (Some(s), _, _) if s.table_size == 0 => "the service has no usable backend".to_string(),
            (Some(_), Some(e), None) => {
                format!("existing flow: conntrack pins backend {}", e.backend_id)
            }
            (Some(_), _, Some(_)) if self.seeded.contains(&"affinity") => {
                "new flow: the client's ClientIP affinity entry".to_string()
            }
            (Some(s), _, Some(_)) if s.algorithm == abi::lb::ALG_RANDOM => {
                "new flow: a random slot of the service's weighted table".to_string()
            }
            (Some(s), _, Some(_)) => format!(
                "new flow: Maglev slot {} of {} (flow hash)",
                abi::lb::flow_hash(&key, 0) % s.table_size,
                s.table_size
            ),
            (Some(_), _, None) => "no translation".to_string(),
        };
        Report {
            steps,
            translation,
            drop,
            policy,
            why,
            new_ct,
            new_snat,
        }
    }

    /// The private counters that moved (the live ones never do).
    pub(super) fn counters(&mut self) -> Value {
        counters(&mut self.ebpf)
    }
}

/// Explains `r` on the agent whose pins are in `pin_dir`; `names` names services and interfaces.
pub fn explain(
    hook: Hook,
    pin_dir: &Path,
    ifindex: u32,
    r: &Packet,
    names: &Names,
) -> Result<Value> {
    let (object, prog_name) = match hook {
        Hook::Xdp => (objects::xdp(), "oxilium_lb"),
        Hook::TcNodePort => (objects::tc(), "oxilium_nodeport_ingress"),
    };
    let mut p = Private::new(
        object,
        pin_dir,
        &LIVE,
        &[],
        r,
        abi::lb::SCOPE_EXTERNAL,
        true,
    )?;
    let pkt = frame(r, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])?;
    let mut out = vec![0u8; pkt.len() + 256];
    let result = match hook {
        Hook::Xdp => {
            let prog: &mut Xdp = p
                .ebpf
                .program_mut(prog_name)
                .context("program")?
                .try_into()?;
            loader::verify(prog_name, || prog.load())?;
            let md: Vec<u8> = [0u32, pkt.len() as u32, 0, ifindex, 0, 0]
                .iter()
                .flat_map(|w| w.to_ne_bytes())
                .collect();
            prog.test_run(TestRunOptions {
                data_in: Some(&pkt),
                data_out: Some(&mut out),
                ctx_in: Some(&md),
                ..Default::default()
            })
        }
        Hook::TcNodePort => {
            let prog: &mut SchedClassifier = p
                .ebpf
                .program_mut(prog_name)
                .context("program")?
                .try_into()?;
            loader::verify(prog_name, || prog.load())?;
            prog.test_run(TestRunOptions {
                data_in: Some(&pkt),
                data_out: Some(&mut out),
                ..Default::default()
            })
        }
    }
    .context("BPF_PROG_TEST_RUN")?;
    out.truncate(result.data_size_out as usize);
    let rep = p.report(names);
    let t = &rep.translation;
    Ok(json!({
        "program": prog_name,
        "ifindex": ifindex,
        "packet": headers(&pkt),
        "verdict": verdict(&hook, result.return_value),
        "return_value": result.return_value as i32,
        "service": t.as_ref().map(|t| t["service"].clone()).or_else(|| p.svc.map(|s| json!({ "id": s.id }))),
        "backend": t.as_ref().map(|t| t["backend"].clone()),
        "why": rep.why,
        "drop": rep.drop,
        "steps": rep.steps,
        "seeded_from_live": p.seeded,
        "new_conntrack_entries": rep.new_ct,
        "new_snat_entries": rep.new_snat,
        "counters": p.counters(),
        "output": if out.is_empty() { Value::Null } else { headers(&out) },
    }))
}

/// Backend `id` of the live `OXI_BACKENDS` array, unless its slot is free.
fn live_backend(pin_dir: &Path, id: u32) -> Option<abi::lb::Backend> {
    let data = MapData::from_pin(pin_dir.join(names::BACKENDS)).ok()?;
    let a: Array<MapData, abi::lb::Backend> = Array::try_from(Map::Array(data)).ok()?;
    a.get(&id, 0).ok().filter(|b| b.service_id != 0)
}

fn lb_config(pin_dir: &Path) -> Option<abi::lb::LbConfig> {
    let data = MapData::from_pin(pin_dir.join(names::CONFIG)).ok()?;
    let a: Array<MapData, abi::lb::LbConfig> = Array::try_from(Map::Array(data)).ok()?;
    a.get(&0, 0).ok()
}

/// The private counters that moved (the live ones never do).
fn counters(ebpf: &mut Ebpf) -> Value {
    let mut out = serde_json::Map::new();
    let sets: [(&str, &str, &[&str]); 2] = [
        ("lb", names::STATS, &abi::lb::reason::NAMES),
        (
            "nodeport",
            abi::nodeport::names::STATS,
            &abi::nodeport::reason::NAMES,
        ),
    ];
    for (set, map, reasons) in sets {
        let Ok(m) = loader::take_map::<PerCpuArray<MapData, abi::lb::Counter>>(ebpf, map) else {
            continue;
        };
        for (i, n) in reasons.iter().enumerate() {
            let p: u64 = m
                .get(&(i as u32), 0)
                .map(|v| v.iter().map(|c| c.packets).sum())
                .unwrap_or(0);
            if p > 0 {
                out.insert(format!("{set}/{n}"), json!(p));
            }
        }
    }
    Value::Object(out)
}
