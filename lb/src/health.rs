//! Backend health checks for the edge load balancer: a Tokio prober that runs one task per target,
//! tracks consecutive successes and failures against thresholds, and reports transitions.
//!
//! * Every target starts **healthy** (see [`Prober::with_initial`] for the other choice): a reload or
//!   an agent restart must not pull every backend out of rotation while the first probes run.
//! * `unhealthy_threshold` consecutive failures make a healthy target unhealthy; `healthy_threshold`
//!   consecutive successes make an unhealthy one healthy again. Other results change nothing.
//! * A [`HealthEvent`] is sent only on a transition, never for the initial state.
//! * [`Prober::set_targets`] replaces the whole set: targets whose id and [`Target`] are unchanged keep
//!   their state, counters and timer; a changed target restarts its probing but keeps its current
//!   health (so a known-dead backend stays out until it proves itself); new targets start with the
//!   initial state; removed targets stop at once.
//! * Dropping the [`Prober`] stops every probe task.
//!
//! It uses the edge config ([`crate::config`]) only to build a [`Check`] or [`Target`] from the config's
//! health check in one call ([`Check::from_config`], [`Target::for_backend`]).

mod probe;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::{BackendCfg, HealthCheck, HealthCheckKind};
use tokio::runtime::Handle;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

pub use probe::{ProbeError, probe};

/// What is probed, and how.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The address probed: the backend's address and the health-check port.
    pub address: SocketAddr,
    pub check: Check,
}

impl Target {
    /// The target for one backend of a service whose health check is `hc`: the backend's address, and
    /// the check's port or else the backend's port.
    pub fn for_backend(hc: &HealthCheck, backend: &BackendCfg) -> Target {
        Target {
            address: SocketAddr::new(backend.address, hc.port_for(backend)),
            check: Check::from_config(hc),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Check {
    pub kind: CheckKind,
    /// Time between the starts of two probes.
    pub interval: Duration,
    /// Budget for one probe (connect, and for HTTP the request and response head); should be < interval.
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy target healthy (0 is treated as 1).
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy target unhealthy (0 is treated as 1).
    pub unhealthy_threshold: u32,
}

impl Check {
    pub fn from_config(hc: &HealthCheck) -> Check {
        Check {
            kind: match &hc.kind {
                HealthCheckKind::Tcp => CheckKind::Tcp,
                HealthCheckKind::Http {
                    path,
                    expect_status,
                } => CheckKind::Http {
                    path: path.clone(),
                    expect_status: *expect_status,
                },
            },
            interval: hc.interval,
            timeout: hc.timeout,
            healthy_threshold: hc.healthy_threshold,
            unhealthy_threshold: hc.unhealthy_threshold,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// Success: a TCP connection is established within the timeout.
    Tcp,
    /// Success: `GET path HTTP/1.1` answers with `expect_status`, or any 2xx if `None`.
    Http {
        path: String,
        expect_status: Option<u16>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn is_healthy(self) -> bool {
        self == Health::Healthy
    }
}

/// A transition of one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent<K> {
    pub id: K,
    pub healthy: bool,
}

struct Running {
    target: Target,
    healthy: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// Probes a set of targets keyed by `K` (e.g. `(service name, backend address)`).
pub struct Prober<K> {
    targets: HashMap<K, Running>,
    events: UnboundedSender<HealthEvent<K>>,
    initial: Health,
    runtime: Handle,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> Prober<K> {
    /// A prober whose new targets start healthy, and the receiver of its transitions.
    ///
    /// Must be called within a Tokio runtime (probe tasks are spawned on it); panics otherwise.
    /// `set_targets` may then be called from any thread.
    pub fn new() -> (Prober<K>, UnboundedReceiver<HealthEvent<K>>) {
        Self::with_initial(Health::Healthy)
    }

    /// Like [`Prober::new`], choosing the state new targets start in.
    pub fn with_initial(initial: Health) -> (Prober<K>, UnboundedReceiver<HealthEvent<K>>) {
        let (events, rx) = unbounded_channel();
        let prober = Prober {
            targets: HashMap::new(),
            events,
            initial,
            runtime: Handle::current(),
        };
        (prober, rx)
    }

    /// Replace the set of targets (see the crate docs for what is kept and what restarts).
    /// If an id appears more than once, the last one wins.
    ///
    /// A probe already running when its target is removed or changed may still deliver one late event
    /// for that id; [`Prober::state`] is always current, so a consumer can check it when that matters.
    pub fn set_targets(&mut self, targets: impl IntoIterator<Item = (K, Target)>) {
        let targets: HashMap<K, Target> = targets.into_iter().collect(); // the last one wins
        let mut old = std::mem::take(&mut self.targets);
        for (id, target) in targets {
            let running = match old.remove(&id) {
                Some(r) if r.target == target => r,
                Some(r) => {
                    r.task.abort();
                    let healthy = r.healthy.load(Ordering::Relaxed);
                    self.start(id.clone(), target, healthy)
                }
                None => self.start(id.clone(), target, self.initial.is_healthy()),
            };
            self.targets.insert(id, running);
        }
        for (_, removed) in old {
            removed.task.abort();
        }
    }

    /// The current health of `id`, or `None` if it is not a target.
    pub fn state(&self, id: &K) -> Option<Health> {
        self.targets
            .get(id)
            .map(|r| health(r.healthy.load(Ordering::Relaxed)))
    }

    /// Every target and its current health.
    pub fn states(&self) -> impl Iterator<Item = (&K, Health)> {
        self.targets
            .iter()
            .map(|(k, r)| (k, health(r.healthy.load(Ordering::Relaxed))))
    }

    /// The target probed under `id`.
    pub fn target(&self, id: &K) -> Option<&Target> {
        self.targets.get(id).map(|r| &r.target)
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn start(&self, id: K, target: Target, healthy: bool) -> Running {
        let flag = Arc::new(AtomicBool::new(healthy));
        let task = self
            .runtime
            .spawn(run(id, target.clone(), flag.clone(), self.events.clone()));
        Running {
            target,
            healthy: flag,
            task,
        }
    }
}

impl<K> Drop for Prober<K> {
    fn drop(&mut self) {
        for r in self.targets.values() {
            r.task.abort();
        }
    }
}

fn health(healthy: bool) -> Health {
    if healthy {
        Health::Healthy
    } else {
        Health::Unhealthy
    }
}

/// The probe loop of one target: first probe at once, then every `interval` (a probe that overruns
/// delays the next rather than bunching them up).
async fn run<K>(
    id: K,
    target: Target,
    healthy: Arc<AtomicBool>,
    events: UnboundedSender<HealthEvent<K>>,
) where
    K: Clone + Send + 'static,
{
    let check = &target.check;
    let mut ticker = tokio::time::interval(check.interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        ticker.tick().await;
        let result = probe(target.address, &check.kind, check.timeout).await;
        let is_healthy = healthy.load(Ordering::Relaxed);
        let flip = match &result {
            Ok(()) => {
                successes = successes.saturating_add(1);
                failures = 0;
                !is_healthy && successes >= check.healthy_threshold.max(1)
            }
            Err(e) => {
                tracing::debug!(address = %target.address, error = %e, "health probe failed");
                failures = failures.saturating_add(1);
                successes = 0;
                is_healthy && failures >= check.unhealthy_threshold.max(1)
            }
        };
        if flip {
            let now = !is_healthy;
            healthy.store(now, Ordering::Relaxed);
            match &result {
                Ok(()) => tracing::info!(address = %target.address, "backend healthy"),
                Err(e) => {
                    tracing::info!(address = %target.address, error = %e, "backend unhealthy")
                }
            }
            // A dropped receiver only means nobody listens; keep probing so `state` stays current.
            let _ = events.send(HealthEvent {
                id: id.clone(),
                healthy: now,
            });
        }
    }
}
