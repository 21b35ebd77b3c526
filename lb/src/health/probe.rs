//! One probe: a TCP connect, or a minimal HTTP/1.1 GET.
//!
//! The HTTP client is hand-written (about fifty lines) instead of pulling in hyper or reqwest: a health
//! check needs one request shape and only the status line of the answer, and the agent should not carry
//! a full HTTP stack (TLS, pools, redirects) for that.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::health::CheckKind;

/// Longest status line accepted.
const MAX_STATUS_LINE: usize = 1024;
/// After the status line, at most this much of the rest is read (and discarded) before closing, so the
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

/// Probe `address` once; the whole probe (connect, request, status line) must finish within `timeout`.
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

async fn http(
    mut stream: TcpStream,
    address: SocketAddr,
    path: &str,
    expect: Option<u16>,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), ProbeError> {
    // SocketAddr's Display brackets IPv6 addresses, as the Host header wants.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: oxilium-health\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n"
    );
    let status = timeout_at(deadline, async {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(ProbeError::Io)?;
        read_status(&mut stream).await
    })
    .await
    .map_err(|_| ProbeError::Timeout(timeout))??;
    // Best effort, within what is left of the timeout; the verdict is already known.
    let _ = timeout_at(deadline, drain(&mut stream)).await;
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

/// Read up to the end of the first line and parse `HTTP/1.x NNN ...`.
async fn read_status(stream: &mut TcpStream) -> Result<u16, ProbeError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let line_end = loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            break i;
        }
        if buf.len() > MAX_STATUS_LINE {
            return Err(ProbeError::BadResponse("status line too long".into()));
        }
        let n = stream.read(&mut chunk).await.map_err(ProbeError::Io)?;
        if n == 0 {
            return Err(ProbeError::BadResponse(
                "connection closed before the status line".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    parse_status_line(&buf[..line_end])
}

fn parse_status_line(line: &[u8]) -> Result<u16, ProbeError> {
    let line =
        std::str::from_utf8(line).map_err(|_| ProbeError::BadResponse("not UTF-8".into()))?;
    let line = line.trim_end_matches('\r');
    let bad = || ProbeError::BadResponse(format!("bad status line `{}`", line.escape_default()));
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().ok_or_else(bad)?;
    let code = parts.next().ok_or_else(bad)?;
    if !version.starts_with("HTTP/1.")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    code.parse().map_err(|_| bad())
}

async fn drain(stream: &mut TcpStream) {
    let mut chunk = [0u8; 4096];
    let mut total = 0;
    while total < MAX_DRAIN {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r").unwrap(), 200);
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable").unwrap(),
            503
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 204").unwrap(), 204);
        for bad in [
            &b"SSH-2.0-OpenSSH"[..],
            b"HTTP/1.1 20 OK",
            b"HTTP/2 200",
            b"HTTP/1.1 abc",
            b"",
        ] {
            assert!(
                parse_status_line(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
