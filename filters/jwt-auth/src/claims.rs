//! Registered claims (RFC 7519 4.1) with the provider's clock skew, and scopes.

use serde_json::{Map, Value};

use crate::config::Provider;
use crate::error::{Denial, Invalid};

fn numeric(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, Invalid> {
    match claims.get(name) {
        None => Ok(None),
        // NumericDate may carry a fraction; negative or absurd values are malformed.
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 && f < 1e14 => Ok(Some(f as u64)),
            _ => Err(Invalid::BadClaim(name)),
        },
        Some(_) => Err(Invalid::BadClaim(name)),
    }
}

/// Checks `iss`, `exp`, `nbf`, `iat`, the lifetime and `aud` at `now` (seconds since the
/// epoch). Returns the time the token stops being valid (for the cache), if it has one.
pub fn check(p: &Provider, claims: &Map<String, Value>, now: u64) -> Result<Option<u64>, Denial> {
    let inv = Denial::Invalid;
    if let Some(issuer) = &p.issuer {
        match claims.get("iss") {
            Some(Value::String(iss)) if iss == issuer => {}
            _ => return Err(inv(Invalid::Issuer)),
        }
    }
    let exp = numeric(claims, "exp").map_err(inv)?;
    let nbf = numeric(claims, "nbf").map_err(inv)?;
    let iat = numeric(claims, "iat").map_err(inv)?;
    match exp {
        Some(exp) if now >= exp.saturating_add(p.skew) => return Err(inv(Invalid::Expired)),
        None if p.require_expiration => return Err(inv(Invalid::NoExpiration)),
        _ => {}
    }
    if nbf.is_some_and(|nbf| now.saturating_add(p.skew) < nbf) {
        return Err(inv(Invalid::NotYetValid));
    }
    if iat.is_some_and(|iat| now.saturating_add(p.skew) < iat) {
        return Err(inv(Invalid::IssuedInFuture));
    }
    if let Some(max) = p.max_lifetime {
        // A lifetime limit needs both ends of the lifetime.
        match (iat, exp) {
            (Some(iat), Some(exp)) if exp.saturating_sub(iat) <= max => {}
            _ => return Err(inv(Invalid::LifetimeTooLong)),
        }
    }
    if !p.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => p.audiences.iter().any(|x| x == a),
            Some(Value::Array(list)) => list.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| p.audiences.iter().any(|x| x == a))
            }),
            Some(_) => return Err(inv(Invalid::BadClaim("aud"))),
            None => false,
        };
        if !ok {
            return Err(Denial::Audience);
        }
    }
    Ok(exp.map(|e| e.saturating_add(p.skew)))
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

/// A claim as a header value: strings as they are, numbers and booleans printed,
/// arrays joined with commas, objects as JSON.
pub fn as_header_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(list) => list
            .iter()
            .map(as_header_value)
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
