//! Servers that tell who they saw, and clients that choose their source address: a TCP line "X"
//! is answered "ID X PEER" and a UDP datagram "X" likewise, PEER being the client address the
//! server's socket saw (so a test can check a backend sees the real client, or the node's SNAT
//! address). Threads inside namespaces, stopped on drop.
use super::netns::{Netns, enter};
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::FromRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// Who answered and whom it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub id: String,
    pub peer: IpAddr,
}

pub struct PeerServers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl PeerServers {
    /// A TCP and a UDP server on each address inside `ns`; returns once all are bound.
    pub fn start(ns: &Netns, id: &str, addrs: &[SocketAddr]) -> PeerServers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for addr in addrs {
            for udp in [false, true] {
                let (tx, rx) = mpsc::channel::<Result<(), String>>();
                let (path, addr, id, stop) = (ns.path(), *addr, id.to_string(), stop.clone());
                handles.push(std::thread::spawn(move || {
                    enter(&path);
                    if udp {
                        let s = match UdpSocket::bind(addr) {
                            Ok(s) => s,
                            Err(e) => return tx.send(Err(format!("{addr}: {e}"))).unwrap(),
                        };
                        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                        tx.send(Ok(())).unwrap();
                        let mut buf = [0u8; 2048];
                        while !stop.load(Ordering::Relaxed) {
                            if let Ok((n, from)) = s.recv_from(&mut buf) {
                                let msg = String::from_utf8_lossy(&buf[..n]);
                                let reply = format!("{id} {msg} {}", from.ip());
                                let _ = s.send_to(reply.as_bytes(), from);
                            }
                        }
                    } else {
                        let l = match TcpListener::bind(addr) {
                            Ok(l) => l,
                            Err(e) => return tx.send(Err(format!("{addr}: {e}"))).unwrap(),
                        };
                        l.set_nonblocking(true).unwrap();
                        tx.send(Ok(())).unwrap();
                        while !stop.load(Ordering::Relaxed) {
                            match l.accept() {
                                Ok((s, from)) => {
                                    let id = id.clone();
                                    std::thread::spawn(move || serve(s, &id, from.ip()));
                                }
                                Err(_) => std::thread::sleep(Duration::from_millis(5)),
                            }
                        }
                    }
                }));
                rx.recv_timeout(Duration::from_secs(5))
                    .expect("server did not start")
                    .expect("bind");
            }
        }
        PeerServers { stop, handles }
    }
}

fn serve(s: TcpStream, id: &str, peer: IpAddr) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while r.read_line(&mut line).unwrap_or(0) > 0 {
        let msg = line.trim_end();
        if w.write_all(format!("{id} {msg} {peer}\n").as_bytes())
            .is_err()
        {
            return;
        }
        line.clear();
    }
}

impl Drop for PeerServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn parse(line: &str, sent: &str) -> Result<Answer, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 3 || f[1] != sent {
        return Err(format!("unexpected answer {line:?}"));
    }
    let peer = f[2].parse().map_err(|_| format!("bad peer in {line:?}"))?;
    Ok(Answer {
        id: f[0].to_string(),
        peer,
    })
}

/// A TCP socket bound to `from` (port 0) and connected to `to` within `timeout`.
fn connect(from: Option<IpAddr>, to: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let Some(src) = from else {
        return TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("connect {to}: {e}"));
    };
    // std has no bind-before-connect: build the socket with libc, then hand it to std.
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned by the TcpStream / closed below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: the fd is ours; the TcpStream closes it on every path.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    let (sa, len) = sockaddr(SocketAddr::new(src, 0));
    // SAFETY: bind(2) with a sockaddr of the given length.
    let rc = unsafe { libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) };
    if rc != 0 {
        return Err(format!("bind {src}: {}", std::io::Error::last_os_error()));
    }
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let (da, dlen) = sockaddr(to);
    // SAFETY: connect(2) on our fd.
    let rc = unsafe { libc::connect(fd, &da as *const _ as *const libc::sockaddr, dlen) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(format!("connect {to}: {}", std::io::Error::last_os_error()));
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll(2) on one fd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    if n <= 0 {
        return Err(format!("connect {to} from {src}: timed out"));
    }
    if let Some(e) = s.take_error().map_err(|e| e.to_string())? {
        return Err(format!("connect {to} from {src}: {e}"));
    }
    s.set_nonblocking(false).map_err(|e| e.to_string())?;
    Ok(s)
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero sockaddr_storage is valid; we fill the family's fields.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as _;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            (ss, size_of::<libc::sockaddr_in>() as _)
        }
        SocketAddr::V6(v6) => {
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as _;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            (ss, size_of::<libc::sockaddr_in6>() as _)
        }
    }
}

/// One request on a new TCP connection from inside `ns` (from `from` if given).
pub fn tcp_ask(
    ns: &Netns,
    from: Option<IpAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> Result<Answer, String> {
    ns.exec(move || {
        let mut s = connect(from, to, timeout)?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"hello\n").map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(&mut s)
            .read_line(&mut line)
            .map_err(|e| format!("read from {to}: {e}"))?;
        parse(&line, "hello")
    })
}

/// One datagram from a fresh socket inside `ns` (bound to `from` if given); the answer must come
/// from `to` itself.
pub fn udp_ask(
    ns: &Netns,
    from: Option<IpAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> Result<Answer, String> {
    ns.exec(move || {
        let any: IpAddr = if to.is_ipv4() {
            "0.0.0.0".parse().unwrap()
        } else {
            "::".parse().unwrap()
        };
        let s =
            UdpSocket::bind(SocketAddr::new(from.unwrap_or(any), 0)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout)).unwrap();
        s.send_to(b"hello", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        let (n, src) = s
            .recv_from(&mut buf)
            .map_err(|e| format!("no UDP answer from {to}: {e}"))?;
        if src != to {
            return Err(format!("answer came from {src}, not {to}"));
        }
        parse(&String::from_utf8_lossy(&buf[..n]), "hello")
    })
}

/// A long-lived TCP connection opened from inside `ns`.
pub struct PeerConn(TcpStream, BufReader<TcpStream>);

impl PeerConn {
    pub fn open(ns: &Netns, to: SocketAddr) -> PeerConn {
        let s = ns
            .exec(move || connect(None, to, Duration::from_secs(3)))
            .unwrap_or_else(|e| panic!("{e}"));
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        PeerConn(s, r)
    }

    pub fn ask(&mut self, msg: &str) -> Result<Answer, String> {
        self.0
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        match self.1.read_line(&mut line) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => parse(&line, msg),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// One request's time limit in [`ask`].
pub const T: Duration = Duration::from_secs(2);

/// Backend id → the client addresses it saw.
pub type Seen = BTreeMap<String, BTreeSet<IpAddr>>;

/// One request (a new TCP connection, or a datagram from a fresh socket) from `client`, from
/// `from` if given.
pub fn ask(
    client: &Netns,
    from: Option<IpAddr>,
    to: SocketAddr,
    udp: bool,
) -> Result<Answer, String> {
    if udp {
        udp_ask(client, from, to, T)
    } else {
        tcp_ask(client, from, to, T)
    }
}

/// `n` requests to `to`: who answered and whom each backend saw; the first failure ends it.
pub fn spread(client: &Netns, to: SocketAddr, udp: bool, n: usize) -> Result<Seen, String> {
    let mut seen = Seen::new();
    for i in 0..n {
        let a = ask(client, None, to, udp).map_err(|e| format!("request {i}: {e}"))?;
        seen.entry(a.id).or_default().insert(a.peer);
    }
    Ok(seen)
}
