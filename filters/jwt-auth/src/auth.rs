//! The decision for one token: parse, pick the provider, pick the key, verify the
//! signature, check the claims. Plain data in, a decision out; no proxy-wasm here.

use std::collections::{HashMap, VecDeque};
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

/// The identity headers for a verified token (DESIGN.md's contract, Kong's names),
/// the payload and claim headers the provider forwards.
pub fn identity(p: &Provider, v: &Verified) -> Vec<(String, String)> {
    use kit::jwt::consumer::{claim, identity_headers, safe_header_value};
    let mut out = identity_headers(&p.consumer, &v.claims, &p.name);
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
/// its `exp` and the TTL, bounded in number (oldest out first).
///
/// The bucket is picked by the token's last 16 bytes (the end of its signature) and a
/// match compares the whole token eight bytes at a time: SipHash of the token and
/// wasm's byte-wise `memcmp` were most of a cached request's lookup. Only verified
/// tokens get in, and no token can stand in for another (the whole value decides).
pub struct TokenCache {
    buckets: HashMap<u64, Vec<(String, Rc<Verified>, u64)>>,
    order: VecDeque<String>,
    len: usize,
    max: usize,
    ttl: u64,
}

impl TokenCache {
    pub fn new(max: usize, ttl: u64) -> TokenCache {
        TokenCache {
            buckets: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
            max,
            ttl,
        }
    }

    pub fn get(&mut self, token: &str, now: u64) -> Option<Rc<Verified>> {
        let bucket = self.buckets.get(&kit::bytes::tail_hash(token.as_bytes()))?;
        let (_, v, until) = bucket
            .iter()
            .find(|(k, _, _)| kit::bytes::same(k.as_bytes(), token.as_bytes()))?;
        if now < *until {
            return Some(v.clone());
        }
        // Expired: it leaves (the rare path looks it up a second time).
        self.remove(token);
        None
    }

    fn remove(&mut self, token: &str) -> bool {
        let h = kit::bytes::tail_hash(token.as_bytes());
        let Some(bucket) = self.buckets.get_mut(&h) else {
            return false;
        };
        let Some(i) = bucket
            .iter()
            .position(|(k, _, _)| kit::bytes::same(k.as_bytes(), token.as_bytes()))
        else {
            return false;
        };
        bucket.swap_remove(i);
        self.len -= 1;
        if bucket.is_empty() {
            self.buckets.remove(&h);
        }
        true
    }

    pub fn insert(&mut self, token: &str, v: Rc<Verified>, now: u64) {
        if self.max == 0 {
            return;
        }
        let until = v
            .valid_until
            .map_or(now + self.ttl, |u| u.min(now + self.ttl));
        // A token already here (expired, or verified again) is replaced in place.
        if self.remove(token) {
            self.order
                .retain(|k| !kit::bytes::same(k.as_bytes(), token.as_bytes()));
        }
        if self.len >= self.max {
            while let Some(old) = self.order.pop_front() {
                if self.remove(&old) {
                    break;
                }
            }
        }
        self.buckets
            .entry(kit::bytes::tail_hash(token.as_bytes()))
            .or_default()
            .push((token.to_owned(), v, until));
        self.len += 1;
        self.order.push_back(token.to_owned());
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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
    fn cache_hits_until_the_earlier_of_exp_and_ttl() {
        let mut c = TokenCache::new(10, 100);
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
        // Same length and last 16 bytes: one bucket, and still two tokens.
        let mut c = TokenCache::new(10, 100);
        let tail = "-the-same-sixteen";
        c.insert(&format!("AAAA{tail}"), verified(None), 0);
        assert!(c.get(&format!("AAAB{tail}"), 1).is_none());
        assert!(c.get(&format!("AAAA{tail}"), 1).is_some());
        c.insert(&format!("AAAB{tail}"), verified(Some(5)), 0);
        assert_eq!(c.len(), 2);
        assert!(c.get(&format!("AAAB{tail}"), 6).is_none());
        assert!(c.get(&format!("AAAA{tail}"), 6).is_some());
    }

    #[test]
    fn cache_is_bounded_oldest_out_and_reinsertion_replaces() {
        let mut c = TokenCache::new(2, 100);
        c.insert("t1", verified(None), 0);
        c.insert("t1", verified(None), 0);
        assert_eq!(c.len(), 1, "verified twice is one entry");
        c.insert("t2", verified(None), 0);
        c.insert("t3", verified(None), 0);
        assert_eq!(c.len(), 2);
        assert!(c.get("t1", 1).is_none(), "the oldest went");
        assert!(c.get("t2", 1).is_some() && c.get("t3", 1).is_some());
        let mut none = TokenCache::new(0, 100);
        none.insert("t1", verified(None), 0);
        assert!(none.get("t1", 1).is_none(), "size 0 caches nothing");
    }
}
