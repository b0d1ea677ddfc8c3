//! A protected request: the session cookie read and used, a bearer token passed
//! through, the login redirect when there is neither, and the refresh of a session
//! whose access token is ending.

use super::*;

/// Logins in progress one browser may hold at once (tabs logging in together).
const MAX_LOGINS: usize = 4;

impl Request {
    pub(super) fn protected(&mut self, st: &mut State, now: u64) -> Result<Action, Action> {
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
                Ok(self.apply(st, &session))
            }
            Standing::Refresh => {
                // Another request (on any worker) may have refreshed this session
                // already: with rotating refresh tokens a second refresh would fail.
                if let Some((sealed, newer)) = st.refreshed(&session, now) {
                    self.queue_session_cookies(st, &sealed, newer.expires);
                    return Ok(self.apply(st, &newer));
                }
                let d = self.need_discovery(st, now)?;
                if now < session.access_expires && !st.claim_refresh(&session.id, now) {
                    // Another request is refreshing this session (its answer brings
                    // the browser the new cookie); the current token is still valid.
                    return Ok(self.apply(st, &session));
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
    pub(super) fn passthrough(
        &mut self,
        st: &mut State,
        now: u64,
        token: &str,
        refetched: bool,
    ) -> Result<Action, Action> {
        // Only tokens the claim rules admit are cached.
        if let Some(identity) = st.bearer.get(token, now) {
            bump(st.metrics.bearer_cache_hits);
            self.apply_bearer(st, token, &identity);
            return Ok(Action::Continue);
        }
        let keys = self.need_keys(st, now, refetched)?;
        match idp::verify_bearer(&st.config, &keys, token, now) {
            Ok(claims) => {
                if st.config.claims.as_ref().is_some_and(|r| !r.holds(&claims)) {
                    return Err(self.forbidden(st));
                }
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

    /// 403: the credential is good, but the route's claim rules refuse it.
    pub(super) fn forbidden(&mut self, st: &State) -> Action {
        bump(st.metrics.claims_refused);
        self.reply(
            403,
            "signed in, but not allowed here: the route's claim rules refuse this identity",
            &[],
        )
    }

    pub(super) fn apply_bearer(&mut self, st: &State, token: &str, identity: &[(String, String)]) {
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
        // A browser with a session may send a token too: its cookies stay here.
        self.drop_our_cookies(&st.config);
    }

    /// No session: a browser asking for a page logs in; anything else gets 401.
    pub(super) fn unauthenticated(&mut self, st: &mut State, now: u64) -> Result<Action, Action> {
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
        // At most MAX_LOGINS logins in progress per browser. Each is a cookie sent with
        // every request, and a page opened many times while logged out (a hostile page
        // can do that) would grow the Cookie header until every request is refused. The
        // oldest (browsers list cookies oldest first) make room.
        let present = cookie::login_names_present(&self.facts.cookie_refs(), &c.state_name);
        let excess = (present.len() + 1).saturating_sub(MAX_LOGINS);
        for old in &present[..excess] {
            self.set_cookies
                .push(cookie::set_cookie(c, old, "", Some(0), SameSite::Lax));
        }
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

    /// Upstream headers for a good session, or 403 for a user the route's claim rules
    /// do not admit (signed in, so not sent to log in again).
    pub(super) fn apply(&mut self, st: &State, s: &Session) -> Action {
        if let Some(rule) = &st.config.claims {
            // The ID token was verified when the session was made or refreshed, the
            // userinfo claims fetched at login (the ID token's own win). Decided once
            // per opened session, not on every request.
            let admitted = *s.admitted.get_or_init(|| {
                kit::jwt::token::parse(&s.id_token, usize::MAX).is_ok_and(|t| {
                    rule.holds(&idp::with_userinfo(&t.claims, s.userinfo.as_deref()))
                })
            });
            if !admitted {
                return self.forbidden(st);
            }
        }
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
        if let (Some(h), Some(info)) = (&c.userinfo_header, &s.userinfo) {
            // As Kong sends it: base64 of the JSON.
            let v = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, info);
            self.set_http_request_header(h, Some(&v));
        }
        for (k, v) in &s.identity {
            self.set_http_request_header(k, Some(v));
        }
        self.set_property(
            vec![kit::identity::CREDENTIAL_PROPERTY],
            Some(s.access_token.as_bytes()),
        );
        self.drop_our_cookies(c);
        Action::Continue
    }

    /// The upstream does not need our cookies (the session's, its chunks, logins in
    /// progress); other cookies pass.
    fn drop_our_cookies(&mut self, c: &crate::config::Config) {
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
    pub(super) fn write_session(
        &mut self,
        st: &State,
        s: &Session,
    ) -> Result<String, &'static str> {
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
    pub(super) fn unwritten(&mut self, st: &State, what: &str, why: &str) -> Action {
        self.clear_cookies(st, false);
        self.reply(500, &format!("{what}: {why}"), &[])
    }

    /// Queues the `Set-Cookie`s that carry a sealed session.
    pub(super) fn queue_session_cookies(&mut self, st: &State, sealed: &str, expires: u64) {
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

    /// GET the userinfo endpoint with the access token (OpenID Connect Core 5.3.1).
    pub(super) fn userinfo_call(
        &mut self,
        st: &State,
        endpoint: &str,
        access_token: &str,
    ) -> Option<u32> {
        let u = url::Url::parse(endpoint)?;
        let path = u.path_and_query();
        let bearer = format!("Bearer {access_token}");
        let h: Vec<(&str, &str)> = vec![
            (":method", "GET"),
            (":path", &path),
            (":authority", &u.authority),
            ("authorization", &bearer),
            ("accept", "application/json"),
        ];
        call_idp(self, st, h, None, "call the userinfo endpoint")
    }

    pub(super) fn token_call(
        &mut self,
        st: &State,
        d: &Discovery,
        headers: Vec<(String, String)>,
        body: &[u8],
    ) -> Option<u32> {
        let u = url::Url::parse(&d.token_endpoint)?;
        let path = u.path_and_query();
        // private_key_jwt: the assertion names this endpoint and now, so it is made here.
        let mut body = body.to_vec();
        match idp::client_assertion(&st.config, &d.token_endpoint, now_secs()) {
            Ok(Some(fields)) => {
                body.push(b'&');
                body.extend_from_slice(fields.as_bytes());
            }
            Ok(None) => {}
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("no randomness for a client assertion: {e}"),
                );
                return None;
            }
        }
        let mut h: Vec<(&str, &str)> = vec![
            (":method", "POST"),
            (":path", &path),
            (":authority", &u.authority),
        ];
        h.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        call_idp(self, st, h, Some(&body), "call the token endpoint")
    }

    pub(super) fn finish_refresh(
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
                        if self.first_fetch(st, Fetch::Jwks, now) {
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
                        return Ok(self.apply(st, &old));
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
            // The userinfo claims fetched at login still fill what the ID token lacks.
            s.identity = kit::jwt::consumer::identity_headers(
                &st.config.consumer,
                &idp::with_userinfo(&claims, s.userinfo.as_deref()),
                &st.config.issuer,
            );
            if s.idp_sid.is_none() {
                s.idp_sid = claims
                    .get("sid")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
            }
            s.id_token = idt;
            s.admitted = Default::default();
        }
        s.seen = now;
        bump(st.metrics.refreshes);
        let sealed = match self.write_session(st, &s) {
            Ok(sealed) => sealed,
            Err(why) => return Err(self.unwritten(st, "the session could not be refreshed", why)),
        };
        st.publish_refreshed(&s, &sealed);
        Ok(self.apply(st, &s))
    }

    /// A refresh whose ID token was refused: the session is over (revoked, so a copy of
    /// the cookie cannot use its still valid access token either) and the client logs
    /// in again.
    pub(super) fn end_refreshed(
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
}
