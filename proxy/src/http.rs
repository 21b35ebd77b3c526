//! The HTTP proxy: HTTP/1.1 connections handed over by the redirect, each request decided
//! against the HTTP rules that apply to the connection (asked again for every request, so a
//! policy change applies to the next request of an open connection), allowed requests sent to
//! the original destination over one upstream connection per client connection (so pipelined
//! requests are answered in order), denied ones answered `403 Access denied`; every request is
//! reported ([`Access`]). Upgrades (`Connection: upgrade`, e.g. WebSocket) that are allowed are
//! passed through: after the upstream's `101` both sides are joined byte for byte.
use crate::listener;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    client::conn::http1::SendRequest,
    header::{HOST, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use policy::{api::cilium::HttpRule, l7::HttpRequest};
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::net::TcpListener;
use tracing::debug;

/// Which side's policy a proxy enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The destination endpoint's ingress rules.
    Ingress,
    /// The source endpoint's egress rules.
    Egress,
}

/// A redirected connection: the client and the destination it connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    pub direction: Direction,
    pub client: SocketAddr,
    pub original: SocketAddr,
}

/// What the policy allows on a connection now.
#[derive(Clone, Debug)]
pub enum Rules {
    /// Every request (the flow is plainly allowed now).
    All,
    /// No request (the flow is denied now, or its endpoint is gone).
    None,
    /// A request is allowed when one of these rules matches it.
    Http(Arc<Vec<HttpRule>>),
}

/// The policy's answer for a connection, asked per request.
#[derive(Clone, Debug)]
pub struct Decision {
    pub rules: Rules,
    pub source_identity: u32,
    pub destination_identity: u32,
    /// `SO_MARK` of the upstream connection (abi::proxy).
    pub upstream_mark: u32,
    /// Names for the access records (`namespace/pod`), when known.
    pub source_name: Option<String>,
    pub destination_name: Option<String>,
}

/// Where the proxy asks (the agent's policy state).
pub trait Policy: Send + Sync + 'static {
    fn decide(&self, conn: &Conn) -> Decision;
}

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to the destination; its answer returned.
    Forwarded,
    /// Denied by policy: answered 403.
    Denied,
    /// Allowed, but the destination could not be reached: answered 502.
    Error,
}

/// One request's record.
#[derive(Clone, Debug)]
pub struct Access {
    pub time: SystemTime,
    pub conn: Conn,
    pub decision: Decision,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub host: Option<String>,
    pub status: u16,
    pub outcome: Outcome,
    /// From the request's arrival to the response's head.
    pub latency: Duration,
}

/// Receives every request's record.
pub type AccessLog = Arc<dyn Fn(Access) + Send + Sync>;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The most of a denied request's body that is read to keep its connection (beyond it, the
/// connection is closed after the 403).
const DENIED_BODY_LIMIT: usize = 1 << 20;

/// The short body of a denied request.
pub const DENIED_BODY: &str = "Access denied\n";

/// Serves the connections of `listener` (see [`crate::listener::tcp`]) until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    direction: Direction,
    policy: Arc<dyn Policy>,
    log: AccessLog,
) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                debug!("http proxy accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let original = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            direction,
            client,
            original,
        };
        let (policy, log) = (policy.clone(), log.clone());
        tokio::spawn(async move {
            let session = Arc::new(Session {
                conn,
                policy,
                log,
                upstream: tokio::sync::Mutex::new(None),
            });
            let svc = service_fn(move |req| {
                let s = session.clone();
                async move { Ok::<_, std::convert::Infallible>(s.handle(req).await) }
            });
            let r = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
            if let Err(e) = r {
                debug!(client = %conn.client, "http proxy connection: {e}");
            }
        });
    }
}

/// One client connection.
struct Session {
    conn: Conn,
    policy: Arc<dyn Policy>,
    log: AccessLog,
    /// The connection to the original destination, made on the first allowed request.
    upstream: tokio::sync::Mutex<Option<SendRequest<Incoming>>>,
}

/// The parts of a request the rules look at.
pub fn request_view<B>(req: &Request<B>) -> HttpRequest {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    HttpRequest {
        method: req.method().as_str().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        host,
        headers: req
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
    }
}

/// True when `rules` allow `req`.
pub fn allows(rules: &Rules, req: &HttpRequest) -> bool {
    match rules {
        Rules::All => true,
        Rules::None => false,
        Rules::Http(r) => policy::l7::http_allows(r, req).is_some(),
    }
}

fn full(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

impl Session {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let start = std::time::Instant::now();
        let decision = self.policy.decide(&self.conn);
        let view = request_view(&req);
        let allowed = allows(&decision.rules, &view);
        let (resp, outcome) = if allowed {
            match self.forward(req, decision.upstream_mark).await {
                Ok(r) => (r, Outcome::Forwarded),
                Err(e) => {
                    debug!(to = %self.conn.original, "http proxy upstream: {e}");
                    (
                        full(StatusCode::BAD_GATEWAY, "Upstream unavailable\n"),
                        Outcome::Error,
                    )
                }
            }
        } else {
            // Read (and drop) the request's body, so the connection can carry the next request.
            let _ = Limited::new(req.into_body(), DENIED_BODY_LIMIT)
                .collect()
                .await;
            (full(StatusCode::FORBIDDEN, DENIED_BODY), Outcome::Denied)
        };
        (self.log)(Access {
            time: SystemTime::now(),
            conn: self.conn,
            decision,
            method: view.method,
            path: view.path,
            host: view.host,
            status: resp.status().as_u16(),
            outcome,
            latency: start.elapsed(),
        });
        resp
    }

    /// Sends the request on the upstream connection (made or remade as needed).
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        mark: u32,
    ) -> Result<Response<Body>, Box<dyn std::error::Error + Send + Sync>> {
        let upgrade = req.headers().contains_key(hyper::header::UPGRADE);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let mut guard = self.upstream.lock().await;
        if guard.as_ref().is_none_or(|s| s.is_closed()) {
            *guard = Some(self.connect(mark).await?);
        }
        let sender = guard.as_mut().expect("just made");
        sender.ready().await?;
        let mut resp = sender.send_request(req).await?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            // The upstream connection now belongs to the upgraded stream.
            *guard = None;
            let server_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(c), Ok(s)) = (client_upgrade.await, server_upgrade.await) {
                    let (mut c, mut s) = (TokioIo::new(c), TokioIo::new(s));
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
                }
            });
        }
        Ok(resp.map(|b| b.map_err(Into::into).boxed()))
    }

    async fn connect(
        &self,
        mark: u32,
    ) -> Result<SendRequest<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            listener::connect_marked(self.conn.original, mark),
        )
        .await
        .map_err(|_| "connect timed out")??;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!("http proxy upstream connection: {e}");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(v: serde_json::Value) -> Rules {
        Rules::Http(Arc::new(serde_json::from_value(v).unwrap()))
    }

    #[test]
    fn a_request_is_matched_on_method_path_host_and_headers() {
        let r = rules(serde_json::json!([
            {"method": "POST", "path": "/v1/request-landing"},
            {"method": "GET", "path": "/v1/.*", "host": "deathstar\\..*", "headers": ["X-Empire: yes"]}
        ]));
        let req = |m: &str, uri: &str, host: &str, hdr: Option<&str>| {
            let mut b = Request::builder().method(m).uri(uri).header(HOST, host);
            if let Some(v) = hdr {
                b = b.header("x-empire", v);
            }
            request_view(&b.body(()).unwrap())
        };
        assert!(allows(&r, &req("POST", "/v1/request-landing", "any", None)));
        // Anchored: a longer path or a query is another path.
        assert!(!allows(
            &r,
            &req("POST", "/v1/request-landing/x", "any", None)
        ));
        assert!(!allows(
            &r,
            &req("POST", "/v1/request-landing?x=1", "any", None)
        ));
        assert!(!allows(&r, &req("PUT", "/v1/exhaust-port", "any", None)));
        assert!(allows(
            &r,
            &req("GET", "/v1/x", "deathstar.empire", Some("yes"))
        ));
        assert!(!allows(
            &r,
            &req("GET", "/v1/x", "deathstar.empire", Some("no"))
        ));
        assert!(!allows(&r, &req("GET", "/v1/x", "deathstar.empire", None)));
        assert!(!allows(&r, &req("GET", "/v1/x", "xwing", Some("yes"))));
        assert!(allows(&Rules::All, &req("DELETE", "/", "h", None)));
        assert!(!allows(&Rules::None, &req("GET", "/", "h", None)));
    }
}
