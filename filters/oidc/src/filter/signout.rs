//! Logout: the RP-initiated logout (the session ended, the IdP's end-session
//! redirect) and the back-channel logout the IdP posts (the logout token verified,
//! the session revoked on every worker).

use super::*;

impl Request {
    pub(super) fn logout(&mut self, st: &mut State, now: u64) -> Result<Action, Action> {
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
                if self.first_fetch(st, Fetch::Discovery, now) {
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

    pub(super) fn backchannel(&mut self, st: &mut State, now: u64) -> Result<Action, Action> {
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
