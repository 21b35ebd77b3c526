//! Tiny identity servers and clients for the end-to-end tests, run on threads inside namespaces.
//! TCP: a line "X" is answered "ID X"; an HTTP GET is answered 200 with body "ID" (or 503 on
//! /healthz while the server is marked unhealthy). UDP: a datagram "X" is answered "ID X".
use super::netns::{Netns, enter};
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

pub struct Servers {
    stop: Arc<AtomicBool>,
    pub healthy: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Starts a TCP and a UDP server on each address, inside `ns`; returns once all are bound.
    pub fn start(ns: &Netns, id: &str, addrs: &[SocketAddr]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let healthy = Arc::new(AtomicBool::new(true));
        let mut handles = Vec::new();
        for addr in addrs {
            for udp in [false, true] {
                let (tx, rx) = mpsc::channel();
                let (path, addr, id) = (ns.path(), *addr, id.to_string());
                let (stop, healthy) = (stop.clone(), healthy.clone());
                handles.push(std::thread::spawn(move || {
                    enter(&path);
                    if udp {
                        udp_server(addr, &id, &stop, tx)
                    } else {
                        tcp_server(addr, &id, &stop, &healthy, tx)
                    }
                }));
                rx.recv_timeout(Duration::from_secs(5))
                    .expect("server did not start")
                    .expect("bind");
            }
        }
        Servers {
            stop,
            healthy,
            handles,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

type Ready = mpsc::Sender<Result<(), String>>;

fn tcp_server(
    addr: SocketAddr,
    id: &str,
    stop: &AtomicBool,
    healthy: &Arc<AtomicBool>,
    ready: Ready,
) {
    let l = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => return ready.send(Err(format!("{addr}: {e}"))).unwrap(),
    };
    l.set_nonblocking(true).unwrap();
    ready.send(Ok(())).unwrap();
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => {
                let (id, healthy) = (id.to_string(), healthy.clone());
                std::thread::spawn(move || serve_tcp(s, &id, &healthy));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve_tcp(s: TcpStream, id: &str, healthy: &AtomicBool) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while r.read_line(&mut line).unwrap_or(0) > 0 {
        if line.starts_with("GET ") {
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut h = String::new();
            while r.read_line(&mut h).unwrap_or(0) > 0 && h.trim() != "" {
                h.clear();
            }
            let ok = path != "/healthz" || healthy.load(Ordering::Relaxed);
            let status = if ok {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let body = format!("{id}\n");
            let _ = write!(
                w,
                "HTTP/1.0 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return;
        }
        if w.write_all(format!("{id} {}", line).as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

fn udp_server(addr: SocketAddr, id: &str, stop: &AtomicBool, ready: Ready) {
    let s = match UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(e) => return ready.send(Err(format!("{addr}: {e}"))).unwrap(),
    };
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    ready.send(Ok(())).unwrap();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let reply = format!("{id} {}", String::from_utf8_lossy(&buf[..n]));
            let _ = s.send_to(reply.as_bytes(), from);
        }
    }
}

/// One request on a new TCP connection from inside `ns`: which backend answered.
pub fn tcp_request(ns: &Netns, to: SocketAddr) -> Result<String, String> {
    ns.exec(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"hello\n").map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(&mut s)
            .read_line(&mut line)
            .map_err(|e| format!("read from {to}: {e}"))?;
        parse_reply(&line, "hello")
    })
}

/// One datagram from a fresh socket inside `ns`: which backend answered.
pub fn udp_request(ns: &Netns, to: SocketAddr) -> Result<String, String> {
    ns.exec(move || {
        let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .unwrap();
        let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(b"hello", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        let (n, from) = s
            .recv_from(&mut buf)
            .map_err(|e| format!("no UDP answer from {to}: {e}"))?;
        if from != to {
            return Err(format!("answer came from {from}, not {to}"));
        }
        parse_reply(&String::from_utf8_lossy(&buf[..n]), "hello")
    })
}

fn parse_reply(line: &str, sent: &str) -> Result<String, String> {
    let mut it = line.trim_end().splitn(2, ' ');
    let id = it.next().unwrap_or_default().to_string();
    if it.next() != Some(sent) {
        return Err(format!("unexpected answer {line:?}"));
    }
    Ok(id)
}

/// A long-lived TCP connection opened from inside `ns`.
pub struct Conn(TcpStream, BufReader<TcpStream>);

impl Conn {
    pub fn open(ns: &Netns, to: SocketAddr) -> Conn {
        let s = ns.exec(move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connect {to}: {e}"))
        });
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        Conn(s, r)
    }

    /// Closes with a RST (SO_LINGER 0), as a client aborting its connection does.
    pub fn reset(self) {
        super::churn::rst_close(self.0);
    }

    /// Sends a line and returns the id of the backend that answered.
    pub fn ask(&mut self, msg: &str) -> Result<String, String> {
        self.0
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        match self.1.read_line(&mut line) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => parse_reply(&line, msg),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Reads everything (for HTTP answers).
pub fn read_all(mut s: TcpStream) -> String {
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
