//! The admin address: `/metrics` (Prometheus), `/healthz` (the process answers),
//! `/ready` (serving and not draining).
//!
//! It is often open to a whole cluster (bound on 0.0.0.0 for Kubernetes probes), so it
//! bounds its clients as a public listener does (`crate::downstream`), with limits of
//! its own: few connections, short timers. It does not drain: `/ready` says 503 until
//! the end.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::downstream::{Activity, ClientLimits, ConnectionCount, Watched, drive};
use crate::state::Shared;

/// What the admin server allows its clients: probes and a scraper need a handful of
/// connections and send a request's headers at once.
fn limits() -> ClientLimits {
    ClientLimits {
        max_connections: 64,
        request_headers_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        ..ClientLimits::default()
    }
}

/// Serves the admin address until the process ends. Must run inside a `LocalSet`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let limits = limits();
    let count = Arc::new(ConnectionCount::default());
    // The admin never drains; the sender lives as long as the loop.
    let (_never, drain) = tokio::sync::watch::channel(false);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors (EMFILE) the accept fails at once, again and
                // again: a pause keeps it from taking the thread.
                tracing::warn!("admin: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Closed at once past the cap: idle clients cannot take every descriptor.
        let Some(slot) = count.acquire(limits.max_connections) else {
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let activity = Activity::new();
        let requests = activity.clone();
        let drain = drain.clone();
        tokio::task::spawn_local(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let _in_flight = requests.request();
                let answer = answer(req.uri().path(), &shared);
                async move { Ok::<_, Infallible>(answer) }
            });
            let watched = Watched::new(stream, activity.clone());
            // Without a timer hyper's header_read_timeout is off: slowloris.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.request_headers_timeout)
                .serve_connection(TokioIo::new(watched), service);
            drive(conn, activity, &limits, drain, || {}).await;
            drop(slot);
        });
    }
}

fn answer(path: &str, shared: &Shared) -> hyper::Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            shared.metrics.render(shared.engine.metrics()),
        ),
        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/ready" => {
            if shared.ready.load(Ordering::Relaxed) && !shared.draining.load(Ordering::Relaxed) {
                (200, "text/plain", "ready\n".to_owned())
            } else {
                (503, "text/plain", "not ready\n".to_owned())
            }
        }
        _ => (404, "text/plain", "not found\n".to_owned()),
    };
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    resp
}
