//! The proxy-wasm glue: reads the request, runs the flow (login redirect, callback,
//! session, refresh, logout, back-channel logout), makes the `http_call`s to the IdP
//! (pausing the request and resuming it). Each flow has its module: [`protected`]
//! (session, bearer pass-through, login redirect, refresh), [`callback`], [`signout`]
//! (logout and back-channel logout); what every worker shares is in [`shared`].

mod callback;
mod protected;
mod shared;
mod signout;

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
        st.release_lease(what, ok, now);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let Some((config, root_id)) = kit::glue::configure(self, "oidc", Config::parse) else {
            return false;
        };
        self.set_tick_period(Duration::from_secs(1));
        for what in [Fetch::Discovery, Fetch::Jwks] {
            kit::glue::create_u64(&format!("oidc/{root_id}/lease/{}", what.name()));
        }
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
            if !st.take_lease(what, now) {
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
            userinfo_answer: None,
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

/// A userinfo answer: status, content type, body.
type UserInfoAnswer = (Option<String>, Option<String>, Vec<u8>);

/// Where a paused request is in the flow.
enum Stage {
    Start,
    /// Code exchanged: verify the ID token and open the session.
    Verify(Login, Tokens),
    /// Tokens refreshed: check and store them.
    Refreshed(Session, Tokens),
}

enum Pending {
    /// A fetch of a document; `true`: a first fetch, holding the document's lease.
    Fetch(u32, Fetch, bool),
    Exchange(u32, Login),
    Refresh(u32, Session),
    /// The userinfo call of a login whose ID token is verified.
    UserInfo(u32, Login, Tokens),
}

struct Request {
    state: Rc<RefCell<State>>,
    facts: Facts,
    stage: Stage,
    pending: Option<Pending>,
    /// A login's userinfo answer as it came: status, content type, body.
    userinfo_answer: Option<UserInfoAnswer>,
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

    /// Starts the first fetch of `what` (nothing stored, or a failure old enough to
    /// try again) under its lease, so that one fetch is in flight per `vm_id` however
    /// many requests find the document missing (before, each made its own: a storm of
    /// calls while the IdP was down or slow). The request then waits for it; `false`
    /// when another request or VM holds the lease, or no call could be made.
    fn first_fetch(&mut self, st: &mut State, what: Fetch, now: u64) -> bool {
        if !st.take_lease(what, now) {
            return false;
        }
        match dispatch_fetch(self, st, what, now) {
            Some(t) => {
                self.pending = Some(Pending::Fetch(t, what, true));
                true
            }
            None => {
                // No call went out: the lease is free again.
                st.release_lease(what, true, now);
                false
            }
        }
    }

    /// Needs the discovery document: Ok, or the request is paused for a fetch or
    /// answered 503 (also while another request's fetch of it is in flight).
    fn need_discovery(&mut self, st: &mut State, now: u64) -> Result<Rc<Discovery>, Action> {
        match st.discovery(now) {
            Meta::Ready(d) => Ok(d),
            Meta::NotYet if !self.fetched.contains(&Fetch::Discovery) => {
                if self.first_fetch(st, Fetch::Discovery, now) {
                    Err(Action::Pause)
                } else {
                    Err(self.unavailable("discovery"))
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
            // A forced refetch: the lease is claimed already.
            Meta::Ready(_) => {
                self.need_discovery(st, now)?;
                match dispatch_fetch(self, st, Fetch::Jwks, now) {
                    Some(t) => {
                        self.pending = Some(Pending::Fetch(t, Fetch::Jwks, false));
                        Err(Action::Pause)
                    }
                    None => Err(self.unavailable("signing keys")),
                }
            }
            // No keys: one first fetch in flight, the other requests answered 503.
            _ => {
                self.need_discovery(st, now)?;
                if self.first_fetch(st, Fetch::Jwks, now) {
                    Err(Action::Pause)
                } else {
                    Err(self.unavailable("signing keys"))
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
            Pending::Fetch(t, what, lease) if t == token => {
                self.fetched.push(what);
                let state = self.state.clone();
                {
                    let mut st = state.borrow_mut();
                    let ok = take_fetch(&mut st, what, status, body, now);
                    if lease {
                        st.release_lease(what, ok, now);
                    }
                }
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
            Pending::UserInfo(t, login, tokens) if t == token => {
                let content_type = kit::glue::header(
                    proxy_wasm::types::MapType::HttpCallResponseHeaders,
                    "content-type",
                );
                // Checked once the ID token is verified again (its subject).
                self.userinfo_answer = Some((status, content_type, body.unwrap_or_default()));
                self.stage = Stage::Verify(login, tokens);
                self.proceed()
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
                                self.apply(&st, &session)
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
                                self.apply(&st, &newer)
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
                                self.apply(&st, &session)
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
