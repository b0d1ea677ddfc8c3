//! The little URL handling the filter needs: split an absolute URL into scheme,
//! authority, path and query; build and read `application/x-www-form-urlencoded`
//! strings; and decide whether a URL the browser asked for may be returned to.

/// An absolute `http`/`https` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: String,
    pub authority: String,
    /// Always starts with `/`.
    pub path: String,
    pub query: Option<String>,
}

impl Url {
    /// Parses `scheme://authority[/path][?query]`; no fragment, no user info, no
    /// whitespace or control characters.
    pub fn parse(s: &str) -> Option<Url> {
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) || s.contains('#') {
            return None;
        }
        let (scheme, rest) = s.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return None;
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.is_empty() || authority.contains(['@', '\\']) {
            return None;
        }
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (tail, None),
        };
        let path = if path.is_empty() { "/" } else { path };
        Some(Url {
            scheme,
            authority: authority.to_owned(),
            path: path.to_owned(),
            query,
        })
    }

    /// `path[?query]`, what an `http_call` sends as `:path`.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// `a=b&c=d`, each name and value form-encoded.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A parameter given more than once: ambiguous, so refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate;

/// The value of `name` in a query string or form body; `None` when absent, `Err` when
/// it is given twice.
pub fn param(query: &str, name: &str) -> Result<Option<String>, Duplicate> {
    let mut found = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == name {
            if found.is_some() {
                return Err(Duplicate);
            }
            found = Some(v.into_owned());
        }
    }
    Ok(found)
}

/// Whether `target` (what the browser first asked for, or a value read back from the
/// login cookie) is a local path this origin may redirect to: it starts with one `/`
/// and cannot be read by a browser as another host (`//evil`, `/\evil`, control or
/// whitespace characters).
pub fn is_local_target(target: &str) -> bool {
    let b = target.as_bytes();
    b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/') | Some(b'\\'))
        && !b.iter().any(|&c| c <= b' ' || c == 0x7f || c == b'\\')
        && target.len() <= 2048
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        let u = Url::parse("https://idp.example.com:8443/realms/x?a=1").unwrap();
        assert_eq!(u.scheme, "https");
        assert_eq!(u.authority, "idp.example.com:8443");
        assert_eq!(u.path, "/realms/x");
        assert_eq!(u.query.as_deref(), Some("a=1"));
        assert_eq!(u.path_and_query(), "/realms/x?a=1");
        assert_eq!(Url::parse("http://h").unwrap().path, "/");
        for bad in [
            "ftp://h/",
            "https:///x",
            "https://u@h/",
            "https://h/#f",
            "https://h/ x",
            "h/x",
        ] {
            assert!(Url::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn params_decode_and_duplicates_are_refused() {
        assert_eq!(
            param("code=a%2Bb&state=x+y", "state"),
            Ok(Some("x y".into()))
        );
        assert_eq!(param("code=a%2Bb", "code"), Ok(Some("a+b".into())));
        assert_eq!(param("code=a", "state"), Ok(None));
        assert_eq!(param("state=a&state=b", "state"), Err(Duplicate));
        assert_eq!(form(&[("a", "x y&"), ("b", "/")]), "a=x+y%26&b=%2F");
    }

    #[test]
    fn only_local_targets_are_returned_to() {
        for ok in ["/", "/orders?id=1", "/a/b%2F"] {
            assert!(is_local_target(ok), "{ok}");
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example/",
            "",
            "evil",
            "/a\r\nSet-Cookie: x",
            "/a b",
            "/\\/evil",
        ] {
            assert!(!is_local_target(bad), "{bad}");
        }
    }
}
