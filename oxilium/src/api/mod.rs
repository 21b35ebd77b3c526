//! The agent's API: HTTP/1.1 + JSON on a unix socket (root only, mode 0600).
pub mod http;
mod views;

use crate::agent::Shared;
use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::{Request, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use std::{os::unix::fs::PermissionsExt, path::Path};
use tokio::{net::UnixListener, task::JoinHandle};

pub fn serve(socket: &Path, state: Shared) -> Result<JoinHandle<()>> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            http::spawn_connection(stream, "api", move |req| handle(&state, req));
        }
    }))
}

fn handle(state: &Shared, req: &Request<Incoming>) -> (StatusCode, serde_json::Value) {
    let path = req.uri().path().to_string();
    if path.trim_end_matches('/') == "/status" {
        return (StatusCode::OK, status(state));
    }
    let st = state.lock().unwrap();
    let result = match path
        .split('/')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["services"] => Ok(views::services(&st)),
        ["bpf", "lb"] => views::bpf_lb(&st),
        ["maglev", name] => views::maglev(&st, name),
        ["ct"] => views::conntrack(&st),
        _ => Err(anyhow::anyhow!("no such endpoint: {path}")),
    };
    match result {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => (
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": format!("{e:#}") }),
        ),
    }
}

/// The status; the conntrack entries are counted (keys walked, nothing copied) after the state
/// lock is released, so a large conntrack table never holds up the agent's loop.
fn status(state: &Shared) -> serde_json::Value {
    let (mut v, counter) = {
        let st = state.lock().unwrap();
        let counter = st
            .reconciler
            .as_ref()
            .map(|r| r.datapath().conntrack_counter());
        (views::status(&st), counter)
    };
    match counter {
        Some(Ok(c)) => v["conntrack_entries"] = serde_json::json!(c.count()),
        Some(Err(e)) => v["conntrack_entries_error"] = serde_json::json!(format!("{e:#}")),
        None => {}
    }
    v
}

/// The CLI side: GET `path` from the agent and return the JSON body.
pub async fn get(socket: &Path, path: &str) -> Result<serde_json::Value> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| {
            format!(
                "connecting to the agent at {} (is it running? are you root?)",
                socket.display()
            )
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "oxilium")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).context("agent sent invalid JSON")?;
    if !status.is_success() {
        anyhow::bail!(
            "{}",
            v.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("request failed")
        );
    }
    Ok(v)
}
