//! The oidc filter's configuration parser (`oidc::config::Config::parse`), on any
//! bytes. Invariants: no panic; an accepted document is accepted again, to the same
//! configuration, when respelled; and with its secrets (`client_secret`, the session
//! secrets) swapped for marked ones, it is still accepted and no secret shows in the
//! configuration's `Debug` form, which reaches logs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc::config::Config;
use serde_json::{Value, json};

const MARK: &str = "fuzz-secret-marker";

fuzz_target!(|data: &[u8]| {
    let Ok(c) = Config::parse(Some(data)) else {
        return;
    };
    portcullis_fuzz::reparses_alike(data, &c, |d| Config::parse(Some(d)));

    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if data.windows(MARK.len()).any(|w| w == MARK.as_bytes()) {
        return;
    }
    if let Some(Value::String(_)) = doc.get("client_secret") {
        doc.insert("client_secret".into(), json!(format!("{MARK}-client-0123456789abcdef")));
    }
    if let Some(Value::Array(list)) = doc
        .get_mut("session")
        .and_then(|s| s.get_mut("secrets"))
    {
        for (i, s) in list.iter_mut().enumerate() {
            if let Some(Value::String(_)) = s.get("secret") {
                s["secret"] = json!(format!("{MARK}-{i}-0123456789abcdef0123456789"));
            }
        }
    }
    let marked = Value::Object(doc).to_string();
    let c = Config::parse(Some(marked.as_bytes()))
        .expect("other secrets of an accepted length are accepted");
    assert!(
        !format!("{c:?}").contains(MARK),
        "a secret is in the configuration's Debug form"
    );
});
