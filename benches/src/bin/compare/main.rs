//! The end-to-end comparison: our gateway against Envoy on loopback, the same `.wasm`
//! filters in both, in one run, with `wrk`. For each target: requests per second, p50
//! and p99, the proxy's CPU, peak RSS; for each host: start-up (launch to the first
//! proxied 200) and RSS at rest. Interleaved rounds (A B C A B C ...) so machine drift
//! cancels, medians, and ratio tables against the targets.
//!
//! Sections (`--only NAME` runs one):
//! - `chain`: the upstream alone; portcullis without filters and with the chain
//!   jwt-auth (cached token) → tier-limiter (local, limits that never refuse) →
//!   header-forwarder; Envoy the same two ways; Envoy with the native equivalent
//!   (jwt_authn with its cache, local_ratelimit, route header changes).
//! - `uncached`: the same chains with a fresh RS256 token per request from a pool.
//! - `limiter`: portcullis without filters, with tier-limiter `local`, with `global`
//!   (Redis through `portcullis ratelimit-service`).
//! - `jwt`: jwt-auth alone in both hosts against Envoy's native jwt_authn, and in Envoy
//!   a filter making only jwt-auth's host calls (the floor under any filter doing its
//!   job).
//! - `floor`: one and three no-op wasm filters in each host: what running a wasm
//!   filter costs a host before the filter does anything (the floor under the chain).
//! - `calls` (only when asked for: 38 targets): the price of each kind of proxy-wasm
//!   host call in each host, the first of a request and each further one.
//!
//! `$PORTCULLIS_COMPARE_ALT_WASM=DIR` adds the chain built from a second directory of
//! filters to the chain section, in both hosts, interleaved with the first: an A/B of
//! a filter change within one run (this machine's run-to-run noise is ±5-7%).
//!
//! `cargo xtask bench` runs it; directly:
//! `target/host/compare --rounds 3 --seconds 5 [--workers 1] [--only chain]`

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter, free_port};
use serde_json::{Value, json};

struct Args {
    rounds: usize,
    seconds: u64,
    connections: usize,
    workers: usize,
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 3,
        seconds: 5,
        connections: 32,
        workers: 1,
        only: None,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < v.len() {
        let n = v[i + 1].parse().unwrap_or(0);
        match v[i].as_str() {
            "--rounds" => a.rounds = n as usize,
            "--seconds" => a.seconds = n,
            "--connections" => a.connections = n as usize,
            "--workers" => a.workers = n as usize,
            "--only" => a.only = Some(v[i + 1].clone()),
            _ => {}
        }
        i += 2;
    }
    a
}

/// What every section shares.
struct Ctx {
    a: Args,
    portcullis: PathBuf,
    wasm: std::cell::RefCell<PathBuf>,
    /// `$PORTCULLIS_COMPARE_ALT_WASM`: a second build of the filters, run beside the
    /// first in the chain section (an A/B of a filter change in one run).
    alt_wasm: Option<PathBuf>,
    dir: PathBuf,
    upstream: SocketAddr,
    upstream_pid: u32,
    /// The JWKS with both signing keys.
    jwks: Value,
    es256: jwt_mint::Key,
    rs256: jwt_mint::Key,
}

const ISSUER: &str = "https://idp.bench";

impl Ctx {
    fn wasm(&self, name: &str) -> String {
        self.wasm_dir()
            .join(format!("{name}.wasm"))
            .display()
            .to_string()
    }

    fn wasm_dir(&self) -> PathBuf {
        self.wasm.borrow().clone()
    }

    fn token(&self, key: &jwt_mint::Key, alg: &str, sub: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        key.sign(
            alg,
            json!({"iss": ISSUER, "aud": "api", "sub": sub, "tier": "premium", "iat": now, "exp": now + 7200}),
        )
    }

    fn runs(&self, section: &str) -> bool {
        self.a.only.as_deref().is_none_or(|o| o == section)
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("upstream") {
        let addr: SocketAddr = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .expect("address");
        fast_upstream(addr);
        return;
    }
    let a = args();
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is not installed: `apt-get install wrk` (cargo xtask bench installs it)");
        std::process::exit(1);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let portcullis = root.join("target/host/portcullis");
    assert!(
        portcullis.exists(),
        "{} is missing: `cargo build --profile host -p portcullis`",
        portcullis.display()
    );
    let up_port = free_port();
    let upstream = Proc(
        Command::new(std::env::current_exe().expect("self"))
            .args(["upstream", &format!("127.0.0.1:{up_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("upstream starts"),
    );
    let up_addr = SocketAddr::from(([127, 0, 0, 1], up_port));
    wait_200(up_addr, &[], Duration::from_secs(5));
    let dir = std::env::temp_dir().join(format!("portcullis-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (es256, rs256) = (jwt_mint::Key::ec256("es"), jwt_mint::Key::rsa("rs"));
    let ctx = Ctx {
        jwks: jwt_mint::jwks(&[&es256, &rs256]),
        es256,
        rs256,
        portcullis,
        // Where the built filters are, as in the test bed (`$PORTCULLIS_WASM_DIR` to
        // profile unstripped builds).
        wasm: std::cell::RefCell::new(portcullis_testbed::wasm_dir()),
        alt_wasm: std::env::var_os("PORTCULLIS_COMPARE_ALT_WASM").map(PathBuf::from),
        dir,
        upstream: up_addr,
        upstream_pid: upstream.0.id(),
        a,
    };
    println!(
        "# portcullis against Envoy: {} worker(s) each, wrk -t1 -c{} -d{}s, {} interleaved rounds, medians",
        ctx.a.workers, ctx.a.connections, ctx.a.seconds, ctx.a.rounds
    );
    if ctx.runs("chain") {
        chain_section(&ctx);
    }
    if ctx.runs("uncached") {
        uncached_section(&ctx);
    }
    if ctx.runs("limiter") {
        limiter_section(&ctx);
    }
    if ctx.runs("jwt") {
        jwt_section(&ctx);
    }
    if ctx.runs("floor") {
        floor_section(&ctx);
    }
    if ctx.a.only.as_deref() == Some("calls") {
        calls_section(&ctx);
    }
    let _ = std::fs::remove_dir_all(&ctx.dir);
}

/// One configured filter of our gateway.
struct Filter<'a> {
    name: &'a str,
    wasm: &'a str,
    config: Value,
}

/// A running proxy: its address, process id, start-up time and RSS at rest.
struct Started {
    addr: SocketAddr,
    pid: u32,
    startup: Duration,
    rest_kb: u64,
    _proc: Option<Proc>,
    _envoy: Option<Envoy>,
}

/// Starts portcullis with `filters` on its one route (and `services` besides the
/// upstream) and waits for the first proxied 200 sent with `headers`.
fn start_portcullis(
    ctx: &Ctx,
    name: &str,
    filters: &[Filter],
    services: &[(&str, String)],
    headers: &[String],
) -> Started {
    start_portcullis_routes(ctx, name, filters, &[], services, headers)
}

/// The same, with `side` filters on a route of their own under `/app` (loaded and
/// started, but not on the measured path).
fn start_portcullis_routes(
    ctx: &Ctx,
    name: &str,
    filters: &[Filter],
    side: &[Filter],
    services: &[(&str, String)],
    headers: &[String],
) -> Started {
    let port = free_port();
    let mut yaml = format!(
        "listeners: [{{ name: bench, address: \"127.0.0.1:{port}\" }}]\nworkers: {}\naccess_log: \"off\"\nservices:\n  - {{ name: up, url: \"http://{}\" }}\n",
        ctx.a.workers, ctx.upstream
    );
    for (n, url) in services {
        yaml.push_str(&format!("  - {{ name: {n}, url: \"{url}\" }}\n"));
    }
    yaml.push_str("filters:\n");
    for f in filters.iter().chain(side) {
        yaml.push_str(&format!(
            "  - {{ name: {}, wasm: \"{}\", config: {} }}\n",
            f.name,
            ctx.wasm(f.wasm),
            f.config
        ));
    }
    if filters.is_empty() && side.is_empty() {
        yaml.push_str("  []\n");
    }
    let names = |list: &[Filter]| list.iter().map(|f| f.name).collect::<Vec<_>>().join(", ");
    yaml.push_str("routes:\n");
    if !side.is_empty() {
        yaml.push_str(&format!(
            "  - {{ name: side, match: {{ paths: [/app] }}, service: up, filters: [{}] }}\n",
            names(side)
        ));
    }
    yaml.push_str(&format!(
        "  - {{ name: all, service: up, filters: [{}] }}\n",
        names(filters)
    ));
    let config = ctx.dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml).expect("config");
    let launched = Instant::now();
    let proc = Proc(
        Command::new(&ctx.portcullis)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("portcullis starts"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_200(addr, headers, Duration::from_secs(30));
    let startup = launched.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    Started {
        addr,
        pid: proc.0.id(),
        startup,
        rest_kb: rss_kb(proc.0.id()),
        _proc: Some(proc),
        _envoy: None,
    }
}

fn start_envoy(config: &EnvoyConfig, headers: &[String]) -> Started {
    let launched = Instant::now();
    let envoy = Envoy::start(config).expect("envoy starts");
    wait_200(envoy.listener, headers, Duration::from_secs(30));
    let startup = launched.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    Started {
        addr: envoy.listener,
        pid: envoy.pid(),
        startup,
        rest_kb: rss_kb(envoy.pid()),
        _proc: None,
        _envoy: Some(envoy),
    }
}

/// The chain's three configurations, the same JSON in both hosts.
fn chain_configs(ctx: &Ctx) -> [(&'static str, &'static str, Value); 3] {
    [
        (
            "auth",
            "jwt_auth",
            json!({
                "providers": {"idp": {"issuer": ISSUER, "audiences": ["api"], "local_jwks": ctx.jwks,
                    "algorithms": ["ES256", "RS256"], "consumer": {"id_claim": "sub", "tier_claim": "tier"}}},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
            }),
        ),
        (
            "limits",
            "tier_limiter",
            json!({
                "identify_by": ["consumer", "ip"],
                "tiers": {"premium": {"second": 1_000_000_000u64, "hour": 1_000_000_000_000u64}},
                "default_tier": "premium"
            }),
        ),
        (
            "forward",
            "header_forwarder",
            json!({
                "request": {"remove": {"headers": ["x-internal"]},
                            "add": {"headers": {"x-consumer": "$(consumer.id)", "x-plan": "$(consumer.tier)"}}},
                "response": {"remove": {"headers": ["server"]}},
                "forward_authorization": true
            }),
        ),
    ]
}

fn chain_filters(ctx: &Ctx) -> Vec<Filter<'static>> {
    chain_configs(ctx)
        .into_iter()
        .map(|(name, wasm, config)| Filter { name, wasm, config })
        .collect()
}

/// The chain's host calls without its work: three calls-filters making, on a cached
/// request, exactly the calls jwt-auth, tier-limiter and header-forwarder make (counted
/// in the test bed): the floor under any three filters that do the chain's job through
/// proxy-wasm.
fn chain_calls_filters(token: &str) -> Vec<Filter<'static>> {
    let ratelimit_headers = [
        "x-ratelimit-limit-second",
        "x-ratelimit-remaining-second",
        "x-ratelimit-limit-hour",
        "x-ratelimit-remaining-hour",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "ratelimit-policy",
        "ratelimit",
    ];
    vec![
        Filter {
            name: "auth",
            wasm: "calls_filter",
            config: json!({"calls": ["headers", "time", "set_header x-consumer-id user-1",
                "set_header x-consumer-tier premium", "set_header x-credential-identifier user-1",
                "remove_header authorization", format!("set_property portcullis.credential {token}")]}),
        },
        Filter {
            name: "limits",
            wasm: "calls_filter",
            config: json!({"setup": ["shared_set bucket 0123456789abcdef0123456789abcdef01234567"],
                "calls": ["property portcullis.credential", "header x-consumer-id", "header x-consumer-tier",
                    "time", "shared_get bucket", "shared_set bucket 0123456789abcdef0123456789abcdef01234567"],
                "response_calls": ratelimit_headers.iter().map(|h| format!("set_header {h} 999999998")).collect::<Vec<_>>()}),
        },
        Filter {
            name: "forward",
            wasm: "calls_filter",
            config: json!({"calls": ["headers", "property portcullis.credential", "remove_header x-internal",
                "set_header x-consumer user-1", "set_header x-plan premium", format!("set_header authorization Bearer-{token}")],
                "response_calls": ["remove_header server"]}),
        },
    ]
}

/// `n` filters that do nothing, for our gateway: the host's own cost per filter.
fn noop_filters(n: usize) -> Vec<Filter<'static>> {
    const NAMES: [&str; 3] = ["n1", "n2", "n3"];
    NAMES[..n]
        .iter()
        .map(|&name| Filter {
            name,
            wasm: "noop_filter",
            config: json!({}),
        })
        .collect()
}

/// Envoy with `filters`, the same wasm and configurations our gateway gets.
fn envoy_with(ctx: &Ctx, filters: &[Filter]) -> EnvoyConfig {
    filters.iter().fold(
        EnvoyConfig::new(ctx.upstream).concurrency(ctx.a.workers),
        |c, f| {
            c.filter(WasmFilter::new(
                f.name,
                ctx.wasm_dir().join(format!("{}.wasm", f.wasm)),
                &f.config.to_string(),
            ))
        },
    )
}

/// Envoy with `n` wasm filters that do nothing.
fn envoy_noops(ctx: &Ctx, n: usize) -> EnvoyConfig {
    envoy_with(ctx, &noop_filters(n))
}

fn envoy_chain(ctx: &Ctx) -> EnvoyConfig {
    envoy_with(ctx, &chain_filters(ctx))
}

/// Envoy's native equivalent of the chain: jwt_authn (with its cache, claims to
/// headers), local_ratelimit (never refusing, with its headers), and the route's
/// header additions and removals.
fn envoy_native(ctx: &Ctx) -> EnvoyConfig {
    let all =
        json!({"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl"});
    EnvoyConfig::new(ctx.upstream)
        .concurrency(ctx.a.workers)
        .native_filter(json!({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"idp": {"issuer": ISSUER, "audiences": ["api"],
                    "local_jwks": {"inline_string": ctx.jwks.to_string()}, "forward": true,
                    "jwt_cache_config": {"jwt_cache_size": 1000},
                    "claim_to_headers": [{"header_name": "x-consumer-id", "claim_name": "sub"},
                                         {"header_name": "x-consumer-tier", "claim_name": "tier"}]}},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]
            }
        }))
        .native_filter(json!({
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "rl",
                "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"},
                "filter_enabled": all, "filter_enforced": all,
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03"
            }
        }))
        .route_option(
            "request_headers_to_add",
            json!([
                {"header": {"key": "x-consumer", "value": "%REQ(x-consumer-id)%"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                {"header": {"key": "x-plan", "value": "%REQ(x-consumer-tier)%"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            ]),
        )
        .route_option("request_headers_to_remove", json!(["x-internal"]))
        .route_option("response_headers_to_remove", json!(["server"]))
}

fn target<'a>(name: &'a str, s: &Started) -> (&'a str, SocketAddr, Option<u32>) {
    (name, s.addr, Some(s.pid))
}

fn chain_section(ctx: &Ctx) {
    let a = &ctx.a;
    let token = ctx.token(&ctx.es256, "ES256", "user-1");
    let headers = vec![
        format!("authorization: Bearer {token}"),
        "x-internal: drop-me".to_owned(),
    ];
    let p_none = start_portcullis(ctx, "none", &[], &[], &headers);
    let p_chain = start_portcullis(ctx, "chain", &chain_filters(ctx), &[], &headers);
    // The ceilings: three filters that do nothing, in each host. No chain of three
    // wasm filters can beat them.
    let p_noop = start_portcullis(ctx, "noop3", &noop_filters(3), &[], &headers);
    // Start-up with all four filters: the chain, and oidc on a route of its own (its
    // IdP need not answer for the gateway to start).
    let oidc = [Filter {
        name: "login",
        wasm: "oidc",
        config: json!({
            "issuer": "https://idp.bench", "client_id": "web", "client_secret": "bench-secret",
            "redirect_uri": "https://app.bench/app/callback", "idp_cluster": "idp",
            "session": {"secrets": [{"id": "k1", "secret": "0123456789abcdef0123456789abcdef"}]}
        }),
    }];
    let idp = [("idp", format!("http://127.0.0.1:{}", free_port()))];
    let p_four = start_portcullis_routes(ctx, "four", &chain_filters(ctx), &oidc, &idp, &headers);
    let four = (p_four.startup, p_four.rest_kb);
    drop(p_four);
    let e_none = start_envoy(
        &EnvoyConfig::new(ctx.upstream).concurrency(a.workers),
        &headers,
    );
    let e_chain = start_envoy(&envoy_chain(ctx), &headers);
    let e_native = start_envoy(&envoy_native(ctx), &headers);
    let e_noop = start_envoy(&envoy_noops(ctx, 3), &headers);
    // The floors: the chain's host calls alone, in each host.
    let calls = chain_calls_filters(&token);
    let p_calls = start_portcullis(ctx, "calls3", &calls, &[], &headers);
    let e_calls = start_envoy(&envoy_with(ctx, &calls), &headers);
    // The same chain from a second build of the filters, when asked for.
    let alt = ctx.alt_wasm.as_ref().map(|dir| {
        let main = ctx.wasm.replace(dir.clone());
        let p = start_portcullis(ctx, "chain-alt", &chain_filters(ctx), &[], &headers);
        let e = start_envoy(&envoy_chain(ctx), &headers);
        ctx.wasm.replace(main);
        (p, e)
    });
    let mut targets = vec![
        ("upstream alone", ctx.upstream, Some(ctx.upstream_pid)),
        target("portcullis", &p_none),
        target("portcullis + chain", &p_chain),
        target("envoy", &e_none),
        target("envoy + chain (same wasm)", &e_chain),
        target("envoy + native equivalent", &e_native),
        target("portcullis + 3 no-op filters", &p_noop),
        target("envoy + 3 no-op wasm filters", &e_noop),
        target("portcullis + the chain's host calls alone", &p_calls),
        target("envoy + the chain's host calls alone", &e_calls),
    ];
    if let Some((p, e)) = &alt {
        targets.push(target("portcullis + chain (alt wasm)", p));
        targets.push(target("envoy + chain (alt wasm)", e));
    }
    let m = compare(
        "The chain jwt-auth (cached ES256 token) → tier-limiter (local) → header-forwarder",
        &targets,
        &Load::headers(&headers),
        a,
    );
    println!("\n| ratio | measured | target |");
    println!("|---|---|---|");
    println!(
        "| chain: portcullis / Envoy, req/s | {:.2}x | ≥ 1.25x |",
        m[2].rps / m[4].rps
    );
    println!(
        "| chain: portcullis / Envoy, p99 | {:.2}x | ≤ 1x |",
        m[2].p99_ms / m[4].p99_ms
    );
    println!(
        "| chain: portcullis / Envoy, req per CPU-second | {:.2}x | |",
        m[2].rps_per_cpu() / m[4].rps_per_cpu()
    );
    println!(
        "| portcullis: chain / no filters, req/s | {:.2} | ≥ 0.80 |",
        m[2].rps / m[1].rps
    );
    println!(
        "| Envoy: our chain / native equivalent, req/s | {:.2} | ≥ 0.90 |",
        m[4].rps / m[5].rps
    );
    println!(
        "| ceiling of chain / no filters: portcullis, 3 no-op filters / no filters, req/s | {:.2} | |",
        m[6].rps / m[1].rps
    );
    println!(
        "| ceiling of our chain / native: Envoy, 3 no-op wasm filters / native equivalent, req/s | {:.2} | |",
        m[7].rps / m[5].rps
    );
    println!(
        "| floor of chain / no filters: portcullis, the chain's host calls alone / no filters, req/s | {:.2} | |",
        m[8].rps / m[1].rps
    );
    println!(
        "| floor of our chain / native: Envoy, the chain's host calls alone / native equivalent, req/s | {:.2} | |",
        m[9].rps / m[5].rps
    );
    if alt.is_some() {
        println!(
            "| alt wasm / wasm, chain in portcullis, req per CPU-second | {:.3} | |",
            m[10].rps_per_cpu() / m[2].rps_per_cpu()
        );
        println!(
            "| alt wasm / wasm, chain in Envoy, req per CPU-second | {:.3} | |",
            m[11].rps_per_cpu() / m[4].rps_per_cpu()
        );
    }
    println!(
        "| no filters: portcullis / Envoy, req/s (per CPU-second) | {:.2}x ({:.2}x) | |",
        m[1].rps / m[3].rps,
        m[1].rps_per_cpu() / m[3].rps_per_cpu()
    );
    println!("\n| host | start-up to first proxied 200 | RSS at rest |");
    println!("|---|---|---|");
    let row = |name: &str, startup: Duration, kb: u64| {
        println!(
            "| {name} | {:.0} ms | {:.1} MB |",
            startup.as_secs_f64() * 1000.0,
            kb as f64 / 1024.0
        );
    };
    row(
        "portcullis, the four filters (chain + oidc)",
        four.0,
        four.1,
    );
    for (name, s) in [
        ("portcullis, no filters", &p_none),
        ("portcullis, the chain (3 filters)", &p_chain),
        ("envoy, no filters", &e_none),
        ("envoy, the chain (3 wasm filters)", &e_chain),
        ("envoy, native equivalent", &e_native),
    ] {
        row(name, s.startup, s.rest_kb);
    }
}

/// One and three filters that do nothing, in both hosts: the per-filter cost of the
/// host itself, which no filter can go under.
fn floor_section(ctx: &Ctx) {
    let a = &ctx.a;
    let p_none = start_portcullis(ctx, "none", &[], &[], &[]);
    let p_one = start_portcullis(ctx, "noop1", &noop_filters(1), &[], &[]);
    let p_three = start_portcullis(ctx, "noop3", &noop_filters(3), &[], &[]);
    let e_none = start_envoy(&envoy_noops(ctx, 0), &[]);
    let e_one = start_envoy(&envoy_noops(ctx, 1), &[]);
    let e_three = start_envoy(&envoy_noops(ctx, 3), &[]);
    let targets = vec![
        target("portcullis", &p_none),
        target("portcullis + 1 no-op", &p_one),
        target("portcullis + 3 no-ops", &p_three),
        target("envoy", &e_none),
        target("envoy + 1 no-op", &e_one),
        target("envoy + 3 no-ops", &e_three),
    ];
    let m = compare(
        "No-op wasm filters: the hosts' own cost per filter",
        &targets,
        &Load::headers(&[]),
        a,
    );
    let per_filter =
        |none: &Run, three: &Run| (1e6 / three.rps_per_cpu() - 1e6 / none.rps_per_cpu()) / 3.0;
    println!(
        "\n| host | 1 no-op / none, req/s | 3 no-ops / none, req/s | CPU µs per no-op filter per request |"
    );
    println!("|---|---|---|---|");
    for (name, i) in [("portcullis", 0), ("envoy", 3)] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.1} |",
            m[i + 1].rps / m[i].rps,
            m[i + 2].rps / m[i].rps,
            per_filter(&m[i], &m[i + 2])
        );
    }
}

/// What each kind of proxy-wasm host call costs in each host: calls-filter making it
/// once and ten times per request, against the same filter making none. The first
/// call of a request can cost more than the next ones (Envoy clears the route cache on
/// a header change, creates the filter state on a property write), so both are shown:
/// the first, and each further one (the difference between ten and one, over nine), in
/// the proxy's CPU per request.
fn calls_section(ctx: &Ctx) {
    const TIMES: usize = 10;
    const KINDS: [(&str, &str); 9] = [
        ("read the request header map", "headers"),
        ("read one request header", "header authorization"),
        ("set a request header", "set_header x-priced yes"),
        ("read a property (request.path)", "property request/path"),
        ("set a property", "set_property portcullis.priced yes"),
        ("read shared data", "shared_get priced"),
        ("write shared data", "shared_set priced yes"),
        ("read the time", "time"),
        // Not a host call: a hundred 64-byte copies inside the filter (memory.copy).
        ("100 copies of 64 bytes in the filter", "copy 64"),
    ];
    let headers = vec!["authorization: Bearer x".to_string()];
    let config = |call: &str, times: usize| json!({"setup": ["shared_set priced yes"], "calls": vec![call; times]});
    // No call, then each kind once and ten times: in each host.
    let runs: Vec<(&str, usize)> = std::iter::once(("", 0))
        .chain(KINDS.iter().flat_map(|k| [(k.1, 1), (k.1, TIMES)]))
        .collect();
    let names: Vec<String> = (0..runs.len()).map(|i| format!("c{i}")).collect();
    let mut started = Vec::new();
    let mut labels = Vec::new();
    for (name, (call, times)) in names.iter().zip(&runs) {
        let what = if *times == 0 {
            "no call".to_string()
        } else {
            format!("{times} x {call}")
        };
        let filter = [Filter {
            name,
            wasm: "calls_filter",
            config: config(call, *times),
        }];
        started.push(start_portcullis(ctx, name, &filter, &[], &headers));
        labels.push(format!("portcullis, {what}"));
        started.push(start_envoy(&envoy_with(ctx, &filter), &headers));
        labels.push(format!("envoy, {what}"));
    }
    let targets: Vec<_> = labels
        .iter()
        .zip(&started)
        .map(|(l, s)| target(l, s))
        .collect();
    let m = compare(
        "The price of each host call: one kind of call, once and ten times per request",
        &targets,
        &Load::headers(&headers),
        &ctx.a,
    );
    let us = |i: usize| 1e6 / m[i].rps_per_cpu();
    println!(
        "\n| host call | portcullis: first, further (CPU µs) | Envoy: first, further (CPU µs) |"
    );
    println!("|---|---|---|");
    for (k, (label, _)) in KINDS.iter().enumerate() {
        // Targets: 2 per run (portcullis, envoy); runs: none, then once and ten times.
        let (once, ten) = (2 * (1 + 2 * k), 2 * (2 + 2 * k));
        let first = |host: usize| us(once + host) - us(host);
        let further = |host: usize| (us(ten + host) - us(once + host)) / (TIMES - 1) as f64;
        println!(
            "| {label} | {:.2}, {:.2} | {:.2}, {:.2} |",
            first(0),
            further(0),
            first(1),
            further(1)
        );
    }
}

/// A fresh token per request: wrk cycles through a pool larger than every cache.
fn uncached_section(ctx: &Ctx) {
    let a = &ctx.a;
    const POOL: usize = 4000;
    eprintln!("signing {POOL} RS256 tokens for the pool...");
    let tokens: Vec<String> = (0..POOL)
        .map(|i| ctx.token(&ctx.rs256, "RS256", &format!("user-{i}")))
        .collect();
    let pool = ctx.dir.join("tokens.txt");
    std::fs::write(&pool, tokens.join("\n")).expect("pool");
    let script = ctx.dir.join("pool.lua");
    std::fs::write(
        &script,
        format!(
            "local tokens = {{}}\nfor line in io.lines(\"{}\") do tokens[#tokens + 1] = line end\nlocal i = 0\nrequest = function()\n  i = i % #tokens + 1\n  return wrk.format(nil, nil, {{[\"Authorization\"] = \"Bearer \" .. tokens[i]}})\nend\n",
            pool.display()
        ),
    )
    .expect("script");
    let first = vec![format!("authorization: Bearer {}", tokens[0])];
    let p_chain = start_portcullis(ctx, "chain-uncached", &chain_filters(ctx), &[], &first);
    let e_chain = start_envoy(&envoy_chain(ctx), &first);
    let e_native = start_envoy(&envoy_native(ctx), &first);
    let targets = vec![
        target("portcullis + chain", &p_chain),
        target("envoy + chain (same wasm)", &e_chain),
        target("envoy + native equivalent", &e_native),
    ];
    let m = compare(
        &format!("The chain, a fresh RS256-2048 token per request (a pool of {POOL})"),
        &targets,
        &Load::script(&script),
        a,
    );
    println!("\n| ratio | measured |");
    println!("|---|---|");
    println!(
        "| uncached chain: portcullis / Envoy, req/s | {:.2}x |",
        m[0].rps / m[1].rps
    );
    println!(
        "| uncached: our chain in Envoy / native equivalent, req/s | {:.2} |",
        m[1].rps / m[2].rps
    );
}

fn limiter_section(ctx: &Ctx) {
    let a = &ctx.a;
    let headers = vec!["x-api-key: bench-client".to_owned()];
    let redis_port = free_port();
    let redis_dir = ctx.dir.join("redis");
    std::fs::create_dir_all(&redis_dir).expect("redis dir");
    let Ok(redis) = Command::new("redis-server")
        .args([
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&redis_dir)
        .stdout(Stdio::null())
        .spawn()
    else {
        eprintln!("redis-server is missing: skipping the limiter section");
        return;
    };
    let _redis = Proc(redis);
    wait_listening(
        SocketAddr::from(([127, 0, 0, 1], redis_port)),
        Duration::from_secs(10),
    );
    let svc_port = free_port();
    let _svc = Proc(
        Command::new(&ctx.portcullis)
            .args([
                "ratelimit-service",
                "--listen",
                &format!("127.0.0.1:{svc_port}"),
            ])
            .args(["--redis", &format!("redis://127.0.0.1:{redis_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ratelimit-service starts"),
    );
    wait_listening(
        SocketAddr::from(([127, 0, 0, 1], svc_port)),
        Duration::from_secs(10),
    );
    let limits = |policy: &str| {
        json!({
            "identify_by": ["header:x-api-key"],
            "tiers": {"t": {"second": 1_000_000_000u64, "hour": 1_000_000_000_000u64}},
            "default_tier": "t",
            "policy": policy,
            "global": {"cluster": "ratelimit", "domain": "bench", "timeout_ms": 200, "failure_mode": "closed"}
        })
    };
    let p_none = start_portcullis(ctx, "limiter-none", &[], &[], &headers);
    let local = [Filter {
        name: "limits",
        wasm: "tier_limiter",
        config: limits("local"),
    }];
    let p_local = start_portcullis(ctx, "limiter-local", &local, &[], &headers);
    let global = [Filter {
        name: "limits",
        wasm: "tier_limiter",
        config: limits("global"),
    }];
    let svc = [("ratelimit", format!("http://127.0.0.1:{svc_port}"))];
    let p_global = start_portcullis(ctx, "limiter-global", &global, &svc, &headers);
    let targets = vec![
        target("portcullis", &p_none),
        target("portcullis + tier-limiter local", &p_local),
        target("portcullis + tier-limiter global", &p_global),
    ];
    let m = compare(
        "tier-limiter: local, and global through ratelimit-service on Redis (one client key, limits that never refuse)",
        &targets,
        &Load::headers(&headers),
        a,
    );
    println!("\n| ratio (req/s against no limiter) | measured |");
    println!("|---|---|");
    println!("| local | {:.2} |", m[1].rps / m[0].rps);
    println!("| global | {:.2} |", m[2].rps / m[0].rps);
}

/// jwt-auth alone with a valid, cached token: our filter in portcullis and in Envoy,
/// and Envoy's native jwt_authn with its JWT cache.
fn jwt_section(ctx: &Ctx) {
    let a = &ctx.a;
    let token = ctx.token(&ctx.es256, "ES256", "user-1");
    let headers = vec![format!("authorization: Bearer {token}")];
    let ours = json!({
        "providers": {"idp": {"issuer": ISSUER, "audiences": ["api"], "local_jwks": ctx.jwks, "algorithms": ["ES256"], "forward": true}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    });
    let jwt = [Filter {
        name: "jwt",
        wasm: "jwt_auth",
        config: ours.clone(),
    }];
    let p = start_portcullis(ctx, "jwt", &jwt, &[], &headers);
    let e = start_envoy(&envoy_with(ctx, &jwt), &headers);
    let native = start_envoy(
        &EnvoyConfig::new(ctx.upstream)
            .concurrency(a.workers)
            .native_filter(json!({
                "name": "envoy.filters.http.jwt_authn",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                    "providers": {"idp": {"issuer": ISSUER, "audiences": ["api"], "local_jwks": {"inline_string": ctx.jwks.to_string()},
                        "forward": true, "jwt_cache_config": {"jwt_cache_size": 1000}}},
                    "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]
                }
            })),
        &headers,
    );
    // The ceiling for any wasm filter in Envoy: one that does nothing.
    let noop = start_envoy(&envoy_noops(ctx, 1), &headers);
    // The floor under jwt-auth in Envoy: the five host calls it makes on a cached token
    // (the request headers, the time, two identity headers, the verified credential
    // for header-forwarder), made by a filter that does nothing else.
    let calls = json!({"calls": ["headers", "time", "set_header x-consumer-id user-1",
        "set_header x-credential-identifier user-1",
        format!("set_property portcullis.credential {token}")]});
    let floor = start_envoy(
        &envoy_with(
            ctx,
            &[Filter {
                name: "calls",
                wasm: "calls_filter",
                config: calls,
            }],
        ),
        &headers,
    );
    let targets = vec![
        target("portcullis + jwt-auth", &p),
        target("envoy + jwt-auth (wasm)", &e),
        target("envoy + jwt_authn (native)", &native),
        target("envoy + a no-op wasm filter", &noop),
        target("envoy + jwt-auth's host calls alone", &floor),
    ];
    let m = compare(
        "jwt-auth alone, one valid ES256 token (cached)",
        &targets,
        &Load::headers(&headers),
        a,
    );
    println!("\n| ratio | value |");
    println!("|---|---|");
    println!(
        "| our filter in Envoy / native jwt_authn, req/s | {:.2}x |",
        m[1].rps / m[2].rps
    );
    println!(
        "| a no-op wasm filter in Envoy / native jwt_authn, req/s (the ceiling of the above) | {:.2}x |",
        m[3].rps / m[2].rps
    );
    println!(
        "| a wasm filter making only jwt-auth's host calls in Envoy / native jwt_authn, req/s (the floor under any wasm filter doing its job) | {:.2}x |",
        m[4].rps / m[2].rps
    );
    println!(
        "| portcullis + jwt-auth / Envoy + jwt-auth, req per CPU-second | {:.2}x |",
        m[0].rps_per_cpu() / m[1].rps_per_cpu()
    );
}

/// What wrk sends: fixed headers, or a Lua script.
struct Load {
    headers: Vec<String>,
    script: Option<PathBuf>,
}

impl Load {
    fn headers(h: &[String]) -> Load {
        Load {
            headers: h.to_vec(),
            script: None,
        }
    }

    fn script(p: &Path) -> Load {
        Load {
            headers: Vec::new(),
            script: Some(p.to_owned()),
        }
    }
}

/// Interleaved rounds over `targets`, a table of medians; returns the medians in
/// target order.
fn compare(
    title: &str,
    targets: &[(&str, SocketAddr, Option<u32>)],
    load: &Load,
    a: &Args,
) -> Vec<Run> {
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 0..a.rounds {
        for (i, (name, addr, pid)) in targets.iter().enumerate() {
            let r = measure(*addr, *pid, load, a);
            eprintln!(
                "round {} {name:>32}: {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  cpu {:>5.2} s",
                round + 1,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.cpu_s
            );
            results[i].push(r);
        }
    }
    println!("\n## {title}\n");
    println!("| target | req/s | p50 ms | p99 ms | req per CPU-second | peak RSS MB |");
    println!("|---|---|---|---|---|---|");
    let mut med = Vec::new();
    for (i, (name, _, pid)) in targets.iter().enumerate() {
        let m = Run::median(&results[i]);
        let peak = pid.map_or(0, peak_rss_kb) as f64 / 1024.0;
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {:.0} | {:.1} |",
            m.rps,
            m.p50_ms,
            m.p99_ms,
            m.rps_per_cpu(),
            peak
        );
        med.push(m);
    }
    med
}

/// Waits for a listener to accept.
fn wait_listening(addr: SocketAddr, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{addr} did not listen within {limit:?}");
}

#[derive(Clone, Copy, Debug, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_s: f64,
    seconds: f64,
}

impl Run {
    fn rps_per_cpu(&self) -> f64 {
        if self.cpu_s > 0.0 {
            self.rps * self.seconds / self.cpu_s
        } else {
            0.0
        }
    }

    fn median(runs: &[Run]) -> Run {
        let pick = |f: fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        Run {
            rps: pick(|r| r.rps),
            p50_ms: pick(|r| r.p50_ms),
            p99_ms: pick(|r| r.p99_ms),
            cpu_s: pick(|r| r.cpu_s),
            seconds: pick(|r| r.seconds),
        }
    }
}

fn measure(addr: SocketAddr, pid: Option<u32>, load: &Load, a: &Args) -> Run {
    let cpu0 = pid.map_or(0.0, cpu_seconds);
    let mut wrk = Command::new("wrk");
    for h in &load.headers {
        wrk.args(["-H", h]);
    }
    if let Some(s) = &load.script {
        wrk.arg("-s").arg(s);
    }
    let out = wrk
        .args([
            "-t1",
            &format!("-c{}", a.connections),
            &format!("-d{}s", a.seconds),
            "--latency",
        ])
        .arg(format!("http://{addr}/bench"))
        .output()
        .expect("wrk runs");
    let cpu1 = pid.map_or(0.0, cpu_seconds);
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Requests/sec:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0);
    let pct = |p: &str| {
        text.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(p))
                .then(|| it.next().map(parse_ms))
                .flatten()
        })
    };
    if text.contains("Non-2xx") {
        eprintln!("warning: non-2xx answers from {addr}:\n{text}");
    }
    Run {
        rps,
        p50_ms: pct("50%").unwrap_or(0.0),
        p99_ms: pct("99%").unwrap_or(0.0),
        cpu_s: cpu1 - cpu0,
        seconds: a.seconds as f64,
    }
}

fn parse_ms(v: &str) -> f64 {
    let num = |s: &str| s.parse::<f64>().unwrap_or(0.0);
    if let Some(x) = v.strip_suffix("us") {
        num(x) / 1000.0
    } else if let Some(x) = v.strip_suffix("ms") {
        num(x)
    } else if let Some(x) = v.strip_suffix('s') {
        num(x) * 1000.0
    } else {
        num(v)
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

fn peak_rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

/// Waits for the first 200 to a request with `headers` ("name: value").
fn wait_200(addr: SocketAddr, headers: &[String], limit: Duration) {
    use std::io::{Read, Write};
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = write!(
                s,
                "GET / HTTP/1.1\r\nHost: bench\r\n{extra}Connection: close\r\n\r\n"
            );
            let mut buf = [0u8; 12];
            if s.read_exact(&mut buf).is_ok() && &buf[9..12] == b"200" {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("{addr} did not answer 200 within {limit:?}");
}

struct Proc(Child);

impl Proc {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The fast upstream: 200 with a 2-byte body, HTTP/1.1 keep-alive, one thread.
fn fast_upstream(addr: SocketAddr) {
    use bytes_free::respond;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(respond(s));
        }
    });
}

/// A minimal keep-alive HTTP/1.1 responder (requests without bodies), so the upstream
/// costs as little as possible and the proxies dominate the measurement.
mod bytes_free {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const RESPONSE: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";

    pub async fn respond(mut s: tokio::net::TcpStream) {
        let mut buf = vec![0u8; 16 * 1024];
        let mut have = 0;
        loop {
            match s.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
            // Answer every complete request head in the buffer (pipelining included).
            loop {
                let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
                    break;
                };
                if s.write_all(RESPONSE).await.is_err() {
                    return;
                }
                buf.copy_within(end + 4..have, 0);
                have -= end + 4;
            }
            if have == buf.len() {
                return;
            }
        }
    }
}
