//! Registered claims (RFC 7519 4.1): `iss` exact, `aud` intersecting, `exp`, `nbf`,
//! `iat` with a clock skew, an optional longest lifetime. Plain data in, a decision out.

use serde_json::{Map, Value};

use super::Invalid;

/// What a verifier requires of a token's registered claims.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// `iss` must be exactly this, when set.
    pub issuer: Option<&'a str>,
    /// `aud` (a string or an array) must name one of these; empty: not checked.
    pub audiences: &'a [String],
    pub skew: u64,
    pub require_expiration: bool,
    /// `exp - iat` must not exceed this (and both must be present), when set.
    pub max_lifetime: Option<u64>,
}

/// Why the claims are refused: the token is invalid, or valid but not for us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    Invalid(Invalid),
    /// No audience of ours is in `aud` (jwt-auth answers 403 for it, as Envoy does).
    Audience,
}

/// A NumericDate claim. A fraction is allowed; negative or absurd values are malformed.
pub fn numeric(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, Invalid> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if (0.0..1e14).contains(&f) => Ok(Some(f as u64)),
            _ => Err(Invalid::BadClaim(name)),
        },
        Some(_) => Err(Invalid::BadClaim(name)),
    }
}

/// Checks the claims at `now` (seconds since the epoch). Returns the time the token
/// stops being valid (`exp` plus the skew), if it has one.
pub fn check(
    rules: &Rules<'_>,
    claims: &Map<String, Value>,
    now: u64,
) -> Result<Option<u64>, Rejected> {
    let inv = Rejected::Invalid;
    if let Some(issuer) = rules.issuer {
        match claims.get("iss") {
            Some(Value::String(iss)) if iss == issuer => {}
            _ => return Err(inv(Invalid::Issuer)),
        }
    }
    let exp = numeric(claims, "exp").map_err(inv)?;
    let nbf = numeric(claims, "nbf").map_err(inv)?;
    let iat = numeric(claims, "iat").map_err(inv)?;
    match exp {
        Some(exp) if now >= exp.saturating_add(rules.skew) => return Err(inv(Invalid::Expired)),
        None if rules.require_expiration => return Err(inv(Invalid::NoExpiration)),
        _ => {}
    }
    if nbf.is_some_and(|nbf| now.saturating_add(rules.skew) < nbf) {
        return Err(inv(Invalid::NotYetValid));
    }
    if iat.is_some_and(|iat| now.saturating_add(rules.skew) < iat) {
        return Err(inv(Invalid::IssuedInFuture));
    }
    if let Some(max) = rules.max_lifetime {
        // A lifetime limit needs both ends of the lifetime.
        match (iat, exp) {
            (Some(iat), Some(exp)) if exp.saturating_sub(iat) <= max => {}
            _ => return Err(inv(Invalid::LifetimeTooLong)),
        }
    }
    if !rules.audiences.is_empty() && !audience_matches(claims, rules.audiences).map_err(inv)? {
        return Err(Rejected::Audience);
    }
    Ok(exp.map(|e| e.saturating_add(rules.skew)))
}

/// Whether `aud` names one of `audiences`; a malformed `aud` is an error.
pub fn audience_matches(
    claims: &Map<String, Value>,
    audiences: &[String],
) -> Result<bool, Invalid> {
    Ok(match claims.get("aud") {
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list
            .iter()
            .any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a))),
        Some(_) => return Err(Invalid::BadClaim("aud")),
        None => false,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn issuer_audience_and_time_are_checked() {
        let auds = vec!["api".to_string()];
        let rules = Rules {
            issuer: Some("https://idp"),
            audiences: &auds,
            skew: 10,
            require_expiration: true,
            max_lifetime: None,
        };
        let ok =
            claims(json!({"iss": "https://idp", "aud": ["x", "api"], "exp": 1000, "iat": 900}));
        assert_eq!(check(&rules, &ok, 950), Ok(Some(1010)));
        assert_eq!(check(&rules, &ok, 1009), Ok(Some(1010)));
        assert_eq!(
            check(&rules, &ok, 1010),
            Err(Rejected::Invalid(Invalid::Expired))
        );
        let other = claims(json!({"iss": "https://idp/", "aud": "api", "exp": 1000}));
        assert_eq!(
            check(&rules, &other, 950),
            Err(Rejected::Invalid(Invalid::Issuer))
        );
        let aud = claims(json!({"iss": "https://idp", "aud": "web", "exp": 1000}));
        assert_eq!(check(&rules, &aud, 950), Err(Rejected::Audience));
        let no_exp = claims(json!({"iss": "https://idp", "aud": "api"}));
        assert_eq!(
            check(&rules, &no_exp, 950),
            Err(Rejected::Invalid(Invalid::NoExpiration))
        );
        let future = claims(json!({"iss": "https://idp", "aud": "api", "exp": 2000, "iat": 1500}));
        assert_eq!(
            check(&rules, &future, 950),
            Err(Rejected::Invalid(Invalid::IssuedInFuture))
        );
        let bad = claims(json!({"iss": "https://idp", "aud": "api", "exp": "soon"}));
        assert_eq!(
            check(&rules, &bad, 950),
            Err(Rejected::Invalid(Invalid::BadClaim("exp")))
        );
    }
}
