//! The decision for one token: parse, pick the provider, pick the key, verify the
//! signature, check the claims. Plain data in, a decision out; no proxy-wasm here.

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::claims;
use crate::config::{Config, Provider};
use crate::error::{Denial, Invalid};
use crate::extract::Found;
use crate::keys::{Alg, KeySet};
use crate::token;

/// A token that passed every check.
#[derive(Debug)]
pub struct Verified {
    pub provider: usize,
    pub claims: Map<String, Value>,
    pub payload_b64: String,
    /// Seconds since the epoch after which it is no longer valid (`None`: no `exp`).
    pub valid_until: Option<u64>,
    /// The headers to set upstream, worked out once (a cached token reuses them).
    pub identity: Vec<(String, String)>,
}

/// What the keys of a provider look like right now.
pub enum Keys<'a> {
    Ready(&'a KeySet),
    /// Never fetched yet: fetch, then decide.
    NotYet,
    /// The fetch failed and nothing is cached.
    Unavailable,
}

#[derive(Debug)]
pub enum Check {
    Ok(Rc<Verified>),
    Deny(Denial),
    /// The keys of `provider` are needed (first use, or an unknown `kid` that may be a
    /// new key: `unknown_kid`).
    NeedKeys {
        provider: usize,
        unknown_kid: bool,
    },
}

/// Verifies the token `found` at `now` (seconds since the epoch). `keys` gives a remote
/// provider's keys; `may_refetch` says whether an unknown `kid` may trigger a refetch.
pub fn verify<'k>(
    config: &Config,
    found: &Found,
    keys: &dyn Fn(usize) -> Keys<'k>,
    may_refetch: bool,
    now: u64,
) -> Check {
    let max = found
        .providers
        .iter()
        .map(|p| config.providers[*p].max_token_bytes)
        .min()
        .unwrap_or(8192);
    let token = match token::parse(&found.token, max) {
        Ok(t) => t,
        Err(e) => return Check::Deny(Denial::Invalid(e)),
    };
    let Some(alg) = Alg::parse(&token.alg) else {
        return Check::Deny(Denial::Invalid(Invalid::AlgorithmNotAllowed));
    };
    // Providers whose issuer the token names come first.
    let iss = token.claims.get("iss").and_then(Value::as_str);
    let mut order: Vec<usize> = found.providers.clone();
    order.sort_by_key(|p| {
        !config.providers[*p]
            .issuer
            .as_deref()
            .is_some_and(|i| Some(i) == iss)
    });
    let mut denial = Denial::Invalid(Invalid::AlgorithmNotAllowed);
    for pi in order {
        let p = &config.providers[pi];
        if !p.algorithms.contains(&alg) {
            continue;
        }
        let set = match &p.local {
            Some(local) => local,
            None => match keys(pi) {
                Keys::Ready(set) => set,
                Keys::NotYet => {
                    return Check::NeedKeys {
                        provider: pi,
                        unknown_kid: false,
                    };
                }
                Keys::Unavailable => {
                    denial = Denial::KeysUnavailable;
                    continue;
                }
            },
        };
        match kit::jwt::verify_signature(&token, &[alg], set) {
            Ok(_) => {}
            Err(Invalid::UnknownKey)
                if p.remote.is_some() && token.kid.is_some() && may_refetch =>
            {
                return Check::NeedKeys {
                    provider: pi,
                    unknown_kid: true,
                };
            }
            Err(e) => {
                denial = Denial::Invalid(e);
                continue;
            }
        }
        return match claims::check(p, &token.claims, now) {
            Ok(valid_until) => {
                let mut v = Verified {
                    provider: pi,
                    payload_b64: token.payload_b64.to_owned(),
                    claims: token.claims,
                    valid_until,
                    identity: Vec::new(),
                };
                v.identity = identity(p, &v);
                Check::Ok(Rc::new(v))
            }
            Err(d) => Check::Deny(d),
        };
    }
    Check::Deny(denial)
}

/// Whether the token is sent to `pi`'s introspection endpoint rather than verified by
/// signature: the rule allows an introspection provider, and either it allows no JWKS
/// provider or the token does not have a JWT's three segments.
pub fn introspection_provider(config: &Config, found: &Found) -> Option<usize> {
    let pi = found
        .providers
        .iter()
        .copied()
        .find(|p| config.providers[*p].introspection.is_some())?;
    let jwt_providers = found
        .providers
        .iter()
        .any(|p| config.providers[*p].introspection.is_none());
    let looks_like_jwt = found.token.split('.').count() == 3;
    (!jwt_providers || !looks_like_jwt).then_some(pi)
}

/// The form body and headers of an introspection request for `token` (RFC 7662 2.1),
/// with the provider's client authentication.
pub fn introspection_request(
    i: &crate::config::IntrospectionConfig,
    token: &str,
    issuer: &str,
    now: u64,
) -> Result<(Vec<(String, String)>, String), getrandom::Error> {
    use base64::Engine;
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("token", token);
    form.append_pair("token_type_hint", "access_token");
    let mut headers = vec![
        (
            "content-type".to_owned(),
            "application/x-www-form-urlencoded".to_owned(),
        ),
        ("accept".to_owned(), "application/json".to_owned()),
    ];
    if let Some(key) = &i.client_key {
        // private_key_jwt (RFC 7523 2.2): the client_id, and an assertion for the issuer.
        form.append_pair("client_id", &i.client_id);
        for (k, v) in kit::jwt::sign::client_assertion_fields(key, &i.client_id, issuer, now)? {
            form.append_pair(k, &v);
        }
    } else if i.client_auth.as_deref() == Some("client_secret_post") {
        form.append_pair("client_id", &i.client_id);
        form.append_pair("client_secret", &i.client_secret);
    } else {
        // RFC 6749 2.3.1: id and secret form-encoded before base64.
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let creds = format!("{}:{}", enc(&i.client_id), enc(&i.client_secret));
        headers.push((
            "authorization".to_owned(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(creds)
            ),
        ));
    }
    Ok((headers, form.finish()))
}

/// The introspection endpoint's path from the issuer's discovery document (RFC 8414):
/// a 200 whose `issuer` is `issuer` (RFC 8414 3.3) and whose `introspection_endpoint`
/// is an http(s) URL.
pub fn discovered_introspection_path(
    status: Option<&str>,
    body: &[u8],
    issuer: &str,
) -> Result<String, String> {
    if status != Some("200") {
        return Err(format!(
            "the discovery document answered {}",
            status.unwrap_or("nothing")
        ));
    }
    let doc: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| format!("the discovery document: {e}"))?;
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(format!("the discovery document's issuer is not `{issuer}`"));
    }
    let url = doc
        .get("introspection_endpoint")
        .and_then(Value::as_str)
        .ok_or("the discovery document has no introspection_endpoint")?;
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("the introspection_endpoint is not an http(s) URL")?;
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    if path.contains('#') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("the introspection_endpoint is not a usable URL".into());
    }
    Ok(path.to_owned())
}

/// An introspection answer (RFC 7662 2.2) from provider `pi`: `active` must be true,
/// and the claims it carries are checked as a JWT's are (`iss`, `aud`, `exp`, `nbf`,
/// `iat`, the lifetime). `Err(None)`: the endpoint did not answer usably.
pub fn introspected(
    config: &Config,
    pi: usize,
    status: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<Rc<Verified>, Option<Denial>> {
    if status != Some("200") {
        return Err(None);
    }
    let Ok(claims) = serde_json::from_slice::<Map<String, Value>>(body) else {
        return Err(None);
    };
    if claims.get("active") != Some(&Value::Bool(true)) {
        return Err(Some(Denial::Inactive));
    }
    let p = &config.providers[pi];
    let exp = claims::check(p, &claims, now).map_err(Some)?;
    // Kept until the earlier of `exp` and the provider's cache TTL: a revoked token
    // is refused once its answer is that old.
    let ttl = p.introspection.as_ref().map_or(0, |i| i.cache_ttl_seconds);
    let valid_until = Some(exp.map_or(now + ttl, |e| e.min(now + ttl)));
    use base64::Engine;
    let mut v = Verified {
        provider: pi,
        payload_b64: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body),
        claims,
        valid_until,
        identity: Vec::new(),
    };
    v.identity = identity(p, &v);
    Ok(Rc::new(v))
}

/// Tokens the introspection endpoint called inactive, each until a time: at most `max`
/// (when full, the expired go, then all), so a flood of unknown tokens costs one call
/// each at most every `negative_cache_seconds` and never grows the VM.
#[derive(Debug, Default)]
pub struct InactiveTokens {
    until: HashMap<String, u64>,
}

impl InactiveTokens {
    const MAX: usize = 1000;

    pub fn is_inactive(&self, token: &str, now: u64) -> bool {
        self.until.get(token).is_some_and(|u| now < *u)
    }

    pub fn insert(&mut self, token: &str, until: u64, now: u64) {
        if self.until.len() >= Self::MAX {
            self.until.retain(|_, u| now < *u);
            if self.until.len() >= Self::MAX {
                self.until.clear();
            }
        }
        self.until.insert(token.to_owned(), until);
    }
}

/// The identity headers for a verified token (the identity contract, Kong's names),
/// the payload and claim headers the provider forwards. The credential identifier is
/// the provider's pinned issuer (which the token's `iss` matched), else the
/// provider's name: never an `iss` the token chose.
pub fn identity(p: &Provider, v: &Verified) -> Vec<(String, String)> {
    use kit::jwt::consumer::{claim, identity_headers, safe_header_value};
    let credential = p.issuer.as_deref().unwrap_or(&p.name);
    let mut out = identity_headers(&p.consumer, &v.claims, credential);
    if let Some(h) = &p.forward_payload_header {
        out.push((h.clone(), v.payload_b64.clone()));
    }
    for c in &p.claim_to_headers {
        if let Some(value) = claim(&v.claims, &c.claim) {
            out.push((c.header.clone(), value));
        }
    }
    // Never send a value that could split a header.
    out.retain(|(_, v)| safe_header_value(v));
    out
}

/// Every header a client could use to claim an identity: removed from each request
/// before anything else, whether or not it carries a token.
pub fn spoofable_headers(config: &Config) -> Vec<String> {
    let mut out: Vec<String> = kit::identity::ALL.iter().map(|s| s.to_string()).collect();
    for p in &config.providers {
        out.extend(p.forward_payload_header.iter().cloned());
        out.extend(p.claim_to_headers.iter().map(|c| c.header.clone()));
    }
    out.sort();
    out.dedup();
    out
}

/// Verified tokens of one VM, keyed by the whole token, valid until the earlier of
/// its `exp` and the TTL, at most `max` of them (oldest insertion out first).
///
/// The bound holds by construction: entries live in a ring of at most `max` slots,
/// filled in order and then written over round-robin, and the index maps each slot's
/// hash to that slot, one index entry per slot, replaced whenever its slot is. An entry
/// that expires on lookup gives up its token and verification at once and keeps its
/// slot for the token's next verification. Nothing else holds a token, so whatever
/// the order of inserts, lookups and expiries, the cache holds at most `max` slots and
/// `max` tokens of at most `max_token_bytes` each.
///
/// The index is keyed by the token's last 16 bytes and length (`tail_hash`, the end of
/// its signature) and a match compares the whole token eight bytes at a time: SipHash
/// of the token and wasm's byte-wise `memcmp` were most of a cached request's lookup.
/// The tail hash is not keyed, and need not be: only verified tokens get in, their
/// tails are signatures (or, for an introspected token, what the IdP issued) no client
/// chooses, and the whole token decides a hit, so a
/// token that shares another's hash costs one comparison and never stands in for it.
/// Two verified tokens with one hash (2^-64 per pair) share one slot: the newer one
/// replaces the older, which is verified again when it comes back.
pub struct TokenCache {
    ring: Vec<Entry>,
    /// The slot the next insertion writes over once the ring is full.
    hand: usize,
    /// `tail_hash` of each slot's token → the slot.
    index: HashMap<u64, usize>,
    max: usize,
    ttl: u64,
    max_token_bytes: usize,
}

struct Entry {
    hash: u64,
    /// Empty, and no verification, once expired.
    token: Box<str>,
    verified: Option<Rc<Verified>>,
    until: u64,
}

impl TokenCache {
    /// A cache of at most `max` tokens (0: none) of at most `max_token_bytes`, each
    /// kept at most `ttl` seconds.
    pub fn new(max: usize, ttl: u64, max_token_bytes: usize) -> TokenCache {
        TokenCache {
            ring: Vec::new(),
            hand: 0,
            index: HashMap::new(),
            max,
            ttl,
            max_token_bytes,
        }
    }

    pub fn get(&mut self, token: &str, now: u64) -> Option<Rc<Verified>> {
        let slot = *self.index.get(&kit::bytes::tail_hash(token.as_bytes()))?;
        let e = self.ring.get_mut(slot)?;
        let verified = e.verified.as_ref()?;
        if !kit::bytes::same(e.token.as_bytes(), token.as_bytes()) {
            return None;
        }
        if now < e.until {
            return Some(verified.clone());
        }
        // Expired: what it held goes now; the slot stays for its next verification.
        e.token = Box::default();
        e.verified = None;
        None
    }

    pub fn insert(&mut self, token: &str, v: Rc<Verified>, now: u64) {
        if self.max == 0 || token.len() > self.max_token_bytes {
            return;
        }
        let until = v
            .valid_until
            .map_or(now + self.ttl, |u| u.min(now + self.ttl));
        let hash = kit::bytes::tail_hash(token.as_bytes());
        let entry = Entry {
            hash,
            token: token.into(),
            verified: Some(v),
            until,
        };
        match self.index.get(&hash) {
            // The same token verified again (or one sharing its hash): replaced in place.
            Some(&slot) => self.ring[slot] = entry,
            None if self.ring.len() < self.max => {
                self.index.insert(hash, self.ring.len());
                self.ring.push(entry);
            }
            None => {
                let slot = self.hand;
                self.hand = (self.hand + 1) % self.max;
                let old = std::mem::replace(&mut self.ring[slot], entry);
                self.index.remove(&old.hash);
                self.index.insert(hash, slot);
            }
        }
    }

    /// Tokens held and not yet found expired.
    pub fn len(&self) -> usize {
        self.ring.iter().filter(|e| e.verified.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the cache holds: (ring slots, index entries, bytes of tokens). For the
    /// property tests of the bound.
    #[cfg(test)]
    fn footprint(&self) -> (usize, usize, usize) {
        let bytes = self.ring.iter().map(|e| e.token.len()).sum();
        (self.ring.len(), self.index.len(), bytes)
    }

    /// Whether the index and the ring agree: one index entry per slot, naming it by
    /// its hash.
    #[cfg(test)]
    fn consistent(&self) -> bool {
        self.index.len() == self.ring.len()
            && self
                .ring
                .iter()
                .enumerate()
                .all(|(i, e)| self.index.get(&e.hash) == Some(&i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(until: Option<u64>) -> Rc<Verified> {
        Rc::new(Verified {
            provider: 0,
            claims: Map::new(),
            payload_b64: String::new(),
            valid_until: until,
            identity: Vec::new(),
        })
    }

    #[test]
    fn the_introspection_endpoint_is_discovered_only_from_the_issuers_own_document() {
        let doc = |iss: &str, ep: &str| {
            serde_json::json!({"issuer": iss, "introspection_endpoint": ep}).to_string()
        };
        let iss = "https://idp.test/realm";
        let ok = doc(iss, "https://idp.test/realm/token/introspection?x=1");
        assert_eq!(
            discovered_introspection_path(Some("200"), ok.as_bytes(), iss).as_deref(),
            Ok("/realm/token/introspection?x=1")
        );
        for (status, body, says) in [
            (Some("503"), ok.clone(), "answered 503"),
            (Some("200"), "{".to_owned(), "discovery document"),
            (
                Some("200"),
                doc("https://evil.test", "https://idp.test/i"),
                "issuer",
            ),
            (
                Some("200"),
                serde_json::json!({"issuer": iss}).to_string(),
                "no introspection_endpoint",
            ),
            (
                Some("200"),
                doc(iss, "ftp://idp.test/i"),
                "not an http(s) URL",
            ),
            (
                Some("200"),
                doc(iss, "https://idp.test/a b"),
                "not a usable URL",
            ),
        ] {
            let e = discovered_introspection_path(status, body.as_bytes(), iss).unwrap_err();
            assert!(e.contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn private_key_jwt_at_the_introspection_endpoint_sends_a_fresh_assertion_for_the_issuer() {
        let key = jwt_mint::Key::ec256("rs-key");
        let config = crate::config::Config::parse(Some(
            serde_json::json!({"providers": {"idp": {"issuer": "https://idp.test",
                "introspection": {"cluster": "idp", "path": "/i", "client_id": "rs",
                    "client_auth": "private_key_jwt", "client_jwk": key.private_jwk().unwrap()}}}})
            .to_string()
            .as_bytes(),
        ))
        .unwrap();
        let i = config.providers[0].introspection.as_ref().unwrap();
        let (headers, body) = introspection_request(i, "tok", "https://idp.test", 1000).unwrap();
        assert!(
            headers.iter().all(|(k, _)| k != "authorization"),
            "no secret sent"
        );
        let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(form["token"], "tok");
        assert_eq!(form["client_id"], "rs");
        assert_eq!(
            form["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        let jwt = &form["client_assertion"];
        let t = token::parse(jwt, 8192).unwrap();
        let jwks = serde_json::json!({"keys": [key.jwk()]}).to_string();
        let (set, _) = crate::keys::parse_jwks(jwks.as_bytes(), true).unwrap();
        assert!(kit::jwt::verify_signature(&t, &[Alg::ES256], &set).is_ok());
        assert_eq!(t.kid.as_deref(), Some("rs-key"));
        let c = &t.claims;
        assert_eq!(c["iss"], "rs");
        assert_eq!(c["sub"], "rs");
        assert_eq!(c["aud"], "https://idp.test");
        assert_eq!(c["exp"], 1060);
        // A fresh jti each time.
        let (_, again) = introspection_request(i, "tok", "https://idp.test", 1000).unwrap();
        assert_ne!(again, body);
    }

    #[test]
    fn cache_hits_until_the_earlier_of_exp_and_ttl() {
        let mut c = TokenCache::new(10, 100, 8192);
        c.insert("a.b.sig1", verified(Some(50)), 0);
        c.insert("a.b.sig2", verified(None), 0);
        assert!(c.get("a.b.sig1", 49).is_some());
        assert!(c.get("a.b.sig1", 50).is_none(), "exp reached");
        assert!(c.get("a.b.sig2", 99).is_some());
        assert!(c.get("a.b.sig2", 100).is_none(), "ttl reached");
        assert!(c.is_empty(), "expired entries leave");
    }

    #[test]
    fn a_token_sharing_the_tail_is_not_a_hit() {
        // Same length and last 16 bytes: one index entry, and still two tokens.
        let mut c = TokenCache::new(10, 100, 8192);
        let tail = "-the-same-sixteen";
        c.insert(&format!("AAAA{tail}"), verified(None), 0);
        assert!(c.get(&format!("AAAB{tail}"), 1).is_none());
        assert!(c.get(&format!("AAAA{tail}"), 1).is_some());
        // The second takes the first's place; neither ever answers for the other.
        c.insert(&format!("AAAB{tail}"), verified(Some(5)), 0);
        assert_eq!(c.len(), 1);
        assert!(c.get(&format!("AAAA{tail}"), 1).is_none());
        assert!(c.get(&format!("AAAB{tail}"), 1).is_some());
        assert!(c.get(&format!("AAAB{tail}"), 6).is_none());
        assert!(c.consistent());
    }

    #[test]
    fn expired_entries_leave_no_trace_however_often_they_come_back() {
        // The leak this cache once had: an entry that expired on lookup left its copy
        // in the eviction order, and the next insert added another.
        let mut c = TokenCache::new(1000, 1, 8192);
        let tokens: Vec<String> = (0..20).map(|i| format!("h.p.signature-{i:04}")).collect();
        for round in 0..500u64 {
            for t in &tokens {
                assert!(c.get(t, round * 2).is_none(), "expired");
                c.insert(t, verified(None), round * 2);
            }
            assert_eq!(c.footprint().0, 20, "round {round}: one slot per token");
            assert_eq!(c.len(), 20);
        }
    }

    #[test]
    fn tokens_over_the_size_bound_are_not_kept() {
        let mut c = TokenCache::new(10, 100, 16);
        c.insert(&"x".repeat(17), verified(None), 0);
        assert!(c.is_empty());
        c.insert(&"x".repeat(16), verified(None), 0);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn cache_is_bounded_oldest_out_and_reinsertion_replaces() {
        let mut c = TokenCache::new(2, 100, 8192);
        c.insert("t1", verified(None), 0);
        c.insert("t1", verified(None), 0);
        assert_eq!(c.len(), 1, "verified twice is one entry");
        c.insert("t2", verified(None), 0);
        c.insert("t3", verified(None), 0);
        assert_eq!(c.len(), 2);
        assert!(c.get("t1", 1).is_none(), "the oldest went");
        assert!(c.get("t2", 1).is_some() && c.get("t3", 1).is_some());
        let mut none = TokenCache::new(0, 100, 8192);
        none.insert("t1", verified(None), 0);
        assert!(none.get("t1", 1).is_none(), "size 0 caches nothing");
    }

    /// An operation on the cache: the token (from a small pool, some sharing their
    /// tails), a time step, and whether to look it up or insert it.
    #[derive(Debug, Clone)]
    enum Op {
        Insert { token: usize, exp_in: Option<u64> },
        Get { token: usize },
        Wait { seconds: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..40, proptest::option::of(0u64..30))
                .prop_map(|(token, exp_in)| Op::Insert { token, exp_in }),
            (0usize..40).prop_map(|token| Op::Get { token }),
            (0u64..20).prop_map(|seconds| Op::Wait { seconds }),
        ]
    }

    /// Token `i` of the pool: lengths vary up to past the size bound, every fourth
    /// ends alike, and those of them of one length share their tail hash.
    fn pool(i: usize) -> String {
        let body = "b".repeat(i % 7 * 9);
        if i.is_multiple_of(4) {
            format!("{i:03}.{body}.the-same-tail-16")
        } else {
            format!("{i:03}.{body}.sig-{i:012}")
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// Whatever the sequence of inserts, lookups and expiries: the ring, the index
        /// and the bytes held stay within the bound, the two structures agree, a hit
        /// is always the token's own latest verification, never past its validity, and
        /// a token just inserted is found.
        #[test]
        fn the_bound_holds_and_no_token_answers_for_another(
            max in 0usize..8,
            ttl in 1u64..20,
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let max_token_bytes = 60;
            let mut c = TokenCache::new(max, ttl, max_token_bytes);
            let mut now = 0u64;
            // The latest insertion of each token: (its marker, valid until).
            let mut model: HashMap<String, (String, u64)> = HashMap::new();
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert { token, exp_in } => {
                        let t = pool(token);
                        let marker = format!("insert-{n}");
                        let v = Rc::new(Verified {
                            provider: 0,
                            claims: Map::new(),
                            payload_b64: marker.clone(),
                            valid_until: exp_in.map(|e| now + e),
                            identity: Vec::new(),
                        });
                        c.insert(&t, v, now);
                        let until = exp_in.map_or(now + ttl, |e| (now + e).min(now + ttl));
                        model.insert(t.clone(), (marker.clone(), until));
                        if max > 0 && t.len() <= max_token_bytes && now < until {
                            let hit = c.get(&t, now);
                            prop_assert_eq!(hit.map(|v| v.payload_b64.clone()), Some(marker));
                        }
                    }
                    Op::Get { token } => {
                        let t = pool(token);
                        if let Some(v) = c.get(&t, now) {
                            let (marker, until) = model.get(&t).cloned().unwrap_or_default();
                            prop_assert_eq!(&v.payload_b64, &marker, "another's verification");
                            prop_assert!(now < until, "past its validity");
                        }
                    }
                    Op::Wait { seconds } => now += seconds,
                }
                let (slots, indexed, bytes) = c.footprint();
                prop_assert!(slots <= max && indexed <= max, "{slots} slots, {indexed} indexed, max {max}");
                prop_assert!(bytes <= max * max_token_bytes);
                prop_assert!(c.consistent());
            }
        }
    }
}
