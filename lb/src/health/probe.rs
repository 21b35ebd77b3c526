//! One probe: a TCP connect, or an HTTP/1.1 GET with hyper's client.
//!
//! The HTTP probe uses hyper's low-level HTTP/1 connection over the stream we connected ourselves (no
//! pool, no TLS, no redirects): one `GET path` with `Host` and `Connection: close`, judged by the
//! response status alone.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use crate::health::CheckKind;

/// Longest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// After the status, at most this much of the body is read (and discarded) before closing, so the
/// backend sees an orderly close rather than a reset for unread data.
const MAX_DRAIN: usize = 64 * 1024;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("malformed HTTP response: {0}")]
    BadResponse(String),
    #[error("HTTP status {got}, expected {expected}")]
    Status { got: u16, expected: String },
}

/// Probe `address` once; the whole probe (connect, request, response head) must finish within
/// `timeout`.
pub async fn probe(
    address: SocketAddr,
    kind: &CheckKind,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let deadline = Instant::now() + timeout;
    let stream = timeout_at(deadline, TcpStream::connect(address))
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
        .map_err(ProbeError::Connect)?;
    match kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::Http {
            path,
            expect_status,
        } => http(stream, address, path, *expect_status, deadline, timeout).await,
    }
}

/// Aborts the connection task when the probe ends, however it ends (a timeout drops it mid-way).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn http(
    stream: TcpStream,
    address: SocketAddr,
    path: &str,
    expect: Option<u16>,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let uri: Uri = request_target(path)
        .parse()
        .map_err(|e| ProbeError::Io(invalid_input(format!("path `{path}`: {e}"))))?;
    // SocketAddr's Display brackets IPv6 addresses, as the Host header wants.
    let request = Request::get(uri)
        .header(HOST, address.to_string())
        .header(USER_AGENT, "oxilium-health")
        .header(ACCEPT, "*/*")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Io(invalid_input(e.to_string())))?;
    let (response, conn) = timeout_at(deadline, async {
        let (mut sender, conn) = http1::Builder::new()
            .title_case_headers(true)
            .max_buf_size(MAX_HEAD)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(hyper_error)?;
        let conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let response = sender.send_request(request).await.map_err(hyper_error)?;
        Ok((response, conn))
    })
    .await
    .map_err(|_| ProbeError::Timeout(timeout))??;
    let status = response.status().as_u16();
    // Best effort, within what is left of the timeout; the verdict is already known.
    let _ = timeout_at(deadline, drain(response.into_body())).await;
    drop(conn);
    let ok = match expect {
        Some(want) => status == want,
        None => (200..300).contains(&status),
    };
    if ok {
        Ok(())
    } else {
        let expected = expect.map_or_else(|| "2xx".to_string(), |s| s.to_string());
        Err(ProbeError::Status {
            got: status,
            expected,
        })
    }
}

/// A response that is not HTTP/1.x, or a connection closed before a complete head, is a bad response;
/// anything else failed at the transport.
fn hyper_error(e: hyper::Error) -> ProbeError {
    if e.is_parse() || e.is_incomplete_message() {
        ProbeError::BadResponse(e.to_string())
    } else {
        ProbeError::Io(std::io::Error::other(e))
    }
}

fn invalid_input(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

/// The config's path (visible ASCII, starting with `/`) as a request target hyper accepts: the few
/// characters the URI grammar forbids there are percent-encoded (`#` would otherwise start a fragment
/// and be dropped), everything else is sent as written.
fn request_target(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_query = false;
    for c in path.chars() {
        in_query |= c == '?';
        match c {
            '#' | '<' | '>' | '`' | ' ' => out += &format!("%{:02X}", c as u32),
            '"' if in_query => out += "%22",
            c if c.is_ascii_control() => out += &format!("%{:02X}", c as u32),
            c => out.push(c),
        }
    }
    out
}

async fn drain(mut body: Incoming) {
    let mut total = 0;
    while total < MAX_DRAIN {
        match body.frame().await {
            Some(Ok(frame)) => total += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(_)) | None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Probe (`GET /`, any 2xx) a one-shot server that answers `response` verbatim and closes.
    async fn probe_answered_by(response: &'static [u8]) -> Result<(), ProbeError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(response).await;
        });
        let kind = CheckKind::Http {
            path: "/".into(),
            expect_status: None,
        };
        let r = probe(addr, &kind, Duration::from_secs(2)).await;
        server.abort();
        r
    }

    #[tokio::test]
    async fn status_lines() {
        probe_answered_by(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        probe_answered_by(b"HTTP/1.1 204\r\n\r\n").await.unwrap();
        let err = probe_answered_by(b"HTTP/1.0 503 Service Unavailable\r\n\r\n")
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Status { got: 503, .. }), "{err}");
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"",
        ] {
            let err = probe_answered_by(bad).await.unwrap_err();
            assert!(
                matches!(err, ProbeError::BadResponse(_)),
                "{:?}: {err}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn every_visible_ascii_path_is_a_valid_request_target() {
        let all: String = (0x21u8..0x7f).map(char::from).collect();
        for path in [
            format!("/{all}"),
            format!("/a?{all}"),
            "/healthz?x=1&y=%20".into(),
        ] {
            let target = request_target(&path);
            let uri: Uri = target.parse().unwrap_or_else(|e| panic!("{target}: {e}"));
            // Nothing dropped: what is sent is the whole (encoded) path.
            assert_eq!(uri.path_and_query().unwrap().as_str(), target);
        }
        assert_eq!(request_target("/healthz?full=1"), "/healthz?full=1");
        assert_eq!(request_target("/a#b<c>`d"), "/a%23b%3Cc%3E%60d");
        assert_eq!(request_target("/\"q\"?\"q\""), "/\"q\"?%22q%22");
    }
}
