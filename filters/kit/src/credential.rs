//! A credential carried in the query or a cookie (jwt-auth's token, key-auth's key),
//! read as lenient servers read them, and the request without it.
//!
//! An upstream may decode a parameter's name (`access%5Ftoken`), ignore its case, read
//! `_` for `-`, split the query at `;` as well as `&`, or trim a cookie's name. A value
//! under such a name beside the credential a filter checked is one the upstream may
//! read instead, so a filter counts it as a second credential ([`Scan::lookalike`]).
//! Alone, it is no credential: the filter does not read it.

use std::borrow::Cow;

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

/// Whether two names are one to a lenient server: case, surrounding blanks, and `_`,
/// `.`, `[` for `-` ignored (ASP.NET ignores case; CGI, WSGI and PHP read `_` as `-`
/// and PHP `.` and `[` as `_`; some cookie parsers trim names). No allocation: it runs
/// for every header of every request.
pub fn same_name(a: &str, b: &str) -> bool {
    let fold = |c: u8| match c {
        b'_' | b'.' | b'[' | b' ' => b'-',
        c => c.to_ascii_lowercase(),
    };
    let (a, b) = (a.trim().as_bytes(), b.trim().as_bytes());
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x) == fold(*y))
}

/// Whether `name` is one of `names` to a lenient server ([`same_name`]).
pub fn like<N: AsRef<str>>(names: &[N], name: &str) -> bool {
    names.iter().any(|n| same_name(n.as_ref(), name))
}

/// What a query string or a `cookie` header holds under a set of names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan<'a> {
    /// Each value under exactly one of the names, in order: the name's index and the
    /// value as written (not blank; a query value is not decoded).
    pub exact: Vec<(usize, &'a str)>,
    /// Some value that is not blank sits under a name a lenient server reads as one
    /// of the names without being one of them.
    pub lookalike: bool,
}

/// The parameters of `target`'s query (`:path` with its query) under `names`, the
/// parameter names compared decoded. `;` separates parameters for some servers, not
/// for the filters: a value runs to the next `&`, and a name after a `;` is at most a
/// lookalike.
pub fn scan_query<'a, N: AsRef<str>>(target: &'a str, names: &[N]) -> Scan<'a> {
    let mut scan = Scan::default();
    let Some((_, query)) = target.split_once('?') else {
        return scan;
    };
    if names.is_empty() {
        return scan;
    }
    for pair in query.split('&') {
        for (i, part) in pair.split(';').enumerate() {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            if v.is_empty() {
                continue;
            }
            let name = form_decode(k);
            match names.iter().position(|n| n.as_ref() == name) {
                Some(n) if i == 0 => {
                    let (_, whole) = pair.split_once('=').unwrap_or((pair, ""));
                    if !whole.trim().is_empty() {
                        scan.exact.push((n, whole));
                    }
                }
                _ if like(names, &name) => scan.lookalike = true,
                _ => {}
            }
        }
    }
    scan
}

/// The cookies of one `cookie` header's value under `names`.
pub fn scan_cookies<'a, N: AsRef<str>>(value: &'a str, names: &[N]) -> Scan<'a> {
    let mut scan = Scan::default();
    if names.is_empty() {
        return scan;
    }
    for c in value.split(';') {
        let (k, v) = c.trim().split_once('=').unwrap_or((c.trim(), ""));
        if v.trim().is_empty() {
            continue;
        }
        match names.iter().position(|n| n.as_ref() == k) {
            Some(n) => scan.exact.push((n, v)),
            None if like(names, k) => scan.lookalike = true,
            None => {}
        }
    }
    scan
}

/// `target` (`:path` with its query) without the query parameter `name` (compared
/// decoded); without `?` when nothing is left.
pub fn without_param(target: &str, name: &str) -> String {
    let Some((base, query)) = target.split_once('?') else {
        return target.to_owned();
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
    use proptest::prelude::*;

    #[test]
    fn names_compare_as_a_lenient_server_reads_them() {
        assert!(same_name("x-api-key", "X_API_KEY "));
        assert!(same_name("access_token", "ACCESS-TOKEN"));
        assert!(!same_name("access_token", "access_tokens"));
        assert!(like(&["a", "access_token"], "Access.Token"));
    }

    #[test]
    fn the_query_is_read_decoded_and_lookalikes_are_told() {
        let names = ["access_token"];
        let s = scan_query("/x?a=1&access%5Ftoken=t1&b", &names);
        assert_eq!(s.exact, vec![(0, "t1")]);
        assert!(!s.lookalike);
        for lookalike in [
            "/x?ACCESS_TOKEN=t",
            "/x?access-token=t",
            "/x?q=1;access_token=t",
            "/x?access_token%20=t",
        ] {
            let s = scan_query(lookalike, &names);
            assert_eq!((s.exact.len(), s.lookalike), (0, true), "{lookalike}");
        }
        // A value runs to the next `&`, `;` and all; the name after `;` is a lookalike.
        let s = scan_query("/x?access_token=a;access_token=b", &names);
        assert_eq!(s.exact, vec![(0, "a;access_token=b")]);
        assert!(s.lookalike);
        // Empty values count for nothing.
        assert_eq!(
            scan_query("/x?access_token=&ACCESS_TOKEN", &names),
            Scan::default()
        );
        assert_eq!(scan_query("/x", &names), Scan::default());
    }

    #[test]
    fn cookies_are_read_by_exact_name_and_lookalikes_are_told() {
        let names = ["tok"];
        let s = scan_cookies("a=1; tok=t2;tok=t3", &names);
        assert_eq!(s.exact, vec![(0, "t2"), (0, "t3")]);
        assert!(!s.lookalike);
        assert!(scan_cookies("TOK=x", &names).lookalike);
        assert!(!scan_cookies("TOK=", &names).lookalike);
        assert_eq!(scan_cookies("tok=", &names), Scan::default());
    }

    #[test]
    fn hiding_a_credential_keeps_the_rest_of_the_request() {
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
        fn a_hidden_credential_is_found_no_more(path in "/[ -~]{0,60}", cookie in "[ -~]{0,60}") {
            let names = ["tok"];
            let _ = scan_query(&path, &names);
            prop_assert!(scan_query(&without_param(&path, "tok"), &names).exact.is_empty());
            let rest = without_cookie(&cookie, "tok").unwrap_or_default();
            prop_assert!(scan_cookies(&rest, &names).exact.is_empty());
        }

        #[test]
        fn form_decoding_never_panics(s in "[%+0-9a-fA-F\\PC]{0,40}") {
            let _ = form_decode(&s);
        }
    }
}
