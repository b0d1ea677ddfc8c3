//! The oidc filter's session cookie as a browser (or an attacker) sends it: arbitrary
//! `Cookie` headers read with `cookie::read_chunked`, and arbitrary values opened
//! with a fixed test key (`SessionKeys::open`, `session::open`).
//!
//! Invariants: reading never panics; a value that opens is exactly the value we would
//! seal for that plaintext and nonce (no second spelling of a cookie is accepted), it
//! opens for one purpose only, and its key id is one we hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc::cookie::{self, CookieError, SessionKeys};
use oidc::session::{self, Login, Session};

/// Test-only secrets: two keys, so rotation (an old key still opens) is exercised.
const NEW: (&str, &str) = ("k2", "fuzzing-only secret, new key, 32+ chars long");
const OLD: (&str, &str) = ("k1", "fuzzing-only secret, old key, 32+ chars long");
const NAME: &str = "portcullis_session";

fn keys(list: &[(&'static str, &'static str)]) -> SessionKeys {
    SessionKeys::new(list.iter().copied()).expect("test keys are valid")
}

fn nonce_of(value: &str) -> [u8; 24] {
    use base64::Engine;
    let (_, body) = value.split_once('.').expect("an opened value has a key id");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .expect("an opened value is base64url");
    raw[..24].try_into().expect("24 bytes")
}

fn open_any(ring: &SessionKeys, value: &str) {
    for (purpose, other) in [(session::SESSION, session::LOGIN), (session::LOGIN, session::SESSION)] {
        let Ok(plain) = ring.open(purpose, value) else {
            continue;
        };
        assert_eq!(
            ring.open(other, value),
            Err(CookieError::Tampered),
            "a cookie opens for one purpose only"
        );
        let id = value.split('.').next().unwrap_or_default();
        let single = match id {
            "k1" => keys(&[OLD]),
            "k2" => keys(&[NEW]),
            _ => panic!("opened with a key id we do not hold: {id:?}"),
        };
        assert_eq!(
            single.seal_with_nonce(purpose, &plain, nonce_of(value)),
            value,
            "an accepted cookie has exactly one spelling"
        );
    }
    let _ = session::open::<Session>(ring, session::SESSION, value);
    let _ = session::open::<Login>(ring, session::LOGIN, value);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let ring = keys(&[NEW, OLD]);
    // The whole input as one value, and as Cookie header lines read the filter's way.
    open_any(&ring, &text);
    let headers: Vec<&str> = text.split('\n').collect();
    let found = cookie::read_chunked(&headers, NAME);
    if let Some(v) = &found {
        open_any(&ring, v);
        if let Some(alone) = cookie::find(&headers, NAME) {
            assert_eq!(v, alone, "a whole cookie wins over chunks");
        }
    }
    for n in cookie::names_present(&headers, NAME) {
        assert!(n == NAME || n.starts_with(&format!("{NAME}.")));
    }
    for n in cookie::login_names_present(&headers, "portcullis_login") {
        assert!(n.starts_with("portcullis_login."));
    }
});
