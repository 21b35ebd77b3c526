//! The DNS proxy behind `toFQDNs` and DNS rules.
//!
//! It listens on UDP and TCP at one address: an address pods send to ([`DnsProxy::bind`]), or the
//! redirect's loopback listener that the endpoint programs hand port-53 flows to
//! ([`DnsProxy::bind_redirect`]). For each query it knows the source (the pod) and the original
//! destination (the server the pod asked: from the transparent socket, or a configured upstream),
//! asks the [`Policy`] whether the name may be asked, answers REFUSED if not, and else
//! forwards the query to the original destination. Before the answer goes back to the pod, the
//! addresses it carries (following CNAMEs) are handed to [`Policy::learn`] and awaited: the
//! datapath knows them before the pod can connect to them.
mod message;
pub(crate) mod socket;

pub use message::{Learnt, Question, canonical, learnt};

use crate::listener::Family;
use hickory_proto::op::ResponseCode;
use message::BadQuery;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, warn};

/// Largest DNS message over TCP (and the UDP receive buffer).
const MAX_MESSAGE: usize = 65_535;

/// UDP or TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One query as the policy sees it.
#[derive(Clone, Debug)]
pub struct Query {
    pub src: SocketAddr,
    /// The server the pod asked (its original destination).
    pub dst: SocketAddr,
    pub transport: Transport,
    pub question: Question,
}

/// The policy's answer to a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Answer REFUSED; the reason goes to the log.
    Refuse(String),
}

/// The agent's side of the proxy.
pub trait Policy: Send + Sync + 'static {
    /// May `q` be forwarded?
    fn check(&self, q: &Query) -> impl Future<Output = Verdict> + Send;
    /// An allowed query's answer carries addresses: done once the datapath knows them (the answer
    /// is released to the pod after this).
    fn learn(&self, q: &Query, learnt: Learnt) -> impl Future<Output = ()> + Send;
}

/// Where the proxy listens and sends.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Every query goes here; None: to the query's original destination (transparent mode).
    pub upstream: Option<SocketAddr>,
    /// Transparent sockets: original destinations from the kernel, replies sent from them.
    pub transparent: bool,
    /// How long to wait for the server's answer.
    pub timeout: Duration,
}

/// A bound proxy; [`DnsProxy::run`] serves it.
pub struct DnsProxy<P> {
    cfg: Config,
    policy: Arc<P>,
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
}

impl<P: Policy> DnsProxy<P> {
    /// Binds the UDP and TCP listeners (port 0: the same port, chosen by the kernel for UDP).
    pub fn bind(mut cfg: Config, policy: Arc<P>) -> io::Result<DnsProxy<P>> {
        let udp = socket::udp_listener(cfg.listen, cfg.transparent)?;
        cfg.listen = udp.local_addr()?;
        let tcp = socket::tcp_listener(cfg.listen, cfg.transparent)?;
        Ok(DnsProxy {
            cfg,
            policy,
            udp: Arc::new(udp),
            tcp,
        })
    }

    /// The proxy on the redirect's listeners of proxy port `port` (see [`crate::listener`]): every
    /// query comes with the server the pod asked, which is where it goes (or to `upstream`), and
    /// the UDP reply leaves from that server's address.
    pub fn bind_redirect(
        port: u16,
        family: Family,
        upstream: Option<SocketAddr>,
        timeout: Duration,
        policy: Arc<P>,
    ) -> io::Result<DnsProxy<P>> {
        Ok(DnsProxy {
            cfg: Config {
                listen: family.listen_addr(port),
                upstream,
                transparent: true,
                timeout,
            },
            policy,
            udp: Arc::new(crate::listener::udp(port, family)?),
            tcp: crate::listener::tcp(port, family)?,
        })
    }

    /// The address both listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.cfg.listen
    }

    /// Serves until the task is dropped.
    pub async fn run(self) {
        let shared = Arc::new((self.cfg, self.policy));
        let udp = tokio::spawn(serve_udp(self.udp, shared.clone()));
        serve_tcp(self.tcp, shared).await;
        udp.abort();
    }
}

type Shared<P> = Arc<(Config, Arc<P>)>;

/// The server the pod asked (its policy is checked for that server) and the server the query goes
/// to (`--dns-proxy-upstream` overrides it).
fn servers(cfg: &Config, orig_dst: Option<SocketAddr>) -> Option<(SocketAddr, SocketAddr)> {
    let asked = orig_dst.or(cfg.upstream)?;
    Some((asked, cfg.upstream.unwrap_or(asked)))
}

async fn serve_udp<P: Policy>(sock: Arc<UdpSocket>, shared: Shared<P>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let d = match socket::recv(&sock, &mut buf).await {
            Ok(d) => d,
            Err(e) => {
                warn!("dns proxy: udp receive: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let bytes = buf[..d.len].to_vec();
        let (sock, shared) = (sock.clone(), shared.clone());
        tokio::spawn(async move {
            let (cfg, policy) = &*shared;
            let orig = d.orig_dst.filter(|_| cfg.transparent);
            let Some((asked, to)) = servers(cfg, orig) else {
                debug!("dns proxy: no destination for a query from {}", d.src);
                return;
            };
            let Some(reply) = handle(&bytes, d.src, asked, Transport::Udp, policy, |q| {
                forward_udp(q, to, cfg.timeout)
            })
            .await
            else {
                return;
            };
            let sent = match orig {
                // Reply as the server the pod asked.
                Some(o) if o != cfg.listen => match socket::reply_socket(o) {
                    Ok(s) => s.send_to(&reply, d.src).await,
                    Err(e) => Err(e),
                },
                _ => sock.send_to(&reply, d.src).await,
            };
            if let Err(e) = sent {
                debug!("dns proxy: reply to {}: {e}", d.src);
            }
        });
    }
}

async fn serve_tcp<P: Policy>(listener: TcpListener, shared: Shared<P>) {
    loop {
        let (conn, src) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("dns proxy: tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = tcp_connection(conn, src, &shared).await {
                debug!("dns proxy: tcp connection from {src}: {e}");
            }
        });
    }
}

async fn read_frame(s: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_frame(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await
}

/// One pod connection: its queries in turn, each over one upstream connection opened on first use.
async fn tcp_connection<P: Policy>(
    mut conn: TcpStream,
    src: SocketAddr,
    shared: &Shared<P>,
) -> io::Result<()> {
    let (cfg, policy) = &**shared;
    let local = conn.local_addr()?;
    let orig = cfg.transparent.then_some(local);
    let (asked, to) = servers(cfg, orig).ok_or_else(|| io::Error::other("no destination"))?;
    let upstream = tokio::sync::Mutex::new(None::<TcpStream>);
    while let Some(q) = tokio::time::timeout(cfg.timeout * 4, read_frame(&mut conn))
        .await
        .map_err(|_| io::Error::other("idle"))??
    {
        let reply = handle(&q, src, asked, Transport::Tcp, policy, |q| async {
            let mut up = upstream.lock().await;
            forward_tcp(&mut up, q, to, cfg.timeout).await
        })
        .await;
        match reply {
            Some(r) => write_frame(&mut conn, &r).await?,
            None => return Ok(()),
        }
    }
    Ok(())
}

async fn forward_udp(q: Vec<u8>, dst: SocketAddr, timeout: Duration) -> io::Result<Vec<u8>> {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(bind).await?;
    s.connect(dst).await?;
    s.send(&q).await?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let id = &q[..2];
    // Datagrams with another id (late answers to nothing we asked) are skipped.
    tokio::time::timeout(timeout, async {
        loop {
            let n = s.recv(&mut buf).await?;
            if n >= 2 && &buf[..2] == id {
                return Ok(buf[..n].to_vec());
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

async fn forward_tcp(
    up: &mut Option<TcpStream>,
    q: Vec<u8>,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let work = async {
        if up.is_none() {
            *up = Some(TcpStream::connect(dst).await?);
        }
        let s = up.as_mut().expect("connected");
        write_frame(s, &q).await?;
        read_frame(s)
            .await?
            .ok_or_else(|| io::Error::other("server closed"))
    };
    let r = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))
        .flatten();
    if r.is_err() {
        *up = None;
    }
    r
}

/// One query: the reply for the pod, or None to drop it.
async fn handle<P: Policy, F, Fut>(
    bytes: &[u8],
    src: SocketAddr,
    dst: SocketAddr,
    transport: Transport,
    policy: &Arc<P>,
    forward: F,
) -> Option<Vec<u8>>
where
    F: FnOnce(Vec<u8>) -> Fut,
    Fut: Future<Output = io::Result<Vec<u8>>>,
{
    let (msg, question) = match message::question(bytes) {
        Ok(q) => q,
        Err(BadQuery::Unparsable) => return None,
        Err(BadQuery::NotOneQuestion(m)) => {
            return Some(message::error_response(&m, ResponseCode::FormErr));
        }
    };
    let q = Query {
        src,
        dst,
        transport,
        question,
    };
    if let Verdict::Refuse(why) = policy.check(&q).await {
        debug!(src = %src, name = %q.question.name, "dns proxy: refused: {why}");
        return Some(message::error_response(&msg, ResponseCode::Refused));
    }
    let answer = match forward(bytes.to_vec()).await {
        Ok(a) => a,
        Err(e) => {
            debug!(dst = %dst, name = %q.question.name, "dns proxy: forward: {e}");
            return Some(message::error_response(&msg, ResponseCode::ServFail));
        }
    };
    if let Some(l) = learnt(&answer, &q.question) {
        policy.learn(&q, l).await;
    }
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(upstream: Option<&str>) -> Config {
        Config {
            listen: "127.0.0.1:15054".parse().unwrap(),
            upstream: upstream.map(|u| u.parse().unwrap()),
            transparent: true,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn checked_for_the_server_asked_sent_to_the_override() {
        let orig: SocketAddr = "10.96.0.10:53".parse().unwrap();
        let up: SocketAddr = "192.0.2.53:53".parse().unwrap();
        // Redirected, no override: asked and sent to the original destination.
        assert_eq!(servers(&cfg(None), Some(orig)), Some((orig, orig)));
        // Redirected with --dns-proxy-upstream: checked for the server asked, sent to the override.
        assert_eq!(
            servers(&cfg(Some("192.0.2.53:53")), Some(orig)),
            Some((orig, up))
        );
        // Sent to the proxy's address: the override is both.
        assert_eq!(servers(&cfg(Some("192.0.2.53:53")), None), Some((up, up)));
        // Neither: nowhere to send (the query is dropped).
        assert_eq!(servers(&cfg(None), None), None);
    }
}
