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

/// `%XX` decoded, `+` as a space (a query string's form encoding); a `%` that starts
/// no escape is kept as it is.
pub fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The request's key. `headers`: every request header (lower-case names, in order);
/// `path`: `:path` with its query.
/// Whether two names are one to a lenient server: case, surrounding blanks, and `_`,
/// `.`, `[` for `-` ignored (ASP.NET ignores case; CGI, WSGI and PHP read `_` as `-`
/// and PHP `.` and `[` as `_`; some cookie parsers trim names). No allocation: it runs
/// for every header of every request.
fn same_name(a: &str, b: &str) -> bool {
    let fold = |c: u8| match c {
        b'_' | b'.' | b'[' | b' ' => b'-',
        c => c.to_ascii_lowercase(),
    };
    let (a, b) = (a.trim().as_bytes(), b.trim().as_bytes());
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x) == fold(*y))
}

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
    let like = |names: &[String], name: &str| names.iter().any(|n| same_name(n, name));
    for (k, v) in headers {
        if config.headers.iter().any(|h| h == k) {
            add(v, Location::Header(k.to_string()))?;
        } else if !v.trim().is_empty() && like(&config.headers, k) {
            lookalike = true;
        }
    }
    if !config.params.is_empty()
        && let Some((_, query)) = path.split_once('?')
    {
        for pair in query.split('&') {
            // `;` separates parameters for some servers, not for Kong.
            for (i, part) in pair.split(';').enumerate() {
                let (k, v) = part.split_once('=').unwrap_or((part, ""));
                let name = form_decode(k);
                if v.is_empty() {
                    continue;
                }
                match config.params.iter().find(|p| **p == name) {
                    Some(p) if i == 0 => {
                        let (_, whole) = pair.split_once('=').unwrap_or((pair, ""));
                        add(&form_decode(whole), Location::Param(p.clone()))?;
                    }
                    _ if like(&config.params, &name) => lookalike = true,
                    _ => {}
                }
            }
        }
    }
    if !config.cookies.is_empty() {
        for (_, v) in headers.iter().filter(|(k, _)| k == "cookie") {
            for c in v.split(';') {
                let (k, val) = c.trim().split_once('=').unwrap_or((c.trim(), ""));
                if let Some(name) = config.cookies.iter().find(|n| *n == k) {
                    add(val, Location::Cookie(name.clone()))?;
                } else if !val.trim().is_empty() && like(&config.cookies, k) {
                    lookalike = true;
                }
            }
        }
    }
    if found.is_some() && lookalike {
        return Err(Ambiguous);
    }
    Ok(found)
}

/// `path` without the query parameter `name` (compared decoded); without `?` when
/// nothing is left.
pub fn without_param(path: &str, name: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| form_decode(pair.split_once('=').map_or(*pair, |(k, _)| k)) != name)
        .collect();
    if kept.iter().all(|p| p.is_empty()) {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// A `cookie` header's value without the cookie `name`; `None` when nothing is left.
pub fn without_cookie(value: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split_once('=').map_or(*c, |(k, _)| k) != name)
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
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

    #[test]
    fn hiding_the_key_keeps_the_rest_of_the_request() {
        assert_eq!(without_param("/x?a=1&apikey=k&b=2", "apikey"), "/x?a=1&b=2");
        assert_eq!(without_param("/x?api%6Bey=k", "apikey"), "/x");
        assert_eq!(without_param("/x", "apikey"), "/x");
        assert_eq!(
            without_cookie("a=1; apikey=k;b=2", "apikey").as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(without_cookie("apikey=k", "apikey"), None);
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
