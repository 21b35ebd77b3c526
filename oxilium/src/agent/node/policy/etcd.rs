//! A small blocking etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`, `/v3/kv/put`,
//! `/v3/kv/txn`, `/v3/kv/deleterange`, `/v3/lease/grant`, `/v3/lease/keepalive`, and the
//! streaming `/v3/watch`), HTTP/1.1 on a plain TCP connection per call. Hand-written: the gRPC client crates need a protobuf toolchain
//! and a large dependency tree this project does not otherwise carry; the gateway is part of every
//! etcd v3 server. Keys and values are base64 in the JSON, numbers are strings.
use anyhow::{Context, Result, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde_json::{Value, json};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

#[derive(Clone, Debug)]
pub struct Etcd {
    addr: SocketAddr,
}

/// One key and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

fn unb64(v: &Value) -> String {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn num(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
        .unwrap_or(0)
}

/// The key just after every key starting with `prefix` (etcd's range end of a prefix).
fn prefix_end(prefix: &str) -> String {
    let mut b = prefix.as_bytes().to_vec();
    if let Some(last) = b.last_mut() {
        *last += 1;
    }
    String::from_utf8_lossy(&b).into_owned()
}

impl Etcd {
    /// `http://HOST:PORT` (an address, no name resolution).
    pub fn parse(endpoint: &str) -> Result<Etcd> {
        let a = endpoint.trim_start_matches("http://").trim_end_matches('/');
        let addr = a
            .parse()
            .with_context(|| format!("--kvstore-endpoint {endpoint}: expected http://IP:PORT"))?;
        Ok(Etcd { addr })
    }

    fn post(&self, path: &str, body: Value) -> Result<Value> {
        let body = body.to_string();
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .with_context(|| format!("etcd {}", self.addr))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)
            .with_context(|| format!("etcd {path}"))?;
        let text = String::from_utf8_lossy(&resp);
        let (head, payload) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("etcd {path}: no HTTP answer"))?;
        let payload = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(payload)
        } else {
            payload.to_string()
        };
        if !head.starts_with("HTTP/1.1 200") {
            bail!(
                "etcd {path}: {} {payload}",
                head.lines().next().unwrap_or("")
            );
        }
        serde_json::from_str(&payload).with_context(|| format!("etcd {path}: {payload}"))
    }

    fn kvs(v: &Value) -> Vec<Kv> {
        v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| Kv {
                key: unb64(&kv["key"]),
                value: unb64(&kv["value"]),
                mod_revision: num(&kv["mod_revision"]),
            })
            .collect()
    }

    pub fn get(&self, key: &str) -> Result<Option<Kv>> {
        let v = self.post("/v3/kv/range", json!({"key": b64(key)}))?;
        Ok(Self::kvs(&v).into_iter().next())
    }

    pub fn prefix(&self, prefix: &str) -> Result<Vec<Kv>> {
        let v = self.post(
            "/v3/kv/range",
            json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix))}),
        )?;
        Ok(Self::kvs(&v))
    }

    pub fn put(&self, key: &str, value: &str, lease: Option<i64>) -> Result<()> {
        let mut body = json!({"key": b64(key), "value": b64(value)});
        if let Some(l) = lease {
            body["lease"] = l.to_string().into();
        }
        self.post("/v3/kv/put", body).map(|_| ())
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.post("/v3/kv/deleterange", json!({"key": b64(key)}))
            .map(|_| ())
    }

    /// Puts every pair when none of their keys exists (compare-and-swap); false otherwise.
    pub fn create_all(&self, kvs: &[(&str, &str)]) -> Result<bool> {
        let compare: Vec<Value> = kvs
            .iter()
            .map(|(k, _)| json!({"key": b64(k), "target": "CREATE", "create_revision": "0"}))
            .collect();
        let success: Vec<Value> = kvs
            .iter()
            .map(|(k, v)| json!({"request_put": {"key": b64(k), "value": b64(v)}}))
            .collect();
        let v = self.post(
            "/v3/kv/txn",
            json!({"compare": compare, "success": success}),
        )?;
        Ok(v["succeeded"].as_bool() == Some(true))
    }

    /// Deletes `keys` when `key` is still at `mod_revision`; false otherwise.
    pub fn delete_if_unchanged(&self, key: &str, mod_revision: i64, keys: &[&str]) -> Result<bool> {
        let success: Vec<Value> = keys
            .iter()
            .map(|k| json!({"request_delete_range": {"key": b64(k)}}))
            .collect();
        let v = self.post(
            "/v3/kv/txn",
            json!({"compare": [{"key": b64(key), "target": "MOD", "mod_revision": mod_revision.to_string()}],
                   "success": success}),
        )?;
        Ok(v["succeeded"].as_bool() == Some(true))
    }

    pub fn lease_grant(&self, ttl_s: u64) -> Result<i64> {
        let v = self.post("/v3/lease/grant", json!({"TTL": ttl_s.to_string()}))?;
        Ok(num(&v["ID"]))
    }

    /// One keepalive; false when the lease is gone (expired).
    pub fn lease_keepalive(&self, id: i64) -> Result<bool> {
        let v = self.post("/v3/lease/keepalive", json!({"ID": id.to_string()}))?;
        Ok(num(&v["result"]["TTL"]) > 0)
    }
}

/// A change seen by [`Etcd::watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// The watch is in place: from here on every change is reported (read the current state
    /// now to miss nothing).
    Created,
    Put(Kv),
    Delete(String),
}

/// How long a watch may stay silent before it is opened again (a lost connection to a stopped
/// etcd is noticed by then at the latest).
const WATCH_IDLE: Duration = Duration::from_secs(300);

impl Etcd {
    /// Watches every key under `prefix`: `/v3/watch` with a create request, its answer a chunked
    /// stream of JSON messages, each handed to `on` as events. Returns when the stream ends, goes
    /// silent for [`WATCH_IDLE`] or fails (the caller opens it again), or when `on` returns false.
    pub fn watch(&self, prefix: &str, mut on: impl FnMut(WatchEvent) -> bool) -> Result<()> {
        let body =
            json!({"create_request": {"key": b64(prefix), "range_end": b64(&prefix_end(prefix))}})
                .to_string();
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .with_context(|| format!("etcd {}", self.addr))?;
        s.set_read_timeout(Some(WATCH_IDLE))?;
        write!(
            s,
            "POST /v3/watch HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        let mut raw: Vec<u8> = Vec::new();
        let mut head_done = false;
        let mut chunks = Dechunker::default();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(()),
                Err(e) => return Err(e).context("etcd /v3/watch"),
            };
            raw.extend_from_slice(&buf[..n]);
            if !head_done {
                let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&raw[..end]).to_string();
                if !head.starts_with("HTTP/1.1 200") {
                    bail!("etcd /v3/watch: {}", head.lines().next().unwrap_or(""));
                }
                raw.drain(..end + 4);
                head_done = true;
            }
            chunks.feed(&mut raw);
            for msg in chunks.messages() {
                for ev in watch_events(&msg)? {
                    if !on(ev) {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The events of one watch message (`{"result": {...}}`).
fn watch_events(msg: &Value) -> Result<Vec<WatchEvent>> {
    let r = &msg["result"];
    if msg.get("error").is_some() || r["canceled"].as_bool() == Some(true) {
        bail!("etcd watch ended: {msg}");
    }
    let mut out = Vec::new();
    if r["created"].as_bool() == Some(true) {
        out.push(WatchEvent::Created);
    }
    for e in r["events"].as_array().into_iter().flatten() {
        let kv = &e["kv"];
        let key = unb64(&kv["key"]);
        // PUT is the default (0) and left out of the JSON.
        if e["type"].as_str() == Some("DELETE") {
            out.push(WatchEvent::Delete(key));
        } else {
            out.push(WatchEvent::Put(Kv {
                key,
                value: unb64(&kv["value"]),
                mod_revision: num(&kv["mod_revision"]),
            }));
        }
    }
    Ok(out)
}

/// Undoes HTTP/1.1 chunked transfer encoding as bytes arrive, and splits what it got into the
/// JSON messages the gateway streams.
#[derive(Default)]
struct Dechunker {
    /// Dechunked bytes not yet parsed as a whole message.
    data: Vec<u8>,
}

impl Dechunker {
    /// Moves every complete chunk of `raw` into `data`.
    fn feed(&mut self, raw: &mut Vec<u8>) {
        loop {
            let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = String::from_utf8_lossy(&raw[..eol]);
            let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            else {
                // Not a chunk header: skip the line.
                raw.drain(..eol + 2);
                continue;
            };
            if raw.len() < eol + 2 + n + 2 {
                return;
            }
            self.data.extend_from_slice(&raw[eol + 2..eol + 2 + n]);
            raw.drain(..eol + 2 + n + 2);
        }
    }

    /// The complete JSON messages received so far (an incomplete one stays for later).
    fn messages(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.data).into_iter::<Value>();
        let mut used = 0;
        while let Some(Ok(v)) = it.next() {
            used = it.byte_offset();
            out.push(v);
        }
        self.data.drain(..used);
        let blank = self
            .data
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        self.data.drain(..blank);
        out
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out += &after[..n];
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_stream_split_anywhere_gives_its_events() {
        let put = json!({"result": {"events": [{"kv": {"key": b64("p/a"), "value": b64("7"), "mod_revision": "5"}}]}});
        let del = json!({"result": {"events": [{"type": "DELETE", "kv": {"key": b64("p/a")}}]}});
        let created = json!({"result": {"created": true}});
        let mut wire = Vec::new();
        for m in [&created, &put, &del] {
            let text = format!("{m}\n");
            wire.extend_from_slice(format!("{:x}\r\n{text}\r\n", text.len()).as_bytes());
        }
        for cut in 1..wire.len() {
            // Two reads, split anywhere; what a read leaves unconsumed waits for the next.
            let (mut d, mut raw, mut events) = (Dechunker::default(), Vec::new(), Vec::new());
            for part in [&wire[..cut], &wire[cut..]] {
                raw.extend_from_slice(part);
                d.feed(&mut raw);
                for m in d.messages() {
                    events.extend(watch_events(&m).unwrap());
                }
            }
            assert!(raw.is_empty() && d.data.is_empty(), "cut at {cut}");
            assert_eq!(
                events,
                [
                    WatchEvent::Created,
                    WatchEvent::Put(Kv {
                        key: "p/a".into(),
                        value: "7".into(),
                        mod_revision: 5
                    }),
                    WatchEvent::Delete("p/a".into()),
                ],
                "cut at {cut}"
            );
        }
    }
}
