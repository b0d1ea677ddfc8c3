//! `oidc` in a real browser: headless Debian `chromium`, driven by `chromedriver` over
//! the WebDriver protocol, logs in through our gateway on TLS against the real OpenID
//! provider (npm `oidc-provider`), so cookies, `SameSite`, `Secure`, the `__Host-`
//! prefix and the redirects are applied the way a browser applies them; then logs out.
//!
//! Needs `chromium` and `chromium-driver` (apt); `cargo xtask test` installs them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_idp(port: u16, clients: &Value) -> Proc {
    let dir = portcullis_testbed::workspace_dir().join("testbed/idp");
    assert!(
        dir.join("node_modules/oidc-provider").exists(),
        "the test IdP is not installed: run `npm install --prefix testbed/idp` (cargo xtask test does)"
    );
    let mut child = Command::new("node")
        .arg(dir.join("idp.mjs"))
        .env("IDP_PORT", port.to_string())
        .env("IDP_CLIENTS", clients.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs (Node.js 20+ is needed)");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready"), "the IdP did not start: {line}");
    std::thread::spawn(move || {
        let mut sink = String::new();
        while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    Proc(child)
}

/// A WebDriver session on chromedriver.
struct Driver {
    base: String,
    session: String,
    _chromedriver: Proc,
    _profile: TempDir,
}

impl Driver {
    fn start() -> Driver {
        let bin = ["chromedriver", "/usr/bin/chromedriver"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok())
            .expect("chromedriver is missing: apt-get install chromium chromium-driver (cargo xtask test does)");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        let host = base.trim_start_matches("http://").to_owned();
        while send(&base, "GET", "/status", &[("host", host.as_str())], b"").is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = TempDir::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.0.display())
            ]}
        }}});
        let mut d = Driver {
            base,
            session: String::new(),
            _chromedriver: Proc(child),
            _profile: profile,
        };
        let r = d.call("POST", "/session", Some(caps));
        d.session = r["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_owned();
        d
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        // chromedriver answers only requests whose Host is a loopback address.
        let host = self.base.trim_start_matches("http://").to_owned();
        let r = send(
            &self.base,
            method,
            path,
            &[
                ("host", host.as_str()),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let v = r.json();
        // W3C WebDriver: every answer is {"value": ...}.
        v.get("value").cloned().unwrap_or(v)
    }

    fn s(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    fn go(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({"url": url})));
    }

    fn url(&self) -> String {
        self.call("GET", &self.s("/url"), None)
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    fn source(&self) -> String {
        self.call("GET", &self.s("/source"), None)
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// The page's text (a JSON answer shows as its text).
    fn text(&self) -> String {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({"script": "return document.body ? document.body.innerText : ''", "args": []})),
        )
        .as_str()
        .unwrap_or("")
        .to_owned()
    }

    /// Waits until an element matching `css` is on the page; its id.
    fn find(&self, css: &str) -> String {
        let start = Instant::now();
        loop {
            let v = self.call(
                "POST",
                &self.s("/element"),
                Some(json!({"using": "css selector", "value": css})),
            );
            if let Some(id) = v.get(ELEMENT).and_then(Value::as_str) {
                return id.to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no `{css}` at {}:\n{}",
                self.url(),
                self.source()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call(
            "POST",
            &self.s(&format!("/element/{id}/value")),
            Some(json!({"text": text})),
        );
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.call(
            "POST",
            &self.s(&format!("/element/{id}/click")),
            Some(json!({})),
        );
    }

    fn wait_url(&self, prefix: &str) -> String {
        let start = Instant::now();
        loop {
            let u = self.url();
            if u.starts_with(prefix) {
                return u;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "still at {u}, waiting for {prefix}:\n{}",
                self.source()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cookies(&self) -> Vec<Value> {
        self.call("GET", &self.s("/cookie"), None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let host = self.base.trim_start_matches("http://").to_owned();
            let _ = send(
                &self.base,
                "DELETE",
                &self.s(""),
                &[("host", host.as_str())],
                b"",
            );
        }
    }
}

#[test]
fn chromium_logs_in_through_the_gateway_on_tls_and_logs_out() {
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let upstream = echo();
    let dir = TempDir::new();
    let (_, cert_path, key_path) = localhost_cert(&dir);
    // `{PORT}` is the gateway's port, filled in when it starts; the IdP learns the
    // redirect URI after.
    let config = json!({
        "issuer": issuer,
        "client_id": "web",
        "client_secret": "web-secret",
        "redirect_uri": "https://localhost:{PORT}/callback",
        "scopes": ["openid", "offline_access"],
        "idp_cluster": "idp",
        // Only the IdP is http (loopback); the application is https.
        "allow_insecure_http": true,
        "session": {"secrets": [{"id": "k1", "secret": "a-browser-test-secret-of-32-chars-or-more"}]},
        "logout": {"path": "/logout", "post_logout_redirect_uri": "https://localhost:{PORT}/bye"}
    });
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - name: secure
    address: 127.0.0.1:{{PORT}}
    tls: {{ cert: "{}", key: "{}" }}
access_log: "off"
services:
  - {{ name: echo, url: "http://{upstream}" }}
  - {{ name: idp, url: "http://127.0.0.1:{idp_port}" }}
filters:
  - {{ name: oidc, wasm: "{}", config: {config} }}
routes:
  - {{ name: app, match: {{ paths: [/] }}, service: echo, filters: [oidc], strip_path: false }}
"#,
        cert_path.display(),
        key_path.display(),
        wasm("oidc")
    ));
    let app = format!("https://localhost:{}", gw.port);
    let _idp = start_idp(
        idp_port,
        &json!([{
            "client_id": "web",
            "client_secret": "web-secret",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": [format!("{app}/callback")],
            "post_logout_redirect_uris": [format!("{app}/bye")],
            "scope": "openid offline_access"
        }]),
    );

    let browser = Driver::start();
    // The gateway started before the IdP: until the filter has the discovery document
    // it answers 503 (and retries the fetch); then the browser is sent to log in.
    let start = Instant::now();
    loop {
        browser.go(&format!("{app}/orders/42"));
        if browser.url().starts_with(&issuer) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never sent to the IdP: {}",
            browser.text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The IdP's login form, then its consent form.
    browser.wait_url(&format!("{issuer}/interaction/"));
    browser.type_into("input[name=login]", "ada");
    browser.type_into("input[name=password]", "secret");
    browser.click("button[type=submit]");
    let start = Instant::now();
    while !browser.url().starts_with(&app) {
        if browser
            .source()
            .contains("name=\"prompt\" value=\"consent\"")
        {
            browser.click("button[type=submit]");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "stuck at {}",
            browser.url()
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    let at = browser.wait_url(&format!("{app}/orders/42"));
    assert_eq!(at, format!("{app}/orders/42"), "back where it started");
    let page = browser.text();
    assert!(
        page.contains("Bearer ey"),
        "the upstream got the access token:\n{page}"
    );
    assert!(
        page.contains(r#"["x-consumer-id","ada"]"#),
        "the upstream got the identity:\n{page}"
    );

    // The browser kept the session cookie as we meant it.
    let cookies = browser.cookies();
    let session = cookies
        .iter()
        .find(|c| c["name"] == "__Host-portcullis_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["secure"], true);
    assert_eq!(session["sameSite"], "Lax");
    assert_eq!(session["path"], "/");
    assert!(
        !cookies.iter().any(|c| c["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("__Host-portcullis_session_login"))),
        "the login cookie is spent: {cookies:?}"
    );
    // JavaScript cannot read it (HttpOnly).
    let js = browser.call(
        "POST",
        &browser.s("/execute/sync"),
        Some(json!({"script": "return document.cookie", "args": []})),
    );
    assert!(
        !js.as_str().unwrap_or("").contains("portcullis_session"),
        "{js}"
    );

    // A second page needs no IdP round trip.
    browser.go(&format!("{app}/orders/43"));
    assert_eq!(browser.url(), format!("{app}/orders/43"));
    assert!(browser.text().contains("Bearer ey"));

    // A link to /logout on another site does not log the user out: the gateway asks
    // to confirm, and the session goes on.
    let has_session = |b: &Driver| {
        b.cookies()
            .iter()
            .any(|c| c["name"] == "__Host-portcullis_session")
    };
    browser.go(&format!(
        "data:text/html,<a id=out href='{app}/logout'>log out</a>"
    ));
    browser.click("#out");
    browser.wait_url(&format!("{app}/logout"));
    assert!(
        browser.text().contains("Log out of this application?"),
        "{}",
        browser.text()
    );
    assert!(has_session(&browser), "a cross-site link kept the session");
    browser.go(&format!("{app}/orders/44"));
    assert!(browser.text().contains("Bearer ey"), "{}", browser.text());

    // Logout: a typed address proves no more than a link (it could come from a mail),
    // so it is the same page; its button POSTs from the application's own origin, our
    // cookies go, the IdP asks to confirm, then sends the browser back.
    browser.go(&format!("{app}/logout"));
    browser.click("button[type=submit]");
    browser.wait_url(&format!("{issuer}/session/end"));
    assert!(
        !browser
            .cookies()
            .iter()
            .any(|c| c["name"] == "__Host-portcullis_session"),
        "the session cookie is cleared"
    );
    browser.click("button[value=yes], button[name=logout]");
    // /bye is behind the filter too: with no session the browser is sent to log in.
    browser.wait_url(&format!("{issuer}/interaction/"));
}
