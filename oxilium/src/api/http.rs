//! The agent's HTTP servers share this: one HTTP/1.1 connection served with hyper, every request
//! answered by a synchronous function (the API socket, the health-check node ports, the
//! metrics and health probes).
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// Serves one accepted connection in its own task; `answer` gives each request's status and JSON.
pub fn spawn_connection<IO, F>(io: IO, what: &'static str, answer: F)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(&Request<Incoming>) -> (StatusCode, serde_json::Value) + Send + Sync + 'static,
{
    spawn_service(io, what, move |req| {
        let (code, body) = answer(req);
        json_response(code, &body)
    });
}

/// Serves one accepted connection in its own task; `answer` gives each request's response.
pub fn spawn_service<IO, F>(io: IO, what: &'static str, answer: F)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        let svc = service_fn(move |req| {
            let r = answer(&req);
            async move { Ok::<_, std::convert::Infallible>(r) }
        });
        if let Err(e) = http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .await
        {
            debug!("{what} connection: {e}");
        }
    });
}

/// As [`spawn_connection`], for answers that need the request body or wait on something: `answer`
/// gets the method, the path and the whole body.
pub fn spawn_connection_with_body<IO, F, Fut>(io: IO, what: &'static str, answer: F)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(hyper::Method, String, Bytes) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (StatusCode, serde_json::Value)> + Send + 'static,
{
    use http_body_util::BodyExt;
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        let svc = service_fn(move |req: Request<Incoming>| {
            let answer = answer.clone();
            async move {
                let method = req.method().clone();
                let path = req.uri().path().to_string();
                let (code, body) = match req.into_body().collect().await {
                    Ok(b) => answer(method, path, b.to_bytes()).await,
                    Err(e) => (
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({ "error": format!("reading the request: {e}") }),
                    ),
                };
                Ok::<_, std::convert::Infallible>(json_response(code, &body))
            }
        });
        if let Err(e) = http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .await
        {
            debug!("{what} connection: {e}");
        }
    });
}

/// A response with `body` as `application/json`.
pub fn json_response(code: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
