//! What every worker shares, and how it is fetched: the IdP's discovery document
//! and JWKS (fetched through `http_call`, refreshed on a tick), the revocation list,
//! used login states and refreshed sessions, and the VM's own state.
//!
//! Shared data, under `oidc/<root id>/`:
//! - `discovery`, `jwks`: 8 bytes fetch time (LE seconds), then the document; a value
//!   of only the 8 bytes marks a failed fetch (retried after `RETRY_SECONDS`).
//! - `lease/discovery`, `lease/jwks`: 8 bytes; until then one VM is fetching (won by
//!   CAS on a tick, or by the request that finds nothing stored yet, so one fetch is
//!   in flight per `vm_id`, not one per worker or per request: the others answer 503
//!   meanwhile); a request whose token names an unknown key wins `lease/jwks` the same
//!   way for a forced refetch, held `FORCED_REFETCH_SECONDS`.
//! - `states/<0-f>`: login states already used (`<state> <expiry>` lines, sharded
//!   by the state's first byte, each shard capped at `STATES_PER_SHARD`), so a
//!   replayed callback is refused.
//! - `refreshing`: sessions with a refresh in flight (`<session id> <until>` lines),
//!   so parallel requests of one session refresh once.
//! - `logout-jtis`: `jti`s of back-channel logout tokens accepted, until the token is
//!   too old to be accepted anyway, so a replay is refused.
//! - `revoked` and `revoked-gen`: the revocation list ([`Revoked`]) and a counter
//!   bumped on each change, so a request reads 8 bytes unless the list changed.
//! - `refreshed/<n>`: the sealed cookie of a session just refreshed, for requests
//!   still carrying the old one.

use std::rc::Rc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kit::jwt::keys::{KeySet, parse_jwks};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::Context;
use proxy_wasm::types::{LogLevel, MetricType};

use crate::config::Config;
use crate::idp::Discovery;
use crate::session::{
    self, BearerCache, LOGIN_TTL, Revoked, SESSION, Session, SessionCache, Standing,
};
use crate::url;

pub(super) const RETRY_SECONDS: u64 = 10;

/// A token naming a key we lack forces a JWKS refetch at most once per this many
/// seconds across workers (through `lease/jwks`), so random `kid`s cannot make every
/// request fetch.
const FORCED_REFETCH_SECONDS: u64 = 30;

/// Used login states kept per shard (16 shards): a client can start logins for free,
/// so the list is bounded; past it the oldest go (the code is one-time at the IdP
/// too).
const STATES_PER_SHARD: usize = 1024;

/// Sessions with a refresh in flight, at most (entries last one token call).
const REFRESHING_MAX: usize = 1024;

/// Whether a login state could be marked used.
pub(super) enum StateUse {
    Fresh,
    Replayed,
    /// Shared data kept changing under us (CAS conflicts): not a replay, retry.
    Busy,
}

pub(super) fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, &format!("oidc: {msg}"));
}

pub(super) fn random_b64(n: usize) -> Option<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).ok()?;
    Some(URL_SAFE_NO_PAD.encode(b))
}

pub(super) use kit::glue::{now_secs, read_u64, write_u64};

/// Read-modify-write of a shared value with CAS, retried a few times.
pub(super) fn update_shared(key: &str, f: impl Fn(Option<&[u8]>) -> Vec<u8>) -> bool {
    for _ in 0..8 {
        let (cur, cas) = match hostcalls::get_shared_data(key) {
            Ok((v, cas)) => (v, cas),
            Err(_) => (None, None),
        };
        let next = f(cur.as_deref());
        if hostcalls::set_shared_data(key, Some(&next), Some(cas.unwrap_or(0))).is_ok() {
            return true;
        }
    }
    false
}

pub(super) struct Metrics {
    pub(super) logins_started: u32,
    pub(super) logins_completed: u32,
    pub(super) login_failures: u32,
    pub(super) sessions: u32,
    pub(super) refreshes: u32,
    pub(super) refresh_failures: u32,
    pub(super) cookies_rejected: u32,
    pub(super) unauthenticated: u32,
    pub(super) backchannel_logouts: u32,
    pub(super) bearer_cache_hits: u32,
    pub(super) claims_refused: u32,
}

impl Metrics {
    pub(super) fn define() -> Metrics {
        let c = |n: &str| hostcalls::define_metric(MetricType::Counter, n).unwrap_or(0);
        Metrics {
            logins_started: c("oidc_logins_started"),
            logins_completed: c("oidc_logins_completed"),
            login_failures: c("oidc_login_failures"),
            sessions: c("oidc_session_requests"),
            refreshes: c("oidc_refreshes"),
            refresh_failures: c("oidc_refresh_failures"),
            cookies_rejected: c("oidc_cookies_rejected"),
            unauthenticated: c("oidc_unauthenticated"),
            backchannel_logouts: c("oidc_backchannel_logouts"),
            bearer_cache_hits: c("oidc_bearer_cache_hits"),
            claims_refused: c("oidc_claims_refused"),
        }
    }
}

pub(super) fn bump(id: u32) {
    let _ = hostcalls::increment_metric(id, 1);
}

/// A document the IdP serves, as shared data holds it now.
pub(super) enum Meta<T> {
    Ready(Rc<T>),
    /// Never fetched, or the last failure is old enough to try again.
    NotYet,
    /// The last fetch failed a moment ago.
    Failed,
}

/// What a VM keeps for all its requests.
pub(super) struct State {
    pub(super) config: Config,
    pub(super) prefix: String,
    pub(super) discovery: Option<(u32, Rc<Discovery>)>,
    pub(super) keys: Option<(u32, Rc<KeySet>)>,
    pub(super) revoked: (u64, Rc<Revoked>),
    pub(super) cache: SessionCache,
    pub(super) bearer: BearerCache,
    pub(super) strip: Vec<String>,
    pub(super) metrics: Metrics,
}

impl State {
    pub(super) fn key(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    pub(super) fn stored(&self, what: &str, now: u64) -> Result<(Vec<u8>, u32), Meta<()>> {
        match hostcalls::get_shared_data(&self.key(what)) {
            Ok((Some(b), Some(cas))) if b.len() > 8 => Ok((b, cas)),
            Ok((Some(b), Some(_))) => {
                let at = u64::from_le_bytes(
                    b.get(..8).and_then(|s| s.try_into().ok()).unwrap_or([0; 8]),
                );
                Err(if now < at + RETRY_SECONDS {
                    Meta::Failed
                } else {
                    Meta::NotYet
                })
            }
            _ => Err(Meta::NotYet),
        }
    }

    pub(super) fn discovery(&mut self, now: u64) -> Meta<Discovery> {
        let (bytes, cas) = match self.stored("discovery", now) {
            Ok(v) => v,
            Err(Meta::Failed) => return Meta::Failed,
            Err(_) => return Meta::NotYet,
        };
        if let Some((c, d)) = &self.discovery
            && *c == cas
        {
            return Meta::Ready(d.clone());
        }
        match Discovery::parse(&bytes[8..], &self.config.issuer) {
            Ok(d) => {
                let d = Rc::new(d);
                self.discovery = Some((cas, d.clone()));
                Meta::Ready(d)
            }
            Err(_) => Meta::Failed,
        }
    }

    pub(super) fn keys(&mut self, now: u64) -> Meta<KeySet> {
        let (bytes, cas) = match self.stored("jwks", now) {
            Ok(v) => v,
            Err(Meta::Failed) => return Meta::Failed,
            Err(_) => return Meta::NotYet,
        };
        if let Some((c, k)) = &self.keys
            && *c == cas
        {
            return Meta::Ready(k.clone());
        }
        match parse_jwks(&bytes[8..], false) {
            Ok((set, _)) => {
                let set = Rc::new(set);
                self.keys = Some((cas, set.clone()));
                Meta::Ready(set)
            }
            Err(_) => Meta::Failed,
        }
    }

    /// The revocation list: 8 bytes read per request, the list only when it changed.
    pub(super) fn revoked(&mut self) -> Rc<Revoked> {
        let (generation, _) = read_u64(&self.key("revoked-gen"));
        if generation != self.revoked.0 {
            let list = match hostcalls::get_shared_data(&self.key("revoked")) {
                Ok((Some(b), _)) => Revoked::parse(&b, self.config.lifetime),
                _ => Revoked::default(),
            };
            self.revoked = (generation, Rc::new(list));
        }
        self.revoked.1.clone()
    }

    /// Records a revocation (`change` adds it to the list as it is in shared data, and
    /// says whether that changed anything) and makes every worker read the list again.
    /// False when shared data was too busy to take it: the caller must not answer as
    /// if the sessions were revoked.
    pub(super) fn revoke(&self, change: impl Fn(&mut Revoked, u64) -> bool) -> bool {
        let lifetime = self.config.lifetime;
        let changed = std::cell::Cell::new(false);
        let ok = update_shared(&self.key("revoked"), |cur| {
            let mut r = cur.map(|b| Revoked::parse(b, lifetime)).unwrap_or_default();
            changed.set(change(&mut r, lifetime));
            r.encode()
        });
        if !ok {
            log(
                LogLevel::Error,
                "could not record a revocation: shared data busy",
            );
            return false;
        }
        if !changed.get() {
            // Already revoked: no worker needs to read the list again.
            return true;
        }
        let gen_key = self.key("revoked-gen");
        let bumped = update_shared(&gen_key, |cur| {
            let n = cur
                .and_then(|b| b.get(..8))
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            (n + 1).to_le_bytes().to_vec()
        });
        if !bumped {
            // The list has it, but workers that do not see a new generation keep the
            // old one: not done.
            log(
                LogLevel::Error,
                "could not announce a revocation: shared data busy",
            );
        }
        bumped
    }

    /// The shared-data slot where a refreshed session is published: one of 256, by
    /// the session id, so memory stays bounded (a collision only loses the shortcut).
    pub(super) fn refreshed_key(&self, id: &str) -> String {
        let mut h: u32 = 0x811c_9dc5;
        for b in id.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        self.key(&format!("refreshed/{}", h % 256))
    }

    /// Publishes a refreshed session (its sealed cookie, never the tokens in clear) for
    /// the requests still carrying the old cookie.
    pub(super) fn publish_refreshed(&self, s: &Session, sealed: &str) {
        let _ =
            hostcalls::set_shared_data(&self.refreshed_key(&s.id), Some(sealed.as_bytes()), None);
    }

    /// The session another request refreshed from `old`, when it is newer and good.
    pub(super) fn refreshed(&mut self, old: &Session, now: u64) -> Option<(String, Rc<Session>)> {
        let bytes = match hostcalls::get_shared_data(&self.refreshed_key(&old.id)) {
            Ok((Some(b), _)) => b,
            _ => return None,
        };
        let sealed = String::from_utf8(bytes).ok()?;
        let cached = self.cache.get(&sealed);
        let fresh = cached.is_none();
        let newer = match cached {
            Some(s) => s,
            None => Rc::new(session::open::<Session>(&self.config.keys, SESSION, &sealed).ok()?),
        };
        let good = matches!(
            newer.standing(&self.config, now),
            Standing::Good | Standing::GoodUntilExpiry
        );
        let usable = newer.id == old.id
            && newer.access_expires > old.access_expires
            && good
            && !self.revoked().revokes(&newer);
        // Cached only once judged good: a dead session is never stored.
        if usable && fresh {
            self.cache.insert(&sealed, newer.clone());
        }
        usable.then_some((sealed, newer))
    }

    /// Wins the lease of `what` for one fetch (a tick's refresh, or a request's first
    /// fetch), held for the fetch's timeout and a margin: false while another fetch,
    /// in this VM or another, holds it, or after a failure until `RETRY_SECONDS`.
    pub(super) fn take_lease(&self, what: Fetch, now: u64) -> bool {
        let lease = self.key(&format!("lease/{}", what.name()));
        let (until, cas) = read_u64(&lease);
        let hold = now + self.config.idp_timeout_ms / 1000 + 2;
        now >= until && write_u64(&lease, hold, Some(cas.unwrap_or(0)))
    }

    /// Ends a fetch that held the lease: free at once after the document came, else
    /// not before `RETRY_SECONDS`.
    pub(super) fn release_lease(&self, what: Fetch, ok: bool, now: u64) {
        let lease = self.key(&format!("lease/{}", what.name()));
        write_u64(&lease, if ok { 0 } else { now + RETRY_SECONDS }, None);
    }

    /// Wins the JWKS lease for a forced refetch, or false when one ran (or a tick's
    /// fetch is running) within `FORCED_REFETCH_SECONDS`.
    pub(super) fn claim_forced_refetch(&self, now: u64) -> bool {
        let lease = self.key("lease/jwks");
        let (until, cas) = read_u64(&lease);
        now >= until && write_u64(&lease, now + FORCED_REFETCH_SECONDS, Some(cas.unwrap_or(0)))
    }

    /// Wins the right to refresh session `id` for the length of one token call, so
    /// parallel requests of a session do not all refresh (the IdP would refuse all
    /// but the first once it rotates the refresh token). True when shared data is
    /// too busy to tell: refreshing anyway is safe.
    pub(super) fn claim_refresh(&self, id: &str, now: u64) -> bool {
        let until = now + self.config.idp_timeout_ms / 1000 + 2;
        let key = self.key("refreshing");
        !matches!(
            self.use_once(&key, id, until, now, REFRESHING_MAX),
            StateUse::Replayed
        )
    }

    /// Marks a login state used.
    pub(super) fn use_state(&self, state: &str, now: u64) -> StateUse {
        let shard = state.bytes().next().unwrap_or(0) % 16;
        let key = self.key(&format!("states/{shard:x}"));
        self.use_once(&key, state, now + LOGIN_TTL, now, STATES_PER_SHARD)
    }

    /// Marks `value` used until `until` in the list at `key` (see
    /// [`session::mark_used`]), with CAS.
    pub(super) fn use_once(
        &self,
        key: &str,
        value: &str,
        until: u64,
        now: u64,
        cap: usize,
    ) -> StateUse {
        for _ in 0..8 {
            let (cur, cas) = match hostcalls::get_shared_data(key) {
                Ok((v, cas)) => (v.unwrap_or_default(), cas),
                Err(_) => (Vec::new(), None),
            };
            let Some(next) = session::mark_used(&cur, value, until, now, cap) else {
                return StateUse::Replayed;
            };
            if hostcalls::set_shared_data(key, Some(&next), Some(cas.unwrap_or(0))).is_ok() {
                return StateUse::Fresh;
            }
        }
        StateUse::Busy
    }
}

/// Takes `value` out of the one-time list at `key` (its use did not complete), so the
/// same value can be sent again.
pub(super) fn forget_used(key: &str, value: &str) {
    let _ = update_shared(key, |cur| session::unmark(cur.unwrap_or_default(), value));
}

/// Stores a fetched document (or, with `None`, marks a failed fetch, keeping a stale
/// document: serving stale keys beats refusing everyone).
pub(super) fn store(st: &State, what: &str, body: Option<&[u8]>, now: u64) {
    kit::glue::store_fetched(&st.key(what), body, now);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Fetch {
    Discovery,
    Jwks,
}

impl Fetch {
    pub(super) fn name(self) -> &'static str {
        match self {
            Fetch::Discovery => "discovery",
            Fetch::Jwks => "jwks",
        }
    }
}

/// Starts a GET of the discovery document or the JWKS.
pub(super) fn dispatch_fetch(
    ctx: &dyn Context,
    st: &mut State,
    what: Fetch,
    now: u64,
) -> Option<u32> {
    let (authority, path) = match what {
        Fetch::Discovery => (
            st.config.idp_authority.clone(),
            st.config.discovery_path.clone(),
        ),
        Fetch::Jwks => {
            let Meta::Ready(d) = st.discovery(now) else {
                return None;
            };
            let u = url::Url::parse(&d.jwks_uri)?;
            (u.authority.clone(), u.path_and_query())
        }
    };
    let headers = vec![
        (":method", "GET"),
        (":path", path.as_str()),
        (":authority", authority.as_str()),
        ("accept", "application/json"),
    ];
    call_idp(
        ctx,
        st,
        headers,
        None,
        &format!("fetch the {}", what.name()),
    )
}

/// An `http_call` to the IdP's cluster with its timeout; a refused dispatch is logged
/// (`what`: what the call was for) and is `None`.
pub(super) fn call_idp(
    ctx: &dyn Context,
    st: &State,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    what: &str,
) -> Option<u32> {
    match ctx.dispatch_http_call(
        &st.config.idp_cluster,
        headers,
        body,
        vec![],
        Duration::from_millis(st.config.idp_timeout_ms),
    ) {
        Ok(t) => Some(t),
        Err(e) => {
            log(
                LogLevel::Error,
                &format!(
                    "cannot {what} through cluster `{}`: {e:?}",
                    st.config.idp_cluster
                ),
            );
            None
        }
    }
}

/// Checks and stores a fetched document; false when it is not usable.
pub(super) fn take_fetch(
    st: &mut State,
    what: Fetch,
    status: Option<String>,
    body: Option<Vec<u8>>,
    now: u64,
) -> bool {
    let body = body.unwrap_or_default();
    let usable = if status.as_deref() != Some("200") {
        Err(format!(
            "answered {}",
            status.as_deref().unwrap_or("nothing")
        ))
    } else {
        match what {
            Fetch::Discovery => Discovery::parse(&body, &st.config.issuer).map(|_| ()),
            Fetch::Jwks => match parse_jwks(&body, false) {
                Ok((set, _)) if !set.keys.is_empty() => Ok(()),
                Ok(_) => Err("the JWKS has no usable key".into()),
                Err(e) => Err(e.to_string()),
            },
        }
    };
    match usable {
        Ok(()) => {
            store(st, what.name(), Some(&body), now);
            true
        }
        Err(e) => {
            log(
                LogLevel::Warn,
                &format!("fetching the {} failed: {e}", what.name()),
            );
            store(st, what.name(), None, now);
            false
        }
    }
}
