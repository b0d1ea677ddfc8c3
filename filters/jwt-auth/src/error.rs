//! Why a request is refused, and what the client is told (RFC 6750 section 3).

/// A token that cannot be accepted: 401 with `error="invalid_token"`.
pub use kit::jwt::Invalid;

/// Why a request's path cannot be routed safely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRefusal {
    /// No path, or one with no lax reading.
    Invalid(kit::path::PathError),
    /// As given and as a lax upstream reads it, the path picks different rules.
    Ambiguous,
}

/// What the filter decides for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// 401, no token: `WWW-Authenticate: Bearer realm="..."`.
    Missing,
    /// 401 `error="invalid_token"`.
    Invalid(Invalid),
    /// 403 (as Envoy): the token is valid but not for this audience.
    Audience,
    /// 403 `error="insufficient_scope"`.
    Scope(Vec<String>),
    /// 403: the token's claims do not satisfy the rule's claim rules (no
    /// `WWW-Authenticate`: this is not about scopes; which rule failed is not said).
    Claims,
    /// 503 with `Retry-After`: the keys cannot be had and none are cached.
    KeysUnavailable,
    /// 401 `error="invalid_token"`: the introspection endpoint says the token is not
    /// active (revoked, expired or unknown).
    Inactive,
    /// 503 with `Retry-After`: the introspection endpoint cannot be reached.
    IntrospectionUnavailable,
    /// 400: the request's path is missing, invalid or ambiguous (decided before any
    /// token is looked at).
    Path(PathRefusal),
}

impl Denial {
    pub fn status(&self) -> u32 {
        match self {
            Denial::Missing | Denial::Invalid(_) | Denial::Inactive => 401,
            Denial::Audience | Denial::Scope(_) | Denial::Claims => 403,
            Denial::KeysUnavailable | Denial::IntrospectionUnavailable => 503,
            Denial::Path(_) => 400,
        }
    }

    /// The reason as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::Missing => "missing",
            Denial::Invalid(Invalid::Expired) => "expired",
            Denial::Invalid(Invalid::BadSignature) => "bad_signature",
            Denial::Invalid(Invalid::UnknownKey) => "unknown_key",
            Denial::Invalid(Invalid::AlgorithmNotAllowed) => "algorithm",
            Denial::Invalid(Invalid::Issuer) => "issuer",
            Denial::Invalid(_) => "invalid",
            Denial::Audience => "audience",
            Denial::Scope(_) => "scope",
            Denial::Claims => "claims",
            Denial::KeysUnavailable => "keys_unavailable",
            Denial::Inactive => "inactive",
            Denial::IntrospectionUnavailable => "introspection_unavailable",
            Denial::Path(_) => "path",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Denial::Missing => "missing bearer token".into(),
            Denial::Invalid(i) => i.to_string(),
            Denial::Audience => "token audience is not accepted".into(),
            Denial::Scope(s) => format!("token lacks the scope {}", s.join(" ")),
            Denial::Claims => "the token's claims do not satisfy this route's rules".into(),
            Denial::KeysUnavailable => "the identity provider's keys are unavailable".into(),
            Denial::Inactive => "token is not active".into(),
            Denial::IntrospectionUnavailable => {
                "the identity provider's introspection endpoint is unavailable".into()
            }
            Denial::Path(PathRefusal::Invalid(e)) => e.to_string(),
            Denial::Path(PathRefusal::Ambiguous) => "the request path is ambiguous".into(),
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750), or none for a 503.
    pub fn www_authenticate(&self, realm: &str) -> Option<String> {
        let realm = realm.replace('\\', "\\\\").replace('"', "\\\"");
        match self {
            Denial::Missing => Some(format!("Bearer realm=\"{realm}\"")),
            Denial::Invalid(i) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{i}\""
            )),
            Denial::Audience => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"audience not accepted\""
            )),
            Denial::Scope(s) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{}\"",
                s.join(" ")
            )),
            Denial::Inactive => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"token is not active\""
            )),
            Denial::Claims
            | Denial::KeysUnavailable
            | Denial::IntrospectionUnavailable
            | Denial::Path(_) => None,
        }
    }
}
