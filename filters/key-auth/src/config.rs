//! The configuration, in Kong `key-auth`'s terms where Kong has them:
//!
//! ```json
//! {
//!   "key_names": ["apikey"],
//!   "key_in_header": true, "key_in_query": true, "key_in_cookie": false,
//!   "hide_credentials": false,
//!   "realm": "portcullis",
//!   "consumers": [{"id": "c-1", "username": "ada", "groups": ["ops"], "tier": "premium",
//!                  "keys": ["sha256:...", {"id": "ada-ci", "hash": "sha256:..."}]}],
//!   "key_service": {"cluster": "keys", "path": "/consumers", "refresh_seconds": 60},
//!   "claims": [{"claim": "groups", "contains": "ops"}]
//! }
//! ```

use kit::config::ConfigError;
use serde::Deserialize;

use crate::directory::{ConsumerConfig, Directory};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default = "default_key_names")]
    pub key_names: Vec<String>,
    #[serde(default = "yes")]
    pub key_in_header: bool,
    #[serde(default = "yes")]
    pub key_in_query: bool,
    #[serde(default)]
    pub key_in_cookie: bool,
    #[serde(default)]
    pub hide_credentials: bool,
    #[serde(default)]
    pub realm: Option<String>,
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    #[serde(default)]
    pub key_service: Option<KeyService>,
    #[serde(default)]
    pub claims: Vec<kit::claim_rule::ClaimRuleConfig>,
}

fn default_key_names() -> Vec<String> {
    vec!["apikey".into()]
}

fn yes() -> bool {
    true
}

/// Where more consumers come from: a JSON document `{"consumers": [...]}` fetched with
/// `http_call`, refreshed every `refresh_seconds`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct KeyService {
    pub cluster: String,
    pub path: String,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// How long consumers fetched last stay good while the service fails (default an
    /// hour); past it, keys not in the configuration get 503.
    #[serde(default = "default_max_stale")]
    pub max_stale_seconds: u64,
}

fn default_max_stale() -> u64 {
    3600
}

fn default_refresh() -> u64 {
    60
}

fn default_timeout() -> u64 {
    2000
}

/// A checked configuration.
#[derive(Debug)]
pub struct Config {
    /// Header names, lower case.
    pub headers: Vec<String>,
    pub params: Vec<String>,
    pub cookies: Vec<String>,
    pub hide_credentials: bool,
    pub realm: String,
    pub directory: Directory,
    pub key_service: Option<KeyService>,
    pub claims: Option<kit::claim_rule::ClaimRule>,
}

/// An HTTP token (RFC 9110 5.6.2), what a header, cookie or parameter name may be here.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Config {
    pub fn parse(bytes: Option<&[u8]>) -> Result<Config, ConfigError> {
        let f: ConfigFile = kit::config::parse(bytes)?;
        if f.key_names.is_empty() {
            return Err(ConfigError::field("key_names", "names at least one key"));
        }
        if let Some(bad) = f.key_names.iter().find(|n| !is_token(n)) {
            return Err(ConfigError::field(
                "key_names",
                format!("`{bad}` is not a valid header, parameter or cookie name"),
            ));
        }
        if !(f.key_in_header || f.key_in_query || f.key_in_cookie) {
            return Err(ConfigError::field(
                "key_in_header",
                "one of key_in_header, key_in_query or key_in_cookie must be true",
            ));
        }
        let directory = Directory::build(&f.consumers)
            .map_err(|e| ConfigError::field(format!("consumers{}", e.at), e.why))?;
        if let Some(s) = &f.key_service {
            if !s.path.starts_with('/') {
                return Err(ConfigError::field("key_service.path", "must start with /"));
            }
            if s.refresh_seconds == 0 {
                return Err(ConfigError::field(
                    "key_service.refresh_seconds",
                    "must be positive",
                ));
            }
            if s.max_stale_seconds < s.refresh_seconds {
                return Err(ConfigError::field(
                    "key_service.max_stale_seconds",
                    "must be at least refresh_seconds",
                ));
            }
        } else if directory.is_empty() {
            return Err(ConfigError::field(
                "consumers",
                "no key at all: give consumers with keys, or a key_service",
            ));
        }
        let claims = kit::claim_rule::ClaimRule::compile_all(&f.claims)
            .map_err(|e| ConfigError::field(format!("claims{}", e.at), e.reason))?;
        let pick = |on: bool| if on { f.key_names.clone() } else { Vec::new() };
        Ok(Config {
            headers: pick(f.key_in_header)
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            params: pick(f.key_in_query),
            cookies: pick(f.key_in_cookie),
            hide_credentials: f.hide_credentials,
            realm: f.realm.unwrap_or_else(|| "portcullis".into()),
            directory,
            key_service: f.key_service,
            claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::hash_string;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Config, ConfigError> {
        Config::parse(Some(v.to_string().as_bytes()))
    }

    #[test]
    fn kongs_defaults_apply() {
        let c = parse(json!({"consumers": [{"id": "a", "keys": [hash_string(b"k")]}]})).unwrap();
        assert_eq!(c.headers, ["apikey"]);
        assert_eq!(c.params, ["apikey"]);
        assert!(c.cookies.is_empty());
        assert!(!c.hide_credentials);
        assert_eq!(c.realm, "portcullis");
        let c = parse(
            json!({"key_names": ["X-Api-Key"], "key_in_query": false, "key_in_cookie": true,
            "key_service": {"cluster": "keys", "path": "/consumers"}}),
        )
        .unwrap();
        assert_eq!(c.headers, ["x-api-key"]);
        assert!(c.params.is_empty());
        assert_eq!(c.cookies, ["X-Api-Key"]);
        assert_eq!(c.key_service.unwrap().refresh_seconds, 60);
    }

    #[test]
    fn mistakes_are_refused_with_the_field() {
        let k = hash_string(b"k");
        for (v, says) in [
            (json!({}), "`consumers`: no key at all"),
            (
                json!({"consumers": [{"id": "a", "keys": ["clear-text"]}]}),
                "`consumers[0].keys[0]`",
            ),
            (
                json!({"key_names": [], "consumers": [{"id": "a", "keys": [k]}]}),
                "`key_names`",
            ),
            (
                json!({"key_names": ["a b"], "consumers": [{"id": "a", "keys": [k]}]}),
                "not a valid header",
            ),
            (
                json!({"key_in_header": false, "key_in_query": false, "consumers": [{"id": "a", "keys": [k]}]}),
                "one of key_in_header",
            ),
            (
                json!({"key_service": {"cluster": "k", "path": "consumers"}}),
                "`key_service.path`",
            ),
            (
                json!({"key_service": {"cluster": "k", "path": "/c", "refresh_seconds": 0}}),
                "refresh_seconds",
            ),
            (
                json!({"consumers": [{"id": "a", "keys": [k]}], "claims": [{"claim": "groups"}]}),
                "`claims[0]`",
            ),
            (
                json!({"consumers": [{"id": "a", "keys": [k]}], "key_in_body": true}),
                "key_in_body",
            ),
        ] {
            let e = parse(v.clone()).err().unwrap().to_string();
            assert!(e.contains(says), "{v}: {e}");
        }
    }
}
