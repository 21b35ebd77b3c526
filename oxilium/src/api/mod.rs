//! The agent's API: HTTP/1.1 + JSON on a unix socket (root only, mode 0600).
mod events;
mod explain;
pub mod http;
mod views;

use crate::agent::Shared;
use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::{
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
};
use tokio::{net::UnixListener, task::JoinHandle};

/// Serves the API on `socket`, which never exists with wider permissions than 0600: it is bound
/// inside a fresh 0700 folder beside its final path, restricted there, then renamed into place
/// (replacing a stale socket atomically).
pub fn serve(socket: &Path, state: Shared) -> Result<JoinHandle<()>> {
    let listener = bind_private(socket)?;
    let hub = state.lock().unwrap().events.clone();
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            events::spawn_connection(stream, state.clone(), hub.clone());
        }
    }))
}

/// Binds a unix socket at `socket` with mode 0600 from its first moment (see [`serve`]).
pub fn bind_private(socket: &Path) -> Result<UnixListener> {
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = socket
        .file_name()
        .with_context(|| format!("--socket {}: no file name", socket.display()))?;
    let private = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let result = (|| {
        let tmp = private.join("s");
        let listener =
            UnixListener::bind(&tmp).with_context(|| format!("binding {}", socket.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, socket)
            .with_context(|| format!("moving the socket to {}", socket.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

pub(crate) fn handle(state: &Shared, path: &str) -> (StatusCode, serde_json::Value) {
    if path.trim_end_matches('/') == "/status" {
        return (StatusCode::OK, status(state));
    }
    if path.trim_end_matches('/') == "/ct" {
        return answer(conntrack(state));
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
        _ => Err(anyhow::anyhow!("no such endpoint: {path}")),
    };
    answer(result)
}

fn answer(result: anyhow::Result<serde_json::Value>) -> (StatusCode, serde_json::Value) {
    match result {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => (
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": format!("{e:#}") }),
        ),
    }
}

/// The conntrack entries, walked after the state lock is released (handles of their own).
fn conntrack(state: &Shared) -> anyhow::Result<serde_json::Value> {
    let flows = {
        let st = state.lock().unwrap();
        let rec = st
            .reconciler
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no LB datapath in this agent"))?;
        rec.datapath().flow_maps()?
    };
    views::conntrack(&flows.conntrack()?)
}

/// The status; the conntrack and SNAT entries are counted (keys walked, nothing copied) after
/// the state lock is released, so a large table never holds up the agent's loop.
fn status(state: &Shared) -> serde_json::Value {
    let (mut v, reader, hub) = {
        let st = state.lock().unwrap();
        let reader = st
            .reconciler
            .as_ref()
            .map(|r| r.datapath().occupancy_reader());
        (views::status(&st), reader, st.events.clone())
    };
    v["events"] = hub.status();
    match reader {
        Some(Ok(r)) => {
            let occupancy = r.read();
            v["conntrack_entries"] = serde_json::json!(occupancy[0].1);
            v["maps"] = occupancy
                .into_iter()
                .map(|(name, entries, max)| {
                    let full = max > 0 && entries as u64 * 100 >= u64::from(max) * 95;
                    (
                        name.to_string(),
                        serde_json::json!({ "entries": entries, "max_entries": max, "full": full }),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        Some(Err(e)) => v["conntrack_entries_error"] = serde_json::json!(format!("{e:#}")),
        None => {}
    }
    v
}

/// The CNI plugin's side: POST `body` to `path`; returns the HTTP status and the JSON answer.
/// Connecting fails with an I/O error (the agent is down).
pub async fn post(
    socket: &Path,
    path: &str,
    body: &serde_json::Value,
) -> Result<(StatusCode, serde_json::Value), std::io::Error> {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let io = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| io(&e))?;
    tokio::spawn(conn);
    let req = Request::post(path)
        .header("host", "oxilium")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| io(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| io(&e))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| io(&e))?
        .to_bytes();
    let v = serde_json::from_slice(&bytes).map_err(|e| io(&e))?;
    Ok((status, v))
}

/// The CLI side: GET `path` from the agent and return the JSON body.
pub async fn get(socket: &Path, path: &str) -> Result<serde_json::Value> {
    request(socket, hyper::Method::GET, path).await
}

/// The CLI side: `method` on `path` of the agent's API, the JSON body returned.
pub async fn request(
    socket: &Path,
    method: hyper::Method,
    path: &str,
) -> Result<serde_json::Value> {
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
    let req = Request::builder()
        .method(method)
        .uri(path)
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

#[cfg(test)]
mod tests {
    use super::bind_private;
    use std::{os::unix::fs::PermissionsExt, process::Command};

    /// The socket is 0600 and owned by root: root connects, another user (nobody, through
    /// setpriv) is refused. Needs root (the test suite runs as root).
    #[tokio::test]
    async fn api_socket_is_0600_and_refuses_other_users() {
        let dir = std::env::temp_dir().join(format!("oxilium-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("api.sock");
        std::fs::write(&path, b"stale").unwrap();
        let _listener = bind_private(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        let connect = |user: Option<&str>| {
            let code = format!(
                "import socket; socket.socket(socket.AF_UNIX).connect({:?})",
                path.to_str().unwrap()
            );
            let mut cmd = match user {
                Some(u) => {
                    let mut c = Command::new("setpriv");
                    c.args(["--reuid", u, "--regid", u, "--clear-groups", "python3"]);
                    c
                }
                None => Command::new("python3"),
            };
            let out = cmd.args(["-c", &code]).output().expect("python3 / setpriv");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let root = connect(None);
        let nobody = connect(Some("65534"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert!(
            meta.file_type().is_file() || {
                use std::os::unix::fs::FileTypeExt;
                meta.file_type().is_socket()
            }
        );
        assert_eq!(entries.len(), 1, "the private folder is gone: {entries:?}");
        assert!(root.0, "root connects: {}", root.1);
        assert!(!nobody.0 && nobody.1.contains("Permission"), "{nobody:?}");
    }
}
