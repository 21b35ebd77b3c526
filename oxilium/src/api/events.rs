//! The API's event endpoints, beside the JSON ones of [`super::handle`]:
//! - `GET /events?FILTER`: newline-delimited JSON flow records (`crate::events::record`), as
//!   long as the client reads; the first line is `{"subscribed":{...}}`, a blank line is sent
//!   every few seconds when nothing happens (so a client that left is noticed), and a subscriber
//!   that reads too slowly gets `{"lost_events":{"num_events_lost":N}}` for what it missed.
//! - `POST /events/trace?on=true|false`: switches the datapath's trace points.
//! - `GET /explain?...`: crate::explain, answered from a blocking thread.
use crate::{
    agent::Shared,
    events::{Hub, filter::Filter, wire},
};
use bytes::Bytes;
use http_body_util::{Channel, Either, Full};
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::{sync::Arc, sync::atomic::Ordering, time::Duration};
use tokio::{
    net::UnixStream,
    sync::broadcast::error::{RecvError, TryRecvError},
};

type Body = Either<Full<Bytes>, Channel<Bytes>>;

const HEARTBEAT: Duration = Duration::from_secs(5);

/// Serves one API connection: the event endpoints here, everything else by [`super::handle`].
pub fn spawn_connection(stream: UnixStream, state: Shared, hub: Arc<Hub>) {
    tokio::spawn(async move {
        let svc = service_fn(move |req: Request<Incoming>| {
            let (state, hub) = (state.clone(), hub.clone());
            async move { Ok::<_, std::convert::Infallible>(answer(state, hub, req).await) }
        });
        if let Err(e) = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await
        {
            tracing::debug!("api connection: {e}");
        }
    });
}

/// The routes that wait (explain, the CNI plugin's commands with their bodies), then the others.
async fn answer(state: Shared, hub: Arc<Hub>, req: Request<Incoming>) -> Response<Body> {
    use http_body_util::BodyExt;
    let path = req.uri().path().trim_end_matches('/').to_string();
    if req.method() == Method::GET && path == "/explain" {
        let q = req.uri().query().unwrap_or("").to_string();
        let (code, v) = super::explain::answer(state, q).await;
        return json(code, &v);
    }
    if req.method() == Method::POST
        && let Some(cmd) = path.strip_prefix("/cni/")
    {
        let cmd = cmd.to_string();
        let (code, v) = match req.into_body().collect().await {
            Ok(b) => crate::agent::node::endpoints::serve(&state, &cmd, &b.to_bytes()).await,
            Err(e) => (
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("reading the request: {e}") }),
            ),
        };
        return json(code, &v);
    }
    if path == "/endpoints" {
        let (code, v) = crate::agent::node::endpoints::serve(&state, "list", &[]).await;
        return json(code, &v);
    }
    if let Some(name) = path.strip_prefix("/policy/") {
        let (code, v) = crate::agent::node::policy::serve_get(&state, name).await;
        return json(code, &v);
    }
    route(&state, &hub, &req)
}

fn json(code: StatusCode, v: &serde_json::Value) -> Response<Body> {
    super::http::json_response(code, v).map(Either::Left)
}

fn route(state: &Shared, hub: &Arc<Hub>, req: &Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    match (req.method(), req.uri().path().trim_end_matches('/')) {
        (&Method::GET, "/events") => match Filter::from_query(query) {
            Ok(f) => stream(hub, f),
            Err(e) => json(
                StatusCode::BAD_REQUEST,
                &json!({ "error": format!("{e:#}") }),
            ),
        },
        (&Method::POST, "/events/trace") => {
            let on = match query {
                "on=true" | "on=1" => true,
                "on=false" | "on=0" => false,
                _ => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &json!({ "error": format!("on: expected on=true or on=false, got {query:?}") }),
                    );
                }
            };
            match hub.set_trace(on) {
                Ok(_) => json(StatusCode::OK, &hub.status()),
                Err(e) => json(StatusCode::NOT_FOUND, &json!({ "error": format!("{e:#}") })),
            }
        }
        _ => {
            let (code, v) = super::handle(state, req.uri().path());
            json(code, &v)
        }
    }
}

fn stream(hub: &Arc<Hub>, filter: Filter) -> Response<Body> {
    let (mut tx, body) = Channel::<Bytes>::new(64);
    let mut rx = hub.subscribe();
    let hub = hub.clone();
    tokio::spawn(async move {
        let hello = json!({ "subscribed": { "filter": filter.to_query() } });
        if tx.send_data(line(&hello)).await.is_err() {
            return;
        }
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.tick().await;
        loop {
            let first = tokio::select! {
                r = rx.recv() => r,
                _ = beat.tick() => {
                    if tx.send_data(Bytes::from_static(b"\n")).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            // What else is queued goes in the same chunk (one write instead of one a record).
            let mut chunk = Vec::new();
            let mut next = match first {
                Err(RecvError::Closed) => break,
                r => Some(r),
            };
            while let Some(r) = next.take() {
                match r {
                    Ok(r) if filter.matches(&r) => wire::encode(&r, &mut chunk),
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        hub.subscriber_lost.fetch_add(n, Ordering::Relaxed);
                        chunk.extend_from_slice(&line(&json!({
                            "lost_events": { "source": "agent", "num_events_lost": n }
                        })));
                    }
                    Err(RecvError::Closed) => {}
                }
                if chunk.len() < wire::CHUNK_BYTES {
                    next = match rx.try_recv() {
                        Ok(r) => Some(Ok(r)),
                        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                        Err(TryRecvError::Empty | TryRecvError::Closed) => None,
                    };
                }
            }
            if !chunk.is_empty() && tx.send_data(Bytes::from(chunk)).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(Either::Right(body));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

fn line(v: &serde_json::Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}
