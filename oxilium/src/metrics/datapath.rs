//! The metrics read from the kernel at scrape time: the per-CPU counters (per reason, service and
//! backend), map occupancy, the services and health-check states the agent applied, and the
//! event ring's counters. Names and meanings: docs/metrics.md.
use crate::{agent::Shared, events::Hub};
use prometheus_client::{
    collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
};
use std::{fmt, sync::Arc};

pub struct Collector {
    pub state: Shared,
    pub hub: Arc<Hub>,
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("datapath::Collector")
    }
}

type Labels = Vec<(String, String)>;

fn labels<const N: usize>(l: [(&str, String); N]) -> Labels {
    l.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, v) in rows {
        m.encode_family(l)?
            .encode_counter::<NoLabelSet, _, u64>(v, None)?;
    }
    Ok(())
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, f64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (l, v) in rows {
        m.encode_family(l)?.encode_gauge(v)?;
    }
    Ok(())
}

/// What one scrape reads, gathered under the state's lock and encoded after it.
#[derive(Default)]
struct Scrape {
    packets: Vec<(Labels, u64)>,
    bytes: Vec<(Labels, u64)>,
    sock: Vec<(Labels, u64)>,
    svc_packets: Vec<(Labels, u64)>,
    svc_bytes: Vec<(Labels, u64)>,
    be_packets: Vec<(Labels, u64)>,
    be_bytes: Vec<(Labels, u64)>,
    health: Vec<(Labels, f64)>,
    services: f64,
    backends: f64,
}

fn gather(
    state: &Shared,
    pin_dir: &std::path::Path,
) -> (Scrape, Option<crate::bpf::lb_maps::Occupancy>) {
    let mut s = Scrape::default();
    let st = state.lock().unwrap();
    let mut occupancy = None;
    if let Some(rec) = &st.reconciler {
        let dp = rec.datapath();
        occupancy = dp.occupancy_reader().ok();
        for (i, n) in abi::lb::reason::NAMES.iter().enumerate() {
            let c = dp.reason_counter(i as u32);
            let l = labels([("set", "lb".into()), ("reason", n.to_string())]);
            s.packets.push((l.clone(), c.packets));
            s.bytes.push((l, c.bytes));
        }
        if let Some(sock) = dp.sock_counters() {
            for (n, v) in sock {
                s.sock.push((labels([("reason", n.to_string())]), v));
            }
        }
        for svc in &st.model.services {
            let key = lb::compile::service_key(svc);
            let Some(id) = rec.service_id(&key) else {
                continue;
            };
            let scope = if key.scope == abi::lb::SCOPE_EXTERNAL {
                "external"
            } else {
                "internal"
            };
            let l = labels([("service", svc.name.clone()), ("scope", scope.into())]);
            let c = dp.service_counter(id);
            s.svc_packets.push((l.clone(), c.packets));
            s.svc_bytes.push((l, c.bytes));
            for (addr, bid) in rec.backend_ids(&key) {
                let c = dp.backend_counter(bid);
                let l = labels([
                    ("service", svc.name.clone()),
                    ("scope", scope.into()),
                    ("backend", addr.to_string()),
                ]);
                s.be_packets.push((l.clone(), c.packets));
                s.be_bytes.push((l, c.bytes));
            }
        }
        s.services = st.model.services.len() as f64;
        s.backends = st
            .model
            .services
            .iter()
            .map(|x| x.backends.len())
            .sum::<usize>() as f64;
    }
    if let Some(ext) = &st.nodeport
        && let Some(c) = ext.status()["counters"].as_object()
    {
        for (n, c) in c {
            let l = labels([("set", "nodeport".into()), ("reason", n.clone())]);
            s.packets
                .push((l.clone(), c["packets"].as_u64().unwrap_or(0)));
            s.bytes.push((l, c["bytes"].as_u64().unwrap_or(0)));
        }
    }
    for ((svc, backend), healthy) in &st.health {
        s.health.push((
            labels([("service", svc.clone()), ("backend", backend.to_string())]),
            if *healthy { 1.0 } else { 0.0 },
        ));
    }
    drop(st);
    if let Ok(pod) = crate::bpf::podlb::counters(pin_dir) {
        for (n, c) in pod {
            let l = labels([("set", "pod".into()), ("reason", n.to_string())]);
            s.packets.push((l.clone(), c.packets));
            s.bytes.push((l, c.bytes));
        }
    }
    (s, occupancy)
}

impl collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let (s, occupancy) = gather(&self.state, self.hub.pin_dir());
        let e = &mut enc;
        counters(
            e,
            "datapath_packets",
            "Packets per counted reason of the datapath programs (set: lb = OXI_STATS, nodeport = OXI_NP_STATS, pod = OXI_POD_STATS)",
            &s.packets,
        )?;
        counters(
            e,
            "datapath_bytes",
            "Bytes per counted reason of the datapath programs",
            &s.bytes,
        )?;
        counters(
            e,
            "socket_lb_operations",
            "Socket LB operations per outcome (connect, sendmsg, recvmsg, getpeername translations and refusals)",
            &s.sock,
        )?;
        counters(
            e,
            "service_packets",
            "Packets translated per service and scope",
            &s.svc_packets,
        )?;
        counters(
            e,
            "service_bytes",
            "Bytes translated per service and scope",
            &s.svc_bytes,
        )?;
        counters(
            e,
            "backend_packets",
            "Packets sent to each backend of a service",
            &s.be_packets,
        )?;
        counters(
            e,
            "backend_bytes",
            "Bytes sent to each backend of a service",
            &s.be_bytes,
        )?;
        gauges(
            e,
            "services",
            "Services the agent applied",
            &[(Vec::new(), s.services)],
        )?;
        gauges(
            e,
            "backends",
            "Backends of the services the agent applied",
            &[(Vec::new(), s.backends)],
        )?;
        gauges(
            e,
            "backend_healthy",
            "Health-check state of an edge LB backend (1 healthy, 0 not)",
            &s.health,
        )?;
        if let Some(o) = occupancy {
            let rows = o.read();
            let mut entries = Vec::new();
            let mut max = Vec::new();
            let mut ratio = Vec::new();
            for (name, n, m) in rows {
                let l = labels([("map", name.to_string())]);
                entries.push((l.clone(), n as f64));
                max.push((l.clone(), m as f64));
                ratio.push((l, if m == 0 { 0.0 } else { n as f64 / m as f64 }));
            }
            gauges(e, "map_entries", "Entries in a datapath map", &entries)?;
            gauges(
                e,
                "map_max_entries",
                "Capacity of a datapath map (an LRU map at capacity evicts its least recently used entry)",
                &max,
            )?;
            gauges(
                e,
                "map_pressure_ratio",
                "Entries over capacity of a datapath map (0 to 1)",
                &ratio,
            )?;
        }
        let hub = &self.hub;
        let ord = std::sync::atomic::Ordering::Relaxed;
        counters(
            e,
            "events_drained",
            "Event records the agent read from the ring",
            &[(Vec::new(), hub.drained.load(ord))],
        )?;
        let mut lost = vec![(
            labels([("reason", "subscriber_slow".into())]),
            hub.subscriber_lost.load(ord),
        )];
        let mut written = Vec::new();
        if let Ok(c) = hub.datapath_counters() {
            use abi::event::stat;
            written.push((Vec::new(), c[stat::WRITTEN as usize]));
            lost.push((
                labels([("reason", "ring_full".into())]),
                c[stat::RING_FULL as usize],
            ));
            lost.push((
                labels([("reason", "rate_limited".into())]),
                c[stat::RATE_LIMITED as usize],
            ));
        }
        counters(
            e,
            "events_written",
            "Event records the datapath wrote to the ring",
            &written,
        )?;
        counters(
            e,
            "events_lost",
            "Event records lost: ring full, flow over its rate, or a monitor reading too slowly",
            &lost,
        )?;
        let h = crate::metrics::health();
        gauges(
            e,
            "ready",
            "1 once the datapath is loaded and the first sync applied",
            &[(Vec::new(), if h.ready() { 1.0 } else { 0.0 })],
        )?;
        gauges(
            e,
            "main_loop_last_tick_age_seconds",
            "Seconds since the agent's main loop last ticked",
            &[(Vec::new(), h.since_tick().as_secs_f64())],
        )?;
        Ok(())
    }
}
