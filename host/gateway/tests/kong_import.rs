//! `portcullis import kong` end to end: Kong configurations written for these tests,
//! imported, run in our gateway, and held to what Kong's documentation says Kong does
//! (the page is named beside each expectation). Kong itself cannot be installed here,
//! so the expectations come from its documentation, not from a Kong run.

mod common;

use std::process::Command;

use common::*;
use portcullis_envoy::Envoy;
use serde_json::json;

/// Imports `kong` (YAML) with the built filters; the configuration's text, the JSON
/// report, and the exit status.
fn import(kong: &str, extra: &[&str]) -> (String, serde_json::Value, bool, String) {
    let dir = TempDir::new();
    let input = dir.0.join("kong.yaml");
    let out = dir.0.join("portcullis.yaml");
    let report = dir.0.join("report.json");
    std::fs::write(&input, kong).unwrap();
    let o = Command::new(portcullis_testbed::built_binary("portcullis"))
        .args(["import", "kong"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .arg("--report")
        .arg(&report)
        .arg("--wasm-dir")
        .arg(portcullis_testbed::wasm_dir())
        .args(extra)
        .output()
        .unwrap();
    let config = std::fs::read_to_string(&out).unwrap_or_default();
    let report = std::fs::read_to_string(&report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    (
        config,
        report,
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The report's entry for `name` (as the report writes it).
fn entry<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no `{name}` in {report:#}"))
}

/// The report's entry of this kind (`route`, `service`...) for `name`.
fn entry_of<'a>(report: &'a serde_json::Value, kind: &str, name: &str) -> &'a serde_json::Value {
    report
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == kind && e["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} `{name}` in {report:#}"))
}

/// The imported configuration on free ports.
fn start(config: &str) -> Gateway {
    Gateway::start(
        &config
            .replace("127.0.0.1:8000", "127.0.0.1:{PORT}")
            .replace("127.0.0.1:8100", "127.0.0.1:{ADMIN}"),
    )
}

const API: &str = r#"
_format_version: "3.0"
services:
  - name: orders
    url: http://UPSTREAM
    plugins:
      - name: key-auth
        config: { key_names: [apikey], hide_credentials: true }
      - name: rate-limiting
        config: { minute: 3, policy: local }
      - name: request-size-limiting
        config: { allowed_payload_size: 1, size_unit: kilobytes }
    routes:
      - name: list
        paths: [/orders]
        strip_path: false
        plugins:
          - name: rate-limiting
            config: { minute: 2 }
          - name: request-transformer
            config:
              remove: { headers: [x-internal] }
              add: { headers: ["x-from:kong-import"] }
          - name: response-transformer
            config:
              add: { headers: ["x-served-by:portcullis"] }
      - name: admin
        paths: [/admin]
        strip_path: false
        plugins:
          - name: acl
            config: { allow: [admins] }
      - name: open
        paths: [/open]
plugins:
  - name: cors
consumers:
  - username: ada
    id: 5f7a0c3e-6d2b-4a8e-9a41-0c9b1f1e2d3a
    keyauth_credentials: [{ key: ada-key }]
    acls: [{ group: admins }]
  - username: bob
    id: 0b1c2d3e-4f50-4617-8899-aabbccddeeff
    keyauth_credentials: [{ key: bob-key }]
"#;

/// What Kong's documentation says of `API` (the page beside each expectation), asked
/// of a host at `base` that runs its import: the gateway, or Envoy on `--envoy`.
fn answers_as_kong_documents(host: &str, base: &str) {
    let get = |path: &str, headers: &[(&str, &str)]| send(base, "GET", path, headers, b"").unwrap();
    let key = |k: &'static str| [("apikey", k)];
    // key-auth (docs.konghq.com/hub/kong-inc/key-auth): 401 without a key, 401 with a
    // wrong one, the consumer's headers upstream, the key hidden (hide_credentials).
    let r = get("/orders", &[]);
    assert_eq!(r.status, 401, "{host}");
    assert_eq!(r.json()["message"], "No API key found in request", "{host}");
    let r = get("/orders", &key("nope"));
    assert_eq!(r.status, 401, "{host}");
    assert_eq!(
        r.json()["message"],
        "Invalid authentication credentials",
        "{host}"
    );
    let r = get("/orders", &[("apikey", "ada-key"), ("x-internal", "1")]);
    assert_eq!(r.status, 200, "{host}: {}", r.body);
    let up = |h: &str| r.upstream_header(h);
    assert_eq!(
        up("x-consumer-id").as_deref(),
        Some("5f7a0c3e-6d2b-4a8e-9a41-0c9b1f1e2d3a"),
        "{host}"
    );
    assert_eq!(up("x-consumer-username").as_deref(), Some("ada"), "{host}");
    assert_eq!(up("apikey"), None, "{host}");
    // strip_path: false keeps the path.
    assert_eq!(r.json()["path"], "/orders", "{host}");
    // request-transformer / response-transformer (docs.konghq.com/hub/kong-inc/
    // request-transformer, .../response-transformer): headers added and removed.
    assert_eq!(up("x-from").as_deref(), Some("kong-import"), "{host}");
    assert_eq!(up("x-internal"), None, "{host}");
    assert_eq!(
        r.headers.get_str("x-served-by"),
        Some("portcullis"),
        "{host}"
    );
    // rate-limiting (docs.konghq.com/hub/kong-inc/rate-limiting): X-RateLimit-Limit-Minute
    // and -Remaining-Minute, then 429 {"message": "API rate limit exceeded"}. The route's
    // plugin (2 a minute) wins over the service's (3): Kong's plugin precedence
    // (docs.konghq.com/gateway/latest/key-concepts/plugins/#precedence).
    assert_eq!(
        r.headers.get_str("x-ratelimit-limit-minute"),
        Some("2"),
        "{host}"
    );
    assert_eq!(
        r.headers.get_str("x-ratelimit-remaining-minute"),
        Some("1"),
        "{host}"
    );
    assert_eq!(get("/orders", &key("ada-key")).status, 200, "{host}");
    let r = get("/orders", &key("ada-key"));
    assert_eq!(r.status, 429, "{host}");
    assert_eq!(r.json()["message"], "API rate limit exceeded", "{host}");
    assert!(r.headers.get_str("retry-after").is_some(), "{host}");
    // Counted per consumer: bob still has his.
    assert_eq!(get("/orders", &key("bob-key")).status, 200, "{host}");
    // acl (docs.konghq.com/hub/kong-inc/acl): a consumer outside `allow` gets 403
    // {"message": "You cannot consume this service"}; the service's limit (3) applies,
    // and the other route's transformers do not run.
    let r = get("/admin", &key("bob-key"));
    assert_eq!(r.status, 403, "{host}");
    assert_eq!(
        r.json()["message"],
        "You cannot consume this service",
        "{host}"
    );
    let r = get("/admin", &key("ada-key"));
    assert_eq!(r.status, 200, "{host}");
    assert_eq!(
        r.headers.get_str("x-ratelimit-limit-minute"),
        Some("3"),
        "{host}"
    );
    assert_eq!(r.upstream_header("x-from"), None, "{host}");
    // request-size-limiting (docs.konghq.com/hub/kong-inc/request-size-limiting): 413
    // above the limit (1 KB here); the message differs, and the report says so.
    let big = vec![b'x'; 2048];
    let r = send(base, "POST", "/open", &key("ada-key"), &big).unwrap();
    assert_eq!(r.status, 413, "{host}");
    // strip_path (the default) on /open removes the prefix upstream.
    let r = send(base, "POST", "/open/x", &key("ada-key"), b"x").unwrap();
    assert_eq!(r.status, 200, "{host}: {}", r.body);
    assert_eq!(r.json()["path"], "/x", "{host}");
}

#[test]
fn an_imported_key_auth_acl_rate_limit_and_transformer_setup_answers_as_kong_documents() {
    let upstream = echo();
    let (config, report, ok, stderr) = import(&API.replace("UPSTREAM", &upstream.to_string()), &[]);
    assert!(ok, "{stderr}");
    // No key in clear in the output.
    assert!(
        !config.contains("ada-key") && !config.contains("bob-key"),
        "{config}"
    );
    let gw = start(&config);
    answers_as_kong_documents("portcullis", &gw.url());

    // The report: each entity, and what differs.
    assert_eq!(entry(&report, "`list`")["status"], "exact");
    assert_eq!(
        entry(&report, "rate-limiting on route `list`")["status"],
        "differences"
    );
    let size = entry(&report, "request-size-limiting on service `orders`");
    assert!(
        size["notes"]
            .to_string()
            .contains("Request size limit exceeded"),
        "{size}"
    );
    let cors = entry(&report, "cors on global");
    assert_eq!(cors["status"], "unsupported");
    assert!(cors["nearest"].as_str().unwrap().contains("CORS"), "{cors}");
    assert!(stderr.contains("not supported"), "{stderr}");
}

#[test]
fn strict_fails_on_any_difference_and_duplicate_routes_are_named() {
    let upstream = echo();
    let kong = format!(
        r#"
_format_version: "3.0"
services:
  - name: a
    url: http://{upstream}
    routes:
      - {{ name: first, paths: [/x] }}
      - {{ name: second, paths: [/x] }}
"#
    );
    let (config, report, ok, _) = import(&kong, &[]);
    assert!(ok, "usable: exit 0");
    let dup = entry(&report, "`second`");
    assert_eq!(dup["status"], "unsupported");
    assert!(
        dup["notes"][0].as_str().unwrap().contains("route `first`"),
        "{dup}"
    );
    // The output runs.
    let gw = start(&config);
    assert_eq!(get(&gw, "/x", &[]).status, 200);
    let (_, _, ok, stderr) = import(&kong, &["--strict"]);
    assert!(!ok, "--strict: {stderr}");
    assert!(stderr.contains("--strict"), "{stderr}");
}

#[test]
fn consumers_jwt_secrets_become_providers_and_name_the_consumer() {
    let upstream = echo();
    let kong = format!(
        r#"
_format_version: "2.1"
services:
  - name: api
    url: http://{upstream}
    routes: [{{ name: api, paths: [/] }}]
    plugins:
      - name: jwt
        config: {{ claims_to_verify: [exp] }}
consumers:
  - username: svc
    id: 11111111-2222-3333-4444-555555555555
    jwt_secrets:
      - {{ key: svc-issuer, algorithm: HS256, secret: a-shared-secret-of-32-bytes-long! }}
"#
    );
    let (config, _report, ok, stderr) = import(&kong, &[]);
    assert!(ok, "{stderr}");
    let gw = start(&config);
    // As Kong's clients sign them: HS256, no `kid`.
    let sign = |secret: &[u8], claims: serde_json::Value| {
        let header = r#"{"alg":"HS256","typ":"JWT"}"#;
        let payload = claims.to_string();
        let input = format!(
            "{}.{}",
            jwt_mint::b64(header.as_bytes()),
            jwt_mint::b64(payload.as_bytes())
        );
        jwt_mint::raw(
            header,
            &payload,
            &jwt_mint::hmac_sign("HS256", secret, input.as_bytes()),
        )
    };
    let claims = json!({"iss": "svc-issuer", "sub": "x", "exp": 4_102_444_800u64});
    let token = sign(b"a-shared-secret-of-32-bytes-long!", claims.clone());
    // jwt (docs.konghq.com/hub/kong-inc/jwt): a token signed with the consumer's
    // secret, `iss` its key, passes with the consumer's X-Consumer-ID; none is 401.
    let r = get(&gw, "/", &[("authorization", &format!("Bearer {token}"))]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("x-consumer-id").as_deref(),
        Some("11111111-2222-3333-4444-555555555555")
    );
    assert_eq!(
        r.upstream_header("x-consumer-username").as_deref(),
        Some("svc")
    );
    assert_eq!(get(&gw, "/", &[]).status, 401);
    let forged = sign(b"another-secret-of-32-bytes-long!!", claims);
    assert_eq!(
        get(&gw, "/", &[("authorization", &format!("Bearer {forged}"))]).status,
        401
    );
}

#[test]
fn deck_placeholders_are_taken_from_the_environment_only_when_asked() {
    let upstream = echo();
    let kong = format!(
        r#"
_format_version: "3.0"
services:
  - name: a
    url: http://{upstream}
    routes: [{{ name: r, paths: ['/${{{{ env "DECK_PREFIX" }}}}'] }}]
"#
    );
    let (_, report, ok, _) = import(&kong, &[]);
    assert!(ok);
    assert_eq!(entry(&report, "`r`")["status"], "unsupported");
    let dir = TempDir::new();
    let input = dir.0.join("kong.yaml");
    std::fs::write(&input, &kong).unwrap();
    let o = Command::new(portcullis_testbed::built_binary("portcullis"))
        .args(["import", "kong", "--env"])
        .arg(&input)
        .env("DECK_PREFIX", "v2")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("/v2"));
    let o = Command::new(portcullis_testbed::built_binary("portcullis"))
        .args(["import", "kong", "--env"])
        .arg(&input)
        .env_remove("DECK_PREFIX")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("DECK_PREFIX"));
}

#[test]
fn consumer_group_limits_become_tiers_each_consumer_counted_by_its_group() {
    let upstream = echo();
    // Kong Enterprise's consumer-group-scoped rate-limiting-advanced
    // (docs.konghq.com/hub/kong-inc/rate-limiting-advanced, "consumer groups"): each
    // group's limit applies to its members; the plugin without a group to the others.
    let kong = format!(
        r#"
_format_version: "3.0"
services:
  - name: api
    url: http://{upstream}
    routes: [{{ name: api, paths: [/] }}]
plugins:
  - name: key-auth
  - name: rate-limiting-advanced
    config: {{ limit: [2], window_size: [60], window_type: fixed }}
consumer_groups:
  - name: gold
    consumers: [{{ username: goldie }}]
    plugins:
      - name: rate-limiting-advanced
        config: {{ limit: [4], window_size: [60], window_type: fixed }}
consumers:
  - {{ username: goldie, keyauth_credentials: [{{ key: gold-key }}] }}
  - {{ username: plain, keyauth_credentials: [{{ key: plain-key }}] }}
"#
    );
    let (config, _, ok, stderr) = import(&kong, &[]);
    assert!(ok, "{stderr}");
    let gw = start(&config);
    let admitted = |key: &'static str| {
        (0..6)
            .filter(|_| get(&gw, "/", &[("apikey", key)]).status == 200)
            .count()
    };
    assert_eq!(admitted("gold-key"), 4);
    assert_eq!(admitted("plain-key"), 2);
}

#[test]
fn regex_paths_route_in_kongs_order_and_pcre_only_ones_are_reported() {
    let upstream = echo();
    // Kong 3's `~` paths (docs.konghq.com/gateway/latest/key-concepts/routes/
    // #regular-expressions): a matching regex route wins over a prefix route, and in
    // a 2.1 file a path with regex characters is a regex.
    for (version, path) in [("3.0", "'~/users/\\d+$'"), ("2.1", "'/users/\\d+$'")] {
        let kong = format!(
            r#"
_format_version: "{version}"
services:
  - name: a
    url: http://{upstream}
    routes:
      - name: by-id
        paths: [{path}]
        regex_priority: 5
        strip_path: false
        plugins:
          - {{ name: request-transformer, config: {{ add: {{ headers: ["x-route:by-id"] }} }} }}
      - {{ name: all, paths: [/users], strip_path: false }}
      - {{ name: look-around, paths: ['~/x(?=y)'] }}
"#
        );
        let (config, report, ok, stderr) = import(&kong, &[]);
        assert!(ok, "{stderr}");
        let gw = start(&config);
        let r = get(&gw, "/users/42", &[]);
        assert_eq!(
            r.upstream_header("x-route").as_deref(),
            Some("by-id"),
            "{version}"
        );
        assert_eq!(r.json()["path"], "/users/42");
        let r = get(&gw, "/users/abc", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.upstream_header("x-route"),
            None,
            "{version}: the prefix route"
        );
        let la = entry(&report, "`look-around`");
        assert_eq!(la["status"], "unsupported", "{la}");
    }
}

#[test]
fn the_service_path_goes_before_the_request_path_as_in_kong() {
    let upstream = echo();
    // docs.konghq.com/gateway/latest/key-concepts/routes/ ("strip_path" and the
    // service's path): /v1/x on a route /v1 with strip_path reaches /api/x.
    let kong = format!(
        r#"
_format_version: "3.0"
services:
  - name: a
    url: http://{upstream}/api
    routes:
      - {{ name: stripped, paths: [/v1] }}
      - {{ name: kept, paths: [/v2], strip_path: false }}
"#
    );
    let (config, report, ok, stderr) = import(&kong, &[]);
    assert!(ok, "{stderr}");
    let gw = start(&config);
    for (path, want) in [
        ("/v1/x?q=1", "/api/x?q=1"),
        ("/v1", "/api"),
        ("/v2/x", "/api/v2/x"),
    ] {
        let r = get(&gw, path, &[]);
        assert_eq!(r.json()["path"], want, "{path}");
    }
    let notes = entry(&report, "`a`")["notes"].to_string();
    assert!(!notes.contains("path"), "{notes}");
}

#[test]
fn openid_connect_becomes_the_oidc_filter_and_what_it_cannot_be_is_said() {
    let upstream = echo();
    // Kong Enterprise's openid-connect (docs.konghq.com/hub/kong-inc/openid-connect):
    // the issuer may be given as its discovery URL; client_id, client_secret and
    // redirect_uri are arrays; groups_required alternatives.
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
          issuer: https://pf.example.com/.well-known/openid-configuration
          client_id: [web]
          client_secret: [web-secret]
          redirect_uri: [https://app.example.com/callback]
          scopes: [openid, profile]
          auth_methods: [authorization_code, session, bearer, introspection]
          groups_required: ["staff admins", "ops"]
          upstream_user_info_header: x-userinfo
  - name: other
    url: http://{upstream}
    routes: [{{ name: other, paths: [/other] }}]
    plugins:
      - name: openid-connect
        config: {{ issuer: https://pf.example.com, client_id: [web], client_secret: [s] }}
"#
    );
    let (config, report, ok, stderr) = import(&kong, &[]);
    assert!(ok, "{stderr}");
    let yaml: serde_json::Value = serde_norway::from_str(&config).unwrap();
    let oidc = yaml["filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "oidc-1")
        .unwrap();
    let c = &oidc["config"];
    assert_eq!(c["issuer"], "https://pf.example.com");
    assert_eq!(c["idp_cluster"], "idp-pf.example.com");
    assert_eq!(c["bearer_passthrough"], true);
    assert_eq!(c["userinfo"], true);
    assert_eq!(
        c["requires"]["claims"][0]["any"][0]["all"][1],
        json!({"claim": "groups", "contains": "admins"})
    );
    let notes = entry(&report, "openid-connect on service `app`")["notes"].to_string();
    assert!(notes.contains("introspection"), "{notes}");
    assert!(notes.contains("session secret was made"), "{notes}");
    // No redirect_uri: said, and the route it guards is kept closed, never opened.
    let other = entry(&report, "openid-connect on service `other`");
    assert_eq!(other["status"], "unsupported");
    assert!(other["notes"][0].as_str().unwrap().contains("redirect_uri"));
    let route = entry_of(&report, "route", "`other`");
    assert_eq!(route["status"], "unsupported");
    assert!(
        route["notes"][0].as_str().unwrap().contains("kept closed"),
        "{route}"
    );
    // The filter itself accepts what was made.
    let dir = TempDir::new();
    let path = dir.0.join("p.yaml");
    std::fs::write(&path, &config).unwrap();
    let o = Command::new(portcullis_testbed::built_binary("portcullis"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_envoy_bootstrap_runs_the_same_routes_and_filters_in_envoy() {
    let upstream = echo();
    let (port, admin) = (free_port(), free_port());
    let dir = TempDir::new();
    let bootstrap = dir.0.join("envoy.yaml");
    let (_, _, ok, stderr) = import(
        &API.replace("UPSTREAM", &upstream.to_string()),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--envoy",
            bootstrap.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    let envoy = Envoy::start_file(
        &bootstrap,
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        std::net::SocketAddr::from(([127, 0, 0, 1], admin)),
        1,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    answers_as_kong_documents("envoy", &format!("http://{}", envoy.listener));
}

#[test]
fn a_consumer_scoped_rate_limit_wins_for_that_consumer() {
    let upstream = echo();
    // Kong's plugin precedence (docs.konghq.com/gateway/latest/key-concepts/plugins/
    // #precedence): a plugin on a consumer beats the global one for that consumer.
    let kong = format!(
        r#"
_format_version: "3.0"
services:
  - name: api
    url: http://{upstream}
    routes: [{{ name: api, paths: [/] }}]
plugins:
  - name: key-auth
  - name: rate-limiting
    config: {{ minute: 1 }}
consumers:
  - username: partner
    keyauth_credentials: [{{ key: partner-key }}]
    plugins:
      - name: rate-limiting
        config: {{ minute: 3 }}
  - username: other
    keyauth_credentials: [{{ key: other-key }}]
"#
    );
    let (config, _, ok, stderr) = import(&kong, &[]);
    assert!(ok, "{stderr}");
    let gw = start(&config);
    let admitted = |key: &'static str| {
        (0..5)
            .filter(|_| get(&gw, "/", &[("apikey", key)]).status == 200)
            .count()
    };
    assert_eq!(admitted("partner-key"), 3);
    assert_eq!(admitted("other-key"), 1);
}

#[test]
fn what_cannot_be_mapped_keeps_a_route_closed_never_open() {
    let upstream = echo();
    // Kong answers 401 on each of these routes without the right credential; the
    // import must never turn one into an open route, nor let a broader route serve
    // its requests.
    let kong = format!(
        r#"
_format_version: "2.1"
services:
  - name: api
    url: http://{upstream}
    routes:
      - {{ name: public, paths: [/] }}
      - name: basic
        paths: [/basic]
        plugins: [{{ name: basic-auth }}]
      - name: tokens
        paths: [/tokens]
        plugins: [{{ name: jwt }}]
      - name: both
        paths: [/both]
        plugins:
          - {{ name: jwt }}
          - {{ name: key-auth }}
      - name: staff
        paths: [/staff]
        plugins:
          - {{ name: jwt }}
          - {{ name: acl, config: {{ whitelist: [staff] }} }}
      - name: nobody
        paths: [/nobody]
        plugins: [{{ name: acl, config: {{ allow: [x] }} }}]
consumers:
  - username: alice
    acls: [{{ group: staff }}]
    keyauth_credentials: [{{ key: alice-key }}]
    jwt_secrets: [{{ key: alice-iss, algorithm: HS256, secret: alice-secret-of-32-bytes-or-more! }}]
  - username: mallory
    jwt_secrets: [{{ key: mallory-iss, algorithm: HS256, secret: mallory-secret-32-bytes-or-more!! }}]
  - username: commas
    acls: [{{ group: "staff,admins" }}]
    keyauth_credentials: [{{ key: commas-key }}]
"#
    );
    let (config, report, ok, stderr) = import(&kong, &[]);
    assert!(ok, "{stderr}");
    let gw = start(&config);
    let hs256 = |secret: &[u8], iss: &str| {
        let header = r#"{"alg":"HS256","typ":"JWT"}"#;
        let payload = json!({"iss": iss, "sub": "x", "exp": 4_102_444_800u64}).to_string();
        let input = format!(
            "{}.{}",
            jwt_mint::b64(header.as_bytes()),
            jwt_mint::b64(payload.as_bytes())
        );
        let sig = jwt_mint::hmac_sign("HS256", secret, input.as_bytes());
        format!("Bearer {}", jwt_mint::raw(header, &payload, &sig))
    };
    let alice = hs256(b"alice-secret-of-32-bytes-or-more!", "alice-iss");
    let mallory = hs256(b"mallory-secret-32-bytes-or-more!!", "mallory-iss");
    // basic-auth is not mapped: the route stays closed, and `/` does not serve it.
    assert_eq!(get(&gw, "/", &[]).status, 200);
    assert_eq!(get(&gw, "/basic/x", &[]).status, 401);
    assert_eq!(
        entry_of(&report, "route", "`basic`")["status"],
        "unsupported"
    );
    // jwt: a consumer's token passes.
    assert_eq!(
        get(&gw, "/tokens", &[("authorization", &alice)]).status,
        200
    );
    // jwt and key-auth without `anonymous`: Kong wants both.
    assert_eq!(get(&gw, "/both", &[("authorization", &alice)]).status, 401);
    assert_eq!(
        get(
            &gw,
            "/both",
            &[("authorization", &alice), ("apikey", "alice-key")]
        )
        .status,
        200
    );
    // acl with jwt decides by the consumer's ACL groups (Kong 1.x's `whitelist`), not by
    // claims its token could carry: mallory's token is refused whatever it says.
    assert_eq!(get(&gw, "/staff", &[("authorization", &alice)]).status, 200);
    assert_eq!(
        get(&gw, "/staff", &[("authorization", &mallory)]).status,
        401
    );
    // acl without authentication: Kong refuses everyone.
    assert_eq!(get(&gw, "/nobody", &[]).status, 401);
    // A consumer whose ACL group holds a comma is left out.
    assert_eq!(
        get(
            &gw,
            "/both",
            &[("authorization", &alice), ("apikey", "commas-key")]
        )
        .status,
        401
    );
    assert!(stderr.contains("holds a comma"), "{stderr}");
}
