//! Consumers and their keys. A key is known only by its SHA-256 digest, written
//! `sha256:<64 hex digits>`: the configuration, the key service's answers, the
//! filter's memory and its logs never hold a key in clear. API keys are long random
//! strings, so an unsalted digest is as good as the key is random (as GitHub and
//! Stripe keep theirs); a digest read from a leaked configuration opens nothing.

use std::collections::HashMap;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use kit::identity;

/// A key's SHA-256 digest.
pub type KeyDigest = [u8; 32];

pub fn digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

/// How a key is written in the configuration: `sha256:` and 64 hex digits.
pub fn hash_string(key: &[u8]) -> String {
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest(key) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Reads `sha256:<64 hex digits>` (either case).
pub fn parse_hash(s: &str) -> Option<KeyDigest> {
    let hex = s.strip_prefix("sha256:")?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16);
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = (nibble(pair[0])? * 16 + nibble(pair[1])?) as u8;
    }
    Some(out)
}

/// A consumer as the configuration (or the key service) writes it.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    pub id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

/// A key: its digest, or its digest with an id (Kong's credential id, sent upstream
/// as `x-credential-identifier`).
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum KeyConfig {
    Hash(String),
    Named { id: String, hash: String },
}

/// What the key service answers: `{"consumers": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumersDocument {
    pub consumers: Vec<ConsumerConfig>,
}

/// A checked consumer: its identity headers worked out once, and the object claim
/// rules look at (`id`, `username`, `groups`, `tier`).
#[derive(Debug)]
pub struct Consumer {
    pub id: String,
    pub identity: Vec<(&'static str, String)>,
    pub claims: Map<String, Value>,
}

/// The consumer a key belongs to, and the key's credential id.
#[derive(Debug, Clone)]
pub struct Entry {
    pub consumer: Rc<Consumer>,
    pub credential: String,
}

/// Consumers by key digest.
#[derive(Debug, Default)]
pub struct Directory {
    by_digest: HashMap<KeyDigest, Entry>,
}

/// What is wrong with a list of consumers: where (`[2].keys[0]`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryError {
    pub at: String,
    pub why: String,
}

impl std::fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.why)
    }
}

/// A header value as it is: no control character (a CR or LF would split the header),
/// no leading or trailing blank.
fn header_safe(v: &str) -> bool {
    !v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) && v.trim() == v
}

impl Directory {
    /// Checks `consumers` and indexes their keys: ids unique and non-empty, every
    /// value usable as a header (groups without commas, since they travel joined by
    /// them), every key a well-formed digest that no other key repeats.
    pub fn build(consumers: &[ConsumerConfig]) -> Result<Directory, DirectoryError> {
        let mut by_digest = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for (ci, c) in consumers.iter().enumerate() {
            let err = |at: String, why: &str| DirectoryError {
                at: format!("[{ci}]{at}"),
                why: why.to_owned(),
            };
            if c.id.is_empty() || !header_safe(&c.id) {
                return Err(err(
                    ".id".into(),
                    "must be non-empty, without control characters or surrounding blanks",
                ));
            }
            if !ids.insert(c.id.as_str()) {
                return Err(err(".id".into(), "is given to another consumer too"));
            }
            for (field, v) in [("username", &c.username), ("tier", &c.tier)] {
                if let Some(v) = v
                    && (v.is_empty() || !header_safe(v))
                {
                    return Err(err(
                        format!(".{field}"),
                        "must be non-empty, without control characters or surrounding blanks",
                    ));
                }
            }
            for (gi, g) in c.groups.iter().enumerate() {
                if g.is_empty() || g.contains(',') || !header_safe(g) {
                    return Err(err(
                        format!(".groups[{gi}]"),
                        "must be non-empty, without commas, control characters or surrounding blanks",
                    ));
                }
            }
            let mut identity = vec![(identity::CONSUMER_ID, c.id.clone())];
            if let Some(u) = &c.username {
                identity.push((identity::CONSUMER_USERNAME, u.clone()));
            }
            if !c.groups.is_empty() {
                identity.push((identity::CONSUMER_GROUPS, c.groups.join(",")));
            }
            if let Some(t) = &c.tier {
                identity.push((identity::CONSUMER_TIER, t.clone()));
            }
            let consumer = Rc::new(Consumer {
                id: c.id.clone(),
                identity,
                claims:
                    json!({"id": c.id, "username": c.username, "groups": c.groups, "tier": c.tier})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
            });
            for (ki, k) in c.keys.iter().enumerate() {
                let (id, hash) = match k {
                    KeyConfig::Hash(h) => (None, h),
                    KeyConfig::Named { id, hash } => (Some(id), hash),
                };
                let Some(d) = parse_hash(hash) else {
                    return Err(err(
                        format!(".keys[{ki}]"),
                        "is not `sha256:` and 64 hex digits (keys are never written in clear: `portcullis key-hash` makes one)",
                    ));
                };
                if let Some(id) = id
                    && (id.is_empty() || !header_safe(id))
                {
                    return Err(err(
                        format!(".keys[{ki}].id"),
                        "must be non-empty, without control characters or surrounding blanks",
                    ));
                }
                // Without an id, the credential is named by the digest's first 16 hex
                // digits: enough to tell keys apart in logs, useless to an attacker.
                let credential = match id {
                    Some(id) => id.clone(),
                    None => hash[..7 + 16].to_ascii_lowercase(),
                };
                let entry = Entry {
                    consumer: consumer.clone(),
                    credential,
                };
                if by_digest.insert(d, entry).is_some() {
                    return Err(err(
                        format!(".keys[{ki}]"),
                        "is also a key of another consumer, or repeated",
                    ));
                }
            }
        }
        Ok(Directory { by_digest })
    }

    /// The consumer of the key whose digest is `d`.
    pub fn lookup(&self, d: &KeyDigest) -> Option<&Entry> {
        self.by_digest.get(d)
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Whether any key of `other` is one of ours too.
    pub fn overlaps(&self, other: &Directory) -> bool {
        other
            .by_digest
            .keys()
            .any(|d| self.by_digest.contains_key(d))
    }
}

/// Parses and checks a key service's answer.
pub fn parse_document(body: &[u8]) -> Result<Directory, String> {
    let doc: ConsumersDocument =
        serde_json::from_slice(body).map_err(|e| format!("not a consumers document: {e}"))?;
    Directory::build(&doc.consumers).map_err(|e| format!("consumers{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn consumers(v: Value) -> Vec<ConsumerConfig> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_key_is_found_by_its_digest_with_its_consumers_identity() {
        let d = Directory::build(&consumers(json!([
            {"id": "c-1", "username": "ada", "groups": ["ops", "billing"], "tier": "premium",
             "keys": [hash_string(b"key-one"), {"id": "k-2", "hash": hash_string(b"key-two").to_uppercase().replace("SHA256", "sha256")}]},
            {"id": "c-2", "keys": [hash_string(b"key-three")]}
        ])))
        .unwrap();
        assert_eq!(d.len(), 3);
        let e = d.lookup(&digest(b"key-one")).unwrap();
        assert_eq!(
            e.consumer.identity,
            vec![
                ("x-consumer-id", "c-1".to_owned()),
                ("x-consumer-username", "ada".to_owned()),
                ("x-consumer-groups", "ops,billing".to_owned()),
                ("x-consumer-tier", "premium".to_owned()),
            ]
        );
        assert_eq!(e.credential, hash_string(b"key-one")[..23]);
        assert_eq!(d.lookup(&digest(b"key-two")).unwrap().credential, "k-2");
        assert_eq!(d.lookup(&digest(b"key-three")).unwrap().consumer.id, "c-2");
        assert!(d.lookup(&digest(b"key-four")).is_none());
        assert!(d.lookup(&digest(b"")).is_none());
    }

    #[test]
    fn consumers_written_wrong_are_refused_with_the_place() {
        let k = hash_string(b"k");
        for (v, at, says) in [
            (json!([{"id": ""}]), "[0].id", "non-empty"),
            (
                json!([{"id": "a"}, {"id": "a"}]),
                "[1].id",
                "another consumer",
            ),
            (
                json!([{"id": "a", "username": "x\r\ny: 1"}]),
                "[0].username",
                "control",
            ),
            (
                json!([{"id": "a", "groups": ["a,b"]}]),
                "[0].groups[0]",
                "commas",
            ),
            (
                json!([{"id": "a", "keys": ["plain-key"]}]),
                "[0].keys[0]",
                "never written in clear",
            ),
            (
                json!([{"id": "a", "keys": ["sha256:abc"]}]),
                "[0].keys[0]",
                "64 hex",
            ),
            (
                json!([{"id": "a", "keys": [k]}, {"id": "b", "keys": [k]}]),
                "[1].keys[0]",
                "another consumer",
            ),
            (
                json!([{"id": "a", "keys": [{"id": " k", "hash": k}]}]),
                "[0].keys[0].id",
                "blanks",
            ),
        ] {
            let e = Directory::build(&consumers(v.clone())).unwrap_err();
            assert_eq!(e.at, at, "{v}");
            assert!(e.why.contains(says), "{v}: {e}");
        }
    }

    #[test]
    fn a_service_document_is_checked_whole() {
        let ok = json!({"consumers": [{"id": "a", "keys": [hash_string(b"k")]}]}).to_string();
        assert_eq!(parse_document(ok.as_bytes()).unwrap().len(), 1);
        for bad in [
            "{",
            "[]",
            r#"{"consumers": [{"id": "a", "keys": ["k"]}]}"#,
            r#"{"consumers": [], "extra": 1}"#,
        ] {
            assert!(parse_document(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn hashes_round_trip_and_nothing_else_parses(key in proptest::collection::vec(any::<u8>(), 0..64), junk in ".{0,80}") {
            let h = hash_string(&key);
            prop_assert_eq!(parse_hash(&h), Some(digest(&key)));
            prop_assert_eq!(parse_hash(&h.to_uppercase().replacen("SHA256", "sha256", 1)), Some(digest(&key)));
            if parse_hash(&junk).is_some() {
                prop_assert!(junk.starts_with("sha256:") && junk.len() == 71);
            }
        }

        #[test]
        fn any_document_is_answered_without_a_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_document(&body);
        }
    }
}
