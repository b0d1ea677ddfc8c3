//! The proxy-wasm glue: reads the request, runs the flow (login redirect, callback,
//! session, refresh, logout, back-channel logout), makes the `http_call`s to the IdP
//! (pausing the request and resuming it). What every worker shares is in [`shared`].

mod shared;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use kit::jwt::keys::KeySet;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

use crate::config::Config;
use crate::cookie;
use crate::cookie::SameSite;
use crate::idp::{self, Discovery, TokenError, TokenRefused, Tokens};
use crate::logout::{self, Verdict};
use crate::session::{
    self, BearerCache, LOGIN, LOGIN_TTL, Login, Revoked, SESSION, Session, SessionCache, Standing,
};
use crate::url::{self, is_local_target};
use shared::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { state: None, fetching: Vec::new() }));
}}

/// How long after a failed fetch the next one may start.
struct Root {
    state: Option<Rc<RefCell<State>>>,
    /// Refreshes this VM runs from ticks.
    fetching: Vec<(u32, Fetch)>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let Some(i) = self.fetching.iter().position(|(t, _)| *t == token) else {
            return;
        };
        let (_, what) = self.fetching.remove(i);
        let Some(state) = self.state.clone() else {
            return;
        };
        let mut st = state.borrow_mut();
        let now = now_secs();
        let status = self.get_http_call_response_header(":status");
        let body = self.get_http_call_response_body(0, body_size);
        let ok = take_fetch(&mut st, what, status, body, now);
        let lease = st.key(&format!("lease/{}", what.name()));
        write_u64(&lease, if ok { 0 } else { now + RETRY_SECONDS }, None);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration();
        let config = match Config::parse(bytes.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                log(LogLevel::Error, &e.to_string());
                return false;
            }
        };
        let root_id = self
            .get_property(vec!["plugin_root_id"])
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        self.set_tick_period(Duration::from_secs(1));
        let strip = config.spoofable_headers();
        self.state = Some(Rc::new(RefCell::new(State {
            cache: SessionCache::new(config.cache_entries),
            bearer: BearerCache::new(config.cache_entries),
            config,
            prefix: format!("oidc/{root_id}/"),
            discovery: None,
            keys: None,
            revoked: (0, Rc::new(Revoked::default())),
            strip,
            metrics: Metrics::define(),
        })));
        true
    }

    /// Fetches the discovery document and then the JWKS when missing or older than
    /// their TTL, in one VM at a time (the one that wins the lease by CAS).
    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let mut st = state.borrow_mut();
        let now = now_secs();
        for what in [Fetch::Discovery, Fetch::Jwks] {
            if self.fetching.iter().any(|(_, w)| *w == what) {
                continue;
            }
            let ttl = match what {
                Fetch::Discovery => st.config.discovery_ttl,
                Fetch::Jwks => st.config.jwks_ttl,
            };
            let (fetched_at, _) = read_u64(&st.key(what.name()));
            let has = matches!(hostcalls::get_shared_data(&st.key(what.name())), Ok((Some(b), _)) if b.len() > 8);
            if has && now < fetched_at + ttl {
                continue;
            }
            if what == Fetch::Jwks && !matches!(st.discovery(now), Meta::Ready(_)) {
                continue;
            }
            let lease = st.key(&format!("lease/{}", what.name()));
            let (until, cas) = read_u64(&lease);
            if now < until {
                continue;
            }
            let hold = now + st.config.idp_timeout_ms / 1000 + 2;
            if !write_u64(&lease, hold, Some(cas.unwrap_or(0))) {
                continue;
            }
            if let Some(t) = dispatch_fetch(self, &mut st, what, now) {
                self.fetching.push((t, what));
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        Some(Box::new(Request {
            state,
            facts: Facts::default(),
            stage: Stage::Start,
            pending: None,
            set_cookies: Vec::new(),
            fetched: Vec::new(),
        }))
    }
}

/// What the filter needs from the request, copied in the request phase.
#[derive(Default)]
struct Facts {
    method: String,
    /// `:path` as sent (path and query).
    path: String,
    cookies: Vec<String>,
    browser: bool,
    bearer: Option<String>,
    /// How many `Authorization` headers the request has.
    authorizations: usize,
    request_id: Option<String>,
    authority: String,
    /// `Origin` and `Sec-Fetch-Site`, for logout (two of either read as cross-site).
    origin: Option<String>,
    fetch_site: Option<String>,
    content_type: Option<String>,
    content_length: Option<String>,
    body: Vec<u8>,
}

impl Facts {
    fn cookie_refs(&self) -> Vec<&str> {
        self.cookies.iter().map(String::as_str).collect()
    }

    fn query(&self) -> &str {
        self.path.split_once('?').map_or("", |(_, q)| q)
    }

    fn path_only(&self) -> &str {
        self.path
            .split_once('?')
            .map_or(self.path.as_str(), |(p, _)| p)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Callback,
    Logout,
    Backchannel,
    Protected,
}

/// Where a paused request is in the flow.
enum Stage {
    Start,
    /// Code exchanged: verify the ID token and open the session.
    Verify(Login, Tokens),
    /// Tokens refreshed: check and store them.
    Refreshed(Session, Tokens),
}

enum Pending {
    Fetch(u32, Fetch),
    Exchange(u32, Login),
    Refresh(u32, Session),
}

struct Request {
    state: Rc<RefCell<State>>,
    facts: Facts,
    stage: Stage,
    pending: Option<Pending>,
    /// `Set-Cookie` values for the response.
    set_cookies: Vec<String>,
    /// Documents this request fetched already (at most once each).
    fetched: Vec<Fetch>,
}

impl Request {
    fn route(&self, c: &Config) -> Route {
        let p = self.facts.path_only();
        if p == c.callback_path {
            Route::Callback
        } else if c.logout_path.as_deref() == Some(p) {
            Route::Logout
        } else if c.backchannel_logout_path.as_deref() == Some(p) {
            Route::Backchannel
        } else {
            Route::Protected
        }
    }

    fn reply(&mut self, status: u32, message: &str, extra: &[(&str, &str)]) -> Action {
        let body = kit::reply::json_body(message, self.facts.request_id.as_deref());
        let cookies = std::mem::take(&mut self.set_cookies);
        let mut headers: Vec<(&str, &str)> =
            vec![kit::reply::CONTENT_TYPE_JSON, ("cache-control", "no-store")];
        headers.extend_from_slice(extra);
        for c in &cookies {
            headers.push(("set-cookie", c));
        }
        self.send_http_response(status, headers, Some(&body));
        Action::Pause
    }

    fn redirect(&mut self, location: &str) -> Action {
        let cookies = std::mem::take(&mut self.set_cookies);
        let mut headers: Vec<(&str, &str)> =
            vec![("location", location), ("cache-control", "no-store")];
        for c in &cookies {
            headers.push(("set-cookie", c));
        }
        self.send_http_response(302, headers, None);
        Action::Pause
    }

    fn unavailable(&mut self, what: &str) -> Action {
        self.reply(
            503,
            &format!("the identity provider is unavailable ({what}); try again shortly"),
            &[("retry-after", "10")],
        )
    }

    /// Clears the session cookies (and chunks) the browser sent, and the login cookie.
    fn clear_cookies(&mut self, st: &State, login_too: bool) {
        let refs = self.facts.cookie_refs();
        let c = &st.config.cookie;
        let names = cookie::names_present(&refs, &c.name);
        let logins = if login_too {
            cookie::login_names_present(&refs, &c.state_name)
        } else {
            Vec::new()
        };
        let queued = |cookies: &[String], n: &str| {
            cookies
                .iter()
                .any(|q| q.strip_prefix(n).is_some_and(|r| r.starts_with('=')))
        };
        // A flow that ran again after a fetch does not clear the same cookie twice.
        for n in names {
            if !queued(&self.set_cookies, &n) {
                self.set_cookies
                    .push(cookie::set_cookie(c, &n, "", Some(0), c.samesite));
            }
        }
        for n in logins {
            if !queued(&self.set_cookies, &n) {
                self.set_cookies
                    .push(cookie::set_cookie(c, &n, "", Some(0), SameSite::Lax));
            }
        }
    }

    /// Clears the cookie of the login with this state, when the browser sent it (the
    /// other logins in progress, in other tabs, stay).
    fn clear_login(&mut self, st: &State, state: &str) {
        let c = &st.config.cookie;
        if let Some(name) = cookie::login_name(&c.state_name, state)
            && cookie::find(&self.facts.cookie_refs(), &name).is_some()
        {
            self.set_cookies
                .push(cookie::set_cookie(c, &name, "", Some(0), SameSite::Lax));
        }
    }

    /// Needs the discovery document: Ok, or the request is paused for a fetch or
    /// answered 503.
    fn need_discovery(&mut self, st: &mut State, now: u64) -> Result<Rc<Discovery>, Action> {
        match st.discovery(now) {
            Meta::Ready(d) => Ok(d),
            Meta::NotYet if !self.fetched.contains(&Fetch::Discovery) => {
                match dispatch_fetch(self, st, Fetch::Discovery, now) {
                    Some(t) => {
                        self.pending = Some(Pending::Fetch(t, Fetch::Discovery));
                        Err(Action::Pause)
                    }
                    None => Err(self.unavailable("discovery")),
                }
            }
            _ => Err(self.unavailable("discovery document")),
        }
    }

    /// Needs the JWKS (`refetch`: the one we have lacks the token's key).
    fn need_keys(&mut self, st: &mut State, now: u64, refetch: bool) -> Result<Rc<KeySet>, Action> {
        let meta = st.keys(now);
        match meta {
            Meta::Ready(k) if !refetch => Ok(k),
            Meta::Failed if !refetch => Err(self.unavailable("signing keys")),
            _ if self.fetched.contains(&Fetch::Jwks) => match meta {
                Meta::Ready(k) => Ok(k),
                _ => Err(self.unavailable("signing keys")),
            },
            // The keys we have, when another refetch ran a moment ago: the token's
            // key is then refused as unknown.
            Meta::Ready(k) if !st.claim_forced_refetch(now) => Ok(k),
            _ => {
                self.need_discovery(st, now)?;
                match dispatch_fetch(self, st, Fetch::Jwks, now) {
                    Some(t) => {
                        self.pending = Some(Pending::Fetch(t, Fetch::Jwks));
                        Err(Action::Pause)
                    }
                    None => Err(self.unavailable("signing keys")),
                }
            }
        }
    }

    /// Runs the flow from where the request is; called again after each fetch.
    fn proceed(&mut self) -> Action {
        let state = self.state.clone();
        let mut st = state.borrow_mut();
        let now = now_secs();
        let result = match std::mem::replace(&mut self.stage, Stage::Start) {
            Stage::Verify(login, tokens) => self.finish_login(&mut st, now, login, tokens),
            Stage::Refreshed(s, tokens) => self.finish_refresh(&mut st, now, s, tokens),
            Stage::Start => match self.route(&st.config) {
                Route::Callback => self.callback(&mut st, now),
                Route::Logout => self.logout(&mut st, now),
                Route::Backchannel => self.backchannel(&mut st, now),
                Route::Protected => self.protected(&mut st, now),
            },
        };
        result.unwrap_or_else(|a| a)
    }

    // ---- A protected request.

    fn protected(&mut self, st: &mut State, now: u64) -> Result<Action, Action> {
        if st.config.bearer_passthrough && self.facts.authorizations > 1 {
            // Which one would the upstream read? Refused, as jwt-auth does.
            let realm = st.config.realm.replace(['"', '\\'], "");
            let e = kit::jwt::Invalid::Multiple;
            let www = format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{e}\""
            );
            return Err(self.reply(
                401,
                &format!("invalid_request: {e}"),
                &[("www-authenticate", &www)],
            ));
        }
        if let Some(token) = self.facts.bearer.clone()
            && st.config.bearer_passthrough
        {
            return self.passthrough(st, now, &token, false);
        }
        let refs = self.facts.cookie_refs();
        let Some(value) = cookie::read_chunked(&refs, &st.config.cookie.name) else {
            return self.unauthenticated(st, now);
        };
        let cached = st.cache.get(&value);
        let fresh = cached.is_none();
        let session = match cached {
            Some(s) => s,
            None => match session::open::<Session>(&st.config.keys, SESSION, &value) {
                Ok(s) => Rc::new(s),
                Err(e) => {
                    bump(st.metrics.cookies_rejected);
                    log(LogLevel::Info, &format!("session cookie rejected: {e}"));
                    self.clear_cookies(st, false);
                    return self.unauthenticated(st, now);
                }
            },
        };
        if st.revoked().revokes(&session) {
            log(
                LogLevel::Info,
                "session cookie rejected: the session was logged out",
            );
            st.cache.remove(&value);
            self.clear_cookies(st, false);
            return self.unauthenticated(st, now);
        }
        let standing = session.standing(&st.config, now);
        // Cached only once judged good: a replayed dead cookie is never stored.
        if fresh && !matches!(standing, Standing::Over(_)) {
            st.cache.insert(&value, session.clone());
        }
        match standing {
            Standing::Good | Standing::GoodUntilExpiry => {
                if session.wants_touch(&st.config, now) {
                    let mut s = (*session).clone();
                    s.seen = now;
                    // Unwritten, the idle clock restarts on a later request.
                    let _ = self.write_session(st, &s);
                }
                self.apply(st, &session);
                Ok(Action::Continue)
            }
            Standing::Refresh => {
                // Another request (on any worker) may have refreshed this session
                // already: with rotating refresh tokens a second refresh would fail.
                if let Some((sealed, newer)) = st.refreshed(&session, now) {
                    self.queue_session_cookies(st, &sealed, newer.expires);
                    self.apply(st, &newer);
                    return Ok(Action::Continue);
                }
                let d = self.need_discovery(st, now)?;
                if now < session.access_expires && !st.claim_refresh(&session.id, now) {
                    // Another request is refreshing this session (its answer brings
                    // the browser the new cookie); the current token is still valid.
                    self.apply(st, &session);
                    return Ok(Action::Continue);
                }
                let rt = session.refresh_token.clone().unwrap_or_default();
                let (headers, body) = idp::refresh_grant(&st.config, &rt);
                match self.token_call(st, &d, headers, &body) {
                    Some(t) => {
                        self.pending = Some(Pending::Refresh(t, (*session).clone()));
                        Ok(Action::Pause)
                    }
                    None => Err(self.unavailable("token endpoint")),
                }
            }
            Standing::Over(why) => {
                log(LogLevel::Info, &format!("session ended: {why}"));
                st.cache.remove(&value);
                self.clear_cookies(st, false);
                self.unauthenticated(st, now)
            }
        }
    }

    /// A bearer token the client sent: verified with the IdP's keys (no redirect).
    fn passthrough(
        &mut self,
        st: &mut State,
        now: u64,
        token: &str,
        refetched: bool,
    ) -> Result<Action, Action> {
        if let Some(identity) = st.bearer.get(token, now) {
            bump(st.metrics.bearer_cache_hits);
            self.apply_bearer(st, token, &identity);
            return Ok(Action::Continue);
        }
        let keys = self.need_keys(st, now, refetched)?;
        match idp::verify_bearer(&st.config, &keys, token, now) {
            Ok(claims) => {
                let identity = Rc::new(kit::jwt::consumer::identity_headers(
                    &st.config.consumer,
                    &claims,
                    &st.config.issuer,
                ));
                // Valid until `exp` (verify_bearer requires one), without the skew: a
                // cached token never outlives its own expiry.
                if let Ok(Some(exp)) = kit::jwt::claims::numeric(&claims, "exp") {
                    st.bearer.insert(token, identity.clone(), exp);
                }
                self.apply_bearer(st, token, &identity);
                Ok(Action::Continue)
            }
            Err(TokenRefused::UnknownKey) if !refetched && !self.fetched.contains(&Fetch::Jwks) => {
                self.passthrough(st, now, token, true)
            }
            Err(e) => {
                let realm = st.config.realm.replace(['"', '\\'], "");
                let www = format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{e}\""
                );
                Err(self.reply(
                    401,
                    &format!("bearer token refused: {e}"),
                    &[("www-authenticate", &www)],
                ))
            }
        }
    }

    fn apply_bearer(&mut self, st: &State, token: &str, identity: &[(String, String)]) {
        for (k, v) in identity {
            self.set_http_request_header(k, Some(v));
        }
        // The upstream sees the token that was verified, in the configured header,
        // whatever else the client sent.
        if let Some(h) = &st.config.access_token_header {
            let v = if h.bearer {
                format!("Bearer {token}")
            } else {
                token.to_owned()
            };
            self.set_http_request_header(&h.name, Some(&v));
        }
        self.set_property(
            vec![kit::identity::CREDENTIAL_PROPERTY],
            Some(token.as_bytes()),
        );
    }

    /// No session: a browser asking for a page logs in; anything else gets 401.
    fn unauthenticated(&mut self, st: &mut State, now: u64) -> Result<Action, Action> {
        let page = matches!(self.facts.method.as_str(), "GET" | "HEAD");
        if !(self.facts.browser && page && self.facts.bearer.is_none()) {
            bump(st.metrics.unauthenticated);
            let realm = st.config.realm.replace(['"', '\\'], "");
            let www = format!("Bearer realm=\"{realm}\"");
            let status = st.config.unauthenticated_api;
            return Err(self.reply(
                status,
                "authentication required",
                &[("www-authenticate", &www)],
            ));
        }
        let d = self.need_discovery(st, now)?;
        let (Some(state), Some(nonce), Some(verifier)) =
            (random_b64(24), random_b64(24), random_b64(32))
        else {
            return Err(self.reply(500, "no randomness available", &[]));
        };
        let target = if is_local_target(&self.facts.path) {
            self.facts.path.clone()
        } else {
            "/".into()
        };
        let login = Login {
            state,
            nonce,
            verifier,
            target,
            created: now,
        };
        let sealed = match session::seal(&st.config.keys, LOGIN, &login) {
            Ok(s) => s,
            Err(e) => {
                log(LogLevel::Error, &e);
                return Err(self.reply(500, "cannot start the login", &[]));
            }
        };
        let c = &st.config.cookie;
        // Lax whatever the session's SameSite: the IdP's redirect back is a cross-site
        // top-level navigation, which Lax cookies accompany and Strict ones do not.
        let Some(name) = cookie::login_name(&c.state_name, &login.state) else {
            return Err(self.reply(500, "cannot start the login", &[]));
        };
        self.set_cookies.push(cookie::set_cookie(
            c,
            &name,
            &sealed,
            Some(LOGIN_TTL),
            SameSite::Lax,
        ));
        bump(st.metrics.logins_started);
        let query = self.facts.path.split_once('?').map_or("", |(_, q)| q);
        let location = idp::authorize_url(
            &st.config,
            &d,
            &login.state,
            &login.nonce,
            &login.verifier,
            query,
        );
        Err(self.redirect(&location))
    }

    /// Upstream headers for a good session.
    fn apply(&mut self, st: &State, s: &Session) {
        bump(st.metrics.sessions);
        let c = &st.config;
        if let Some(h) = &c.access_token_header {
            if h.bearer {
                let v = format!("Bearer {}", s.access_token);
                self.set_http_request_header(&h.name, Some(&v));
            } else {
                self.set_http_request_header(&h.name, Some(&s.access_token));
            }
        }
        if let Some(h) = &c.id_token_header {
            self.set_http_request_header(h, Some(&s.id_token));
        }
        for (k, v) in &s.identity {
            self.set_http_request_header(k, Some(v));
        }
        self.set_property(
            vec![kit::identity::CREDENTIAL_PROPERTY],
            Some(s.access_token.as_bytes()),
        );
        // The upstream does not need our cookies; other cookies pass.
        let (session_name, login_name) = (c.cookie.name.as_str(), c.cookie.state_name.as_str());
        let mut kept = String::new();
        let mut dropped = false;
        for h in &self.facts.cookies {
            for pair in h.split(';') {
                let pair = pair.trim();
                let name = pair.split_once('=').map_or(pair, |(k, _)| k);
                let ours = name == session_name
                    || name
                        .strip_prefix(session_name)
                        .and_then(|r| r.strip_prefix('.'))
                        .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
                    || name
                        .strip_prefix(login_name)
                        .is_some_and(|r| r.starts_with('.'));
                if ours {
                    dropped = true;
                } else if !pair.is_empty() {
                    if !kept.is_empty() {
                        kept.push_str("; ");
                    }
                    kept.push_str(pair);
                }
            }
        }
        if dropped {
            self.set_http_request_header("cookie", (!kept.is_empty()).then_some(kept.as_str()));
        }
    }

    /// Seals `s` and queues its cookies (chunks when long; stale chunks cleared).
    /// Err (logged, with the reason for the user) when it cannot be sealed or would
    /// be too large to read back.
    fn write_session(&mut self, st: &State, s: &Session) -> Result<String, &'static str> {
        let sealed = match session::seal(&st.config.keys, SESSION, s) {
            Ok(v) => v,
            Err(e) => {
                log(LogLevel::Error, &e);
                return Err("no randomness available to seal the session");
            }
        };
        if sealed.len() > cookie::MAX_READABLE {
            log(
                LogLevel::Error,
                &format!(
                    "the session is {} bytes sealed, more than the {} its cookies can carry: \
                     the ID token or the identity claims are too large",
                    sealed.len(),
                    cookie::MAX_READABLE
                ),
            );
            return Err("the session is too large for cookies (too many claims in the ID token?)");
        }
        self.queue_session_cookies(st, &sealed, s.expires);
        Ok(sealed)
    }

    /// The answer when a session cannot be written: a clear error, not a cookie the
    /// next request cannot read (which would send the browser round the login again).
    fn unwritten(&mut self, st: &State, what: &str, why: &str) -> Action {
        self.clear_cookies(st, false);
        self.reply(500, &format!("{what}: {why}"), &[])
    }

    /// Queues the `Set-Cookie`s that carry a sealed session.
    fn queue_session_cookies(&mut self, st: &State, sealed: &str, expires: u64) {
        let c = &st.config.cookie;
        let parts = cookie::chunks(&c.name, sealed);
        let refs = self.facts.cookie_refs();
        let stale: Vec<String> = cookie::names_present(&refs, &c.name)
            .into_iter()
            .filter(|n| !parts.iter().any(|(p, _)| p == n))
            .collect();
        let age = expires.saturating_sub(now_secs());
        for (name, value) in &parts {
            self.set_cookies
                .push(cookie::set_cookie(c, name, value, Some(age), c.samesite));
        }
        for n in stale {
            self.set_cookies
                .push(cookie::set_cookie(c, &n, "", Some(0), c.samesite));
        }
    }

    fn token_call(
        &mut self,
        st: &State,
        d: &Discovery,
        headers: Vec<(String, String)>,
        body: &[u8],
    ) -> Option<u32> {
        let u = url::Url::parse(&d.token_endpoint)?;
        let path = u.path_and_query();
        let mut h: Vec<(&str, &str)> = vec![
            (":method", "POST"),
            (":path", &path),
            (":authority", &u.authority),
        ];
        h.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        match self.dispatch_http_call(
            &st.config.idp_cluster,
            h,
            Some(body),
            vec![],
            Duration::from_millis(st.config.idp_timeout_ms),
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("cannot call the token endpoint: {e:?}"),
                );
                None
            }
        }
    }

    fn finish_refresh(
        &mut self,
        st: &mut State,
        now: u64,
        old: Session,
        tokens: Tokens,
    ) -> Result<Action, Action> {
        // A refreshed ID token is verified as at login, and the identity comes from it:
        // a user whose groups or tier changed at the IdP gets the new ones. While the
        // keys are fetched the refreshed tokens wait in the stage: dropping them would
        // refresh again with the old refresh token, which an IdP that rotates them
        // refuses.
        let claims = match &tokens.id_token {
            None => None,
            Some(idt) => {
                let keys = match st.keys(now) {
                    Meta::Ready(k) => Some(k),
                    Meta::NotYet if !self.fetched.contains(&Fetch::Jwks) => {
                        if let Some(t) = dispatch_fetch(self, st, Fetch::Jwks, now) {
                            self.pending = Some(Pending::Fetch(t, Fetch::Jwks));
                            self.stage = Stage::Refreshed(old, tokens);
                            return Ok(Action::Pause);
                        }
                        None
                    }
                    _ => None,
                };
                let Some(keys) = keys else {
                    // Nothing to verify it with: not a word of it is used. The session
                    // as it was serves while its token is valid; the next request
                    // refreshes again.
                    if now < old.access_expires {
                        log(
                            LogLevel::Warn,
                            "refreshed ID token not verifiable (no signing keys): current session kept",
                        );
                        self.apply(st, &old);
                        return Ok(Action::Continue);
                    }
                    return Err(self.unavailable("signing keys"));
                };
                let sid = old.idp_sid.as_deref();
                match idp::verify_refreshed_id_token(&st.config, &keys, idt, &old.sub, sid, now) {
                    Ok(claims) => Some(claims),
                    Err(TokenRefused::UnknownKey) if !self.fetched.contains(&Fetch::Jwks) => {
                        // A key the IdP rotated in: fetch the JWKS once, then decide
                        // again (need_keys with refetch pauses, answers 503, or gives
                        // the keys we have when a refetch ran a moment ago).
                        self.stage = Stage::Refreshed(old.clone(), tokens);
                        match self.need_keys(st, now, true) {
                            Err(a) => return Err(a),
                            Ok(_) => {
                                self.stage = Stage::Start;
                                return Err(self.end_refreshed(
                                    st,
                                    now,
                                    &old,
                                    TokenRefused::UnknownKey,
                                ));
                            }
                        }
                    }
                    Err(e) => return Err(self.end_refreshed(st, now, &old, e)),
                }
            }
        };
        let mut s = old.clone();
        s.access_expires = access_expiry(&tokens, now);
        s.access_token = tokens.access_token;
        if let Some(rt) = tokens.refresh_token {
            s.refresh_token = Some(rt);
        }
        if let (Some(claims), Some(idt)) = (claims, tokens.id_token) {
            s.identity = kit::jwt::consumer::identity_headers(
                &st.config.consumer,
                &claims,
                &st.config.issuer,
            );
            if s.idp_sid.is_none() {
                s.idp_sid = claims
                    .get("sid")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
            }
            s.id_token = idt;
        }
        s.seen = now;
        bump(st.metrics.refreshes);
        let sealed = match self.write_session(st, &s) {
            Ok(sealed) => sealed,
            Err(why) => return Err(self.unwritten(st, "the session could not be refreshed", why)),
        };
        st.publish_refreshed(&s, &sealed);
        self.apply(st, &s);
        Ok(Action::Continue)
    }

    /// A refresh whose ID token was refused: the session is over (revoked, so a copy of
    /// the cookie cannot use its still valid access token either) and the client logs
    /// in again.
    fn end_refreshed(
        &mut self,
        st: &mut State,
        now: u64,
        old: &Session,
        why: TokenRefused,
    ) -> Action {
        log(
            LogLevel::Warn,
            &format!("refreshed ID token refused, session ended: {why}"),
        );
        bump(st.metrics.refresh_failures);
        if !st.revoke(|r, l| r.revoke_session(old, now, l)) {
            return self.reply(
                503,
                "the session could not be refreshed: try again in a moment",
                &[("retry-after", "1")],
            );
        }
        self.clear_cookies(st, false);
        // The old cookie is no session any more, should the login below pause and run
        // the flow again.
        let name = st.config.cookie.name.clone();
        self.facts.cookies.retain(|h| !h.contains(name.as_str()));
        self.unauthenticated(st, now).unwrap_or_else(|a| a)
    }

    // ---- The callback.

    fn callback(&mut self, st: &mut State, now: u64) -> Result<Action, Action> {
        let query = self.facts.query().to_owned();
        let param = |n: &str| url::param(&query, n);
        if let Ok(Some(error)) = param("error") {
            bump(st.metrics.login_failures);
            if let Ok(Some(state)) = param("state") {
                self.clear_login(st, &state);
            }
            let error = idp::sanitize(&error);
            log(
                LogLevel::Info,
                &format!("the IdP answered the login with error `{error}`"),
            );
            return Err(self.reply(
                401,
                &format!("login failed: the identity provider answered `{error}`"),
                &[],
            ));
        }
        // RFC 9207: an IdP that names itself must be ours (mix-up defence).
        if param("iss").is_ok_and(|iss| iss.is_some_and(|iss| iss != st.config.issuer)) {
            bump(st.metrics.login_failures);
            if let Ok(Some(state)) = param("state") {
                self.clear_login(st, &state);
            }
            return Err(self.reply(401, "login failed: the answer names another issuer", &[]));
        }
        let (Ok(Some(code)), Ok(Some(state))) = (param("code"), param("state")) else {
            bump(st.metrics.login_failures);
            return Err(self.reply(
                400,
                "login failed: the callback needs one code and one state",
                &[],
            ));
        };
        let refs = self.facts.cookie_refs();
        let name = cookie::login_name(&st.config.cookie.state_name, &state);
        let login = match name
            .as_deref()
            .and_then(|n| cookie::find(&refs, n))
            .map(|v| session::open::<Login>(&st.config.keys, LOGIN, v))
        {
            Some(Ok(l)) if now < l.created + LOGIN_TTL => l,
            None if !cookie::login_names_present(&refs, &st.config.cookie.state_name)
                .is_empty() =>
            {
                // Logins are in progress, none with this state.
                bump(st.metrics.login_failures);
                return Err(self.reply(
                    401,
                    "login failed: the state does not match this browser's login",
                    &[],
                ));
            }
            other => {
                bump(st.metrics.login_failures);
                if let Some(Err(e)) = other {
                    log(LogLevel::Info, &format!("login cookie rejected: {e}"));
                }
                self.clear_login(st, &state);
                return Err(self.reply(401, "login failed: no login in progress or it took too long; start again from the application", &[]));
            }
        };
        if state != login.state {
            bump(st.metrics.login_failures);
            self.clear_login(st, &state);
            return Err(self.reply(
                401,
                "login failed: the state does not match this browser's login",
                &[],
            ));
        }
        let d = self.need_discovery(st, now)?;
        match st.use_state(&login.state, now) {
            StateUse::Fresh => {}
            StateUse::Replayed => {
                bump(st.metrics.login_failures);
                self.clear_login(st, &login.state);
                return Err(self.reply(401, "login failed: this login was already completed", &[]));
            }
            StateUse::Busy => {
                // The login cookie stays: the same callback can be retried.
                log(
                    LogLevel::Warn,
                    "could not record a login state: shared data busy",
                );
                return Err(self.reply(
                    503,
                    "login busy: try again in a moment",
                    &[("retry-after", "1")],
                ));
            }
        }
        let (headers, body) = idp::code_grant(&st.config, &code, &login.verifier);
        match self.token_call(st, &d, headers, &body) {
            Some(t) => {
                self.pending = Some(Pending::Exchange(t, login));
                Ok(Action::Pause)
            }
            None => Err(self.unavailable("token endpoint")),
        }
    }

    fn finish_login(
        &mut self,
        st: &mut State,
        now: u64,
        login: Login,
        tokens: Tokens,
    ) -> Result<Action, Action> {
        let Some(id_token) = tokens.id_token.clone() else {
            bump(st.metrics.login_failures);
            return Err(self.reply(
                401,
                "login failed: the identity provider sent no ID token",
                &[],
            ));
        };
        let refetch = self.fetched.contains(&Fetch::Jwks);
        let keys = match self.need_keys(st, now, false) {
            Ok(k) => k,
            Err(a) => {
                self.stage = Stage::Verify(login, tokens);
                return Err(a);
            }
        };
        let claims =
            match idp::verify_id_token(&st.config, &keys, &id_token, Some(&login.nonce), now) {
                Ok(c) => c,
                Err(TokenRefused::UnknownKey) if !refetch => {
                    // A key the IdP rotated in: fetch the JWKS once, then decide again
                    // (need_keys with refetch always pauses or answers).
                    self.stage = Stage::Verify(login, tokens);
                    return match self.need_keys(st, now, true) {
                        Ok(_) => {
                            self.stage = Stage::Start;
                            Err(self.reply(401, "login failed: no key matches the ID token", &[]))
                        }
                        Err(a) => Err(a),
                    };
                }
                Err(e) => {
                    bump(st.metrics.login_failures);
                    log(LogLevel::Warn, &format!("ID token refused: {e}"));
                    self.clear_login(st, &login.state);
                    return Err(self.reply(
                        401,
                        &format!("login failed: the ID token was refused ({e})"),
                        &[],
                    ));
                }
            };
        let Some(sub) = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
        else {
            return Err(self.reply(401, "login failed: the ID token has no subject", &[]));
        };
        let Some(id) = random_b64(18) else {
            return Err(self.reply(500, "no randomness available", &[]));
        };
        let identity =
            kit::jwt::consumer::identity_headers(&st.config.consumer, &claims, &st.config.issuer);
        let s = Session {
            id,
            sub,
            idp_sid: claims
                .get("sid")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            created: now,
            expires: now + st.config.lifetime,
            seen: now,
            access_expires: access_expiry(&tokens, now),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            id_token,
            identity,
        };
        // The login cookie is spent; stale session chunks go too.
        self.clear_login(st, &login.state);
        if let Err(why) = self.write_session(st, &s) {
            bump(st.metrics.login_failures);
            return Err(self.unwritten(st, "login failed", why));
        }
        bump(st.metrics.logins_completed);
        let target = if is_local_target(&login.target) {
            login.target
        } else {
            "/".into()
        };
        Err(self.redirect(&target))
    }

    // ---- Logout.

    fn logout(&mut self, st: &mut State, now: u64) -> Result<Action, Action> {
        let refs = self.facts.cookie_refs();
        let session = cookie::read_chunked(&refs, &st.config.cookie.name)
            .and_then(|v| session::open::<Session>(&st.config.keys, SESSION, &v).ok());
        let hint = url::param(self.facts.query(), "id_token_hint")
            .ok()
            .flatten();
        let ask = logout::Ask {
            method: &self.facts.method,
            origin: self.facts.origin.as_deref(),
            fetch_site: self.facts.fetch_site.as_deref(),
            authority: &self.facts.authority,
            app_origin: &st.config.app_origin,
            hint: hint.as_deref(),
            id_token: session.as_ref().map(|s| s.id_token.as_str()),
        };
        match logout::decide(&ask) {
            Verdict::End => {}
            Verdict::Confirm if self.facts.browser => {
                let body = logout::CONFIRM_PAGE.as_bytes();
                self.send_http_response(200, logout::CONFIRM_HEADERS.to_vec(), Some(body));
                return Err(Action::Pause);
            }
            Verdict::Confirm => {
                return Err(self.reply(
                    403,
                    "logout needs a POST from the application, or a link on its own pages",
                    &[],
                ));
            }
            Verdict::CrossSite(why) => {
                log(LogLevel::Info, &format!("cross-site logout refused: {why}"));
                return Err(self.reply(403, &format!("logout refused: {why}"), &[]));
            }
            Verdict::Method => {
                return Err(self.reply(
                    405,
                    "logout takes a POST or DELETE from the application (or a GET from its pages)",
                    &[("allow", "GET, POST, DELETE")],
                ));
            }
        }
        // Without discovery the cookies are still cleared: logout never fails.
        let d = match st.discovery(now) {
            Meta::Ready(d) => Some(d),
            Meta::NotYet if !self.fetched.contains(&Fetch::Discovery) => {
                if let Some(t) = dispatch_fetch(self, st, Fetch::Discovery, now) {
                    self.pending = Some(Pending::Fetch(t, Fetch::Discovery));
                    return Ok(Action::Pause);
                }
                None
            }
            _ => None,
        };
        if let Some(s) = &session {
            // Only a live session needs revoking: a replayed logout of a dead cookie
            // must not grow the list.
            let live = !matches!(s.standing(&st.config, now), Standing::Over(_));
            if live && !st.revoked().revokes(s) && !st.revoke(|r, l| r.revoke_session(s, now, l)) {
                // Not recorded: a copy of the cookie would still work, so the user must
                // not be told it is over. The cookies stay, so the logout can be retried.
                return Err(self.reply(
                    503,
                    "logout busy: try again in a moment",
                    &[("retry-after", "1")],
                ));
            }
        }
        self.clear_cookies(st, true);
        let post = st.config.post_logout_redirect_uri.clone();
        match (
            d.as_ref().and_then(|d| d.end_session_endpoint.clone()),
            &session,
        ) {
            (Some(end), _) => {
                let mut params: Vec<(&str, &str)> = vec![("client_id", &st.config.client_id)];
                if let Some(s) = &session {
                    params.push(("id_token_hint", &s.id_token));
                }
                if let Some(p) = &post {
                    params.push(("post_logout_redirect_uri", p));
                }
                let sep = if end.contains('?') { '&' } else { '?' };
                let location = format!("{end}{sep}{}", url::form(&params));
                Err(self.redirect(&location))
            }
            (None, _) => match post {
                Some(p) => Err(self.redirect(&p)),
                None => Err(self.reply(200, "logged out", &[])),
            },
        }
    }

    // ---- Back-channel logout.

    fn backchannel(&mut self, st: &mut State, now: u64) -> Result<Action, Action> {
        if self.facts.method != "POST" {
            return Err(self.reply(
                405,
                "back-channel logout takes a POST",
                &[("allow", "POST")],
            ));
        }
        let body = String::from_utf8_lossy(&self.facts.body).into_owned();
        let Ok(Some(token)) = url::param(&body, "logout_token") else {
            return Err(self.reply(400, "invalid_request: one logout_token is needed", &[]));
        };
        let refetch = self.fetched.contains(&Fetch::Jwks);
        let keys = self.need_keys(st, now, false)?;
        match idp::verify_logout_token(&st.config, &keys, &token, now) {
            Ok(t) => {
                // Only the IdP signs these, so the jti list cannot be flooded; a replay
                // must not revoke the sessions opened since.
                let key = st.key("logout-jtis");
                match st.use_once(&key, &t.jti, t.accepted_until(&st.config), now, 4096) {
                    StateUse::Fresh => {}
                    StateUse::Replayed => {
                        log(LogLevel::Warn, "back-channel logout token replayed");
                        return Err(self.reply(
                            400,
                            "invalid_request: the logout token was already used",
                            &[],
                        ));
                    }
                    StateUse::Busy => {
                        return Err(self.reply(
                            503,
                            "logout busy: try again in a moment",
                            &[("retry-after", "1")],
                        ));
                    }
                }
                let recorded = match (&t.sid, &t.sub) {
                    (Some(sid), sub) => st.revoke(|r, l| r.revoke_sid(sid, sub.as_deref(), now, l)),
                    // The cutoff is when the IdP ended the session, not now: a login
                    // since then is a new session.
                    (None, Some(sub)) => {
                        st.revoke(|r, l| r.revoke_sub(sub, t.iat.min(now), now, l))
                    }
                    (None, None) => true,
                };
                if !recorded {
                    // The IdP may send it again (its jti is spent here, so forget it).
                    let key = st.key("logout-jtis");
                    forget_used(&key, &t.jti);
                    return Err(self.reply(
                        503,
                        "logout busy: try again in a moment",
                        &[("retry-after", "1")],
                    ));
                }
                bump(st.metrics.backchannel_logouts);
                log(LogLevel::Info, "back-channel logout: sessions revoked");
                Err(self.reply(200, "logged out", &[]))
            }
            Err(TokenRefused::UnknownKey) if !refetch => {
                // Fetch the JWKS once (need_keys with refetch always pauses or answers).
                self.need_keys(st, now, true)?;
                Err(self.reply(400, "invalid_request: no key matches the logout token", &[]))
            }
            Err(e) => {
                log(
                    LogLevel::Warn,
                    &format!("back-channel logout token refused: {e}"),
                );
                Err(self.reply(400, &format!("invalid_request: {e}"), &[]))
            }
        }
    }
}

fn access_expiry(t: &Tokens, now: u64) -> u64 {
    t.expires_in
        .map(|e| now.saturating_add(e))
        .or_else(|| idp::unverified_exp(&t.access_token))
        .unwrap_or(0)
}

impl Context for Request {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let status = self.get_http_call_response_header(":status");
        let body = self.get_http_call_response_body(0, body_size);
        let now = now_secs();
        let action = match pending {
            Pending::Fetch(t, what) if t == token => {
                self.fetched.push(what);
                let state = self.state.clone();
                take_fetch(&mut state.borrow_mut(), what, status, body, now);
                self.proceed()
            }
            Pending::Exchange(t, login) if t == token => {
                let st = self.state.clone();
                match idp::parse_tokens(status.as_deref(), &body.unwrap_or_default()) {
                    Ok(tokens) => {
                        self.stage = Stage::Verify(login, tokens);
                        self.proceed()
                    }
                    Err(TokenError::Unreachable(e)) => {
                        bump(st.borrow().metrics.login_failures);
                        log(LogLevel::Warn, &format!("code exchange failed: {e}"));
                        self.reply(
                            502,
                            "login failed: the identity provider's token endpoint is unreachable",
                            &[],
                        )
                    }
                    Err(TokenError::Refused(e)) => {
                        bump(st.borrow().metrics.login_failures);
                        log(LogLevel::Info, &format!("code exchange refused: {e}"));
                        self.clear_login(&st.borrow(), &login.state);
                        self.reply(
                            401,
                            &format!("login failed: the identity provider refused the code ({e})"),
                            &[],
                        )
                    }
                }
            }
            Pending::Refresh(t, session) if t == token => {
                let st = self.state.clone();
                match idp::parse_tokens(status.as_deref(), &body.unwrap_or_default()) {
                    Ok(tokens) => {
                        self.stage = Stage::Refreshed(session, tokens);
                        self.proceed()
                    }
                    Err(e) => {
                        let mut st = st.borrow_mut();
                        bump(st.metrics.refresh_failures);
                        match e {
                            TokenError::Unreachable(e) if now < session.access_expires => {
                                // The token still works: use it, refresh next time.
                                log(
                                    LogLevel::Warn,
                                    &format!("refresh failed, current token kept: {e}"),
                                );
                                self.apply(&st, &session);
                                Action::Continue
                            }
                            TokenError::Unreachable(e) => {
                                log(LogLevel::Warn, &format!("refresh failed: {e}"));
                                self.reply(503, "the session cannot be refreshed: the identity provider is unreachable", &[("retry-after", "10")])
                            }
                            TokenError::Refused(_)
                                if let Some((sealed, newer)) = st.refreshed(&session, now) =>
                            {
                                // A concurrent request rotated the refresh token first:
                                // use what it got.
                                self.queue_session_cookies(&st, &sealed, newer.expires);
                                self.apply(&st, &newer);
                                Action::Continue
                            }
                            TokenError::Refused(e)
                                if e == "invalid_grant" && now < session.access_expires =>
                            {
                                // Most often a parallel request refreshed first (on a
                                // gateway whose shared data we do not see, or not yet
                                // published) and the IdP rotated the refresh token: that
                                // request's answer brings the browser the new cookie.
                                // The current token is still valid, so the session is
                                // not ended here.
                                log(
                                    LogLevel::Info,
                                    "refresh refused (invalid_grant), current token kept until it expires",
                                );
                                self.apply(&st, &session);
                                Action::Continue
                            }
                            TokenError::Refused(e) => {
                                log(
                                    LogLevel::Info,
                                    &format!("refresh refused, session ended: {e}"),
                                );
                                self.clear_cookies(&st, false);
                                // The old cookie is no session any more, should the
                                // login below pause and run the flow again.
                                let name = st.config.cookie.name.clone();
                                self.facts.cookies.retain(|h| !h.contains(name.as_str()));
                                self.unauthenticated(&mut st, now).unwrap_or_else(|a| a)
                            }
                        }
                    }
                }
            }
            other => {
                self.pending = Some(other);
                return;
            }
        };
        if action == Action::Continue {
            self.resume_http_request();
        }
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let raw = kit::glue::RawMap::read(MapType::HttpRequestHeaders);
        let headers = raw.pairs();
        let state = self.state.clone();
        {
            let st = state.borrow();
            // A client never sets its own identity, whatever the route.
            for h in &st.strip {
                if headers.iter().any(|(k, _)| k == h) {
                    self.set_http_request_header(h, None);
                }
            }
        }
        let mut f = Facts::default();
        let mut html = false;
        let mut xhr = false;
        for (k, v) in &headers {
            match k.as_ref() {
                ":method" => f.method = v.to_string(),
                ":path" => f.path = v.to_string(),
                "cookie" => f.cookies.push(v.to_string()),
                "accept" => html |= v.contains("text/html"),
                "x-requested-with" => xhr = true,
                "x-request-id" => f.request_id = Some(v.to_string()),
                ":authority" => f.authority = v.to_string(),
                "origin" => {
                    let v = if f.origin.is_some() { "null" } else { v };
                    f.origin = Some(v.to_string());
                }
                "sec-fetch-site" => {
                    let v = if f.fetch_site.is_some() {
                        "cross-site"
                    } else {
                        v
                    };
                    f.fetch_site = Some(v.to_string());
                }
                "content-type" => f.content_type = Some(v.to_string()),
                "content-length" => f.content_length = Some(v.to_string()),
                "authorization" => {
                    f.authorizations += 1;
                    if let Some(t) = v
                        .strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                    {
                        f.bearer = Some(t.trim().to_owned());
                    }
                }
                _ => {}
            }
        }
        f.browser = html && !xhr;
        self.facts = f;
        let route = self.route(&state.borrow().config);
        if route == Route::Backchannel {
            // Every request here is answered by the filter, never passed on: from the
            // headers when they decide (a GET, no body, not a form, too large), else
            // once the body is in. Continue, not Pause: neither host (Envoy nor ours)
            // hands a filter the body while it holds the headers; the body callback
            // holds the request from there and answers at its end.
            let f = &self.facts;
            return match idp::backchannel_headers(
                &f.method,
                f.content_type.as_deref(),
                f.content_length.as_deref(),
                !end_of_stream,
            ) {
                Err((405, message)) => self.reply(405, message, &[("allow", "POST")]),
                Err((status, message)) => self.reply(status, message, &[]),
                Ok(()) => Action::Continue,
            };
        }
        self.proceed()
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if self.route(&self.state.borrow().config) != Route::Backchannel {
            // Hold the body while the headers wait for the IdP.
            return if self.pending.is_some() {
                Action::Pause
            } else {
                Action::Continue
            };
        }
        if size > idp::MAX_LOGOUT_BODY {
            return self.reply(413, "logout request too large", &[]);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.facts.body = self.get_http_request_body(0, size).unwrap_or_default();
        self.proceed()
    }

    fn on_http_request_trailers(&mut self, _: usize) -> Action {
        let state = self.state.clone();
        let st = state.borrow();
        // Envoy passes request trailers on (to an HTTP/2 upstream): an identity there
        // is the client's, removed as from the headers.
        let raw = kit::glue::RawMap::read(MapType::HttpRequestTrailers);
        for (k, _) in raw.pairs() {
            if st.strip.iter().any(|h| *h == k) {
                self.set_http_request_trailer(&k, None);
            }
        }
        if self.route(&st.config) == Route::Backchannel {
            // The body ended without end of stream: no logout token form has trailers,
            // and continuing would let the held body go upstream (Envoy).
            return self.reply(
                400,
                "invalid_request: a back-channel logout request has no trailers",
                &[],
            );
        }
        if self.pending.is_some() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for c in std::mem::take(&mut self.set_cookies) {
            self.add_http_response_header("set-cookie", &c);
        }
        Action::Continue
    }
}
