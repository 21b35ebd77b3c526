//! A small authoritative DNS server for the DNS proxy tests, on a thread inside a namespace (UDP and
//! TCP, hickory-proto for the wire format): names from its table are answered with their records,
//! any other name with REFUSED. It records the names it was asked.
use super::netns::{Netns, enter};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::Record;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::Duration,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Name (lower case, no trailing dot) → the answer's records.
pub type Zone = BTreeMap<String, Vec<Record>>;

pub struct DnsServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    /// The names asked, in order.
    pub asked: Arc<Mutex<Vec<String>>>,
}

fn answer(zone: &Zone, asked: &Mutex<Vec<String>>, q: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(q).ok()?;
    let name = q
        .queries
        .first()?
        .name
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    asked.lock().unwrap().push(name.clone());
    let mut m = match zone.get(&name) {
        Some(records) => {
            let mut m = Message::response(q.id, q.op_code);
            m.add_answers(records.iter().cloned());
            m
        }
        None => Message::error_msg(q.id, q.op_code, ResponseCode::Refused),
    };
    m.metadata.recursion_desired = q.recursion_desired;
    m.metadata.authoritative = true;
    m.add_queries(q.queries.iter().cloned());
    m.to_vec().ok()
}

async fn serve(
    addr: SocketAddr,
    zone: Arc<Zone>,
    asked: Arc<Mutex<Vec<String>>>,
    ready: mpsc::Sender<()>,
) {
    let udp = tokio::net::UdpSocket::bind(addr)
        .await
        .expect("dns server udp bind");
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .expect("dns server tcp bind");
    ready.send(()).unwrap();
    let (z, a) = (zone.clone(), asked.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = tcp.accept().await else {
                return;
            };
            let (z, a) = (z.clone(), a.clone());
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 2];
                    if c.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if c.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    let Some(r) = answer(&z, &a, &q) else { return };
                    let mut out = (r.len() as u16).to_be_bytes().to_vec();
                    out.extend(r);
                    if c.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, from)) = udp.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(r) = answer(&zone, &asked, &buf[..n]) {
            let _ = udp.send_to(&r, from).await;
        }
    }
}

impl DnsServer {
    /// Serves `zone` on `addr` (UDP and TCP) inside `ns`; returns once bound.
    pub fn start(ns: &Netns, addr: SocketAddr, zone: Zone) -> DnsServer {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, bound) = mpsc::channel();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (path, a, zone) = (ns.path(), asked.clone(), Arc::new(zone));
        let handle = std::thread::spawn(move || {
            enter(&path);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                tokio::select! {
                    _ = serve(addr, zone, a, ready) => {}
                    _ = stopped => {}
                }
            });
        });
        bound
            .recv_timeout(Duration::from_secs(5))
            .expect("dns server did not start");
        DnsServer {
            stop: Some(stop),
            handle: Some(handle),
            asked,
        }
    }

    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
