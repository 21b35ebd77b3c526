//! The health-check node ports of `externalTrafficPolicy: Local` Services: for each, an HTTP
//! server on the node answering `/healthz` with the number of the Service's local endpoints —
//! 200 when there is at least one, 503 otherwise — so an external load balancer only sends to
//! nodes that can serve the traffic locally (what kube-proxy serves on `healthCheckNodePort`).
use hyper::StatusCode;
use serde_json::json;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{info, warn};

/// What a port answers: the Service and its local endpoint count.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    namespace: String,
    name: String,
    local_endpoints: u32,
}

#[derive(Default)]
pub struct HealthServers {
    answers: Arc<Mutex<BTreeMap<u16, Answer>>>,
    listeners: BTreeMap<u16, JoinHandle<()>>,
}

impl HealthServers {
    /// Makes the served ports and answers those of `checks`: new ports start listening, gone
    /// ones stop, counts change in place.
    pub fn update(&mut self, checks: &[k8s::frontend::HealthCheck]) {
        let want: BTreeMap<u16, Answer> = checks
            .iter()
            .map(|c| {
                let a = Answer {
                    namespace: c.service.namespace.to_string(),
                    name: c.service.name.to_string(),
                    local_endpoints: c.local_endpoints,
                };
                (c.node_port, a)
            })
            .collect();
        *self.answers.lock().unwrap() = want.clone();
        self.listeners.retain(|port, task| {
            let keep = want.contains_key(port);
            if !keep {
                task.abort();
                info!(port, "health-check node port closed");
            }
            keep
        });
        for port in want.keys() {
            if self.listeners.contains_key(port) {
                continue;
            }
            match listen(*port) {
                Ok(l) => {
                    info!(port, "health-check node port open");
                    self.listeners
                        .insert(*port, tokio::spawn(serve(l, *port, self.answers.clone())));
                }
                Err(e) => warn!(port, "health-check node port: {e}"),
            }
        }
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for t in self.listeners.values() {
            t.abort();
        }
    }
}

/// A dual-stack listener on every address of the node (IPv4-only when IPv6 is off).
fn listen(port: u16) -> std::io::Result<TcpListener> {
    let std = std::net::TcpListener::bind(SocketAddr::from(([0u16; 8], port)))
        .or_else(|_| std::net::TcpListener::bind(SocketAddr::from(([0u8; 4], port))))?;
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

async fn serve(listener: TcpListener, port: u16, answers: Arc<Mutex<BTreeMap<u16, Answer>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let answers = answers.clone();
        crate::api::http::spawn_connection(stream, "health-check node port", move |_req| {
            respond(answers.lock().unwrap().get(&port).cloned())
        });
    }
}

fn respond(a: Option<Answer>) -> (StatusCode, serde_json::Value) {
    match a {
        Some(a) => {
            let code = if a.local_endpoints > 0 {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = json!({
                "service": {"namespace": a.namespace, "name": a.name},
                "localEndpoints": a.local_endpoints,
            });
            (code, body)
        }
        None => (
            StatusCode::NOT_FOUND,
            json!({"error": "no such health check"}),
        ),
    }
}
