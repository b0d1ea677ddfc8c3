//! `tier-limiter` in the test bed, on the virtual clock.

use std::time::Duration;

use jwt_mint::{Key, jwks};
use portcullis_testbed::{MetricValue, Request, TestBed, wasm};
use serde_json::{Value, json};

fn limits() -> Value {
    json!({
        "identify_by": ["consumer", "header:x-api-key", "ip"],
        "tiers": {
            "free": {"second": 5, "hour": 1000},
            "standard": {"second": 20, "hour": 72000},
            "premium": {"second": 100, "burst": 200, "hour": 360000}
        },
        "default_tier": "free",
        "anonymous": {"second": 1, "minute": 30},
        "overrides": {"vip": {"second": 2}}
    })
}

/// jwt-auth (so the tier is verified) then the limiter.
fn chain(limiter: Value) -> (TestBed, Key) {
    let key = Key::ec256("k1");
    let auth = json!({
        "providers": {"idp": {"local_jwks": jwks(&[&key]), "algorithms": ["ES256"], "consumer": {"id_claim": "sub", "tier_claim": "tier"}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}, "allow_missing": true}]
    });
    let bed = TestBed::new()
        .filter(wasm("jwt_auth"), auth.to_string())
        .filter(wasm("tier_limiter"), limiter.to_string())
        .build()
        .unwrap();
    (bed, key)
}

fn token(key: &Key, sub: &str, tier: &str) -> String {
    format!(
        "Bearer {}",
        key.sign(
            "ES256",
            json!({"sub": sub, "tier": tier, "exp": 4_102_444_800u64})
        )
    )
}

fn burst(bed: &mut TestBed, req: impl Fn() -> Request, n: usize) -> usize {
    (0..n).filter(|_| bed.send(req()).status == 200).count()
}

#[test]
fn each_tier_gets_its_burst_then_its_refill() {
    let (mut bed, key) = chain(limits());
    let free = token(&key, "alice", "free");
    let premium = token(&key, "bob", "premium");
    assert_eq!(
        burst(
            &mut bed,
            || Request::get("/").header("authorization", &free),
            20
        ),
        5
    );
    assert_eq!(
        burst(
            &mut bed,
            || Request::get("/").header("authorization", &premium),
            300
        ),
        200,
        "premium's burst"
    );
    bed.advance(Duration::from_millis(1000));
    assert_eq!(
        burst(
            &mut bed,
            || Request::get("/").header("authorization", &free),
            20
        ),
        5,
        "refilled at 5/s"
    );
    bed.advance(Duration::from_millis(200));
    assert_eq!(
        burst(
            &mut bed,
            || Request::get("/").header("authorization", &free),
            20
        ),
        1,
        "0.2 s at 5/s is one token"
    );
    assert_eq!(
        burst(
            &mut bed,
            || Request::get("/").header("authorization", &premium),
            300
        ),
        120,
        "1.2 s at 100/s since its burst"
    );
}

#[test]
fn a_request_must_fit_every_window() {
    let limiter = json!({"tiers": {"t": {"second": 10, "minute": 12}}, "default_tier": "t", "identify_by": ["header:x-api-key"]});
    let mut bed = TestBed::new()
        .filter(wasm("tier_limiter"), limiter.to_string())
        .build()
        .unwrap();
    let req = || Request::get("/").header("x-api-key", "k");
    assert_eq!(burst(&mut bed, req, 20), 10);
    bed.advance(Duration::from_secs(1));
    assert_eq!(
        burst(&mut bed, req, 20),
        2,
        "the minute bucket had 2 left (plus 0.2 refilled)"
    );
    assert_eq!(
        bed.metric("tier_limiter_limited").map(|m| m.count()),
        Some(28)
    );
}

#[test]
fn refusals_carry_retry_after_and_both_header_families() {
    let (mut bed, key) = chain(limits());
    let free = token(&key, "carol", "free");
    let ok = bed.send(Request::get("/").header("authorization", &free));
    assert_eq!(ok.header("x-ratelimit-limit-second"), Some("5"));
    assert_eq!(ok.header("x-ratelimit-remaining-second"), Some("4"));
    assert_eq!(ok.header("x-ratelimit-limit-hour"), Some("1000"));
    assert_eq!(ok.header("x-ratelimit-remaining-hour"), Some("999"));
    assert_eq!(
        ok.header("ratelimit-policy"),
        Some("\"free-second\";q=5;w=1, \"free-hour\";q=1000;w=3600")
    );
    assert_eq!(
        ok.header("ratelimit"),
        Some("\"free-second\";r=4;t=1, \"free-hour\";r=999;t=4")
    );
    for _ in 0..4 {
        bed.send(Request::get("/").header("authorization", &free));
    }
    let no = bed.send(
        Request::get("/")
            .header("authorization", &free)
            .header("x-request-id", "r1"),
    );
    assert_eq!(no.status, 429);
    assert_eq!(no.header("retry-after"), Some("1"));
    assert_eq!(no.json()["message"], "API rate limit exceeded");
    assert_eq!(no.json()["request_id"], "r1");
    assert_eq!(no.header("x-ratelimit-remaining-second"), Some("0"));
    assert!(no.upstream.is_none());
}

#[test]
fn the_tier_comes_only_from_verified_identity() {
    let (mut bed, key) = chain(limits());
    // No token: the client's claimed tier is ignored; anonymous limits by IP apply.
    let spoof = || {
        Request::get("/")
            .header("x-consumer-tier", "premium")
            .header("x-consumer-id", "mallory")
    };
    assert_eq!(burst(&mut bed, spoof, 10), 1, "anonymous: 1 per second");
    // A verified consumer whose tier changes gets the new plan's buckets.
    let std = token(&key, "dave", "standard");
    assert_eq!(
        burst(
            &mut bed,
            || Request::get("/").header("authorization", &std),
            30
        ),
        20
    );
    let upgraded = token(&key, "dave", "premium");
    assert_eq!(
        burst(
            &mut bed,
            || Request::get("/").header("authorization", &upgraded),
            300
        ),
        200
    );
    // An unknown tier falls back to the default tier.
    let odd = token(&key, "erin", "platinum");
    assert_eq!(
        burst(
            &mut bed,
            || Request::get("/").header("authorization", &odd),
            10
        ),
        5
    );
    // A per-consumer override wins over the tier.
    let vip = token(&key, "vip", "premium");
    assert_eq!(
        burst(
            &mut bed,
            || Request::get("/").header("authorization", &vip),
            10
        ),
        2
    );
}

#[test]
fn api_keys_and_addresses_identify_anonymous_clients_separately() {
    let limiter = json!({"tiers": {"t": {"second": 1}}, "default_tier": "t", "identify_by": ["header:x-api-key", "ip"], "anonymous": {"second": 2}});
    let mut bed = TestBed::new()
        .filter(wasm("tier_limiter"), limiter.to_string())
        .build()
        .unwrap();
    assert_eq!(
        burst(&mut bed, || Request::get("/").header("x-api-key", "a"), 5),
        2
    );
    assert_eq!(
        burst(&mut bed, || Request::get("/").header("x-api-key", "b"), 5),
        2
    );
    let from = |ip: [u8; 4]| {
        move || Request::get("/").from_address(std::net::SocketAddr::from((ip, 5000)))
    };
    assert_eq!(burst(&mut bed, from([10, 0, 0, 1]), 5), 2);
    assert_eq!(burst(&mut bed, from([10, 0, 0, 2]), 5), 2);
}

#[test]
fn memory_stays_bounded_and_idle_buckets_are_reused() {
    let limiter = json!({"tiers": {"t": {"second": 3}}, "default_tier": "t", "identify_by": ["header:x-api-key"], "max_buckets": 64});
    let mut bed = TestBed::new()
        .filter(wasm("tier_limiter"), limiter.to_string())
        .build()
        .unwrap();
    for i in 0..500 {
        let res = bed.send(Request::get("/").header("x-api-key", &format!("key-{i}")));
        assert_eq!(res.status, 200);
        // Ten at once: with 20 of 64 slots taken, eight probes all land on busy
        // slots about once in 800 groups (the hash key is random per host).
        if i % 10 == 9 {
            bed.advance(Duration::from_secs(2));
        }
    }
    // 500 identities, at most 10 active at once, in 64 slots of fixed size.
    let slots: Vec<Vec<u8>> = (0..64)
        .filter_map(|i| bed.shared_data(&format!("tier-limiter/tier_limiter-0/slot/{i}")))
        .collect();
    assert!(slots.len() >= 10, "{}", slots.len());
    assert!(
        slots.iter().all(|v| v.len() == 40),
        "tag, full-at, last, one window"
    );
    assert!(
        bed.shared_data("tier-limiter/tier_limiter-0/slot/64")
            .is_none(),
        "nothing beyond the table"
    );
    for m in ["tier_limiter_contended", "tier_limiter_table_full"] {
        assert!(
            bed.metric(m).is_none_or(|m| m == MetricValue::Counter(0)),
            "idle buckets were reused"
        );
    }
}

#[test]
fn invalid_configurations_are_refused_naming_the_field() {
    for (config, field) in [
        (
            json!({"tiers": {"t": {"second": 0}}, "default_tier": "t"}),
            "tiers.t.second",
        ),
        (
            json!({"tiers": {"t": {"second": -3}}, "default_tier": "t"}),
            "tiers.t.second",
        ),
        (
            json!({"tiers": {"t": {"fortnight": 3}}, "default_tier": "t"}),
            "fortnight",
        ),
        (
            json!({"tiers": {"t": {"second": 3}}, "default_tier": "gold"}),
            "default_tier",
        ),
        (
            json!({"tiers": {"t": {"second": 3}}, "default_tier": "t", "identify_by": ["cookie"]}),
            "identify_by",
        ),
        (
            json!({"tiers": {"t": {"second": 3, "burst": 1}}, "default_tier": "t"}),
            "burst",
        ),
        (
            json!({"tiers": {"t": {"second": 3}}, "default_tier": "t", "on_full": "open"}),
            "on_full",
        ),
        (
            json!({"tiers": {"t": {"second": 3}}, "default_tier": "t", "ipv6_prefix_length": 0}),
            "ipv6_prefix_length",
        ),
    ] {
        let err = TestBed::new()
            .filter(wasm("tier_limiter"), config.to_string())
            .build()
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
}

#[test]
fn admitted_and_refused_requests_are_counted() {
    let (mut bed, _) = chain(limits());
    let key = || Request::get("/").header("x-api-key", "counted");
    // Anonymous plan: one per second.
    assert_eq!(burst(&mut bed, key, 3), 1);
    assert_eq!(
        bed.metric("tier_limiter_limited"),
        Some(MetricValue::Counter(2))
    );
    // Admitted requests reach the host's counter on the next tick.
    bed.advance(Duration::from_secs(1));
    assert_eq!(
        bed.metric("tier_limiter_allowed"),
        Some(MetricValue::Counter(1))
    );
    assert_eq!(burst(&mut bed, key, 1), 1);
    bed.advance(Duration::from_secs(1));
    assert_eq!(
        bed.metric("tier_limiter_allowed"),
        Some(MetricValue::Counter(2))
    );
}

/// jwt-auth, then a limiter where the verified consumers of tier `hourly` get three
/// requests an hour and anonymous clients (by API key) a hundred a second, in a table
/// of `max_buckets` slots; `extra` is merged into the limiter's configuration.
fn hourly_beside_anonymous(max_buckets: u32, extra: Value) -> (TestBed, Key) {
    let mut limiter = json!({
        "identify_by": ["consumer", "header:x-api-key"],
        "tiers": {"hourly": {"hour": 3}},
        "default_tier": "hourly",
        "anonymous": {"second": 100},
        "max_buckets": max_buckets
    });
    for (k, v) in extra.as_object().unwrap() {
        limiter[k] = v.clone();
    }
    chain(limiter)
}

/// The victim's hour is used up: its next request is refused.
fn exhaust(bed: &mut TestBed, victim: &str) {
    let req = || Request::get("/").header("authorization", victim);
    assert_eq!(burst(bed, req, 4), 3, "three an hour");
}

#[test]
fn an_owner_is_not_judged_idle_by_a_requester_with_a_shorter_plan() {
    // One slot: every identity meets the victim's.
    let (mut bed, key) = hourly_beside_anonymous(1, json!({}));
    let victim = token(&key, "victim", "hourly");
    exhaust(&mut bed, &victim);
    // A second later the victim's buckets are far from full under its own plan (3 an
    // hour), though they would be under the requester's (100 a second).
    bed.advance(Duration::from_secs(1));
    let probe = bed.send(Request::get("/").header("x-api-key", "attacker"));
    assert_ne!(probe.status, 200, "the slot is not the attacker's to take");
    assert_eq!(
        bed.send(Request::get("/").header("authorization", &victim))
            .status,
        429,
        "the victim's hour was not reset"
    );
}

/// Where the filter places an identity: SipHash-1-3 (128 bits) of `plan NUL identity`
/// under the host's key, the low 64 bits modulo the table size (README, tier-limiter).
fn slot_of(key: &[u8; 16], plan: &str, identity: &str, slots: u64) -> u64 {
    use siphasher::sip128::{Hasher128, SipHasher13};
    use std::hash::Hasher;
    let mut h = SipHasher13::new_with_key(key);
    h.write(format!("{plan}\u{0}{identity}").as_bytes());
    (h.finish128().as_u128() as u64) % slots
}

#[test]
fn a_collision_crafted_with_the_hash_key_does_not_reset_the_victim() {
    let slots = 4096;
    let (mut bed, key) = hourly_beside_anonymous(slots as u32, json!({}));
    let victim = token(&key, "victim", "hourly");
    exhaust(&mut bed, &victim);
    // The per-host key, as a test (or a leak) would know it.
    let hash_key: [u8; 16] = bed
        .shared_data_of(1, "tier-limiter/tier_limiter-1/hash-key")
        .expect("the limiter publishes its hash key in shared data")
        .try_into()
        .expect("a 16-byte key");
    let target = slot_of(&hash_key, "hourly", "consumer:victim", slots);
    let attacker = (0..1_000_000)
        .map(|i| format!("attacker-{i}"))
        .find(|a| slot_of(&hash_key, "anonymous", &format!("x-api-key:{a}"), slots) == target)
        .expect("a colliding API key");
    bed.advance(Duration::from_secs(1));
    let probe = bed.send(Request::get("/").header("x-api-key", &attacker));
    assert_eq!(probe.status, 200, "the attacker gets a slot of its own");
    assert_eq!(
        bed.send(Request::get("/").header("authorization", &victim))
            .status,
        429,
        "the victim's bucket is intact"
    );
}

#[test]
fn the_hash_key_is_random_per_host() {
    let key_of = || {
        let (bed, _) = hourly_beside_anonymous(64, json!({}));
        bed.shared_data_of(1, "tier-limiter/tier_limiter-1/hash-key")
            .expect("published")
    };
    let (a, b) = (key_of(), key_of());
    assert_eq!(a.len(), 16);
    assert_ne!(a, b, "two hosts, two keys");
}

#[test]
fn every_vm_of_a_host_agrees_on_the_hash_key() {
    // Two VMs of one plugin (as two workers): both count in the one table, so each
    // request takes a token twice from the same bucket when they place it alike.
    let limiter = json!({"tiers": {"t": {"second": 4}}, "default_tier": "t", "identify_by": ["header:x-api-key"], "max_buckets": 65536});
    let mut bed = TestBed::new()
        .filter(wasm("tier_limiter"), limiter.to_string())
        .named("limits")
        .filter(wasm("tier_limiter"), limiter.to_string())
        .named("limits")
        .build()
        .unwrap();
    assert_eq!(
        burst(&mut bed, || Request::get("/").header("x-api-key", "k"), 4),
        2,
        "both VMs took from one bucket"
    );
}

#[test]
fn a_full_table_denies_by_default_and_lets_through_when_configured() {
    for (on_full, admitted) in [(None, false), (Some("deny"), false), (Some("allow"), true)] {
        let extra = on_full.map_or(json!({}), |m| json!({"on_full": m}));
        let (mut bed, key) = hourly_beside_anonymous(1, extra);
        let owner = token(&key, "owner", "hourly");
        assert_eq!(
            bed.send(Request::get("/").header("authorization", &owner))
                .status,
            200
        );
        // The only slot holds an active consumer: no bucket for a newcomer.
        let res = bed.send(
            Request::get("/")
                .header("x-api-key", "newcomer")
                .header("x-request-id", "r9"),
        );
        assert_eq!(
            bed.metric("tier_limiter_table_full"),
            Some(MetricValue::Counter(1)),
            "{on_full:?}"
        );
        if admitted {
            assert_eq!(res.status, 200, "on_full allow");
            continue;
        }
        assert_eq!(res.status, 429, "{on_full:?}: {}", res.text());
        assert_eq!(res.json()["request_id"], "r9");
        assert!(res.upstream.is_none());
        // The owner's slot is full again 20 minutes after its one request (3 an
        // hour): the newcomer may retry then.
        assert_eq!(res.header("retry-after"), Some("1200"));
    }
}

#[test]
fn ipv6_clients_are_identified_by_their_64() {
    let limiter = json!({"tiers": {"t": {"second": 1}}, "default_tier": "t", "identify_by": ["ip"], "anonymous": {"second": 2}});
    let mut bed = TestBed::new()
        .filter(wasm("tier_limiter"), limiter.to_string())
        .build()
        .unwrap();
    let from = |ip: &str| {
        let addr: std::net::SocketAddr = format!("[{ip}]:5000").parse().unwrap();
        move || Request::get("/").from_address(addr)
    };
    // Two addresses of one /64 share the anonymous plan's two a second.
    assert_eq!(burst(&mut bed, from("2001:db8:1:2::1"), 1), 1);
    assert_eq!(burst(&mut bed, from("2001:db8:1:2:ffff::9"), 5), 1);
    // Another /64 is another client.
    assert_eq!(burst(&mut bed, from("2001:db8:1:3::1"), 5), 2);
}

#[test]
fn keys_that_are_not_utf8_are_counted_each_on_its_own_and_crash_nothing() {
    let limiter = json!({"tiers": {"t": {"minute": 1}}, "default_tier": "t",
        "identify_by": ["header:x-api-key"]});
    let mut bed = TestBed::new()
        .filter(wasm("tier_limiter"), limiter.to_string())
        .build()
        .unwrap();
    let send = |bed: &mut TestBed, key: &[u8]| {
        bed.send(
            Request::get("/")
                .header_bytes("x-api-key", key)
                .header_bytes("x-request-id", b"\xff"),
        )
        .status
    };
    // Two keys a lossy reading would make one (both U+FFFD).
    assert_eq!(send(&mut bed, b"\xff"), 200);
    assert_eq!(send(&mut bed, b"\xfe"), 200);
    assert_eq!(send(&mut bed, b"\xff"), 429);
    assert_eq!(send(&mut bed, b"\xfe"), 429);
}
