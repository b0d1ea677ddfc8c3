//! The redirect back from the IdP: the login state checked, the code exchanged, the
//! ID token verified, the session written.

use super::*;

impl Request {
    pub(super) fn callback(&mut self, st: &mut State, now: u64) -> Result<Action, Action> {
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
        // RFC 9207: an IdP that names itself must be ours (mix-up defence); two
        // `iss` in one answer are refused, not skipped.
        let named_other = match param("iss") {
            Ok(None) => false,
            Ok(Some(iss)) => iss != st.config.issuer,
            Err(_) => true,
        };
        if named_other {
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

    pub(super) fn finish_login(
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
        // Userinfo (OpenID Connect Core 5.3), when configured: fetched once the ID token
        // is good, then this runs again with the answer.
        let userinfo = if st.config.userinfo {
            match self.userinfo_answer.take() {
                None => {
                    let d = match self.need_discovery(st, now) {
                        Ok(d) => d,
                        Err(a) => {
                            self.stage = Stage::Verify(login, tokens);
                            return Err(a);
                        }
                    };
                    let Some(endpoint) = d.userinfo_endpoint.clone() else {
                        bump(st.metrics.login_failures);
                        self.clear_login(st, &login.state);
                        return Err(self.reply(
                            502,
                            "login failed: the identity provider has no userinfo endpoint",
                            &[],
                        ));
                    };
                    return match self.userinfo_call(st, &endpoint, &tokens.access_token) {
                        Some(t) => {
                            self.pending = Some(Pending::UserInfo(t, login, tokens));
                            Ok(Action::Pause)
                        }
                        None => Err(self.unavailable("userinfo endpoint")),
                    };
                }
                Some((status, content_type, body)) => {
                    match idp::parse_userinfo(
                        status.as_deref(),
                        content_type.as_deref(),
                        &body,
                        &sub,
                    ) {
                        Ok((_, text)) => Some(text),
                        Err(e) => {
                            bump(st.metrics.login_failures);
                            log(LogLevel::Warn, &format!("userinfo refused: {e}"));
                            self.clear_login(st, &login.state);
                            return Err(self.reply(502, &format!("login failed: {e}"), &[]));
                        }
                    }
                }
            }
        } else {
            None
        };
        let Some(id) = random_b64(18) else {
            return Err(self.reply(500, "no randomness available", &[]));
        };
        let merged = idp::with_userinfo(&claims, userinfo.as_deref());
        let identity =
            kit::jwt::consumer::identity_headers(&st.config.consumer, &merged, &st.config.issuer);
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
            userinfo,
            admitted: Default::default(),
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
}
