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
    /// The userinfo claims fetched at login (their JSON), when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userinfo: Option<String>,
    /// Whether this filter's claim rules admit the session: worked out once per opened
    /// session (which the VM's session cache keeps), never written to the cookie; a
    /// refresh that brings a new ID token starts it again.
    #[serde(skip)]
    pub admitted: std::cell::OnceCell<bool>,
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
        // The configured lifetime bounds a session whatever its cookie says, so a
        // revocation kept one lifetime covers it even after `lifetime` was lowered.
        if now >= self.expires.min(self.created.saturating_add(c.lifetime)) {
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

/// The list [`mark_used`] keeps, without `value` (a use that did not complete).
pub fn unmark(cur: &[u8], value: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(cur);
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.split_once(' ').is_some_and(|(v, _)| v == value) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.into_bytes()
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
/// the IdP's `sid` or by `sub` (back-channel logout).
///
/// A revocation lasts until no session it revokes can be alive any more, whatever else
/// is revoked meanwhile: a session's entry until the session's own end, a `sid` or
/// `sub` entry for one session lifetime. Memory is bounded by widening revocations,
/// never by forgetting one:
/// - past [`PER_SUBJECT`] entries about one user, that user's entries become one
///   cutoff: every session of that user created until the latest of them. Logging
///   out again and again with one account only ever costs that account's own
///   sessions;
/// - past [`MAX_REVOKED`] entries in all, the user with the most entries is folded
///   the same way; when no user has two, the oldest entry is folded into `floor`:
///   every session created until then, whoever's, is revoked (those users log in
///   again).
///
/// Lookups go through hash sets, not a scan.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub entries: Vec<Entry>,
    /// Every session created at or before this second is revoked (0: none).
    pub floor: u64,
    sessions: HashSet<String>,
    sids: HashSet<String>,
    /// `sub` -> the latest cutoff.
    subs: HashMap<String, u64>,
    pub caps: Caps,
}

/// The bounds of a [`Revoked`] list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Entries about one user before they become one cutoff.
    pub per_subject: usize,
    /// Entries in all.
    pub total: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            per_subject: PER_SUBJECT,
            total: MAX_REVOKED,
        }
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// The session id, the IdP's `sid`, or the `sub`.
    pub value: String,
    /// The user it is about, when known (a `sid`-only logout token names none).
    pub sub: Option<String>,
    /// When it was written (for `Kind::Sub`, the cutoff): every session it revokes was
    /// created at or before then, so folding it into a cutoff of that time loses
    /// nothing.
    pub at: u64,
    /// From then on no session it revokes is alive: it is dropped.
    pub until: u64,
}

/// The most entries kept in all. A line is about 90 bytes (a session id and a `sub`):
/// some 360 KB when full, read again by each worker only when it changes.
pub const MAX_REVOKED: usize = 4096;

/// The most entries kept about one user before they become one cutoff.
pub const PER_SUBJECT: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Session,
    IdpSid,
    Sub,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Session => "S",
            Kind::IdpSid => "D",
            Kind::Sub => "U",
        }
    }
}

/// A value made safe for a space-separated line: `%`, space, CR and LF escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '%' => out.push_str("%25"),
            ' ' => out.push_str("%20"),
            '\n' => out.push_str("%0A"),
            '\r' => out.push_str("%0D"),
            c => out.push(c),
        }
    }
    out
}

/// [`escape`] undone; `None` for an escape it never writes.
fn unescape(v: &str) -> Option<String> {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let c = match rest.get(i + 1..i + 3)? {
            "25" => '%',
            "20" => ' ',
            "0A" => '\n',
            "0D" => '\r',
            _ => return None,
        };
        out.push(c);
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// The longest value or `sub` an entry takes (a longer one is no id we made or an IdP
/// sends; refused, so a line stays small).
const MAX_VALUE: usize = 512;

impl Revoked {
    /// One entry a line, `<S|D|U> <at> <until> <value> <sub>` (value and sub escaped,
    /// sub empty when unknown), and `F <floor>`. Lines that do not parse are skipped.
    /// Lines of the earlier format (`s|sid|sub <at> <value>`, kept one `lifetime` from
    /// `at`) are read too, so an upgrade forgets no revocation.
    pub fn parse(bytes: &[u8], lifetime: u64) -> Revoked {
        let text = String::from_utf8_lossy(bytes);
        let mut floor = 0;
        let mut entries = Vec::new();
        for l in text.lines() {
            if let Some(f) = l.strip_prefix("F ") {
                floor = f.parse().unwrap_or(floor);
            } else if let Some(e) = Revoked::line(l, lifetime) {
                entries.push(e);
            }
        }
        Revoked::from_entries(entries, floor)
    }

    fn line(l: &str, lifetime: u64) -> Option<Entry> {
        let legacy = |kind| {
            let mut it = l.splitn(3, ' ').skip(1);
            let at: u64 = it.next()?.parse().ok()?;
            let value = it.next().filter(|v| !v.is_empty())?.to_owned();
            let sub = (kind == Kind::Sub).then(|| value.clone());
            Some(Entry {
                kind,
                value,
                sub,
                at,
                until: at.saturating_add(lifetime),
            })
        };
        let mut it = l.splitn(5, ' ');
        let kind = match it.next()? {
            "S" => Kind::Session,
            "D" => Kind::IdpSid,
            "U" => Kind::Sub,
            "s" => return legacy(Kind::Session),
            "sid" => return legacy(Kind::IdpSid),
            "sub" => return legacy(Kind::Sub),
            _ => return None,
        };
        let at = it.next()?.parse().ok()?;
        let until = it.next()?.parse().ok()?;
        let value = unescape(it.next()?)?;
        let sub = match it.next()? {
            "" => None,
            s => Some(unescape(s)?),
        };
        (!value.is_empty()).then_some(Entry {
            kind,
            value,
            sub,
            at,
            until,
        })
    }

    fn from_entries(entries: Vec<Entry>, floor: u64) -> Revoked {
        let mut r = Revoked {
            entries,
            floor,
            ..Revoked::default()
        };
        for e in &r.entries {
            match e.kind {
                Kind::Session => {
                    r.sessions.insert(e.value.clone());
                }
                Kind::IdpSid => {
                    r.sids.insert(e.value.clone());
                }
                Kind::Sub => {
                    let t = r.subs.entry(e.value.clone()).or_insert(e.at);
                    *t = (*t).max(e.at);
                }
            }
        }
        r
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        if self.floor > 0 {
            out.push_str(&format!("F {}\n", self.floor));
        }
        for e in &self.entries {
            out.push_str(&format!(
                "{} {} {} {} {}\n",
                e.kind.tag(),
                e.at,
                e.until,
                escape(&e.value),
                e.sub.as_deref().map(escape).unwrap_or_default()
            ));
        }
        out.into_bytes()
    }

    /// Revokes session `s` (local logout) until its end. False when nothing changed
    /// (it was revoked already), so the caller need not tell every worker.
    pub fn revoke_session(&mut self, s: &Session, now: u64, lifetime: u64) -> bool {
        if self.revokes(s) {
            return false;
        }
        let until = s.expires.min(s.created.saturating_add(lifetime));
        self.add(
            Entry {
                kind: Kind::Session,
                value: s.id.clone(),
                sub: Some(s.sub.clone()),
                at: now,
                until,
            },
            now,
            lifetime,
        )
    }

    /// Revokes the sessions of the IdP's session `sid` (of user `sub`, when the logout
    /// token names one): they were all created by now.
    pub fn revoke_sid(&mut self, sid: &str, sub: Option<&str>, now: u64, lifetime: u64) -> bool {
        self.add(
            Entry {
                kind: Kind::IdpSid,
                value: sid.to_owned(),
                sub: sub.map(str::to_owned),
                at: now,
                until: now.saturating_add(lifetime),
            },
            now,
            lifetime,
        )
    }

    /// Revokes every session of `sub` created until `cutoff`.
    pub fn revoke_sub(&mut self, sub: &str, cutoff: u64, now: u64, lifetime: u64) -> bool {
        self.add(
            Entry {
                kind: Kind::Sub,
                value: sub.to_owned(),
                sub: Some(sub.to_owned()),
                at: cutoff,
                until: cutoff.saturating_add(lifetime),
            },
            now,
            lifetime,
        )
    }

    /// Adds an entry, drops the ones no session can outlive, and keeps the list within
    /// its bounds by folding (see [`Revoked`]). False when nothing changed (already
    /// there, already over, or a value too long or empty).
    fn add(&mut self, e: Entry, now: u64, lifetime: u64) -> bool {
        let bad = |v: &str| v.is_empty() || v.len() > MAX_VALUE;
        if bad(&e.value) || e.sub.as_deref().is_some_and(bad) || e.until <= now {
            return false;
        }
        let mut entries = std::mem::take(&mut self.entries);
        entries.retain(|x| x.until > now);
        // Every session the floor revokes has ended by then.
        let mut floor = self.floor;
        if floor.saturating_add(lifetime) <= now {
            floor = 0;
        }
        let changed = match entries
            .iter_mut()
            .find(|x| x.kind == e.kind && x.value == e.value)
        {
            // A later `sub` cutoff reaches later sessions; the others are final.
            Some(x) if e.kind == Kind::Sub && x.at < e.at => {
                x.at = e.at;
                x.until = x.until.max(e.until);
                true
            }
            Some(_) => false,
            None => {
                let sub = e.sub.clone();
                entries.push(e);
                if let Some(sub) = sub
                    && entries
                        .iter()
                        .filter(|x| x.sub.as_deref() == Some(sub.as_str()))
                        .count()
                        > self.caps.per_subject
                {
                    fold_subject(&mut entries, &sub, lifetime);
                }
                while entries.len() > self.caps.total.max(1) {
                    match busiest_subject(&entries) {
                        Some(sub) => fold_subject(&mut entries, &sub, lifetime),
                        None => {
                            // No user has two entries: the oldest entry goes into the
                            // floor (never out of the list without a trace).
                            let Some((i, _)) = entries.iter().enumerate().min_by_key(|(_, x)| x.at)
                            else {
                                break;
                            };
                            floor = floor.max(entries.remove(i).at);
                        }
                    }
                }
                true
            }
        };
        let caps = self.caps;
        *self = Revoked::from_entries(entries, floor);
        self.caps = caps;
        changed
    }

    pub fn revokes(&self, s: &Session) -> bool {
        (self.floor > 0 && s.created <= self.floor)
            || self.sessions.contains(&s.id)
            || s.idp_sid
                .as_ref()
                .is_some_and(|sid| self.sids.contains(sid))
            || self.subs.get(&s.sub).is_some_and(|at| s.created <= *at)
    }
}

/// The user with the most entries, when one has at least two.
fn busiest_subject(entries: &[Entry]) -> Option<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for e in entries {
        if let Some(sub) = &e.sub {
            *counts.entry(sub).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n >= 2)
        .max_by_key(|(sub, n)| (*n, std::cmp::Reverse(*sub)))
        .map(|(sub, _)| sub.to_owned())
}

/// Replaces every entry about `sub` by one cutoff at the latest of their times: every
/// session they revoked was created by then.
fn fold_subject(entries: &mut Vec<Entry>, sub: &str, lifetime: u64) {
    let mine = |x: &Entry| x.sub.as_deref() == Some(sub);
    let Some(at) = entries.iter().filter(|x| mine(x)).map(|x| x.at).max() else {
        return;
    };
    entries.retain(|x| !mine(x));
    entries.push(Entry {
        kind: Kind::Sub,
        value: sub.to_owned(),
        sub: Some(sub.to_owned()),
        at,
        until: at.saturating_add(lifetime),
    });
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
            userinfo: None,
            admitted: Default::default(),
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

    fn user(id: &str, sub: &str, created: u64) -> Session {
        Session {
            id: id.into(),
            sub: sub.into(),
            idp_sid: None,
            created,
            expires: created + 1000,
            ..session()
        }
    }

    #[test]
    fn revocations_match_and_age_out() {
        let mut r = Revoked::default();
        assert!(r.revoke_sub("ada", 5, 5, 1000));
        assert!(!r.revokes(&user("x", "ada", 6)), "a later login stays");
        assert!(r.revokes(&session()));
        let mut r2 = Revoked::parse(&r.encode(), 1000);
        assert_eq!(r2, r);
        r2.revoke_sid("other", None, 2000, 1000);
        assert_eq!(r2.entries.len(), 1, "the old entry aged out");
        assert!(
            !r2.revoke_session(&user("", "ada", 1990), 2000, 1000),
            "empty id"
        );
        assert_eq!(r2.entries.len(), 1);
        let mut r3 = Revoked::default();
        assert!(r3.revoke_session(&session(), 1, 1000));
        assert!(r3.revokes(&session()));
        assert!(!r3.revokes(&user("id2", "ada", 0)));
        assert_eq!(
            Revoked::parse(b"junk\nS x y\nS 1 2 %zz \n", 1000),
            Revoked::default()
        );
    }

    /// A session's entry lasts until the session's own end, a `sid` or `sub` entry one
    /// lifetime.
    #[test]
    fn an_entry_lasts_until_the_session_it_revokes_has_ended() {
        let mut r = Revoked::default();
        let s = user("s1", "ada", 100);
        assert!(r.revoke_session(&s, 150, 1000));
        assert_eq!(r.entries[0].until, 1100);
        // Writing the list at 1099 keeps it; at 1100 the session is over anyway.
        r.revoke_sid("x", None, 1099, 1000);
        assert!(r.revokes(&s));
        r.revoke_sid("y", None, 1100, 1000);
        assert!(!r.revokes(&s));
        assert_eq!(r.entries.len(), 2);
        // A cookie that claims a later end than the configured lifetime allows is held
        // to the lifetime.
        let long = Session {
            expires: 100_000,
            ..user("s2", "bob", 100)
        };
        assert!(r.revoke_session(&long, 150, 1000));
        assert_eq!(r.entries.last().unwrap().until, 1100);
    }

    #[test]
    fn lines_round_trip_with_any_value_and_legacy_lines_are_read() {
        let mut r = Revoked::default();
        assert!(r.revoke_sid("a sid%20with spaces", Some("user one"), 10, 1000));
        assert!(r.revoke_sub("bob\r\nS 1 9999999999 forged ", 10, 10, 1000));
        assert!(r.revoke_session(&user("s1", "ünï %", 5), 10, 1000));
        let back = Revoked::parse(&r.encode(), 1000);
        assert_eq!(back, r);
        assert_eq!(back.entries.len(), 3, "a value cannot forge a line");
        let old = Revoked::parse(b"s 10 id1\nsid 10 sid1\nsub 10 ada lovelace\n", 1000);
        assert!(old.revokes(&session()));
        assert!(old.revokes(&user("z", "ada lovelace", 10)));
        assert!(!old.revokes(&user("z", "ada lovelace", 11)));
        assert_eq!(old.entries[0].until, 1010);
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
    fn revocations_are_deduplicated() {
        let mut r = Revoked::default();
        assert!(r.revoke_session(&session(), 1, 1000));
        for t in 2..50 {
            assert!(!r.revoke_session(&session(), t, 1000), "already revoked");
        }
        assert_eq!(r.entries.len(), 1);
        assert!(r.revoke_sub("ada", 5, 5, 1000));
        assert!(!r.revoke_sub("ada", 5, 6, 1000));
        assert!(r.revoke_sub("ada", 9, 9, 1000), "a later cutoff counts");
        assert_eq!(r.entries.len(), 2);
        assert!(r.revokes(&user("other", "ada", 8)));
        assert!(r.revoke_sid("sid1", Some("ada"), 9, 1000));
        assert!(
            !r.revoke_sid("sid1", Some("ada"), 10, 1000),
            "already revoked"
        );
        assert_eq!(r.entries.len(), 3);
    }

    /// 5,000 logouts by another account: the victim's revocation stays, and the list
    /// stays small (that account's entries became one cutoff).
    #[test]
    fn another_accounts_logouts_never_flush_a_revocation() {
        let mut r = Revoked::default();
        let victim = session();
        assert!(r.revoke_session(&victim, 1, 1000));
        for i in 0..5000u64 {
            let t = 2 + i / 10;
            r.revoke_session(&user(&format!("mallory-{i}"), "mallory", t), t, 1000);
        }
        assert!(r.revokes(&victim));
        assert!(r.entries.len() <= PER_SUBJECT + 1, "{}", r.entries.len());
        assert_eq!(r.floor, 0, "nobody else was logged out");
        assert!(!r.revokes(&user("bob-1", "bob", 3)));
        // Mallory's own sessions from before her last logout are gone with it.
        assert!(r.revokes(&user("m", "mallory", 400)));
        assert!(!r.revokes(&user("m", "mallory", 503)));
    }

    /// Thousands of accounts, one logout each: past the cap the oldest go into the
    /// floor, so the victim's copied cookie is still refused; the list stays bounded.
    #[test]
    fn many_accounts_fold_into_the_floor_never_out_of_the_list() {
        let mut r = Revoked::default();
        let victim = session();
        assert!(r.revoke_session(&victim, 1, 1000));
        for i in 0..(MAX_REVOKED as u64 + 50) {
            let t = 2 + i / 100;
            r.revoke_session(&user(&format!("s{i}"), &format!("user-{i}"), t), t, 1000);
            if i % 1000 == 0 {
                assert!(r.revokes(&victim), "after {i}");
            }
        }
        assert!(r.revokes(&victim));
        assert!(r.entries.len() <= MAX_REVOKED);
        assert!(r.floor >= 1 && r.floor < 10, "{}", r.floor);
        assert!(
            !r.revokes(&user("late", "zoe", 100)),
            "sessions after the floor stay"
        );
        let back = Revoked::parse(&r.encode(), 1000);
        assert_eq!(back, r);
        // Once nothing under the floor can be alive, it goes.
        let mut later = back;
        later.revoke_sid("x", None, 2000, 1000);
        assert_eq!(later.floor, 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Any mix of logins, logouts and back-channel logouts over time, with small
        /// caps so folding happens: a session once revoked stays revoked until its end,
        /// the list never passes its cap, and without a floor no user who was never
        /// revoked loses a session.
        #[test]
        fn a_revocation_is_never_forgotten_before_its_session_ends(
            ops in proptest::collection::vec((0u8..4, 0usize..6, 0u64..40, 0usize..64), 1..160),
        ) {
            const LIFETIME: u64 = 300;
            let caps = Caps { per_subject: 3, total: 8 };
            let mut r = Revoked { caps, ..Revoked::default() };
            let mut now = 1u64;
            let mut alive: Vec<Session> = Vec::new();
            let mut revoked: Vec<Session> = Vec::new();
            let mut touched: HashSet<String> = HashSet::new();
            for (n, (op, who, dt, pick)) in ops.into_iter().enumerate() {
                now += dt;
                let sub = format!("user {who}");
                match op {
                    0 | 1 => alive.push(Session {
                        idp_sid: Some(format!("sid-{n}")),
                        expires: now + LIFETIME,
                        ..user(&format!("s{n}"), &sub, now)
                    }),
                    2 if !alive.is_empty() => {
                        let s = alive[pick % alive.len()].clone();
                        r.revoke_session(&s, now, LIFETIME);
                        touched.insert(s.sub.clone());
                        revoked.push(s);
                    }
                    _ if !alive.is_empty() => {
                        let s = alive[pick % alive.len()].clone();
                        let sid = s.idp_sid.clone().unwrap_or_default();
                        r.revoke_sid(&sid, Some(&s.sub), now, LIFETIME);
                        touched.insert(s.sub.clone());
                        revoked.push(s);
                    }
                    _ => {}
                }
                // Through shared data, as workers read it.
                r = Revoked { caps, ..Revoked::parse(&r.encode(), LIFETIME) };
                proptest::prop_assert!(r.entries.len() <= caps.total);
                for s in &revoked {
                    if now < s.expires {
                        proptest::prop_assert!(r.revokes(s), "{} forgotten at {}", s.id, now);
                    }
                }
                if r.floor == 0 {
                    for s in &alive {
                        if !touched.contains(&s.sub) {
                            proptest::prop_assert!(!r.revokes(s), "{} revoked for nothing", s.id);
                        }
                    }
                }
            }
        }

        /// Any bytes as the shared list: parsing never panics, and what it gives encodes
        /// and parses back the same.
        #[test]
        fn any_shared_list_parses(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
                                  lines in "((S|D|U|F|s|sid|sub) [0-9]{1,3}( [0-9]{1,4})?( [ -~]{0,12}){0,2}\n){0,12}") {
            for input in [bytes.as_slice(), lines.as_bytes()] {
                let r = Revoked::parse(input, 1000);
                proptest::prop_assert_eq!(Revoked::parse(&r.encode(), 1000), r);
            }
        }
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
        let l = unmark(b"d 130\ne 200\n", "d");
        assert_eq!(String::from_utf8_lossy(&l), "e 200\n");
        assert!(mark_used(&l, "d", 300, 150, 3).is_some(), "usable again");
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
