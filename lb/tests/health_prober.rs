//! The prober against real servers on 127.0.0.1 ephemeral ports. Intervals are tens of milliseconds and
//! every wait is bounded, so the suite takes seconds and cannot hang.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lb::health::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

const WAIT: Duration = Duration::from_secs(5);

fn check(kind: CheckKind, interval_ms: u64, healthy: u32, unhealthy: u32) -> Check {
    Check {
        kind,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(interval_ms * 4 / 5),
        healthy_threshold: healthy,
        unhealthy_threshold: unhealthy,
    }
}

fn http(path: &str, expect_status: Option<u16>) -> CheckKind {
    CheckKind::Http {
        path: path.into(),
        expect_status,
    }
}

/// A test server; dropping it closes the listener and every connection it holds.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// Accept and close.
    Close,
    /// Accept and hold the connection without ever answering.
    Silent,
    /// Answer HTTP: /ok 200, /fail 500, /empty 204, anything else 404.
    Http,
}

async fn serve(listener: TcpListener, behaviour: Behaviour) -> Server {
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            match behaviour {
                Behaviour::Close => drop(stream),
                Behaviour::Silent => held.push(stream),
                Behaviour::Http => {
                    conns.spawn(answer(stream));
                }
            }
            while conns.try_join_next().is_some() {}
        }
    });
    Server {
        addr,
        accepted,
        task,
    }
}

async fn answer(mut stream: TcpStream) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let req = String::from_utf8_lossy(&req);
    assert!(
        req.contains("\r\nHost: ") && req.contains("\r\nConnection: close\r\n"),
        "{req}"
    );
    let path = req.split(' ').nth(1).unwrap_or("");
    let (status, reason) = match path {
        "/ok" => (200, "OK"),
        "/fail" => (500, "Internal Server Error"),
        "/empty" => (204, "No Content"),
        _ => (404, "Not Found"),
    };
    let resp =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
    let _ = stream.write_all(resp.as_bytes()).await;
}

async fn server(behaviour: Behaviour) -> Server {
    serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), behaviour).await
}

/// Rebind `addr` (retrying while the previous listener is still being torn down).
async fn server_on(addr: SocketAddr, behaviour: Behaviour) -> Server {
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return serve(l, behaviour).await;
        }
        sleep(Duration::from_millis(10)).await;
    }
    panic!("could not rebind {addr}");
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn next_event<K: std::fmt::Debug>(
    rx: &mut UnboundedReceiver<HealthEvent<K>>,
) -> HealthEvent<K> {
    timeout(WAIT, rx.recv())
        .await
        .expect("no health event in time")
        .expect("channel closed")
}

async fn no_event<K: std::fmt::Debug>(
    rx: &mut UnboundedReceiver<HealthEvent<K>>,
    within: Duration,
) {
    if let Ok(ev) = timeout(within, rx.recv()).await {
        panic!("unexpected event {ev:?}");
    }
}

#[tokio::test]
async fn tcp_down_and_up_again() {
    let srv = server(Behaviour::Close).await;
    let addr = srv.addr;
    let (mut prober, mut rx) = Prober::new();
    let c = check(CheckKind::Tcp, 30, 2, 3);
    prober.set_targets([(
        "b1",
        Target {
            address: addr,
            check: c.clone(),
        },
    )]);
    assert_eq!(
        prober.state(&"b1"),
        Some(Health::Healthy),
        "targets start healthy"
    );
    no_event(&mut rx, Duration::from_millis(200)).await;
    assert!(srv.accepted.load(Ordering::SeqCst) >= 3, "probes connect");

    drop(srv);
    let down = Instant::now();
    assert_eq!(
        next_event(&mut rx).await,
        HealthEvent {
            id: "b1",
            healthy: false
        }
    );
    // Three consecutive failures are needed: at least two intervals after the first failure.
    assert!(
        down.elapsed() >= Duration::from_millis(50),
        "{:?}",
        down.elapsed()
    );
    assert_eq!(prober.state(&"b1"), Some(Health::Unhealthy));

    let _srv = server_on(addr, Behaviour::Close).await;
    assert_eq!(
        next_event(&mut rx).await,
        HealthEvent {
            id: "b1",
            healthy: true
        }
    );
    assert_eq!(prober.state(&"b1"), Some(Health::Healthy));
    no_event(&mut rx, Duration::from_millis(150)).await;
}

#[tokio::test]
async fn http_status_decides() {
    let srv = server(Behaviour::Http).await;
    let (mut prober, mut rx) = Prober::new();
    let t = |kind| Target {
        address: srv.addr,
        check: check(kind, 30, 1, 1),
    };
    prober.set_targets([
        ("ok", t(http("/ok", None))),
        ("ok-204", t(http("/empty", Some(204)))),
        ("ok-2xx", t(http("/empty", None))),
        ("fail-500", t(http("/fail", None))),
        ("wrong-path", t(http("/nope", None))),
        ("want-200-got-204", t(http("/empty", Some(200)))),
    ]);
    let mut down = Vec::new();
    for _ in 0..3 {
        let ev = next_event(&mut rx).await;
        assert!(!ev.healthy, "{ev:?}");
        down.push(ev.id);
    }
    down.sort();
    assert_eq!(down, ["fail-500", "want-200-got-204", "wrong-path"]);
    no_event(&mut rx, Duration::from_millis(200)).await;
    for id in ["ok", "ok-204", "ok-2xx"] {
        assert_eq!(prober.state(&id), Some(Health::Healthy), "{id}");
    }
}

#[tokio::test]
async fn silent_server_times_out_http_but_passes_tcp() {
    let srv = server(Behaviour::Silent).await;
    let (mut prober, mut rx) = Prober::new();
    prober.set_targets([
        (
            "http",
            Target {
                address: srv.addr,
                check: check(http("/ok", None), 40, 1, 2),
            },
        ),
        (
            "tcp",
            Target {
                address: srv.addr,
                check: check(CheckKind::Tcp, 40, 1, 2),
            },
        ),
    ]);
    assert_eq!(
        next_event(&mut rx).await,
        HealthEvent {
            id: "http",
            healthy: false
        }
    );
    no_event(&mut rx, Duration::from_millis(200)).await;
    assert_eq!(prober.state(&"tcp"), Some(Health::Healthy));
    // And one probe reports the timeout as such.
    let err = probe(srv.addr, &http("/", None), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::Timeout(_)), "{err}");
}

#[tokio::test]
async fn set_targets_keeps_untouched_targets() {
    let dead = dead_addr().await;
    let counted = server(Behaviour::Close).await;
    let (mut prober, mut rx) = Prober::new();
    let a = Target {
        address: dead,
        check: check(CheckKind::Tcp, 20, 1, 1),
    };
    let b = Target {
        address: counted.addr,
        check: check(CheckKind::Tcp, 300, 1, 1),
    };
    prober.set_targets([("a", a.clone()), ("b", b.clone())]);
    assert_eq!(
        next_event(&mut rx).await,
        HealthEvent {
            id: "a",
            healthy: false
        }
    );
    sleep(Duration::from_millis(50)).await;
    let probes_before = counted.accepted.load(Ordering::SeqCst);

    // Re-applying the same set (plus a new target) restarts nothing: no immediate re-probe of b, a
    // stays unhealthy without an event, the new target starts healthy.
    let c = Target {
        address: counted.addr,
        check: check(CheckKind::Tcp, 300, 1, 1),
    };
    for _ in 0..5 {
        prober.set_targets([("a", a.clone()), ("b", b.clone()), ("c", c.clone())]);
    }
    assert_eq!(prober.state(&"a"), Some(Health::Unhealthy));
    assert_eq!(prober.state(&"c"), Some(Health::Healthy));
    sleep(Duration::from_millis(60)).await;
    let probes_after = counted.accepted.load(Ordering::SeqCst);
    // c probes once at start; b must not have probed again (its next tick is ~900ms away).
    assert_eq!(probes_after, probes_before + 1, "b's timer was reset");
    no_event(&mut rx, Duration::from_millis(100)).await;

    // A changed check restarts probing but keeps the health; a removed target is gone and stops.
    let a2 = Target {
        check: check(CheckKind::Tcp, 25, 1, 1),
        ..a
    };
    prober.set_targets([("a", a2.clone())]);
    assert_eq!(prober.target(&"a"), Some(&a2));
    assert_eq!(prober.state(&"a"), Some(Health::Unhealthy));
    assert_eq!(
        (prober.state(&"b"), prober.state(&"c"), prober.len()),
        (None, None, 1)
    );
    sleep(Duration::from_millis(30)).await;
    let stopped = counted.accepted.load(Ordering::SeqCst);
    sleep(Duration::from_millis(400)).await;
    assert_eq!(
        counted.accepted.load(Ordering::SeqCst),
        stopped,
        "removed targets still probed"
    );
    no_event(&mut rx, Duration::from_millis(50)).await;
}

#[tokio::test]
async fn no_event_without_a_transition() {
    // A target that fails fewer times in a row than the threshold never transitions.
    let srv = server(Behaviour::Close).await;
    let addr = srv.addr;
    let (mut prober, mut rx) = Prober::new();
    prober.set_targets([(
        1u32,
        Target {
            address: addr,
            check: check(CheckKind::Tcp, 40, 1, 100),
        },
    )]);
    sleep(Duration::from_millis(100)).await;
    drop(srv);
    sleep(Duration::from_millis(150)).await; // a few failures, far from 100
    let _srv = server_on(addr, Behaviour::Close).await;
    no_event(&mut rx, Duration::from_millis(200)).await;
    assert_eq!(prober.state(&1), Some(Health::Healthy));
}

#[tokio::test]
async fn initial_unhealthy_needs_successes() {
    let srv = server(Behaviour::Close).await;
    let (mut prober, mut rx) = Prober::with_initial(Health::Unhealthy);
    prober.set_targets([(
        "x",
        Target {
            address: srv.addr,
            check: check(CheckKind::Tcp, 20, 3, 1),
        },
    )]);
    assert_eq!(prober.state(&"x"), Some(Health::Unhealthy));
    let start = Instant::now();
    assert_eq!(
        next_event(&mut rx).await,
        HealthEvent {
            id: "x",
            healthy: true
        }
    );
    assert!(
        start.elapsed() >= Duration::from_millis(35),
        "3 successes take 2 intervals"
    );
}

#[tokio::test]
async fn dropping_the_prober_stops_probes() {
    let srv = server(Behaviour::Close).await;
    let (mut prober, mut rx) = Prober::new();
    prober.set_targets([(
        "x",
        Target {
            address: srv.addr,
            check: check(CheckKind::Tcp, 15, 1, 1),
        },
    )]);
    sleep(Duration::from_millis(80)).await;
    assert!(srv.accepted.load(Ordering::SeqCst) >= 2);
    drop(prober);
    sleep(Duration::from_millis(30)).await;
    let n = srv.accepted.load(Ordering::SeqCst);
    sleep(Duration::from_millis(150)).await;
    assert_eq!(srv.accepted.load(Ordering::SeqCst), n);
    // The sender is gone with the prober's tasks: the channel closes.
    assert!(timeout(WAIT, rx.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn ipv6_http_when_available() {
    let Ok(l) = TcpListener::bind("[::1]:0").await else {
        eprintln!("no IPv6 loopback; skipped");
        return;
    };
    let srv = serve(l, Behaviour::Http).await;
    probe(srv.addr, &http("/ok", None), Duration::from_secs(1))
        .await
        .unwrap();
    let err = probe(srv.addr, &http("/fail", None), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::Status { got: 500, .. }), "{err}");
}

#[test]
fn targets_from_config() {
    let cfg = lb::config::parse(
        "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check:\n      type: http\n      \
         path: /hz\n      port: 8080\n    backends:\n      - address: 10.0.2.1\n        port: 81\n",
    )
    .unwrap();
    let s = &cfg.services[0];
    let t = Target::for_backend(s.health_check.as_ref().unwrap(), &s.backends[0]);
    assert_eq!(t.address, "10.0.2.1:8080".parse().unwrap());
    assert_eq!(t.check.kind, http("/hz", None));
    assert_eq!(
        (t.check.interval, t.check.timeout),
        (Duration::from_secs(5), Duration::from_secs(1))
    );
    assert_eq!(
        (t.check.healthy_threshold, t.check.unhealthy_threshold),
        (2, 3)
    );
}
