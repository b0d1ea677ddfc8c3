//! Request paths as a lax upstream reads them. A filter decides on `:path` as the host
//! hands it over, but the host may not have normalized it (an Envoy without
//! `normalize_path`, or with `path_with_escaped_slashes_action: KEEP_UNCHANGED`, where
//! `%2F` stays encoded), and the upstream behind may read it more laxly than the
//! filter: decoding every `%XX`, taking `\` for `/`, dropping each segment's
//! `;params` as Tomcat does, merging `//`, resolving `.` and `..`. A path whose two
//! readings select different policies is how `/public/..;/admin` reaches `/admin`
//! through a rule meant for `/public`. [`lax`] is that reading, so a filter can decide
//! with both and refuse a path on which they disagree.

use std::borrow::Cow;

/// Why a path has no lax reading: the filter should refuse it (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request has no path")]
    Missing,
    #[error("the request path does not start with /")]
    NotAbsolute,
    #[error("the request path is percent-encoded more than {MAX_DECODINGS} times over")]
    TooManyEncodings,
    #[error("the request path decodes to bytes that are not UTF-8")]
    NotUtf8,
    #[error("the request path decodes to a control character")]
    Control,
}

/// Decodings of `%XX` applied before giving up: `%252e` is `.` to an upstream that
/// decodes twice, so the lax reading decodes until nothing is left to decode.
pub const MAX_DECODINGS: usize = 4;

/// The path part of a request target: up to the first `?`.
pub fn path_only(target: &str) -> &str {
    target.split_once('?').map_or(target, |(p, _)| p)
}

/// Whether `path` is already its own lax reading: absolute, and free of `%XX`
/// escapes, `\`, `;`, control characters, empty segments (but a trailing `/`), `.` and
/// `..`. Most request paths are, and cost only this scan.
pub fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let b = path.as_bytes();
    if b.iter().enumerate().any(|(i, &c)| {
        matches!(c, b'\\' | b';') || c < 0x20 || c == 0x7f || escape_at(b, i).is_some()
    }) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(s) = segments.next() {
        let last = segments.peek().is_none();
        if s == "." || s == ".." || (s.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// The path as a lax upstream reads it (the path only: pass [`path_only`] of a request
/// target): every `%XX` decoded (again, up to [`MAX_DECODINGS`] times, until none is
/// left), `\` read as `/`, each segment cut at its first `;`, empty segments merged,
/// `.` dropped, `..` removing the segment before it and never climbing above `/`. A
/// trailing `/` (or a last segment that was `.` or `..`) stays a trailing `/`.
///
/// The reading is idempotent, never has a `..` or `.` segment, and a path already in
/// normal form ([`is_normal`]) is its own reading (borrowed, no allocation).
pub fn lax(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path.is_empty() {
        return Err(PathError::Missing);
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    lax_slow(path).map(Cow::Owned)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte a `%XX` at `at` stands for, if it is one.
fn escape_at(b: &[u8], at: usize) -> Option<u8> {
    if b.get(at) != Some(&b'%') {
        return None;
    }
    Some(hex(*b.get(at + 1)?)? << 4 | hex(*b.get(at + 2)?)?)
}

fn has_escape(b: &[u8]) -> bool {
    (0..b.len()).any(|i| escape_at(b, i).is_some())
}

/// One round of decoding: each valid `%XX` becomes its byte, anything else stays.
fn decode_once(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match escape_at(b, i) {
            Some(x) => {
                out.push(x);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

fn lax_slow(path: &str) -> Result<String, PathError> {
    let mut bytes = path.as_bytes().to_vec();
    let mut rounds = 0;
    while has_escape(&bytes) {
        if rounds == MAX_DECODINGS {
            return Err(PathError::TooManyEncodings);
        }
        bytes = decode_once(&bytes);
        rounds += 1;
    }
    if bytes.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(PathError::Control);
    }
    let decoded = String::from_utf8(bytes).map_err(|_| PathError::NotUtf8)?;
    let decoded = decoded.replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for raw in decoded.split('/').skip(1) {
        let seg = raw.split_once(';').map_or(raw, |(s, _)| s);
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = String::with_capacity(decoded.len());
    for s in &out {
        p.push('/');
        p.push_str(s);
    }
    if trailing || out.is_empty() {
        p.push('/');
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        for (given, read) in [
            ("/", "/"),
            ("/orders/42", "/orders/42"),
            ("/orders/", "/orders/"),
            ("/health/../orders/42", "/orders/42"),
            ("/health/%2e%2e/orders", "/orders"),
            ("/health/..;/orders", "/orders"),
            ("/health/%2E%2E%2Forders", "/orders"),
            ("/health\\..\\orders", "/orders"),
            ("/health//../orders", "/orders"),
            ("/health/%252e%252e/orders", "/orders"),
            ("/health/%5C..%5Corders", "/orders"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/..", "/"),
            ("//", "/"),
            ("/a;jsessionid=1/b;x=y", "/a/b"),
            ("/caf%C3%A9", "/café"),
            ("/100%", "/100%"),
            ("/100%25", "/100%"),
            ("/%zz", "/%zz"),
        ] {
            assert_eq!(lax(given).as_deref(), Ok(read), "{given}");
        }
    }

    #[test]
    fn paths_without_a_lax_reading() {
        for (given, why) in [
            ("", PathError::Missing),
            ("*", PathError::NotAbsolute),
            ("orders", PathError::NotAbsolute),
            ("http://host/orders", PathError::NotAbsolute),
            ("/a%00b", PathError::Control),
            ("/a%0d%0ab", PathError::Control),
            ("/a\u{7f}", PathError::Control),
            ("/%C0%AE%C0%AE/", PathError::NotUtf8),
            ("/%2525252525", PathError::TooManyEncodings),
        ] {
            assert_eq!(lax(given), Err(why), "{given}");
        }
        // Four rounds of encoding are still read.
        assert_eq!(lax("/%2525252e").as_deref(), Ok("/"));
    }

    #[test]
    fn path_only_cuts_the_query() {
        assert_eq!(path_only("/a/b?x=/../c"), "/a/b");
        assert_eq!(path_only("/a"), "/a");
        assert_eq!(path_only("?x"), "");
    }

    /// Paths made of the characters that matter here, and anything at all.
    fn path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2F".to_owned()),
            Just("%25".to_owned()),
            Just("%5c".to_owned()),
            Just("\\".to_owned()),
            Just(";".to_owned()),
            Just("%".to_owned()),
            "[a-z]{1,3}",
            "\\PC{0,3}",
        ];
        prop_oneof![
            proptest::collection::vec(piece, 0..16).prop_map(|v| format!("/{}", v.concat())),
            "\\PC{0,40}",
        ]
    }

    /// Paths in normal form: segments of plain characters, maybe a trailing `/`.
    fn normal() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec("[a-zA-Z0-9_~!$&'()*+,=:@.-]{1,8}", 0..6),
            any::<bool>(),
        )
            .prop_filter("no dot segments", |(segs, _)| {
                segs.iter().all(|s| s != "." && s != "..")
            })
            .prop_map(|(segs, slash)| {
                let mut p: String = segs.iter().map(|s| format!("/{s}")).collect();
                if slash || p.is_empty() {
                    p.push('/');
                }
                p
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn the_lax_reading_is_idempotent_and_never_climbs_above_the_root(p in path()) {
            if let Ok(once) = lax(&p) {
                prop_assert!(once.starts_with('/'), "{}", once);
                prop_assert!(is_normal(&once), "{} -> {}", p, once);
                prop_assert!(!once.split('/').any(|s| s == ".." || s == "."), "{}", once);
                let twice = lax(&once);
                prop_assert_eq!(twice.as_deref(), Ok(&*once));
            }
        }

        #[test]
        fn a_normal_path_is_its_own_lax_reading(p in normal()) {
            prop_assert!(is_normal(&p), "{}", p);
            let read = lax(&p);
            prop_assert_eq!(read.as_deref(), Ok(p.as_str()));
            // The fast path and the full reading agree.
            let slow = lax_slow(&p);
            prop_assert_eq!(slow.as_deref(), Ok(p.as_str()));
        }

        #[test]
        fn the_fast_path_agrees_with_the_full_reading(p in path()) {
            if is_normal(&p) {
                let slow = lax_slow(&p);
                prop_assert_eq!(slow.as_deref(), Ok(p.as_str()));
            }
        }
    }
}
