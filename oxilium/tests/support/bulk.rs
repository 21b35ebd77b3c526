//! Bulk transfers for the offload tests: an iperf3 server and a Python HTTP server with an 8 MiB
//! file in a namespace, a client-side iperf3 upload and a curl download that checks every byte.
use super::netns::Netns;
use serde_json::Value;
use std::process::{Child, Stdio};

pub const IPERF: u16 = 5201;
pub const HTTP: u16 = 8000;
pub const BLOB: usize = 8 << 20;

/// The 8 MiB file's contents (not periodic in any small stride).
pub fn blob() -> Vec<u8> {
    (0..BLOB).map(|i| (i * 7 + i / 4093) as u8).collect()
}

/// iperf3 (port [`IPERF`]) and an HTTP server with `/blob` (port [`HTTP`]) on `addr` in `ns`;
/// killed and their folder removed on drop.
pub struct BulkServers {
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

impl BulkServers {
    pub fn start(ns: &Netns, addr: &str) -> BulkServers {
        let dir = std::env::temp_dir().join(format!("oxilium-bulk-{}-{addr}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("blob"), blob()).unwrap();
        let spawn = |args: &[&str]| {
            ns.command(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        };
        let mut s = BulkServers {
            children: Vec::new(),
            dir,
        };
        s.children.push(spawn(&[
            "iperf3",
            "-s",
            "-B",
            addr,
            "-p",
            &IPERF.to_string(),
        ]));
        let d = s.dir.to_str().unwrap().to_string();
        s.children.push(spawn(&[
            "python3",
            "-m",
            "http.server",
            &HTTP.to_string(),
            "--bind",
            addr,
            "--directory",
            &d,
        ]));
        s
    }
}

impl Drop for BulkServers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Uploads `bytes` (iperf3 syntax, e.g. "32M") from `client` to `host:port`; returns what the
/// server received.
pub fn iperf_upload(client: &Netns, host: &str, port: u16, bytes: &str) -> Result<u64, String> {
    let out = client
        .command(&[
            "timeout",
            "60",
            "iperf3",
            "-c",
            host,
            "-p",
            &port.to_string(),
            "-n",
            bytes,
            "-J",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "iperf3 to {host}:{port}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if !v["error"].is_null() {
        return Err(format!("iperf3 to {host}:{port}: {}", v["error"]));
    }
    v["end"]["sum_received"]["bytes"]
        .as_u64()
        .ok_or_else(|| format!("iperf3 to {host}:{port}: no result"))
}

/// Downloads the 8 MiB file from `host:port` with curl in `client`; checks every byte.
pub fn curl_download(client: &Netns, host: &str, port: u16) {
    let url = format!("http://{host}:{port}/blob");
    let out = client
        .command(&["curl", "-sS", "--max-time", "60", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), BLOB, "curl {url}: length");
    assert!(out.stdout == blob(), "curl {url}: content differs");
}
