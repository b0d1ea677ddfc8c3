//! What the cookies hold, and the decisions about them: a login in progress
//! ([`Login`]), a session ([`Session`]) and whether it is still good, due for a
//! refresh or over; the per-VM cache of opened sessions; the revocation list that
//! back-channel logout and local logout write for every worker.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::cookie::{CookieError, SessionKeys};

pub const SESSION: &str = "session";
pub const LOGIN: &str = "login";
/// How long a login may take, from the redirect to the IdP to the callback.
pub const LOGIN_TTL: u64 = 600;

/// A login in progress, in the short-lived login cookie. `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    /// The local path and query the browser first asked for.
    pub target: String,
    pub created: u64,
}

/// A session, in the session cookie. `Debug` shows no token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Our own random id, so local logout can revoke a copied cookie.
    pub id: String,
    pub sub: String,
    /// The IdP's session id (`sid` claim), for back-channel logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_sid: Option<String>,
    pub created: u64,
    /// Absolute end: `created + lifetime`.
    pub expires: u64,
    /// When the cookie was last written (for the idle timeout).
    pub seen: u64,
    pub access_token: String,
    /// When the access token expires (0: unknown).
    pub access_expires: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub id_token: String,
    /// The identity headers, worked out once from the verified ID token.
    pub identity: Vec<(String, String)>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("target", &self.target)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sub", &self.sub)
            .field("created", &self.created)
            .field("expires", &self.expires)
            .field("seen", &self.seen)
            .field("access_expires", &self.access_expires)
            .field("refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// What a session is at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Good,
    /// The access token is expired or about to be, and can be refreshed.
    Refresh,
    /// The access token is expired or about to be and cannot be refreshed, but is
    /// still valid: use it (no refresh possible means no better option).
    GoodUntilExpiry,
    /// Over: lifetime, idle timeout, or an expired access token with no refresh.
    Over(&'static str),
}

impl Session {
    pub fn standing(&self, c: &Config, now: u64) -> Standing {
        if now >= self.expires {
            return Standing::Over("session lifetime reached");
        }
        if c.idle_timeout > 0 && now >= self.seen.saturating_add(c.idle_timeout) {
            return Standing::Over("session idle timeout");
        }
        if self.access_expires == 0 || now + c.refresh_leeway < self.access_expires {
            return Standing::Good;
        }
        let can_refresh = c.refresh_tokens && self.refresh_token.is_some();
        if can_refresh {
            Standing::Refresh
        } else if now < self.access_expires {
            Standing::GoodUntilExpiry
        } else {
            // Never forward an expired access token.
            Standing::Over("access token expired and no refresh token")
        }
    }

    /// Whether the cookie should be written again so the idle timeout restarts: once
    /// a tenth of the timeout has passed, not on every request.
    pub fn wants_touch(&self, c: &Config, now: u64) -> bool {
        c.idle_timeout > 0 && now >= self.seen + (c.idle_timeout / 10).max(1)
    }
}

pub fn seal<T: Serialize>(keys: &SessionKeys, purpose: &str, v: &T) -> Result<String, String> {
    let json = serde_json::to_vec(v).map_err(|e| e.to_string())?;
    keys.seal(purpose, &json)
        .map_err(|e| format!("no randomness from the host: {e}"))
}

/// Why a cookie gave no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("{0}")]
    Cookie(CookieError),
    #[error("decrypted but not a {0} record")]
    Shape(&'static str),
}

pub fn open<T: for<'de> Deserialize<'de>>(
    keys: &SessionKeys,
    purpose: &'static str,
    value: &str,
) -> Result<T, Unusable> {
    let plain = keys.open(purpose, value).map_err(Unusable::Cookie)?;
    serde_json::from_slice(&plain).map_err(|_| Unusable::Shape(purpose))
}

/// Marks a one-time value (a login state, a logout token's `jti`) used in a list of
/// `<value> <expiry>` lines, oldest first: expired lines go, and past `cap` lines the
/// oldest go too (the nearest to expiring), so the list stays bounded whatever a
/// client sends. `None` when `value` is already there (a replay); else the new list.
pub fn mark_used(cur: &[u8], value: &str, until: u64, now: u64, cap: usize) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(cur);
    let mut kept: Vec<&str> = Vec::new();
    for line in text.lines() {
        let Some((v, exp)) = line.split_once(' ') else {
            continue;
        };
        let Ok(exp) = exp.parse::<u64>() else {
            continue;
        };
        if exp <= now {
            continue;
        }
        if v == value {
            return None;
        }
        kept.push(line);
    }
    let skip = (kept.len() + 1).saturating_sub(cap.max(1));
    let mut out = String::new();
    for line in &kept[skip..] {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!("{value} {until}\n"));
    Some(out.into_bytes())
}

/// Sessions this VM opened, keyed by the whole cookie value, so the common request
/// costs a lookup instead of a decryption; bounded, oldest out first. A cached
/// session is judged again (expiry, idle, revocation) on every use.
///
/// The bucket is chosen by the cookie's last 16 bytes (the end of the AEAD tag, which
/// is random), so a 3 KB value costs nothing to hash; the match compares the whole
/// value, eight bytes at a time (wasm's byte-wise `memcmp` was a quarter of a
/// request), so no other cookie can ever stand in for a cached one.
pub struct SessionCache {
    buckets: HashMap<u64, Vec<(String, Rc<Session>)>>,
    order: VecDeque<String>,
    len: usize,
    max: usize,
}

fn tail_hash(v: &str) -> u64 {
    kit::bytes::tail_hash(v.as_bytes())
}

use kit::bytes::same;

impl SessionCache {
    pub fn new(max: usize) -> SessionCache {
        SessionCache {
            buckets: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
            max,
        }
    }

    pub fn get(&self, cookie: &str) -> Option<Rc<Session>> {
        self.buckets
            .get(&tail_hash(cookie))?
            .iter()
            .find(|(k, _)| same(k.as_bytes(), cookie.as_bytes()))
            .map(|(_, s)| s.clone())
    }

    pub fn insert(&mut self, cookie: &str, s: Rc<Session>) {
        if self.max == 0 || self.get(cookie).is_some() {
            return;
        }
        while self.len >= self.max {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.forget(&old);
        }
        self.buckets
            .entry(tail_hash(cookie))
            .or_default()
            .push((cookie.to_owned(), s));
        self.order.push_back(cookie.to_owned());
        self.len += 1;
    }

    /// Forgets a session; `order` too, so removals never leave it growing.
    pub fn remove(&mut self, cookie: &str) {
        if self.forget(cookie)
            && let Some(i) = self
                .order
                .iter()
                .position(|k| same(k.as_bytes(), cookie.as_bytes()))
        {
            self.order.remove(i);
        }
    }

    /// Takes a session out of its bucket (not out of `order`); true when it was there.
    fn forget(&mut self, cookie: &str) -> bool {
        let h = tail_hash(cookie);
        let Some(bucket) = self.buckets.get_mut(&h) else {
            return false;
        };
        let before = bucket.len();
        bucket.retain(|(k, _)| !same(k.as_bytes(), cookie.as_bytes()));
        let removed = before - bucket.len();
        self.len -= removed;
        if bucket.is_empty() {
            self.buckets.remove(&h);
        }
        removed > 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Bearer tokens this VM verified (`bearer_passthrough`), keyed by the whole token,
/// with the identity they give, until their `exp`; bounded, oldest out first. A
/// signature check costs ~0.5-1 ms in wasm; a lookup, a microsecond.
/// Identity headers a verified token gives.
pub type Identity = Rc<Vec<(String, String)>>;

pub struct BearerCache {
    /// token -> (identity, valid until)
    map: HashMap<String, (Identity, u64)>,
    order: VecDeque<String>,
    max: usize,
}

impl BearerCache {
    pub fn new(max: usize) -> BearerCache {
        BearerCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            max,
        }
    }

    pub fn get(&mut self, token: &str, now: u64) -> Option<Identity> {
        let (identity, until) = self.map.get(token)?;
        if now < *until {
            return Some(identity.clone());
        }
        // Out of `order` too, so expired tokens never leave it growing.
        self.map.remove(token);
        if let Some(i) = self.order.iter().position(|k| k == token) {
            self.order.remove(i);
        }
        None
    }

    pub fn insert(&mut self, token: &str, identity: Identity, until: u64) {
        if self.max == 0 {
            return;
        }
        if self.map.len() >= self.max {
            while let Some(old) = self.order.pop_front() {
                if self.map.remove(&old).is_some() {
                    break;
                }
            }
        }
        if self
            .map
            .insert(token.to_owned(), (identity, until))
            .is_none()
        {
            self.order.push_back(token.to_owned());
        }
    }
}

/// Revoked sessions, shared by every worker: by our session id (local logout), by
/// the IdP's `sid` or by `sub` (back-channel logout). Each entry has the time it was
/// written; a `sub` entry revokes the sessions created before it; entries older than
/// the session lifetime are dropped when the list is written, one entry per value is
/// kept, and at most [`MAX_REVOKED`] (the oldest go first: they are the nearest to
/// expiring anyway). Lookups go through hash sets, not a scan.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub entries: Vec<(Kind, String, u64)>,
    sessions: HashSet<String>,
    sids: HashSet<String>,
    /// `sub` -> the latest revocation time.
    subs: HashMap<String, u64>,
}

/// The most revocations kept (a line is about 40 bytes for a session id).
pub const MAX_REVOKED: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Session,
    IdpSid,
    Sub,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Session => "s",
            Kind::IdpSid => "sid",
            Kind::Sub => "sub",
        }
    }
}

impl Revoked {
    /// One entry a line: `<kind> <time> <value>`; lines that do not parse are skipped.
    pub fn parse(bytes: &[u8]) -> Revoked {
        let text = String::from_utf8_lossy(bytes);
        let entries = text
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                let kind = match it.next()? {
                    "s" => Kind::Session,
                    "sid" => Kind::IdpSid,
                    "sub" => Kind::Sub,
                    _ => return None,
                };
                let at = it.next()?.parse().ok()?;
                Some((kind, it.next()?.to_owned(), at))
            })
            .collect();
        Revoked::from_entries(entries)
    }

    fn from_entries(entries: Vec<(Kind, String, u64)>) -> Revoked {
        let mut r = Revoked {
            entries,
            ..Revoked::default()
        };
        for (k, v, at) in &r.entries {
            match k {
                Kind::Session => {
                    r.sessions.insert(v.clone());
                }
                Kind::IdpSid => {
                    r.sids.insert(v.clone());
                }
                Kind::Sub => {
                    let t = r.subs.entry(v.clone()).or_insert(*at);
                    *t = (*t).max(*at);
                }
            }
        }
        r
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        for (k, v, at) in &self.entries {
            out.push_str(&format!("{} {at} {v}\n", k.tag()));
        }
        out.into_bytes()
    }

    /// Adds an entry (values with a line break are refused) and forgets the ones no
    /// session can outlive. False when nothing changed (the value was already
    /// revoked, or refused), so the caller need not tell every worker.
    pub fn add(&mut self, kind: Kind, value: &str, now: u64, lifetime: u64) -> bool {
        self.add_at(kind, value, now, now, lifetime)
    }

    /// [`Revoked::add`] with the entry's time `at` (for `sub`, the cutoff: sessions
    /// created until then are revoked) other than `now`.
    pub fn add_at(&mut self, kind: Kind, value: &str, at: u64, now: u64, lifetime: u64) -> bool {
        if value.is_empty() || value.contains(['\n', '\r']) || value.len() > 512 {
            return false;
        }
        let mut entries = std::mem::take(&mut self.entries);
        entries.retain(|(_, _, at)| at.saturating_add(lifetime) > now);
        let mut changed = true;
        if let Some(e) = entries
            .iter_mut()
            .find(|(k, v, _)| *k == kind && v == value)
        {
            // A later `sub` revocation reaches later sessions; the others are final.
            changed = kind == Kind::Sub && e.2 < at;
            if changed {
                e.2 = at;
            }
        } else {
            if entries.len() >= MAX_REVOKED {
                entries.drain(..=entries.len() - MAX_REVOKED);
            }
            entries.push((kind, value.to_owned(), at));
        }
        *self = Revoked::from_entries(entries);
        changed
    }

    pub fn revokes(&self, s: &Session) -> bool {
        self.sessions.contains(&s.id)
            || s.idp_sid
                .as_ref()
                .is_some_and(|sid| self.sids.contains(sid))
            || self.subs.get(&s.sub).is_some_and(|at| s.created <= *at)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: serde_json::Value) -> Config {
        let mut v = json!({
            "issuer": "https://idp.test", "client_id": "web", "client_secret": "s",
            "redirect_uri": "https://app.test/callback", "idp_cluster": "idp",
            "session": {"secrets": [{"id": "k1", "secret": "0123456789abcdef0123456789abcdef"}],
                "lifetime": 1000, "idle_timeout": 100},
            "refresh_leeway_seconds": 10
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Config::parse(Some(v.to_string().as_bytes())).unwrap()
    }

    fn session() -> Session {
        Session {
            id: "id1".into(),
            sub: "ada".into(),
            idp_sid: Some("sid1".into()),
            created: 0,
            expires: 1000,
            seen: 0,
            access_token: "at".into(),
            access_expires: 60,
            refresh_token: Some("rt".into()),
            id_token: "idt".into(),
            identity: vec![("x-consumer-id".into(), "ada".into())],
        }
    }

    #[test]
    fn standing_follows_the_clock() {
        let c = config(json!({}));
        let s = session();
        assert_eq!(s.standing(&c, 10), Standing::Good);
        assert_eq!(s.standing(&c, 50), Standing::Refresh, "within the leeway");
        assert_eq!(s.standing(&c, 99), Standing::Refresh);
        assert!(matches!(s.standing(&c, 100), Standing::Over(_)), "idle");
        let mut fresh = s.clone();
        fresh.seen = 950;
        fresh.access_expires = 5000;
        assert!(
            matches!(fresh.standing(&c, 1000), Standing::Over(_)),
            "lifetime"
        );
        let mut no_rt = s.clone();
        no_rt.refresh_token = None;
        assert_eq!(no_rt.standing(&c, 55), Standing::GoodUntilExpiry);
        assert!(
            matches!(no_rt.standing(&c, 60), Standing::Over(_)),
            "never an expired token"
        );
        let off = config(json!({"refresh_tokens": false}));
        assert_eq!(s.standing(&off, 55), Standing::GoodUntilExpiry);
    }

    #[test]
    fn sessions_round_trip_through_the_cookie_and_purposes_do_not_mix() {
        let c = config(json!({}));
        let v = seal(&c.keys, SESSION, &session()).unwrap();
        assert_eq!(open::<Session>(&c.keys, SESSION, &v).unwrap(), session());
        assert!(open::<Login>(&c.keys, LOGIN, &v).is_err());
        assert!(
            // Long markers: two-letter ones turn up in random base64 now and then.
            !v.contains("access_token") && !v.contains("x-consumer-id"),
            "the content is encrypted"
        );
    }

    #[test]
    fn revocations_match_and_age_out() {
        let mut r = Revoked::default();
        r.add(Kind::Sub, "ada", 5, 1000);
        assert!(
            !r.revokes(&Session {
                created: 6,
                ..session()
            }),
            "a later login stays"
        );
        assert!(r.revokes(&session()));
        let mut r2 = Revoked::parse(&r.encode());
        assert_eq!(r2, r);
        r2.add(Kind::IdpSid, "other", 2000, 1000);
        assert_eq!(r2.entries.len(), 1, "the old entry aged out");
        r2.add(Kind::Session, "bad\nline", 2000, 1000);
        assert_eq!(r2.entries.len(), 1);
        let mut r3 = Revoked::default();
        r3.add(Kind::Session, "id1", 1, 1000);
        assert!(r3.revokes(&session()));
        assert_eq!(Revoked::parse(b"junk\nsid x y\n"), Revoked::default());
    }

    #[test]
    fn cached_bearer_tokens_end_at_their_expiry() {
        let mut c = BearerCache::new(1);
        let id = Rc::new(vec![("x-consumer-id".to_string(), "svc".to_string())]);
        c.insert("t1", id.clone(), 100);
        assert!(c.get("t1", 99).is_some());
        assert!(c.get("t1", 100).is_none());
        c.insert("t2", id.clone(), 100);
        c.insert("t3", id, 100);
        assert!(c.get("t2", 1).is_none(), "bounded: the oldest went");
        assert!(c.get("t3", 1).is_some());
    }

    #[test]
    fn revocations_are_deduplicated_and_capped() {
        let mut r = Revoked::default();
        assert!(r.add(Kind::Session, "id1", 1, 1000));
        for t in 2..50 {
            assert!(!r.add(Kind::Session, "id1", t, 1000), "already revoked");
        }
        assert_eq!(r.entries.len(), 1);
        assert!(r.add(Kind::Sub, "ada", 5, 1000));
        assert!(!r.add(Kind::Sub, "ada", 5, 1000));
        assert!(r.add(Kind::Sub, "ada", 9, 1000), "a later cutoff counts");
        assert_eq!(r.entries.len(), 2);
        assert!(r.revokes(&Session {
            created: 8,
            id: "other".into(),
            idp_sid: None,
            ..session()
        }));
        let full: String = (0..MAX_REVOKED + 9)
            .map(|i| format!("s 10 s{i}\n"))
            .collect();
        let mut r = Revoked::parse(full.as_bytes());
        assert!(r.add(Kind::Session, &format!("s{}", MAX_REVOKED + 9), 10, 1000));
        assert_eq!(r.entries.len(), MAX_REVOKED);
        assert!(
            !r.revokes(&Session {
                id: "s0".into(),
                idp_sid: None,
                sub: "bob".into(),
                ..session()
            }),
            "the oldest went first"
        );
        assert!(r.revokes(&Session {
            id: format!("s{}", MAX_REVOKED + 9),
            ..session()
        }));
        assert_eq!(Revoked::parse(&r.encode()), r);
    }

    #[test]
    fn the_cache_is_bounded_and_compares_whole_values() {
        let mut cache = SessionCache::new(2);
        let s = Rc::new(session());
        cache.insert("aaaa-same-tail", s.clone());
        assert!(cache.get("bbbb-same-tail").is_none());
        cache.insert("b", s.clone());
        cache.insert("c", s);
        assert_eq!(cache.len(), 2);
        assert!(cache.get("aaaa-same-tail").is_none());
    }

    #[test]
    fn used_values_are_remembered_until_they_expire_and_bounded() {
        let l = mark_used(b"", "a", 100, 0, 3).unwrap();
        assert_eq!(mark_used(&l, "a", 100, 50, 3), None, "a replay");
        let l = mark_used(&l, "b", 110, 1, 3).unwrap();
        let l = mark_used(&l, "c", 120, 2, 3).unwrap();
        let l = mark_used(&l, "d", 130, 3, 3).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&l),
            "b 110\nc 120\nd 130\n",
            "capped"
        );
        assert!(mark_used(&l, "b", 200, 111, 3).is_some(), "expired");
        let l = mark_used(&l, "e", 200, 125, 3).unwrap();
        assert_eq!(String::from_utf8_lossy(&l), "d 130\ne 200\n");
        assert!(mark_used(b"junk\nx y\n", "x", 1, 0, 3).is_some());
    }

    #[test]
    fn removing_from_the_cache_keeps_it_bounded() {
        let mut cache = SessionCache::new(2);
        let s = Rc::new(session());
        cache.insert("keep", s.clone());
        for _ in 0..1000 {
            cache.insert("replayed", s.clone());
            cache.remove("replayed");
            cache.remove("never-there");
        }
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.order.len(), 1, "order follows map");
        cache.insert("b", s.clone());
        cache.insert("c", s);
        assert!(cache.get("keep").is_none(), "oldest out first");
        assert_eq!(cache.order.len(), 2);
    }

    #[test]
    fn expired_bearer_tokens_leave_the_cache_order_too() {
        let mut cache = BearerCache::new(4);
        let id: Identity = Rc::new(vec![]);
        for i in 0..1000 {
            let t = format!("t{i}");
            cache.insert(&t, id.clone(), 10);
            assert!(cache.get(&t, 20).is_none(), "expired");
        }
        assert!(cache.map.is_empty());
        assert!(cache.order.is_empty(), "order follows map");
    }
}
