//! Talking to the OpenID provider, as plain data: the discovery document, the
//! authorization request, token-endpoint requests and answers, and verification of
//! the tokens it signs (ID tokens, back-channel logout tokens, pass-through bearer
//! tokens) with `kit::jwt`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use kit::jwt::claims::{Rejected, Rules};
use kit::jwt::keys::KeySet;
use kit::jwt::{Invalid, token};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Digest;

use crate::config::{ClientAuth, Config};
use crate::url::{Url, form, param};

/// The fields of `/.well-known/openid-configuration` the filter uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
}

impl Discovery {
    /// Parses and checks a discovery document: its `issuer` must be ours exactly
    /// (OpenID Connect Discovery 4.3), and the endpoints must be URLs.
    pub fn parse(body: &[u8], issuer: &str) -> Result<Discovery, String> {
        let d: Discovery = serde_json::from_slice(body)
            .map_err(|e| format!("the discovery document is not usable: {e}"))?;
        if d.issuer != issuer {
            return Err(format!(
                "the discovery document names issuer `{}`, not `{issuer}`",
                d.issuer
            ));
        }
        for (name, u) in [
            ("authorization_endpoint", Some(&d.authorization_endpoint)),
            ("token_endpoint", Some(&d.token_endpoint)),
            ("jwks_uri", Some(&d.jwks_uri)),
            ("end_session_endpoint", d.end_session_endpoint.as_ref()),
            ("userinfo_endpoint", d.userinfo_endpoint.as_ref()),
        ] {
            if let Some(u) = u
                && Url::parse(u).is_none()
            {
                return Err(format!("discovery: {name} is not a URL"));
            }
        }
        Ok(d)
    }
}

/// A userinfo answer (OpenID Connect Core 5.3.2): a JSON object whose `sub` must be
/// the ID token's (5.3.4: otherwise it must not be used). Its claims and their JSON.
pub fn parse_userinfo(
    status: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    sub: &str,
) -> Result<(Map<String, Value>, String), String> {
    if status != Some("200") {
        return Err(format!(
            "the userinfo endpoint answered {}",
            status.unwrap_or("nothing")
        ));
    }
    if content_type.is_some_and(|c| {
        c.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/jwt")
    }) {
        return Err("the userinfo answer is a signed JWT, which is not supported".into());
    }
    let claims: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|_| "the userinfo answer is not a JSON object".to_owned())?;
    match claims.get("sub") {
        Some(Value::String(s)) if s == sub => {}
        _ => return Err("the userinfo answer is about another subject".into()),
    }
    let text = Value::Object(claims.clone()).to_string();
    Ok((claims, text))
}

/// `claims` with what `userinfo` adds: the ID token's own claims win.
pub fn with_userinfo(claims: &Map<String, Value>, userinfo: Option<&str>) -> Map<String, Value> {
    let mut merged = claims.clone();
    if let Some(Ok(Value::Object(extra))) = userinfo.map(serde_json::from_str::<Value>) {
        for (k, v) in extra {
            merged.entry(k).or_insert(v);
        }
    }
    merged
}

/// `:path` for an `http_call` to an IdP endpoint URL.
pub fn call_path(endpoint: &str) -> String {
    Url::parse(endpoint).map_or_else(|| "/".into(), |u| u.path_and_query())
}

/// PKCE S256 (RFC 7636): the challenge for a verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// Where the browser goes to log in. `request_query` is the query of the browser's
/// request, for the parameters configured to pass on (`authorization_query_args_client`);
/// one given twice there is not passed on.
pub fn authorize_url(
    c: &Config,
    d: &Discovery,
    state: &str,
    nonce: &str,
    verifier: &str,
    request_query: &str,
) -> String {
    let challenge = pkce_challenge(verifier);
    let max_age = c.max_age.map(|m| m.to_string());
    let acr_values = c.acr_values.join(" ");
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", c.client_id.as_str()),
        ("redirect_uri", c.redirect_uri.as_str()),
        ("scope", c.scopes.as_str()),
        ("state", state),
        ("nonce", nonce),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    if let Some(m) = &max_age {
        pairs.push(("max_age", m));
    }
    if !acr_values.is_empty() {
        pairs.push(("acr_values", &acr_values));
    }
    pairs.extend(
        c.authorize_args
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let from_client: Vec<(&str, String)> = c
        .client_args
        .iter()
        .filter_map(|name| Some((name.as_str(), param(request_query, name).ok()??)))
        .collect();
    pairs.extend(from_client.iter().map(|(k, v)| (*k, v.as_str())));
    let query = form(&pairs);
    let sep = if d.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{}{sep}{query}", d.authorization_endpoint)
}

/// Headers (besides `:method`, `:path`, `:authority`) and body of a token-endpoint
/// request with the client's authentication.
pub fn token_request(c: &Config, grant: &[(&str, &str)]) -> (Vec<(String, String)>, Vec<u8>) {
    let mut pairs: Vec<(&str, &str)> = grant.to_vec();
    let mut headers = vec![
        (
            "content-type".to_owned(),
            "application/x-www-form-urlencoded".to_owned(),
        ),
        ("accept".to_owned(), "application/json".to_owned()),
    ];
    let secret = c.client_secret.as_ref().map_or("", |s| s.0.as_str());
    match c.client_auth {
        ClientAuth::Basic => {
            // RFC 6749 2.3.1: id and secret are form-encoded before base64.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let creds = format!("{}:{}", enc(&c.client_id), enc(secret));
            headers.push((
                "authorization".to_owned(),
                format!("Basic {}", STANDARD.encode(creds)),
            ));
        }
        ClientAuth::Post => {
            pairs.push(("client_id", &c.client_id));
            pairs.push(("client_secret", secret));
        }
        // The assertion itself is added when the call is made (it names the token
        // endpoint and the time): `client_assertion`.
        ClientAuth::None | ClientAuth::PrivateKeyJwt => pairs.push(("client_id", &c.client_id)),
    }
    (headers, form(&pairs).into_bytes())
}

/// The form fields of `private_key_jwt` client authentication (RFC 7523 2.2) for a call
/// to `token_endpoint` at `now`, with a fresh random `jti`, good for 60 seconds; `None`
/// for another method. Err when no randomness can be had.
pub fn client_assertion(
    c: &Config,
    token_endpoint: &str,
    now: u64,
) -> Result<Option<String>, getrandom::Error> {
    let Some(key) = c.client_key.as_deref() else {
        return Ok(None);
    };
    let fields = kit::jwt::sign::client_assertion_fields(key, &c.client_id, token_endpoint, now)?;
    let pairs = fields.each_ref().map(|(k, v)| (*k, v.as_str()));
    Ok(Some(form(&pairs)))
}

pub fn code_grant(c: &Config, code: &str, verifier: &str) -> (Vec<(String, String)>, Vec<u8>) {
    token_request(
        c,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &c.redirect_uri),
            ("code_verifier", verifier),
        ],
    )
}

pub fn refresh_grant(c: &Config, refresh_token: &str) -> (Vec<(String, String)>, Vec<u8>) {
    token_request(
        c,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
}

/// A successful token-endpoint answer. Its `Debug` shows no token.
#[derive(Clone, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token.is_some())
            .field("id_token", &self.id_token.is_some())
            .finish_non_exhaustive()
    }
}

/// What the token endpoint said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The IdP could not be reached (the host's 503/504, or a 5xx).
    Unreachable(String),
    /// It answered with an OAuth error (`invalid_grant` for a used or expired code or
    /// refresh token, say).
    Refused(String),
}

/// Reads a token-endpoint answer.
pub fn parse_tokens(status: Option<&str>, body: &[u8]) -> Result<Tokens, TokenError> {
    match status {
        Some("200") => {}
        Some(s) if s.starts_with('4') => {
            let error = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| format!("status {s}"));
            // Only the OAuth error code: the description may echo request data.
            return Err(TokenError::Refused(sanitize(&error)));
        }
        other => {
            return Err(TokenError::Unreachable(format!(
                "token endpoint answered {}",
                other.unwrap_or("nothing")
            )));
        }
    }
    let t: Tokens = serde_json::from_slice(body)
        .map_err(|_| TokenError::Refused("the token answer is not valid JSON".into()))?;
    if t.access_token.is_empty() {
        return Err(TokenError::Refused("empty access_token".into()));
    }
    if t.token_type
        .as_deref()
        .is_some_and(|tt| !tt.eq_ignore_ascii_case("bearer"))
    {
        return Err(TokenError::Refused("token_type is not Bearer".into()));
    }
    Ok(t)
}

/// An IdP-provided string made safe for a log line or a reply: printable ASCII, short.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(120)
        .collect()
}

/// Why an ID token or logout token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    #[error("{0}")]
    Invalid(Invalid),
    #[error("token audience does not include this client")]
    Audience,
    #[error("azp is not this client")]
    AuthorizedParty,
    #[error("nonce does not match the login")]
    Nonce,
    #[error("no iat")]
    NoIssuedAt,
    #[error("no auth_time, which max_age requires")]
    NoAuthTime,
    #[error("the user authenticated longer ago than max_age")]
    AuthTooOld,
    #[error("the authentication context (acr) is not one of acr_values")]
    Acr,
    #[error("not a back-channel logout token")]
    NotLogoutToken,
    #[error("an ID token or logout token is not an access token")]
    NotAccessToken,
    #[error("logout token names neither sid nor sub")]
    NoSubject,
    #[error("logout token has no jti")]
    NoTokenId,
    #[error("logout token was issued too long ago")]
    Stale,
    /// The signing key is not in the JWKS we hold: refetch once, then refuse.
    #[error("no key matches the token")]
    UnknownKey,
    #[error("the refreshed ID token is about another user")]
    OtherSubject,
    #[error("the refreshed ID token is about another IdP session")]
    OtherSession,
}

fn rejected(r: Rejected) -> TokenRefused {
    match r {
        Rejected::Invalid(i) => TokenRefused::Invalid(i),
        Rejected::Audience => TokenRefused::Audience,
    }
}

/// Signature, `iss` and `aud` (our client id or the given audiences), time claims.
fn verify_signed(
    c: &Config,
    keys: &KeySet,
    jwt: &str,
    audiences: &[String],
    now: u64,
) -> Result<Map<String, Value>, TokenRefused> {
    let t = token::parse(jwt, 16 * 1024).map_err(TokenRefused::Invalid)?;
    match kit::jwt::verify_signature(&t, &c.algorithms, keys) {
        Ok(_) => {}
        Err(Invalid::UnknownKey) => return Err(TokenRefused::UnknownKey),
        Err(e) => return Err(TokenRefused::Invalid(e)),
    }
    let rules = Rules {
        issuer: Some(&c.issuer),
        audiences,
        skew: c.skew,
        require_expiration: true,
        max_lifetime: None,
    };
    kit::jwt::claims::check(&rules, &t.claims, now).map_err(rejected)?;
    Ok(t.claims)
}

/// Verifies an ID token (OpenID Connect Core 3.1.3.7): signature with the IdP's keys
/// and an allowed algorithm, `iss` exactly ours, `aud` containing our client id, `azp`
/// (when present, or when there are several audiences) our client id, `exp`, `iat`,
/// and `nonce` equal to the login's (when `nonce` is given: refreshed ID tokens have
/// none to compare). At login (with `nonce`) and with `max_age` configured, also
/// `auth_time`, present and recent enough (3.1.2.1).
pub fn verify_id_token(
    c: &Config,
    keys: &KeySet,
    jwt: &str,
    nonce: Option<&str>,
    now: u64,
) -> Result<Map<String, Value>, TokenRefused> {
    let claims = verify_signed(c, keys, jwt, std::slice::from_ref(&c.client_id), now)?;
    if kit::jwt::claims::numeric(&claims, "iat")
        .map_err(TokenRefused::Invalid)?
        .is_none()
    {
        return Err(TokenRefused::NoIssuedAt);
    }
    let several = matches!(claims.get("aud"), Some(Value::Array(a)) if a.len() > 1);
    match claims.get("azp") {
        Some(Value::String(azp)) if *azp == c.client_id => {}
        None if !several => {}
        _ => return Err(TokenRefused::AuthorizedParty),
    }
    if let Some(expected) = nonce {
        match claims.get("nonce") {
            Some(Value::String(n)) if n == expected => {}
            _ => return Err(TokenRefused::Nonce),
        }
        if let Some(max_age) = c.max_age {
            let auth_time = kit::jwt::claims::numeric(&claims, "auth_time")
                .map_err(TokenRefused::Invalid)?
                .ok_or(TokenRefused::NoAuthTime)?;
            if now > auth_time.saturating_add(max_age).saturating_add(c.skew) {
                return Err(TokenRefused::AuthTooOld);
            }
        }
        // Asked for, so required: an IdP may ignore acr_values (they are voluntary
        // in the request) and authenticate at a lower level.
        if !c.acr_values.is_empty() {
            match claims.get("acr") {
                Some(Value::String(acr)) if c.acr_values.contains(acr) => {}
                _ => return Err(TokenRefused::Acr),
            }
        }
    }
    Ok(claims)
}

/// Verifies the ID token of a refresh answer (OpenID Connect Core 12.2) as at login
/// (signature, `iss`, `aud`, `azp`, `exp`, `iat`; there is no nonce to compare), and
/// that it is about the session's user (`sub`) and, when both name one, its IdP
/// session (`sid`). Its claims are then the session's identity.
pub fn verify_refreshed_id_token(
    c: &Config,
    keys: &KeySet,
    jwt: &str,
    sub: &str,
    sid: Option<&str>,
    now: u64,
) -> Result<Map<String, Value>, TokenRefused> {
    let claims = verify_id_token(c, keys, jwt, None, now)?;
    if claims.get("sub").and_then(Value::as_str) != Some(sub) {
        return Err(TokenRefused::OtherSubject);
    }
    if let (Some(old), Some(new)) = (sid, claims.get("sid"))
        && new.as_str() != Some(old)
    {
        return Err(TokenRefused::OtherSession);
    }
    Ok(claims)
}

/// The most a back-channel logout request may carry (a logout token is a few KB).
pub const MAX_LOGOUT_BODY: usize = 64 * 1024;

/// What the headers of a request to the back-channel logout path decide alone (OpenID
/// Connect Back-Channel Logout 2.5 and 2.8: a form POST; a 400 otherwise): `Err` with
/// the status and message to answer now, `Ok` when the body must be read. Answering
/// from the headers whenever possible means a request that cannot be a logout never
/// waits for (or streams) a body.
pub fn backchannel_headers(
    method: &str,
    content_type: Option<&str>,
    content_length: Option<&str>,
    has_body: bool,
) -> Result<(), (u32, &'static str)> {
    if method != "POST" {
        return Err((405, "back-channel logout takes a POST"));
    }
    if !has_body {
        return Err((400, "invalid_request: one logout_token is needed"));
    }
    let form = content_type
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err((
            400,
            "invalid_request: the logout token comes as application/x-www-form-urlencoded",
        ));
    }
    if content_length
        .and_then(|l| l.trim().parse::<u64>().ok())
        .is_some_and(|l| l > MAX_LOGOUT_BODY as u64)
    {
        return Err((413, "logout request too large"));
    }
    Ok(())
}

/// How long after its `iat` a logout token is accepted (plus the clock skew); its
/// `jti` is remembered that long, so a replay is refused.
pub const LOGOUT_TOKEN_MAX_AGE: u64 = 300;

/// What a verified logout token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutToken {
    pub sid: Option<String>,
    pub sub: Option<String>,
    pub iat: u64,
    pub jti: String,
}

impl LogoutToken {
    /// Until when its `jti` must be remembered.
    pub fn accepted_until(&self, c: &Config) -> u64 {
        self.iat
            .saturating_add(LOGOUT_TOKEN_MAX_AGE)
            .saturating_add(c.skew)
    }
}

/// Verifies a back-channel logout token (OpenID Connect Back-Channel Logout 2.6):
/// signature, `iss`, `aud`, a recent `iat`, a `jti`, the logout event, `sid` or
/// `sub`, and no `nonce`.
pub fn verify_logout_token(
    c: &Config,
    keys: &KeySet,
    jwt: &str,
    now: u64,
) -> Result<LogoutToken, TokenRefused> {
    // A logout token may lack `exp` (the spec only recommends a short one).
    let t = token::parse(jwt, 16 * 1024).map_err(TokenRefused::Invalid)?;
    match kit::jwt::verify_signature(&t, &c.algorithms, keys) {
        Ok(_) => {}
        Err(Invalid::UnknownKey) => return Err(TokenRefused::UnknownKey),
        Err(e) => return Err(TokenRefused::Invalid(e)),
    }
    let rules = Rules {
        issuer: Some(&c.issuer),
        audiences: std::slice::from_ref(&c.client_id),
        skew: c.skew,
        require_expiration: false,
        max_lifetime: None,
    };
    kit::jwt::claims::check(&rules, &t.claims, now).map_err(rejected)?;
    let claims = t.claims;
    let Some(iat) = kit::jwt::claims::numeric(&claims, "iat").map_err(TokenRefused::Invalid)?
    else {
        return Err(TokenRefused::NoIssuedAt);
    };
    let event = claims
        .get("events")
        .and_then(Value::as_object)
        .is_some_and(|e| e.contains_key("http://schemas.openid.net/event/backchannel-logout"));
    if !event || claims.contains_key("nonce") {
        return Err(TokenRefused::NotLogoutToken);
    }
    let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
    let (sid, sub) = (text("sid"), text("sub"));
    if sid.is_none() && sub.is_none() {
        return Err(TokenRefused::NoSubject);
    }
    let jti = match text("jti") {
        Some(j) if !j.is_empty() && j.len() <= 256 && !j.contains(['\n', '\r', ' ']) => j,
        _ => return Err(TokenRefused::NoTokenId),
    };
    let token = LogoutToken { sid, sub, iat, jti };
    if token.accepted_until(c) < now {
        return Err(TokenRefused::Stale);
    }
    Ok(token)
}

/// Verifies a bearer access token a client sent itself (`bearer_passthrough`): our
/// IdP's signature, `iss`, an audience from `bearer_audiences`, time claims, and not
/// an ID token (`nonce`) or a logout token (`events`) the IdP signed with the same key.
pub fn verify_bearer(
    c: &Config,
    keys: &KeySet,
    jwt: &str,
    now: u64,
) -> Result<Map<String, Value>, TokenRefused> {
    let claims = verify_signed(c, keys, jwt, &c.bearer_audiences, now)?;
    if claims.contains_key("nonce") || claims.contains_key("events") {
        return Err(TokenRefused::NotAccessToken);
    }
    Ok(claims)
}

/// The `exp` of a JWT access token, read without verification: only used to refresh
/// earlier, never to accept anything.
pub fn unverified_exp(jwt: &str) -> Option<u64> {
    let t = token::parse(jwt, 16 * 1024).ok()?;
    kit::jwt::claims::numeric(&t.claims, "exp").ok()?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        Config::parse(Some(
            json!({
                "issuer": "https://idp.test",
                "client_id": "web app",
                "client_secret": "p@ss:word",
                "redirect_uri": "https://app.test/callback",
                "idp_cluster": "idp",
                "scopes": ["openid", "offline_access"],
                "session": {"secrets": [{"id": "k1", "secret": "0123456789abcdef0123456789abcdef"}]}
            })
            .to_string()
            .as_bytes(),
        ))
        .unwrap()
    }

    fn discovery() -> Discovery {
        Discovery::parse(
            json!({"issuer": "https://idp.test", "authorization_endpoint": "https://idp.test/auth",
                "token_endpoint": "https://idp.test/token", "jwks_uri": "https://idp.test/jwks"})
            .to_string()
            .as_bytes(),
            "https://idp.test",
        )
        .unwrap()
    }

    #[test]
    fn discovery_must_name_our_issuer() {
        let doc = json!({"issuer": "https://evil.test", "authorization_endpoint": "https://idp.test/auth",
            "token_endpoint": "https://idp.test/token", "jwks_uri": "https://idp.test/jwks"});
        assert!(Discovery::parse(doc.to_string().as_bytes(), "https://idp.test").is_err());
        assert!(Discovery::parse(b"<html>", "https://idp.test").is_err());
    }

    #[test]
    fn the_authorization_request_carries_state_nonce_and_pkce() {
        let url = authorize_url(&config(), &discovery(), "st", "no", "verifier", "");
        let q = url.strip_prefix("https://idp.test/auth?").unwrap();
        let p = |n| crate::url::param(q, n).unwrap().unwrap();
        assert_eq!(p("response_type"), "code");
        assert_eq!(p("client_id"), "web app");
        assert_eq!(p("scope"), "openid offline_access");
        assert_eq!(p("state"), "st");
        assert_eq!(p("nonce"), "no");
        assert_eq!(p("code_challenge_method"), "S256");
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn max_age_and_extra_arguments_go_into_the_authorization_request() {
        let mut c = config();
        assert!(!authorize_url(&c, &discovery(), "st", "no", "v", "").contains("max_age"));
        c.max_age = Some(300);
        c.authorize_args = vec![
            ("prompt".into(), "login".into()),
            ("login_hint".into(), "ada@example.com".into()),
        ];
        c.client_args = vec!["ui_locales".into(), "acr_values".into()];
        let url = authorize_url(
            &c,
            &discovery(),
            "st",
            "no",
            "v",
            "view=full&ui_locales=fr%20en&state=forged&acr_values=a&acr_values=b",
        );
        let q = url.strip_prefix("https://idp.test/auth?").unwrap();
        let p = |n| crate::url::param(q, n).unwrap().unwrap();
        // Passed on when configured and given once; the browser's own `state` is not.
        assert_eq!(p("ui_locales"), "fr en");
        assert_eq!(crate::url::param(q, "acr_values"), Ok(None));
        assert_eq!(crate::url::param(q, "view"), Ok(None));
        assert_eq!(p("max_age"), "300");
        assert_eq!(p("prompt"), "login");
        assert_eq!(p("login_hint"), "ada@example.com");
        assert_eq!(p("state"), "st");
    }

    /// With max_age, the login's ID token needs a recent `auth_time`; a refreshed one
    /// (no nonce to compare) is not held to it.
    #[test]
    fn max_age_holds_the_login_id_token_to_its_auth_time() {
        let key = jwt_mint::Key::ec256("k1");
        let (keys, _) =
            kit::jwt::keys::parse_jwks(jwt_mint::jwks(&[&key]).to_string().as_bytes(), true)
                .unwrap();
        let mut c = config();
        c.max_age = Some(300);
        let now = 1_800_000_000u64;
        let token = |auth_time: Option<u64>| {
            let mut claims = json!({"iss": "https://idp.test", "aud": "web app", "sub": "u",
                "nonce": "n1", "iat": now, "exp": now + 600});
            if let Some(t) = auth_time {
                claims["auth_time"] = json!(t);
            }
            key.sign("ES256", claims)
        };
        let at_login = |t: &str| verify_id_token(&c, &keys, t, Some("n1"), now);
        assert!(at_login(&token(Some(now - 100))).is_ok());
        assert!(at_login(&token(Some(now - 300 - c.skew))).is_ok());
        assert_eq!(
            at_login(&token(Some(now - 301 - c.skew))),
            Err(TokenRefused::AuthTooOld)
        );
        assert_eq!(at_login(&token(None)), Err(TokenRefused::NoAuthTime));
        assert!(verify_id_token(&c, &keys, &token(None), None, now).is_ok());
        c.max_age = None;
        assert!(verify_id_token(&c, &keys, &token(None), Some("n1"), now).is_ok());
    }

    /// With acr_values, the login asks for them and its ID token must carry one of
    /// them as `acr` (an IdP may ignore the request).
    #[test]
    fn acr_values_are_asked_for_and_the_login_id_token_held_to_them() {
        let key = jwt_mint::Key::ec256("k1");
        let (keys, _) =
            kit::jwt::keys::parse_jwks(jwt_mint::jwks(&[&key]).to_string().as_bytes(), true)
                .unwrap();
        let mut c = config();
        assert!(!authorize_url(&c, &discovery(), "st", "no", "v", "").contains("acr_values"));
        c.acr_values = vec!["urn:mfa".into(), "urn:hw".into()];
        let url = authorize_url(&c, &discovery(), "st", "no", "v", "");
        let q = url.strip_prefix("https://idp.test/auth?").unwrap();
        assert_eq!(
            crate::url::param(q, "acr_values"),
            Ok(Some("urn:mfa urn:hw".into()))
        );
        let now = 1_800_000_000u64;
        let token = |acr: serde_json::Value| {
            let mut claims = json!({"iss": "https://idp.test", "aud": "web app", "sub": "u",
                "nonce": "n1", "iat": now, "exp": now + 600});
            if !acr.is_null() {
                claims["acr"] = acr;
            }
            key.sign("ES256", claims)
        };
        let at_login = |t: &str| verify_id_token(&c, &keys, t, Some("n1"), now);
        assert!(at_login(&token(json!("urn:hw"))).is_ok());
        for bad in [
            json!("urn:pwd"),
            json!(null),
            json!(["urn:mfa"]),
            json!("urn:mfa urn:hw"),
        ] {
            assert_eq!(
                at_login(&token(bad.clone())),
                Err(TokenRefused::Acr),
                "{bad}"
            );
        }
        // A refreshed ID token (no nonce) is not held to it.
        assert!(verify_id_token(&c, &keys, &token(json!(null)), None, now).is_ok());
    }

    #[test]
    fn a_refreshed_id_token_must_verify_and_be_about_the_same_user_and_session() {
        let key = jwt_mint::Key::ec256("k1");
        let (keys, _) =
            kit::jwt::keys::parse_jwks(jwt_mint::jwks(&[&key]).to_string().as_bytes(), true)
                .unwrap();
        let c = config();
        let now = 1_800_000_000u64;
        let token = |extra: serde_json::Value| {
            let mut claims = json!({"iss": "https://idp.test", "aud": "web app", "sub": "u",
                "sid": "s1", "iat": now, "exp": now + 600, "tier": "gold"});
            for (k, v) in extra.as_object().unwrap() {
                if v.is_null() {
                    claims.as_object_mut().unwrap().remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
            key.sign("ES256", claims)
        };
        let check = |t: &str| verify_refreshed_id_token(&c, &keys, t, "u", Some("s1"), now);
        assert_eq!(check(&token(json!({}))).unwrap()["tier"], "gold");
        assert!(
            check(&token(json!({"sid": null}))).is_ok(),
            "no sid to compare"
        );
        assert!(
            verify_refreshed_id_token(&c, &keys, &token(json!({})), "u", None, now).is_ok(),
            "the session had none"
        );
        assert_eq!(
            check(&token(json!({"sub": "v"}))),
            Err(TokenRefused::OtherSubject)
        );
        assert_eq!(
            check(&token(json!({"sid": "s2"}))),
            Err(TokenRefused::OtherSession)
        );
        assert_eq!(
            check(&token(json!({"aud": "other"}))),
            Err(TokenRefused::Audience)
        );
        assert!(check(&token(json!({"iss": "https://evil.test"}))).is_err());
        assert!(check(&token(json!({"exp": now - 100, "iat": now - 700}))).is_err());
        let forged = jwt_mint::Key::ec256("k1").sign(
            "ES256",
            json!({"iss": "https://idp.test", "aud": "web app", "sub": "u", "iat": now, "exp": now + 600}),
        );
        assert!(check(&forged).is_err());
        assert!(check("not-a-jwt").is_err());
    }

    #[test]
    fn back_channel_requests_are_answered_from_their_headers_when_they_can_be() {
        let form = Some("application/x-www-form-urlencoded");
        assert_eq!(backchannel_headers("POST", form, Some("900"), true), Ok(()));
        assert_eq!(
            backchannel_headers(
                "POST",
                Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
                None,
                true
            ),
            Ok(())
        );
        for (method, ct, len, body, status) in [
            ("GET", form, None, false, 405),
            ("GET", form, None, true, 405),
            ("PUT", form, None, true, 405),
            ("post", form, None, true, 405),
            ("POST", form, None, false, 400),
            ("POST", None, None, true, 400),
            ("POST", Some("application/json"), None, true, 400),
            (
                "POST",
                Some("application/x-www-form-urlencodedx"),
                None,
                true,
                400,
            ),
            ("POST", form, Some("65537"), true, 413),
        ] {
            assert_eq!(
                backchannel_headers(method, ct, len, body).map_err(|e| e.0),
                Err(status),
                "{method} {ct:?} {len:?} {body}"
            );
        }
        assert_eq!(
            backchannel_headers("POST", form, Some("junk"), true),
            Ok(())
        );
    }

    #[test]
    fn private_key_jwt_sends_a_fresh_signed_assertion_for_the_endpoint_and_no_secret() {
        let key = jwt_mint::Key::ec256("client-key");
        let mut c = config();
        c.client_auth = ClientAuth::PrivateKeyJwt;
        c.client_secret = None;
        c.client_key = Some(std::rc::Rc::new(
            kit::jwt::sign::SigningKey::from_jwk(&key.private_jwk().unwrap()).unwrap(),
        ));
        let (h, body) = code_grant(&c, "c0de", "v");
        assert!(!h.iter().any(|(k, _)| k == "authorization"));
        let body = String::from_utf8(body).unwrap();
        assert!(
            body.contains("client_id=web+app") && !body.contains("secret"),
            "{body}"
        );
        let endpoint = "https://idp.test/token";
        let fields = |at: u64| {
            let f = client_assertion(&c, endpoint, at).unwrap().unwrap();
            let pairs: Vec<(String, String)> = form_urlencoded::parse(f.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(
                pairs[0],
                (
                    "client_assertion_type".to_owned(),
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned()
                )
            );
            pairs[1].1.clone()
        };
        let (a, b) = (fields(1000), fields(1000));
        let set = json!({"keys": [key.jwk()]}).to_string();
        let (keys, _) = kit::jwt::keys::parse_jwks(set.as_bytes(), true).unwrap();
        let mut jtis = Vec::new();
        for jwt in [&a, &b] {
            let t = token::parse(jwt, 16 * 1024).unwrap();
            assert!(kit::jwt::verify_signature(&t, &[kit::jwt::keys::Alg::ES256], &keys).is_ok());
            assert_eq!(t.kid.as_deref(), Some("client-key"));
            assert_eq!(t.claims["iss"], "web app");
            assert_eq!(t.claims["sub"], "web app");
            assert_eq!(t.claims["aud"], endpoint);
            assert_eq!(t.claims["iat"], 1000);
            assert_eq!(t.claims["exp"], 1060);
            jtis.push(t.claims["jti"].as_str().unwrap().to_owned());
        }
        assert_ne!(jtis[0], jtis[1], "a fresh jti each time");
        // Other methods send none.
        assert_eq!(client_assertion(&config(), endpoint, 1000).unwrap(), None);
    }

    #[test]
    fn client_secret_basic_form_encodes_before_base64() {
        let (h, body) = code_grant(&config(), "c0de", "v");
        let auth = &h.iter().find(|(k, _)| k == "authorization").unwrap().1;
        let decoded = STANDARD
            .decode(auth.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"web+app:p%40ss%3Aword");
        let body = String::from_utf8(body).unwrap();
        assert_eq!(
            crate::url::param(&body, "code").unwrap().as_deref(),
            Some("c0de")
        );
        assert_eq!(crate::url::param(&body, "client_secret").unwrap(), None);
    }

    #[test]
    fn token_answers_are_classified() {
        assert!(
            parse_tokens(
                Some("200"),
                br#"{"access_token":"a","token_type":"Bearer"}"#
            )
            .is_ok()
        );
        assert_eq!(
            parse_tokens(
                Some("400"),
                br#"{"error":"invalid_grant","error_description":"secret stuff"}"#
            )
            .unwrap_err(),
            TokenError::Refused("invalid_grant".into())
        );
        assert!(matches!(
            parse_tokens(Some("503"), b""),
            Err(TokenError::Unreachable(_))
        ));
        assert!(matches!(
            parse_tokens(None, b""),
            Err(TokenError::Unreachable(_))
        ));
        assert!(matches!(
            parse_tokens(Some("200"), br#"{"access_token":"a","token_type":"mac"}"#),
            Err(TokenError::Refused(_))
        ));
    }
}
