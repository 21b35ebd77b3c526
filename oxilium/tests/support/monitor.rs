//! Observability from the tests' side: `oxilium monitor` run as a real client of an agent
//! (inside the agent's namespace, through its API socket), its output collected line by line;
//! and plain HTTP GETs of the agent's `--metrics-address` (/metrics, /healthz, /readyz) from
//! inside a namespace. The monitor process is killed on drop, even after a panic.
use super::{agent::bin, netns::Netns};
use serde_json::Value;
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

pub struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    /// `oxilium monitor ARGS --socket S` in `ns`; returns once it is subscribed (its
    /// "Listening" line on standard error), panicking after 10 s.
    pub fn start(ns: &Netns, socket: &Path, args: &[&str]) -> Monitor {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .args([bin(), "monitor"])
            .args(args)
            .arg("--socket")
            .arg(socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning oxilium monitor");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.starts_with("Listening") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                } else {
                    eprintln!("monitor: {line}");
                }
            }
        });
        let mut m = Monitor { child, lines };
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let status = m.child.try_wait();
            panic!("oxilium monitor did not subscribe ({status:?})");
        }
        m
    }

    /// Every line printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every line so far, parsed as JSON (`-o json`); panics on a line that is not JSON.
    pub fn records(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Waits up to `timeout` until `want` holds for the records; returns them (panics with them
    /// after the timeout).
    #[track_caller]
    pub fn wait(
        &self,
        timeout: Duration,
        what: &str,
        want: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let t = Instant::now();
        loop {
            let r = self.records();
            if want(&r) {
                return r;
            }
            assert!(
                t.elapsed() < timeout,
                "timed out waiting for {what}; records:\n{}",
                r.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process has exited (e.g. after `-n COUNT` records).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The records of one kind (`flow.event_type.type`).
pub fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["flow"]["event_type"]["type"] == kind)
        .collect()
}

/// GET `path` from `addr` inside `ns`: (status code, body).
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_string();
    ns.exec(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: oxilium\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {resp}"));
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    })
}

/// A /metrics scrape parsed with a Prometheus text-format parser.
pub fn scrape(ns: &Netns, addr: SocketAddr) -> prometheus_parse::Scrape {
    let (code, body) = http_get(ns, addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("a Prometheus text page")
}

/// The value of the sample `name` whose labels include every pair of `labels`.
pub fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}
