//! A small blocking etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`, `/v3/kv/put`,
//! `/v3/kv/txn`, `/v3/kv/deleterange`, `/v3/lease/grant`, `/v3/lease/keepalive`), HTTP/1.1 on a
//! plain TCP connection per call. Hand-written: the gRPC client crates need a protobuf toolchain
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
