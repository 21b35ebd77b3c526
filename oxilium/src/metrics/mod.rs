//! Prometheus metrics and health probes on `--metrics-address` (HTTP over TCP):
//! - `GET /metrics`: the Prometheus text format (0.0.4) of [`registry`]: the agent's own metrics
//!   ([`agent`]: reconcile durations and errors) and, read from the pinned maps at scrape time,
//!   the datapath's ([`datapath`]). Every metric is listed in docs/metrics.md.
//! - `GET /healthz`: 200 while the agent's main loop ticked within [`STALE`], else 503.
//! - `GET /readyz`: 200 once the datapath is loaded and the first sync of the source applied.
//!
//! Other parts of the agent add their metrics to the same registry ([`with_registry`]).
mod datapath;

use crate::agent::Shared;
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use std::{
    net::SocketAddr,
    sync::{
        LazyLock, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::net::TcpListener;

/// `/healthz` fails when the main loop has not ticked for this long.
pub const STALE: Duration = Duration::from_secs(30);

/// The agent's metrics that are not read from the kernel.
pub struct AgentMetrics {
    /// Seconds a model took from compile to the kernel, per source kind (whole / delta).
    pub reconcile_seconds: Family<Vec<(String, String)>, Histogram>,
    /// Applies that failed (nothing, or not everything, written).
    pub reconcile_errors: Family<Vec<(String, String)>, Counter>,
}

static AGENT: LazyLock<AgentMetrics> = LazyLock::new(|| AgentMetrics {
    reconcile_seconds: Family::new_with_constructor(|| {
        Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
    }),
    reconcile_errors: Family::default(),
});

pub fn agent() -> &'static AgentMetrics {
    &AGENT
}

/// Records one apply of a model (`kind`: "whole" or "delta") that took `took`.
pub fn reconciled(kind: &str, took: Duration, ok: bool) {
    let l = vec![("kind".to_string(), kind.to_string())];
    AGENT
        .reconcile_seconds
        .get_or_create(&l)
        .observe(took.as_secs_f64());
    if !ok {
        AGENT.reconcile_errors.get_or_create(&l).inc();
    }
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    let mut r = Registry::with_prefix("oxilium");
    r.register(
        "reconcile_duration_seconds",
        "Time to compile a model and write its difference to the kernel",
        AGENT.reconcile_seconds.clone(),
    );
    r.register(
        "reconcile_errors",
        "Model applies that failed (the datapath keeps what it had)",
        AGENT.reconcile_errors.clone(),
    );
    Mutex::new(r)
});

/// The registry every metric of the agent is in: register more with this (names get the
/// `oxilium_` prefix).
pub fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    f(&mut REGISTRY.lock().unwrap())
}

/// Liveness and readiness.
pub struct Health {
    started: Instant,
    /// ms since `started` of the main loop's last tick.
    tick_ms: AtomicU64,
    loaded: AtomicBool,
    synced: AtomicBool,
}

static HEALTH: LazyLock<Health> = LazyLock::new(|| Health {
    started: Instant::now(),
    tick_ms: AtomicU64::new(0),
    loaded: AtomicBool::new(false),
    synced: AtomicBool::new(false),
});

pub fn health() -> &'static Health {
    &HEALTH
}

impl Health {
    /// The main loop is alive.
    pub fn tick(&self) {
        self.tick_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    /// The datapath is loaded and attached.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Relaxed);
        self.tick();
    }
    /// The first state of the source was applied.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
        self.tick();
    }
    pub fn since_tick(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.tick_ms.load(Ordering::Relaxed)))
    }
    pub fn live(&self) -> bool {
        self.since_tick() < STALE
    }
    pub fn ready(&self) -> bool {
        self.loaded.load(Ordering::Relaxed) && self.synced.load(Ordering::Relaxed)
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "live": self.live(),
            "ready": self.ready(),
            "datapath_loaded": self.loaded.load(Ordering::Relaxed),
            "first_sync_applied": self.synced.load(Ordering::Relaxed),
            "since_last_tick_ms": self.since_tick().as_millis() as u64,
        })
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` (bound now: a bad or busy address is an
/// error before anything else starts).
pub async fn serve(addr: SocketAddr, state: Shared) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-address {addr}"))?;
    let hub = state.lock().unwrap().events.clone();
    with_registry(|r| {
        r.register_collector(Box::new(datapath::Collector {
            state: state.clone(),
            hub,
        }))
    });
    health().tick();
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            crate::api::http::spawn_service(stream, "metrics", answer);
        }
    }))
}

fn answer(req: &hyper::Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let h = health();
    let probe = |ok: bool| {
        let code = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        crate::api::http::json_response(code, &h.json())
    };
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            let r = with_registry(|r| {
                prometheus_client::encoding::prometheus_text::encode(&mut body, r)
            });
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            if r.is_err() {
                *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/healthz" => probe(h.live()),
        "/readyz" => probe(h.live() && h.ready()),
        p => crate::api::http::json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": format!("no such endpoint: {p}") }),
        ),
    }
}
