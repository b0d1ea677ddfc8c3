//! Value templates: literal text with `$(source.name)` references, parsed once at load.
//!
//! Sources: `headers.NAME` (never an identity header's name), `query.NAME`,
//! `consumer.id|username|groups|tier` (from the identity headers an auth filter set,
//! never from anything else a client sent),
//! `request.path|method|host|id`, `source.address`.

use kit::config::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Header(String),
    Query(String),
    Consumer(&'static str),
    Path,
    Method,
    Host,
    RequestId,
    SourceAddress,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Ref(Source),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
}

impl Template {
    pub fn parse(s: &str, field: &str) -> Result<Template, ConfigError> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("$(") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find(')')
                .ok_or_else(|| ConfigError::field(field, format!("unclosed `$(` in `{s}`")))?;
            parts.push(Part::Ref(
                source(&after[..end]).map_err(|e| ConfigError::field(field, e))?,
            ));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The value, or `None` when a referenced value is missing.
    pub fn render(&self, facts: &Facts) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Ref(src) => out.push_str(facts.get(src)?),
            }
        }
        Some(out)
    }

    /// The value with missing references as empty text.
    pub fn render_lossy(&self, facts: &Facts) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Ref(src) => out.push_str(facts.get(src).unwrap_or("")),
            }
        }
        out
    }
}

fn source(r: &str) -> Result<Source, String> {
    let (kind, name) = r
        .split_once('.')
        .ok_or_else(|| format!("`$({r})`: expected SOURCE.NAME"))?;
    Ok(match (kind, name) {
        // What the client sent, verified or not: the identity is `consumer.*`'s.
        ("headers", n) if kit::identity::is_identity_name(n) => {
            return Err(format!(
                "`$({r})` reads an identity header whether or not an auth filter verified it: use $(consumer.id|username|groups|tier)"
            ));
        }
        ("headers", n) if !n.is_empty() => Source::Header(n.to_ascii_lowercase()),
        ("query", n) if !n.is_empty() => Source::Query(n.to_owned()),
        ("consumer", "id") => Source::Consumer(kit::identity::CONSUMER_ID),
        ("consumer", "username") => Source::Consumer(kit::identity::CONSUMER_USERNAME),
        ("consumer", "groups") => Source::Consumer(kit::identity::CONSUMER_GROUPS),
        ("consumer", "tier") => Source::Consumer(kit::identity::CONSUMER_TIER),
        ("request", "path") => Source::Path,
        ("request", "method") => Source::Method,
        ("request", "host") => Source::Host,
        ("request", "id") => Source::RequestId,
        ("source", "address") => Source::SourceAddress,
        _ => {
            return Err(format!(
                "`$({r})` is not a template source (headers.NAME, query.NAME, consumer.id|username|groups|tier, request.path|method|host|id, source.address)"
            ));
        }
    })
}

/// What templates read, copied from the request before any transformation (so the
/// response phase can use it: request headers cannot be read then).
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// A few entries each: a list beats a hash map here (no hashing, one allocation).
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub path: String,
    pub method: String,
    pub host: String,
    pub request_id: String,
    pub source_address: Option<String>,
    /// Whether an auth filter verified this request: only then do the identity headers
    /// say who the consumer is (otherwise they are whatever the client sent).
    pub verified: bool,
}

fn lookup<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The header names templates read (so only those are copied per request).
#[derive(Debug, Default, Clone)]
pub struct Needs {
    pub headers: Vec<String>,
}

impl Needs {
    pub fn of<'a>(templates: impl Iterator<Item = &'a Template>) -> Needs {
        let mut headers: Vec<String> = Vec::new();
        for t in templates {
            for p in &t.parts {
                match p {
                    Part::Ref(Source::Header(h)) => headers.push(h.clone()),
                    Part::Ref(Source::Consumer(h)) => headers.push((*h).to_owned()),
                    _ => {}
                }
            }
        }
        headers.sort();
        headers.dedup();
        Needs { headers }
    }
}

impl Facts {
    /// From the request headers (lower-case names; the first value of each counts).
    pub fn from_headers(
        headers: &[(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)],
        source_address: Option<String>,
    ) -> Facts {
        Self::gather(headers, source_address, None)
    }

    /// As `from_headers`, copying only the headers `needs` names.
    pub fn gather(
        headers: &[(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)],
        source_address: Option<String>,
        needs: Option<&Needs>,
    ) -> Facts {
        let mut f = Facts {
            source_address,
            ..Facts::default()
        };
        for (k, v) in headers {
            // The request facts every template may read, copied once each.
            let slot = match k.as_ref() {
                ":path" => Some(&mut f.path),
                ":method" => Some(&mut f.method),
                ":authority" => Some(&mut f.host),
                "x-request-id" => Some(&mut f.request_id),
                _ => None,
            };
            if let Some(slot) = slot {
                if slot.is_empty() {
                    *slot = v.to_string();
                }
            }
            if needs.is_some_and(|n| !n.headers.iter().any(|h| h == k)) {
                continue;
            }
            if !f.headers.iter().any(|(h, _)| h == k) {
                f.headers.push((k.to_string(), v.to_string()));
            }
        }
        if let Some((_, q)) = f.path.split_once('?') {
            for pair in q.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if !f.query.iter().any(|(q, _)| q == k) {
                    f.query.push((k.to_owned(), v.to_owned()));
                }
            }
        }
        f
    }

    pub fn get(&self, s: &Source) -> Option<&str> {
        let v = match s {
            Source::Header(n) => lookup(&self.headers, n)?,
            Source::Query(n) => lookup(&self.query, n)?,
            Source::Consumer(h) if self.verified => lookup(&self.headers, h)?,
            Source::Consumer(_) => return None,
            Source::Path => self.path.split('?').next().unwrap_or(""),
            Source::Method => &self.method,
            Source::Host => &self.host,
            Source::RequestId => &self.request_id,
            Source::SourceAddress => self.source_address.as_deref()?,
        };
        (!v.is_empty()).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let t =
            Template::parse("Bearer $(headers.X-Token) for $(consumer.username)!", "f").unwrap();
        let mut f = Facts::from_headers(
            &[
                ("x-token".into(), "abc".into()),
                ("x-consumer-username".into(), "ada".into()),
            ],
            None,
        );
        f.verified = true;
        assert_eq!(t.render(&f).as_deref(), Some("Bearer abc for ada!"));
        let missing = Template::parse("$(consumer.tier)", "f").unwrap();
        assert_eq!(missing.render(&f), None);
        assert_eq!(missing.render_lossy(&f), "");
        assert!(Template::parse("plain", "f").unwrap().is_literal());
    }

    #[test]
    fn refuses_unknown_sources_by_field() {
        let e = Template::parse("$(consumer.password)", "request.add.headers.x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("request.add.headers.x") && e.contains("consumer.password"),
            "{e}"
        );
        assert!(Template::parse("$(headers.x", "f").is_err());
    }

    #[test]
    fn path_and_query_sources() {
        let f = Facts::from_headers(
            &[(":path".into(), "/a/b?x=1&y=2".into())],
            Some("10.0.0.1:5".into()),
        );
        assert_eq!(f.get(&Source::Path), Some("/a/b"));
        assert_eq!(f.get(&Source::Query("y".into())), Some("2"));
        assert_eq!(f.get(&Source::SourceAddress), Some("10.0.0.1:5"));
    }
}
