//! The Star Wars demo's `deathstar`: a small HTTP/1.1 server (hyper, keep-alive, chunked
//! bodies, pipelined requests, upgrades) run on a thread inside a namespace. It answers
//! `POST /v1/request-landing` "Ship landed", `PUT /v1/exhaust-port` "Panic: deathstar exploded",
//! any other path "deathstar METHOD PATH body=N" (N: the body's length as received), an
//! `Upgrade: echo` request 101 and then echoes bytes. Every request it sees is recorded with the
//! peer address it came from, so a test can tell what reached it and through which connection.
use super::netns::{Netns, enter};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, server::conn::http1};
use hyper_util::rt::TokioIo;
use std::{
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

/// The demo's Namespace and pods as a manifests file: `deathstar` (`org=empire,
/// class=deathstar`), `tiefighter` (`org=empire`) and `xwing` (`org=alliance`).
pub const PODS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Pod
metadata: {name: deathstar, namespace: default, labels: {org: empire, class: deathstar}}
---
apiVersion: v1
kind: Pod
metadata: {name: tiefighter, namespace: default, labels: {org: empire, class: tiefighter}}
---
apiVersion: v1
kind: Pod
metadata: {name: xwing, namespace: default, labels: {org: alliance, class: xwing}}
";

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub peer: SocketAddr,
    pub body_len: usize,
}

pub struct Deathstar {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Deathstar {
    /// Listens on `addr` inside `ns`; returns once bound.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Deathstar {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (path, s) = (ns.path(), seen.clone());
        let thread = std::thread::spawn(move || {
            enter(&path);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(addr, s, stop_rx, ready_tx));
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("deathstar did not start")
            .expect("deathstar bind");
        Deathstar {
            seen,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Deathstar {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let l = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => return ready.send(Err(format!("{addr}: {e}"))).unwrap(),
    };
    ready.send(Ok(())).unwrap();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            a = l.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let seen = seen.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(req, peer, &seen).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

async fn answer(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    seen: &Mutex<Vec<Seen>>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    if req.headers().contains_key(hyper::header::UPGRADE) {
        let up = hyper::upgrade::on(&mut req);
        seen.lock().unwrap().push(Seen {
            method,
            path,
            peer,
            body_len: 0,
        });
        tokio::spawn(async move {
            if let Ok(u) = up.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(u));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert(hyper::header::UPGRADE, "echo".parse().unwrap());
        r.headers_mut()
            .insert(hyper::header::CONNECTION, "upgrade".parse().unwrap());
        return r;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        peer,
        body_len: body.len(),
    });
    let text = match (method.as_str(), path.as_str()) {
        ("POST", "/v1/request-landing") => "Ship landed\n".to_string(),
        ("PUT", "/v1/exhaust-port") => "Panic: deathstar exploded\n".to_string(),
        _ => format!("deathstar {method} {path} body={}\n", body.len()),
    };
    Response::new(Full::new(Bytes::from(text)))
}

/// `curl ARGS` inside `ns` (2 s to connect, 5 s in all): (exit code, standard output).
pub fn curl(ns: &Netns, args: &[&str]) -> (i32, String) {
    let out = ns
        .command(&["curl", "-s", "--connect-timeout", "2", "-m", "5"])
        .args(args)
        .output()
        .expect("running curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// curl, one keep-alive connection for every request (`(method, url)`): each request's status
/// and number of new connections, a line each ("200 1\n403 0\n...").
pub fn keep_alive(ns: &Netns, requests: &[(&str, &str)]) -> String {
    let w = "%{http_code} %{num_connects}\n";
    let mut args: Vec<&str> = Vec::new();
    for (i, (method, url)) in requests.iter().enumerate() {
        if i > 0 {
            args.extend(["--next", "-s"]);
        }
        args.extend(["-o", "/dev/null", "-w", w, "-X", method, url]);
    }
    let (code, out) = curl(ns, &args);
    assert_eq!(code, 0, "{out}");
    out
}

/// One request with curl: (HTTP status, body).
#[track_caller]
pub fn request(ns: &Netns, method: &str, url: &str) -> (u16, String) {
    let (code, out) = curl(ns, &["-X", method, "-w", "\n%{http_code}", url]);
    assert_eq!(code, 0, "curl -X {method} {url}: exit {code}, {out}");
    let (body, status) = out.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

/// Reads one HTTP/1.1 response with a Content-Length: (status, body).
pub fn read_response(r: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("not a status line: {line:?}"))
        .parse()
        .unwrap();
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':')
            && n.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}
