//! The proxy-wasm glue: moves bytes between the host and the policy, fetches the JWKS
//! through `http_call`, keeps it in shared data for every worker, and answers.
//!
//! Shared data, per provider, under `jwt-auth/<root id>/<provider>/`:
//! - `jwks`: 8 bytes fetch time (LE seconds), then the JWKS body; an empty body marks a
//!   failed first fetch (no keys at all), so workers answer 503 without refetching.
//! - `lease`: 8 bytes; until that time one VM is fetching (won by CAS, on a tick or by
//!   the first request that finds no keys stored, so one fetch is in flight per
//!   `vm_id`, not one per worker or per request). Requests that find no keys while it
//!   is held wait for that fetch (`KeyWaiter`): woken by its answer when it is their
//!   VM's, by the tick when another VM's, and answered 503 past the lease's length.
//! - `kid`: 8 bytes; the last refetch for an unknown `kid`.
//!
//! Introspection (RFC 7662) runs once per token at a time in a VM: the first request
//! with a token calls, the others with the same token wait for its answer (`Flight`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::auth::{self, Check, InactiveTokens, Keys, TokenCache, Verified};
use crate::config::Config;
use crate::error::Denial;
use crate::extract::{self, Found, Location};
use crate::keys::{KeySet, parse_jwks};
use kit::glue::{now_secs, read_u64, write_u64};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { state: None, calls: HashMap::new() }));
}}

/// How long after a failed fetch the next one may start.
const RETRY_SECONDS: u64 = 10;

struct Metrics {
    allowed: u32,
    cache_hits: u32,
    fetches: u32,
    fetch_failures: u32,
    introspections: u32,
    denied: HashMap<&'static str, u32>,
    /// The two counters every admitted request bumps, kept in the VM and added to the
    /// host's on the next tick (at most a second later): two host calls fewer per
    /// request, which in Envoy are two crossings from V8 into C++.
    pending_allowed: Cell<u64>,
    pending_hits: Cell<u64>,
}

impl Metrics {
    fn define() -> Metrics {
        let c = |n: &str| hostcalls::define_metric(MetricType::Counter, n).unwrap_or(0);
        let mut denied = HashMap::new();
        for r in [
            "missing",
            "expired",
            "bad_signature",
            "unknown_key",
            "algorithm",
            "issuer",
            "invalid",
            "audience",
            "scope",
            "claims",
            "keys_unavailable",
            "inactive",
            "introspection_unavailable",
            "path",
        ] {
            denied.insert(r, c(&format!("jwt_auth_denied_{r}")));
        }
        Metrics {
            allowed: c("jwt_auth_allowed"),
            cache_hits: c("jwt_auth_cache_hits"),
            fetches: c("jwt_auth_jwks_fetches"),
            fetch_failures: c("jwt_auth_jwks_failures"),
            introspections: c("jwt_auth_introspections"),
            denied,
            pending_allowed: Cell::new(0),
            pending_hits: Cell::new(0),
        }
    }

    fn count(pending: &Cell<u64>) {
        pending.set(pending.get() + 1);
    }

    /// Adds the counts kept in the VM to the host's counters.
    fn flush(&self) {
        for (id, pending) in [
            (self.allowed, &self.pending_allowed),
            (self.cache_hits, &self.pending_hits),
        ] {
            let n = pending.replace(0);
            if n > 0 {
                let _ = hostcalls::increment_metric(id, n as i64);
            }
        }
    }

    fn bump(id: u32) {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// What a VM keeps for all its requests.
struct State {
    config: Config,
    prefix: String,
    cache: TokenCache,
    /// Tokens an introspection endpoint called inactive, for a short while.
    inactive: InactiveTokens,
    /// Parsed JWKS per provider, with the shared-data CAS it was parsed from.
    parsed: HashMap<usize, (u32, Rc<KeySet>)>,
    metrics: Metrics,
    strip: Vec<String>,
    /// Introspections in flight, by provider and token: a token two providers may
    /// introspect is asked of each, and each answer is its own provider's.
    flights: HashMap<(usize, String), Flight>,
    /// Introspection endpoints found by discovery, by provider.
    discovered: HashMap<usize, String>,
    /// When a failed discovery may be tried again, by provider.
    discovery_retry: HashMap<usize, u64>,
    /// JWKS fetches this VM has in flight (a tick's or a request's), by provider.
    fetching: HashMap<usize, u32>,
    /// Requests waiting for the keys of a provider another fetch is bringing.
    key_waiters: Vec<KeyWaiter>,
}

/// A request paused until a JWKS fetch it did not make answers (or `until`).
struct KeyWaiter {
    context: u32,
    provider: usize,
    found: Found,
    rule: usize,
    until: u64,
}

/// One introspection call in flight for a token, and the requests waiting for it
/// besides the one that made it.
struct Flight {
    provider: usize,
    waiters: Vec<Waiter>,
    /// The request that made the call ended first (its call goes with it): the root
    /// context calls again on its next tick, for the waiters.
    orphaned: bool,
}

/// A request paused until another request's introspection of the same token answers.
struct Waiter {
    context: u32,
    found: Found,
    rule: usize,
}

impl State {
    fn key(&self, provider: usize, what: &str) -> String {
        format!(
            "{}{}/{what}",
            self.prefix, self.config.providers[provider].name
        )
    }

    /// How long a JWKS fetch of `provider` holds the lease: its timeout and a margin.
    fn lease_seconds(&self, provider: usize) -> u64 {
        self.config.providers[provider]
            .remote
            .as_ref()
            .map_or(0, |r| r.timeout_ms / 1000)
            + 2
    }

    /// Wins the provider's fetch lease by CAS: false while another fetch (this VM's or
    /// another's) holds it, or after a failure until `RETRY_SECONDS` have passed.
    fn take_lease(&self, provider: usize, now: u64) -> bool {
        let lease = self.key(provider, "lease");
        let (until, cas) = read_u64(&lease);
        now >= until
            && write_u64(
                &lease,
                now + self.lease_seconds(provider),
                Some(cas.unwrap_or(0)),
            )
    }

    /// Ends a fetch that held the lease: free at once after keys came, else not
    /// before `RETRY_SECONDS`.
    fn release_lease(&self, provider: usize, ok: bool, now: u64) {
        let until = if ok { 0 } else { now + RETRY_SECONDS };
        write_u64(&self.key(provider, "lease"), until, None);
    }

    fn fetch_started(&mut self, provider: usize) {
        *self.fetching.entry(provider).or_insert(0) += 1;
    }

    fn fetch_ended(&mut self, provider: usize) {
        if let Some(n) = self.fetching.get_mut(&provider) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.fetching.remove(&provider);
            }
        }
    }

    /// Takes the requests waiting for `provider`'s keys out of the list.
    fn waiters_for(&mut self, provider: usize) -> Vec<KeyWaiter> {
        let (mine, rest) = std::mem::take(&mut self.key_waiters)
            .into_iter()
            .partition(|w| w.provider == provider);
        self.key_waiters = rest;
        mine
    }

    /// The provider's keys as the shared data holds them now.
    fn keys(&mut self, provider: usize, now: u64) -> KeysNow {
        let (bytes, cas) = match hostcalls::get_shared_data(&self.key(provider, "jwks")) {
            Ok((Some(b), Some(cas))) => (b, cas),
            _ => return KeysNow::NotYet,
        };
        if bytes.len() <= 8 {
            let failed_at = u64::from_le_bytes(
                bytes
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0; 8]),
            );
            return if now < failed_at + RETRY_SECONDS {
                KeysNow::Unavailable
            } else {
                KeysNow::NotYet
            };
        }
        if let Some((c, set)) = self.parsed.get(&provider) {
            if *c == cas {
                return KeysNow::Ready(set.clone());
            }
        }
        match parse_jwks(&bytes[8..], false) {
            Ok((set, _)) => {
                let set = Rc::new(set);
                self.parsed.insert(provider, (cas, set.clone()));
                KeysNow::Ready(set)
            }
            Err(_) => KeysNow::Unavailable,
        }
    }
}

enum KeysNow {
    Ready(Rc<KeySet>),
    NotYet,
    Unavailable,
}

/// Stores a fetched JWKS (or, with `None`, marks a failed first fetch). A failed
/// refresh keeps the stale JWKS: serving stale keys beats refusing everyone.
fn store_jwks(st: &State, provider: usize, body: Option<&[u8]>, now: u64) {
    kit::glue::store_fetched(&st.key(provider, "jwks"), body, now);
}

/// Checks a fetched JWKS answer: a 200 whose body is a JWKS with at least one key.
fn usable_jwks(status: Option<String>, body: Option<Vec<u8>>) -> Result<Vec<u8>, String> {
    if status.as_deref() != Some("200") {
        return Err(format!(
            "JWKS fetch answered {}",
            status.as_deref().unwrap_or("nothing")
        ));
    }
    let body = body.unwrap_or_default();
    match parse_jwks(&body, false) {
        Ok((set, _)) if !set.keys.is_empty() => Ok(body),
        Ok(_) => Err("the JWKS has no usable key".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Stores a JWKS answer (or marks the failure, keeping stale keys); whether keys came.
/// `what` names the fetch in the log line ("fetch", "refresh").
fn take_jwks(
    st: &State,
    provider: usize,
    status: Option<String>,
    body: Option<Vec<u8>>,
    now: u64,
    what: &str,
) -> bool {
    match usable_jwks(status, body) {
        Ok(body) => {
            store_jwks(st, provider, Some(&body), now);
            true
        }
        Err(e) => {
            Metrics::bump(st.metrics.fetch_failures);
            hostcalls::log(
                LogLevel::Warn,
                &format!(
                    "jwt-auth: JWKS {what} of `{}` failed: {e}",
                    st.config.providers[provider].name
                ),
            )
            .ok();
            store_jwks(st, provider, None, now);
            false
        }
    }
}

/// Checks `found` against the keys shared data holds now. With `may_fetch`, keys never
/// fetched are `NeedKeys`, and so is an unknown `kid` once per refetch interval;
/// without, both are decided with what there is.
fn verify_now(st: &mut State, found: &Found, may_fetch: bool, now: u64) -> Check {
    // Keys of every remote provider the token may belong to, as shared data has them.
    let mut sets: HashMap<usize, KeysNow> = HashMap::new();
    for &p in &found.providers {
        if st.config.providers[p].remote.is_some() {
            let k = st.keys(p, now);
            sets.insert(p, k);
        }
    }
    let may_refetch = may_fetch
        && found.providers.iter().any(|&p| {
            let Some(remote) = &st.config.providers[p].remote else {
                return false;
            };
            let (last, _) = read_u64(&st.key(p, "kid"));
            now >= last + remote.refetch_interval_seconds
        });
    let lookup = |p: usize| match sets.get(&p) {
        Some(KeysNow::Ready(set)) => Keys::Ready(set),
        Some(KeysNow::Unavailable) => Keys::Unavailable,
        Some(KeysNow::NotYet) | None => {
            if may_fetch {
                Keys::NotYet
            } else {
                Keys::Unavailable
            }
        }
    };
    auth::verify(&st.config, found, &lookup, may_refetch, now)
}

/// Decides the current request with the keys there are now, fetching nothing.
fn settle_keys(st: &mut State, found: &Found, rule: usize, now: u64) -> Action {
    if let Some(v) = st.cache.get(&found.token, now)
        && found.providers.contains(&v.provider)
    {
        Metrics::count(&st.metrics.pending_hits);
        return allow(st, &v, found, rule);
    }
    match verify_now(st, found, false, now) {
        Check::Ok(v) => {
            st.cache.insert(&found.token, v.clone(), now);
            allow(st, &v, found, rule)
        }
        Check::Deny(d) => {
            deny(st, d);
            Action::Pause
        }
        Check::NeedKeys { .. } => {
            deny(st, Denial::KeysUnavailable);
            Action::Pause
        }
    }
}

/// Answers requests that waited for keys, each in its own context.
fn wake_key_waiters(st: &mut State, waiters: Vec<KeyWaiter>, now: u64) {
    for w in waiters {
        if hostcalls::set_effective_context(w.context).is_err() {
            continue;
        }
        if settle_keys(st, &w.found, w.rule, now) == Action::Continue {
            let _ = hostcalls::resume_http_request();
        }
    }
}

fn dispatch_fetch(ctx: &dyn Context, st: &State, provider: usize) -> Option<u32> {
    let remote = st.config.providers[provider].remote.as_ref()?;
    match kit::glue::get_json(
        ctx,
        &remote.cluster,
        &remote.path,
        remote.authority.as_deref(),
        remote.timeout_ms,
    ) {
        Ok(token) => {
            Metrics::bump(st.metrics.fetches);
            Some(token)
        }
        Err(e) => {
            hostcalls::log(
                LogLevel::Error,
                &format!(
                    "jwt-auth: cannot fetch the JWKS of `{}` from cluster `{}`: {e:?}",
                    st.config.providers[provider].name, remote.cluster
                ),
            )
            .ok();
            None
        }
    }
}

/// POSTs `token` to provider `pi`'s introspection endpoint; `None` when it cannot
/// (the endpoint not yet discovered, the call refused). Counts the call.
fn dispatch_introspection(ctx: &dyn Context, st: &State, pi: usize, token: &str) -> Option<u32> {
    let p = &st.config.providers[pi];
    let i = p.introspection.as_ref()?;
    let path = i.path.as_ref().or_else(|| st.discovered.get(&pi))?;
    let authority = i.authority.clone().unwrap_or_else(|| i.cluster.clone());
    let issuer = p.issuer.as_deref().unwrap_or_default();
    let (extra, body) = match auth::introspection_request(i, token, issuer, now_secs()) {
        Ok(r) => r,
        Err(e) => {
            hostcalls::log(LogLevel::Error, &format!("jwt-auth: no randomness: {e}")).ok();
            return None;
        }
    };
    let mut headers = vec![
        (":method", "POST"),
        (":path", path.as_str()),
        (":authority", authority.as_str()),
    ];
    headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    match ctx.dispatch_http_call(
        &i.cluster,
        headers,
        Some(body.as_bytes()),
        vec![],
        Duration::from_millis(i.timeout_ms),
    ) {
        Ok(t) => {
            Metrics::bump(st.metrics.introspections);
            Some(t)
        }
        Err(e) => {
            hostcalls::log(
                LogLevel::Error,
                &format!(
                    "jwt-auth: cannot call the introspection endpoint of `{}` on cluster `{}`: {e:?}",
                    p.name, i.cluster
                ),
            )
            .ok();
            None
        }
    }
}

/// GETs provider `pi`'s discovery document, for its introspection endpoint.
fn dispatch_discovery(ctx: &dyn Context, st: &State, pi: usize) -> Option<u32> {
    let i = st.config.providers[pi].introspection.as_ref()?;
    let path = i.discovery_path.as_ref()?;
    kit::glue::get_json(ctx, &i.cluster, path, i.authority.as_deref(), i.timeout_ms)
        .map_err(|e| {
            hostcalls::log(
                LogLevel::Error,
                &format!(
                    "jwt-auth: cannot fetch the discovery document of `{}`: {e:?}",
                    st.config.providers[pi].name
                ),
            )
            .ok();
        })
        .ok()
}

/// What an introspection answer for `token` decides; kept in the cache (active) or the
/// negative cache (inactive).
fn introspection_outcome(
    st: &mut State,
    pi: usize,
    token: &str,
    status: Option<&str>,
    body: &[u8],
) -> Result<Rc<Verified>, Denial> {
    let now = now_secs();
    match auth::introspected(&st.config, pi, status, body, now) {
        Ok(v) => {
            st.cache.insert(token, v.clone(), now);
            Ok(v)
        }
        Err(Some(d)) => {
            if d == Denial::Inactive {
                let ttl = st.config.providers[pi]
                    .introspection
                    .as_ref()
                    .map_or(0, |i| i.negative_cache_seconds);
                st.inactive.insert(token, now + ttl, now);
            }
            Err(d)
        }
        Err(None) => {
            hostcalls::log(
                LogLevel::Warn,
                &format!(
                    "jwt-auth: introspection at `{}` failed: status {}",
                    st.config.providers[pi].name,
                    status.unwrap_or("none")
                ),
            )
            .ok();
            Err(Denial::IntrospectionUnavailable)
        }
    }
}

/// Answers the requests that waited for an introspection of the same token, each in
/// its own context (one that has ended meanwhile is skipped).
fn wake(st: &State, waiters: Vec<Waiter>, outcome: &Result<Rc<Verified>, Denial>) {
    for w in waiters {
        if hostcalls::set_effective_context(w.context).is_err() {
            continue;
        }
        if settle(st, outcome, &w.found, w.rule) == Action::Continue {
            let _ = hostcalls::resume_http_request();
        }
    }
}

/// Allows or denies the current request by `outcome`.
fn settle(
    st: &State,
    outcome: &Result<Rc<Verified>, Denial>,
    found: &Found,
    rule: usize,
) -> Action {
    match outcome {
        Ok(v) => allow(st, v, found, rule),
        Err(d) => {
            deny(st, d.clone());
            Action::Pause
        }
    }
}

/// A call the root context made: on a tick, or for requests whose own call went away.
enum RootCall {
    Jwks(usize),
    Discovery(usize),
    Introspection((usize, String)),
}

struct Root {
    state: Option<Rc<RefCell<State>>>,
    /// Calls this root context made, by call token.
    calls: HashMap<u32, RootCall>,
}

impl Root {
    fn jwks_answer(
        &self,
        st: &mut State,
        provider: usize,
        status: Option<String>,
        body: Option<Vec<u8>>,
    ) {
        let now = now_secs();
        let ok = take_jwks(st, provider, status, body, now, "refresh");
        st.release_lease(provider, ok, now);
        st.fetch_ended(provider);
        let waiters = st.waiters_for(provider);
        wake_key_waiters(st, waiters, now);
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let (Some(call), Some(state)) = (self.calls.remove(&token), self.state.clone()) else {
            return;
        };
        let status = self.get_http_call_response_header(":status");
        let body = self.get_http_call_response_body(0, body_size);
        let mut st = state.borrow_mut();
        match call {
            RootCall::Jwks(provider) => self.jwks_answer(&mut st, provider, status, body),
            RootCall::Discovery(pi) => {
                let issuer = st.config.providers[pi].issuer.clone().unwrap_or_default();
                match auth::discovered_introspection_path(
                    status.as_deref(),
                    &body.unwrap_or_default(),
                    &issuer,
                ) {
                    Ok(path) => {
                        st.discovered.insert(pi, path);
                    }
                    Err(e) => {
                        hostcalls::log(
                            LogLevel::Warn,
                            &format!(
                                "jwt-auth: discovery of `{}`'s introspection endpoint failed (again in {RETRY_SECONDS} s): {e}",
                                st.config.providers[pi].name
                            ),
                        )
                        .ok();
                        st.discovery_retry.insert(pi, now_secs() + RETRY_SECONDS);
                    }
                }
            }
            RootCall::Introspection(key) => {
                let Some(flight) = st.flights.remove(&key) else {
                    return;
                };
                let outcome = introspection_outcome(
                    &mut st,
                    flight.provider,
                    &key.1,
                    status.as_deref(),
                    &body.unwrap_or_default(),
                );
                wake(&st, flight.waiters, &outcome);
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let Some((config, root_id)) = kit::glue::configure(self, "jwt-auth", Config::parse) else {
            return false;
        };
        // Every second: the counters kept in the VM, the JWKS refresh, discovery.
        self.set_tick_period(Duration::from_secs(1));
        for p in config.providers.iter().filter(|p| p.remote.is_some()) {
            kit::glue::create_u64(&format!("jwt-auth/{root_id}/{}/lease", p.name));
        }
        let strip = auth::spoofable_headers(&config);
        self.state = Some(Rc::new(RefCell::new(State {
            // No verified token is longer than the largest provider's bound.
            cache: TokenCache::new(
                config.cache_entries,
                config.cache_ttl,
                config
                    .providers
                    .iter()
                    .map(|p| p.max_token_bytes)
                    .max()
                    .unwrap_or(0),
            ),
            config,
            inactive: InactiveTokens::default(),
            prefix: format!("jwt-auth/{root_id}/"),
            parsed: HashMap::new(),
            metrics: Metrics::define(),
            strip,
            flights: HashMap::new(),
            discovered: HashMap::new(),
            discovery_retry: HashMap::new(),
            fetching: HashMap::new(),
            key_waiters: Vec::new(),
        })));
        true
    }

    /// Refreshes each remote JWKS that is missing or older than its cache duration, in
    /// one VM at a time: the VM that wins the lease by CAS fetches. Discovers the
    /// introspection endpoints not yet known, and calls again for the requests whose
    /// introspection went away with the request that made it.
    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let mut st = state.borrow_mut();
        st.metrics.flush();
        let now = now_secs();
        let mut undispatched = Vec::new();
        let mut started = Vec::new();
        for (i, p) in st.config.providers.iter().enumerate() {
            let asking =
                |c: &RootCall| matches!(c, RootCall::Jwks(x) | RootCall::Discovery(x) if *x == i);
            if self.calls.values().any(asking) {
                continue;
            }
            if p.introspection
                .as_ref()
                .is_some_and(|x| x.discovery_path.is_some())
                && !st.discovered.contains_key(&i)
            {
                // A failed discovery waits RETRY_SECONDS, not a tick, before the next.
                if st.discovery_retry.get(&i).is_none_or(|at| now >= *at) {
                    match dispatch_discovery(self, &st, i) {
                        Some(token) => {
                            self.calls.insert(token, RootCall::Discovery(i));
                        }
                        None => undispatched.push(i),
                    }
                }
                continue;
            }
            let Some(remote) = &p.remote else { continue };
            let (fetched_at, _) = read_u64(&st.key(i, "jwks"));
            let has_keys = matches!(hostcalls::get_shared_data(&st.key(i, "jwks")), Ok((Some(b), _)) if b.len() > 8);
            let due = !has_keys || now >= fetched_at + remote.cache_duration_seconds;
            if !due {
                continue;
            }
            if !st.take_lease(i, now) {
                continue; // a fetch is under way, here or in another VM
            }
            match dispatch_fetch(self, &st, i) {
                Some(token) => {
                    self.calls.insert(token, RootCall::Jwks(i));
                    started.push(i);
                }
                None => st.release_lease(i, false, now),
            }
        }
        for i in undispatched {
            st.discovery_retry.insert(i, now + RETRY_SECONDS);
        }
        for i in started {
            st.fetch_started(i);
        }
        let orphaned: Vec<(usize, String)> = st
            .flights
            .iter()
            .filter(|(_, f)| f.orphaned)
            .map(|(k, _)| k.clone())
            .collect();
        for key in orphaned {
            match dispatch_introspection(self, &st, key.0, &key.1) {
                Some(call) => {
                    if let Some(f) = st.flights.get_mut(&key) {
                        f.orphaned = false;
                    }
                    self.calls.insert(call, RootCall::Introspection(key));
                }
                None => {
                    if let Some(f) = st.flights.remove(&key) {
                        wake(&st, f.waiters, &Err(Denial::IntrospectionUnavailable));
                    }
                }
            }
        }
        // Last: waking a request makes it the current context. Requests that waited
        // for another VM's fetch see its keys (or its failure) here; past the lease's
        // length, they are answered with what there is.
        let waiting = std::mem::take(&mut st.key_waiters);
        let (due, still): (Vec<KeyWaiter>, Vec<KeyWaiter>) = waiting
            .into_iter()
            .partition(|w| now >= w.until || !matches!(st.keys(w.provider, now), KeysNow::NotYet));
        st.key_waiters = still;
        wake_key_waiters(&mut st, due, now);
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        Some(Box::new(Request {
            state,
            context,
            pending: None,
        }))
    }
}

/// A request waiting for a call it made itself: a JWKS fetch, or the introspection
/// of its token.
struct Pending {
    token: u32,
    provider: usize,
    found: Found,
    rule: usize,
    introspection: bool,
    /// A JWKS fetch that holds the provider's lease (a first fetch; an unknown `kid`'s
    /// refetch is paced by the `kid` time instead).
    lease: bool,
}

struct Request {
    state: Rc<RefCell<State>>,
    context: u32,
    pending: Option<Pending>,
}

/// Refuses the current request.
fn deny(st: &State, d: Denial) {
    if let Some(id) = st.metrics.denied.get(d.reason()) {
        Metrics::bump(*id);
    }
    let request_id = kit::glue::request_id();
    let body = kit::reply::json_body(&d.message(), request_id.as_deref());
    let mut headers = vec![kit::reply::CONTENT_TYPE_JSON];
    let www = d.www_authenticate(&st.config.realm);
    if let Some(w) = &www {
        headers.push(("www-authenticate", w));
    }
    if matches!(
        d,
        Denial::KeysUnavailable | Denial::IntrospectionUnavailable
    ) {
        headers.push(("retry-after", "10"));
    }
    let _ = hostcalls::send_http_response(d.status(), headers, Some(&body));
}

/// Takes the verified token out of the current request (`forward: false`), from where
/// it was: its header, its query parameter in `:path`, or its cookie in every `cookie`
/// header. The upstream, and what it logs, never sees it.
fn hide_token(found: &Found) {
    let headers = proxy_wasm::types::MapType::HttpRequestHeaders;
    match &found.location {
        Location::Header(h) => {
            let _ = hostcalls::set_map_value(headers, h, None);
        }
        Location::Param(name) => {
            let path = kit::glue::header(headers, ":path").unwrap_or_default();
            let _ = hostcalls::set_map_value(
                headers,
                ":path",
                Some(&kit::credential::without_param(&path, name)),
            );
        }
        Location::Cookie(name) => {
            let raw = kit::glue::RawMap::read(headers);
            let kept: Vec<String> = raw
                .pairs()
                .iter()
                .filter(|(k, _)| k == "cookie")
                .filter_map(|(_, v)| kit::credential::without_cookie(v, name))
                .collect();
            let _ = hostcalls::set_map_value(headers, "cookie", None);
            for v in kept {
                let _ = hostcalls::add_map_value(headers, "cookie", &v);
            }
        }
    }
}

/// Admits the current request with the verified token `v` under rule `rule`, when the
/// rule's scopes and claims hold: identity headers set, the credential property set.
fn allow(st: &State, v: &Verified, found: &Found, rule: usize) -> Action {
    let r = &st.config.rules[rule];
    if let Err(d) = crate::claims::check_scopes(&v.claims, &r.scopes) {
        deny(st, d);
        return Action::Pause;
    }
    if r.claims.as_ref().is_some_and(|c| !c.holds(&v.claims)) {
        deny(st, Denial::Claims);
        return Action::Pause;
    }
    let p = &st.config.providers[v.provider];
    let headers = proxy_wasm::types::MapType::HttpRequestHeaders;
    for (k, value) in &v.identity {
        let _ = hostcalls::set_map_value(headers, k, Some(value));
    }
    if !p.forward {
        hide_token(found);
    }
    // For header-forwarder's forward_authorization: the credential that was verified.
    let _ = hostcalls::set_property(
        vec![kit::identity::CREDENTIAL_PROPERTY],
        Some(found.token.as_bytes()),
    );
    Metrics::count(&st.metrics.pending_allowed);
    Action::Continue
}

impl Request {
    /// Decides for `found` under rule `rule`; fetches keys when needed.
    fn decide(&mut self, found: Found, rule: usize, may_fetch: bool) -> Action {
        let state = self.state.clone();
        let mut st = state.borrow_mut();
        let now = now_secs();
        if let Some(v) = st.cache.get(&found.token, now) {
            if found.providers.contains(&v.provider) {
                Metrics::count(&st.metrics.pending_hits);
                return allow(&st, &v, &found, rule);
            }
        }
        if let Some(pi) = auth::introspection_provider(&st.config, &found) {
            if st.inactive.is_inactive(&found.token, now) {
                deny(&st, Denial::Inactive);
                return Action::Pause;
            }
            // Another request is asking about this token: wait for its answer.
            if let Some(f) = st.flights.get_mut(&(pi, found.token.clone())) {
                f.waiters.push(Waiter {
                    context: self.context,
                    found,
                    rule,
                });
                return Action::Pause;
            }
            return match dispatch_introspection(self, &st, pi, &found.token) {
                Some(token) => {
                    st.flights.insert(
                        (pi, found.token.clone()),
                        Flight {
                            provider: pi,
                            waiters: Vec::new(),
                            orphaned: false,
                        },
                    );
                    drop(st);
                    self.pending = Some(Pending {
                        token,
                        provider: pi,
                        found,
                        rule,
                        introspection: true,
                        lease: false,
                    });
                    Action::Pause
                }
                None => {
                    deny(&st, Denial::IntrospectionUnavailable);
                    Action::Pause
                }
            };
        }
        match verify_now(&mut st, &found, may_fetch, now) {
            Check::Ok(v) => {
                st.cache.insert(&found.token, v.clone(), now);
                allow(&st, &v, &found, rule)
            }
            Check::Deny(d) => {
                deny(&st, d);
                Action::Pause
            }
            Check::NeedKeys {
                provider,
                unknown_kid,
            } => {
                if unknown_kid {
                    write_u64(&st.key(provider, "kid"), now, None);
                } else if st.fetching.contains_key(&provider) || !st.take_lease(provider, now) {
                    // No keys yet, and a fetch of them is under way (in this VM or
                    // another): wait for it rather than add one more call per request.
                    let until = now + st.lease_seconds(provider) + 1;
                    st.key_waiters.push(KeyWaiter {
                        context: self.context,
                        provider,
                        found,
                        rule,
                        until,
                    });
                    return Action::Pause;
                }
                match dispatch_fetch(self, &st, provider) {
                    Some(token) => {
                        st.fetch_started(provider);
                        drop(st);
                        self.pending = Some(Pending {
                            token,
                            provider,
                            found,
                            rule,
                            introspection: false,
                            lease: !unknown_kid,
                        });
                        Action::Pause
                    }
                    None => {
                        if !unknown_kid {
                            store_jwks(&st, provider, None, now);
                            st.release_lease(provider, false, now);
                        }
                        deny(&st, Denial::KeysUnavailable);
                        Action::Pause
                    }
                }
            }
        }
    }
}

impl Context for Request {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let Some(p) = self.pending.take() else { return };
        if p.token != token {
            return;
        }
        let status = self.get_http_call_response_header(":status");
        let body = self.get_http_call_response_body(0, body_size);
        if p.introspection {
            let state = self.state.clone();
            let mut st = state.borrow_mut();
            let waiters = st
                .flights
                .remove(&(p.provider, p.found.token.clone()))
                .map(|f| f.waiters)
                .unwrap_or_default();
            let outcome = introspection_outcome(
                &mut st,
                p.provider,
                &p.found.token,
                status.as_deref(),
                &body.unwrap_or_default(),
            );
            if settle(&st, &outcome, &p.found, p.rule) == Action::Continue {
                self.resume_http_request();
            }
            wake(&st, waiters, &outcome);
            return;
        }
        let now = now_secs();
        let waiters = {
            let mut st = self.state.borrow_mut();
            let ok = take_jwks(&st, p.provider, status, body, now, "fetch");
            if p.lease {
                st.release_lease(p.provider, ok, now);
            }
            st.fetch_ended(p.provider);
            st.waiters_for(p.provider)
        };
        // Decide again with what the shared data holds now; no second fetch.
        if self.decide(p.found, p.rule, false) == Action::Continue {
            self.resume_http_request();
        }
        // Then the requests that waited for this fetch (each becomes the current
        // context in turn).
        wake_key_waiters(&mut self.state.borrow_mut(), waiters, now);
    }

    /// A request that ends while its introspection is in flight leaves the waiters to
    /// the root context; with none, the flight is forgotten.
    fn on_done(&mut self) -> bool {
        {
            // A request gone while it waited for keys, or while its own fetch was in
            // flight (the tick serves those that waited on it: the lease runs out).
            let mut st = self.state.borrow_mut();
            let context = self.context;
            st.key_waiters.retain(|w| w.context != context);
            if let Some(p) = self.pending.as_ref().filter(|p| !p.introspection) {
                st.fetch_ended(p.provider);
            }
        }
        if let Some(p) = self.pending.take().filter(|p| p.introspection) {
            let mut st = self.state.borrow_mut();
            let key = (p.provider, p.found.token.clone());
            if let Some(f) = st.flights.get_mut(&key) {
                if f.waiters.is_empty() {
                    st.flights.remove(&key);
                } else {
                    f.orphaned = true;
                }
            }
        }
        true
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // One read of the whole map serves the rule, the stripping and the token: each
        // host call costs more than the work done with its answer.
        let raw = kit::glue::RawMap::read(proxy_wasm::types::MapType::HttpRequestHeaders);
        let headers = raw.pairs();
        let value = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_ref())
        };
        let (path, method) = (value(":path"), value(":method"));
        let state = self.state.clone();
        let st = state.borrow();
        // A client never sets its own identity, whatever the route.
        for h in &st.strip {
            if headers.iter().any(|(k, _)| k == h) {
                self.set_http_request_header(h, None);
            }
        }
        // No path, or one a lax upstream would route elsewhere: refused before any rule
        // (a request that matches no rule would otherwise pass unauthenticated).
        let rule = match st.config.route(path, method) {
            Ok(Some(rule)) => rule,
            Ok(None) => return Action::Continue,
            Err(refusal) => {
                deny(&st, Denial::Path(refusal));
                return Action::Pause;
            }
        };
        if st.config.rules[rule].providers.is_empty() {
            return Action::Continue;
        }
        let allow_missing = st.config.rules[rule].allow_missing;
        match extract::find(&st.config, &st.config.rules[rule], &headers, path) {
            Err(e) => {
                deny(&st, Denial::Invalid(e));
                Action::Pause
            }
            Ok(None) if allow_missing => Action::Continue,
            Ok(None) => {
                deny(&st, Denial::Missing);
                Action::Pause
            }
            Ok(Some(found)) => {
                drop(st);
                self.decide(found, rule, true)
            }
        }
    }
}
