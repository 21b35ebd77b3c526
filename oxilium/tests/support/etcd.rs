//! etcd as the kvstore of the tests (Debian's `etcd-server`): started in a test-made namespace on
//! the addresses given, read back through its JSON gateway with curl; killed (by its pid) and its
//! data folder removed on drop.
use super::netns::Netns;
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde_json::Value;
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
    /// The namespace's path (the caller keeps the namespace; it must outlive this).
    ns: String,
}

impl Etcd {
    /// etcd in `ns`, serving clients on port 2379 of every address of `listen` (the first is
    /// advertised); returns once it answers.
    pub fn start(ns: &Netns, listen: &[&str]) -> Etcd {
        let dir = std::env::temp_dir().join(format!("oxilium-etcd-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        let urls: Vec<String> = listen.iter().map(|a| format!("http://{a}:2379")).collect();
        let child = ns
            .command(&[
                "etcd",
                "--name",
                "t",
                "--data-dir",
                dir.to_str().unwrap(),
                "--listen-client-urls",
                &urls.join(","),
                "--advertise-client-urls",
                &urls[0],
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "t=http://127.0.0.1:2380",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (apt-get install etcd-server)");
        let e = Etcd {
            child,
            dir,
            ns: ns.path(),
        };
        let t = Instant::now();
        while e.prefix("oxilium/").is_none() {
            assert!(t.elapsed() < Duration::from_secs(15), "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        e
    }

    /// Keys and values under `prefix` (None while etcd does not answer).
    pub fn prefix(&self, prefix: &str) -> Option<Vec<(String, String)>> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let body = format!(
            "{{\"key\":\"{}\",\"range_end\":\"{}\"}}",
            B64.encode(prefix),
            B64.encode(&end)
        );
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.ns))
            .args([
                "curl",
                "-sf",
                "-X",
                "POST",
                "http://127.0.0.1:2379/v3/kv/range",
                "-d",
                &body,
            ])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let dec =
            |x: &Value| String::from_utf8(B64.decode(x.as_str().unwrap_or("")).unwrap()).unwrap();
        Some(
            v["kvs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|kv| (dec(&kv["key"]), dec(&kv["value"])))
                .collect(),
        )
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
