//! The tier-limiter filter's configuration parser
//! (`tier_limiter::config::Config::parse`), on any bytes. Invariants: no panic; an
//! accepted document is accepted again, to the same configuration, when respelled;
//! what was accepted holds what the token buckets rely on: every plan has a window,
//! every limit is a positive finite number with a capacity at least that limit, the
//! default tier exists, the reply is an HTTP error status, buckets are bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tier_limiter::config::{Config, Plan};

fn sound(p: &Plan) {
    assert!(!p.limits.is_empty(), "plan {} has no window", p.name);
    for l in &p.limits {
        assert!(l.limit.is_finite() && l.limit > 0.0, "{l:?}");
        assert!(l.capacity.is_finite() && l.capacity >= l.limit, "{l:?}");
        let rate = l.rate_per_ns();
        assert!(rate.is_finite() && rate > 0.0, "{l:?} refills at {rate}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(c) = Config::parse(Some(data)) else {
        return;
    };
    portcullis_fuzz::reparses_alike(data, &c, |d| Config::parse(Some(d)));
    assert!(c.tiers.contains_key(&c.default_tier));
    c.tiers.values().for_each(sound);
    c.overrides.values().for_each(sound);
    c.anonymous.iter().for_each(sound);
    assert!((400..=599).contains(&c.error_code));
    assert!(c.max_buckets > 0);
    assert!(!c.identify_by.is_empty());
});
