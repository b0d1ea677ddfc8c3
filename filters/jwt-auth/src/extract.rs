//! Where a token is: headers (with a prefix such as `Bearer `), query parameters,
//! cookies. More than one token in a request is refused: which one would count is
//! exactly the ambiguity an attacker looks for.

use crate::config::{Config, Rule};
use crate::error::Invalid;

/// A token found in the request, where it was, and which providers look there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub token: String,
    pub location: Location,
    pub providers: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Header(String),
    Param(String),
    Cookie(String),
}

/// Finds the request's token for `rule`. `headers`: every request header (lower-case
/// names, in order); `path`: `:path` with its query.
pub fn find(
    config: &Config,
    rule: &Rule,
    headers: &[(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)],
    path: &str,
) -> Result<Option<Found>, Invalid> {
    // Each occurrence is keyed by where exactly it sits, so a header two providers both
    // read counts once, and two Authorization headers count twice.
    let mut found: Vec<((u8, usize, usize), Found)> = Vec::new();
    let mut add =
        |at: (u8, usize, usize), token: &str, location: Location, provider: usize| match found
            .iter_mut()
            .find(|(k, _)| *k == at)
        {
            Some((_, f)) => {
                if !f.providers.contains(&provider) {
                    f.providers.push(provider);
                }
            }
            None => found.push((
                at,
                Found {
                    token: token.to_owned(),
                    location,
                    providers: vec![provider],
                },
            )),
        };
    let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
    for &pi in &rule.providers {
        let p = &config.providers[pi];
        for loc in &p.from_headers {
            for (hi, (k, v)) in headers
                .iter()
                .enumerate()
                .filter(|(_, (k, _))| k.as_ref() == loc.name)
            {
                let value = match &loc.value_prefix {
                    // The scheme is case-insensitive (RFC 9110 11.1).
                    Some(prefix) => match v.get(..prefix.len()) {
                        Some(head) if head.eq_ignore_ascii_case(prefix) => v[prefix.len()..].trim(),
                        _ => continue,
                    },
                    None => v.trim(),
                };
                if !value.is_empty() {
                    add((0, hi, 0), value, Location::Header(k.to_string()), pi);
                }
            }
        }
        for name in &p.from_params {
            for (qi, pair) in query.split('&').enumerate() {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if k == name && !v.is_empty() {
                    add((1, qi, 0), v, Location::Param(name.clone()), pi);
                }
            }
        }
        for name in &p.from_cookies {
            for (hi, (_, v)) in headers
                .iter()
                .enumerate()
                .filter(|(_, (k, _))| k.as_ref() == "cookie")
            {
                for (ci, c) in v.split(';').enumerate() {
                    let (k, val) = c.trim().split_once('=').unwrap_or((c.trim(), ""));
                    if k == name && !val.is_empty() {
                        add((2, hi, ci), val, Location::Cookie(name.clone()), pi);
                    }
                }
            }
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().map(|(_, f)| f)),
        _ => Err(Invalid::Multiple),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(Some(json.as_bytes())).unwrap()
    }

    const CONF: &str = r#"{"providers": {
        "a": {"local_jwks": {"keys": [{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI","alg":"HS256"}]}, "algorithms": ["HS256"],
              "from_params": ["access_token"], "from_cookies": ["tok"]},
        "b": {"local_jwks": {"keys": [{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI","alg":"HS256"}]}, "algorithms": ["HS256"]}
      }, "rules": [{"match": {"prefix": "/"}, "requires": {"any": ["a", "b"]}}]}"#;

    fn h(
        pairs: &[(&'static str, &'static str)],
    ) -> Vec<(
        std::borrow::Cow<'static, str>,
        std::borrow::Cow<'static, str>,
    )> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn one_header_read_by_two_providers_is_one_token() {
        let c = config(CONF);
        let f = find(&c, &c.rules[0], &h(&[("authorization", "bearer abc")]), "/")
            .unwrap()
            .unwrap();
        assert_eq!(f.token, "abc");
        assert_eq!(f.providers, vec![0, 1]);
    }

    #[test]
    fn two_tokens_anywhere_are_refused() {
        let c = config(CONF);
        let r = &c.rules[0];
        let two_headers = h(&[
            ("authorization", "Bearer abc"),
            ("authorization", "Bearer abc"),
        ]);
        assert_eq!(find(&c, r, &two_headers, "/"), Err(Invalid::Multiple));
        assert_eq!(
            find(
                &c,
                r,
                &h(&[("authorization", "Bearer abc")]),
                "/?access_token=abc"
            ),
            Err(Invalid::Multiple)
        );
        assert_eq!(
            find(&c, r, &h(&[("cookie", "tok=x; tok=y")]), "/"),
            Err(Invalid::Multiple)
        );
        assert_eq!(
            find(&c, r, &h(&[]), "/?access_token=a&access_token=b"),
            Err(Invalid::Multiple)
        );
    }

    #[test]
    fn params_and_cookies_and_missing() {
        let c = config(CONF);
        let r = &c.rules[0];
        assert_eq!(
            find(&c, r, &h(&[]), "/x?a=1&access_token=t1")
                .unwrap()
                .unwrap()
                .token,
            "t1"
        );
        assert_eq!(
            find(&c, r, &h(&[("cookie", "a=1; tok=t2")]), "/")
                .unwrap()
                .unwrap()
                .token,
            "t2"
        );
        assert_eq!(
            find(&c, r, &h(&[("authorization", "Basic dXNlcg==")]), "/").unwrap(),
            None
        );
        assert_eq!(find(&c, r, &h(&[]), "/").unwrap(), None);
    }
}
