//! Days of traffic, simulated: a week of virtual time through each filter alone and
//! through the chain jwt-auth → tier-limiter → header-forwarder, on the test bed's
//! virtual clock, with what each filter holds watched day by day.
//!
//! The traffic (the same week every run: a fixed seed; the filters' own randomness, such
//! as session ids and the limiter's hash key, varies):
//! - jwt-auth: per virtual hour 36 returning users and 12 new ones, each with a fresh
//!   ES256 token for the hour, used 3 times in it; 6 services with day-long tokens
//!   calling every 10 minutes; 3 bad tokens (unknown key, expired, garbage). ~183
//!   requests an hour, ~30 000 in the week. The IdP's JWKS rotates daily: a new key
//!   published at 00:00, signing from 01:00, the old key dropped at 03:00.
//! - tier-limiter: per hour 80 returning and 16 new API keys, 40 returning and 16 new
//!   client addresses (IPv4 and IPv6 networks), 2 requests each, and one client
//!   bursting 10 requests at once: ~316 requests an hour, ~53 000 in the week.
//! - header-forwarder: 150 requests an hour from returning and new clients, headers and
//!   query strings of varied lengths, one header-injection attempt an hour.
//! - oidc: 60 returning users a day and 10 new ones log in, use their session every
//!   10 minutes for 2 to 4 hours (access tokens live 15 minutes: refreshes), then log
//!   out from the application, are logged out by the IdP (back-channel), or just
//!   leave; the copied cookie of a logged-out session is refused. ~1 400 requests a
//!   day. ID tokens and logout tokens follow the same daily key rotation.
//! - jwt-auth's machine clients: 12 services with week-long tokens on a static key,
//!   each calling every 10 minutes, past the token cache's TTL: ~12 000 requests.
//! - the chain: per hour 24 returning and 6 new users with hourly tokens of three
//!   tiers, 2 requests each, and 40 anonymous requests to a public route by address.
//!
//! What is asserted, and why:
//! - Guest memory after the first day (the warm-up: every cache and table a filter
//!   keeps has filled by then at these volumes) grows by at most `SLACK`, two 64 KiB
//!   wasm pages, to the end of the week (checked as each day ends). Linear memory never shrinks, so "flat" means it stops growing; the slack is for
//!   the allocator, which takes a fresh page when a rarely-seen size (a two-key JWKS
//!   on a rotation morning, a longer token) finds its free lists fragmented. Measured:
//!   jwt-auth takes one page and oidc two, on day 4 or 5 (the day varies from run to
//!   run), and nothing more in a run of 21 days; the others none. A leak of even 20
//!   bytes a request passes the slack within the week at these volumes.
//! - No request context and no call is left between requests.
//! - Host memory the filters make the host hold stays within what their own
//!   configuration and constants allow, every day: jwt-auth one JWKS document and two
//!   8-byte leases per provider; tier-limiter `max_buckets` slots of fixed size and
//!   its hash key; header-forwarder nothing; oidc its documents, leases and bounded
//!   lists. And it stops growing: after the warm-up each day's figures are no larger
//!   than the largest of the days before (the limiter's table is sized to be full
//!   after the first day), with two exceptions bounded by construction: oidc's table
//!   of 256 refreshed sessions, which fills slot by slot as sessions land in it
//!   (counted separately), and its login-state shards and lazily pruned lists, which
//!   may settle by a few lines (see `oidc_bound`). No queue, no property kept past a
//!   request, no metric name added after start, and no host limit refused.
//!
//! Volume is chosen so the file takes under two minutes of CPU in the debug test
//! profile (about a minute on two idle cores); ES256 verification in wasm is the
//! dominant cost, so tokens are reused within their hour.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use jwt_mint::{Key, jwks};
use portcullis_testbed::{
    Held, HttpCallRequest, Limit, MetricValue, Reply, Request, Response, TestBed, VmLimits, wasm,
};
use serde_json::{Value, json};

/// The test bed's clock starts at 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600;
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
const DAYS: u64 = 7;
/// The clock moves in steps of this many seconds; traffic is sent at the start of a
/// step, and each filter's tick (1 s) fires once per step.
const STEP: u64 = 10;
const STEPS_PER_HOUR: u64 = HOUR / STEP;
/// Guest memory a filter may take after the warm-up (see the module doc).
const SLACK: usize = 2 * 65536;
const ISS: &str = "https://idp.test";

/// A small deterministic generator (SplitMix64): the same week on every run.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The IdP's signing keys, one per day: key `d` is published at 00:00 of day `d`, signs
/// from 01:00, and the key of the day before is dropped at 03:00 (every token it signed
/// has expired by then).
struct Rotation {
    keys: Vec<Rc<Key>>,
}

impl Rotation {
    fn new() -> Rotation {
        Rotation {
            keys: (0..=DAYS)
                .map(|d| Rc::new(Key::ec256(&format!("key-{d:02}"))))
                .collect(),
        }
    }

    /// The key that signs at `t` seconds into the week.
    fn signing(&self, t: u64) -> &Key {
        let (day, into) = (t / DAY, t % DAY);
        let d = if day > 0 && into < HOUR { day - 1 } else { day };
        &self.keys[d as usize]
    }

    /// The JWKS the IdP serves at `t`.
    fn jwks(&self, t: u64) -> Value {
        let (day, into) = (t / DAY, t % DAY);
        let d = day as usize;
        if day > 0 && into < 3 * HOUR {
            jwks(&[&self.keys[d - 1], &self.keys[d]])
        } else {
            jwks(&[&self.keys[d]])
        }
    }

    /// The largest JWKS it ever serves (two keys).
    fn largest_jwks(&self) -> usize {
        (1..self.keys.len())
            .map(|d| jwks(&[&self.keys[d - 1], &self.keys[d]]).to_string().len())
            .max()
            .unwrap_or(0)
    }
}

/// Runs a week: `traffic(bed, step)` sends what falls at the start of step `step`
/// (`step * STEP` seconds into the week; `now` says the same to the scripted IdP),
/// then the clock moves one step. Between steps no request context and no call may
/// be left. Returns what each filter held at the end of each day.
fn week(
    bed: &mut TestBed,
    filters: usize,
    now: &Cell<u64>,
    traffic: impl FnMut(&mut TestBed, u64),
) -> Vec<Vec<Held>> {
    week_with(bed, filters, now, traffic, |_| {})
}

/// [`week`], calling `day_end` at the end of each day too.
fn week_with(
    bed: &mut TestBed,
    filters: usize,
    now: &Cell<u64>,
    mut traffic: impl FnMut(&mut TestBed, u64),
    mut day_end: impl FnMut(&TestBed),
) -> Vec<Vec<Held>> {
    let mut days = Vec::new();
    for step in 0..DAYS * DAY / STEP {
        now.set(step * STEP);
        traffic(bed, step);
        bed.advance_in_steps(Duration::from_secs(STEP), Duration::from_secs(STEP));
        for i in 0..filters {
            let f = bed.filter(i);
            assert_eq!(
                (f.live_contexts(), f.pending_calls()),
                (0, 0),
                "filter {i}, step {step}: contexts and calls left"
            );
        }
        if ((step + 1) * STEP).is_multiple_of(DAY) {
            let today: Vec<Held> = (0..filters).map(|i| bed.held(i)).collect();
            // Guest memory is checked as each day ends too, so a leak is named as such
            // before it exhausts the VM and the requests start failing.
            if let Some(warm) = days.first() {
                let warm: &Vec<Held> = warm;
                for i in 0..filters {
                    assert!(
                        today[i].memory_bytes <= warm[i].memory_bytes + SLACK,
                        "filter {i}: guest memory grew from {} after day 1 to {} after day {}",
                        warm[i].memory_bytes,
                        today[i].memory_bytes,
                        days.len() + 1
                    );
                }
            }
            days.push(today);
            day_end(bed);
        }
    }
    for limit in Limit::ALL {
        assert_eq!(bed.refusals(limit), 0, "the host refused {limit:?}");
    }
    days
}

/// The default VM limits but a callback timeout of 30 s: the 500 ms default is wall
/// time, and on a loaded machine a starved test process can pass it within one ES256
/// verification and fail the filter (two filters failed so here, at load 12 on 2 cores
/// with a build alongside, memory flat); this file is about memory, `hostile.rs`
/// tests the timeout.
fn patient() -> VmLimits {
    VmLimits {
        callback_timeout: Duration::from_secs(30),
        ..VmLimits::default()
    }
}

/// What a filter's configuration and constants let it make the host hold, and by how
/// much a day's figures may pass the largest of the days before once warm.
struct Bound {
    shared_keys: usize,
    shared_bytes: usize,
    /// Keys that may still appear after the warm-up: a family of a fixed number of
    /// keys that random values fill one by one (oidc's login-state shards).
    settle_keys: usize,
    /// Bytes a day may pass the days before by: lines of lists that drop expired
    /// entries only when next written (see oidc's bound).
    settle_bytes: usize,
}

impl Bound {
    /// A bound that allows no settling: the figures stop growing after the warm-up.
    fn fixed(shared_keys: usize, shared_bytes: usize) -> Bound {
        Bound {
            shared_keys,
            shared_bytes,
            settle_keys: 0,
            settle_bytes: 0,
        }
    }
}

/// The checks of the module doc for filter `i` of a week's figures: guest memory flat
/// after the first day within `SLACK`, host memory within `bound` every day and after the warm-up no larger than
/// before (but for the bound's settling allowance), nothing else held.
fn assert_steady(name: &str, days: &[Vec<Held>], i: usize, bound: &Bound) {
    let figures: Vec<Held> = days.iter().map(|d| d[i]).collect();
    eprintln!("{name}: day, guest memory, shared-data keys and bytes, metric names");
    for (d, h) in figures.iter().enumerate() {
        eprintln!(
            "{name}: {} {:>9} {:>5} {:>9} {:>3}",
            d + 1,
            h.memory_bytes,
            h.shared_keys,
            h.shared_bytes,
            h.metrics
        );
    }
    let warm = figures[0];
    for (d, h) in figures.iter().enumerate() {
        let day = d + 1;
        assert!(
            h.memory_bytes <= warm.memory_bytes + SLACK,
            "{name}: guest memory grew from {} after day 1 to {} after day {day}",
            warm.memory_bytes,
            h.memory_bytes
        );
        assert!(
            h.shared_keys <= bound.shared_keys,
            "{name}, day {day}: {} shared-data keys, bound {}",
            h.shared_keys,
            bound.shared_keys
        );
        assert!(
            h.shared_bytes <= bound.shared_bytes,
            "{name}, day {day}: {} shared-data bytes, bound {}",
            h.shared_bytes,
            bound.shared_bytes
        );
        assert_eq!(
            (h.queues, h.queued_items, h.queued_bytes),
            (0, 0, 0),
            "{name}, day {day}: queues"
        );
        assert_eq!(h.metrics, warm.metrics, "{name}, day {day}: metric names");
        if d >= 1 {
            let before = &figures[..d];
            let most = |f: fn(&Held) -> usize| before.iter().map(f).max().unwrap_or(0);
            assert!(
                h.shared_keys <= most(|h| h.shared_keys) + bound.settle_keys,
                "{name}: shared-data keys still growing on day {day}: {figures:?}"
            );
            assert!(
                h.shared_bytes <= most(|h| h.shared_bytes) + bound.settle_bytes,
                "{name}: shared-data bytes still growing on day {day}: {figures:?}"
            );
        }
    }
}

fn counter(bed: &TestBed, name: &str) -> u64 {
    match bed.metric(name) {
        Some(MetricValue::Counter(n)) => n,
        _ => 0,
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn from(addr: &str) -> SocketAddr {
    addr.parse().unwrap()
}

// ---- jwt-auth

/// jwt-auth's configuration: the rotating IdP's keys; with `public`, `/public` lets a
/// request without a token through (as the chain's anonymous clients).
fn jwt_provider(cache: Option<usize>, public: bool) -> Value {
    let mut c = json!({
        "providers": {"idp": {
            "issuer": ISS,
            "audiences": ["orders-api"],
            "algorithms": ["ES256"],
            "remote_jwks": {"cluster": "idp", "path": "/jwks", "cache_duration_seconds": 600, "refetch_interval_seconds": 30},
            "consumer": {"id_claim": "sub", "tier_claim": "tier"}
        }},
        "rules": [
            {"match": {"path_separated_prefix": "/public"}, "requires": {"provider": "idp"}, "allow_missing": true},
            {"match": {"prefix": "/"}, "requires": {"provider": "idp"}}
        ]
    });
    if !public {
        c["rules"].as_array_mut().unwrap().remove(0);
    }
    if let Some(n) = cache {
        c["cache_entries"] = json!(n);
    }
    c
}

/// A scripted IdP serving the rotating JWKS at `/jwks`.
fn jwks_cluster(
    rotation: &Rc<Rotation>,
    now: &Rc<Cell<u64>>,
) -> impl Fn(&HttpCallRequest) -> Reply + 'static {
    let (r, n) = (rotation.clone(), now.clone());
    move |req| match req.headers.get_str(":path") {
        Some("/jwks") => Reply::json(&r.jwks(n.get())),
        _ => Reply::status(404, &[], "not found"),
    }
}

/// Who sends what in one hour: (step within the hour, identity, tier).
fn user_hour(
    dice: &mut Dice,
    hour: u64,
    regulars: u64,
    pool: u64,
    newcomers: u64,
    uses: u64,
) -> Vec<(u64, String, &'static str)> {
    const TIERS: [&str; 3] = ["free", "standard", "premium"];
    let of_day = hour % 24;
    let mut who: Vec<(String, &str)> = (0..pool)
        // The same users at the same hour every day: they come back.
        .filter(|i| (i * 37 + of_day * 11) % pool < regulars)
        .map(|i| (format!("user-{i:04}"), TIERS[(i % 3) as usize]))
        .collect();
    who.extend((0..newcomers).map(|j| (format!("new-{hour:04}-{j:02}"), "free")));
    let mut plan = Vec::new();
    for (name, tier) in who {
        for _ in 0..uses {
            plan.push((dice.below(STEPS_PER_HOUR), name.clone(), tier));
        }
    }
    plan.sort();
    plan
}

/// Tokens of the hour: one per identity, minted at its first request.
struct Tokens {
    rotation: Rc<Rotation>,
    hour: u64,
    by_name: HashMap<String, String>,
}

impl Tokens {
    fn get(&mut self, name: &str, tier: &str, t: u64) -> String {
        if t / HOUR != self.hour {
            self.hour = t / HOUR;
            self.by_name.clear();
        }
        let rotation = &self.rotation;
        self.by_name
            .entry(name.to_owned())
            .or_insert_with(|| {
                let claims = json!({"iss": ISS, "aud": "orders-api", "sub": name, "tier": tier,
                    "scope": "orders:read", "iat": T0 + t, "exp": T0 + t + HOUR});
                bearer(&rotation.signing(t).sign("ES256", claims))
            })
            .clone()
    }
}

#[test]
fn jwt_auth_holds_steady_over_a_week() {
    let rotation = Rc::new(Rotation::new());
    let now = Rc::new(Cell::new(0));
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), jwt_provider(None, false).to_string())
        .limits(patient())
        .cluster("idp", jwks_cluster(&rotation, &now))
        .build()
        .unwrap();
    let ghost = Key::ec256("ghost");
    let mut dice = Dice(1);
    let mut tokens = Tokens {
        rotation: rotation.clone(),
        hour: u64::MAX,
        by_name: HashMap::new(),
    };
    let mut services: Vec<String> = Vec::new();
    let mut plan: Vec<(u64, String, &str)> = Vec::new();
    let (mut allowed, mut refused) = (0u64, 0u64);
    let days = week(&mut bed, 1, &now, |bed, step| {
        let t = step * STEP;
        let into = step % STEPS_PER_HOUR;
        if into == 0 {
            plan = user_hour(&mut dice, t / HOUR, 36, 150, 12, 3);
        }
        // Services renew a day-long token at 02:00 (and when the week starts).
        if t % DAY == 2 * HOUR || services.is_empty() {
            services = (0..6)
                .map(|i| {
                    let claims = json!({"iss": ISS, "aud": "orders-api", "sub": format!("svc-{i:02}"),
                        "tier": "premium", "iat": T0 + t, "exp": T0 + t + DAY});
                    bearer(&rotation.signing(t).sign("ES256", claims))
                })
                .collect();
        }
        let mut send = |bed: &mut TestBed, auth: &str, want: u16| {
            let res = bed.send(Request::get("/orders/7").header("authorization", auth));
            assert_eq!(res.status, want, "at {t} s: {}", res.text());
            if want == 200 {
                allowed += 1;
            } else {
                refused += 1;
            }
        };
        for (_, name, tier) in plan.iter().filter(|(s, _, _)| *s == into) {
            let token = tokens.get(name, tier, t);
            send(bed, &token, 200);
        }
        for (i, svc) in services.iter().enumerate() {
            if step % 60 == i as u64 * 7 {
                send(bed, svc, 200);
            }
        }
        if into == 100 {
            let c = json!({"iss": ISS, "aud": "orders-api", "sub": "mallory", "iat": T0 + t, "exp": T0 + t + HOUR});
            send(bed, &bearer(&ghost.sign("ES256", c)), 401);
            let old = json!({"iss": ISS, "aud": "orders-api", "sub": "user-0001",
                "iat": T0 + t - 2 * HOUR, "exp": T0 + t - HOUR});
            send(bed, &bearer(&rotation.signing(t).sign("ES256", old)), 401);
            send(bed, "Bearer eyJhbGciOiJFUzI1NiJ9.e30.AAAA", 401);
        }
    });
    assert_eq!(counter(&bed, "jwt_auth_allowed"), allowed);
    assert!(allowed > 25_000, "{allowed} requests allowed");
    assert_eq!(refused, 3 * 24 * DAYS);
    assert_steady("jwt-auth", &days, 0, &jwt_bound("jwt_auth-0", &rotation));
}

/// Machine clients: 12 services holding tokens that last the week, signed by a key
/// configured inline, each calling every 10 minutes, twice the cache TTL (300 s), so
/// every call finds its cached verification expired and verifies again. The cache
/// (1000 entries) never fills: the regime in which a cache that loses track of
/// expired entries grows for ever (jwt-auth before "the verified-token cache is
/// bounded by construction" grew here from 1.77 MB after day 1 to 2.29 MB after day 2,
/// and in a week ran its VM out of memory: requests failed on day 6).
#[test]
fn jwt_auth_machine_clients_hold_steady_over_a_week() {
    let key = Key::ec256("static");
    let now = Rc::new(Cell::new(0));
    let config = json!({
        "providers": {"idp": {
            "issuer": ISS, "audiences": ["orders-api"], "algorithms": ["ES256"],
            "local_jwks": jwks(&[&key])
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    });
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), config.to_string())
        .limits(patient())
        .build()
        .unwrap();
    let services: Vec<String> = (0..12)
        .map(|i| {
            let claims = json!({"iss": ISS, "aud": "orders-api", "sub": format!("svc-{i:02}"),
                "iat": T0, "exp": T0 + 8 * DAY});
            bearer(&key.sign("ES256", claims))
        })
        .collect();
    let mut sent = 0u64;
    let days = week(&mut bed, 1, &now, |bed, step| {
        for (i, svc) in services.iter().enumerate() {
            if step % 60 == i as u64 * 5 {
                let res = bed.send(Request::get("/orders/7").header("authorization", svc));
                assert_eq!(res.status, 200, "{}", res.text());
                sent += 1;
            }
        }
    });
    assert_eq!(sent, 12 * 6 * 24 * DAYS);
    assert_eq!(counter(&bed, "jwt_auth_allowed"), sent);
    assert_steady("jwt-auth machine clients", &days, 0, &Bound::fixed(0, 0));
}

/// jwt-auth's bound for its one provider under the plugin name `root`: the JWKS
/// after its 8-byte fetch time (two keys at most, on rotation mornings) and two
/// 8-byte leases (`lease` for the refresh, `kid` for a refetch forced by an unknown key).
fn jwt_bound(root: &str, rotation: &Rotation) -> Bound {
    let key = |what: &str| format!("jwt-auth/{root}/idp/{what}").len();
    Bound::fixed(
        3,
        key("jwks") + 8 + rotation.largest_jwks() + key("lease") + 8 + key("kid") + 8,
    )
}

// ---- tier-limiter

/// The limiter's `max_buckets`: small enough that a day's identities (hundreds to
/// over a thousand) fill every slot on the first day, so the table is full after the
/// warm-up and its keys and bytes (fixed-size slots) cannot move; large enough that
/// the 8 slots an identity may probe are never all busy (a slot is busy while its
/// minute window lives: a handful at a time at these volumes).
const SLOTS: usize = 64;

fn limiter(max_buckets: usize) -> Value {
    json!({
        "identify_by": ["consumer", "header:x-api-key", "ip"],
        "tiers": {
            "free": {"second": 5, "minute": 100},
            "standard": {"second": 20, "minute": 600},
            "premium": {"second": 100, "minute": 3000}
        },
        "default_tier": "free",
        "anonymous": {"second": 2, "minute": 30},
        "max_buckets": max_buckets
    })
}

/// Slots of one window pair: a 16-byte tag, the full-at and last times, two windows.
const SLOT_VALUE: usize = 16 + 8 + 8 + 2 * 8;

/// Bound of a limiter table of `slots` under the plugin name `root`: every slot key
/// (at most as long as the largest index) with its fixed-size value, and the hash key.
fn limiter_bound(root: &str, slots: usize) -> Bound {
    let slot_key = format!("tier-limiter/{root}/slot/{}", slots - 1).len();
    let hash_key = format!("tier-limiter/{root}/hash-key").len();
    Bound::fixed(slots + 1, slots * (slot_key + SLOT_VALUE) + hash_key + 16)
}

#[test]
fn tier_limiter_holds_steady_over_a_week() {
    let now = Rc::new(Cell::new(0));
    let mut bed = TestBed::new()
        .filter(wasm("tier_limiter"), limiter(SLOTS).to_string())
        .limits(patient())
        .build()
        .unwrap();
    let mut dice = Dice(2);
    // (step within the hour, request)
    let mut plan: Vec<(u64, Request)> = Vec::new();
    let mut sent = 0u64;
    let days = week(&mut bed, 1, &now, |bed, step| {
        let t = step * STEP;
        let into = step % STEPS_PER_HOUR;
        let hour = t / HOUR;
        if into == 0 {
            let of_day = hour % 24;
            let mut reqs = Vec::new();
            for i in (0..400u64).filter(|i| (i * 13 + of_day * 17) % 400 < 80) {
                reqs.push(Request::get("/v1/items").header("x-api-key", &format!("key-{i:05}")));
            }
            for j in 0..16 {
                reqs.push(
                    Request::get("/v1/items").header("x-api-key", &format!("new-{hour:05}-{j:02}")),
                );
            }
            for i in (0..200u64).filter(|i| (i * 7 + of_day * 29) % 200 < 40) {
                let a = if i % 4 == 0 {
                    format!("[2001:db8:{i:x}::{:x}]:443", dice.below(65536))
                } else {
                    format!("198.51.100.{}:{}", i % 250, 1024 + dice.below(60000))
                };
                reqs.push(Request::get("/v1/items").from_address(from(&a)));
            }
            for j in 0..16u64 {
                let n = hour * 16 + j;
                let a = format!("203.0.{}.{}:5000", (n / 250) % 250, n % 250);
                reqs.push(Request::get("/v1/items").from_address(from(&a)));
            }
            plan = reqs
                .into_iter()
                .flat_map(|r| {
                    let (a, b) = (dice.below(STEPS_PER_HOUR), dice.below(STEPS_PER_HOUR));
                    [(a, r.clone()), (b, r)]
                })
                .collect();
            plan.sort_by_key(|(s, _)| *s);
        }
        for (_, req) in plan.iter().filter(|(s, _)| *s == into) {
            let res = bed.send(req.clone());
            assert_eq!(res.status, 200, "at {t} s: {}", res.text());
            sent += 1;
        }
        // One client bursts: the anonymous plan's 2 a second get through, then 429.
        if into == 200 {
            let burst = (0..10)
                .map(|_| {
                    bed.send(Request::get("/v1/items").header("x-api-key", "greedy"))
                        .status
                })
                .collect::<Vec<_>>();
            assert_eq!(burst.iter().filter(|s| **s == 200).count(), 2, "{burst:?}");
            assert!(burst[2..].iter().all(|s| *s == 429), "{burst:?}");
        }
    });
    assert!(sent > 45_000, "{sent} requests");
    assert_eq!(counter(&bed, "tier_limiter_table_full"), 0);
    assert_eq!(counter(&bed, "tier_limiter_contended"), 0);
    assert_steady(
        "tier-limiter",
        &days,
        0,
        &limiter_bound("tier_limiter-0", SLOTS),
    );
    assert_eq!(
        days[0][0].shared_keys,
        SLOTS + 1,
        "the table filled on the first day"
    );
}

// ---- header-forwarder

fn forwarder() -> Value {
    json!({
        "request": {
            "remove": {"headers": ["x-internal"], "querystring": ["debug"]},
            "rename": {"headers": {"x-legacy-client": "x-client"}},
            "add": {"headers": {"x-who": "$(consumer.username)", "x-page": "$(query.page)",
                "x-client-echo": "$(headers.x-client)", "x-from": "$(source.address)"},
                "querystring": {"src": "gw"}},
            "append": {"headers": {"x-path": "$(request.path)"}}
        },
        "response": {"remove": {"headers": ["server"]}, "add": {"headers": {"x-request-id": "$(request.id)"}}},
        "forward_authorization": true
    })
}

#[test]
fn header_forwarder_holds_steady_over_a_week() {
    let now = Rc::new(Cell::new(0));
    let mut bed = TestBed::new()
        .filter(wasm("header_forwarder"), forwarder().to_string())
        .limits(patient())
        .build()
        .unwrap();
    let mut dice = Dice(3);
    let mut n = 0u64;
    let days = week(&mut bed, 1, &now, |bed, step| {
        // 150 an hour: one request in most steps, from returning and new clients.
        if step % 12 >= 5 {
            return;
        }
        n += 1;
        let returning = dice.below(3) > 0;
        let client = if returning {
            format!("client-{:04}", dice.below(300))
        } else {
            format!("new-{n:08}")
        };
        let long = "v".repeat(dice.below(3000) as usize);
        let id = format!("req-{n:010}");
        let mut req = Request::get(&format!(
            "/items/{}?page={}&debug=1",
            n % 977,
            dice.below(50)
        ))
        .header("x-request-id", &id)
        .header("x-internal", "secret")
        .header("x-long", &long)
        .from_address(from(&format!("192.0.2.{}:4000", n % 200)));
        // Once an hour a client tries to smuggle a header through the echo.
        let injection = n.is_multiple_of(150);
        req = if injection {
            req.header("x-client", "evil\r\nx-admin: 1")
        } else if n.is_multiple_of(2) {
            req.header("x-legacy-client", &client)
        } else {
            req.header("x-client", &client)
        };
        let res = bed.send(req);
        assert_eq!(res.status, 200);
        assert_eq!(res.header("x-request-id"), Some(id.as_str()));
        assert_eq!(res.header("server"), None);
        assert_eq!(res.upstream_header("x-internal"), None);
        assert_eq!(res.upstream_header("x-who"), None, "no verified consumer");
        // Templates read the request as the client sent it (Kong's order): a renamed
        // header reaches the upstream under its new name but is not echoed.
        if injection {
            assert_eq!(res.upstream_header("x-client-echo"), None);
        } else if n.is_multiple_of(2) {
            assert_eq!(
                res.upstream_header("x-client").as_deref(),
                Some(client.as_str())
            );
            assert_eq!(res.upstream_header("x-legacy-client"), None);
            assert_eq!(res.upstream_header("x-client-echo"), None);
        } else {
            assert_eq!(res.upstream_header("x-client-echo"), Some(client));
        }
    });
    assert!(n > 20_000, "{n} requests");
    assert!(counter(&bed, "header_forwarder_injection_blocked") >= 24 * DAYS);
    assert_steady("header-forwarder", &days, 0, &Bound::fixed(0, 0));
}

// ---- the chain

#[test]
fn the_chain_holds_steady_over_a_week() {
    let rotation = Rc::new(Rotation::new());
    let now = Rc::new(Cell::new(0));
    let fwd = json!({"request": {"add": {"headers": {"x-consumer": "$(consumer.id)", "x-tier": "$(consumer.tier)"}}},
        "response": {"add": {"headers": {"x-request-id": "$(request.id)"}}}});
    let mut bed = TestBed::new()
        // A cache this traffic fills on the first day (30 new tokens an hour).
        .filter(wasm("jwt_auth"), jwt_provider(Some(500), true).to_string())
        .limits(patient())
        .filter(wasm("tier_limiter"), limiter(SLOTS).to_string())
        .limits(patient())
        .filter(wasm("header_forwarder"), fwd.to_string())
        .limits(patient())
        .cluster("idp", jwks_cluster(&rotation, &now))
        .build()
        .unwrap();
    let mut dice = Dice(4);
    let mut tokens = Tokens {
        rotation: rotation.clone(),
        hour: u64::MAX,
        by_name: HashMap::new(),
    };
    let mut plan: Vec<(u64, String, &str)> = Vec::new();
    let mut anonymous: Vec<(u64, String)> = Vec::new();
    let mut sent = 0u64;
    let days = week(&mut bed, 3, &now, |bed, step| {
        let t = step * STEP;
        let into = step % STEPS_PER_HOUR;
        let hour = t / HOUR;
        if into == 0 {
            plan = user_hour(&mut dice, hour, 24, 120, 6, 2);
            anonymous = (0..40u64)
                .map(|i| {
                    let a = if i < 30 {
                        format!("198.51.100.{}:3000", (i * 3 + hour % 24) % 250)
                    } else {
                        format!("203.0.113.{}:3000", (hour * 10 + i) % 250)
                    };
                    (dice.below(STEPS_PER_HOUR), a)
                })
                .collect();
        }
        for (_, name, tier) in plan.iter().filter(|(s, _, _)| *s == into) {
            let token = tokens.get(name, tier, t);
            let res = bed.send(
                Request::get("/orders/1")
                    .header("authorization", &token)
                    .header("x-consumer-id", "spoofed"),
            );
            assert_eq!(res.status, 200, "at {t} s: {}", res.text());
            assert_eq!(
                res.upstream_header("x-consumer").as_deref(),
                Some(name.as_str())
            );
            assert_eq!(res.upstream_header("x-tier").as_deref(), Some(*tier));
            assert_eq!(
                res.upstream_header("authorization").as_deref(),
                Some(token.as_str())
            );
            assert!(res.header("x-ratelimit-remaining-second").is_some());
            sent += 1;
        }
        for (_, a) in anonymous.iter().filter(|(s, _)| *s == into) {
            let res = bed.send(Request::get("/public/catalog").from_address(from(a)));
            assert_eq!(res.status, 200, "at {t} s: {}", res.text());
            assert_eq!(res.upstream_header("x-consumer"), None);
            sent += 1;
        }
    });
    assert!(sent > 15_000, "{sent} requests");
    assert_eq!(counter(&bed, "tier_limiter_table_full"), 0);
    assert_eq!(
        days[0][1].shared_keys,
        SLOTS + 1,
        "the limiter's table filled on the first day"
    );
    assert_steady(
        "chain jwt-auth",
        &days,
        0,
        &jwt_bound("jwt_auth-0", &rotation),
    );
    assert_steady(
        "chain tier-limiter",
        &days,
        1,
        &limiter_bound("tier_limiter-1", SLOTS),
    );
    assert_steady("chain header-forwarder", &days, 2, &Bound::fixed(0, 0));
}

// ---- oidc

const COOKIE: &str = "__Host-portcullis_session";
const LOGIN_COOKIE: &str = "__Host-portcullis_session_login";

/// A browser's cookies.
#[derive(Default, Clone, Debug)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, res: &Response) {
        for sc in res.headers.get_all("set-cookie") {
            let sc = String::from_utf8_lossy(sc);
            let (pair, attrs) = sc.split_once(';').unwrap_or((&sc, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.0.remove(k);
            } else {
                self.0.insert(k.to_owned(), v.to_owned());
            }
        }
    }

    fn header(&self) -> String {
        let pairs: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join("; ")
    }

    fn has_session(&self) -> bool {
        self.0
            .keys()
            .any(|k| k.starts_with(COOKIE) && !k.starts_with(LOGIN_COOKIE))
    }

    fn request(&self, method: &str, path: &str, accept: &str) -> Request {
        let r = Request::new(method, path).header("accept", accept);
        if self.0.is_empty() {
            r
        } else {
            r.header("cookie", &self.header())
        }
    }
}

fn query(location: &str) -> BTreeMap<String, String> {
    let q = location.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// The scripted OpenID provider: discovery, the rotating JWKS, and a token endpoint
/// for authorization codes (the code names the login it was issued for) and refresh
/// tokens (each usable once). Tokens it issues have fixed widths.
struct Provider {
    rotation: Rc<Rotation>,
    now: Rc<Cell<u64>>,
    /// code -> (sub, nonce, sid)
    codes: RefCell<HashMap<String, (String, String, String)>>,
    refresh: RefCell<HashMap<String, ()>>,
    issued: Cell<u64>,
}

impl Provider {
    fn answer(&self, req: &HttpCallRequest) -> Reply {
        let t = self.now.get();
        match req.headers.get_str(":path").unwrap_or("") {
            "/.well-known/openid-configuration" => Reply::json(&json!({
                "issuer": ISS,
                "authorization_endpoint": "https://idp.test/authorize",
                "token_endpoint": "https://idp.test/token",
                "jwks_uri": "https://idp.test/jwks",
                "end_session_endpoint": "https://idp.test/logout"
            })),
            "/jwks" => Reply::json(&self.rotation.jwks(t)),
            "/token" => {
                let body: BTreeMap<String, String> =
                    form_urlencoded::parse(&req.body).into_owned().collect();
                let n = self.issued.get() + 1;
                self.issued.set(n);
                let mut answer = json!({
                    "access_token": format!("at-{n:010}"),
                    "token_type": "Bearer",
                    "expires_in": 900,
                    "refresh_token": format!("rt-{n:010}"),
                });
                match body.get("grant_type").map(String::as_str) {
                    Some("authorization_code") => {
                        let code = body.get("code").cloned().unwrap_or_default();
                        let Some((sub, nonce, sid)) = self.codes.borrow_mut().remove(&code) else {
                            return Reply::status(400, &[], r#"{"error":"invalid_grant"}"#);
                        };
                        let claims = json!({"iss": ISS, "aud": "web", "sub": sub, "sid": sid,
                            "preferred_username": sub, "tier": "standard", "nonce": nonce,
                            "iat": T0 + t, "exp": T0 + t + 300});
                        answer["id_token"] = json!(self.rotation.signing(t).sign("ES256", claims));
                    }
                    Some("refresh_token") => {
                        let rt = body.get("refresh_token").cloned().unwrap_or_default();
                        if self.refresh.borrow_mut().remove(&rt).is_none() {
                            return Reply::status(400, &[], r#"{"error":"invalid_grant"}"#);
                        }
                    }
                    _ => return Reply::status(400, &[], r#"{"error":"unsupported_grant_type"}"#),
                }
                self.refresh.borrow_mut().insert(format!("rt-{n:010}"), ());
                Reply::json(&answer)
            }
            _ => Reply::status(404, &[], "not found"),
        }
    }

    /// A back-channel logout token for `sid`.
    fn logout_token(&self, sid: &str, jti: &str) -> String {
        let t = self.now.get();
        self.rotation.signing(t).sign(
            "ES256",
            json!({"iss": ISS, "aud": "web", "iat": T0 + t, "jti": jti, "sid": sid,
                "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
        )
    }
}

/// How a visit ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    AppLogout,
    BackChannel,
    Leave,
}

/// One user's visit of the day: logs in at `start` (step of the day), then uses the
/// session every `every` steps, `uses` times, then ends it.
struct Visit {
    sub: String,
    start: u64,
    every: u64,
    uses: u64,
    end: End,
}

struct Browsing {
    jar: Jar,
    sid: String,
    used: u64,
}

#[test]
fn oidc_holds_steady_over_a_week() {
    let rotation = Rc::new(Rotation::new());
    let now = Rc::new(Cell::new(0));
    let idp = Rc::new(Provider {
        rotation: rotation.clone(),
        now: now.clone(),
        codes: RefCell::default(),
        refresh: RefCell::default(),
        issued: Cell::new(0),
    });
    let config = json!({
        "issuer": ISS,
        "client_id": "web",
        "client_secret": "web-secret",
        "redirect_uri": "https://app.test/callback",
        "scopes": ["openid", "profile", "offline_access"],
        "idp_cluster": "idp",
        "session": {"secrets": [{"id": "a", "secret": "s".repeat(40)}]},
        "logout": {"path": "/logout", "post_logout_redirect_uri": "https://app.test/bye"},
        "backchannel_logout_path": "/oidc/backchannel",
        "consumer": {"id_claim": "sub", "username_claim": "preferred_username", "tier_claim": "tier"}
    });
    let i = idp.clone();
    let mut bed = TestBed::new()
        .filter(wasm("oidc"), config.to_string())
        .limits(patient())
        .cluster("idp", move |req| i.answer(req))
        .build()
        .unwrap();
    let steps_per_day = DAY / STEP;
    let mut dice = Dice(5);
    let mut visits: Vec<Visit> = Vec::new();
    let mut active: HashMap<usize, Browsing> = HashMap::new();
    let mut revoked_checks = 0u64;
    let mut sessions = 0u64;
    let mut uses = 0u64;
    // The table of refreshed sessions each day: (keys, bytes).
    let mut tables: Vec<(usize, usize)> = Vec::new();
    let days = week_with(
        &mut bed,
        1,
        &now,
        |bed, step| {
            let t = step * STEP;
            let day = step / steps_per_day;
            let into = step % steps_per_day;
            if into == 0 {
                active.clear();
                // 60 returning users a day, 10 new ones; the same day shape every day.
                visits = (0..70u64)
                    .map(|i| Visit {
                        sub: if i < 60 {
                            format!("user-{i:04}")
                        } else {
                            format!("new-{day:02}-{i:04}")
                        },
                        start: (6 + i % 12) * STEPS_PER_HOUR + (i * 37) % STEPS_PER_HOUR,
                        every: 60 + dice.below(5),
                        uses: 12 + i % 13,
                        end: [End::AppLogout, End::BackChannel, End::Leave][(i % 3) as usize],
                    })
                    .collect();
            }
            for (v, visit) in visits.iter().enumerate() {
                if into == visit.start {
                    // Log in: the redirect to the IdP, the IdP's code, the callback.
                    let mut jar = Jar::default();
                    let res = bed.send(jar.request("GET", "/app/home", "text/html"));
                    assert_eq!(res.status, 302, "{}", res.text());
                    jar.take(&res);
                    let q = query(res.header("location").unwrap());
                    sessions += 1;
                    let sid = format!("sid-{sessions:08}");
                    let code = format!("code-{sessions:08}");
                    idp.codes.borrow_mut().insert(
                        code.clone(),
                        (visit.sub.clone(), q["nonce"].clone(), sid.clone()),
                    );
                    let res = bed.send(jar.request(
                        "GET",
                        &format!("/callback?code={code}&state={}", q["state"]),
                        "text/html",
                    ));
                    assert_eq!(res.status, 302, "at {t} s: {}", res.text());
                    jar.take(&res);
                    assert!(jar.has_session());
                    active.insert(v, Browsing { jar, sid, used: 0 });
                } else if into > visit.start && (into - visit.start).is_multiple_of(visit.every) {
                    let Some(b) = active.get_mut(&v) else {
                        continue;
                    };
                    if b.used < visit.uses {
                        b.used += 1;
                        uses += 1;
                        let res =
                            bed.send(b.jar.request("GET", "/app/api/items", "application/json"));
                        assert_eq!(res.status, 200, "{} at {t} s: {}", visit.sub, res.text());
                        assert_eq!(
                            res.upstream_header("x-consumer-id").as_deref(),
                            Some(visit.sub.as_str())
                        );
                        b.jar.take(&res);
                        continue;
                    }
                    let Some(b) = active.remove(&v) else {
                        continue;
                    };
                    match visit.end {
                        End::AppLogout => {
                            let res = bed.send(
                                b.jar
                                    .request("POST", "/logout", "text/html")
                                    .header("origin", "https://app.test")
                                    .header("sec-fetch-site", "same-origin"),
                            );
                            assert_eq!(res.status, 302, "{}", res.text());
                            let mut after = b.jar.clone();
                            after.take(&res);
                            assert!(!after.has_session());
                        }
                        End::BackChannel => {
                            let token = idp.logout_token(&b.sid, &format!("jti-{}", b.sid));
                            let res = bed.send(
                                Request::post("/oidc/backchannel", format!("logout_token={token}"))
                                    .header("content-type", "application/x-www-form-urlencoded"),
                            );
                            assert_eq!(res.status, 200, "{}", res.text());
                        }
                        End::Leave => continue,
                    }
                    // The cookie (or a copy of it) no longer opens a session.
                    let res = bed.send(b.jar.request("GET", "/app/api/items", "application/json"));
                    assert_eq!(res.status, 401, "{:?} {}", visit.end, res.text());
                    revoked_checks += 1;
                }
            }
        },
        |bed| tables.push(refreshed_table(bed)),
    );
    assert_eq!(sessions, 70 * DAYS);
    assert!(uses > 7_000, "{uses} session requests");
    assert!(revoked_checks >= 2 * 20 * DAYS, "{revoked_checks}");
    assert!(counter(&bed, "oidc_refreshes") > 3_000);
    // Its constants (filter/shared.rs, session.rs): the documents and two leases, 16
    // shards of at most 1024 used login states, 1024 sessions being refreshed, 4096
    // logout `jti`s, the revocation list of at most 4096 entries and its generation;
    // each entry at its largest. The table of 256 refreshed sessions fills slot by
    // slot as sessions land in it, so it is bounded on its own (256 sealed cookies)
    // and taken out of the rest, which must stop growing after the warm-up.
    for (d, (keys, bytes)) in tables.iter().enumerate() {
        eprintln!(
            "oidc: day {} refreshed-session slots {keys:>3} bytes {bytes:>7}",
            d + 1
        );
        assert!(
            *keys <= 256 && *bytes <= 256 * (REFRESHED_KEY + MAX_COOKIE),
            "day {}",
            d + 1
        );
    }
    let rest: Vec<Vec<Held>> = days
        .iter()
        .zip(&tables)
        .map(|(d, (keys, bytes))| {
            let mut h = d[0];
            h.shared_keys -= keys;
            h.shared_bytes -= bytes;
            vec![h]
        })
        .collect();
    assert_steady(
        "oidc (less refreshed sessions)",
        &rest,
        0,
        &oidc_bound(&rotation),
    );
}

const REFRESHED_KEY: usize = "oidc/oidc-0/refreshed/255".len();
/// The largest sealed session cookie: 4 cookies of 4 KiB at most (the browser's limit
/// per cookie, as the filter splits them).
const MAX_COOKIE: usize = 4 * 4096;

/// Keys and bytes of oidc's table of refreshed sessions now.
fn refreshed_table(bed: &TestBed) -> (usize, usize) {
    (0..256)
        .filter_map(|n| {
            let key = format!("oidc/oidc-0/refreshed/{n}");
            bed.shared_data(&key).map(|v| key.len() + v.len())
        })
        .fold((0, 0), |(k, b), len| (k + 1, b + len))
}

/// oidc's bound, but for the refreshed sessions: every key family at its cap, each
/// entry at its largest.
fn oidc_bound(rotation: &Rotation) -> Bound {
    let key = "oidc/oidc-0/".len() + "logout-jtis".len();
    // `<value> <expiry>` lines: a login state is 32 characters; our IdP's `jti`s fewer.
    let used = 32 + 1 + 20 + 1;
    // `<kind> <at> <until> <value> <sub>`, value and sub at most 512 bytes each before
    // escaping (which at most triples them).
    let revocation = 1 + 1 + 20 + 1 + 20 + 1 + 3 * 512 + 1 + 3 * 512 + 1;
    let families = [
        (1, 8 + 4096),                    // discovery (ours is ~250 bytes)
        (1, 8 + rotation.largest_jwks()), // jwks
        (2, 8),                           // lease/discovery, lease/jwks
        (16, 1024 * used),                // states/<shard>
        (1, 1024 * used),                 // refreshing
        (1, 4096 * used),                 // logout-jtis
        (1, 4096 * revocation + 24),      // revoked (and its floor line)
        (1, 8),                           // revoked-gen
    ];
    Bound {
        shared_keys: families.iter().map(|(n, _)| n).sum(),
        shared_bytes: families.iter().map(|(n, v)| n * (key + v)).sum(),
        // A login state lands in the shard its random first character picks, so a
        // shard may see its first login after the warm-up; and a list drops expired
        // lines only when next written, so how many wait at the day's end depends on
        // where the day's last random states landed: one line a shard, and a few
        // `jti`s. A leak of a few lines a day still shows within the week.
        settle_keys: 16,
        settle_bytes: (16 + 4) * used,
    }
}
