//! Limits on the client side of the gateway, so slow or abusive clients cannot hold
//! it: a cap on open connections per listener, an idle timeout for connections with
//! no request in flight, and the HTTP/1 and HTTP/2 settings that bound what one
//! connection may make the gateway hold (header read time, concurrent streams,
//! streams reset by the client, header blocks).

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The listener settings for clients, with their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Open connections per listener, across workers; past it a new connection is
    /// closed at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers once it starts one (HTTP/1;
    /// a new connection starts one at once): slowloris.
    pub request_headers_timeout: Duration,
    /// A connection with no request in flight and no bytes either way for this long
    /// is closed (HTTP/2 with a GOAWAY).
    pub idle_timeout: Duration,
    /// HTTP/2 streams open at once on one connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before the gateway has accepted them, before
    /// the connection is closed with ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487).
    pub http2_max_pending_resets: usize,
    /// Bytes of one decoded HTTP/2 header block (HEADERS and its CONTINUATION
    /// frames): the CONTINUATION flood is cut there.
    pub http2_max_header_list_bytes: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_connections: 10_000,
            request_headers_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            http2_max_concurrent_streams: 100,
            http2_max_pending_resets: 20,
            http2_max_header_list_bytes: 64 << 10,
        }
    }
}

/// Open connections of one listener, shared by every worker.
#[derive(Debug, Default)]
pub struct ConnectionCount(AtomicUsize);

impl ConnectionCount {
    /// A slot for a new connection, or `None` when `max` are open.
    pub fn acquire(self: &Arc<Self>, max: usize) -> Option<ConnectionSlot> {
        let mut n = self.0.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match self
                .0
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(ConnectionSlot(self.clone())),
                Err(now) => n = now,
            }
        }
    }

    pub fn open(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One open connection; the count goes down when it is dropped.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<ConnectionCount>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a connection's idle timer watches: the last time bytes moved, and the
/// requests in flight.
#[derive(Debug, Clone)]
pub struct Activity {
    last: Rc<Cell<Instant>>,
    in_flight: Rc<Cell<usize>>,
    /// Whether the client sent anything yet.
    spoke: Rc<Cell<bool>>,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            last: Rc::new(Cell::new(Instant::now())),
            in_flight: Rc::new(Cell::new(0)),
            spoke: Rc::new(Cell::new(false)),
        }
    }

    fn touch(&self) {
        self.last.set(Instant::now());
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn request(&self) -> InFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        InFlight(self.clone())
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

pub struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.in_flight.set(a.in_flight.get().saturating_sub(1));
        a.touch();
    }
}

/// A connection's byte stream, noting when bytes move.
pub struct Watched<T> {
    inner: T,
    activity: Activity,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Activity) -> Watched<T> {
        Watched { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
            self.activity.spoke.set(true);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Drives a served connection until it ends: dropped when the client has sent
/// nothing within `limits.request_headers_timeout` (the protocol is not even known
/// yet, so HTTP/1's header timer has not started); shut down gracefully (a GOAWAY on
/// HTTP/2, close when idle on HTTP/1) once it has been idle for `idle_timeout`, or
/// when the worker drains; dropped if it has not closed `idle_timeout` later.
pub async fn drive<C>(
    conn: C,
    activity: Activity,
    limits: &ClientLimits,
    mut drain: tokio::sync::watch::Receiver<bool>,
    on_idle: impl FnOnce(),
) where
    C: GracefulConnection,
{
    let idle_timeout = limits.idle_timeout;
    let silent_until = Instant::now() + limits.request_headers_timeout;
    let conn = std::pin::pin!(conn);
    let mut conn = conn;
    let mut on_idle = Some(on_idle);
    let mut closing_since: Option<Instant> = None;
    let mut draining = *drain.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let now = Instant::now();
        let wake = match closing_since {
            Some(since) => since + idle_timeout,
            None if !activity.spoke.get() => silent_until.min(now + idle_timeout),
            None => (activity.last.get() + idle_timeout).max(now + idle_timeout / 8),
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            changed = drain.changed(), if !draining => {
                draining = true;
                if changed.is_ok() && *drain.borrow() {
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if !activity.spoke.get() && now >= silent_until {
                    return;
                }
                match closing_since {
                    // Told to go and still here: drop it.
                    Some(since) if now >= since + idle_timeout => return,
                    Some(_) => {}
                    None => {
                        let idle = activity.in_flight.get() == 0
                            && now >= activity.last.get() + idle_timeout;
                        if idle {
                            closing_since = Some(now);
                            if let Some(f) = on_idle.take() {
                                f();
                            }
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_count_is_capped_and_released() {
        let c = Arc::new(ConnectionCount::default());
        let a = c.acquire(2).unwrap();
        let _b = c.acquire(2).unwrap();
        assert!(c.acquire(2).is_none());
        drop(a);
        assert_eq!(c.open(), 1);
        assert!(c.acquire(2).is_some());
    }
}
