//! Applying a phase's operations to a header list: plain data in and out, so the
//! order and every edge case are tested natively.

use std::borrow::Cow;

use crate::config::Phase;

/// A header list: names and values borrowed from the host's buffer until changed.
pub type Headers<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;
use crate::template::{Facts, Template};

/// What a phase did that the filter reports (a metric and a log line each).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Headers (or query parameters) not set because their value would have carried
    /// CR, LF or NUL: a header-injection attempt through a template.
    pub blocked: Vec<String>,
    /// The header names whose values changed (so the filter writes back only those).
    pub touched: Vec<String>,
}

impl Outcome {
    pub fn changed(&self) -> bool {
        !self.touched.is_empty()
    }

    pub fn touch(&mut self, name: &str) {
        if !self.touched.iter().any(|t| t == name) {
            self.touched.push(name.to_owned());
        }
    }
}

fn render(t: &Template, facts: &Facts, skip_missing: bool) -> Option<String> {
    if skip_missing {
        t.render(facts)
    } else {
        Some(t.render_lossy(facts))
    }
}

/// The value of one operation: `None` when it is to be skipped (a missing template
/// value under `skip`, or a value that would carry CR, LF or NUL, recorded in
/// `blocked`).
pub fn value(
    name: &str,
    t: &Template,
    facts: &Facts,
    skip_missing: bool,
    blocked: &mut Vec<String>,
) -> Option<String> {
    let v = render(t, facts, skip_missing)?;
    if injection(&v) {
        blocked.push(name.to_owned());
        return None;
    }
    Some(v)
}

fn injection(v: &str) -> bool {
    v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// Applies `phase` to `headers` (lower-case names) in Kong's order.
pub fn apply<'a>(
    phase: &'a Phase,
    headers: &mut Headers<'a>,
    facts: &Facts,
    skip_missing: bool,
) -> Outcome {
    let mut out = Outcome::default();
    for name in &phase.remove {
        let len = headers.len();
        headers.retain(|(k, _)| k.as_ref() != name);
        if headers.len() != len {
            out.touch(name);
        }
    }
    for (from, to) in &phase.rename {
        if headers.iter().any(|(k, _)| k.as_ref() == from) {
            out.touch(from);
            out.touch(to);
            headers.retain(|(k, _)| k.as_ref() != to);
            for (k, _) in headers.iter_mut().filter(|(k, _)| k.as_ref() == from) {
                *k = Cow::Borrowed(to.as_str());
            }
        }
    }
    let value = |name: &str, t: &Template, out: &mut Outcome| {
        value(name, t, facts, skip_missing, &mut out.blocked)
    };
    for (name, t) in &phase.replace {
        if headers.iter().any(|(k, _)| k.as_ref() == name) {
            if let Some(v) = value(name, t, &mut out) {
                set(headers, name, v);
                out.touch(name);
            }
        }
    }
    for (name, t) in &phase.add {
        if !headers.iter().any(|(k, _)| k.as_ref() == name) {
            if let Some(v) = value(name, t, &mut out) {
                headers.push((Cow::Borrowed(name.as_str()), Cow::Owned(v)));
                out.touch(name);
            }
        }
    }
    for (name, t) in &phase.append {
        if let Some(v) = value(name, t, &mut out) {
            headers.push((Cow::Borrowed(name.as_str()), Cow::Owned(v)));
            out.touch(name);
        }
    }
    let query_ops = !(phase.query_remove.is_empty()
        && phase.query_rename.is_empty()
        && phase.query_replace.is_empty()
        && phase.query_add.is_empty()
        && phase.query_append.is_empty());
    if query_ops {
        if let Some(i) = headers.iter().position(|(k, _)| k == ":path") {
            let path = apply_query(phase, &headers[i].1, facts, skip_missing, &mut out);
            if path != headers[i].1 {
                headers[i].1 = Cow::Owned(path);
                out.touch(":path");
            }
        }
    }
    out
}

/// Sets `name` to one value, in the place of the first one.
pub fn set(headers: &mut Headers<'_>, name: &str, value: String) {
    match headers.iter().position(|(k, _)| k == name) {
        Some(i) => {
            headers[i].1 = Cow::Owned(value);
            let mut seen = false;
            headers.retain(|(k, _)| {
                if k != name {
                    return true;
                }
                let keep = !seen;
                seen = true;
                keep
            });
        }
        None => headers.push((Cow::Owned(name.to_owned()), Cow::Owned(value))),
    }
}

fn apply_query(
    phase: &Phase,
    path: &str,
    facts: &Facts,
    skip_missing: bool,
    out: &mut Outcome,
) -> String {
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    for name in &phase.query_remove {
        pairs.retain(|(k, _)| k != name);
    }
    for (from, to) in &phase.query_rename {
        for (k, _) in pairs.iter_mut().filter(|(k, _)| k == from) {
            *k = to.clone();
        }
    }
    let mut value = |name: &str, t: &Template| -> Option<String> {
        let v = render(t, facts, skip_missing)?;
        if injection(&v) {
            out.blocked.push(format!("query {name}"));
            return None;
        }
        Some(encode(&v))
    };
    for (name, t) in &phase.query_replace {
        if pairs.iter().any(|(k, _)| k == name) {
            if let Some(v) = value(name, t) {
                pairs.retain(|(k, _)| k != name);
                pairs.push((name.clone(), v));
            }
        }
    }
    for (name, t) in &phase.query_add {
        if !pairs.iter().any(|(k, _)| k == name) {
            if let Some(v) = value(name, t) {
                pairs.push((name.clone(), v));
            }
        }
    }
    for (name, t) in &phase.query_append {
        if let Some(v) = value(name, t) {
            pairs.push((name.clone(), v));
        }
    }
    if pairs.is_empty() {
        return base.to_owned();
    }
    let q: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| if v.is_empty() { k } else { format!("{k}={v}") })
        .collect();
    format!("{base}?{}", q.join("&"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(json: &str) -> Config {
        Config::parse(Some(json.as_bytes())).unwrap_or_else(|e| panic!("{e}"))
    }

    fn h<'a>(pairs: &[(&'a str, &'a str)]) -> Headers<'a> {
        pairs
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v)))
            .collect()
    }

    fn get<'a>(headers: &'a Headers<'_>, name: &str) -> Vec<&'a str> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
            .collect()
    }

    #[test]
    fn kong_order_remove_rename_replace_add_append() {
        let c = config(
            r#"{"request": {
            "remove": {"headers": ["x-internal"]},
            "rename": {"headers": {"x-old": "x-new"}},
            "replace": {"headers": {"x-new": "replaced", "x-absent": "never"}},
            "add": {"headers": {"x-new": "not-added", "x-added": "yes"}},
            "append": {"headers": {"x-new": "appended"}}
        }}"#,
        );
        let mut headers = h(&[(":path", "/"), ("x-internal", "1"), ("x-old", "v")]);
        let facts = Facts::from_headers(&headers, None);
        apply(&c.request, &mut headers, &facts, true);
        assert!(get(&headers, "x-internal").is_empty());
        assert!(get(&headers, "x-old").is_empty());
        assert_eq!(get(&headers, "x-new"), vec!["replaced", "appended"]);
        assert!(
            get(&headers, "x-absent").is_empty(),
            "replace only when present"
        );
        assert_eq!(get(&headers, "x-added"), vec!["yes"]);
    }

    #[test]
    fn missing_template_values_skip_or_empty() {
        let mut headers = h(&[(":path", "/")]);
        let facts = Facts::from_headers(&headers, None);
        let skip = config(r#"{"request": {"add": {"headers": {"x-tier": "$(consumer.tier)"}}}}"#);
        apply(&skip.request, &mut headers, &facts, skip.skip_missing);
        assert!(get(&headers, "x-tier").is_empty());
        let empty = config(
            r#"{"missing": "empty", "request": {"add": {"headers": {"x-tier": "tier=$(consumer.tier)"}}}}"#,
        );
        apply(&empty.request, &mut headers, &facts, empty.skip_missing);
        assert_eq!(get(&headers, "x-tier"), vec!["tier="]);
    }

    #[test]
    fn a_template_that_expands_to_a_line_break_is_blocked() {
        let c = config(
            r#"{"request": {"add": {"headers": {"x-echo": "$(headers.x-user)"}, "querystring": {"u": "$(headers.x-user)"}}}}"#,
        );
        let mut headers = h(&[(":path", "/a"), ("x-user", "ada\r\nx-consumer-id: admin")]);
        let facts = Facts::from_headers(&headers, None);
        let out = apply(&c.request, &mut headers, &facts, true);
        assert_eq!(out.blocked, vec!["x-echo".to_owned(), "query u".to_owned()]);
        assert!(get(&headers, "x-echo").is_empty());
        assert_eq!(get(&headers, ":path"), vec!["/a"]);
    }

    #[test]
    fn querystring_operations() {
        let c = config(
            r#"{"request": {
            "remove": {"querystring": ["debug"]},
            "rename": {"querystring": {"q": "query"}},
            "replace": {"querystring": {"page": "1"}},
            "add": {"querystring": {"who": "$(consumer.username)"}},
            "append": {"querystring": {"tag": "a b"}}
        }}"#,
        );
        let mut headers = h(&[
            (":path", "/s?debug=1&q=x&page=9"),
            ("x-consumer-username", "ada"),
        ]);
        let mut facts = Facts::from_headers(&headers, None);
        facts.verified = true;
        apply(&c.request, &mut headers, &facts, true);
        assert_eq!(
            get(&headers, ":path"),
            vec!["/s?query=x&page=1&who=ada&tag=a%20b"]
        );
    }

    #[test]
    fn host_means_authority_and_bad_names_are_refused() {
        let c = config(r#"{"request": {"replace": {"headers": {"host": "orders.internal"}}}}"#);
        let mut headers = h(&[(":authority", "api.example.com")]);
        let facts = Facts::from_headers(&headers, None);
        apply(&c.request, &mut headers, &facts, true);
        assert_eq!(get(&headers, ":authority"), vec!["orders.internal"]);
        let err = |j: &str| Config::parse(Some(j.as_bytes())).unwrap_err().to_string();
        assert!(
            err(r#"{"request": {"add": {"headers": {"bad name": "x"}}}}"#)
                .contains("request.add.headers")
        );
        assert!(
            err(r#"{"request": {"add": {"headers": {"transfer-encoding": "chunked"}}}}"#)
                .contains("hop-by-hop")
        );
        assert!(
            err(r#"{"request": {"add": {"headers": {":path": "/x"}}}}"#)
                .contains("not a valid header name")
        );
        assert!(
            err(r#"{"request": {"add": {"headers": {"x-a": "a\u0000b"}}}}"#)
                .contains("control character")
        );
        assert!(
            err(r#"{"response": {"add": {"querystring": {"a": "b"}}}}"#)
                .contains("no query string")
        );
        assert!(err(r#"{"missing": "maybe"}"#).contains("missing"));
    }
}
