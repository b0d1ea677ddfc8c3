//! Which route a request takes: the most specific match wins (host, then the longest
//! path prefix, then methods, then headers), as Kong orders them. Paths are matched on
//! the normalized path (`crate::path`), without its query: Kong's `paths` as plain
//! prefixes, `path_separated_prefixes` only at a segment boundary.

use std::sync::Arc;

use crate::config::{MatchConfig, Route};

pub struct Router {
    /// Routes sorted most specific first; the first that matches wins.
    routes: Vec<Arc<Route>>,
}

/// The facts routing looks at.
/// How specific a match is: host rank, by a regex path, its `regex_priority`, the
/// prefix's length, methods, headers (higher wins).
type Rank = (u8, bool, i64, usize, bool, usize);

pub struct RequestFacts<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub method: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// A match and the path prefix it matched (for `strip_path`): one of the route's
/// prefixes, or the text a regex path matched.
pub struct Matched<'r> {
    pub route: &'r Arc<Route>,
    pub prefix: std::borrow::Cow<'r, str>,
}

impl Router {
    pub fn new(routes: &[Arc<Route>]) -> Router {
        let mut routes = routes.to_vec();
        // Stable sort keeps configuration order among equally specific routes.
        routes.sort_by_key(|r| std::cmp::Reverse(specificity(&r.matches)));
        Router { routes }
    }

    pub fn route(&self, req: &RequestFacts<'_>) -> Option<Matched<'_>> {
        let host = strip_port(req.host);
        let path = req.path.split('?').next().unwrap_or(req.path);
        let mut best: Option<(Matched<'_>, Rank)> = None;
        for r in &self.routes {
            let m = &r.matches;
            let host_rank = if m.hosts.is_empty() {
                0
            } else if let Some(rank) = m.hosts.iter().filter_map(|h| host_match(h, host)).max() {
                rank
            } else {
                continue;
            };
            // A regex path first (Kong ranks them above prefixes), then the prefixes.
            let by_regex = r.regexes.iter().find_map(|re| re.find(path));
            let prefix: std::borrow::Cow<'_, str> = if let Some(found) = by_regex {
                std::borrow::Cow::Owned(found.as_str().to_owned())
            } else if m.paths.is_empty()
                && m.path_separated_prefixes.is_empty()
                && r.regexes.is_empty()
            {
                std::borrow::Cow::Borrowed("")
            } else {
                let plain = m.paths.iter().filter(|p| path.starts_with(p.as_str()));
                let separated = m
                    .path_separated_prefixes
                    .iter()
                    .filter(|p| separated_prefix(p, path));
                match plain.chain(separated).max_by_key(|p| p.len()) {
                    Some(p) => std::borrow::Cow::Borrowed(p.as_str()),
                    None => continue,
                }
            };
            if !m.methods.is_empty()
                && !m.methods.iter().any(|x| x.eq_ignore_ascii_case(req.method))
            {
                continue;
            }
            if !m.headers.iter().all(|(k, v)| {
                req.headers
                    .get(k.as_str())
                    .is_some_and(|got| got.as_bytes() == v.as_bytes())
            }) {
                continue;
            }
            let regex = by_regex.is_some();
            let rank = (
                host_rank,
                regex,
                if regex { m.regex_priority } else { 0 },
                if regex { 0 } else { prefix.len() },
                !m.methods.is_empty(),
                m.headers.len(),
            );
            if best.as_ref().is_none_or(|(_, b)| rank > *b) {
                best = Some((Matched { route: r, prefix }, rank));
            }
        }
        best.map(|(m, _)| m)
    }
}

/// Envoy's `path_separated_prefix`: `prefix` is the whole path or is followed by `/`.
pub fn separated_prefix(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix == "/",
        None => false,
    }
}

fn specificity(m: &MatchConfig) -> (bool, usize, bool, usize) {
    (
        !m.hosts.is_empty(),
        m.paths
            .iter()
            .chain(&m.path_separated_prefixes)
            .map(String::len)
            .max()
            .unwrap_or(0),
        !m.methods.is_empty(),
        m.headers.len(),
    )
}

/// 2 for an exact host, 1 for a wildcard (`*.example.com`, or Kong's trailing
/// `example.*`), `None` for no match.
fn host_match(pattern: &str, host: &str) -> Option<u8> {
    if pattern.eq_ignore_ascii_case(host) {
        return Some(2);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return (host.len() > suffix.len()
            && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
        .then_some(1);
    }
    let prefix = pattern.strip_suffix('*')?;
    (host.len() > prefix.len()
        && host.is_char_boundary(prefix.len())
        && host[..prefix.len()].eq_ignore_ascii_case(prefix))
    .then_some(1)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        name: &str,
        hosts: &[&str],
        paths: &[&str],
        methods: &[&str],
        headers: &[(&str, &str)],
    ) -> Arc<Route> {
        Arc::new(Route {
            index: 0,
            name: name.into(),
            matches: MatchConfig {
                hosts: hosts.iter().map(|s| s.to_string()).collect(),
                paths: paths
                    .iter()
                    .filter(|s| !s.starts_with('='))
                    .map(|s| s.to_string())
                    .collect(),
                path_separated_prefixes: paths
                    .iter()
                    .filter_map(|s| s.strip_prefix('='))
                    .map(|s| s.to_string())
                    .collect(),
                methods: methods.iter().map(|s| s.to_string()).collect(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                regex_paths: paths
                    .iter()
                    .filter_map(|s| s.strip_prefix('~'))
                    .map(|s| s.to_string())
                    .collect(),
                regex_priority: 0,
            },
            service: 0,
            filters: vec![],
            strip_path: false,
            preserve_host: false,
            trust_identity_headers: false,
            regexes: paths
                .iter()
                .filter_map(|s| s.strip_prefix('~'))
                .map(|p| regex::Regex::new(&format!("^(?:{p})")).unwrap())
                .collect(),
        })
    }

    #[test]
    fn regex_paths_beat_prefixes_and_priority_orders_them() {
        let mut low = route("low", &[], &["~/users/[0-9]+"], &[], &[]);
        let mut high = route("high", &[], &["~/users/1[0-9]*"], &[], &[]);
        Arc::get_mut(&mut high).unwrap().matches.regex_priority = 5;
        Arc::get_mut(&mut low).unwrap().matches.regex_priority = 1;
        let prefix = route("prefix", &[], &["/users/1"], &[], &[]);
        let router = Router::new(&[prefix, low, high]);
        assert_eq!(pick(&router, "h", "/users/12", "GET", &[]), Some("high"));
        assert_eq!(pick(&router, "h", "/users/42", "GET", &[]), Some("low"));
        // Anchored at the start: a match deeper in the path does not count.
        assert_eq!(pick(&router, "h", "/x/users/42", "GET", &[]), None);
        // The text a regex matched is what strip_path removes.
        let headers = http::HeaderMap::new();
        let m = router
            .route(&RequestFacts {
                host: "h",
                path: "/users/42/orders?x=1",
                method: "GET",
                headers: &headers,
            })
            .unwrap();
        assert_eq!(m.prefix, "/users/42");
    }

    fn pick<'a>(
        router: &'a Router,
        host: &str,
        path: &str,
        method: &str,
        hdrs: &[(&'static str, &str)],
    ) -> Option<&'a str> {
        let mut headers = http::HeaderMap::new();
        for (k, v) in hdrs {
            headers.insert(*k, v.parse().unwrap());
        }
        let facts = RequestFacts {
            host,
            path,
            method,
            headers: &headers,
        };
        router.route(&facts).map(|m| m.route.name.as_str())
    }

    #[test]
    fn most_specific_route_wins() {
        let router = Router::new(&[
            route("catch-all", &[], &[], &[], &[]),
            route("orders", &[], &["/orders"], &[], &[]),
            route("orders-items", &[], &["/orders/items"], &[], &[]),
            route("orders-post", &[], &["/orders"], &["POST"], &[]),
            route(
                "orders-v2",
                &[],
                &["/orders"],
                &["POST"],
                &[("x-version", "2")],
            ),
            route("api-host", &["api.example.com"], &["/"], &[], &[]),
            route("wild-host", &["*.example.com"], &["/orders"], &[], &[]),
        ]);
        assert_eq!(pick(&router, "other", "/x", "GET", &[]), Some("catch-all"));
        assert_eq!(
            pick(&router, "other", "/orders/1", "GET", &[]),
            Some("orders")
        );
        assert_eq!(
            pick(&router, "other", "/orders/items/3", "GET", &[]),
            Some("orders-items")
        );
        assert_eq!(
            pick(&router, "other", "/orders", "POST", &[]),
            Some("orders-post")
        );
        assert_eq!(
            pick(&router, "other", "/orders", "POST", &[("x-version", "2")]),
            Some("orders-v2")
        );
        assert_eq!(
            pick(&router, "api.example.com:8080", "/orders", "GET", &[]),
            Some("api-host"),
            "host first"
        );
        assert_eq!(
            pick(&router, "shop.example.com", "/orders", "GET", &[]),
            Some("wild-host")
        );
    }

    #[test]
    fn no_match_is_none() {
        let router = Router::new(&[route(
            "orders",
            &["api.example.com"],
            &["/orders"],
            &["GET"],
            &[],
        )]);
        assert_eq!(pick(&router, "api.example.com", "/users", "GET", &[]), None);
        assert_eq!(pick(&router, "evil.com", "/orders", "GET", &[]), None);
        assert_eq!(
            pick(&router, "api.example.com", "/orders", "DELETE", &[]),
            None
        );
    }

    #[test]
    fn separated_prefixes_stop_at_a_segment_boundary() {
        // `=` marks a path_separated_prefix in these tests.
        let router = Router::new(&[
            route("api", &[], &["/"], &[], &[]),
            route("health", &[], &["=/health"], &[], &[]),
            route("plain", &[], &["/pub"], &[], &[]),
        ]);
        assert_eq!(pick(&router, "h", "/health", "GET", &[]), Some("health"));
        assert_eq!(pick(&router, "h", "/health/x", "GET", &[]), Some("health"));
        assert_eq!(
            pick(&router, "h", "/health?x=1", "GET", &[]),
            Some("health")
        );
        assert_eq!(pick(&router, "h", "/healthcare", "GET", &[]), Some("api"));
        assert_eq!(pick(&router, "h", "/health;x", "GET", &[]), Some("api"));
        assert_eq!(
            pick(&router, "h", "/publication", "GET", &[]),
            Some("plain")
        );
        assert!(separated_prefix("/", "/anything"));
        assert!(!separated_prefix("/a", "/"));
    }

    #[test]
    fn host_port_is_ignored_and_wildcards_need_a_label() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(host_match("*.example.com", "example.com"), None);
        assert_eq!(host_match("*.example.com", "a.example.com"), Some(1));
        // Kong's trailing wildcard: `example.*` is `example.` and at least one more label.
        assert_eq!(host_match("example.*", "example.org"), Some(1));
        assert_eq!(host_match("example.*", "EXAMPLE.co.uk"), Some(1));
        assert_eq!(host_match("example.*", "example."), None);
        assert_eq!(host_match("example.*", "myexample.org"), None);
    }
}
