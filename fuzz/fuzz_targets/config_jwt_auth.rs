//! The jwt-auth filter's configuration parser (`jwt_auth::config::Config::parse`),
//! inline JWKS included, on any bytes. Invariants: no panic; an accepted document is
//! accepted again, to the same configuration, when respelled; what was accepted holds
//! what the filter relies on: every rule names providers that exist, every provider
//! allows at least one algorithm and has keys to check it with (inline or fetched),
//! and a token size limit.
#![no_main]

use jwt_auth::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(c) = Config::parse(Some(data)) else {
        return;
    };
    portcullis_fuzz::reparses_alike(data, &c, |d| Config::parse(Some(d)));
    for r in &c.rules {
        assert!(r.providers.iter().all(|&p| p < c.providers.len()));
    }
    for p in &c.providers {
        assert!(!p.algorithms.is_empty(), "provider {} allows no algorithm", p.name);
        assert!(p.remote.is_some() || p.local.as_ref().is_some_and(|k| !k.keys.is_empty()));
        assert!(p.max_token_bytes > 0);
    }
});
