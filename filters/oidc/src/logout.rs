//! Who may end a session at `logout.path`: the application, not any page on the web.
//! A cross-site link, image or form must not log the user out (logout CSRF: a
//! nuisance on its own, and a step in getting a victim logged in as someone else).
//!
//! A request ends the session when it is
//! - a POST or DELETE with `Sec-Fetch-Site: same-origin`, or, from a browser that
//!   sends no `Sec-Fetch-Site`, with an `Origin` that is the application's (the
//!   `redirect_uri`'s origin, or the host the request is addressed to) or none.
//!   Browsers send `Origin` on every cross-site POST, so one with neither header
//!   comes from an older browser's same-origin page or from a client that holds the
//!   cookie itself;
//! - a GET or HEAD from the application's own pages (`Sec-Fetch-Site: same-origin`,
//!   which browsers set and pages cannot), or one carrying the session's own ID token
//!   as `id_token_hint` (proof the link was made by the application, which received
//!   the ID token, for browsers that send no `Sec-Fetch-Site`).
//!
//! Any other GET is asked to confirm (a page with a button that POSTs back), other
//! methods get a 405. Kong's `logout_methods` defaults to POST and DELETE for the same
//! reason.

use crate::url::Url;

/// What the decision needs from the request.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub method: &'a str,
    pub origin: Option<&'a str>,
    pub fetch_site: Option<&'a str>,
    /// The request's `:authority`.
    pub authority: &'a str,
    /// The application's origin, `scheme://host[:port]` of the `redirect_uri`.
    pub app_origin: &'a str,
    /// The query's `id_token_hint`.
    pub hint: Option<&'a str>,
    /// The ID token of the session the request carries, if it carries one.
    pub id_token: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// End the session.
    End,
    /// A GET that cannot show it came from the application: ask the user.
    Confirm,
    /// Refused (403), naming the header that gave it away.
    CrossSite(&'static str),
    /// Not a method that logs out (405).
    Method,
}

pub fn decide(a: &Ask) -> Verdict {
    match a.method {
        // Sec-Fetch-Site, when sent, decides: a browser sets it whatever the page's
        // referrer policy, which can make its Origin `null` (no-referrer).
        "POST" | "DELETE" => match (a.fetch_site, a.origin) {
            (Some("same-origin"), _) => Verdict::End,
            (Some(_), _) => Verdict::CrossSite("Sec-Fetch-Site is not same-origin"),
            (None, Some(o)) if !same_origin(o, a.authority, a.app_origin) => {
                Verdict::CrossSite("Origin is not the application's")
            }
            (None, _) => Verdict::End,
        },
        "GET" | "HEAD" => {
            let own_page = a.fetch_site == Some("same-origin");
            let proof = matches!((a.hint, a.id_token), (Some(h), Some(t)) if equal(h, t));
            if own_page || proof {
                Verdict::End
            } else {
                Verdict::Confirm
            }
        }
        _ => Verdict::Method,
    }
}

/// `scheme://authority` as browsers write an `Origin`: lower case, without the
/// scheme's default port.
pub fn origin(scheme: &str, authority: &str) -> String {
    let scheme = scheme.to_ascii_lowercase();
    let authority = authority.to_ascii_lowercase();
    let default = if scheme == "https" { ":443" } else { ":80" };
    let host = authority.strip_suffix(default).unwrap_or(&authority);
    format!("{scheme}://{host}")
}

/// Whether an `Origin` header is the application's own: its origin, or the host this
/// request was addressed to with the application's scheme (a page cannot choose the
/// `Host` a browser sends). `null` (a sandboxed or privacy-redirected page) and
/// anything with a path are not.
fn same_origin(header: &str, authority: &str, app_origin: &str) -> bool {
    let Some(u) = Url::parse(header) else {
        return false;
    };
    if u.path != "/" || u.query.is_some() || header.ends_with('/') {
        return false;
    }
    let theirs = origin(&u.scheme, &u.authority);
    let same_scheme = app_origin
        .split_once("://")
        .is_some_and(|(s, _)| s == u.scheme);
    theirs == app_origin || (same_scheme && theirs == origin(&u.scheme, authority))
}

/// Equality that takes as long whatever the position of the first difference.
fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The page a GET without proof gets: one button that POSTs to the same address (a
/// same-origin POST, which [`decide`] accepts). Served with a CSP that forbids framing,
/// so another site cannot overlay it and steal the click.
pub const CONFIRM_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>Log out</title></head>\
<body><form method=\"post\"><p>Log out of this application?</p>\
<button type=\"submit\">Log out</button></form></body></html>\n";

/// Headers of [`CONFIRM_PAGE`].
pub const CONFIRM_HEADERS: [(&str, &str); 5] = [
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-store"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-frame-options", "DENY"),
    // Not no-referrer: with it a browser sends `Origin: null` on the button's POST.
    ("referrer-policy", "same-origin"),
];

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "https://app.example.com";

    fn ask(method: &'static str) -> Ask<'static> {
        Ask {
            method,
            origin: None,
            fetch_site: None,
            authority: "app.example.com",
            app_origin: APP,
            hint: None,
            id_token: Some("eyJ.session.token"),
        }
    }

    #[test]
    fn posts_and_deletes_from_the_application_end_the_session() {
        for method in ["POST", "DELETE"] {
            let a = ask(method);
            assert_eq!(
                decide(&a),
                Verdict::End,
                "no header: an old browser or a client"
            );
            for o in [
                APP,
                "https://APP.example.com",
                "https://app.example.com:443",
            ] {
                let with = Ask {
                    origin: Some(o),
                    fetch_site: Some("same-origin"),
                    ..a
                };
                assert_eq!(decide(&with), Verdict::End, "{o}");
            }
            // A page with `Referrer-Policy: no-referrer` posts `Origin: null`; its
            // Sec-Fetch-Site still tells.
            let no_referrer = Ask {
                origin: Some("null"),
                fetch_site: Some("same-origin"),
                ..a
            };
            assert_eq!(decide(&no_referrer), Verdict::End);
            // The host the request came to, when the application has several names.
            let other_host = Ask {
                origin: Some("https://10.0.0.5:8080"),
                authority: "10.0.0.5:8080",
                ..a
            };
            assert_eq!(decide(&other_host), Verdict::End);
        }
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let a = ask("POST");
        for (origin, site) in [
            (Some("https://evil.example"), None),
            (Some("https://evil.example"), Some("cross-site")),
            (Some(APP), Some("cross-site")),
            (None, Some("cross-site")),
            (None, Some("same-site")),
            (Some("https://sub.app.example.com"), Some("same-site")),
            (Some("http://app.example.com"), None),
            (Some("https://app.example.com.evil.example"), None),
            (Some("https://app.example.com:8443"), None),
            (Some("https://10.0.0.5:8080"), None),
            (Some("null"), None),
            (Some("https://app.example.com/path"), None),
            (Some("https://app.example.com/"), None),
            (Some(""), None),
            (None, Some("none")),
        ] {
            let r = decide(&Ask {
                origin,
                fetch_site: site,
                ..a
            });
            assert!(
                matches!(r, Verdict::CrossSite(_)),
                "{origin:?} {site:?}: {r:?}"
            );
        }
    }

    #[test]
    fn a_get_needs_its_own_page_or_the_sessions_id_token() {
        let a = ask("GET");
        assert_eq!(decide(&a), Verdict::Confirm, "an old browser's link");
        for site in ["cross-site", "same-site", "none"] {
            let r = decide(&Ask {
                fetch_site: Some(site),
                ..a
            });
            assert_eq!(r, Verdict::Confirm, "{site}");
        }
        let own = Ask {
            fetch_site: Some("same-origin"),
            ..a
        };
        assert_eq!(decide(&own), Verdict::End);
        assert_eq!(
            decide(&Ask {
                method: "HEAD",
                ..own
            }),
            Verdict::End
        );
        let hinted = Ask {
            hint: Some("eyJ.session.token"),
            fetch_site: Some("cross-site"),
            ..a
        };
        assert_eq!(decide(&hinted), Verdict::End);
        for wrong in [
            "eyJ.session.tokem",
            "eyJ.session.toke",
            "",
            "eyJ.session.token ",
        ] {
            let r = decide(&Ask {
                hint: Some(wrong),
                ..a
            });
            assert_eq!(r, Verdict::Confirm, "{wrong:?}");
        }
        // No session: a hint proves nothing (and must not reach the IdP's logout).
        let no_session = Ask {
            id_token: None,
            ..hinted
        };
        assert_eq!(decide(&no_session), Verdict::Confirm);
    }

    #[test]
    fn other_methods_are_405() {
        for m in ["PUT", "PATCH", "OPTIONS", "get", ""] {
            assert_eq!(decide(&ask(m)), Verdict::Method, "{m}");
        }
    }

    #[test]
    fn origins_are_written_as_browsers_do() {
        assert_eq!(origin("HTTPS", "App.Test:443"), "https://app.test");
        assert_eq!(origin("http", "app.test:80"), "http://app.test");
        assert_eq!(origin("http", "127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(origin("https", "app.test:80"), "https://app.test:80");
    }

    proptest::proptest! {
        /// Whatever the headers say, a cross-site request never ends the session: a
        /// POST only with `Sec-Fetch-Site: same-origin` or, without it, the
        /// application's `Origin` or none; a GET only from its own page or with the
        /// session's token.
        #[test]
        fn nothing_cross_site_ends_the_session(
            method in "(GET|HEAD|POST|DELETE|PUT)",
            origin in proptest::option::of("[ -~]{0,40}"),
            site in proptest::option::of("(cross-site|same-site|none|[a-z-]{0,12})"),
            hint in proptest::option::of("[ -~]{0,20}"),
        ) {
            let a = Ask {
                method: &method,
                origin: origin.as_deref(),
                fetch_site: site.as_deref(),
                hint: hint.as_deref(),
                ..ask("GET")
            };
            if decide(&a) == Verdict::End {
                let ok_origin = origin.as_deref().is_none_or(|o| {
                    let o = o.to_ascii_lowercase();
                    o == APP || o == "https://app.example.com:443"
                });
                let own_page = site.as_deref() == Some("same-origin");
                if method == "GET" || method == "HEAD" {
                    proptest::prop_assert!(own_page || hint.as_deref() == Some("eyJ.session.token"));
                } else {
                    proptest::prop_assert!(own_page || (site.is_none() && ok_origin), "{origin:?} {site:?}");
                }
            }
        }
    }
}
