//! The request path in one canonical form, decided once, before routing and before
//! any filter sees it (RFC 3986 section 6.2.2): percent-encoded unreserved characters
//! decoded, the hex of the other escapes upper case, `//` merged, dot segments
//! removed. Routing, the filters and the upstream then all read the same path, so no
//! component can be made to see `/orders` where another saw `/health`.
//!
//! Refused (400), because a reader downstream could resolve them differently: an
//! invalid percent-encoding, a path that climbs above the root, a NUL or control
//! character, bytes that are not UTF-8 once decoded (overlong forms of `.` and `/`
//! among them), a raw backslash, a dot segment carrying `;` parameters (`..;x`, which
//! Tomcat resolves as `..`), and by default an encoded `/` or `\` (`%2F`, `%5C`).
//! The query string is passed on as it came.
//!
//! Other `;` parameters stay (`/cart;jsessionid=1`), but routing refuses a path whose
//! route would change with them cut ([`without_params`]): `/admin;x/stats` is not
//! `/admin` to the router, yet Tomcat serves it as `/admin/stats`.

use std::borrow::Cow;

use serde::Deserialize;

/// What a listener does with `%2F` and `%5C` in a path (Envoy's
/// `path_with_escaped_slashes_action`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// 400 (the default): the request is ambiguous to anything that decodes it.
    #[default]
    Reject,
    /// Forwarded still encoded, as one segment (`/files/a%2Fb`): for upstreams that
    /// take an encoded slash as part of a name and never decode it into a separator.
    Keep,
    /// Decoded into `/` (both), then normalized like any separator.
    Unescape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with /")]
    NotAbsolute,
    #[error("the request path has an invalid percent-encoding")]
    BadEscape,
    #[error("the request path has an encoded slash or backslash (%2F, %5C)")]
    EscapedSlash,
    #[error("the request path has a backslash")]
    Backslash,
    #[error("the request path climbs above the root")]
    AboveRoot,
    #[error("the request path has a NUL or control character")]
    Control,
    #[error("the request path is not UTF-8 once decoded")]
    NotUtf8,
    #[error("the request path has a dot segment with parameters")]
    DotParams,
}

/// The normalized form of a request target (`path?query`). Borrowed when the path is
/// already in normal form, which is every honest request's case.
pub fn normalize(target: &str, slashes: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], Some(&target[i..])),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(target));
    }
    let escaped = unescape(path, slashes)?;
    let mut out = resolve(&escaped)?;
    if let Some(q) = query {
        out.push_str(q);
    }
    Ok(Cow::Owned(out))
}

/// True when `path` needs no work: only characters that stand for themselves, no
/// empty segment, no dot segment, no escape.
fn is_normal(path: &str) -> bool {
    let b = path.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if !plain(c) {
            return false;
        }
        if c == b'/' {
            let rest = &b[i + 1..];
            if rest.first() == Some(&b'/') || dot_segment_or_params(rest) {
                return false;
            }
        }
    }
    true
}

/// Characters kept as they are: unreserved, and the sub-delimiters, `:` and `@` that
/// RFC 3986 allows in a segment, and the separator.
fn plain(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&c)
}

/// Whether the segment starting `rest` (up to the next `/`) is `.`, `..`, or one of
/// those followed by `;` parameters.
fn dot_segment_or_params(rest: &[u8]) -> bool {
    let end = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
    let seg = &rest[..end];
    let name = seg.split(|&c| c == b';').next().unwrap_or(seg);
    name == b"." || name == b".."
}

/// A normalized path (no query) as Tomcat, Spring and Jetty read it: each segment cut
/// at its first `;` (or `%3B`, for a reader that decodes first) and the empty segments
/// that leaves merged. `None` when there is nothing to cut.
pub fn without_params(target: &str) -> Option<String> {
    let path = target.split('?').next().unwrap_or(target);
    if !path.contains(';') && !path.contains("%3B") {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    let mut trailing = false;
    for seg in path[1..].split('/') {
        let end = [seg.find(';'), seg.find("%3B")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(seg.len());
        trailing = end == 0;
        if !trailing {
            out.push('/');
            out.push_str(&seg[..end]);
        }
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Some(out)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~".contains(&c)
}

fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(byte >> 4)] as char);
    out.push(HEX[usize::from(byte & 15)] as char);
}

/// Decodes what stands for itself, upper-cases the rest of the escapes, escapes the
/// characters RFC 3986 does not allow raw, and applies the escaped-slash action.
/// Checks that the fully decoded path is UTF-8 without control characters.
fn unescape(path: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len() + 8);
    // The path as a decoding reader would see it, for the UTF-8 check.
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = (h << 4) | l;
            i += 3;
            decoded.push(v);
            if v < 0x20 || v == 0x7f {
                return Err(PathError::Control);
            }
            if v == b'/' || v == b'\\' {
                match slashes {
                    EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                    EscapedSlashes::Keep => push_escape(&mut out, v),
                    EscapedSlashes::Unescape => out.push('/'),
                }
            } else if unreserved(v) {
                out.push(v as char);
            } else {
                push_escape(&mut out, v);
            }
            continue;
        }
        i += 1;
        decoded.push(c);
        if c == b'\\' {
            return Err(PathError::Backslash);
        }
        if c < 0x20 || c == 0x7f {
            return Err(PathError::Control);
        }
        if plain(c) {
            out.push(c as char);
        } else {
            push_escape(&mut out, c);
        }
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(PathError::NotUtf8);
    }
    Ok(out)
}

/// Merges empty segments and removes dot segments (RFC 3986 5.2.4) from an absolute
/// path whose escapes are already settled. A final `.` or `..` leaves a trailing
/// slash, as the RFC's algorithm does.
fn resolve(path: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    let parts: Vec<&str> = path[1..].split('/').collect();
    let last = parts.len() - 1;
    for (i, seg) in parts.into_iter().enumerate() {
        let is_last = i == last;
        let name = seg.split(';').next().unwrap_or(seg);
        if (name == "." || name == "..") && name != seg {
            return Err(PathError::DotParams);
        }
        match seg {
            "" => trailing = is_last && !segments.is_empty(),
            "." => trailing = is_last,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing = is_last;
            }
            s => {
                segments.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use EscapedSlashes::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p, Reject).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/orders/42",
            "/a/b/",
            "/x?y=../..//%2F",
            "/a;b=c/d",
            "/v1/users:batch",
        ] {
            assert!(matches!(normalize(p, Reject), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn dot_segments_and_empty_segments_are_resolved() {
        assert_eq!(n("/health/../orders/42").unwrap(), "/orders/42");
        assert_eq!(n("/health/./x").unwrap(), "/health/x");
        assert_eq!(n("//orders//42").unwrap(), "/orders/42");
        assert_eq!(n("/health//../orders").unwrap(), "/orders");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(n("/a/..").unwrap(), "/");
        assert_eq!(n("/a/b/../../c?q=/../").unwrap(), "/c?q=/../");
    }

    #[test]
    fn encoded_dots_and_unreserved_are_decoded_and_hex_upper_cased() {
        assert_eq!(n("/health/%2e%2e/orders/42").unwrap(), "/orders/42");
        assert_eq!(n("/health/%2E%2e/orders").unwrap(), "/orders");
        assert_eq!(n("/health/.%2e/orders").unwrap(), "/orders");
        assert_eq!(n("/%7euser/%41").unwrap(), "/~user/A");
        assert_eq!(n("/a%3ab%3F").unwrap(), "/a%3Ab%3F");
        assert_eq!(n("/caf%c3%a9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn raw_characters_rfc_3986_does_not_allow_are_escaped() {
        assert_eq!(n("/a\"b{c}").unwrap(), "/a%22b%7Bc%7D");
        assert_eq!(n("/caf\u{e9}").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn refusals() {
        assert_eq!(n("/../etc"), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../../etc"), Err(PathError::AboveRoot));
        assert_eq!(n("/%2e%2e/x"), Err(PathError::AboveRoot));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%00b"), Err(PathError::Control));
        assert_eq!(n("/a%0d%0ab"), Err(PathError::Control));
        assert_eq!(n("/a%c0%ae%c0%ae/x"), Err(PathError::NotUtf8));
        assert_eq!(n("/a%e0%80%af"), Err(PathError::NotUtf8));
        assert_eq!(n("/a\\..\\b"), Err(PathError::Backslash));
        assert_eq!(n("/health/..;/orders"), Err(PathError::DotParams));
        assert_eq!(n("/health/.;x/orders"), Err(PathError::DotParams));
        assert_eq!(n("/health/%2e%2e;/orders"), Err(PathError::DotParams));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
        assert_eq!(n(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn parameters_are_cut_as_tomcat_reads_them() {
        let cut = |p| without_params(p);
        assert_eq!(cut("/a/b?x=;"), None);
        assert_eq!(cut("/admin;x/stats").as_deref(), Some("/admin/stats"));
        assert_eq!(cut("/;/admin/stats").as_deref(), Some("/admin/stats"));
        assert_eq!(cut("/;/;/admin?q").as_deref(), Some("/admin"));
        assert_eq!(cut("/admin%3Bx/stats").as_deref(), Some("/admin/stats"));
        assert_eq!(cut("/a/b;x").as_deref(), Some("/a/b"));
        assert_eq!(cut("/a/;x").as_deref(), Some("/a/"));
        assert_eq!(cut("/;x").as_deref(), Some("/"));
    }

    #[test]
    fn escaped_slashes_follow_the_action() {
        assert_eq!(n("/a%2fb"), Err(PathError::EscapedSlash));
        assert_eq!(n("/a%5Cb"), Err(PathError::EscapedSlash));
        let keep = |p| normalize(p, Keep).map(Cow::into_owned);
        assert_eq!(keep("/files/a%2fb").unwrap(), "/files/a%2Fb");
        assert_eq!(keep("/health/..%2Forders").unwrap(), "/health/..%2Forders");
        let unescape = |p| normalize(p, Unescape).map(Cow::into_owned);
        assert_eq!(unescape("/health%2F..%2Forders").unwrap(), "/orders");
        assert_eq!(unescape("/a%5cb").unwrap(), "/a/b");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn pieces() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("/".to_owned()),
                Just("//".to_owned()),
                Just(".".to_owned()),
                Just("..".to_owned()),
                Just("%2e".to_owned()),
                Just("%2E".to_owned()),
                Just("%2f".to_owned()),
                Just("%5c".to_owned()),
                Just("%41".to_owned()),
                Just("%3a".to_owned()),
                Just("%c3%a9".to_owned()),
                Just(";p=1".to_owned()),
                Just("a".to_owned()),
                Just("health".to_owned()),
                Just("~".to_owned()),
                Just("%".to_owned()),
                Just("?q".to_owned()),
                "[a-z0-9]{1,3}",
            ];
            proptest::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// Normalizing twice changes nothing: what routing saw is what goes upstream.
            #[test]
            fn idempotent(p in pieces(), action in prop_oneof![Just(Reject), Just(Keep), Just(Unescape)]) {
                if let Ok(once) = normalize(&p, action) {
                    let twice = normalize(&once, action).map(Cow::into_owned);
                    prop_assert_eq!(twice.as_deref(), Ok(&*once));
                }
            }

            /// A normalized path has no dot segment, no empty segment but a final one,
            /// no raw backslash, and every escape is upper-case hex of a byte that is
            /// not unreserved.
            #[test]
            fn output_is_canonical(p in pieces(), action in prop_oneof![Just(Reject), Just(Keep), Just(Unescape)]) {
                if let Ok(out) = normalize(&p, action) {
                    let path = out.split('?').next().unwrap_or("");
                    prop_assert!(path.starts_with('/'));
                    let segs: Vec<&str> = path[1..].split('/').collect();
                    for (i, s) in segs.iter().enumerate() {
                        prop_assert!(*s != "." && *s != "..", "{}", out);
                        prop_assert!(!s.is_empty() || i == segs.len() - 1, "{}", out);
                    }
                    prop_assert!(!path.contains('\\'));
                    let b = path.as_bytes();
                    for (i, &c) in b.iter().enumerate() {
                        if c == b'%' {
                            let h = &b[i + 1..i + 3];
                            prop_assert!(h.iter().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)), "{}", out);
                            let v = u8::from_str_radix(std::str::from_utf8(h).unwrap_or("zz"), 16).unwrap_or(0);
                            prop_assert!(!unreserved(v), "{}", out);
                        }
                    }
                }
            }

            /// Arbitrary text never panics, and what comes out is accepted again.
            #[test]
            fn any_input(p in "/[ -~]{0,40}") {
                if let Ok(out) = normalize(&p, Reject) {
                    prop_assert!(normalize(&out, Reject).is_ok());
                }
            }
        }
    }
}
