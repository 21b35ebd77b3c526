//! Faults-under-load helpers shared by the soaks: python HTTP servers as backends and `hey` as the
//! load (keep-alive off: every request is a new flow), with its summary parsed into counts.
use super::netns::Netns;
use std::{
    net::IpAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A soak parameter from the environment (`OXILIUM_SOAK_SECONDS`, `OXILIUM_SOAK_RATE`).
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A backend's HTTP server process, killed on drop (also when the test panics: a process in a
/// deleted namespace would otherwise keep running).
pub struct Server(Child);

impl Server {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// python's threading HTTP server on `addr:port` in `ns`, serving `DIR/name/index.html` (the
/// backend's name); returns once it answers on its own address.
pub fn http_server(ns: &Netns, addr: IpAddr, port: u16, dir: &Path, name: &str) -> Server {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), format!("{name}\n")).unwrap();
    // A listen backlog of 1024 instead of http.server's 5: a full accept queue drops SYNs, and
    // the client's retransmission would count against the datapath under test.
    let script = format!(
        "import functools, http.server as h\n\
         h.ThreadingHTTPServer.request_queue_size = 1024\n\
         handler = functools.partial(h.SimpleHTTPRequestHandler, directory={root:?})\n\
         h.ThreadingHTTPServer(({addr:?}, {port}), handler).serve_forever()\n",
        root = root.to_str().unwrap(),
        addr = addr.to_string(),
    );
    let server = Server(
        ns.command(&["python3", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let url = match addr {
        IpAddr::V4(a) => format!("http://{a}:{port}/"),
        IpAddr::V6(a) => format!("http://[{a}]:{port}/"),
    };
    for _ in 0..100 {
        let ok = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .args(["curl", "-s", "-o", "/dev/null", "--max-time", "1", &url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return server;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("backend {name} did not start");
}

/// What one `hey` run reported.
#[derive(Debug, Default)]
pub struct Load {
    pub ok: u64,
    pub other_status: u64,
    pub errors: u64,
    pub summary: String,
}

impl Load {
    /// Requests that connected and were sent but got no answer within the timeout ("awaiting
    /// headers" in hey's error distribution).
    pub fn stalled(&self) -> u64 {
        let mut in_errors = false;
        let mut n = 0;
        for line in self.summary.lines() {
            let t = line.trim();
            if t.starts_with("Error distribution") {
                in_errors = true;
                continue;
            }
            if in_errors && t.contains("awaiting headers") {
                n += t
                    .strip_prefix('[')
                    .and_then(|r| r.split_once(']'))
                    .and_then(|(c, _)| c.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        n
    }
}

/// Runs `hey` in `client` against `url` for `secs` at `rate` requests/s (a new connection each).
pub fn load(client: &Netns, url: &str, secs: u64, rate: u64) -> std::thread::JoinHandle<Load> {
    let workers = 20u64.min(rate.max(1));
    let per_worker = (rate / workers).max(1);
    let cmd = client
        .command(&[
            "hey",
            "-z",
            &format!("{secs}s"),
            "-c",
            &workers.to_string(),
            "-q",
            &per_worker.to_string(),
            // A request counts as failed when it gets an error or no answer in 10 s: slow is
            // not failed on a loaded 2-core machine, while a black-holed flow still fails.
            "-t",
            "10",
            "-disable-keepalive",
            url,
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("hey");
    std::thread::spawn(move || {
        let out = cmd.wait_with_output().unwrap();
        parse_hey(&String::from_utf8_lossy(&out.stdout))
    })
}

/// Reads hey's summary: "[200]\tN responses" lines and "[N]\tGet ...: error" lines.
pub fn parse_hey(text: &str) -> Load {
    let mut l = Load {
        summary: text.to_string(),
        ..Default::default()
    };
    let mut section = "";
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Status code distribution") {
            section = "status";
            continue;
        }
        if t.starts_with("Error distribution") {
            section = "errors";
            continue;
        }
        let Some(rest) = t.strip_prefix('[') else {
            continue;
        };
        let Some((num, tail)) = rest.split_once(']') else {
            continue;
        };
        let Ok(n) = num.trim().parse::<u64>() else {
            continue;
        };
        match section {
            "status" => {
                let count: u64 = tail
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                if n == 200 {
                    l.ok += count;
                } else {
                    l.other_status += count;
                }
            }
            "errors" => l.errors += n,
            _ => {}
        }
    }
    l
}

/// Runs one load phase of `secs` and applies `fault` a third of the way in; returns the load and
/// appends a line to `report`.
pub fn phase<B>(
    bed: &mut B,
    report: &mut Vec<String>,
    name: &str,
    start: impl FnOnce(&B) -> std::thread::JoinHandle<Load>,
    secs: u64,
    fault: impl FnOnce(&mut B),
) -> Load {
    let h = start(bed);
    std::thread::sleep(Duration::from_millis(secs * 1000 / 3));
    fault(bed);
    let l = h.join().unwrap();
    report.push(format!(
        "{name}: {} ok, {} other status, {} errors",
        l.ok, l.other_status, l.errors
    ));
    l
}
