//! `oidc` in the test bed: the built filter on the real host engine, with a scripted
//! OpenID provider (discovery, JWKS, token endpoint) and a virtual clock for session
//! lifetimes, idle timeouts and access-token refresh.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_mint::{Key, jwks};
use portcullis_testbed::{CallFailure, HttpCallRequest, Reply, Request, Response, TestBed, wasm};
use serde_json::{Value, json};
use sha2::Digest;

/// The test bed's clock starts at 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600;
const ISS: &str = "https://idp.test";
const SECRET_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SECRET_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const COOKIE: &str = "__Host-portcullis_session";
/// Login cookies are `LOGIN_COOKIE.<16 characters of the state>`.
const LOGIN_COOKIE: &str = "__Host-portcullis_session_login";

/// A scripted OpenID provider: what its token endpoint answers next, and what it saw.
#[derive(Clone)]
struct Idp {
    key: Rc<Key>,
    /// Claims of the next ID token, merged over the defaults (`nonce` is filled in
    /// from the last authorization request unless given).
    id_claims: Rc<RefCell<Value>>,
    /// The next token answer, when scripted whole.
    token_reply: Rc<RefCell<Option<Reply>>>,
    /// The nonce of the last authorization request.
    nonce: Rc<RefCell<String>>,
    access_ttl: Rc<Cell<u64>>,
    issued: Rc<Cell<u32>>,
    down: Rc<Cell<bool>>,
    token_requests: Rc<RefCell<Vec<(BTreeMap<String, String>, Option<String>)>>>,
    discovery_fetches: Rc<Cell<u32>>,
    /// Refresh tokens already used: refused again (rotation, as most IdPs do).
    used_refresh_tokens: Rc<RefCell<Vec<String>>>,
    jwks_keys: Rc<RefCell<Vec<Rc<Key>>>>,
    now: Rc<Cell<u64>>,
    /// What the userinfo endpoint answers, and the access tokens it was asked with.
    userinfo: Rc<RefCell<Reply>>,
    userinfo_asked: Rc<RefCell<Vec<String>>>,
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

impl Idp {
    fn new() -> Idp {
        let key = Rc::new(Key::ec256("idp-1"));
        Idp {
            jwks_keys: Rc::new(RefCell::new(vec![key.clone()])),
            key,
            id_claims: Rc::new(RefCell::new(json!({}))),
            token_reply: Rc::default(),
            nonce: Rc::default(),
            access_ttl: Rc::new(Cell::new(300)),
            issued: Rc::default(),
            down: Rc::default(),
            token_requests: Rc::default(),
            discovery_fetches: Rc::default(),
            used_refresh_tokens: Rc::default(),
            now: Rc::new(Cell::new(T0)),
            userinfo: Rc::new(RefCell::new(Reply::json(
                &json!({"sub": "ada", "nickname": "ada-from-userinfo", "preferred_username": "not-this"}),
            ))),
            userinfo_asked: Rc::default(),
        }
    }

    fn id_token(&self, extra: &Value) -> String {
        let now = self.now.get();
        let mut c = json!({"iss": ISS, "aud": "web", "sub": "ada", "sid": "idp-session-1",
            "preferred_username": "ada.l", "groups": ["eng", "ops"], "tier": "premium",
            "nonce": *self.nonce.borrow(), "iat": now, "exp": now + 300});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        self.key.sign("ES256", c)
    }

    fn answer(&self, req: &HttpCallRequest) -> Reply {
        if self.down.get() {
            return Reply::Fail(CallFailure::ConnectFailed("down".into()));
        }
        let path = req.headers.get_str(":path").unwrap_or("");
        match path {
            "/.well-known/openid-configuration" => {
                self.discovery_fetches.set(self.discovery_fetches.get() + 1);
                Reply::json(&json!({
                    "issuer": ISS,
                    "authorization_endpoint": "https://idp.test/authorize",
                    "token_endpoint": "https://idp.test/token",
                    "jwks_uri": "https://idp.test/jwks",
                    "end_session_endpoint": "https://idp.test/logout",
                    "userinfo_endpoint": "https://idp.test/userinfo"
                }))
            }
            "/userinfo" => {
                self.userinfo_asked.borrow_mut().push(
                    req.headers
                        .get_str("authorization")
                        .unwrap_or("")
                        .to_owned(),
                );
                self.userinfo.borrow().clone()
            }
            "/jwks" => {
                let keys = self.jwks_keys.borrow();
                let refs: Vec<&Key> = keys.iter().map(|k| k.as_ref()).collect();
                Reply::json(&jwks(&refs))
            }
            "/token" => {
                let body = form(&req.body);
                self.token_requests.borrow_mut().push((
                    body.clone(),
                    req.headers.get_str("authorization").map(str::to_owned),
                ));
                if let Some(r) = self.token_reply.borrow_mut().take() {
                    return r;
                }
                if let Some(rt) = body.get("refresh_token") {
                    if self.used_refresh_tokens.borrow().contains(rt) {
                        return Reply::status(400, &[], r#"{"error":"invalid_grant"}"#);
                    }
                    self.used_refresh_tokens.borrow_mut().push(rt.clone());
                }
                let n = self.issued.get() + 1;
                self.issued.set(n);
                let mut answer = json!({
                    "access_token": format!("at-{n}"),
                    "token_type": "Bearer",
                    "expires_in": self.access_ttl.get(),
                    "refresh_token": format!("rt-{n}"),
                });
                if body.get("grant_type").map(String::as_str) == Some("authorization_code") {
                    answer["id_token"] = json!(self.id_token(&self.id_claims.borrow()));
                }
                Reply::json(&answer)
            }
            _ => Reply::status(404, &[], "not found"),
        }
    }
}

fn config(extra: Value) -> String {
    let mut c = json!({
        "issuer": ISS,
        "client_id": "web",
        "client_secret": "web-secret",
        "redirect_uri": "https://app.test/callback",
        "scopes": ["openid", "profile", "offline_access"],
        "idp_cluster": "idp",
        "session": {"secrets": [{"id": "a", "secret": SECRET_A}], "lifetime": 3600, "idle_timeout": 900},
        "logout": {"path": "/logout", "post_logout_redirect_uri": "https://app.test/bye"},
        "backchannel_logout_path": "/oidc/backchannel",
        "upstream_id_token_header": "x-id-token",
        "consumer": {"id_claim": "sub", "username_claim": "preferred_username", "groups_claim": "groups", "tier_claim": "tier"},
        "refresh_leeway_seconds": 30
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c.to_string()
}

fn bed(idp: &Idp, extra: Value) -> TestBed {
    let i = idp.clone();
    TestBed::new()
        .filter(wasm("oidc"), config(extra))
        .cluster("idp", move |req| i.answer(req))
        .build()
        .unwrap()
}

/// Advances the bed's clock and the IdP's with it.
fn advance(bed: &mut TestBed, idp: &Idp, secs: u64) {
    bed.advance(Duration::from_secs(secs));
    idp.now.set(idp.now.get() + secs);
}

/// The browser's cookies.
#[derive(Default, Clone, Debug)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, res: &Response) {
        for sc in res.headers.get_all("set-cookie") {
            let sc = String::from_utf8_lossy(sc);
            let (pair, attrs) = sc.split_once(';').unwrap_or((&sc, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.0.remove(k);
            } else {
                self.0.insert(k.to_owned(), v.to_owned());
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn has_login(&self) -> bool {
        self.0
            .keys()
            .any(|k| k.starts_with(&format!("{LOGIN_COOKIE}.")))
    }

    fn has_session(&self) -> bool {
        self.0
            .keys()
            .any(|k| k.starts_with(COOKIE) && !k.starts_with(LOGIN_COOKIE))
    }
}

fn browser(path: &str, jar: &Jar) -> Request {
    let r = Request::get(path).header("accept", "text/html,application/xhtml+xml");
    if jar.0.is_empty() {
        r
    } else {
        r.header("cookie", &jar.header())
    }
}

fn api(path: &str, jar: &Jar) -> Request {
    let r = Request::get(path).header("accept", "application/json");
    if jar.0.is_empty() {
        r
    } else {
        r.header("cookie", &jar.header())
    }
}

fn query(location: &str) -> BTreeMap<String, String> {
    let q = location.split_once('?').map_or("", |(_, q)| q);
    form(q.as_bytes())
}

/// Starts a login at `path`: the 302 to the IdP, the login cookie in the jar.
fn start_login(
    bed: &mut TestBed,
    idp: &Idp,
    path: &str,
    jar: &mut Jar,
) -> BTreeMap<String, String> {
    let res = bed.send(browser(path, jar));
    assert_eq!(res.status, 302, "{}", res.text());
    let location = res.header("location").unwrap().to_owned();
    assert!(
        location.starts_with("https://idp.test/authorize?"),
        "{location}"
    );
    jar.take(&res);
    let q = query(&location);
    *idp.nonce.borrow_mut() = q["nonce"].clone();
    q
}

/// A whole login; returns the jar with the session.
fn login(bed: &mut TestBed, idp: &Idp, path: &str) -> Jar {
    let mut jar = Jar::default();
    let q = start_login(bed, idp, path, &mut jar);
    let res = bed.send(browser(
        &format!("/callback?code=c-1&state={}", q["state"]),
        &jar,
    ));
    assert_eq!(res.status, 302, "{}", res.text());
    jar.take(&res);
    assert!(jar.has_session(), "{:?}", res.headers);
    assert!(!jar.has_login(), "the login cookie is spent");
    jar
}

/// `max_age`, static authorization arguments and arguments passed on from the
/// browser's request reach the IdP; with `max_age` the ID token needs a recent
/// `auth_time`.
#[test]
fn max_age_and_authorization_arguments_reach_the_idp_and_auth_time_is_checked() {
    let idp = Idp::new();
    let mut bed = bed(
        &idp,
        json!({"max_age": 600, "authorization_query_args_names": ["prompt"],
            "authorization_query_args_values": ["login"],
            "authorization_query_args_client": ["login_hint"]}),
    );
    let mut jar = Jar::default();
    let q = start_login(
        &mut bed,
        &idp,
        "/orders?login_hint=ada%40example.com&x=1",
        &mut jar,
    );
    assert_eq!(q["max_age"], "600");
    assert_eq!(q["prompt"], "login");
    assert_eq!(q["login_hint"], "ada@example.com");
    assert!(!q.contains_key("x"));
    let callback = |bed: &mut TestBed, q: &BTreeMap<String, String>, jar: &Jar| {
        bed.send(browser(
            &format!("/callback?code=c-1&state={}", q["state"]),
            jar,
        ))
    };
    // No auth_time: the login fails, clearly.
    let res = callback(&mut bed, &q, &jar);
    assert_eq!(res.status, 401, "{}", res.text());
    assert!(res.text().contains("auth_time"), "{}", res.text());
    // Authenticated too long ago: refused too.
    let now = idp.now.get();
    *idp.id_claims.borrow_mut() = json!({"auth_time": now - 3600});
    let mut jar = Jar::default();
    let q = start_login(&mut bed, &idp, "/orders", &mut jar);
    let res = callback(&mut bed, &q, &jar);
    assert_eq!(res.status, 401, "{}", res.text());
    // Recently: in.
    *idp.id_claims.borrow_mut() = json!({"auth_time": now - 60});
    let mut jar = Jar::default();
    let q = start_login(&mut bed, &idp, "/orders", &mut jar);
    let res = callback(&mut bed, &q, &jar);
    assert_eq!(res.status, 302, "{}", res.text());
}

#[test]
fn a_browser_logs_in_and_the_upstream_gets_the_token_and_identity() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let mut jar = Jar::default();
    let q = start_login(&mut bed, &idp, "/orders/7?x=1", &mut jar);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "web");
    assert_eq!(q["redirect_uri"], "https://app.test/callback");
    assert_eq!(q["scope"], "openid profile offline_access");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["state"].len() >= 32 && q["nonce"].len() >= 32);
    assert!(jar.has_login());

    let res = bed.send(browser(
        &format!("/callback?code=c-1&state={}", q["state"]),
        &jar,
    ));
    assert_eq!(res.status, 302, "{}", res.text());
    assert_eq!(
        res.header("location"),
        Some("/orders/7?x=1"),
        "back where it started"
    );
    let set: Vec<String> = res
        .headers
        .get_all("set-cookie")
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with(&format!("{COOKIE}=")))
        .unwrap();
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=3600",
    ] {
        assert!(session.contains(attr), "{attr} in {session}");
    }
    assert!(
        !session.contains("Domain="),
        "__Host- cookies have no Domain"
    );
    jar.take(&res);

    // The code exchange: client_secret_basic, the code, and the PKCE verifier that
    // hashes to the challenge sent to the browser.
    let (body, auth) = idp.token_requests.borrow()[0].clone();
    assert_eq!(body["grant_type"], "authorization_code");
    assert_eq!(body["code"], "c-1");
    assert_eq!(body["redirect_uri"], "https://app.test/callback");
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(body["code_verifier"].as_bytes()));
    assert_eq!(challenge, q["code_challenge"]);
    assert_eq!(
        auth.as_deref(),
        Some(
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("web:web-secret")
            )
            .as_str()
        )
    );
    assert!(!body.contains_key("client_secret"));

    let res = bed.send(
        browser("/orders/7", &jar)
            .header("x-consumer-id", "mallory")
            .header("x-consumer-tier", "gold"),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer at-1")
    );
    assert_eq!(res.upstream_header("x-consumer-id").as_deref(), Some("ada"));
    assert_eq!(
        res.upstream_header("x-consumer-username").as_deref(),
        Some("ada.l")
    );
    assert_eq!(
        res.upstream_header("x-consumer-groups").as_deref(),
        Some("eng,ops")
    );
    assert_eq!(
        res.upstream_header("x-consumer-tier").as_deref(),
        Some("premium")
    );
    assert_eq!(
        res.upstream_header("x-credential-identifier").as_deref(),
        Some(ISS)
    );
    assert!(
        res.upstream_header("x-id-token")
            .unwrap()
            .starts_with("eyJ")
    );
    let up = res.upstream.as_ref().unwrap();
    assert_eq!(up.headers.get_all("x-consumer-id").count(), 1);
    assert_eq!(
        res.upstream_header("cookie"),
        None,
        "our cookies stay at the gateway"
    );
    assert_eq!(
        idp.token_requests.borrow().len(),
        1,
        "no IdP call with a session"
    );
}

#[test]
fn client_secret_post_and_public_clients_authenticate_in_the_body() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({"client_auth": "client_secret_post"}));
    let _ = login(&mut bed, &idp, "/");
    let (body, auth) = idp.token_requests.borrow()[0].clone();
    assert_eq!(auth, None, "no Basic header");
    assert_eq!(body["client_id"], "web");
    assert_eq!(body["client_secret"], "web-secret");

    let idp = Idp::new();
    let mut bed = self::bed(&idp, json!({"client_auth": "none", "client_secret": null}));
    let _ = login(&mut bed, &idp, "/");
    let (body, auth) = idp.token_requests.borrow()[0].clone();
    assert_eq!(auth, None);
    assert_eq!(body["client_id"], "web");
    assert!(!body.contains_key("client_secret"));
    assert!(
        body.contains_key("code_verifier"),
        "a public client relies on PKCE"
    );
}

#[test]
fn other_cookies_still_reach_the_upstream() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let jar = login(&mut bed, &idp, "/");
    let res = bed.send(browser("/", &jar).header("cookie", "theme=dark"));
    assert_eq!(res.status, 200);
    assert_eq!(res.upstream_header("cookie").as_deref(), Some("theme=dark"));
}

#[test]
fn api_clients_get_401_and_never_a_redirect() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let jar = Jar::default();
    for req in [
        api("/orders", &jar),
        Request::get("/orders"),
        browser("/orders", &jar).header("x-requested-with", "XMLHttpRequest"),
        browser("/orders", &jar).header("authorization", "Bearer abc"),
        Request::post("/orders", "{}").header("accept", "text/html"),
    ] {
        let res = bed.send(req.header("x-consumer-id", "mallory"));
        assert_eq!(res.status, 401, "{}", res.text());
        assert!(res.header("location").is_none());
        assert_eq!(
            res.header("www-authenticate"),
            Some("Bearer realm=\"portcullis\"")
        );
        assert_eq!(res.json()["message"], "authentication required");
    }
    let mut bed = self::bed(&idp, json!({"unauthenticated_api": 403}));
    assert_eq!(bed.send(api("/orders", &jar)).status, 403);
}

#[test]
fn the_idp_error_at_the_callback_is_a_clear_401_without_a_loop() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let mut jar = Jar::default();
    let q = start_login(&mut bed, &idp, "/", &mut jar);
    let res = bed.send(browser(
        &format!(
            "/callback?error=access_denied&error_description=User+said+no&state={}",
            q["state"]
        ),
        &jar,
    ));
    assert_eq!(res.status, 401);
    assert!(res.header("location").is_none(), "no redirect loop");
    assert!(
        res.json()["message"]
            .as_str()
            .unwrap()
            .contains("access_denied")
    );
    jar.take(&res);
    assert!(!jar.has_login(), "the failed login is cleared");
    assert!(idp.token_requests.borrow().is_empty());
}

#[test]
fn a_wrong_or_missing_state_and_a_replayed_callback_are_refused() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let mut jar = Jar::default();
    let q = start_login(&mut bed, &idp, "/", &mut jar);
    let res = bed.send(browser("/callback?code=c-1&state=forged", &jar));
    assert_eq!(res.status, 401, "{}", res.text());
    assert!(res.text().contains("state does not match"));
    // No login cookie at all (another browser, or it expired).
    let res = bed.send(browser(
        &format!("/callback?code=c-1&state={}", q["state"]),
        &Jar::default(),
    ));
    assert_eq!(res.status, 401);
    assert!(res.text().contains("no login in progress"));
    // An answer naming another issuer (RFC 9207) is a mix-up.
    let res = bed.send(browser(
        &format!(
            "/callback?code=c-1&state={}&iss=https%3A%2F%2Fevil.test",
            q["state"]
        ),
        &jar,
    ));
    assert_eq!(res.status, 401);
    assert!(res.text().contains("another issuer"), "{}", res.text());
    // Ours and another in one answer: refused too, not skipped as ambiguous.
    let q = start_login(&mut bed, &idp, "/", &mut jar);
    let ours: String = form_urlencoded::byte_serialize(ISS.as_bytes()).collect();
    let res = bed.send(browser(
        &format!(
            "/callback?code=c-1&state={}&iss={ours}&iss=https%3A%2F%2Fevil.test",
            q["state"]
        ),
        &jar,
    ));
    assert_eq!(res.status, 401, "{}", res.text());
    assert!(res.text().contains("another issuer"), "{}", res.text());
    let q = start_login(&mut bed, &idp, "/", &mut jar);
    // Two states in one callback are ambiguous.
    let res = bed.send(browser(
        &format!("/callback?code=c&state={0}&state={0}", q["state"]),
        &jar,
    ));
    assert_eq!(res.status, 400);
    assert!(
        idp.token_requests.borrow().is_empty(),
        "nothing reached the IdP"
    );

    // The real callback works once; replaying it (same cookie, state, code) does not.
    let cb = format!("/callback?code=c-1&state={}", q["state"]);
    let res = bed.send(browser(&cb, &jar));
    assert_eq!(res.status, 302, "{}", res.text());
    let res = bed.send(browser(&cb, &jar));
    assert_eq!(res.status, 401);
    assert!(res.text().contains("already completed"), "{}", res.text());
    assert_eq!(
        idp.token_requests.borrow().len(),
        1,
        "the replay did not reach the IdP"
    );

    // A login cookie older than the login timeout is refused.
    let mut jar = Jar::default();
    let q = start_login(&mut bed, &idp, "/", &mut jar);
    advance(&mut bed, &idp, 601);
    let res = bed.send(browser(
        &format!("/callback?code=c-1&state={}", q["state"]),
        &jar,
    ));
    assert_eq!(res.status, 401);
}

#[test]
fn two_tabs_can_log_in_at_once() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let mut jar = Jar::default();
    let first = start_login(&mut bed, &idp, "/one", &mut jar);
    let first_nonce = idp.nonce.borrow().clone();
    let second = start_login(&mut bed, &idp, "/two", &mut jar);
    assert_eq!(
        jar.0.keys().filter(|k| k.starts_with(LOGIN_COOKIE)).count(),
        2,
        "one login cookie per login"
    );
    let res = bed.send(browser(
        &format!("/callback?code=c&state={}", second["state"]),
        &jar,
    ));
    assert_eq!(res.status, 302, "{}", res.text());
    assert_eq!(res.header("location"), Some("/two"));
    jar.take(&res);
    assert!(jar.has_login(), "the other tab's login is still there");
    *idp.nonce.borrow_mut() = first_nonce;
    let res = bed.send(browser(
        &format!("/callback?code=c&state={}", first["state"]),
        &jar,
    ));
    assert_eq!(res.status, 302, "{}", res.text());
    assert_eq!(res.header("location"), Some("/one"));
    jar.take(&res);
    assert!(!jar.has_login());
    assert!(jar.has_session());
}

#[test]
fn a_page_opened_many_times_while_logged_out_leaves_at_most_four_logins() {
    // Each logged-out page view started a login with a cookie of its own (~3 KB with a
    // long return path); twenty of them (a hostile page can open them) made a Cookie
    // header that every later request was refused for.
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let mut jar = Jar::default();
    let long = format!("/{}", "a".repeat(1500));
    let mut last = BTreeMap::new();
    for _ in 0..20 {
        last = start_login(&mut bed, &idp, &long, &mut jar);
        let held = jar.0.keys().filter(|k| k.starts_with(LOGIN_COOKIE)).count();
        assert!(held <= 4, "{held} logins held");
    }
    // The newest login completes.
    let res = bed.send(browser(
        &format!("/callback?code=c&state={}", last["state"]),
        &jar,
    ));
    assert_eq!(res.status, 302, "{}", res.text());
    assert_eq!(res.header("location"), Some(long.as_str()));
}

#[test]
fn a_code_the_idp_refuses_is_401() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let mut jar = Jar::default();
    let q = start_login(&mut bed, &idp, "/", &mut jar);
    *idp.token_reply.borrow_mut() = Some(Reply::status(
        400,
        &[("content-type", "application/json")],
        r#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
    ));
    let res = bed.send(browser(
        &format!("/callback?code=used&state={}", q["state"]),
        &jar,
    ));
    assert_eq!(res.status, 401);
    assert!(res.text().contains("invalid_grant"), "{}", res.text());
    jar.take(&res);
    assert!(!jar.has_session());
}

#[test]
fn id_tokens_with_a_wrong_nonce_issuer_audience_or_signature_are_refused() {
    let other_key = Key::ec256("idp-1");
    let cases: Vec<(&str, Value)> = vec![
        ("nonce", json!({"nonce": "another-login"})),
        ("issuer", json!({"iss": "https://evil.test"})),
        ("audience", json!({"aud": "another-client"})),
        ("azp", json!({"aud": ["web", "other"], "azp": "other"})),
        ("expired", json!({"exp": T0 - 120, "iat": T0 - 600})),
        ("future iat", json!({"iat": T0 + 3600, "exp": T0 + 7200})),
        ("no iat", json!({"iat": null})),
    ];
    for (what, claims) in cases {
        let idp = Idp::new();
        let mut bed = bed(&idp, json!({}));
        let mut jar = Jar::default();
        let q = start_login(&mut bed, &idp, "/", &mut jar);
        let mut claims = claims;
        if claims.get("iat") == Some(&Value::Null) {
            // Sign without iat at all.
            let now = T0;
            let t = idp.key.sign(
                "ES256",
                json!({"iss": ISS, "aud": "web", "sub": "ada", "nonce": q["nonce"], "exp": now + 300}),
            );
            *idp.token_reply.borrow_mut() = Some(Reply::json(
                &json!({"access_token": "at", "token_type": "Bearer", "id_token": t}),
            ));
            claims = json!({});
        }
        *idp.id_claims.borrow_mut() = claims;
        let res = bed.send(browser(
            &format!("/callback?code=c&state={}", q["state"]),
            &jar,
        ));
        assert_eq!(res.status, 401, "{what}: {}", res.text());
        assert!(
            res.text().contains("ID token was refused"),
            "{what}: {}",
            res.text()
        );
        jar.take(&res);
        assert!(!jar.has_session(), "{what}");
    }
    // Signed by a key that is not the IdP's (same kid): the signature fails.
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let mut jar = Jar::default();
    let q = start_login(&mut bed, &idp, "/", &mut jar);
    let forged = other_key.sign(
        "ES256",
        json!({"iss": ISS, "aud": "web", "sub": "ada", "nonce": q["nonce"], "iat": T0, "exp": T0 + 300}),
    );
    *idp.token_reply.borrow_mut() = Some(Reply::json(
        &json!({"access_token": "at", "token_type": "Bearer", "id_token": forged}),
    ));
    let res = bed.send(browser(
        &format!("/callback?code=c&state={}", q["state"]),
        &jar,
    ));
    assert_eq!(res.status, 401);
    assert!(res.text().contains("signature"), "{}", res.text());
}

#[test]
fn a_rotated_idp_key_is_fetched_once() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let _ = login(&mut bed, &idp, "/");
    // The IdP signs with a new key that our cached JWKS does not have yet.
    let new_key = Rc::new(Key::rsa("idp-2"));
    idp.jwks_keys.borrow_mut().push(new_key.clone());
    let mut jar = Jar::default();
    let q = start_login(&mut bed, &idp, "/", &mut jar);
    let t = new_key.sign(
        "RS256",
        json!({"iss": ISS, "aud": "web", "sub": "bob", "nonce": q["nonce"], "iat": T0, "exp": T0 + 300}),
    );
    *idp.token_reply.borrow_mut() = Some(Reply::json(
        &json!({"access_token": "at-x", "token_type": "Bearer", "id_token": t}),
    ));
    let res = bed.send(browser(
        &format!("/callback?code=c&state={}", q["state"]),
        &jar,
    ));
    assert_eq!(res.status, 302, "{}", res.text());
    let jwks_calls = bed
        .calls()
        .iter()
        .filter(|(_, r)| r.headers.get_str(":path") == Some("/jwks"))
        .count();
    assert_eq!(
        jwks_calls, 2,
        "the first fetch and one refetch for the new kid"
    );
}

#[test]
fn an_unreachable_idp_is_503_or_502_with_a_message() {
    let idp = Idp::new();
    idp.down.set(true);
    let mut bed = bed(&idp, json!({}));
    let res = bed.send(browser("/", &Jar::default()));
    assert_eq!(res.status, 503, "{}", res.text());
    assert!(res.text().contains("identity provider is unavailable"));
    assert_eq!(res.header("retry-after"), Some("10"));

    // Discovery worked, then the token endpoint fails.
    let idp = Idp::new();
    let mut bed = self::bed(&idp, json!({}));
    let mut jar = Jar::default();
    let q = start_login(&mut bed, &idp, "/", &mut jar);
    *idp.token_reply.borrow_mut() = Some(Reply::Fail(CallFailure::ConnectFailed("refused".into())));
    let res = bed.send(browser(
        &format!("/callback?code=c&state={}", q["state"]),
        &jar,
    ));
    assert_eq!(res.status, 502, "{}", res.text());
    assert!(res.text().contains("token endpoint is unreachable"));
}

#[test]
fn a_discovery_document_for_another_issuer_or_missing_keys_is_503() {
    // Discovery names another issuer (OpenID Connect Discovery 4.3): not used.
    let mut bed = TestBed::new()
        .filter(wasm("oidc"), config(json!({})))
        .cluster("idp", |_| {
            Reply::json(&json!({"issuer": "https://evil.test", "authorization_endpoint": "https://evil.test/a",
                "token_endpoint": "https://evil.test/t", "jwks_uri": "https://evil.test/k"}))
        })
        .build()
        .unwrap();
    let res = bed.send(browser("/", &Jar::default()));
    assert_eq!(res.status, 503, "{}", res.text());
    assert!(bed.logged("names issuer `https://evil.test`"));

    // Keys unreachable at the callback: 503, no session.
    let idp = Idp::new();
    let i = idp.clone();
    let mut bed = TestBed::new()
        .filter(wasm("oidc"), config(json!({})))
        .cluster("idp", move |req| {
            if req.headers.get_str(":path") == Some("/jwks") {
                Reply::status(500, &[], "down")
            } else {
                i.answer(req)
            }
        })
        .build()
        .unwrap();
    let mut jar = Jar::default();
    let q = start_login(&mut bed, &idp, "/", &mut jar);
    let res = bed.send(browser(
        &format!("/callback?code=c&state={}", q["state"]),
        &jar,
    ));
    assert_eq!(res.status, 503, "{}", res.text());
    assert!(res.text().contains("signing keys"), "{}", res.text());
    jar.take(&res);
    assert!(!jar.has_session());
}

#[test]
fn the_token_header_is_configurable_and_logout_works_without_end_session() {
    let idp = Idp::new();
    let mut bed = bed(
        &idp,
        json!({"upstream_access_token_header": "x-access-token", "logout": {"path": "/bye-bye"}}),
    );
    let jar = login(&mut bed, &idp, "/");
    let res = bed.send(api("/", &jar).header("authorization", "Bearer from-client"));
    assert_eq!(
        res.upstream_header("x-access-token").as_deref(),
        Some("at-1")
    );
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer from-client"),
        "only the configured header is set"
    );
    // No post_logout_redirect_uri configured: still the IdP's end_session, without it.
    let res = bed.send(app_logout("/bye-bye", &jar));
    assert_eq!(res.status, 302);
    let q = query(res.header("location").unwrap());
    assert!(q.contains_key("id_token_hint") && !q.contains_key("post_logout_redirect_uri"));
    assert_eq!(bed.send(api("/", &jar)).status, 401);
}

#[test]
fn discovery_and_keys_are_fetched_once_and_shared() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    bed.advance(Duration::from_secs(2));
    assert_eq!(
        idp.discovery_fetches.get(),
        1,
        "a tick fetched it before any request"
    );
    assert!(bed.shared_data("oidc/oidc-0/discovery").is_some());
    assert!(bed.shared_data("oidc/oidc-0/jwks").is_some());
    let _ = login(&mut bed, &idp, "/");
    let _ = login(&mut bed, &idp, "/");
    assert_eq!(idp.discovery_fetches.get(), 1);
    // Re-read after its TTL, on a tick.
    advance(&mut bed, &idp, 3601);
    assert_eq!(idp.discovery_fetches.get(), 2);
}

/// Flips one bit in the middle of a cookie's value.
fn flip(v: &str) -> String {
    let mut b = v.as_bytes().to_vec();
    let i = b.len() / 2;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

#[test]
fn tampered_truncated_foreign_and_expired_cookies_are_no_session() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let jar = login(&mut bed, &idp, "/");
    let value = jar.0[COOKIE].clone();
    let foreign = {
        let idp2 = Idp::new();
        let mut other = self::bed(
            &idp2,
            json!({"session": {"secrets": [{"id": "a", "secret": SECRET_B}]}}),
        );
        login(&mut other, &idp2, "/").0[COOKIE].clone()
    };
    for (what, bad) in [
        ("tampered", flip(&value)),
        ("truncated", value[..value.len() - 10].to_owned()),
        ("foreign key", foreign),
        ("unknown key id", format!("zz{}", &value[1..])),
        ("garbage", "%%%".to_owned()),
    ] {
        let mut j = Jar::default();
        j.0.insert(COOKIE.into(), bad.clone());
        let res = bed.send(api("/orders", &j));
        assert_eq!(res.status, 401, "{what}");
        let res = bed.send(browser("/orders", &j));
        assert_eq!(res.status, 302, "{what}: a browser logs in again");
        assert!(bed.logged("session cookie rejected"), "{what}");
    }
    assert!(
        !bed.logs().iter().any(|l| l.message.contains(&value[5..40])),
        "no cookie value in the logs"
    );
    // Still good, then past the lifetime (idle timeout kept at bay by touches).
    let mut jar = jar;
    for _ in 0..8 {
        advance(&mut bed, &idp, 400);
        let res = bed.send(api("/orders", &jar));
        assert_eq!(res.status, 200, "{}", res.text());
        jar.take(&res);
    }
    advance(&mut bed, &idp, 400);
    let res = bed.send(api("/orders", &jar));
    assert_eq!(res.status, 401, "3600 s lifetime is over");
    assert!(bed.logged("session lifetime reached"));
}

#[test]
fn an_idle_session_ends_and_touches_keep_it_alive() {
    let idp = Idp::new();
    idp.access_ttl.set(100_000);
    let mut bed = bed(&idp, json!({}));
    let mut jar = login(&mut bed, &idp, "/");
    advance(&mut bed, &idp, 600);
    let res = bed.send(api("/", &jar));
    assert_eq!(res.status, 200);
    assert!(
        res.headers.get_all("set-cookie").count() > 0,
        "the idle clock restarts"
    );
    jar.take(&res);
    advance(&mut bed, &idp, 600);
    assert_eq!(
        bed.send(api("/", &jar)).status,
        200,
        "600 s after the touch: fine"
    );
    advance(&mut bed, &idp, 901);
    assert_eq!(
        bed.send(api("/", &jar)).status,
        401,
        "idle for longer than 900 s"
    );
    assert!(bed.logged("session idle timeout"));
}

#[test]
fn rotated_session_secrets_keep_sessions_and_a_dropped_secret_ends_them() {
    let idp = Idp::new();
    let mut old = bed(&idp, json!({}));
    let jar = login(&mut old, &idp, "/");
    let mut rotated = bed(
        &idp,
        json!({"session": {"secrets": [{"id": "b", "secret": SECRET_B}, {"id": "a", "secret": SECRET_A}]}}),
    );
    let res = rotated.send(api("/", &jar));
    assert_eq!(res.status, 200, "an old key still decrypts");
    let fresh = login(&mut rotated, &idp, "/");
    assert!(
        fresh.0[COOKIE].starts_with("b."),
        "the first secret encrypts"
    );
    let mut dropped = bed(
        &idp,
        json!({"session": {"secrets": [{"id": "b", "secret": SECRET_B}]}}),
    );
    assert_eq!(dropped.send(api("/", &jar)).status, 401);
    assert_eq!(dropped.send(api("/", &fresh)).status, 200);
}

#[test]
fn a_session_opens_only_where_the_idp_client_and_required_classes_are_the_same() {
    // Two oidc filters on one host sharing the secret and the cookie name: a session
    // one made was a session for the other, another client's route or a step-up
    // route asking for `acr_values` included.
    let idp = Idp::new();
    let mut app = bed(&idp, json!({}));
    let jar = login(&mut app, &idp, "/");
    let mut same = bed(&idp, json!({}));
    assert_eq!(
        same.send(api("/", &jar)).status,
        200,
        "another filter with the same configuration"
    );
    for other in [
        json!({"client_id": "admin"}),
        json!({"acr_values": ["mfa"]}),
    ] {
        let mut b = bed(&idp, other.clone());
        let res = b.send(api("/", &jar));
        assert_eq!(res.status, 401, "{other}: {}", res.text());
        assert!(res.upstream.is_none(), "{other}");
    }
}

#[test]
fn an_expiring_access_token_is_refreshed_and_never_forwarded_expired() {
    let idp = Idp::new();
    idp.access_ttl.set(120);
    let mut bed = bed(&idp, json!({}));
    let mut jar = login(&mut bed, &idp, "/");
    advance(&mut bed, &idp, 60);
    let res = bed.send(api("/a", &jar));
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer at-1")
    );
    // Within the 30 s leeway: refreshed, the request paused and resumed.
    advance(&mut bed, &idp, 40);
    let res = bed.send(api("/a", &jar));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer at-2")
    );
    let (body, _) = idp.token_requests.borrow().last().unwrap().clone();
    assert_eq!(body["grant_type"], "refresh_token");
    assert_eq!(body["refresh_token"], "rt-1");
    jar.take(&res);
    let res = bed.send(api("/a", &jar));
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer at-2")
    );
    assert_eq!(
        idp.token_requests.borrow().len(),
        2,
        "the new cookie needs no refresh"
    );

    // The IdP refuses the refresh token once the access token has expired: the
    // session is over.
    advance(&mut bed, &idp, 130);
    *idp.token_reply.borrow_mut() = Some(Reply::status(400, &[], r#"{"error":"invalid_grant"}"#));
    let res = bed.send(api("/a", &jar));
    assert_eq!(res.status, 401);
    assert!(res.upstream.is_none());
    *idp.token_reply.borrow_mut() = Some(Reply::status(400, &[], r#"{"error":"invalid_grant"}"#));
    let res = bed.send(browser("/a", &jar));
    assert_eq!(res.status, 302, "a browser logs in again");
}

#[test]
fn requests_still_carrying_the_old_cookie_use_the_refreshed_session() {
    let idp = Idp::new();
    idp.access_ttl.set(120);
    let mut bed = bed(&idp, json!({}));
    let old = login(&mut bed, &idp, "/");
    advance(&mut bed, &idp, 100);
    let res = bed.send(api("/a", &old));
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer at-2")
    );
    assert_eq!(idp.token_requests.borrow().len(), 2);
    // A request sent with the old cookie (in parallel, before the browser stored the
    // new one) does not refresh again: the IdP rotated the refresh token, so a second
    // refresh would be refused and the user logged out.
    let res = bed.send(api("/b", &old));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer at-2")
    );
    assert_eq!(idp.token_requests.borrow().len(), 2, "no second refresh");
    let mut jar = old.clone();
    jar.take(&res);
    assert_ne!(jar.0[COOKIE], old.0[COOKIE], "it gets the new cookie too");
}

#[test]
fn without_refresh_an_expired_access_token_ends_the_session() {
    let idp = Idp::new();
    idp.access_ttl.set(120);
    let mut bed = bed(&idp, json!({"refresh_tokens": false}));
    let jar = login(&mut bed, &idp, "/");
    advance(&mut bed, &idp, 100);
    let res = bed.send(api("/a", &jar));
    assert_eq!(res.status, 200, "still valid, no refresh possible: used");
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer at-1")
    );
    advance(&mut bed, &idp, 20);
    let res = bed.send(api("/a", &jar));
    assert_eq!(res.status, 401, "an expired token is never forwarded");
    assert_eq!(idp.token_requests.borrow().len(), 1);
}

#[test]
fn an_unreachable_token_endpoint_during_refresh_keeps_a_valid_token_or_answers_503() {
    let idp = Idp::new();
    idp.access_ttl.set(120);
    let mut bed = bed(&idp, json!({}));
    let jar = login(&mut bed, &idp, "/");
    advance(&mut bed, &idp, 100);
    *idp.token_reply.borrow_mut() = Some(Reply::Fail(CallFailure::ConnectFailed("x".into())));
    let res = bed.send(api("/a", &jar));
    assert_eq!(res.status, 200, "the current token is still valid");
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer at-1")
    );
    advance(&mut bed, &idp, 30);
    *idp.token_reply.borrow_mut() = Some(Reply::Fail(CallFailure::ConnectFailed("x".into())));
    let res = bed.send(api("/a", &jar));
    assert_eq!(res.status, 503, "{}", res.text());
    assert!(res.upstream.is_none());
}

#[test]
fn logout_clears_cookies_goes_to_the_idp_and_revokes_the_copied_cookie() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let mut jar = login(&mut bed, &idp, "/");
    let copy = jar.clone();
    let res = bed.send(app_logout("/logout", &jar));
    assert_eq!(res.status, 302);
    let location = res.header("location").unwrap().to_owned();
    assert!(
        location.starts_with("https://idp.test/logout?"),
        "{location}"
    );
    let q = query(&location);
    assert!(q["id_token_hint"].starts_with("eyJ"));
    assert_eq!(q["post_logout_redirect_uri"], "https://app.test/bye");
    assert_eq!(q["client_id"], "web");
    jar.take(&res);
    assert!(!jar.has_session(), "cleared: {:?}", jar.0);
    let res = bed.send(api("/", &copy));
    assert_eq!(
        res.status, 401,
        "a copy of the logged-out cookie is no session"
    );
}

#[test]
fn back_channel_logout_revokes_the_idp_session_on_every_worker() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let jar = login(&mut bed, &idp, "/");
    assert_eq!(bed.send(api("/", &jar)).status, 200);
    let logout_token = |claims: Value| {
        let mut c = json!({"iss": ISS, "aud": "web", "iat": T0, "jti": "j1",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        idp.key.sign("ES256", c)
    };
    let post = |t: &str| {
        Request::post("/oidc/backchannel", format!("logout_token={t}"))
            .header("content-type", "application/x-www-form-urlencoded")
    };
    // Refused: not a logout token, a nonce, another audience, a forged signature.
    for bad in [
        logout_token(json!({"sid": "idp-session-1", "events": {}})),
        logout_token(json!({"sid": "idp-session-1", "nonce": "n"})),
        logout_token(json!({"sid": "idp-session-1", "aud": "other"})),
        logout_token(json!({})),
        Key::ec256("idp-1").sign(
            "ES256",
            json!({"iss": ISS, "aud": "web", "iat": T0, "sid": "idp-session-1",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
        ),
    ] {
        let res = bed.send(post(&bad));
        assert_eq!(res.status, 400, "{}", res.text());
    }
    assert_eq!(bed.send(api("/", &jar)).status, 200, "still logged in");
    let res = bed.send(post(&logout_token(json!({"sid": "idp-session-1"}))));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        bed.send(api("/", &jar)).status,
        401,
        "the session is revoked"
    );
    assert!(bed.shared_data("oidc/oidc-0/revoked").is_some());
    // A new login after the logout is a new session.
    let jar2 = {
        *idp.id_claims.borrow_mut() = json!({"sid": "idp-session-2"});
        login(&mut bed, &idp, "/")
    };
    assert_eq!(bed.send(api("/", &jar2)).status, 200);
    // By subject: every session of the user created before it.
    let res = bed.send(post(&logout_token(json!({"sub": "ada", "jti": "j2"}))));
    assert_eq!(res.status, 200);
    assert_eq!(bed.send(api("/", &jar2)).status, 401);
}

#[test]
fn a_large_session_is_split_across_cookies_and_read_back() {
    let idp = Idp::new();
    let groups: Vec<String> = (0..300).map(|i| format!("group-number-{i:04}")).collect();
    *idp.id_claims.borrow_mut() = json!({"groups": groups});
    let mut bed = bed(&idp, json!({}));
    let mut jar = login(&mut bed, &idp, "/");
    assert!(!jar.0.contains_key(COOKIE));
    assert!(
        jar.0.contains_key(&format!("{COOKIE}.0")) && jar.0.contains_key(&format!("{COOKIE}.1"))
    );
    assert!(jar.0.values().all(|v| v.len() <= 3800));
    let res = bed.send(api("/", &jar));
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(
        res.upstream_header("x-consumer-groups")
            .unwrap()
            .contains("group-number-0299")
    );
    // A missing chunk is no session.
    jar.0.remove(&format!("{COOKIE}.1"));
    assert_eq!(bed.send(api("/", &jar)).status, 401);
}

#[test]
fn the_return_url_is_always_local() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    for (asked, back) in [("//evil.example/x", "/"), ("/ok/path?q=1", "/ok/path?q=1")] {
        let mut jar = Jar::default();
        let q = start_login(&mut bed, &idp, asked, &mut jar);
        let res = bed.send(browser(
            &format!("/callback?code=c&state={}", q["state"]),
            &jar,
        ));
        assert_eq!(res.status, 302);
        assert_eq!(res.header("location"), Some(back), "{asked}");
    }
}

#[test]
fn bearer_passthrough_validates_the_token_instead_of_redirecting() {
    let idp = Idp::new();
    let mut bed = bed(
        &idp,
        json!({"bearer_passthrough": true, "bearer_audiences": ["orders-api"]}),
    );
    let good = idp.key.sign(
        "ES256",
        json!({"iss": ISS, "aud": "orders-api", "sub": "svc-1", "iat": T0, "exp": T0 + 300}),
    );
    let res =
        bed.send(browser("/", &Jar::default()).header("authorization", &format!("Bearer {good}")));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("x-consumer-id").as_deref(),
        Some("svc-1")
    );
    assert_eq!(
        res.upstream_header("authorization"),
        Some(format!("Bearer {good}"))
    );
    // Verified once: the next request is a cache hit, until the token's exp.
    let res =
        bed.send(api("/", &Jar::default()).header("authorization", &format!("Bearer {good}")));
    assert_eq!(res.status, 200);
    assert_eq!(
        bed.metric("oidc_bearer_cache_hits").map(|m| m.count()),
        Some(1)
    );
    // A browser that has a session sends its cookies with the token: the session,
    // its chunks and logins in progress stay here (replayable if the upstream logs
    // them); other cookies pass.
    let res = bed.send(
        api("/", &Jar::default())
            .header("authorization", &format!("Bearer {good}"))
            .header(
                "cookie",
                &format!("{COOKIE}=sealed; {COOKIE}.1=more; theme=dark; {LOGIN_COOKIE}.abc=login"),
            ),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.upstream_header("cookie").as_deref(), Some("theme=dark"));
    advance(&mut bed, &idp, 361);
    let res =
        bed.send(api("/", &Jar::default()).header("authorization", &format!("Bearer {good}")));
    assert_eq!(
        res.status, 401,
        "a cached token does not outlive its exp (and the 60 s skew)"
    );
    let wrong_aud = idp.key.sign(
        "ES256",
        json!({"iss": ISS, "aud": "web2", "sub": "x", "iat": T0, "exp": T0 + 300}),
    );
    for bad in [wrong_aud.as_str(), "not-a-jwt"] {
        let res =
            bed.send(api("/", &Jar::default()).header("authorization", &format!("Bearer {bad}")));
        assert_eq!(res.status, 401);
        assert!(
            res.header("www-authenticate")
                .unwrap()
                .contains("invalid_token")
        );
    }
}

#[test]
fn claim_rules_refuse_a_good_bearer_token_with_403_and_never_cache_it() {
    let idp = Idp::new();
    let mut bed = bed(
        &idp,
        json!({"bearer_passthrough": true, "bearer_audiences": ["orders-api"],
            "requires": {"claims": [{"claim": "groups", "contains": "ops"}]}}),
    );
    let token = |groups: Value| {
        idp.key.sign(
            "ES256",
            json!({"iss": ISS, "aud": "orders-api", "sub": "svc-1", "groups": groups,
                "iat": T0, "exp": T0 + 300}),
        )
    };
    let ops = token(json!(["ops"]));
    let sales = token(json!(["sales"]));
    let send = |bed: &mut TestBed, t: &str| {
        bed.send(api("/", &Jar::default()).header("authorization", &format!("Bearer {t}")))
    };
    assert_eq!(send(&mut bed, &ops).status, 200);
    for _ in 0..2 {
        let res = send(&mut bed, &sales);
        assert_eq!(res.status, 403, "{}", res.text());
        assert_eq!(res.header("www-authenticate"), None);
        assert!(res.upstream.is_none());
    }
    assert_eq!(
        bed.metric("oidc_claims_refused").map(|m| m.count()),
        Some(2)
    );
    assert_eq!(send(&mut bed, &ops).status, 200);
    assert_eq!(
        bed.metric("oidc_bearer_cache_hits").map(|m| m.count()),
        Some(1),
        "only the admitted token was cached"
    );
}

#[test]
fn a_group_with_a_comma_is_left_out_of_x_consumer_groups() {
    // An upstream that splits `x-consumer-groups` at commas must not read `admin` out
    // of a group named `dev,admin`.
    let idp = Idp::new();
    let mut bed = bed(
        &idp,
        json!({"bearer_passthrough": true, "bearer_audiences": ["orders-api"]}),
    );
    let token = idp.key.sign(
        "ES256",
        json!({"iss": ISS, "aud": "orders-api", "sub": "svc-1",
            "groups": ["eng", "dev,admin", "ops\r"], "iat": T0, "exp": T0 + 300}),
    );
    let res =
        bed.send(api("/", &Jar::default()).header("authorization", &format!("Bearer {token}")));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("x-consumer-groups").as_deref(),
        Some("eng")
    );
}

#[test]
fn with_nothing_fetched_yet_one_call_is_in_flight_whatever_the_number_of_requests() {
    // Before, each request that found no discovery document (or no keys) dispatched
    // its own fetch: while the IdP was down or slow, every request added a call.
    let idp = Idp::new();
    let mut bed = TestBed::new()
        .filter(
            wasm("oidc"),
            config(
                json!({"bearer_passthrough": true, "bearer_audiences": ["orders-api"],
                "idp_timeout_ms": 200}),
            ),
        )
        .cluster("idp", |_| Reply::Never)
        .build()
        .unwrap();
    let token = idp.key.sign(
        "ES256",
        json!({"iss": ISS, "aud": "orders-api", "sub": "svc-1", "iat": T0, "exp": T0 + 300}),
    );
    let burst: Vec<Request> = (0..50)
        .map(|_| api("/", &Jar::default()).header("authorization", &format!("Bearer {token}")))
        .collect();
    let responses = bed.send_all(burst);
    assert_eq!(bed.calls().len(), 1, "one fetch, not one per request");
    for res in &responses {
        assert_eq!(res.status, 503, "{}", res.text());
        assert_eq!(res.header("retry-after"), Some("10"));
    }
}

#[test]
fn a_bad_configuration_is_refused_naming_the_field() {
    let idp = Idp::new();
    let i = idp.clone();
    let bed = TestBed::new()
        .filter(
            wasm("oidc"),
            config(json!({"redirect_uri": "http://app.test/callback"})),
        )
        .cluster("idp", move |r| i.answer(r))
        .build();
    assert!(bed.is_err());
}

#[test]
fn hostile_callbacks_and_cookies_never_crash_the_filter() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let mut jar = Jar::default();
    let _ = start_login(&mut bed, &idp, "/", &mut jar);
    for path in [
        "/callback",
        "/callback?",
        "/callback?code=&state=",
        "/callback?code=%ff%fe&state=%00",
        "/callback?state=x&code=y&code=z",
    ] {
        let res = bed.send(browser(path, &jar));
        assert!(
            res.status >= 300 && res.status < 500,
            "{path}: {}",
            res.status
        );
    }
    let res = bed.send(browser("/logout?x=%&id_token_hint=%ff", &jar));
    assert_eq!(res.status, 200, "asked to confirm: {}", res.text());
    for cookie in [
        format!("{COOKIE}="),
        format!("{COOKIE}=a.b.c"),
        format!("{COOKIE}.0=x; {COOKIE}.1=y"),
        format!("{COOKIE}={}", "A".repeat(30_000)),
        format!("{LOGIN_COOKIE}.AAAAAAAAAAAAAAAA=a.{}", "B".repeat(100)),
        ";;;===; ;".into(),
    ] {
        let res = bed.send(Request::get("/x").header("cookie", &cookie));
        assert_eq!(res.status, 401, "{cookie:.40}");
    }
    let mut jar = login(&mut bed, &idp, "/");
    jar.0.insert("x".into(), "y".into());
    assert_eq!(
        bed.send(api("/", &jar)).status,
        200,
        "the filter still serves"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    /// Random cookies, callback queries and logout bodies through the built filter: it
    /// always answers (redirect, 400, 401 or 403; 200 only for a valid back-channel call,
    /// which random input is not), never traps, and keeps serving.
    #[test]
    fn random_requests_never_crash_the_filter(
        cookie in "[ -~]{0,300}",
        query in "[ -~]{0,200}",
        body in "[ -~]{0,200}",
    ) {
        thread_local! {
            static BED: std::cell::RefCell<Option<(TestBed, Idp)>> = const { std::cell::RefCell::new(None) };
        }
        BED.with(|b| {
            let mut b = b.borrow_mut();
            let (bed, _) = b.get_or_insert_with(|| {
                let idp = Idp::new();
                (bed(&idp, json!({})), idp)
            });
            let with_cookie = |r: Request| r.header("cookie", &cookie);
            for req in [
                with_cookie(browser(&format!("/callback?{query}"), &Jar::default())),
                with_cookie(api(&format!("/x?{query}"), &Jar::default())),
                with_cookie(Request::get(&format!("/logout?{query}"))),
                Request::post("/oidc/backchannel", body.clone()),
            ] {
                let res = bed.send(req);
                proptest::prop_assert!(
                    [302, 400, 401, 403, 503].contains(&res.status),
                    "{} for cookie {cookie:?} query {query:?}: {}", res.status, res.text()
                );
            }
            Ok(())
        })?;
    }
}

#[test]
fn a_custom_access_token_header_cannot_be_forged_by_the_client() {
    let idp = Idp::new();
    let mut bed = bed(
        &idp,
        json!({"bearer_passthrough": true, "bearer_audiences": ["orders-api"],
            "upstream_access_token_header": "x-access-token"}),
    );
    let good = idp.key.sign(
        "ES256",
        json!({"iss": ISS, "aud": "orders-api", "sub": "svc-1", "iat": T0, "exp": T0 + 300}),
    );
    // Pass-through: the header carries the verified token, never the client's.
    let res = bed.send(
        api("/", &Jar::default())
            .header("authorization", &format!("Bearer {good}"))
            .header("x-access-token", "forged"),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    let up = res.upstream.as_ref().unwrap();
    let values: Vec<&[u8]> = up.headers.get_all("x-access-token").collect();
    assert_eq!(values, vec![good.as_bytes()]);
    // A session: the session's token, not the client's.
    let jar = login(&mut bed, &idp, "/");
    let res = bed.send(api("/", &jar).header("x-access-token", "forged"));
    assert_eq!(res.status, 200, "{}", res.text());
    let up = res.upstream.as_ref().unwrap();
    let values: Vec<&[u8]> = up.headers.get_all("x-access-token").collect();
    assert_eq!(values, vec![b"at-1".as_slice()]);
}

#[test]
fn two_authorization_headers_are_refused_in_pass_through() {
    let idp = Idp::new();
    let mut bed = bed(
        &idp,
        json!({"bearer_passthrough": true, "bearer_audiences": ["orders-api"]}),
    );
    let good = idp.key.sign(
        "ES256",
        json!({"iss": ISS, "aud": "orders-api", "sub": "svc-1", "iat": T0, "exp": T0 + 300}),
    );
    let res = bed.send(
        api("/", &Jar::default())
            .header("authorization", "Bearer forged")
            .header("authorization", &format!("Bearer {good}")),
    );
    assert_eq!(res.status, 401, "{}", res.text());
    assert!(res.upstream.is_none());
    assert!(
        res.header("www-authenticate")
            .unwrap()
            .contains("invalid_request"),
        "{:?}",
        res.headers
    );
    // One header: fine.
    let res =
        bed.send(api("/", &Jar::default()).header("authorization", &format!("Bearer {good}")));
    assert_eq!(res.status, 200, "{}", res.text());
}

#[test]
fn pass_through_refuses_id_tokens_and_logout_tokens() {
    let idp = Idp::new();
    // Even when the operator lists the client id as an audience.
    let mut bed = bed(
        &idp,
        json!({"bearer_passthrough": true, "bearer_audiences": ["web"]}),
    );
    let id_token = idp.key.sign(
        "ES256",
        json!({"iss": ISS, "aud": "web", "sub": "ada", "nonce": "n", "iat": T0, "exp": T0 + 300}),
    );
    let logout_token = idp.key.sign(
        "ES256",
        json!({"iss": ISS, "aud": "web", "sub": "ada", "iat": T0, "exp": T0 + 300, "jti": "j",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
    );
    for (what, t) in [("ID token", &id_token), ("logout token", &logout_token)] {
        let res =
            bed.send(api("/", &Jar::default()).header("authorization", &format!("Bearer {t}")));
        assert_eq!(res.status, 401, "{what}: {}", res.text());
        assert!(res.upstream.is_none(), "{what}");
    }
    let access = idp.key.sign(
        "ES256",
        json!({"iss": ISS, "aud": "web", "sub": "svc", "iat": T0, "exp": T0 + 300}),
    );
    let res =
        bed.send(api("/", &Jar::default()).header("authorization", &format!("Bearer {access}")));
    assert_eq!(res.status, 200, "{}", res.text());
}

#[test]
fn replayed_logouts_do_not_grow_the_revocation_list() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let jar = login(&mut bed, &idp, "/");
    for _ in 0..20 {
        let res = bed.send(app_logout("/logout", &jar));
        assert_eq!(res.status, 302);
    }
    let list = bed.shared_data("oidc/oidc-0/revoked").unwrap();
    assert_eq!(
        list.iter().filter(|b| **b == b'\n').count(),
        1,
        "{}",
        String::from_utf8_lossy(&list)
    );
    let generation = bed.shared_data("oidc/oidc-0/revoked-gen").unwrap();
    assert_eq!(generation, 1u64.to_le_bytes(), "one change, one bump");
    assert_eq!(bed.send(api("/", &jar)).status, 401);
    // An expired session's logout revokes nothing either.
    let jar = login(&mut bed, &idp, "/");
    advance(&mut bed, &idp, 3601);
    assert_eq!(bed.send(app_logout("/logout", &jar)).status, 302);
    let list = bed.shared_data("oidc/oidc-0/revoked").unwrap();
    assert_eq!(list.iter().filter(|b| **b == b'\n').count(), 1);
}

#[test]
fn unknown_kids_force_at_most_one_jwks_refetch_per_30_seconds() {
    let idp = Idp::new();
    let mut bed = bed(
        &idp,
        json!({"bearer_passthrough": true, "bearer_audiences": ["orders-api"]}),
    );
    bed.advance(Duration::from_secs(2));
    let jwks_calls = |bed: &TestBed| {
        bed.calls()
            .iter()
            .filter(|(_, r)| r.headers.get_str(":path") == Some("/jwks"))
            .count()
    };
    let before = jwks_calls(&bed);
    assert_eq!(before, 1, "the tick fetched the JWKS");
    let now = T0 + 2;
    let forged = |i: u32| {
        Key::ec256(&format!("random-{i}")).sign(
            "ES256",
            json!({"iss": ISS, "aud": "orders-api", "sub": "x", "iat": now, "exp": now + 300}),
        )
    };
    for i in 0..5 {
        let res = bed.send(
            api("/", &Jar::default()).header("authorization", &format!("Bearer {}", forged(i))),
        );
        assert_eq!(res.status, 401, "{}", res.text());
    }
    assert_eq!(jwks_calls(&bed), before + 1, "one forced refetch");
    advance(&mut bed, &idp, 31);
    let res = bed
        .send(api("/", &Jar::default()).header("authorization", &format!("Bearer {}", forged(9))));
    assert_eq!(res.status, 401);
    assert_eq!(jwks_calls(&bed), before + 2, "another after 30 s");
}

#[test]
fn back_channel_logout_tokens_cannot_be_replayed_or_reach_later_logins() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let logout_token = |jti: &str, iat: u64| {
        idp.key.sign(
            "ES256",
            json!({"iss": ISS, "aud": "web", "iat": iat, "jti": jti, "sub": "ada",
                "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
        )
    };
    let post = |t: &str| {
        Request::post("/oidc/backchannel", format!("logout_token={t}"))
            .header("content-type", "application/x-www-form-urlencoded")
    };
    let jar = login(&mut bed, &idp, "/");
    let first = logout_token("k1", T0);
    assert_eq!(bed.send(post(&first)).status, 200);
    assert_eq!(bed.send(api("/", &jar)).status, 401);

    // Ada logs in again; the same token, replayed, does not log her out.
    advance(&mut bed, &idp, 10);
    let jar = login(&mut bed, &idp, "/");
    let res = bed.send(post(&first));
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(res.text().contains("already used"), "{}", res.text());
    assert_eq!(bed.send(api("/", &jar)).status, 200);

    // Another token issued before that login: its cutoff is its iat, not now.
    assert_eq!(bed.send(post(&logout_token("k2", T0))).status, 200);
    assert_eq!(bed.send(api("/", &jar)).status, 200, "a later login stays");

    // A token issued too long ago is refused.
    advance(&mut bed, &idp, 400);
    let res = bed.send(post(&logout_token("k3", T0 + 10)));
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(res.text().contains("too long ago"), "{}", res.text());
}

#[test]
fn a_refresh_that_waits_for_the_keys_keeps_the_refreshed_tokens() {
    let idp = Idp::new();
    idp.access_ttl.set(20);
    let mut first = bed(&idp, json!({}));
    let jar = login(&mut first, &idp, "/");
    // Another gateway (fresh shared data: no discovery, no keys yet) gets the cookie,
    // whose access token is within the refresh leeway; the IdP rotates the refresh
    // token and sends a new ID token.
    let mut bed = bed(&idp, json!({}));
    *idp.token_reply.borrow_mut() = Some(Reply::json(&json!({
        "access_token": "at-refreshed", "token_type": "Bearer", "expires_in": 300,
        "refresh_token": "rt-rotated", "id_token": idp.id_token(&json!({}))
    })));
    let res = bed.send(api("/a", &jar));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer at-refreshed")
    );
    let refreshes: Vec<String> = idp
        .token_requests
        .borrow()
        .iter()
        .filter(|(b, _)| b["grant_type"] == "refresh_token")
        .map(|(b, _)| b["refresh_token"].clone())
        .collect();
    assert_eq!(refreshes, vec!["rt-1".to_string()], "one refresh, not two");
}

#[test]
fn a_session_too_large_to_read_back_is_a_clear_error_not_a_login_loop() {
    let idp = Idp::new();
    let groups: Vec<String> = (0..500).map(|i| format!("group-number-{i:04}")).collect();
    *idp.id_claims.borrow_mut() = json!({"groups": groups});
    let mut bed = bed(&idp, json!({}));
    let mut jar = Jar::default();
    let q = start_login(&mut bed, &idp, "/", &mut jar);
    let res = bed.send(browser(
        &format!("/callback?code=c-1&state={}", q["state"]),
        &jar,
    ));
    assert_eq!(res.status, 500, "{}", res.text());
    assert!(res.text().contains("too large"), "{}", res.text());
    jar.take(&res);
    assert!(
        !jar.has_session(),
        "no unreadable cookie: {:?}",
        jar.0.keys()
    );
    assert!(
        !jar.has_login(),
        "the spent login goes too: {:?}",
        jar.0.keys()
    );
}

#[test]
fn a_parallel_refresh_refused_with_invalid_grant_keeps_the_session() {
    let idp = Idp::new();
    idp.access_ttl.set(120);
    let mut bed = bed(&idp, json!({}));
    // Another gateway (same secrets, its own shared data): it cannot see the session
    // the first one refreshed and published.
    let mut other = self::bed(&idp, json!({}));
    let jar = login(&mut bed, &idp, "/");
    advance(&mut bed, &idp, 100);
    other.advance(Duration::from_secs(100));
    // Two requests with the same cookie: the first refreshes (the IdP rotates the
    // refresh token), the second presents the spent one.
    let first = bed.send(api("/a", &jar));
    assert_eq!(
        first.upstream_header("authorization").as_deref(),
        Some("Bearer at-2")
    );
    *idp.token_reply.borrow_mut() = Some(Reply::status(400, &[], r#"{"error":"invalid_grant"}"#));
    let second = other.send(api("/a", &jar));
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(
        second.upstream_header("authorization").as_deref(),
        Some("Bearer at-1"),
        "the current token, still valid"
    );
    assert_eq!(
        idp.token_requests.borrow().len(),
        3,
        "the second refresh reached the IdP"
    );
    assert!(
        !second
            .headers
            .get_all("set-cookie")
            .any(|c| String::from_utf8_lossy(c).contains("Max-Age=0")),
        "the session cookie is not cleared"
    );
    // On the gateway that refreshed, the old cookie gets the published session.
    let third = bed.send(api("/a", &jar));
    assert_eq!(third.status, 200, "{}", third.text());
    assert_eq!(
        third.upstream_header("authorization").as_deref(),
        Some("Bearer at-2")
    );
    let mut jar = jar;
    jar.take(&first);
    assert_eq!(bed.send(api("/a", &jar)).status, 200);
    assert_eq!(other.send(api("/a", &jar)).status, 200);
}

#[test]
fn parallel_requests_of_a_session_refresh_once() {
    let idp = Idp::new();
    idp.access_ttl.set(120);
    let mut bed = bed(&idp, json!({}));
    let jar = login(&mut bed, &idp, "/");
    advance(&mut bed, &idp, 100);
    // The test bed runs one request at a time and a finished refresh is published
    // (the old cookie then gets the new session), so the refresh still "in flight"
    // here is one the IdP did not answer: its lease is held all the same.
    *idp.token_reply.borrow_mut() = Some(Reply::status(503, &[], "down"));
    let first = bed.send(api("/a", &jar));
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        first.upstream_header("authorization").as_deref(),
        Some("Bearer at-1")
    );
    assert_eq!(
        idp.token_requests.borrow().len(),
        2,
        "login and one refresh"
    );
    // The same cookie again while the first refresh holds the lease: the current,
    // still valid token, and no second refresh.
    let second = bed.send(api("/a", &jar));
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(
        second.upstream_header("authorization").as_deref(),
        Some("Bearer at-1")
    );
    assert_eq!(idp.token_requests.borrow().len(), 2, "no second refresh");
    // Past the lease (one token call long), the next request refreshes.
    advance(&mut bed, &idp, 8);
    let third = bed.send(api("/a", &jar));
    assert_eq!(third.status, 200, "{}", third.text());
    assert_eq!(
        third.upstream_header("authorization").as_deref(),
        Some("Bearer at-2")
    );
    assert_eq!(idp.token_requests.borrow().len(), 3);
}

// ---- Hardening: back-channel logout, logout CSRF, revocations by volume, refreshed
// identity.

/// A logout the application itself sends: a POST from its own origin.
fn app_logout(path: &str, jar: &Jar) -> Request {
    Request::new("POST", path)
        .header("accept", "text/html")
        .header("origin", "https://app.test")
        .header("sec-fetch-site", "same-origin")
        .header("cookie", &jar.header())
}

/// A valid back-channel logout token for `sid`.
fn logout_token(idp: &Idp, sid: &str, jti: &str) -> String {
    let now = idp.now.get();
    idp.key.sign(
        "ES256",
        json!({"iss": ISS, "aud": "web", "iat": now, "jti": jti, "sid": sid,
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
    )
}

/// Whatever the method, body, chunking, trailers, content type or size, and whether or
/// not the filter pauses for the IdP's keys, a request to the back-channel path is
/// answered by the filter and the upstream sees nothing of it.
#[test]
fn no_request_to_the_back_channel_path_ever_reaches_the_upstream() {
    let idp = Idp::new();
    let seen = Rc::new(Cell::new(0u32));
    let count = seen.clone();
    let i = idp.clone();
    // A fresh bed: no keys yet, so the first valid token pauses for the JWKS.
    let mut bed = TestBed::new()
        .filter(wasm("oidc"), config(json!({})))
        .cluster("idp", move |req| i.answer(req))
        .upstream(move |_| {
            count.set(count.get() + 1);
            let mut h = portcullis_testbed::HeaderMap::new();
            h.add(":status", "200");
            (200, h, b"the upstream answered".to_vec())
        })
        .build()
        .unwrap();
    let form = "application/x-www-form-urlencoded";
    let valid = |jti: &str| format!("logout_token={}", logout_token(&idp, "idp-session-1", jti));
    let post = |path: &str| Request::new("POST", path).header("content-type", form);
    let split = |s: &str| -> Vec<Vec<u8>> { s.as_bytes().chunks(7).map(<[u8]>::to_vec).collect() };
    let cases: Vec<(&str, Request, u16)> = vec![
        (
            "valid, in chunks, keys fetched meanwhile",
            post("/oidc/backchannel").in_chunks(split(&valid("j1"))),
            200,
        ),
        (
            "valid, with a query",
            post("/oidc/backchannel?x=1").body(valid("j2")),
            200,
        ),
        ("replayed", post("/oidc/backchannel").body(valid("j2")), 400),
        (
            "trailers after a valid body",
            post("/oidc/backchannel")
                .in_chunks(split(&valid("j3")))
                .trailer("x-t", "1"),
            400,
        ),
        (
            "trailers only",
            post("/oidc/backchannel").trailer("x-t", "1"),
            400,
        ),
        ("no body", post("/oidc/backchannel"), 400),
        (
            "not a form",
            Request::new("POST", "/oidc/backchannel")
                .header("content-type", "text/plain")
                .body(valid("j4")),
            400,
        ),
        (
            "no content type",
            Request::post("/oidc/backchannel", valid("j5")),
            400,
        ),
        (
            "garbage",
            post("/oidc/backchannel").in_chunks(vec![b"logout_token=".to_vec(), b"x.y.z".to_vec()]),
            400,
        ),
        (
            "too large, streamed",
            post("/oidc/backchannel").in_chunks(vec![vec![b'a'; 40_000]; 3]),
            413,
        ),
        (
            "too large, declared",
            post("/oidc/backchannel")
                .header("content-length", "1000000")
                .in_chunks(vec![b"logout_token=x".to_vec()]),
            413,
        ),
        ("GET", Request::get("/oidc/backchannel"), 405),
        (
            "GET with a body",
            Request::get("/oidc/backchannel").body(valid("j6")),
            405,
        ),
        (
            "PUT with a body",
            Request::new("PUT", "/oidc/backchannel")
                .header("content-type", form)
                .in_chunks(split(&valid("j7"))),
            405,
        ),
        ("DELETE", Request::new("DELETE", "/oidc/backchannel"), 405),
    ];
    for (what, req, status) in cases {
        let res = bed.send(req);
        assert_eq!(res.status, status, "{what}: {}", res.text());
        assert!(res.upstream.is_none(), "{what}: reached the upstream");
        assert!(!res.text().contains("the upstream answered"), "{what}");
        if status == 405 {
            assert_eq!(res.header("allow"), Some("POST"), "{what}");
        }
    }
    assert_eq!(seen.get(), 0, "the upstream saw a back-channel request");
    assert_eq!(
        bed.metric("oidc_backchannel_logouts").map(|m| m.count()),
        Some(2)
    );
}

/// A cross-site page cannot log the user out: a GET without proof that it came from
/// the application gets a confirmation page (or, for a non-browser, a 403), and a
/// cross-origin POST a 403; the session goes on working and no cookie is cleared.
#[test]
fn a_cross_site_request_cannot_end_the_session() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let jar = login(&mut bed, &idp, "/");
    let wrong_hint = idp.id_token(&json!({"sub": "mallory"}));
    let cases: Vec<(&str, Request, u16)> = vec![
        (
            "a cross-site link",
            browser("/logout", &jar).header("sec-fetch-site", "cross-site"),
            200,
        ),
        (
            "a same-site page",
            browser("/logout", &jar).header("sec-fetch-site", "same-site"),
            200,
        ),
        (
            "opened from outside the browser",
            browser("/logout", &jar).header("sec-fetch-site", "none"),
            200,
        ),
        ("an old browser's link", browser("/logout", &jar), 200),
        (
            "an image tag",
            api("/logout", &jar).header("sec-fetch-site", "cross-site"),
            403,
        ),
        (
            "another user's hint",
            browser(&format!("/logout?id_token_hint={wrong_hint}"), &jar)
                .header("sec-fetch-site", "cross-site"),
            200,
        ),
        (
            "a cross-site form",
            Request::new("POST", "/logout")
                .header("cookie", &jar.header())
                .header("origin", "https://evil.test")
                .header("sec-fetch-site", "cross-site"),
            403,
        ),
        (
            "a cross-origin fetch",
            Request::new("DELETE", "/logout")
                .header("cookie", &jar.header())
                .header("origin", "https://evil.test"),
            403,
        ),
        (
            "a same-site form",
            Request::new("POST", "/logout")
                .header("cookie", &jar.header())
                .header("origin", "https://sub.app.test")
                .header("sec-fetch-site", "same-site"),
            403,
        ),
        (
            "an opaque origin",
            Request::new("POST", "/logout")
                .header("cookie", &jar.header())
                .header("origin", "null"),
            403,
        ),
        (
            "PUT",
            Request::new("PUT", "/logout")
                .header("cookie", &jar.header())
                .header("origin", "https://app.test"),
            405,
        ),
    ];
    for (what, req, status) in cases {
        let res = bed.send(req);
        assert_eq!(res.status, status, "{what}: {}", res.text());
        assert!(
            res.header("location").is_none(),
            "{what}: not sent to the IdP"
        );
        assert_eq!(
            res.headers.get_all("set-cookie").count(),
            0,
            "{what}: cookies kept"
        );
        if status == 200 {
            assert!(
                res.header("content-type").unwrap().starts_with("text/html"),
                "{what}"
            );
            assert!(
                res.text().contains("<form method=\"post\""),
                "{what}: {}",
                res.text()
            );
            let csp = res.header("content-security-policy").unwrap_or_default();
            assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
        }
        assert_eq!(
            bed.send(api("/", &jar)).status,
            200,
            "{what}: the session still works"
        );
    }
}

/// The ways an application logs its user out: a POST from its pages (its origin, or
/// the host it is served on, or a browser that sends neither header), a DELETE from its
/// scripts, a link on its own pages (`Sec-Fetch-Site: same-origin`), or a link carrying
/// the session's ID token as `id_token_hint` (for browsers without `Sec-Fetch-Site`).
#[test]
fn the_application_logs_out_with_a_post_its_own_links_or_the_id_token_hint() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let id_token = |bed: &mut TestBed, jar: &Jar| {
        bed.send(api("/", jar))
            .upstream_header("x-id-token")
            .unwrap()
    };
    type Logout = Box<dyn Fn(&Jar, &str) -> Request>;
    let ways: Vec<(&str, Logout)> = vec![
        (
            "a form on its pages",
            Box::new(|j: &Jar, _: &str| app_logout("/logout", j)),
        ),
        (
            "a POST naming the host it is on",
            Box::new(|j: &Jar, _: &str| {
                Request::new("POST", "/logout")
                    .header("cookie", &j.header())
                    .header("origin", "https://gateway.test")
            }),
        ),
        (
            "a POST from a browser that sends no Origin",
            Box::new(|j: &Jar, _: &str| {
                Request::new("POST", "/logout").header("cookie", &j.header())
            }),
        ),
        (
            "a DELETE from its scripts",
            Box::new(|j: &Jar, _: &str| {
                Request::new("DELETE", "/logout")
                    .header("cookie", &j.header())
                    .header("origin", "https://app.test")
                    .header("sec-fetch-site", "same-origin")
            }),
        ),
        (
            "a link on its pages",
            Box::new(|j: &Jar, _: &str| {
                browser("/logout", j).header("sec-fetch-site", "same-origin")
            }),
        ),
        (
            "a link with the ID token as hint",
            Box::new(|j: &Jar, t: &str| browser(&format!("/logout?id_token_hint={t}"), j)),
        ),
    ];
    for (what, make) in ways {
        let jar = login(&mut bed, &idp, "/");
        let hint = id_token(&mut bed, &jar);
        let res = bed.send(make(&jar, &hint));
        assert_eq!(res.status, 302, "{what}: {}", res.text());
        assert!(
            res.header("location")
                .unwrap()
                .starts_with("https://idp.test/logout?"),
            "{what}"
        );
        let mut after = jar.clone();
        after.take(&res);
        assert!(!after.has_session(), "{what}: cookies cleared");
        assert_eq!(bed.send(api("/", &jar)).status, 401, "{what}: revoked");
    }
}

/// A logged-out session stays revoked until its own end, however many other sessions
/// are logged out meanwhile: 5,000 logouts by another account do not bring a stolen
/// copy of the cookie back.
#[test]
fn thousands_of_logouts_by_another_account_never_revive_a_logged_out_cookie() {
    let idp = Idp::new();
    idp.access_ttl.set(100_000);
    let mut bed = bed(
        &idp,
        json!({"session": {"secrets": [{"id": "a", "secret": SECRET_A}],
        "lifetime": 3600, "idle_timeout": 0}}),
    );
    let victim = login(&mut bed, &idp, "/");
    let stolen = victim.clone();
    assert_eq!(bed.send(app_logout("/logout", &victim)).status, 302);
    assert_eq!(bed.send(api("/", &stolen)).status, 401);
    *idp.id_claims.borrow_mut() = json!({"sub": "mallory", "sid": "mallory-idp"});
    for i in 0..5000 {
        let jar = login(&mut bed, &idp, "/");
        let res = bed.send(app_logout("/logout", &jar));
        assert_eq!(res.status, 302, "logout {i}: {}", res.text());
    }
    let res = bed.send(api("/", &stolen));
    assert_eq!(
        res.status,
        401,
        "the stolen cookie came back: {}",
        res.text()
    );
    let list = bed.shared_data("oidc/oidc-0/revoked").unwrap();
    assert!(list.len() < 16 * 1024, "bounded: {} bytes", list.len());
    // A login of the victim's after all that is a session like any other.
    *idp.id_claims.borrow_mut() = json!({});
    let fresh = login(&mut bed, &idp, "/");
    assert_eq!(bed.send(api("/", &fresh)).status, 200);
}

/// A refreshed ID token is verified as at login and is where the identity comes from
/// afterwards: a user whose groups, tier or name changed at the IdP gets the new ones.
#[test]
fn a_refresh_takes_the_identity_from_the_refreshed_id_token() {
    let idp = Idp::new();
    idp.access_ttl.set(120);
    let mut bed = bed(&idp, json!({}));
    let jar = login(&mut bed, &idp, "/");
    let before = bed.send(api("/a", &jar));
    assert_eq!(
        before.upstream_header("x-consumer-tier").as_deref(),
        Some("premium")
    );
    advance(&mut bed, &idp, 100);
    let refreshed = idp.id_token(&json!({"groups": ["eng"], "tier": "basic",
        "preferred_username": "ada.lovelace"}));
    *idp.token_reply.borrow_mut() = Some(Reply::json(&json!({
        "access_token": "at-refreshed", "token_type": "Bearer", "expires_in": 300,
        "refresh_token": "rt-2", "id_token": refreshed
    })));
    let res = bed.send(api("/a", &jar));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer at-refreshed")
    );
    assert_eq!(
        res.upstream_header("x-consumer-groups").as_deref(),
        Some("eng")
    );
    assert_eq!(
        res.upstream_header("x-consumer-tier").as_deref(),
        Some("basic")
    );
    assert_eq!(
        res.upstream_header("x-consumer-username").as_deref(),
        Some("ada.lovelace")
    );
    assert_eq!(res.upstream_header("x-consumer-id").as_deref(), Some("ada"));
    assert_eq!(res.upstream_header("x-id-token"), Some(refreshed.clone()));
    // The new cookie carries the new identity.
    let mut jar = jar;
    jar.take(&res);
    let res = bed.send(api("/b", &jar));
    assert_eq!(
        res.upstream_header("x-consumer-tier").as_deref(),
        Some("basic")
    );
    // A refresh without an ID token keeps the identity it has.
    advance(&mut bed, &idp, 290);
    let res = bed.send(api("/c", &jar));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer at-2")
    );
    assert_eq!(
        res.upstream_header("x-consumer-tier").as_deref(),
        Some("basic")
    );
}

/// A refreshed ID token that does not verify (signature, issuer, audience, expiry),
/// or is about another user or another IdP session, ends the session: its claims are
/// never used, and neither is the old identity with the new token.
#[test]
fn a_refreshed_id_token_that_does_not_verify_ends_the_session() {
    let other_key = Key::ec256("idp-1");
    type Token<'a> = Box<dyn Fn(&Idp) -> String + 'a>;
    let cases: Vec<(&str, Token<'_>)> = vec![
        (
            "forged signature",
            Box::new(|idp: &Idp| {
                let now = idp.now.get();
                other_key.sign(
                    "ES256",
                    json!({"iss": ISS, "aud": "web", "sub": "ada",
                "sid": "idp-session-1", "tier": "gold", "iat": now, "exp": now + 300}),
                )
            }),
        ),
        (
            "another issuer",
            Box::new(|idp: &Idp| {
                idp.id_token(&json!({"iss": "https://evil.test", "tier": "gold"}))
            }),
        ),
        (
            "another audience",
            Box::new(|idp: &Idp| idp.id_token(&json!({"aud": "other", "tier": "gold"}))),
        ),
        (
            "expired",
            Box::new(|idp: &Idp| {
                let now = idp.now.get();
                idp.id_token(&json!({"iat": now - 900, "exp": now - 600, "tier": "gold"}))
            }),
        ),
        (
            "another user",
            Box::new(|idp: &Idp| idp.id_token(&json!({"sub": "mallory", "tier": "gold"}))),
        ),
        (
            "another IdP session",
            Box::new(|idp: &Idp| idp.id_token(&json!({"sid": "idp-session-9", "tier": "gold"}))),
        ),
        ("not a JWT", Box::new(|_: &Idp| "not-a-jwt".to_owned())),
    ];
    for (what, make) in cases {
        let idp = Idp::new();
        idp.access_ttl.set(120);
        let mut bed = bed(&idp, json!({}));
        let jar = login(&mut bed, &idp, "/");
        advance(&mut bed, &idp, 100);
        *idp.token_reply.borrow_mut() = Some(Reply::json(&json!({
            "access_token": "at-refreshed", "token_type": "Bearer", "expires_in": 300,
            "refresh_token": "rt-2", "id_token": make(&idp)
        })));
        let res = bed.send(api("/a", &jar));
        assert_eq!(res.status, 401, "{what}: {}", res.text());
        assert!(res.upstream.is_none(), "{what}: reached the upstream");
        let mut after = jar.clone();
        after.take(&res);
        assert!(
            !after.has_session(),
            "{what}: the session cookie is cleared"
        );
    }
}

/// A client cannot smuggle an identity in request trailers (which Envoy passes on to
/// an HTTP/2 upstream): the identity names are removed from the trailers as from the
/// headers, whatever the route.
#[test]
fn identity_trailers_are_removed_like_identity_headers() {
    let idp = Idp::new();
    let mut bed = bed(&idp, json!({}));
    let jar = login(&mut bed, &idp, "/");
    let res = bed.send(
        api("/orders", &jar)
            .in_chunks(vec![b"{}".to_vec()])
            .trailer("x-consumer-id", "mallory")
            .trailer("x-consumer-groups", "admin")
            .trailer("x-id-token", "forged")
            .trailer("x-checksum", "kept"),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    let up = res.upstream.as_ref().unwrap();
    assert_eq!(up.headers.get_str("x-consumer-id"), Some("ada"));
    let trailers = up.trailers.as_ref().unwrap();
    for name in ["x-consumer-id", "x-consumer-groups", "x-id-token"] {
        assert_eq!(trailers.get_str(name), None, "{name} reached the upstream");
    }
    assert_eq!(trailers.get_str("x-checksum"), Some("kept"));
}

#[test]
fn userinfo_claims_fill_the_identity_and_go_upstream_and_another_subject_fails_the_login() {
    let idp = Idp::new();
    let mut bed = bed(
        &idp,
        json!({"upstream_user_info_header": "X-Userinfo",
            "consumer": {"id_claim": "sub", "username_claim": "nickname"}}),
    );
    let jar = login(&mut bed, &idp, "/orders");
    assert_eq!(
        idp.userinfo_asked.borrow().as_slice(),
        ["Bearer at-1".to_owned()],
        "asked once, with the access token"
    );
    let res = bed.send(browser("/orders", &jar).header("x-userinfo", "e30="));
    assert_eq!(res.status, 200, "{}", res.text());
    // The ID token has no `nickname`: it comes from userinfo. The ID token's own
    // claims win where both have one.
    assert_eq!(
        res.upstream_header("x-consumer-username").as_deref(),
        Some("ada-from-userinfo")
    );
    let sent = res
        .upstream_header("x-userinfo")
        .expect("the userinfo header");
    let info: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(sent)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info["sub"], "ada");
    assert_eq!(info["nickname"], "ada-from-userinfo");

    // A refresh that brings a new ID token keeps what userinfo filled in.
    let mut jar = jar;
    *idp.token_reply.borrow_mut() = Some(Reply::json(&json!({
        "access_token": "at-refreshed", "token_type": "Bearer", "expires_in": 300,
        "refresh_token": "rt-2", "id_token": idp.id_token(&json!({}))})));
    advance(&mut bed, &idp, 290);
    let res = bed.send(browser("/orders", &jar));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer at-refreshed"),
        "refreshed"
    );
    assert_eq!(
        res.upstream_header("x-consumer-username").as_deref(),
        Some("ada-from-userinfo")
    );
    jar.take(&res);

    // An answer about another subject must not be used (OpenID Connect Core 5.3.4):
    // the login fails and no session is made; so does an answer that is not JSON.
    for answer in [
        Reply::json(&json!({"sub": "mallory", "nickname": "m"})),
        Reply::status(200, &[("content-type", "application/jwt")], "e.y.z"),
        Reply::status(401, &[], "{}"),
    ] {
        *idp.userinfo.borrow_mut() = answer;
        let mut jar = Jar::default();
        let q = start_login(&mut bed, &idp, "/orders", &mut jar);
        let res = bed.send(browser(
            &format!("/callback?code=c-2&state={}", q["state"]),
            &jar,
        ));
        assert_eq!(res.status, 502, "{}", res.text());
        assert!(res.text().contains("userinfo"), "{}", res.text());
        jar.take(&res);
        assert!(!jar.has_session());
    }
}
