//! Connection churn: a TCP sink that accepts and drops, and a client that opens connections one
//! after another and closes each with a RST (SO_LINGER 0), as a busy short-lived client does. Both
//! run on threads inside test namespaces.
use super::netns::{Netns, enter};
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Accepts every connection on `addr` and drops it at once; stops on drop.
pub struct Sink {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    ns: String,
    addr: SocketAddr,
}

impl Sink {
    pub fn start(ns: &Netns, addr: SocketAddr) -> Sink {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (path, s) = (ns.path(), stop.clone());
        let handle = std::thread::spawn(move || {
            enter(&path);
            let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"));
            let ok = l.is_ok();
            let _ = tx.send(l.as_ref().map(|_| ()).map_err(|e| e.clone()));
            if !ok {
                return;
            }
            let l = l.unwrap();
            // A deep accept queue (std listens with 128): the sink thread may be descheduled on
            // a busy machine. listen(2) again only changes the backlog.
            // SAFETY: listen on the listener's own open socket.
            unsafe { libc::listen(l.as_raw_fd(), 4096) };
            // Blocking accept: the backlog (128) must never overflow. Drop wakes it with a
            // connection of its own.
            while !s.load(Ordering::Relaxed) {
                let _ = l.accept();
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("sink did not start")
            .expect("sink bind");
        Sink {
            stop,
            handle: Some(handle),
            ns: ns.path(),
            addr,
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let (path, addr) = (self.ns.clone(), self.addr);
        let _ = std::thread::spawn(move || {
            enter(&path);
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        })
        .join();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[derive(Debug, Clone)]
pub struct Churn {
    pub ok: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// Indexes of the first failed connections (up to 20).
    pub failures: Vec<usize>,
    pub elapsed: Duration,
}

impl Churn {
    /// New connections per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// Closes with a RST: SO_LINGER on with a zero timeout.
pub fn rst_close(s: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// Opens `n` connections to `to` from `ns`, one after another, each closed by RST once
/// established. A connection not established within `timeout` counts as failed (a dropped SYN is
/// retransmitted after 1 s: keep `timeout` below that to count every drop).
pub fn churn(ns: &Netns, to: SocketAddr, n: usize, timeout: Duration) -> Churn {
    ns.exec(move || {
        let start = Instant::now();
        let mut r = Churn {
            ok: 0,
            failed: 0,
            first_error: None,
            failures: Vec::new(),
            elapsed: Duration::ZERO,
        };
        for i in 0..n {
            match TcpStream::connect_timeout(&to, timeout) {
                Ok(s) => {
                    r.ok += 1;
                    rst_close(s);
                }
                Err(e) => {
                    r.failed += 1;
                    if r.failures.len() < 20 {
                        r.failures.push(i);
                    }
                    if r.first_error.is_none() {
                        r.first_error = Some(format!("connection {i}: {e}"));
                    }
                }
            }
        }
        r.elapsed = start.elapsed();
        r
    })
}

/// The number of connections a churn test makes: `OXILIUM_CHURN` or `default`.
pub fn count(default: usize) -> usize {
    std::env::var("OXILIUM_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
