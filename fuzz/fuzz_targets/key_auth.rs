//! key-auth on any bytes: its configuration parser, a key service's consumers
//! document, and the reading of a request's key from a header, the query and a cookie.
//! Invariants: no panic; a key found is non-empty and has no surrounding blanks; once
//! `hide_credentials` has taken the key out of the query or the cookie, it is found
//! there no more (the upstream cannot read a key the filter hid).
#![no_main]

use std::borrow::Cow;

use key_auth::config::Config;
use key_auth::extract::{find, without_cookie, without_param};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static CONFIG: Config = Config::parse(Some(
        br#"{"key_in_cookie": true, "consumers": [{"id": "a",
            "keys": ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}]}"#,
    ))
    .unwrap();
}

fuzz_target!(|data: &[u8]| {
    let _ = Config::parse(Some(data));
    let _ = key_auth::directory::parse_document(data);
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let path = parts.next().unwrap_or("");
    let header = parts.next().unwrap_or("");
    let cookie = parts.next().unwrap_or("");
    CONFIG.with(|c| {
        let headers = vec![
            (Cow::Borrowed("apikey"), Cow::Borrowed(header)),
            (Cow::Borrowed("cookie"), Cow::Borrowed(cookie)),
        ];
        if let Ok(Some(found)) = find(c, &headers, path) {
            assert!(!found.key.is_empty());
            assert_eq!(found.key.trim(), found.key);
        }
        let hidden = without_param(path, "apikey");
        assert_eq!(find(c, &[], &hidden), Ok(None), "{path:?} -> {hidden:?}");
        let rest = without_cookie(cookie, "apikey").unwrap_or_default();
        let only = vec![(Cow::Borrowed("cookie"), Cow::Owned(rest))];
        assert_eq!(find(c, &only, "/"), Ok(None), "{cookie:?}");
    });
});
