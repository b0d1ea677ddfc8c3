//! Where the key is (headers, query parameters, cookies, as configured) and the request
//! without it (`hide_credentials`). A key found in more than one place is refused:
//! which one counts is the ambiguity an attacker looks for, and the upstream may read
//! the other.

use std::borrow::Cow;

use crate::config::Config;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Header(String),
    Param(String),
    Cookie(String),
}

/// The key a request carries, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub key: String,
    pub location: Location,
}

/// More than one key in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous;

pub use kit::credential::{form_decode, without_cookie, without_param};
use kit::credential::{like, scan_cookies, scan_query};

/// The request's key. `headers`: every request header (lower-case names, in order);
/// `path`: `:path` with its query. A value under a name a lenient upstream reads as a
/// key name (`kit::credential`) is a second key when a key is also found.
pub fn find(
    config: &Config,
    headers: &[(Cow<'_, str>, Cow<'_, str>)],
    path: &str,
) -> Result<Option<Found>, Ambiguous> {
    let mut found: Option<Found> = None;
    // A value under a name a lenient upstream reads as a key name: with a key also
    // found, the upstream may read the other one.
    let mut lookalike = false;
    let mut add = |key: &str, location: Location| {
        let key = key.trim();
        if key.is_empty() {
            return Ok(());
        }
        if found.is_some() {
            return Err(Ambiguous);
        }
        found = Some(Found {
            key: key.to_owned(),
            location,
        });
        Ok(())
    };
    for (k, v) in headers {
        if config.headers.iter().any(|h| h == k) {
            add(v, Location::Header(k.to_string()))?;
        } else if !v.trim().is_empty() && like(&config.headers, k) {
            lookalike = true;
        }
    }
    if !config.params.is_empty() {
        let scan = scan_query(path, &config.params);
        lookalike |= scan.lookalike;
        for (n, value) in scan.exact {
            add(
                &form_decode(value),
                Location::Param(config.params[n].clone()),
            )?;
        }
    }
    if !config.cookies.is_empty() {
        for (_, v) in headers.iter().filter(|(k, _)| k == "cookie") {
            let scan = scan_cookies(v, &config.cookies);
            lookalike |= scan.lookalike;
            for (n, value) in scan.exact {
                add(value, Location::Cookie(config.cookies[n].clone()))?;
            }
        }
    }
    if found.is_some() && lookalike {
        return Err(Ambiguous);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::hash_string;
    use proptest::prelude::*;
    use serde_json::json;

    fn config(extra: serde_json::Value) -> Config {
        let mut v = json!({"consumers": [{"id": "a", "keys": [hash_string(b"k")]}]});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Config::parse(Some(v.to_string().as_bytes())).unwrap()
    }

    fn h(pairs: &[(&'static str, &'static str)]) -> Vec<(Cow<'static, str>, Cow<'static, str>)> {
        pairs
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v)))
            .collect()
    }

    #[test]
    fn the_key_is_found_where_configured_and_only_once() {
        let c = config(json!({"key_in_cookie": true}));
        let found =
            |headers: &[(&'static str, &'static str)], path: &str| find(&c, &h(headers), path);
        assert_eq!(
            found(&[("apikey", " abc ")], "/x"),
            Ok(Some(Found {
                key: "abc".into(),
                location: Location::Header("apikey".into())
            }))
        );
        assert_eq!(
            found(&[], "/x?a=1&api%6Bey=a%2Bb+c"),
            Ok(Some(Found {
                key: "a+b c".into(),
                location: Location::Param("apikey".into())
            }))
        );
        assert_eq!(
            found(&[("cookie", "s=1; apikey=abc")], "/x")
                .unwrap()
                .unwrap()
                .location,
            Location::Cookie("apikey".into())
        );
        assert_eq!(found(&[("apikey", "")], "/x?apikey="), Ok(None));
        assert_eq!(found(&[("x-other", "abc")], "/x"), Ok(None));
        // Twice, anywhere: refused, whether or not the two agree.
        assert_eq!(
            found(&[("apikey", "a"), ("apikey", "a")], "/x"),
            Err(Ambiguous)
        );
        assert_eq!(found(&[("apikey", "a")], "/x?apikey=b"), Err(Ambiguous));
        assert_eq!(found(&[], "/x?apikey=a&apikey=b"), Err(Ambiguous));
        assert_eq!(
            found(&[("cookie", "apikey=a"), ("cookie", "apikey=a")], "/x"),
            Err(Ambiguous)
        );
        // Beside a key, a name a lenient upstream reads as the key name is a second
        // key; alone, it is none.
        let c2 = config(json!({"key_names": ["x-api-key"], "key_in_cookie": true}));
        let f2 =
            |headers: &[(&'static str, &'static str)], path: &str| find(&c2, &h(headers), path);
        assert_eq!(
            f2(&[("x-api-key", "a"), ("x_api_key", "b")], "/x"),
            Err(Ambiguous)
        );
        assert_eq!(f2(&[("x-api-key", "a")], "/x?X-API-KEY=b"), Err(Ambiguous));
        assert_eq!(f2(&[], "/x?x-api-key=a&q=1;x-api-key=b"), Err(Ambiguous));
        assert_eq!(
            f2(&[("x-api-key", "a"), ("cookie", "x_api_key =b")], "/x"),
            Err(Ambiguous)
        );
        assert_eq!(f2(&[("x_api_key", "b")], "/x"), Ok(None));
        assert_eq!(
            f2(&[], "/x?x-api-key=a;b").map(|f| f.map(|f| f.key)),
            Ok(Some("a;b".to_owned()))
        );
        // Where it is not looked for, it is not found.
        let c = config(json!({"key_in_query": false}));
        assert_eq!(
            find(&c, &h(&[("cookie", "apikey=a")]), "/x?apikey=a"),
            Ok(None)
        );
    }

    proptest! {
        #[test]
        fn any_request_is_read_without_a_panic_and_a_hidden_key_is_gone(
            value in ".{0,40}", path in "/[ -~]{0,60}", cookie in "[ -~]{0,60}",
        ) {
            let c = config(json!({"key_in_cookie": true}));
            let headers = vec![
                (Cow::Borrowed("apikey"), Cow::Owned(value)),
                (Cow::Borrowed("cookie"), Cow::Owned(cookie.clone())),
            ];
            let _ = find(&c, &headers, &path);
            let stripped = without_param(&path, "apikey");
            prop_assert_eq!(find(&c, &[], &stripped).ok().flatten(), None);
            let rest = without_cookie(&cookie, "apikey").unwrap_or_default();
            let only = vec![(Cow::Borrowed("cookie"), Cow::Owned(rest))];
            prop_assert_eq!(find(&c, &only, "/").ok().flatten(), None);
        }

        #[test]
        fn form_decoding_never_panics(s in "[%+0-9a-fA-F\\PC]{0,40}") {
            let _ = form_decode(&s);
        }
    }
}
