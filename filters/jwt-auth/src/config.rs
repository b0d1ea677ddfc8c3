//! The filter's configuration, modelled on Envoy's `jwt_authn` (providers, rules, token
//! locations, forwarding, claims to headers) with Kong's names where Kong has the
//! concept. Parsed and checked once in `on_configure`; a bad one is refused whole,
//! naming the field.

use std::collections::BTreeMap;

use kit::config::ConfigError;
use serde::Deserialize;

use crate::error::PathRefusal;
use crate::keys::{Alg, KeySet, parse_jwks};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// The realm in `WWW-Authenticate` (default "portcullis").
    #[serde(default)]
    pub realm: Option<String>,
    /// Verified tokens kept per VM (default 1000); 0 turns the cache off.
    #[serde(default)]
    pub cache_entries: Option<usize>,
    /// Longest a verified token is kept, whatever its `exp` (default 300 s).
    #[serde(default)]
    pub cache_ttl_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// An inline JWKS, as a JSON object or a string holding one.
    #[serde(default)]
    pub local_jwks: Option<serde_json::Value>,
    /// Opaque tokens checked at the IdP's introspection endpoint (RFC 7662) instead
    /// of by signature.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    #[serde(default)]
    pub from_headers: Option<Vec<HeaderLocation>>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    #[serde(default)]
    pub forward: bool,
    #[serde(default)]
    pub forward_payload_header: Option<String>,
    #[serde(default)]
    pub claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default)]
    pub consumer: ConsumerClaims,
    #[serde(default = "yes")]
    pub require_expiration: bool,
    #[serde(default)]
    pub max_lifetime_seconds: Option<u64>,
    #[serde(default = "default_max_token")]
    pub max_token_bytes: usize,
}

fn default_skew() -> u64 {
    60
}

/// A provider's introspection endpoint and how we authenticate to it.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    pub cluster: String,
    /// The endpoint's path on `cluster`. Without it, the endpoint is discovered: the
    /// `introspection_endpoint` of the issuer's OpenID configuration (RFC 8414), read
    /// from the same cluster.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: String,
    /// `client_secret_basic` (default), `client_secret_post` or `private_key_jwt`.
    #[serde(default)]
    pub client_auth: Option<String>,
    /// `private_key_jwt`'s private key, a JWK (EC P-256, Ed25519 or RSA).
    #[serde(default)]
    pub client_jwk: Option<serde_json::Value>,
    /// Longest an active answer is kept (it never outlives the token's `exp`).
    #[serde(default = "default_introspection_ttl")]
    pub cache_ttl_seconds: u64,
    /// How long an inactive answer is kept.
    #[serde(default = "default_negative_ttl")]
    pub negative_cache_seconds: u64,
    #[serde(default = "default_introspection_timeout")]
    pub timeout_ms: u64,
    /// Worked out at load: the key of `private_key_jwt`.
    #[serde(skip)]
    pub client_key: Option<std::rc::Rc<kit::jwt::sign::SigningKey>>,
    /// Worked out at load: where the discovery document is, when `path` is not given.
    #[serde(skip)]
    pub discovery_path: Option<String>,
}

/// Checks a provider's introspection settings and works out the signing key and the
/// discovery path. Err: the field under `introspection` (".path", or "" for the whole)
/// and why.
fn check_introspection(
    i: &mut IntrospectionConfig,
    issuer: Option<&str>,
) -> Result<(), (&'static str, String)> {
    match &i.path {
        Some(path) if !path.starts_with('/') => {
            return Err((".path", "must start with /".into()));
        }
        Some(_) => {}
        None => {
            let found = issuer.and_then(discovery_path).ok_or((
                ".path",
                "is needed unless the provider's issuer is an http(s) URL to discover it from"
                    .to_owned(),
            ))?;
            i.discovery_path = Some(found);
        }
    }
    if i.cache_ttl_seconds == 0 || i.client_id.is_empty() {
        return Err((
            "",
            "needs a client_id and a positive cache_ttl_seconds".into(),
        ));
    }
    match i.client_auth.as_deref() {
        None | Some("client_secret_basic" | "client_secret_post") => {
            if i.client_secret.is_empty() {
                return Err((
                    ".client_secret",
                    "is needed by client_secret_basic and client_secret_post".into(),
                ));
            }
            if i.client_jwk.is_some() {
                return Err((".client_jwk", "is used only by private_key_jwt".into()));
            }
        }
        Some("private_key_jwt") => {
            if !i.client_secret.is_empty() {
                return Err((
                    ".client_secret",
                    "private_key_jwt authenticates with client_jwk, not a secret".into(),
                ));
            }
            if issuer.is_none() {
                return Err((
                    "",
                    "private_key_jwt needs the provider's issuer: it is the assertion's audience"
                        .into(),
                ));
            }
            let jwk = i
                .client_jwk
                .as_ref()
                .ok_or((".client_jwk", "is required by private_key_jwt".to_owned()))?;
            let key = kit::jwt::sign::SigningKey::from_jwk(jwk).map_err(|e| (".client_jwk", e))?;
            i.client_key = Some(std::rc::Rc::new(key));
        }
        Some(_) => {
            return Err((
                ".client_auth",
                "is client_secret_basic, client_secret_post or private_key_jwt".into(),
            ));
        }
    }
    Ok(())
}

/// The path of an issuer's discovery document (OpenID Connect Discovery 4, RFC 8414 3):
/// the issuer's own path, then `/.well-known/openid-configuration`.
pub fn discovery_path(issuer: &str) -> Option<String> {
    let rest = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"))?;
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    if path.contains(['?', '#']) {
        return None;
    }
    Some(format!(
        "{}/.well-known/openid-configuration",
        path.trim_end_matches('/')
    ))
}

fn default_introspection_ttl() -> u64 {
    300
}
fn default_negative_ttl() -> u64 {
    10
}
fn default_introspection_timeout() -> u64 {
    2000
}
fn yes() -> bool {
    true
}
fn default_max_token() -> usize {
    8192
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// The cluster (gateway service, Envoy cluster) that reaches the IdP.
    pub cluster: String,
    pub path: String,
    /// `:authority` of the fetch (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default = "default_cache_duration")]
    pub cache_duration_seconds: u64,
    #[serde(default = "default_fetch_timeout")]
    pub timeout_ms: u64,
    /// A token with an unknown `kid` triggers at most one refetch per this interval.
    #[serde(default = "default_refetch")]
    pub refetch_interval_seconds: u64,
}

fn default_cache_duration() -> u64 {
    600
}
fn default_fetch_timeout() -> u64 {
    5000
}
fn default_refetch() -> u64 {
    30
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HeaderLocation {
    pub name: String,
    #[serde(default)]
    pub value_prefix: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    pub claim: String,
    pub header: String,
}

pub use kit::jwt::consumer::ConsumerClaims;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(rename = "match")]
    pub matches: RuleMatch,
    #[serde(default)]
    pub requires: Option<Requires>,
    /// A request without a token passes (without identity); a bad token still fails.
    #[serde(default)]
    pub allow_missing: bool,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// Envoy's `path_separated_prefix`: the path is this, or this followed by `/`
    /// (`/health` matches `/health`, `/health/x`, `/health?x`, not `/healthcare`).
    #[serde(default)]
    pub path_separated_prefix: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
}

impl RuleMatch {
    /// Whether `path` (without its query) matches.
    pub fn path_matches(&self, path: &str) -> bool {
        match (&self.path, &self.prefix, &self.path_separated_prefix) {
            (Some(exact), _, _) => path == exact,
            (None, Some(prefix), _) => path.starts_with(prefix.as_str()),
            (None, None, Some(p)) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            (None, None, None) => false,
        }
    }

    fn check(&self, field: impl Fn(&str) -> String) -> Result<(), ConfigError> {
        let Some(p) = &self.path_separated_prefix else {
            if self.prefix.is_none() && self.path.is_none() {
                return Err(ConfigError::field(
                    field("match"),
                    "needs `prefix`, `path` or `path_separated_prefix`",
                ));
            }
            return Ok(());
        };
        let here = field("match.path_separated_prefix");
        if self.prefix.is_some() || self.path.is_some() {
            return Err(ConfigError::field(
                here,
                "cannot be combined with `prefix` or `path`",
            ));
        }
        if !p.starts_with('/') {
            return Err(ConfigError::field(here, "must start with /"));
        }
        if p.ends_with('/') {
            return Err(ConfigError::field(
                here,
                "must not end with / (for every path, use `prefix: /`)",
            ));
        }
        if p.contains(['?', '#']) {
            return Err(ConfigError::field(here, "must not contain ? or #"));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub any: Vec<String>,
    /// Every one of these scopes must be in the token (`scope` or `scp`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Every one of these claim rules must hold (`kit::claim_rule`): 403 otherwise.
    #[serde(default)]
    pub claims: Vec<kit::claim_rule::ClaimRuleConfig>,
}

/// A checked provider.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub remote: Option<RemoteJwksConfig>,
    pub local: Option<KeySet>,
    pub introspection: Option<IntrospectionConfig>,
    pub algorithms: Vec<Alg>,
    pub skew: u64,
    pub from_headers: Vec<HeaderLocation>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    pub forward: bool,
    pub forward_payload_header: Option<String>,
    pub claim_to_headers: Vec<ClaimToHeader>,
    pub consumer: ConsumerClaims,
    pub require_expiration: bool,
    pub max_lifetime: Option<u64>,
    pub max_token_bytes: usize,
}

#[derive(Debug)]
pub struct Rule {
    pub matches: RuleMatch,
    /// Indexes into `Config::providers`; empty: no authentication needed.
    pub providers: Vec<usize>,
    pub scopes: Vec<String>,
    /// What the token's claims must satisfy besides the scopes.
    pub claims: Option<kit::claim_rule::ClaimRule>,
    pub allow_missing: bool,
}

#[derive(Debug)]
pub struct Config {
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    pub realm: String,
    pub cache_entries: usize,
    pub cache_ttl: u64,
}

impl Config {
    pub fn parse(bytes: Option<&[u8]>) -> Result<Config, ConfigError> {
        let file: ConfigFile = kit::config::parse(bytes)?;
        Config::check(file)
    }

    fn check(file: ConfigFile) -> Result<Config, ConfigError> {
        let names: Vec<String> = file.providers.keys().cloned().collect();
        let mut providers = Vec::new();
        for (name, p) in file.providers {
            let field = |f: &str| format!("providers.{name}.{f}");
            let algorithms = match &p.algorithms {
                None => Alg::ASYMMETRIC.to_vec(),
                Some(list) if list.is_empty() => {
                    return Err(ConfigError::field(field("algorithms"), "must not be empty"));
                }
                Some(list) => list
                    .iter()
                    .map(|a| {
                        Alg::parse(a).ok_or_else(|| {
                            ConfigError::field(
                                field("algorithms"),
                                format!("unknown algorithm `{a}` (none is never accepted)"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            };
            let local = match &p.local_jwks {
                None => None,
                Some(v) => {
                    let text = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let (set, _) = parse_jwks(text.as_bytes(), true)
                        .map_err(|e| ConfigError::field(field("local_jwks"), e.to_string()))?;
                    if set.keys.is_empty() {
                        return Err(ConfigError::field(field("local_jwks"), "has no keys"));
                    }
                    for k in &set.keys {
                        if let crate::keys::Material::Hmac(secret) = &k.material {
                            for a in &algorithms {
                                if let Some(min) = a.min_hmac_bytes() {
                                    if secret.len() < min && k.alg.is_none_or(|ka| ka == *a) {
                                        return Err(ConfigError::field(
                                            field("local_jwks"),
                                            format!(
                                                "{} needs an HMAC key of at least {min} bytes, key `{}` has {}",
                                                a.name(),
                                                k.kid.as_deref().unwrap_or("?"),
                                                secret.len()
                                            ),
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    Some(set)
                }
            };
            let sources = [
                local.is_some(),
                p.remote_jwks.is_some(),
                p.introspection.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if sources != 1 {
                return Err(ConfigError::field(
                    field("remote_jwks"),
                    "a provider needs one of remote_jwks, local_jwks or introspection",
                ));
            }
            let mut introspection = p.introspection;
            if let Some(i) = &mut introspection {
                check_introspection(i, p.issuer.as_deref()).map_err(|(f, why)| {
                    ConfigError::field(field(&format!("introspection{f}")), why)
                })?;
            }
            if let Some(r) = &p.remote_jwks {
                if !r.path.starts_with('/') {
                    return Err(ConfigError::field(
                        field("remote_jwks.path"),
                        "must start with /",
                    ));
                }
                if r.cache_duration_seconds == 0 {
                    return Err(ConfigError::field(
                        field("remote_jwks.cache_duration_seconds"),
                        "must be positive",
                    ));
                }
            }
            if p.max_token_bytes == 0 {
                return Err(ConfigError::field(
                    field("max_token_bytes"),
                    "must be positive",
                ));
            }
            let from_headers = p.from_headers.clone().unwrap_or_else(|| {
                vec![HeaderLocation {
                    name: "authorization".into(),
                    value_prefix: Some("Bearer ".into()),
                }]
            });
            for h in from_headers
                .iter()
                .map(|h| &h.name)
                .chain(p.forward_payload_header.iter())
                .chain(p.claim_to_headers.iter().map(|c| &c.header))
            {
                if !is_token(h) {
                    return Err(ConfigError::field(
                        field("headers"),
                        format!("`{h}` is not a valid header name"),
                    ));
                }
            }
            providers.push(Provider {
                name: name.clone(),
                issuer: p.issuer,
                audiences: p.audiences,
                remote: p.remote_jwks,
                local,
                introspection,
                algorithms,
                skew: p.clock_skew_seconds,
                from_headers: from_headers
                    .into_iter()
                    .map(|mut h| {
                        h.name = h.name.to_ascii_lowercase();
                        h
                    })
                    .collect(),
                from_params: p.from_params,
                from_cookies: p.from_cookies,
                forward: p.forward,
                forward_payload_header: p.forward_payload_header.map(|h| h.to_ascii_lowercase()),
                claim_to_headers: p
                    .claim_to_headers
                    .into_iter()
                    .map(|mut c| {
                        c.header = c.header.to_ascii_lowercase();
                        c
                    })
                    .collect(),
                consumer: p.consumer,
                require_expiration: p.require_expiration,
                max_lifetime: p.max_lifetime_seconds,
                max_token_bytes: p.max_token_bytes,
            });
        }
        let mut rules = Vec::new();
        for (i, r) in file.rules.into_iter().enumerate() {
            let field = |f: &str| format!("rules[{i}].{f}");
            r.matches.check(field)?;
            let (mut wanted, scopes, claims) = match r.requires {
                None => (Vec::new(), Vec::new(), None),
                Some(req) => {
                    let mut w: Vec<String> = req.any;
                    w.extend(req.provider);
                    if w.is_empty() {
                        return Err(ConfigError::field(
                            field("requires"),
                            "names no provider (`provider` or `any`)",
                        ));
                    }
                    let claims =
                        kit::claim_rule::ClaimRule::compile_all(&req.claims).map_err(|e| {
                            ConfigError::field(field(&format!("requires.claims{}", e.at)), e.reason)
                        })?;
                    (w, req.scopes, claims)
                }
            };
            wanted.dedup();
            let mut idx = Vec::new();
            for w in &wanted {
                match names.iter().position(|n| n == w) {
                    Some(p) => idx.push(p),
                    None => {
                        return Err(ConfigError::field(
                            field("requires"),
                            format!("unknown provider `{w}`"),
                        ));
                    }
                }
            }
            rules.push(Rule {
                matches: r.matches,
                providers: idx,
                scopes,
                claims,
                allow_missing: r.allow_missing,
            });
        }
        if rules.is_empty() {
            // No rules: every request needs a token from any provider (the safe reading
            // of a configuration that names providers and nothing else).
            rules.push(Rule {
                matches: RuleMatch {
                    prefix: Some("/".into()),
                    ..RuleMatch::default()
                },
                providers: (0..providers.len()).collect(),
                scopes: Vec::new(),
                claims: None,
                allow_missing: false,
            });
        }
        if providers.is_empty() {
            return Err(ConfigError::field(
                "providers",
                "at least one provider is needed",
            ));
        }
        Ok(Config {
            providers,
            rules,
            realm: file.realm.unwrap_or_else(|| "portcullis".into()),
            cache_entries: file.cache_entries.unwrap_or(1000),
            cache_ttl: file.cache_ttl_seconds.unwrap_or(300),
        })
    }

    /// The first rule that matches `target` (`:path`, its query ignored) as given
    /// (Envoy's order).
    pub fn rule_for(&self, target: &str, method: &str) -> Option<&Rule> {
        self.rule_index(kit::path::path_only(target), method)
            .map(|i| &self.rules[i])
    }

    /// The index of the first rule that matches `path` (no query) and `method`.
    fn rule_index(&self, path: &str, method: &str) -> Option<usize> {
        self.rules.iter().position(|r| {
            let m = &r.matches;
            m.path_matches(path)
                && (m.methods.is_empty()
                    || m.methods.iter().any(|x| x.eq_ignore_ascii_case(method)))
        })
    }

    /// The rule that decides a request for `target` (`:path`): the first that matches
    /// the path as given, which must also be the first that matches its lax reading
    /// (`kit::path::lax`: what an upstream that decodes `%2e%2e` and `%2F`, reads `\`
    /// as `/`, drops `;params` and resolves `..` would serve). A path without a lax
    /// reading (missing, not absolute, control characters...) or whose readings pick
    /// different rules is refused: deciding on one reading while the upstream serves the
    /// other is how `/public/..;/admin` gets in without a token.
    pub fn route(&self, target: &str, method: &str) -> Result<Option<usize>, PathRefusal> {
        let path = kit::path::path_only(target);
        let lax = kit::path::lax(path).map_err(PathRefusal::Invalid)?;
        let given = self.rule_index(path, method);
        if *lax != *path && self.rule_index(&lax, method) != given {
            return Err(PathRefusal::Ambiguous);
        }
        Ok(given)
    }
}

/// RFC 9110 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn with_provider(p: Value) -> Result<Config, ConfigError> {
        Config::parse(Some(
            json!({"providers": {"idp": p}}).to_string().as_bytes(),
        ))
    }

    #[test]
    fn an_introspection_provider_is_checked_like_the_others() {
        let introspection = json!({"cluster": "idp", "path": "/introspect",
            "client_id": "rs", "client_secret": "s"});
        let c = with_provider(json!({"introspection": introspection})).unwrap();
        let i = c.providers[0].introspection.as_ref().unwrap();
        assert_eq!((i.cache_ttl_seconds, i.negative_cache_seconds), (300, 10));
        assert_eq!(i.discovery_path, None);
        // Without a path, the endpoint is discovered under the issuer's own path.
        let c = with_provider(json!({"issuer": "https://idp.test/realms/a/",
            "introspection": {"cluster": "idp", "client_id": "rs", "client_secret": "s"}}))
        .unwrap();
        let i = c.providers[0].introspection.as_ref().unwrap();
        assert_eq!(
            i.discovery_path.as_deref(),
            Some("/realms/a/.well-known/openid-configuration")
        );
        assert_eq!(
            super::discovery_path("http://127.0.0.1:9/").as_deref(),
            Some("/.well-known/openid-configuration")
        );
        assert_eq!(super::discovery_path("idp.test"), None);
        let jwks = json!({"cluster": "idp", "path": "/jwks"});
        for (p, says) in [
            (json!({}), "one of remote_jwks, local_jwks or introspection"),
            (
                json!({"introspection": introspection, "remote_jwks": jwks}),
                "one of remote_jwks, local_jwks or introspection",
            ),
            (
                json!({"introspection": {"cluster": "idp", "path": "introspect",
                    "client_id": "rs", "client_secret": "s"}}),
                "must start with /",
            ),
            (
                json!({"introspection": {"cluster": "idp", "path": "/i", "client_id": "rs",
                    "client_secret": "s", "client_auth": "private_key_jwt"}}),
                "`providers.idp.introspection.client_secret`: private_key_jwt authenticates with client_jwk",
            ),
            (
                json!({"issuer": "https://idp.test", "introspection": {"cluster": "idp",
                    "client_id": "rs", "client_auth": "private_key_jwt"}}),
                "introspection.client_jwk`: is required by private_key_jwt",
            ),
            (
                json!({"issuer": "https://idp.test", "introspection": {"cluster": "idp",
                    "client_id": "rs", "client_auth": "private_key_jwt",
                    "client_jwk": {"kty": "EC", "crv": "P-256", "d": "AAAA"}}}),
                "introspection.client_jwk",
            ),
            (
                json!({"introspection": {"cluster": "idp", "path": "/i", "client_id": "rs",
                    "client_secret": "s", "client_auth": "tls_client_auth"}}),
                "client_secret_basic, client_secret_post or private_key_jwt",
            ),
            (
                json!({"introspection": {"cluster": "idp", "path": "/i", "client_id": "rs",
                    "client_secret": ""}}),
                "introspection.client_secret`: is needed by client_secret_basic",
            ),
            (
                json!({"introspection": {"cluster": "idp", "client_id": "rs",
                    "client_secret": "s"}}),
                "introspection.path`: is needed unless the provider's issuer",
            ),
        ] {
            let e = with_provider(p.clone()).err().unwrap().to_string();
            assert!(e.contains(says), "{p}: {e}");
        }
    }
}
