//! Where a token is: headers (with a prefix such as `Bearer `), query parameters,
//! cookies. More than one token in a request is refused: which one would count is
//! exactly the ambiguity an attacker looks for. A value under a name a lenient upstream
//! reads as one of the token's (`kit::credential`) counts as a second token: with it,
//! the identity headers would say one thing and the upstream read another.

use kit::credential::{same_name, scan_cookies, scan_query};

use crate::config::{Config, Provider, Rule};
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
    // A value under a name a lenient upstream reads as one the rule's providers look
    // at (`access%5Ftoken`, `ACCESS_TOKEN`, `;access_token=`, `x_jwt` for `x-jwt`):
    // beside a token, the upstream may read that one instead (kit::credential).
    let mut lookalike = false;
    let providers = || rule.providers.iter().map(|&pi| (pi, &config.providers[pi]));
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
    }
    for (k, v) in headers {
        let mut named = providers().flat_map(|(_, p)| p.from_headers.iter());
        if !v.trim().is_empty()
            && !named.clone().any(|l| l.name == k.as_ref())
            && named.any(|l| same_name(&l.name, k))
        {
            lookalike = true;
        }
    }
    // Each name once, with every provider of the rule that reads it.
    let names = |of: fn(&Provider) -> &Vec<String>| {
        let mut names: Vec<&str> = Vec::new();
        for (_, p) in providers() {
            for n in of(p) {
                if !names.contains(&n.as_str()) {
                    names.push(n);
                }
            }
        }
        names
    };
    let readers = |of: fn(&Provider) -> &Vec<String>, name: &str| -> Vec<usize> {
        providers()
            .filter(|(_, p)| of(p).iter().any(|n| n == name))
            .map(|(pi, _)| pi)
            .collect()
    };
    // Most requests have neither a query nor a cookie: no allocation for them.
    if path.contains('?') {
        let params = names(|p| &p.from_params);
        let scan = scan_query(path, &params);
        lookalike |= scan.lookalike;
        for (at, (n, value)) in scan.exact.into_iter().enumerate() {
            for pi in readers(|p| &p.from_params, params[n]) {
                add((1, at, 0), value, Location::Param(params[n].to_owned()), pi);
            }
        }
    }
    if headers.iter().any(|(k, _)| k.as_ref() == "cookie") {
        let cookies = names(|p| &p.from_cookies);
        for (hi, (_, v)) in headers
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| k.as_ref() == "cookie")
        {
            let scan = scan_cookies(v, &cookies);
            lookalike |= scan.lookalike;
            for (at, (n, value)) in scan.exact.into_iter().enumerate() {
                for pi in readers(|p| &p.from_cookies, cookies[n]) {
                    add(
                        (2, hi, at),
                        value,
                        Location::Cookie(cookies[n].to_owned()),
                        pi,
                    );
                }
            }
        }
    }
    if lookalike && !found.is_empty() {
        return Err(Invalid::Multiple);
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

    #[test]
    fn a_lookalike_name_beside_a_token_is_a_second_token() {
        let c = config(CONF);
        let r = &c.rules[0];
        let auth = h(&[("authorization", "Bearer abc")]);
        for path in [
            "/?access%5Ftoken=x",
            "/?ACCESS_TOKEN=x",
            "/?access-token=x",
            "/?q=1;access_token=x",
            "/?access_token=abc;access_token=x",
        ] {
            assert_eq!(find(&c, r, &auth, path), Err(Invalid::Multiple), "{path}");
        }
        let cookies = h(&[("authorization", "Bearer abc"), ("cookie", "TOK=x")]);
        assert_eq!(find(&c, r, &cookies, "/"), Err(Invalid::Multiple));
        let cookies = h(&[("authorization", "Bearer abc"), ("cookie", "tok =x")]);
        assert_eq!(find(&c, r, &cookies, "/"), Err(Invalid::Multiple));
        // Alone, a lookalike is no token; an encoded name is the name.
        assert_eq!(find(&c, r, &h(&[]), "/?ACCESS_TOKEN=x"), Ok(None));
        let f = find(&c, r, &h(&[]), "/?access%5Ftoken=t").unwrap().unwrap();
        assert_eq!(
            (f.token.as_str(), f.location),
            ("t", Location::Param("access_token".into()))
        );
        // Empty lookalikes, and other names, are nothing.
        assert_eq!(
            find(&c, r, &auth, "/?ACCESS_TOKEN=&token=1&access_tokens=2")
                .unwrap()
                .unwrap()
                .token,
            "abc"
        );
    }

    #[test]
    fn a_lookalike_header_beside_a_token_is_a_second_token() {
        let c = config(
            r#"{"providers": {"a": {"local_jwks": {"keys": [{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI","alg":"HS256"}]},
                "algorithms": ["HS256"], "from_headers": [{"name": "x-jwt"}]}}}"#,
        );
        let r = &c.rules[0];
        assert_eq!(
            find(&c, r, &h(&[("x-jwt", "a"), ("x_jwt", "b")]), "/"),
            Err(Invalid::Multiple)
        );
        assert_eq!(find(&c, r, &h(&[("x_jwt", "b")]), "/"), Ok(None));
    }
}
