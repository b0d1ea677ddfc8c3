//! The filter's configuration, with Kong `openid-connect` names where Kong has them.
//! Parsed and checked once in `on_configure`; a bad one is refused whole, naming the
//! field.

use kit::config::ConfigError;
use kit::jwt::consumer::ConsumerClaims;
use kit::jwt::keys::Alg;
use serde::Deserialize;

use crate::cookie::{CookieSettings, SameSite, SessionKeys};
use crate::url::Url;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub issuer: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub client_auth: Option<String>,
    /// `private_key_jwt` (RFC 7523): the client's private key, a JWK (EC P-256 or
    /// Ed25519, with its `kid`); the IdP registers its public half.
    #[serde(default)]
    pub client_jwk: Option<serde_json::Value>,
    pub redirect_uri: String,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    pub idp_cluster: String,
    /// `:authority` of calls to the IdP (default: the issuer's host).
    #[serde(default)]
    pub idp_authority: Option<String>,
    #[serde(default = "default_timeout")]
    pub idp_timeout_ms: u64,
    #[serde(default = "default_discovery_ttl")]
    pub discovery_ttl_seconds: u64,
    #[serde(default = "default_jwks_ttl")]
    pub jwks_ttl_seconds: u64,
    pub session: SessionFile,
    #[serde(default)]
    pub logout: Option<LogoutFile>,
    #[serde(default)]
    pub backchannel_logout_path: Option<String>,
    /// Absent: `authorization:bearer`; `null` or "": not sent.
    #[serde(default, deserialize_with = "present")]
    pub upstream_access_token_header: Option<Option<String>>,
    #[serde(default)]
    pub upstream_id_token_header: Option<String>,
    /// Fetch the userinfo endpoint's claims at login (OpenID Connect Core 5.3): they
    /// fill what the ID token lacks, for the identity headers and the claim rules.
    #[serde(default)]
    pub userinfo: bool,
    /// Sends the userinfo claims upstream in this header, as base64 of their JSON
    /// (Kong's `upstream_user_info_header`); implies `userinfo`.
    #[serde(default)]
    pub upstream_user_info_header: Option<String>,
    #[serde(default)]
    pub consumer: ConsumerClaims,
    #[serde(default)]
    pub bearer_passthrough: bool,
    /// Audiences a pass-through bearer token may carry (required with
    /// `bearer_passthrough`).
    #[serde(default)]
    pub bearer_audiences: Vec<String>,
    #[serde(default = "default_unauthenticated")]
    pub unauthenticated_api: u32,
    #[serde(default = "yes")]
    pub refresh_tokens: bool,
    /// Refresh this long before the access token expires.
    #[serde(default = "default_leeway")]
    pub refresh_leeway_seconds: u64,
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    #[serde(default)]
    pub allow_insecure_http: bool,
    #[serde(default)]
    pub id_token_algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub realm: Option<String>,
    /// OpenID Connect Core 3.1.2.1: sent as `max_age`; the ID token must then carry an
    /// `auth_time` no older than this (plus the clock skew).
    #[serde(default)]
    pub max_age: Option<u64>,
    /// Authentication context classes to ask for (`acr_values`, OpenID Connect Core
    /// 3.1.2.1); the ID token's `acr` must then be one of them, or the login fails
    /// (step-up: a route that needs MFA gets it or nothing).
    #[serde(default)]
    pub acr_values: Vec<String>,
    /// Extra authorization-request parameters (`prompt`, `acr_values`, `login_hint`,
    /// `ui_locales`...), names and values in the same order, as in Kong.
    #[serde(default)]
    pub authorization_query_args_names: Vec<String>,
    #[serde(default)]
    pub authorization_query_args_values: Vec<String>,
    /// Query parameters of the browser's request passed on to the authorization
    /// request when present (`login_hint`, `ui_locales`...), as in Kong.
    #[serde(default)]
    pub authorization_query_args_client: Vec<String>,
    /// What a signed-in user must be to pass here.
    #[serde(default)]
    pub requires: Option<RequiresFile>,
}

/// `requires`: claim rules (`kit::claim_rule`) on the session's ID token (or a
/// passed-through bearer token), all of which must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiresFile {
    #[serde(default)]
    pub claims: Vec<kit::claim_rule::ClaimRuleConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionFile {
    pub secrets: Vec<SecretFile>,
    #[serde(default)]
    pub cookie_name: Option<String>,
    #[serde(default = "default_lifetime")]
    pub lifetime: u64,
    #[serde(default = "default_idle")]
    pub idle_timeout: u64,
    #[serde(default)]
    pub samesite: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// Decrypted sessions kept per VM (default 1000; 0 turns the cache off).
    #[serde(default = "default_cache")]
    pub cache_entries: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretFile {
    pub id: String,
    pub secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogoutFile {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub post_logout_redirect_uri: Option<String>,
}

/// Tells an explicit `null` (Some(None)) from an absent field (None).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn default_timeout() -> u64 {
    5000
}
fn default_discovery_ttl() -> u64 {
    3600
}
fn default_jwks_ttl() -> u64 {
    600
}
fn default_unauthenticated() -> u32 {
    401
}
fn yes() -> bool {
    true
}
fn default_leeway() -> u64 {
    30
}
fn default_skew() -> u64 {
    60
}
fn default_lifetime() -> u64 {
    8 * 3600
}
fn default_idle() -> u64 {
    3600
}
fn default_cache() -> usize {
    1000
}

/// A secret from the configuration: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Basic,
    Post,
    /// A client assertion signed with `Config::client_key` (RFC 7523).
    PrivateKeyJwt,
    None,
}

/// Where the access token goes upstream: a header, and whether its value is
/// `Bearer <token>` or the bare token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    pub name: String,
    pub bearer: bool,
}

/// The checked configuration.
#[derive(Debug)]
pub struct Config {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub client_auth: ClientAuth,
    /// The key of `private_key_jwt`.
    pub client_key: Option<std::rc::Rc<kit::jwt::sign::SigningKey>>,
    pub redirect_uri: String,
    /// The path (without query) the IdP sends the browser back to.
    pub callback_path: String,
    /// The application's origin (`redirect_uri`'s scheme and host, as browsers write
    /// an `Origin`), which a logout POST must come from.
    pub app_origin: String,
    pub scopes: String,
    pub idp_cluster: String,
    pub idp_authority: String,
    pub idp_timeout_ms: u64,
    /// `:path` of the discovery document on the IdP.
    pub discovery_path: String,
    pub discovery_ttl: u64,
    pub jwks_ttl: u64,
    pub keys: SessionKeys,
    pub cookie: CookieSettings,
    pub lifetime: u64,
    pub idle_timeout: u64,
    pub cache_entries: usize,
    pub logout_path: Option<String>,
    pub post_logout_redirect_uri: Option<String>,
    pub backchannel_logout_path: Option<String>,
    pub access_token_header: Option<TokenHeader>,
    pub id_token_header: Option<String>,
    /// Fetch userinfo at login.
    pub userinfo: bool,
    /// Where the userinfo claims go upstream (base64 of their JSON).
    pub userinfo_header: Option<String>,
    pub consumer: ConsumerClaims,
    pub bearer_passthrough: bool,
    pub bearer_audiences: Vec<String>,
    pub unauthenticated_api: u32,
    pub refresh_tokens: bool,
    pub refresh_leeway: u64,
    pub skew: u64,
    pub algorithms: Vec<Alg>,
    pub realm: String,
    pub max_age: Option<u64>,
    /// Sent as `acr_values`; the login's ID token must carry one of them as `acr`.
    pub acr_values: Vec<String>,
    /// Extra authorization-request parameters, in order.
    pub authorize_args: Vec<(String, String)>,
    /// Parameters of the browser's request passed on to the authorization request.
    pub client_args: Vec<String>,
    /// What the signed-in user's claims must satisfy (403 otherwise, not a new login).
    pub claims: Option<kit::claim_rule::ClaimRule>,
}

/// The authorization-request parameters the filter sets itself.
const OWN_AUTHORIZE_ARGS: [&str; 9] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "max_age",
];

fn valid_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

fn valid_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// RFC 6265 5.1.4: whether a cookie with `Path=cookie_path` is sent to `path`.
fn path_covers(cookie_path: &str, path: &str) -> bool {
    path == cookie_path
        || (path.starts_with(cookie_path)
            && (cookie_path.ends_with('/') || path[cookie_path.len()..].starts_with('/')))
}

/// Upper bounds, so `now + x` never overflows and a typo is not a decade-long session.
const MAX_LIFETIME: u64 = 366 * 24 * 3600;
const MAX_TTL: u64 = 7 * 24 * 3600;
const MAX_LEEWAY: u64 = 3600;
const MAX_TIMEOUT_MS: u64 = 600_000;

fn at_most(field: &str, v: u64, max: u64) -> Result<(), ConfigError> {
    if v > max {
        return Err(ConfigError::field(field, format!("must be at most {max}")));
    }
    Ok(())
}

fn local_path(field: &str, p: &str) -> Result<(), ConfigError> {
    if !p.starts_with('/') || p.starts_with("//") || p.contains(['?', '#', ' ']) {
        return Err(ConfigError::field(
            field,
            "must be a path that starts with a single /",
        ));
    }
    Ok(())
}

impl Config {
    pub fn parse(bytes: Option<&[u8]>) -> Result<Config, ConfigError> {
        let file: ConfigFile = kit::config::parse(bytes)?;
        Config::check(file)
    }

    fn check(f: ConfigFile) -> Result<Config, ConfigError> {
        fn err(field: &str, reason: impl Into<String>) -> ConfigError {
            ConfigError::field(field, reason)
        }
        let issuer_url = Url::parse(&f.issuer).ok_or_else(|| {
            err(
                "issuer",
                "must be an absolute http(s) URL such as https://idp.example.com",
            )
        })?;
        if issuer_url.query.is_some() {
            return Err(err("issuer", "must not have a query"));
        }
        if issuer_url.scheme == "http" && !f.allow_insecure_http {
            return Err(err(
                "issuer",
                "must be https (set allow_insecure_http for a local test IdP)",
            ));
        }
        if f.client_id.is_empty() {
            return Err(err("client_id", "must not be empty"));
        }
        let client_auth = match f.client_auth.as_deref() {
            None if f.client_secret.is_some() => ClientAuth::Basic,
            None => ClientAuth::None,
            Some("client_secret_basic") => ClientAuth::Basic,
            Some("client_secret_post") => ClientAuth::Post,
            Some("private_key_jwt") => ClientAuth::PrivateKeyJwt,
            Some("none") => ClientAuth::None,
            Some(other) => {
                return Err(err(
                    "client_auth",
                    format!(
                        "unknown method `{other}` (client_secret_basic, client_secret_post, private_key_jwt or none)"
                    ),
                ));
            }
        };
        let client_key = match (client_auth, &f.client_jwk) {
            (ClientAuth::PrivateKeyJwt, Some(jwk)) => Some(std::rc::Rc::new(
                kit::jwt::sign::SigningKey::from_jwk(jwk).map_err(|e| err("client_jwk", e))?,
            )),
            (ClientAuth::PrivateKeyJwt, None) => {
                return Err(err("client_jwk", "is required by private_key_jwt"));
            }
            (_, Some(_)) => {
                return Err(err(
                    "client_jwk",
                    "is used only with client_auth: private_key_jwt",
                ));
            }
            (_, None) => None,
        };
        match (client_auth, &f.client_secret) {
            (ClientAuth::Basic | ClientAuth::Post, None) => {
                return Err(err(
                    "client_secret",
                    "is required by client_secret_basic and client_secret_post",
                ));
            }
            (ClientAuth::Basic | ClientAuth::Post, Some(s)) if s.is_empty() => {
                return Err(err("client_secret", "must not be empty"));
            }
            (ClientAuth::None, Some(_)) => {
                return Err(err(
                    "client_secret",
                    "a public client (client_auth: none) has no secret",
                ));
            }
            (ClientAuth::PrivateKeyJwt, Some(_)) => {
                return Err(err(
                    "client_secret",
                    "private_key_jwt authenticates with client_jwk, not a secret",
                ));
            }
            _ => {}
        }
        let redirect = Url::parse(&f.redirect_uri).ok_or_else(|| {
            err(
                "redirect_uri",
                "must be an absolute URL such as https://app.example.com/callback",
            )
        })?;
        if redirect.scheme != "https" && !f.allow_insecure_http {
            return Err(err(
                "redirect_uri",
                "must be https: IdPs and browsers require it (allow_insecure_http: true for local tests only)",
            ));
        }
        if redirect.query.is_some() {
            return Err(err("redirect_uri", "must not have a query"));
        }
        let scopes = f
            .scopes
            .unwrap_or_else(|| vec!["openid".into(), "profile".into(), "email".into()]);
        if !scopes.iter().any(|s| s == "openid") {
            return Err(err("scopes", "must include `openid`"));
        }
        if scopes
            .iter()
            .any(|s| s.is_empty() || s.bytes().any(|b| b <= b' ' || b == b'"' || b == b'\\'))
        {
            return Err(err("scopes", "a scope is empty or has a space or quote"));
        }
        if f.idp_cluster.is_empty() {
            return Err(err("idp_cluster", "must not be empty"));
        }
        if f.idp_timeout_ms == 0 {
            return Err(err("idp_timeout_ms", "must be positive"));
        }
        if f.discovery_ttl_seconds == 0 {
            return Err(err("discovery_ttl_seconds", "must be positive"));
        }
        if f.jwks_ttl_seconds == 0 {
            return Err(err("jwks_ttl_seconds", "must be positive"));
        }
        at_most("idp_timeout_ms", f.idp_timeout_ms, MAX_TIMEOUT_MS)?;
        at_most("discovery_ttl_seconds", f.discovery_ttl_seconds, MAX_TTL)?;
        at_most("jwks_ttl_seconds", f.jwks_ttl_seconds, MAX_TTL)?;
        at_most(
            "refresh_leeway_seconds",
            f.refresh_leeway_seconds,
            MAX_LEEWAY,
        )?;
        at_most("clock_skew_seconds", f.clock_skew_seconds, MAX_LEEWAY)?;

        // Session.
        let s = f.session;
        // Cookies are this filter's own: bound to its IdP, its client and the
        // authentication classes it requires (in any order), so another filter with the
        // same secret, or this one after `acr_values` changed, does not take them.
        let mut acr: Vec<&str> = f.acr_values.iter().map(String::as_str).collect();
        acr.sort_unstable();
        acr.dedup();
        let acr = acr.join(" ");
        let keys = SessionKeys::bound(
            s.secrets.iter().map(|k| (k.id.as_str(), k.secret.as_str())),
            &[&f.issuer, &f.client_id, &acr],
        )
        .map_err(|e| err("session.secrets", e))?;
        if s.lifetime == 0 {
            return Err(err("session.lifetime", "must be positive"));
        }
        at_most("session.lifetime", s.lifetime, MAX_LIFETIME)?;
        at_most("session.idle_timeout", s.idle_timeout, MAX_LIFETIME)?;
        let samesite = match s.samesite.as_deref() {
            None | Some("Lax") | Some("lax") => SameSite::Lax,
            Some("Strict") | Some("strict") => {
                // The IdP sends the browser back cross-site; the redirect from the
                // callback to the page still counts as cross-site, so a Strict session
                // cookie is not sent there and the browser logs in again, forever.
                return Err(err(
                    "session.samesite",
                    "Strict is not sent after the identity provider's cross-site redirect back, so every login would loop; use Lax",
                ));
            }
            Some("None") | Some("none") => SameSite::None,
            Some(other) => {
                return Err(err(
                    "session.samesite",
                    format!("`{other}` is not Lax, Strict or None"),
                ));
            }
        };
        let secure = redirect.scheme == "https";
        if samesite == SameSite::None && !secure {
            return Err(err(
                "session.samesite",
                "None needs Secure cookies, so an https redirect_uri",
            ));
        }
        let path = s.path.unwrap_or_else(|| "/".into());
        local_path("session.path", &path)?;
        if let Some(d) = &s.domain
            && (d.is_empty()
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)))
        {
            return Err(err("session.domain", "is not a host name"));
        }
        let base = s.cookie_name.unwrap_or_else(|| "portcullis_session".into());
        if !valid_cookie_name(&base) || base.starts_with("__") {
            return Err(err(
                "session.cookie_name",
                "letters, digits, - _ . only, and no __ prefix (added when it applies)",
            ));
        }
        // RFC 6265bis: `__Host-` needs Secure, Path=/ and no Domain; it pins the cookie
        // to this host so a sibling subdomain cannot plant or overwrite it.
        let host_prefix = secure && path == "/" && s.domain.is_none();
        let prefix = if host_prefix { "__Host-" } else { "" };
        let cookie = CookieSettings {
            name: format!("{prefix}{base}"),
            state_name: format!("{prefix}{base}_login"),
            secure,
            samesite,
            domain: s.domain,
            path,
        };

        // Paths.
        let logout = f.logout.unwrap_or(LogoutFile {
            path: None,
            post_logout_redirect_uri: None,
        });
        let logout_path = logout.path.or_else(|| Some("/logout".into()));
        if let Some(p) = &logout_path {
            local_path("logout.path", p)?;
        }
        if let Some(u) = &logout.post_logout_redirect_uri {
            let parsed = Url::parse(u)
                .ok_or_else(|| err("logout.post_logout_redirect_uri", "must be an absolute URL"))?;
            if parsed.scheme != "https" && !f.allow_insecure_http {
                return Err(err("logout.post_logout_redirect_uri", "must be https"));
            }
        }
        if let Some(p) = &f.backchannel_logout_path {
            local_path("backchannel_logout_path", p)?;
        }
        let callback_path = redirect.path.clone();
        // The login cookie must reach the callback, the session cookie the logout.
        if !path_covers(&cookie.path, &callback_path) {
            return Err(err(
                "session.path",
                format!("must cover the redirect_uri path `{callback_path}`"),
            ));
        }
        if let Some(p) = logout_path
            .as_deref()
            .filter(|p| !path_covers(&cookie.path, p))
        {
            return Err(err(
                "session.path",
                format!("must cover the logout path `{p}`"),
            ));
        }
        for (name, p) in [
            ("logout.path", logout_path.as_deref()),
            (
                "backchannel_logout_path",
                f.backchannel_logout_path.as_deref(),
            ),
        ] {
            if p == Some(callback_path.as_str()) {
                return Err(err(name, "must differ from the redirect_uri path"));
            }
        }

        // Upstream headers.
        let access_token_header = match f.upstream_access_token_header {
            None => Some(TokenHeader {
                name: "authorization".into(),
                bearer: true,
            }),
            Some(None) => None,
            Some(Some(spec)) if spec.is_empty() => None,
            Some(Some(spec)) => {
                let (name, bearer) = match spec.split_once(':') {
                    Some((n, "bearer")) => (n, true),
                    Some(_) => {
                        return Err(err(
                            "upstream_access_token_header",
                            "is `name` or `name:bearer`",
                        ));
                    }
                    None => (spec.as_str(), false),
                };
                if !valid_header_name(name) {
                    return Err(err("upstream_access_token_header", "is not a header name"));
                }
                Some(TokenHeader {
                    name: name.to_ascii_lowercase(),
                    bearer,
                })
            }
        };
        if let Some(h) = &f.upstream_id_token_header
            && !valid_header_name(h)
        {
            return Err(err("upstream_id_token_header", "is not a header name"));
        }
        if let Some(h) = &f.upstream_user_info_header
            && !valid_header_name(h)
        {
            return Err(err("upstream_user_info_header", "is not a header name"));
        }
        if ![401, 403].contains(&f.unauthenticated_api) {
            return Err(err("unauthenticated_api", "must be 401 or 403"));
        }
        let algorithms = match &f.id_token_algorithms {
            None => Alg::ASYMMETRIC.to_vec(),
            Some(list) if list.is_empty() => {
                return Err(err("id_token_algorithms", "must not be empty"));
            }
            Some(list) => list
                .iter()
                .map(|a| match Alg::parse(a) {
                    Some(alg) if alg.min_hmac_bytes().is_none() => Ok(alg),
                    _ => Err(err(
                        "id_token_algorithms",
                        format!("`{a}` is not an asymmetric JWS algorithm we verify"),
                    )),
                })
                .collect::<Result<_, _>>()?,
        };
        let idp_authority = f
            .idp_authority
            .unwrap_or_else(|| issuer_url.authority.clone());
        let discovery_path = format!(
            "{}/.well-known/openid-configuration",
            issuer_url.path.trim_end_matches('/')
        );
        // No default: the client id is the audience of our own ID tokens, which are
        // not access tokens.
        if f.bearer_passthrough && f.bearer_audiences.is_empty() {
            return Err(err(
                "bearer_audiences",
                "is required with bearer_passthrough: the audiences of the access tokens the API accepts",
            ));
        }
        if f.bearer_audiences.iter().any(String::is_empty) {
            return Err(err("bearer_audiences", "an audience is empty"));
        }
        let bearer_audiences = f.bearer_audiences;
        if let Some(max_age) = f.max_age {
            at_most("max_age", max_age, MAX_LIFETIME)?;
        }
        if f.acr_values
            .iter()
            .any(|v| v.is_empty() || v.contains(char::is_whitespace))
        {
            return Err(err(
                "acr_values",
                "a value is empty or holds a space (each is one class)",
            ));
        }
        if !f.acr_values.is_empty()
            && (f
                .authorization_query_args_names
                .iter()
                .any(|n| n == "acr_values")
                || f.authorization_query_args_client
                    .iter()
                    .any(|n| n == "acr_values"))
        {
            return Err(err(
                "acr_values",
                "is also in authorization_query_args_names or _client: give it once",
            ));
        }
        if f.authorization_query_args_names.len() != f.authorization_query_args_values.len() {
            return Err(err(
                "authorization_query_args_values",
                "must have one value for each of authorization_query_args_names",
            ));
        }
        for name in &f.authorization_query_args_names {
            if name.is_empty() {
                return Err(err("authorization_query_args_names", "a name is empty"));
            }
            if OWN_AUTHORIZE_ARGS.contains(&name.as_str()) {
                return Err(err(
                    "authorization_query_args_names",
                    format!("`{name}` is set by the filter itself (max_age has its own field)"),
                ));
            }
        }
        for name in &f.authorization_query_args_client {
            if name.is_empty()
                || OWN_AUTHORIZE_ARGS.contains(&name.as_str())
                || f.authorization_query_args_names.contains(name)
            {
                return Err(err(
                    "authorization_query_args_client",
                    format!(
                        "`{name}` is empty, set by the filter itself, or already in authorization_query_args_names"
                    ),
                ));
            }
        }
        let claims = match &f.requires {
            Some(r) => kit::claim_rule::ClaimRule::compile_all(&r.claims)
                .map_err(|e| err(&format!("requires.claims{}", e.at), e.reason))?,
            None => None,
        };
        let authorize_args = f
            .authorization_query_args_names
            .into_iter()
            .zip(f.authorization_query_args_values)
            .collect();
        Ok(Config {
            issuer: f.issuer,
            client_id: f.client_id,
            client_secret: f.client_secret.map(Secret),
            client_auth,
            client_key,
            redirect_uri: f.redirect_uri,
            callback_path,
            app_origin: crate::logout::origin(&redirect.scheme, &redirect.authority),
            scopes: scopes.join(" "),
            idp_cluster: f.idp_cluster,
            idp_authority,
            idp_timeout_ms: f.idp_timeout_ms,
            discovery_path,
            discovery_ttl: f.discovery_ttl_seconds,
            jwks_ttl: f.jwks_ttl_seconds,
            keys,
            cookie,
            lifetime: s.lifetime,
            idle_timeout: s.idle_timeout,
            cache_entries: s.cache_entries,
            logout_path,
            post_logout_redirect_uri: logout.post_logout_redirect_uri,
            backchannel_logout_path: f.backchannel_logout_path,
            access_token_header,
            id_token_header: f.upstream_id_token_header.map(|h| h.to_ascii_lowercase()),
            userinfo: f.userinfo || f.upstream_user_info_header.is_some(),
            userinfo_header: f.upstream_user_info_header.map(|h| h.to_ascii_lowercase()),
            consumer: f.consumer,
            bearer_passthrough: f.bearer_passthrough,
            bearer_audiences,
            unauthenticated_api: f.unauthenticated_api,
            refresh_tokens: f.refresh_tokens,
            refresh_leeway: f.refresh_leeway_seconds,
            skew: f.clock_skew_seconds,
            algorithms,
            realm: f.realm.unwrap_or_else(|| "portcullis".into()),
            max_age: f.max_age,
            acr_values: f.acr_values,
            authorize_args,
            client_args: f.authorization_query_args_client,
            claims,
        })
    }

    /// Every header a client could use to claim an identity or a token: removed from
    /// each request before anything else.
    pub fn spoofable_headers(&self) -> Vec<String> {
        let mut out: Vec<String> = kit::identity::ALL.iter().map(|s| s.to_string()).collect();
        out.extend(self.id_token_header.iter().cloned());
        out.extend(self.userinfo_header.iter().cloned());
        // `authorization` is what a pass-through client presents its token in; any
        // other access-token header is ours alone to set.
        if let Some(h) = &self.access_token_header
            && h.name != "authorization"
        {
            out.push(h.name.clone());
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn base() -> Value {
        json!({
            "issuer": "https://idp.example.com",
            "client_id": "web",
            "client_secret": "s3cret",
            "redirect_uri": "https://app.example.com/callback",
            "idp_cluster": "idp",
            "session": {"secrets": [{"id": "k1", "secret": "0123456789abcdef0123456789abcdef"}]}
        })
    }

    fn with(path: &[&str], v: Value) -> Value {
        let mut doc = base();
        let mut at = &mut doc;
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        at[path[path.len() - 1]] = v;
        doc
    }

    fn parse(v: &Value) -> Result<Config, ConfigError> {
        Config::parse(Some(v.to_string().as_bytes()))
    }

    fn refused_naming(v: Value, field: &str) {
        match parse(&v) {
            Err(e) => assert!(e.to_string().contains(field), "{e} should name {field}"),
            Ok(_) => panic!("accepted a bad {field}: {v}"),
        }
    }

    #[test]
    fn extra_authorization_arguments_and_max_age_are_checked() {
        let mut doc = base();
        doc["max_age"] = json!(600);
        doc["authorization_query_args_names"] = json!(["prompt", "acr_values"]);
        doc["authorization_query_args_values"] = json!(["login", "urn:mace:incommon:iap:silver"]);
        let c = parse(&doc).unwrap();
        assert_eq!(c.max_age, Some(600));
        assert_eq!(
            c.authorize_args,
            vec![
                ("prompt".to_string(), "login".to_string()),
                (
                    "acr_values".to_string(),
                    "urn:mace:incommon:iap:silver".to_string()
                )
            ]
        );
        refused_naming(with(&["max_age"], json!(MAX_LIFETIME + 1)), "max_age");
        let mut uneven = doc.clone();
        uneven["authorization_query_args_values"] = json!(["login"]);
        refused_naming(uneven, "authorization_query_args_values");
        for own in [
            "state",
            "nonce",
            "redirect_uri",
            "max_age",
            "",
            "code_challenge",
        ] {
            let mut d = doc.clone();
            d["authorization_query_args_names"] = json!([own, "acr_values"]);
            refused_naming(d, "authorization_query_args_names");
        }
        let mut d = doc.clone();
        d["authorization_query_args_client"] = json!(["login_hint", "ui_locales"]);
        assert_eq!(
            parse(&d).unwrap().client_args,
            vec!["login_hint", "ui_locales"]
        );
        for bad in ["state", "prompt", ""] {
            let mut d = doc.clone();
            d["authorization_query_args_client"] = json!([bad]);
            refused_naming(d, "authorization_query_args_client");
        }
    }

    #[test]
    fn a_minimal_config_gets_safe_defaults() {
        let c = parse(&base()).unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("0123456789abcdef"),
            "{shown}"
        );
        assert_eq!(c.client_auth, ClientAuth::Basic);
        assert_eq!(c.callback_path, "/callback");
        assert_eq!(c.app_origin, "https://app.example.com");
        assert_eq!(c.cookie.name, "__Host-portcullis_session");
        assert!(c.cookie.secure);
        assert_eq!(c.cookie.samesite, SameSite::Lax);
        assert_eq!(c.scopes, "openid profile email");
        assert_eq!(c.idp_authority, "idp.example.com");
        assert_eq!(c.discovery_path, "/.well-known/openid-configuration");
        assert_eq!(
            c.access_token_header,
            Some(TokenHeader {
                name: "authorization".into(),
                bearer: true
            })
        );
        assert_eq!(c.logout_path.as_deref(), Some("/logout"));
        assert!(c.refresh_tokens);
    }

    #[test]
    fn bad_configurations_are_refused_naming_the_field() {
        refused_naming(
            with(&["redirect_uri"], json!("http://app.example.com/cb")),
            "redirect_uri",
        );
        refused_naming(with(&["issuer"], json!("idp.example.com")), "issuer");
        refused_naming(
            with(&["client_auth"], json!("private_key_jwt")),
            "client_jwk",
        );
        refused_naming(
            with(&["client_auth"], json!("tls_client_auth")),
            "client_auth",
        );
        refused_naming(with(&["scopes"], json!(["profile"])), "scopes");
        refused_naming(with(&["session", "secrets"], json!([])), "session.secrets");
        refused_naming(
            with(
                &["session", "secrets"],
                json!([{"id": "k1", "secret": "short"}]),
            ),
            "session.secrets",
        );
        refused_naming(
            with(&["session", "samesite"], json!("Loose")),
            "session.samesite",
        );
        refused_naming(with(&["logout"], json!({"path": "logout"})), "logout.path");
        refused_naming(
            with(&["unauthenticated_api"], json!(302)),
            "unauthenticated_api",
        );
        refused_naming(
            with(&["id_token_algorithms"], json!(["HS256"])),
            "id_token_algorithms",
        );
        refused_naming(with(&["nonsense"], json!(1)), "nonsense");
        refused_naming(with(&["session", "path"], json!("/app")), "session.path");
        refused_naming(
            with(&["session", "samesite"], json!("Strict")),
            "session.samesite",
        );
        refused_naming(with(&["session", "path"], json!("/call")), "session.path");
        let mut logout_elsewhere = with(&["session", "path"], json!("/callback"));
        logout_elsewhere["redirect_uri"] = json!("https://app.example.com/callback/done");
        refused_naming(logout_elsewhere, "session.path");
        refused_naming(
            with(&["session", "lifetime"], json!(u64::MAX)),
            "session.lifetime",
        );
        refused_naming(
            with(&["session", "idle_timeout"], json!(u64::MAX)),
            "session.idle_timeout",
        );
        refused_naming(
            with(&["refresh_leeway_seconds"], json!(u64::MAX)),
            "refresh_leeway_seconds",
        );
        refused_naming(
            with(&["clock_skew_seconds"], json!(u64::MAX)),
            "clock_skew_seconds",
        );
        refused_naming(
            with(&["jwks_ttl_seconds"], json!(u64::MAX)),
            "jwks_ttl_seconds",
        );
        refused_naming(
            with(&["bearer_passthrough"], json!(true)),
            "bearer_audiences",
        );
        let mut public = base();
        public["client_auth"] = json!("none");
        refused_naming(public, "client_secret");
    }

    #[test]
    fn a_session_path_that_covers_callback_and_logout_is_accepted() {
        let mut v = with(&["session", "path"], json!("/app"));
        v["redirect_uri"] = json!("https://app.example.com/app/callback");
        v["logout"] = json!({"path": "/app/logout"});
        let c = parse(&v).unwrap();
        assert_eq!(c.cookie.path, "/app");
        assert!(path_covers("/", "/x"));
        assert!(path_covers("/app/", "/app/x"));
        assert!(!path_covers("/app", "/application"));
    }

    #[test]
    fn insecure_http_is_allowed_only_when_asked_and_drops_the_host_prefix() {
        let mut v = with(&["redirect_uri"], json!("http://127.0.0.1:8080/callback"));
        v["issuer"] = json!("http://127.0.0.1:4000");
        v["allow_insecure_http"] = json!(true);
        let c = parse(&v).unwrap();
        assert!(!c.cookie.secure);
        assert_eq!(c.cookie.name, "portcullis_session");
        assert_eq!(c.idp_authority, "127.0.0.1:4000");
    }

    #[test]
    fn upstream_token_header_follows_kongs_syntax() {
        let c = parse(&with(&["upstream_access_token_header"], json!("X-Token"))).unwrap();
        assert_eq!(
            c.access_token_header,
            Some(TokenHeader {
                name: "x-token".into(),
                bearer: false
            })
        );
        let c = parse(&with(&["upstream_access_token_header"], Value::Null)).unwrap();
        assert_eq!(c.access_token_header, None);
    }

    #[test]
    fn a_custom_access_token_header_is_stripped_from_requests() {
        let c = parse(&with(&["upstream_access_token_header"], json!("X-Token"))).unwrap();
        assert!(c.spoofable_headers().contains(&"x-token".to_string()));
        let c = parse(&base()).unwrap();
        assert!(!c.spoofable_headers().contains(&"authorization".to_string()));
    }
}
