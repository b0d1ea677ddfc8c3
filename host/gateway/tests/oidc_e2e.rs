//! `oidc` end to end against a real OpenID provider (npm `oidc-provider`, started here
//! on loopback with its dev login and consent forms): a scripted browser follows the
//! redirects, posts the forms, reaches the echo upstream with a session, sees
//! `Authorization: Bearer` and the identity upstream, survives an access-token expiry
//! through refresh, and logs out (a POST from the application; a cross-site link only
//! gets a confirmation page); and a logout at the IdP reaches the filter by the
//! back-channel; through our gateway and through Envoy. In our gateway, a back-channel
//! request with a slow body never reaches the upstream.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter};
use serde_json::{Value, json};

/// Access and ID tokens live this long, so refresh happens within the test.
const TOKEN_TTL: u64 = 4;
/// The application's origin as the IdP knows it; the scripted browser sends what is
/// addressed there to the host under test (gateway or Envoy).
const APP: &str = "http://app.test";

struct Idp {
    child: Child,
    port: u16,
}

/// The application's client at the IdP: confidential (`web-secret`), with refresh
/// tokens and a post-logout redirect.
fn web_client() -> Value {
    json!({
        "client_id": "web",
        "client_secret": "web-secret",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [format!("{APP}/callback")],
        "post_logout_redirect_uris": [format!("{APP}/bye")],
        "scope": "openid offline_access"
    })
}

impl Idp {
    /// `backchannel`: the client's back-channel logout URI, if any.
    fn start(port: u16, backchannel: Option<String>) -> Idp {
        let mut client = web_client();
        if let Some(uri) = backchannel {
            client["backchannel_logout_uri"] = json!(uri);
            client["backchannel_logout_session_required"] = json!(true);
        }
        Idp::start_with(port, client)
    }

    /// With the one client `client` (its metadata as the IdP registers it).
    fn start_with(port: u16, client: Value) -> Idp {
        let dir = portcullis_testbed::workspace_dir().join("testbed/idp");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "the test IdP is not installed: run `npm install --prefix testbed/idp` (cargo xtask test does)"
        );
        let client = json!([client]);
        let mut child = Command::new("node")
            .arg(dir.join("idp.mjs"))
            .env("IDP_PORT", port.to_string())
            .env("IDP_CLIENTS", client.to_string())
            .env("IDP_TOKEN_TTL", TOKEN_TTL.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs (Node.js 20+ is needed)");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "the IdP did not start: {line}");
        // Keep reading: the provider prints notices later, and a closed pipe kills it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        Idp { child, port }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn oidc_config(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "client_id": "web",
        "client_secret": "web-secret",
        "client_auth": "client_secret_basic",
        "redirect_uri": format!("{APP}/callback"),
        "scopes": ["openid", "offline_access"],
        "idp_cluster": "idp",
        "allow_insecure_http": true,
        "refresh_leeway_seconds": 1,
        "session": {"secrets": [{"id": "k1", "secret": "an-e2e-test-secret-of-at-least-32-chars"}]},
        "logout": {"path": "/logout", "post_logout_redirect_uri": format!("{APP}/bye")},
        "backchannel_logout_path": "/oidc/backchannel-logout",
        "upstream_id_token_header": "x-id-token",
        // The IdP must then put auth_time in the ID token, and the filter checks it.
        "max_age": 3600,
        "authorization_query_args_names": ["ui_locales"],
        "authorization_query_args_values": ["en"]
    })
}

/// A scripted browser: one cookie jar per origin, redirects followed by hand.
struct Browser {
    /// Where `APP` requests really go.
    app: String,
    idp: String,
    jars: BTreeMap<String, BTreeMap<String, String>>,
}

struct Page {
    url: String,
    res: Res,
}

impl Browser {
    fn new(app: &str, idp: &str) -> Browser {
        Browser {
            app: app.into(),
            idp: idp.into(),
            jars: BTreeMap::new(),
        }
    }

    /// One request to an absolute URL; cookies sent and stored.
    fn request(&mut self, method: &str, url: &str, form: Option<&str>) -> Page {
        self.request_with(method, url, form, &[])
    }

    /// [`Browser::request`] with more headers (`Origin`, `Sec-Fetch-Site`).
    fn request_with(
        &mut self,
        method: &str,
        url: &str,
        form: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Page {
        let (origin, path) = split(url);
        let base = if origin == APP {
            self.app.clone()
        } else {
            origin.clone()
        };
        assert!(
            origin == APP || origin == self.idp,
            "the browser was sent to a foreign origin: {url}"
        );
        let jar = self.jars.entry(origin.clone()).or_default();
        let cookie = jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let host = origin
            .split_once("://")
            .map_or(origin.as_str(), |(_, h)| h)
            .to_owned();
        let mut headers = vec![
            ("host", host.as_str()),
            ("accept", "text/html,application/xhtml+xml"),
        ];
        if !cookie.is_empty() {
            headers.push(("cookie", cookie.as_str()));
        }
        if form.is_some() {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
        }
        headers.extend_from_slice(extra);
        let res = send(
            &base,
            method,
            &path,
            &headers,
            form.unwrap_or("").as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        for sc in res.headers.get_all("set-cookie") {
            let sc = String::from_utf8_lossy(sc);
            let (pair, attrs) = sc.split_once(';').unwrap_or((&sc, ""));
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let gone = attrs.to_ascii_lowercase().contains("max-age=0")
                || attrs.contains("1970")
                || v.is_empty();
            if gone {
                jar.remove(k.trim());
            } else {
                jar.insert(k.trim().to_owned(), v.to_owned());
            }
        }
        Page {
            url: url.to_owned(),
            res,
        }
    }

    /// Follows redirects and submits the IdP's forms (login as `user`, consent, logout
    /// confirmation) until a page that is neither.
    /// Stops before requesting `stop`, returning the redirect that leads there.
    fn browse(&mut self, url: &str, user: &str, stop: Option<&str>) -> Page {
        let mut page = self.request("GET", url, None);
        for _ in 0..20 {
            if (300..400).contains(&page.res.status) {
                let loc = page
                    .res
                    .headers
                    .get_str("location")
                    .expect("location")
                    .to_owned();
                let next = resolve(&page.url, &loc);
                if stop == Some(next.as_str()) {
                    return Page {
                        url: next,
                        res: page.res,
                    };
                }
                page = self.request("GET", &next, None);
                continue;
            }
            let (origin, _) = split(&page.url);
            if origin == self.idp && page.res.status == 200 && page.res.body.contains("<form") {
                let (action, mut fields) = form_of(&page.res.body);
                if fields.iter().any(|(k, v)| k == "prompt" && v == "login") {
                    fields.push(("login".into(), user.into()));
                    fields.push(("password".into(), "any".into()));
                }
                if action.contains("session/end") {
                    fields.push(("logout".into(), "yes".into()));
                }
                let body = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(fields.iter())
                    .finish();
                let target = resolve(&page.url, &action);
                page = self.request("POST", &target, Some(&body));
                continue;
            }
            return page;
        }
        panic!("too many redirects from {url}");
    }

    fn has_session(&self) -> bool {
        self.jars.get(APP).is_some_and(|j| {
            j.keys()
                .any(|k| k.starts_with("portcullis_session") && !k.contains("_login"))
        })
    }
}

fn split(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let scheme = url.split_once("://").map_or("http", |(s, _)| s);
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (
        format!("{scheme}://{host}"),
        if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
    )
}

fn resolve(base: &str, loc: &str) -> String {
    if loc.contains("://") {
        loc.to_owned()
    } else {
        format!("{}{loc}", split(base).0)
    }
}

/// The first form's action and its hidden fields.
fn form_of(html: &str) -> (String, Vec<(String, String)>) {
    let attr = |tag: &str, name: &str| {
        let key = format!("{name}=\"");
        tag.find(&key).map(|i| {
            let rest = &tag[i + key.len()..];
            rest[..rest.find('"').unwrap_or(rest.len())].replace("&amp;", "&")
        })
    };
    let start = html.find("<form").expect("a form");
    let form_tag = &html[start..start + html[start..].find('>').unwrap()];
    let action = attr(form_tag, "action").expect("form action");
    let mut fields = Vec::new();
    for piece in html[start..].split("<input").skip(1) {
        let tag = &piece[..piece.find('>').unwrap_or(piece.len())];
        if attr(tag, "type").as_deref() == Some("hidden") {
            if let (Some(n), Some(v)) = (attr(tag, "name"), attr(tag, "value")) {
                fields.push((n, v));
            }
        }
    }
    (action, fields)
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The whole journey through one host at `app`.
fn journey(host: &str, app: &str, idp: &Idp) {
    let mut b = Browser::new(app, &idp.issuer());
    // An API client without a session: 401, no redirect.
    let r = send(
        app,
        "GET",
        "/orders",
        &[("accept", "application/json")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401, "{host}: {}", r.body);

    // Log in: redirect to the IdP, login form, consent form, back with a code.
    let page = b.browse(&format!("{APP}/orders/42?view=full"), "ada", None);
    assert_eq!(
        page.res.status, 200,
        "{host}: {} at {}",
        page.res.body, page.url
    );
    assert_eq!(
        page.url,
        format!("{APP}/orders/42?view=full"),
        "{host}: back where it started"
    );
    assert!(b.has_session(), "{host}");
    let auth = page
        .res
        .upstream_header("authorization")
        .expect("a token upstream");
    let token = auth.strip_prefix("Bearer ").expect("a bearer token");
    let claims = jwt_claims(token);
    assert_eq!(
        claims["iss"],
        idp.issuer(),
        "{host}: the IdP's access token"
    );
    assert_eq!(
        page.res.upstream_header("x-consumer-id").as_deref(),
        Some("ada"),
        "{host}"
    );
    assert_eq!(
        page.res.upstream_header("x-credential-identifier"),
        Some(idp.issuer()),
        "{host}"
    );
    assert!(
        page.res
            .upstream_header("x-id-token")
            .is_some_and(|t| t.starts_with("eyJ"))
    );
    assert_eq!(
        page.res.upstream_header("cookie"),
        None,
        "{host}: session cookie kept at the edge"
    );

    // The access token expires; the next request refreshes it (paused, resumed).
    let first_exp = claims["exp"].as_u64().unwrap();
    while now() <= first_exp {
        std::thread::sleep(Duration::from_millis(250));
    }
    let page = b.request("GET", &format!("{APP}/orders/43"), None);
    assert_eq!(page.res.status, 200, "{host}: {}", page.res.body);
    let refreshed = page.res.upstream_header("authorization").unwrap();
    assert_ne!(refreshed, auth, "{host}: a new access token after expiry");
    let exp = jwt_claims(refreshed.strip_prefix("Bearer ").unwrap())["exp"]
        .as_u64()
        .unwrap();
    assert!(exp > now(), "{host}: never an expired token upstream");
    let page = b.request("GET", &format!("{APP}/orders/44"), None);
    assert_eq!(
        page.res.upstream_header("authorization"),
        Some(refreshed.clone()),
        "{host}: the refreshed session cookie"
    );

    // A link to /logout from another site does not log out: a page asks to confirm.
    let page = b.request_with(
        "GET",
        &format!("{APP}/logout"),
        None,
        &[("sec-fetch-site", "cross-site")],
    );
    assert_eq!(page.res.status, 200, "{host}: {}", page.res.body);
    assert!(page.res.body.contains("<form method=\"post\""), "{host}");
    assert!(
        b.has_session(),
        "{host}: a cross-site link kept the session"
    );
    // Log out with the page's button (a POST from the application's origin): cookies
    // cleared, the IdP's end_session with our hint, back to /bye.
    let page = b.request_with(
        "POST",
        &format!("{APP}/logout"),
        Some(""),
        &[("origin", APP), ("sec-fetch-site", "same-origin")],
    );
    assert_eq!(page.res.status, 302, "{host}: {}", page.res.body);
    let loc = page.res.headers.get_str("location").unwrap().to_owned();
    assert!(
        loc.starts_with(&format!("{}/session/end?", idp.issuer())),
        "{host}: {loc}"
    );
    assert!(loc.contains("id_token_hint="), "{host}");
    assert!(!b.has_session(), "{host}: cookies cleared");
    let bye = format!("{APP}/bye");
    let end = b.browse(&loc, "ada", Some(&bye));
    assert_eq!(end.url, bye, "{host}: back from the IdP's logout");
    // No session any more: a browser is sent to log in again.
    let again = b.request("GET", &format!("{APP}/orders/42"), None);
    assert_eq!(again.res.status, 302, "{host}");
    assert!(
        again
            .res
            .headers
            .get_str("location")
            .unwrap()
            .starts_with(&format!("{}/auth?", idp.issuer())),
        "{host}"
    );
}

#[test]
fn a_browser_logs_in_refreshes_and_logs_out_through_our_gateway_and_envoy() {
    let port = free_port();
    let idp = Idp::start(port, None);
    let upstream = echo();
    let config = oidc_config(&idp.issuer());

    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
workers: 2
services:
  - {{ name: echo, url: "http://{upstream}" }}
  - {{ name: idp, url: "http://127.0.0.1:{port}" }}
filters:
  - {{ name: oidc, wasm: "{}", config: {config} }}
routes:
  - {{ name: app, match: {{ paths: [/] }}, service: echo, filters: [oidc], strip_path: false }}
"#,
        wasm("oidc")
    ));
    journey("portcullis", &gw.url(), &idp);

    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream)
            .filter(WasmFilter::new(
                "oidc",
                portcullis_testbed::wasm("oidc"),
                &config.to_string(),
            ))
            .cluster("idp", std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .concurrency(2),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    journey("envoy", &format!("http://{}", envoy.listener), &idp);
}

/// Waits until the filter at `app` has the IdP's discovery document: a browser is sent
/// to the IdP (302) rather than told it is unavailable (503). An API request would not
/// do: it is answered 401 without the document. The gateway started before the IdP,
/// and a failed discovery is retried only after a pause.
fn wait_ready(app: &str) {
    let start = std::time::Instant::now();
    loop {
        let r = send(app, "GET", "/", &[("accept", "text/html")], b"").unwrap();
        if r.status == 302 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{app} still answers {}: {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A logout at the IdP itself (not through /logout) reaches the filter by the
/// back-channel: the IdP posts a signed logout token, and the session still in the
/// browser stops working.
/// `accepted` reads the filter's `oidc_backchannel_logouts` counter from the host.
fn backchannel_journey(host: &str, app: &str, idp: &Idp, accepted: &dyn Fn() -> u64) {
    wait_ready(app);
    let mut b = Browser::new(app, &idp.issuer());
    let page = b.browse(&format!("{APP}/orders/1"), "grace", None);
    assert_eq!(page.res.status, 200, "{host}: {}", page.res.body);
    assert_eq!(
        page.res.upstream_header("x-consumer-id").as_deref(),
        Some("grace")
    );
    // Log out at the IdP: its end_session page, confirmed.
    let end = b.browse(&format!("{}/session/end", idp.issuer()), "grace", None);
    assert!(end.res.status < 400, "{host}: {}", end.res.body);
    // The session cookie is still in the browser, but the session is revoked.
    let start = std::time::Instant::now();
    loop {
        let again = b.request("GET", &format!("{APP}/orders/2"), None);
        if again.res.status == 302 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{host}: the session survived the IdP's logout: {}",
            again.res.status
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(accepted(), 1, "{host}: the IdP's logout token was accepted");
}

#[test]
fn a_logout_at_the_idp_ends_the_session_by_back_channel_in_our_gateway_and_envoy() {
    let upstream = echo();
    // Our gateway: started first, so the IdP can be told its back-channel URI.
    let port = free_port();
    let config = oidc_config(&format!("http://127.0.0.1:{port}"));
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
access_log: "off"
workers: 2
services:
  - {{ name: echo, url: "http://{upstream}" }}
  - {{ name: idp, url: "http://127.0.0.1:{port}" }}
filters:
  - {{ name: oidc, wasm: "{}", config: {config} }}
routes:
  - {{ name: app, match: {{ paths: [/] }}, service: echo, filters: [oidc], strip_path: false }}
"#,
        wasm("oidc")
    ));
    let admin = format!("http://127.0.0.1:{}", gw.admin);
    let gw_count = || {
        let m = send(&admin, "GET", "/metrics", &[], b"").unwrap();
        m.body
            .lines()
            .find_map(|l| l.strip_prefix("portcullis_filter_oidc_backchannel_logouts "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let idp = Idp::start(port, Some(format!("{}/oidc/backchannel-logout", gw.url())));
    backchannel_journey("portcullis", &gw.url(), &idp, &gw_count);
    drop(idp);

    let port = free_port();
    let config = oidc_config(&format!("http://127.0.0.1:{port}"));
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream)
            .filter(WasmFilter::new(
                "oidc",
                portcullis_testbed::wasm("oidc"),
                &config.to_string(),
            ))
            .cluster("idp", std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .concurrency(2),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let app = format!("http://{}", envoy.listener);
    let idp = Idp::start(port, Some(format!("{app}/oidc/backchannel-logout")));
    let envoy_count = || {
        envoy
            .stat("wasmcustom.oidc_backchannel_logouts")
            .unwrap_or(0)
    };
    backchannel_journey("envoy", &app, &idp, &envoy_count);
}

/// Requests to the back-channel logout path never reach the upstream, whatever their
/// method or body, even from a client that sends the head and then pauses before the
/// body: the gateway must not start the upstream request before the filter has seen
/// the body and answered. The IdP is not even up (the filter answers 503 for the keys).
#[test]
fn a_back_channel_request_with_a_slow_body_never_reaches_the_upstream() {
    use std::sync::atomic::Ordering;
    let (upstream, seen) = counting();
    let config = oidc_config(&format!("http://{}", refused()));
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services:
  - {{ name: app, url: "http://{upstream}", timeout_ms: 1500 }}
  - {{ name: idp, url: "http://{}", timeout_ms: 1000 }}
filters:
  - {{ name: oidc, wasm: "{}", config: {config} }}
routes:
  - {{ name: app, match: {{ paths: [/] }}, service: app, filters: [oidc], strip_path: false }}
"#,
        refused(),
        wasm("oidc")
    ));
    let addr = format!("127.0.0.1:{}", gw.port);
    let body = b"logout_token=eyJhbGciOiJFUzI1NiJ9.e30.c2ln";
    for (method, content_type) in [
        ("POST", "application/x-www-form-urlencoded"),
        ("POST", "text/plain"),
        ("GET", "application/x-www-form-urlencoded"),
    ] {
        let head = format!(
            "{method} /oidc/backchannel-logout HTTP/1.1\r\nhost: app.test\r\n\
             content-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let res = raw_request(&addr, &head, Duration::from_millis(500), body);
        assert!(
            !res.contains("\r\n\r\nupstream"),
            "{method} {content_type}: the upstream answered: {res}"
        );
        assert!(
            res.starts_with("HTTP/1.1 4") || res.starts_with("HTTP/1.1 5"),
            "{method} {content_type}: {res}"
        );
        assert_eq!(
            seen.load(Ordering::SeqCst),
            0,
            "{method} {content_type}: the upstream saw the request"
        );
    }
    // A body that never comes: the request's deadline, not the upstream.
    let head = format!(
        "POST /oidc/backchannel-logout HTTP/1.1\r\nhost: app.test\r\n\
         content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let res = raw_request(&addr, &head, Duration::from_millis(3000), b"");
    assert!(res.starts_with("HTTP/1.1 504"), "{res}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the upstream saw the request"
    );
    // The counter counts: the upstream itself sees a request.
    let r = send(&format!("http://{upstream}"), "GET", "/", &[], b"").unwrap();
    assert_eq!(r.body, "upstream");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

/// Runs `journey(host, app)` through our gateway, then through Envoy, each with the
/// oidc filter on `config` in front of `upstream` and the IdP on `idp_port`.
fn in_both_hosts(
    idp_port: u16,
    upstream: std::net::SocketAddr,
    config: &Value,
    journey: impl Fn(&str, &str),
) {
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services:
  - {{ name: echo, url: "http://{upstream}" }}
  - {{ name: idp, url: "http://127.0.0.1:{idp_port}" }}
filters:
  - {{ name: oidc, wasm: "{}", config: {config} }}
routes:
  - {{ name: app, match: {{ paths: [/] }}, service: echo, filters: [oidc], strip_path: false }}
"#,
        wasm("oidc")
    ));
    wait_ready(&gw.url());
    journey("portcullis", &gw.url());

    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream)
            .filter(WasmFilter::new(
                "oidc",
                portcullis_testbed::wasm("oidc"),
                &config.to_string(),
            ))
            .cluster(
                "idp",
                std::net::SocketAddr::from(([127, 0, 0, 1], idp_port)),
            ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let app = format!("http://{}", envoy.listener);
    wait_ready(&app);
    journey("envoy", &app);
}

/// A route whose claim rules want the `ops` group: a user in it passes; a user who
/// signs in without it is answered 403 at once (no second trip to the IdP); an API
/// client without a session still gets 401.
fn claims_journey(host: &str, app: &str, idp: &Idp) {
    let mut ops = Browser::new(app, &idp.issuer());
    let page = ops.browse(&format!("{APP}/orders/1"), "bob+ops", None);
    assert_eq!(page.res.status, 200, "{host}: {}", page.res.body);
    assert_eq!(
        page.res.upstream_header("x-consumer-id").as_deref(),
        Some("bob+ops"),
        "{host}"
    );
    // The IdP's userinfo answer, fetched at login, goes upstream as base64 JSON.
    let info = page
        .res
        .upstream_header("x-userinfo")
        .expect("userinfo upstream");
    let info: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, info).unwrap(),
    )
    .unwrap();
    assert_eq!(info["sub"], "bob+ops", "{host}");
    assert_eq!(info["groups"], json!(["ops"]), "{host}");

    let mut other = Browser::new(app, &idp.issuer());
    let page = other.browse(&format!("{APP}/orders/1"), "eve+sales", None);
    assert_eq!(
        page.res.status, 403,
        "{host}: {} at {}",
        page.res.body, page.url
    );
    assert_eq!(
        page.url,
        format!("{APP}/orders/1"),
        "{host}: back at the page"
    );
    assert!(
        page.res.body.contains("claim rules refuse"),
        "{host}: {}",
        page.res.body
    );
    assert!(other.has_session(), "{host}: signed in all the same");
    // Again: 403 straight away, not a redirect to log in again.
    let again = other.request("GET", &format!("{APP}/orders/2"), None);
    assert_eq!(again.res.status, 403, "{host}: {}", again.res.body);
    assert!(
        again.res.json()["headers"].is_null(),
        "{host}: not from the upstream"
    );

    let r = send(
        app,
        "GET",
        "/orders",
        &[("accept", "application/json")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401, "{host}: {}", r.body);
}

#[test]
fn a_signed_in_user_the_claim_rules_refuse_gets_403_not_a_new_login_in_our_gateway_and_envoy() {
    let port = free_port();
    // Access tokens the userinfo endpoint takes (not bound to a resource server).
    let mut client = web_client();
    client["userinfo_tokens"] = json!(true);
    let idp = Idp::start_with(port, client);
    let upstream = echo();
    let mut config = oidc_config(&idp.issuer());
    config["requires"] = json!({"claims": [{"claim": "groups", "contains": "ops"}]});
    config["upstream_user_info_header"] = json!("x-userinfo");

    in_both_hosts(port, upstream, &config, |host, app| {
        claims_journey(host, app, &idp)
    });
}

#[test]
fn a_client_authenticating_with_private_key_jwt_logs_in_and_refreshes_in_our_gateway_and_envoy() {
    // The client's key pair, made now: the IdP registers the public half, the filter
    // holds the private one. An EC key (ES256), then an RSA key (RS256).
    for (key, alg) in [
        (jwt_mint::Key::ec256("web-ec"), "ES256"),
        (jwt_mint::Key::rsa("web-rsa"), "RS256"),
    ] {
        let mut client = web_client();
        client.as_object_mut().unwrap().remove("client_secret");
        client["token_endpoint_auth_method"] = json!("private_key_jwt");
        client["token_endpoint_auth_signing_alg"] = json!(alg);
        client["jwks"] = json!({"keys": [key.jwk()]});
        let port = free_port();
        let idp = Idp::start_with(port, client);
        let upstream = echo();
        let mut config = oidc_config(&idp.issuer());
        let c = config.as_object_mut().unwrap();
        c.remove("client_secret");
        c.insert("client_auth".into(), json!("private_key_jwt"));
        c.insert("client_jwk".into(), key.private_jwk().unwrap());
        in_both_hosts(port, upstream, &config, |host, app| {
            journey(&format!("{host} {alg}"), app, &idp)
        });
    }
}

/// Step-up: a route that asks for multi-factor authentication (`acr_values`) admits a
/// login the IdP made with it, and refuses one it made with a password only (the IdP
/// may ignore what is asked; the filter checks the ID token's `acr`).
fn acr_journey(host: &str, app: &str, idp: &Idp) {
    let mut strong = Browser::new(app, &idp.issuer());
    let page = strong.browse(&format!("{APP}/orders/1"), "carol+mfa", None);
    assert_eq!(page.res.status, 200, "{host}: {}", page.res.body);
    assert!(strong.has_session(), "{host}");

    let mut weak = Browser::new(app, &idp.issuer());
    let page = weak.browse(&format!("{APP}/orders/1"), "dave", None);
    assert_eq!(
        page.res.status, 401,
        "{host}: {} at {}",
        page.res.body, page.url
    );
    assert!(page.res.body.contains("acr"), "{host}: {}", page.res.body);
    assert!(!weak.has_session(), "{host}: no session from a weak login");
}

#[test]
fn a_route_asking_for_an_acr_refuses_a_weaker_login_in_our_gateway_and_envoy() {
    let port = free_port();
    let idp = Idp::start(port, None);
    let upstream = echo();
    let mut config = oidc_config(&idp.issuer());
    config["acr_values"] = json!(["urn:portcullis:mfa"]);

    in_both_hosts(port, upstream, &config, |host, app| {
        acr_journey(host, app, &idp)
    });
}

/// A Kong openid-connect plugin brought over by `portcullis import kong`: the oidc
/// configuration it makes logs a user in against the real IdP, in both hosts, and
/// its `groups_required` refuses a user without the group (Kong's 403).
#[test]
fn a_kong_openid_connect_plugin_imported_logs_in_in_our_gateway_and_envoy() {
    let port = free_port();
    let idp = Idp::start(port, None);
    let upstream = echo();
    let kong = format!(
        r#"
_format_version: "3.0"
services:
  - name: app
    url: http://{upstream}
    routes: [{{ name: app, paths: [/] }}]
    plugins:
      - name: openid-connect
        config:
          issuer: {issuer}/.well-known/openid-configuration
          client_id: [web]
          client_secret: [web-secret]
          redirect_uri: ["{APP}/callback"]
          scopes: [openid, offline_access]
          auth_methods: [authorization_code, session]
          groups_required: [ops]
          session_secret: an-e2e-test-secret-of-at-least-32-chars
"#,
        issuer = idp.issuer()
    );
    let imported =
        portcullis_kong::import(&kong, None, &portcullis_kong::Options::default()).unwrap();
    let filter = imported.config["filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "oidc-1")
        .unwrap();
    let mut config = filter["config"].clone();
    // The import names the IdP's service after its host; the harness calls it `idp`.
    config["idp_cluster"] = json!("idp");
    in_both_hosts(port, upstream, &config, |host, app| {
        let mut ops = Browser::new(app, &idp.issuer());
        let page = ops.browse(&format!("{APP}/orders/1"), "bob+ops", None);
        assert_eq!(page.res.status, 200, "{host}: {}", page.res.body);
        assert_eq!(page.url, format!("{APP}/orders/1"), "{host}");
        assert!(
            page.res
                .upstream_header("authorization")
                .is_some_and(|a| a.starts_with("Bearer ")),
            "{host}: the access token upstream"
        );
        let mut other = Browser::new(app, &idp.issuer());
        let page = other.browse(&format!("{APP}/orders/1"), "eve", None);
        assert_eq!(page.res.status, 403, "{host}: {}", page.res.body);
        let r = send(
            app,
            "GET",
            "/orders",
            &[("accept", "application/json")],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 401, "{host}: an API client without a session");
    });
}
