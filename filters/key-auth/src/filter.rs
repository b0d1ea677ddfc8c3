//! The proxy-wasm glue: moves bytes between the host and the policy, fetches the key
//! service's consumers through `http_call`, keeps them in shared data for every
//! worker, and answers.
//!
//! Shared data, under `key-auth/<root id>/`:
//! - `consumers`: 8 bytes fetch time (LE seconds), then the service's document; only
//!   the time marks a failed first fetch (no consumers at all).
//! - `lease`: 8 bytes; until that time one VM is fetching (won by CAS on a tick, so a
//!   refresh runs once, not once per worker).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

use crate::config::Config;
use crate::directory::{self, Directory, Entry};
use crate::extract::{self, Location};
use kit::glue::{now_secs, read_u64, write_u64};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { state: None, fetching: None }));
}}

/// How long after a failed fetch the next one may start.
const RETRY_SECONDS: u64 = 10;

/// The largest consumers document taken from the key service.
const MAX_DOCUMENT_BYTES: usize = 16 << 20;

struct Metrics {
    allowed: u32,
    fetches: u32,
    fetch_failures: u32,
    denied: HashMap<&'static str, u32>,
}

impl Metrics {
    fn define() -> Metrics {
        let c = |n: &str| hostcalls::define_metric(MetricType::Counter, n).unwrap_or(0);
        let denied = Denial::ALL
            .iter()
            .map(|d| (d.reason(), c(&format!("key_auth_denied_{}", d.reason()))))
            .collect();
        Metrics {
            allowed: c("key_auth_allowed"),
            fetches: c("key_auth_fetches"),
            fetch_failures: c("key_auth_fetch_failures"),
            denied,
        }
    }

    fn bump(id: u32) {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// Why a request is refused. Kong's answers where Kong has them (key-auth 3.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denial {
    Missing,
    Invalid,
    Ambiguous,
    Forbidden,
    Unavailable,
}

impl Denial {
    const ALL: [Denial; 5] = [
        Denial::Missing,
        Denial::Invalid,
        Denial::Ambiguous,
        Denial::Forbidden,
        Denial::Unavailable,
    ];

    fn reason(self) -> &'static str {
        match self {
            Denial::Missing => "missing",
            Denial::Invalid => "invalid",
            Denial::Ambiguous => "ambiguous",
            Denial::Forbidden => "forbidden",
            Denial::Unavailable => "unavailable",
        }
    }

    fn status(self) -> u32 {
        match self {
            Denial::Missing | Denial::Invalid | Denial::Ambiguous => 401,
            Denial::Forbidden => 403,
            Denial::Unavailable => 503,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Denial::Missing => "No API key found in request",
            Denial::Invalid => "Invalid authentication credentials",
            // Kong says so of a key name repeated; here of any second key.
            Denial::Ambiguous => "Duplicate API key found",
            Denial::Forbidden => "You cannot consume this service",
            Denial::Unavailable => "API keys cannot be loaded now",
        }
    }
}

/// What a VM keeps for all its requests.
struct State {
    config: Config,
    prefix: String,
    /// The key service's consumers, parsed from the shared data fetched at this time.
    fetched: Option<(u64, Rc<Directory>)>,
    metrics: Metrics,
}

/// The fetched consumers as shared data holds them now.
enum Fetched {
    Ready(Rc<Directory>),
    /// Not fetched yet, or the first fetch failed.
    None,
}

impl State {
    fn key(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    /// The fetched consumers. Each request reads only the 8-byte fetch time
    /// (`consumers-at`); the document itself (up to 16 MiB) is read and parsed only
    /// when a newer fetch stored one. Older than `max_stale_seconds`, it no longer
    /// counts: a key service down that long cannot keep revoked keys working.
    fn fetched(&mut self, now: u64) -> Fetched {
        let (at, _) = read_u64(&self.key("consumers-at"));
        let max_stale = self
            .config
            .key_service
            .as_ref()
            .map_or(0, |k| k.max_stale_seconds);
        if at == 0 || now > at.saturating_add(max_stale) {
            return Fetched::None;
        }
        if let Some((t, d)) = &self.fetched {
            if *t == at {
                return Fetched::Ready(d.clone());
            }
        }
        let bytes = match hostcalls::get_shared_data(&self.key("consumers")) {
            Ok((Some(b), _)) if b.len() > 8 => b,
            _ => return Fetched::None,
        };
        // Checked before it was stored; a document that no longer parses counts as none.
        match directory::parse_document(&bytes[8..]) {
            Ok(d) => {
                let d = Rc::new(d);
                self.fetched = Some((at, d.clone()));
                Fetched::Ready(d)
            }
            Err(_) => Fetched::None,
        }
    }
}

struct Root {
    state: Option<Rc<RefCell<State>>>,
    /// The fetch this VM runs, by call token.
    fetching: Option<u32>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        if self.fetching != Some(token) {
            return;
        }
        self.fetching = None;
        let Some(state) = self.state.clone() else {
            return;
        };
        let st = state.borrow();
        let now = now_secs();
        let status = self.get_http_call_response_header(":status");
        let body = if body_size <= MAX_DOCUMENT_BYTES {
            self.get_http_call_response_body(0, body_size)
        } else {
            None
        };
        let checked = match (status.as_deref(), body) {
            (Some("200"), Some(body)) => directory::parse_document(&body).map(|d| (d, body)),
            (Some("200"), None) => Err(format!(
                "the document is empty or larger than {MAX_DOCUMENT_BYTES} bytes"
            )),
            (s, _) => Err(format!(
                "the key service answered {}",
                s.unwrap_or("nothing")
            )),
        };
        let lease = st.key("lease");
        match checked {
            Ok((d, body)) => {
                if st.config.directory.overlaps(&d) {
                    hostcalls::log(
                        LogLevel::Warn,
                        "key-auth: the key service repeats keys of the configuration; the configuration's consumers win",
                    )
                    .ok();
                }
                kit::glue::store_fetched(&st.key("consumers"), Some(&body), now);
                // Written after the document: a reader that sees the new time reads it.
                write_u64(&st.key("consumers-at"), now, None);
                write_u64(&lease, now + st.refresh_seconds(), None);
            }
            Err(e) => {
                Metrics::bump(st.metrics.fetch_failures);
                hostcalls::log(
                    LogLevel::Warn,
                    &format!(
                        "key-auth: fetching consumers failed (keeping what was fetched before): {e}"
                    ),
                )
                .ok();
                kit::glue::store_fetched(&st.key("consumers"), None, now);
                write_u64(&lease, now + RETRY_SECONDS, None);
            }
        }
    }
}

impl State {
    fn refresh_seconds(&self) -> u64 {
        self.config
            .key_service
            .as_ref()
            .map_or(RETRY_SECONDS, |s| s.refresh_seconds)
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let Some((config, root_id)) = kit::glue::configure(self, "key-auth", Config::parse) else {
            return false;
        };
        if config.key_service.is_some() {
            self.set_tick_period(Duration::from_secs(1));
        }
        self.state = Some(Rc::new(RefCell::new(State {
            config,
            prefix: format!("key-auth/{root_id}/"),
            fetched: None,
            metrics: Metrics::define(),
        })));
        true
    }

    /// Fetches the key service's consumers when they are due, in one VM at a time:
    /// the VM that wins the lease by CAS fetches. The lease's end is the next fetch.
    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let st = state.borrow();
        let Some(service) = &st.config.key_service else {
            return;
        };
        let now = now_secs();
        if self.fetching.is_some() {
            return;
        }
        let lease = st.key("lease");
        let (until, cas) = read_u64(&lease);
        if now < until {
            return;
        }
        let hold = now + service.timeout_ms / 1000 + 2;
        if !write_u64(&lease, hold, Some(cas.unwrap_or(0))) {
            return; // another VM won the lease
        }
        match kit::glue::get_json(
            self,
            &service.cluster,
            &service.path,
            service.authority.as_deref(),
            service.timeout_ms,
        ) {
            Ok(token) => {
                Metrics::bump(st.metrics.fetches);
                self.fetching = Some(token);
            }
            Err(e) => {
                hostcalls::log(
                    LogLevel::Error,
                    &format!(
                        "key-auth: cannot fetch consumers from cluster `{}`: {e:?}",
                        service.cluster
                    ),
                )
                .ok();
                write_u64(&lease, now + RETRY_SECONDS, None);
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        Some(Box::new(Request { state }))
    }
}

struct Request {
    state: Rc<RefCell<State>>,
}

impl Request {
    fn deny(&self, st: &State, d: Denial) -> Action {
        if let Some(id) = st.metrics.denied.get(d.reason()) {
            Metrics::bump(*id);
        }
        let request_id = kit::glue::request_id();
        let body = kit::reply::json_body(d.message(), request_id.as_deref());
        let www = format!("Key realm=\"{}\"", st.config.realm);
        let mut headers = vec![kit::reply::CONTENT_TYPE_JSON];
        if d.status() == 401 {
            headers.push(("www-authenticate", &www));
        }
        if d == Denial::Unavailable {
            headers.push(("retry-after", "10"));
        }
        self.send_http_response(d.status(), headers, Some(&body));
        Action::Pause
    }

    /// Admits the request as `entry`'s consumer: identity headers, the credential
    /// properties, and the key taken out when `hide_credentials`.
    fn admit(
        &self,
        st: &State,
        entry: &Entry,
        found: &extract::Found,
        headers: &[(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)],
    ) -> Action {
        if st
            .config
            .claims
            .as_ref()
            .is_some_and(|c| !c.holds(&entry.consumer.claims))
        {
            return self.deny(st, Denial::Forbidden);
        }
        for (k, v) in &entry.consumer.identity {
            self.set_http_request_header(k, Some(v));
        }
        self.set_http_request_header(
            kit::identity::CREDENTIAL_IDENTIFIER,
            Some(&entry.credential),
        );
        self.set_property(
            vec![kit::identity::CREDENTIAL_PROPERTY],
            Some(found.key.as_bytes()),
        );
        // Not a bearer token: header-forwarder leaves `authorization` alone.
        self.set_property(
            vec![kit::identity::CREDENTIAL_KIND_PROPERTY],
            Some(kit::identity::API_KEY.as_bytes()),
        );
        if st.config.hide_credentials {
            match &found.location {
                Location::Header(h) => self.set_http_request_header(h, None),
                Location::Param(p) => {
                    let path =
                        kit::glue::header(MapType::HttpRequestHeaders, ":path").unwrap_or_default();
                    self.set_http_request_header(":path", Some(&extract::without_param(&path, p)));
                }
                Location::Cookie(c) => {
                    let kept: Vec<String> = headers
                        .iter()
                        .filter(|(k, _)| k == "cookie")
                        .filter_map(|(_, v)| extract::without_cookie(v, c))
                        .collect();
                    self.set_http_request_header("cookie", None);
                    for v in kept {
                        self.add_http_request_header("cookie", &v);
                    }
                }
            }
        }
        Metrics::bump(st.metrics.allowed);
        Action::Continue
    }
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let raw = kit::glue::RawMap::read(MapType::HttpRequestHeaders);
        let headers = raw.pairs();
        // A client never sets its own identity.
        for (k, _) in &headers {
            if kit::identity::is_identity_header(k) {
                self.set_http_request_header(k, None);
            }
        }
        let path = headers
            .iter()
            .find(|(k, _)| k == ":path")
            .map_or("", |(_, v)| v.as_ref());
        let state = self.state.clone();
        let mut st = state.borrow_mut();
        let found = match extract::find(&st.config, &headers, path) {
            Ok(Some(f)) => f,
            Ok(None) => return self.deny(&st, Denial::Missing),
            Err(extract::Ambiguous) => return self.deny(&st, Denial::Ambiguous),
        };
        let digest = directory::digest(found.key.as_bytes());
        if let Some(entry) = st.config.directory.lookup(&digest) {
            return self.admit(&st, entry, &found, &headers);
        }
        if st.config.key_service.is_none() {
            return self.deny(&st, Denial::Invalid);
        }
        match st.fetched(now_secs()) {
            Fetched::Ready(d) => match d.lookup(&digest) {
                Some(entry) => self.admit(&st, entry, &found, &headers),
                None => self.deny(&st, Denial::Invalid),
            },
            // Nothing fetched yet, or too long ago: whether the key is good cannot be said.
            Fetched::None => self.deny(&st, Denial::Unavailable),
        }
    }
}
