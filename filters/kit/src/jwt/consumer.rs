//! Which claims name the consumer (Kong's consumer, the identity contract of docs/architecture.md), and
//! the identity headers a verified token gives.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::claims::as_header_value;
use crate::identity;

#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerClaims {
    #[serde(default = "sub")]
    pub id_claim: String,
    #[serde(default)]
    pub username_claim: Option<String>,
    #[serde(default)]
    pub groups_claim: Option<String>,
    #[serde(default)]
    pub tier_claim: Option<String>,
    /// A fixed consumer id for every token of the provider (a provider per consumer, as
    /// Kong's jwt credentials are), instead of a claim's.
    #[serde(default)]
    pub id: Option<String>,
    /// A fixed consumer username, likewise.
    #[serde(default)]
    pub username: Option<String>,
}

fn sub() -> String {
    "sub".into()
}

impl Default for ConsumerClaims {
    fn default() -> Self {
        ConsumerClaims {
            id_claim: sub(),
            username_claim: None,
            groups_claim: None,
            tier_claim: None,
            id: None,
            username: None,
        }
    }
}

/// A non-empty claim as a header value.
pub fn claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims
        .get(name)
        .map(as_header_value)
        .filter(|s| !s.is_empty())
}

/// The identity headers (Kong's names) for verified `claims`: consumer id, username,
/// groups, tier when their claims are present, and `x-credential-identifier`:
/// `credential`, which the caller names from its configuration (the issuer it pinned
/// and checked, or the provider's name), never from the token: a token accepted
/// without a pinned issuer could name any `iss`, and downstream filters trust this
/// header. A value that could split a header is dropped; groups are
/// [`groups_header`]'s.
pub fn identity_headers(
    consumer: &ConsumerClaims,
    claims: &Map<String, Value>,
    credential: &str,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let get = |name: &str| claim(claims, name);
    if let Some(id) = consumer.id.clone().or_else(|| get(&consumer.id_claim)) {
        out.push((identity::CONSUMER_ID.to_owned(), id));
    }
    if let Some(name) = consumer
        .username
        .clone()
        .or_else(|| consumer.username_claim.as_deref().and_then(get))
    {
        out.push((identity::CONSUMER_USERNAME.to_owned(), name));
    }
    if let Some(groups) = consumer
        .groups_claim
        .as_deref()
        .and_then(|name| claims.get(name))
        .and_then(groups_header)
    {
        out.push((identity::CONSUMER_GROUPS.to_owned(), groups));
    }
    if let Some(tier) = consumer.tier_claim.as_deref().and_then(get) {
        out.push((identity::CONSUMER_TIER.to_owned(), tier));
    }
    out.push((
        identity::CREDENTIAL_IDENTIFIER.to_owned(),
        credential.to_owned(),
    ));
    out.retain(|(_, v)| safe_header_value(v));
    out
}

/// A groups claim as `x-consumer-groups`: its values joined by commas (Kong's form, as
/// key-auth sends its consumers' groups), leaving out each value an upstream that
/// splits the header at commas would misread: one holding a comma (`dev,admin` would
/// read as `dev` and `admin`), a control character or surrounding blanks, and one that
/// names no group (empty, an array, an object, null). A string claim is one value.
/// `None` when no value is left.
pub fn groups_header(claim: &Value) -> Option<String> {
    let one = |v: &Value| {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return None,
        };
        let plain =
            !s.is_empty() && !s.contains(',') && !s.chars().any(char::is_control) && s.trim() == s;
        plain.then_some(s)
    };
    let groups: Vec<String> = match claim {
        Value::Array(list) => list.iter().filter_map(one).collect(),
        v => one(v).into_iter().collect(),
    };
    (!groups.is_empty()).then(|| groups.join(","))
}

/// Whether `v` can be a header value as it is (no CR, LF or NUL).
pub fn safe_header_value(v: &str) -> bool {
    !v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_fixed_consumer_wins_over_the_claims() {
        let c = ConsumerClaims {
            id: Some("c-1".into()),
            username: Some("ada".into()),
            ..ConsumerClaims::default()
        };
        let claims = json!({"sub": "someone-else", "iss": "k1"});
        let h = identity_headers(&c, claims.as_object().unwrap(), "k1");
        assert_eq!(h[0], ("x-consumer-id".to_owned(), "c-1".to_owned()));
        assert_eq!(h[1], ("x-consumer-username".to_owned(), "ada".to_owned()));
    }

    #[test]
    fn identity_follows_the_configured_claims() {
        let c = ConsumerClaims {
            username_claim: Some("name".into()),
            groups_claim: Some("groups".into()),
            ..ConsumerClaims::default()
        };
        let claims = json!({"sub": "u1", "name": "ada\r\nx-evil: 1", "groups": ["a", "b"], "iss": "https://idp"});
        let h = identity_headers(&c, claims.as_object().unwrap(), "https://idp");
        assert_eq!(
            h,
            vec![
                ("x-consumer-id".into(), "u1".into()),
                ("x-consumer-groups".into(), "a,b".into()),
                ("x-credential-identifier".into(), "https://idp".into()),
            ]
        );
    }

    #[test]
    fn groups_an_upstream_would_split_or_misread_are_left_out() {
        let g = |v: Value| groups_header(&v);
        assert_eq!(g(json!(["a", "b"])).as_deref(), Some("a,b"));
        assert_eq!(g(json!(["dev,admin"])), None);
        assert_eq!(g(json!("dev,admin")), None);
        assert_eq!(g(json!("eng")).as_deref(), Some("eng"));
        assert_eq!(
            g(json!([
                "eng",
                "dev,admin",
                " admin",
                "a\tb",
                "x\u{85}",
                "",
                7,
                true
            ]))
            .as_deref(),
            Some("eng,7,true")
        );
        assert_eq!(
            g(json!(["eng", ["a", "b"], {"a": 1}, null])).as_deref(),
            Some("eng")
        );
        assert_eq!(g(json!([])), None);
        assert_eq!(g(json!({"admin": true})), None);
    }

    #[test]
    fn the_credential_is_the_callers_not_the_tokens() {
        let claims = json!({"sub": "u1", "iss": "https://attacker.example"});
        let h = identity_headers(
            &ConsumerClaims::default(),
            claims.as_object().expect("an object"),
            "partner",
        );
        assert!(
            h.contains(&("x-credential-identifier".into(), "partner".into())),
            "{h:?}"
        );
        assert!(!h.iter().any(|(_, v)| v.contains("attacker")));
    }
}
