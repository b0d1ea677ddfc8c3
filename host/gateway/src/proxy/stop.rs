//! Why the gateway answers a request itself: one error type for every refusal, from
//! a malformed path to an upstream timeout, carrying the status and message the client
//! gets, the upstream-error metric it counts, and what the access log says.

use std::borrow::Cow;

use portcullis_engine::LocalReply;

/// What the gateway answers when a filter keeps a request paused past the request's
/// deadline (the service's `timeout_ms` from the start).
pub const FILTER_TIMEOUT: &str = "a filter did not let the request go on in time";

/// A request the gateway answers instead of the upstream.
#[derive(Debug)]
pub enum Stop {
    /// The gateway's own refusal.
    Gateway {
        status: u16,
        /// What the client reads (the JSON body's `message`).
        message: Cow<'static, str>,
        /// The upstream-error metric counted (`timeout`, `connect`, `reset`, `tls`,
        /// `body_too_large`, `response_too_large`) when the upstream side is the cause.
        metric: Option<&'static str>,
        /// What the access log's `error` says when it says more than the client is told.
        detail: Option<String>,
    },
    /// A filter answered: its local reply, or a failed filter's 503.
    Filter(LocalReply),
}

impl Stop {
    /// A refusal of the request itself (400, 404, 413, 431...).
    pub fn client(status: u16, message: impl Into<Cow<'static, str>>) -> Stop {
        Stop::Gateway {
            status,
            message: message.into(),
            metric: None,
            detail: None,
        }
    }

    /// A failure on the upstream side, counted under `metric`.
    pub fn upstream(metric: &'static str, status: u16, message: &'static str) -> Stop {
        Stop::Gateway {
            status,
            message: message.into(),
            metric: Some(metric),
            detail: None,
        }
    }

    /// The same refusal with more said in the access log than to the client.
    pub fn detail(mut self, more: String) -> Stop {
        if let Stop::Gateway { detail, .. } = &mut self {
            *detail = Some(more);
        }
        self
    }

    pub fn filter_timeout() -> Stop {
        Stop::client(504, FILTER_TIMEOUT)
    }

    /// The metric to count, if any.
    pub fn metric(&self) -> Option<&'static str> {
        match self {
            Stop::Gateway { metric, .. } => *metric,
            Stop::Filter(_) => None,
        }
    }

    /// The access log's `error`.
    pub fn log_error(&self) -> String {
        match self {
            Stop::Gateway {
                detail: Some(d), ..
            } => d.clone(),
            Stop::Gateway { message, .. } => message.to_string(),
            Stop::Filter(r) => format!("answered by a filter: {}", r.details),
        }
    }

    /// The reply the client gets.
    pub fn into_reply(self, request_id: &str) -> LocalReply {
        match self {
            Stop::Gateway {
                status, message, ..
            } => json_error(status, &message, request_id),
            Stop::Filter(r) => r,
        }
    }
}

/// The gateway's JSON error: `{"message": ..., "request_id": ...}`, the body every
/// local reply of the product carries.
pub fn json_error(status: u16, message: &str, request_id: &str) -> LocalReply {
    LocalReply::json(status, message, message, request_id)
}

/// A failed upstream request as the gateway answers it: 413 when our own request-body
/// limit cut it, else 502 (refused, reset, or a TLS failure), the log saying why.
pub fn send_failure(e: &hyper_util::client::legacy::Error) -> Stop {
    if caused_by_body_limit(e) {
        return Stop::upstream("body_too_large", 413, "request body too large");
    }
    if let Some(cause) = tls_failure(e) {
        return Stop::upstream("tls", 502, "upstream TLS handshake failed")
            .detail(format!("upstream TLS handshake failed: {cause}"));
    }
    let (kind, message) = if e.is_connect() {
        ("connect", "upstream connection failed")
    } else {
        ("reset", "upstream connection reset")
    };
    Stop::upstream(kind, 502, message).detail(format!("{message}: {e}"))
}

/// The TLS error behind a failed upstream connection (an untrusted or mismatched
/// certificate, a protocol failure), for the access log.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // The connector reports it inside io::Errors, whose `source` skips the error
        // they wrap: follow the wrapped one.
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

fn caused_by_body_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}
