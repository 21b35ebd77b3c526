//! The agent's side of datapath events (records in `abi::event`): it drains the pinned
//! `OXI_EVENTS` ring (tokio `AsyncFd` over aya's `RingBuf`), turns each record into a flow
//! record ([`record`]) with the service's name, and fans the records out to the API's
//! subscribers (`GET /events`, newline-delimited JSON, followed by `oxilium monitor`). It also
//! switches the datapath's event kinds at run time (`OXI_EVENT_CONFIG`) and reads the events'
//! counters for `status` and the metrics.
pub mod filter;
pub mod record;
pub mod wire;

use crate::agent::Shared;
use abi::event::{self as ev, Event, EventConfig, names};
use anyhow::{Context, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use record::FlowRecord;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{io::unix::AsyncFd, sync::broadcast};
use tracing::{info, warn};

/// Records a slow subscriber may fall behind before it is told it lost some.
const SUBSCRIBER_QUEUE: usize = 8192;

/// The agent's event flags (`oxilium agent --events-*`).
#[derive(clap::Args, Debug, Clone)]
pub struct EventFlags {
    /// Size of the datapath event ring in bytes (a power of two, at least 4096). Pinned rings
    /// keep their size until the pins are removed.
    #[arg(long, default_value_t = ev::DEFAULT_RING_BYTES)]
    pub events_ring_bytes: u32,
    /// Events a flow may write per second (after its burst); a flood of one flow cannot fill
    /// the ring.
    #[arg(long, default_value_t = ev::DEFAULT_FLOW_RATE)]
    pub events_flow_rate: u32,
    /// Events a flow may write at once before its rate applies.
    #[arg(long, default_value_t = ev::DEFAULT_FLOW_BURST)]
    pub events_flow_burst: u32,
    /// Flows the per-flow rate limiter remembers (an LRU; a flow it forgot gets its burst
    /// again) [default: as many as the ring holds events, --events-ring-bytes / 112, at least
    /// 1024]. Pinned limiters keep their size until the pins are removed.
    #[arg(long)]
    pub events_max_flows: Option<u32>,
    /// Start with the per-packet trace points on (switch at run time: `oxilium events trace`).
    #[arg(long)]
    pub events_trace: bool,
}

impl EventFlags {
    pub fn check(&self) -> Result<()> {
        let b = self.events_ring_bytes;
        if b < 4096 || !b.is_power_of_two() {
            anyhow::bail!("--events-ring-bytes: {b} is not a power of two of at least 4096");
        }
        if self.events_flow_rate == 0 {
            anyhow::bail!("--events-flow-rate: must be at least 1");
        }
        if self.events_flow_burst == 0 {
            anyhow::bail!("--events-flow-burst: must be at least 1");
        }
        self.sizes().map(|_| ())
    }

    /// The ring's and the rate limiter's sizes.
    pub fn sizes(&self) -> Result<crate::bpf::sizes::Events> {
        use crate::bpf::sizes::{self, LRU_ENTRIES_RANGE, default_event_flows};
        let ring_bytes = self.events_ring_bytes;
        let flows = match self.events_max_flows {
            Some(n) => sizes::check("--events-max-flows", n, LRU_ENTRIES_RANGE)?,
            None => default_event_flows(ring_bytes),
        };
        Ok(sizes::Events { ring_bytes, flows })
    }

    fn config(&self) -> EventConfig {
        EventConfig {
            flags: if self.events_trace { ev::CFG_TRACE } else { 0 },
            flow_rate: self.events_flow_rate,
            flow_burst: self.events_flow_burst,
            _pad: 0,
        }
    }
}

/// Fan-out of flow records to the API's subscribers, and the drain's counters.
pub struct Hub {
    tx: broadcast::Sender<Arc<FlowRecord>>,
    /// Records read from the ring.
    pub drained: AtomicU64,
    /// Records a subscriber missed because it read too slowly.
    pub subscriber_lost: AtomicU64,
    pin_dir: PathBuf,
}

impl Hub {
    pub fn new(pin_dir: &Path) -> Arc<Hub> {
        let (tx, _) = broadcast::channel(SUBSCRIBER_QUEUE);
        Arc::new(Hub {
            tx,
            drained: AtomicU64::new(0),
            subscriber_lost: AtomicU64::new(0),
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FlowRecord>> {
        self.tx.subscribe()
    }

    /// Publishes a record made in user space (the L7 proxy's).
    pub fn publish(&self, r: FlowRecord) {
        let _ = self.tx.send(Arc::new(r));
    }

    fn config_map(&self) -> Result<Array<MapData, EventConfig>> {
        let p = self.pin_dir.join(names::CONFIG);
        let data = MapData::from_pin(&p)
            .with_context(|| format!("{} (no datapath events in this role)", p.display()))?;
        Ok(Array::try_from(Map::Array(data))?)
    }

    /// The datapath's event switches.
    pub fn config(&self) -> Result<EventConfig> {
        Ok(self.config_map()?.get(&0, 0)?)
    }

    /// Rewrites the datapath's event switches (takes effect on the next packet).
    pub fn set_config(&self, c: &EventConfig) -> Result<()> {
        self.config_map()?.set(0, c, 0)?;
        Ok(())
    }

    /// Switches the trace points on or off.
    pub fn set_trace(&self, on: bool) -> Result<EventConfig> {
        let mut c = self.config()?;
        c.flags = if on {
            c.flags | ev::CFG_TRACE
        } else {
            c.flags & !ev::CFG_TRACE
        };
        self.set_config(&c)?;
        info!(trace = on, "datapath trace points switched");
        Ok(c)
    }

    /// The datapath's event counters (`abi::event::stat`), summed over the CPUs.
    pub fn datapath_counters(&self) -> Result<[u64; ev::stat::COUNT as usize]> {
        let p = self.pin_dir.join(names::STATS);
        let data = MapData::from_pin(&p).with_context(|| format!("{}", p.display()))?;
        let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
        let mut out = [0u64; ev::stat::COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            *o = map.get(&(i as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
        }
        Ok(out)
    }

    /// The events part of `status`.
    pub fn status(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "drained": self.drained.load(Ordering::Relaxed),
            "subscribers": self.tx.receiver_count(),
            "subscriber_lost": self.subscriber_lost.load(Ordering::Relaxed),
        });
        if let Ok(c) = self.config() {
            v["trace"] = serde_json::json!(c.flags & ev::CFG_TRACE != 0);
            v["flow_rate"] = serde_json::json!(c.flow_rate);
            v["flow_burst"] = serde_json::json!(c.flow_burst);
        }
        if let Ok(c) = self.datapath_counters() {
            for (i, n) in ev::stat::NAMES.iter().enumerate() {
                v[*n] = serde_json::json!(c[i]);
            }
        }
        v
    }
}

/// Writes the flags' settings and starts draining the ring, if the role's objects carry one
/// (a node with only the socket LB has none: the subscribers then get no datapath records).
pub fn start(flags: &EventFlags, hub: &Arc<Hub>, state: &Shared) {
    let ring_pin = hub.pin_dir.join(names::EVENTS);
    if !ring_pin.exists() {
        info!("no datapath event ring in this role");
        return;
    }
    if let Err(e) = hub.set_config(&flags.config()) {
        warn!("datapath events not configured: {e:#}");
    }
    let (hub, state) = (hub.clone(), state.clone());
    tokio::spawn(async move {
        if let Err(e) = drain(&ring_pin, &hub, &state).await {
            warn!("datapath events stopped: {e:#}");
        }
    });
}

async fn drain(pin: &Path, hub: &Hub, state: &Shared) -> Result<()> {
    let data = MapData::from_pin(pin).with_context(|| format!("{}", pin.display()))?;
    let ring = RingBuf::try_from(Map::RingBuf(data))?;
    // SAFETY: the ring owns its fd (the map's) until it is dropped with the AsyncFd.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut names = Names::default();
    let mut batch: Vec<Event> = Vec::with_capacity(256);
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<Event>() {
                // SAFETY: the program writes whole `Event`s; read unaligned from the ring page.
                batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) });
            }
            if batch.len() == batch.capacity() {
                break;
            }
        }
        let more = batch.len() == batch.capacity();
        if !more {
            guard.clear_ready();
        }
        drop(guard);
        hub.drained.fetch_add(batch.len() as u64, Ordering::Relaxed);
        if hub.tx.receiver_count() > 0 {
            let clock = record::Clock::now();
            names.refresh(state, &batch);
            for e in batch.drain(..) {
                let _ = hub
                    .tx
                    .send(Arc::new(record::from_event(&e, &clock, &names)));
            }
        } else {
            batch.clear();
        }
    }
}

/// Service and interface names for the records, refreshed from the agent's state when a record
/// names an id not seen yet (at most once a second).
#[derive(Default)]
pub struct Names {
    pub services: HashMap<u32, String>,
    pub ifaces: HashMap<u32, String>,
    /// This node's pods by address (`namespace/name`), with the CNI side (`--cni`).
    pub pods: Option<Arc<crate::agent::node::l7::Endpoints>>,
    pods_tried: Option<Instant>,
    refreshed: Option<Instant>,
}

impl Names {
    /// `namespace/name` of a pod of this node at `addr`.
    pub fn pod(&self, addr: std::net::IpAddr) -> Option<String> {
        self.pods.as_ref()?.pod_name(addr)
    }
}

impl Names {
    /// The service names of the applied model, and the agent's interfaces.
    pub fn from_state(state: &Shared) -> Names {
        let mut n = Names::default();
        let st = state.lock().unwrap();
        if let Some(rec) = &st.reconciler {
            for s in &st.model.services {
                if let Some(id) = rec.service_id(&lb::compile::service_key(s)) {
                    n.services.insert(id, s.name.clone());
                }
            }
        }
        n
    }

    fn refresh(&mut self, state: &Shared, batch: &[Event]) {
        if self.pods.is_none()
            && self
                .pods_tried
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            // The directory is shared and kept current by the policy agent: taken once.
            self.pods_tried = Some(Instant::now());
            let cni = state.lock().unwrap().cni.clone();
            if let Some(c) = cni
                && let Ok(a) = c.try_lock()
            {
                self.pods = Some(a.policy.l7.clone());
            }
        }
        let missing = batch.iter().any(|e| {
            (e.service_id != 0 && !self.services.contains_key(&e.service_id))
                || (e.ifindex != 0 && !self.ifaces.contains_key(&e.ifindex))
        });
        if !missing
            || self
                .refreshed
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.refreshed = Some(Instant::now());
        let st = state.lock().unwrap();
        if let Some(rec) = &st.reconciler {
            for s in &st.model.services {
                let key = lb::compile::service_key(s);
                if let Some(id) = rec.service_id(&key) {
                    self.services.insert(id, s.name.clone());
                }
            }
        }
        drop(st);
        for e in batch {
            if e.ifindex != 0 && !self.ifaces.contains_key(&e.ifindex) {
                let mut buf = [0u8; libc::IF_NAMESIZE];
                // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into `buf`.
                let p = unsafe { libc::if_indextoname(e.ifindex, buf.as_mut_ptr().cast()) };
                let name = if p.is_null() {
                    String::new()
                } else {
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    String::from_utf8_lossy(&buf[..end]).into_owned()
                };
                self.ifaces.insert(e.ifindex, name);
            }
        }
    }
}
