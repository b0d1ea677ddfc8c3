//! Registered claims (RFC 7519 4.1, checked by `kit::jwt::claims`) with the provider's
//! clock skew, and scopes.

use serde_json::{Map, Value};

use kit::jwt::claims::Rejected;

use crate::config::Provider;
use crate::error::Denial;

/// Checks `iss`, `exp`, `nbf`, `iat`, the lifetime and `aud` at `now` (seconds since the
/// epoch) with the provider's rules. Returns the time the token stops being valid (for
/// the cache), if it has one.
pub fn check(p: &Provider, claims: &Map<String, Value>, now: u64) -> Result<Option<u64>, Denial> {
    let rules = kit::jwt::claims::Rules {
        issuer: p.issuer.as_deref(),
        audiences: &p.audiences,
        skew: p.skew,
        require_expiration: p.require_expiration,
        max_lifetime: p.max_lifetime,
    };
    kit::jwt::claims::check(&rules, claims, now).map_err(|r| match r {
        Rejected::Invalid(i) => Denial::Invalid(i),
        Rejected::Audience => Denial::Audience,
    })
}

/// Every scope in `required` must be granted: `scope` (a space-separated string, RFC
/// 8693) or `scp` (a string or an array, as Okta and Azure AD write it).
pub fn check_scopes(claims: &Map<String, Value>, required: &[String]) -> Result<(), Denial> {
    if required.is_empty() {
        return Ok(());
    }
    let mut granted: Vec<&str> = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => granted.extend(s.split(' ').filter(|s| !s.is_empty())),
            Some(Value::Array(list)) => granted.extend(list.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    let missing: Vec<String> = required
        .iter()
        .filter(|r| !granted.contains(&r.as_str()))
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Denial::Scope(missing))
    }
}

pub use kit::jwt::claims::as_header_value;
