//! `chain`: the upstream alone; portcullis without filters and with the chain jwt-auth
//! (cached token) → tier-limiter (local, limits that never refuse) → header-forwarder;
//! Envoy the same two ways; Envoy with the native equivalent (jwt_authn with its cache,
//! local_ratelimit, route header changes); the ceilings (three no-op filters) and floors
//! (the chain's host calls alone) in each host; the chain from
//! `$PORTCULLIS_COMPARE_ALT_WASM` when set; start-up and RSS at rest. The chain's
//! configurations are here too, shared with `uncached`.

use std::time::Duration;

use portcullis_envoy::{EnvoyConfig, free_port};
use serde_json::{Value, json};

use crate::context::{Ctx, ISSUER};
use crate::hosts::{
    Filter, envoy_noops, envoy_with, noop_filters, start_envoy, start_portcullis,
    start_portcullis_routes,
};
use crate::measure::{Load, Target, compare, target};
use crate::tables::{Ratios, Table, three, times, two};

// The targets, by label: the rows of the table of medians, and the ratios' operands.
const UPSTREAM: &str = "upstream alone";
const P_NONE: &str = "portcullis";
pub const P_CHAIN: &str = "portcullis + chain";
const E_NONE: &str = "envoy";
pub const E_CHAIN: &str = "envoy + chain (same wasm)";
pub const E_NATIVE: &str = "envoy + native equivalent";
const P_NOOP: &str = "portcullis + 3 no-op filters";
const E_NOOP: &str = "envoy + 3 no-op wasm filters";
const P_CALLS: &str = "portcullis + the chain's host calls alone";
const E_CALLS: &str = "envoy + the chain's host calls alone";
const P_ALT: &str = "portcullis + chain (alt wasm)";
const E_ALT: &str = "envoy + chain (alt wasm)";
const P_ALT_NONE: &str = "portcullis (alt build)";
const P_ALT_CHAIN: &str = "portcullis (alt build) + chain";

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

/// The chain as portcullis filters.
pub fn chain_filters(ctx: &Ctx) -> Vec<Filter<'static>> {
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

/// Envoy with the chain: the same wasm and configurations as portcullis.
pub fn envoy_chain(ctx: &Ctx) -> EnvoyConfig {
    envoy_with(ctx, &chain_filters(ctx))
}

/// Envoy's native equivalent of the chain: jwt_authn (with its cache, claims to
/// headers), local_ratelimit (never refusing, with its headers), and the route's
/// header additions and removals.
pub fn envoy_native(ctx: &Ctx) -> EnvoyConfig {
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

/// The chain, its ceilings and floors in both hosts, then start-up and RSS at rest.
pub fn run(ctx: &Ctx) {
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
    // The same in a second build of the gateway, when asked for.
    let alt_gateway = ctx.alt_portcullis.as_ref().map(|bin| {
        let main = ctx.portcullis.replace(bin.clone());
        let none = start_portcullis(ctx, "none-alt-build", &[], &[], &headers);
        let chain = start_portcullis(ctx, "chain-alt-build", &chain_filters(ctx), &[], &headers);
        ctx.portcullis.replace(main);
        (none, chain)
    });
    let mut targets = vec![
        Target {
            label: UPSTREAM,
            addr: ctx.upstream,
            pid: Some(ctx.upstream_pid),
        },
        target(P_NONE, &p_none),
        target(P_CHAIN, &p_chain),
        target(E_NONE, &e_none),
        target(E_CHAIN, &e_chain),
        target(E_NATIVE, &e_native),
        target(P_NOOP, &p_noop),
        target(E_NOOP, &e_noop),
        target(P_CALLS, &p_calls),
        target(E_CALLS, &e_calls),
    ];
    if let Some((p, e)) = &alt {
        targets.push(target(P_ALT, p));
        targets.push(target(E_ALT, e));
    }
    if let Some((none, chain)) = &alt_gateway {
        targets.push(target(P_ALT_NONE, none));
        targets.push(target(P_ALT_CHAIN, chain));
    }
    let m = compare(
        "The chain jwt-auth (cached ES256 token) → tier-limiter (local) → header-forwarder",
        &targets,
        &Load::headers(&headers),
        a,
    );
    let mut r = Ratios::with_goals();
    r.row(
        "chain: portcullis / Envoy, req/s",
        times(m[P_CHAIN].rps / m[E_CHAIN].rps),
        "≥ 1.25x",
    );
    r.row(
        "chain: portcullis / Envoy, p99",
        times(m[P_CHAIN].p99_ms / m[E_CHAIN].p99_ms),
        "≤ 1x",
    );
    r.row(
        "chain: portcullis / Envoy, req per CPU-second",
        times(m[P_CHAIN].rps_per_cpu() / m[E_CHAIN].rps_per_cpu()),
        "",
    );
    r.row(
        "portcullis: chain / no filters, req/s",
        two(m[P_CHAIN].rps / m[P_NONE].rps),
        "≥ 0.80",
    );
    r.row(
        "Envoy: our chain / native equivalent, req/s",
        two(m[E_CHAIN].rps / m[E_NATIVE].rps),
        "≥ 0.90",
    );
    r.row(
        "ceiling of chain / no filters: portcullis, 3 no-op filters / no filters, req/s",
        two(m[P_NOOP].rps / m[P_NONE].rps),
        "",
    );
    r.row(
        "ceiling of our chain / native: Envoy, 3 no-op wasm filters / native equivalent, req/s",
        two(m[E_NOOP].rps / m[E_NATIVE].rps),
        "",
    );
    r.row(
        "floor of chain / no filters: portcullis, the chain's host calls alone / no filters, req/s",
        two(m[P_CALLS].rps / m[P_NONE].rps),
        "",
    );
    r.row(
        "floor of our chain / native: Envoy, the chain's host calls alone / native equivalent, req/s",
        two(m[E_CALLS].rps / m[E_NATIVE].rps),
        "",
    );
    if alt.is_some() {
        r.row(
            "alt wasm / wasm, chain in portcullis, req per CPU-second",
            three(m[P_ALT].rps_per_cpu() / m[P_CHAIN].rps_per_cpu()),
            "",
        );
        r.row(
            "alt wasm / wasm, chain in Envoy, req per CPU-second",
            three(m[E_ALT].rps_per_cpu() / m[E_CHAIN].rps_per_cpu()),
            "",
        );
    }
    if alt_gateway.is_some() {
        for (what, alt, main) in [
            ("no filters", P_ALT_NONE, P_NONE),
            ("chain", P_ALT_CHAIN, P_CHAIN),
        ] {
            r.row(
                &format!("alt build / build, portcullis {what}, req/s (per CPU-second)"),
                format!(
                    "{} ({})",
                    three(m[alt].rps / m[main].rps),
                    three(m[alt].rps_per_cpu() / m[main].rps_per_cpu())
                ),
                "",
            );
        }
        r.row(
            "alt build: chain / no filters, req/s",
            two(m[P_ALT_CHAIN].rps / m[P_ALT_NONE].rps),
            "",
        );
    }
    r.row(
        "no filters: portcullis / Envoy, req/s (per CPU-second)",
        format!(
            "{} ({})",
            times(m[P_NONE].rps / m[E_NONE].rps),
            times(m[P_NONE].rps_per_cpu() / m[E_NONE].rps_per_cpu())
        ),
        "",
    );
    r.print();
    let mut hosts = Table::new(&["host", "start-up to first proxied 200", "RSS at rest"]);
    let mut row = |name: &str, startup: Duration, kb: u64| {
        hosts.row(&[
            name.to_owned(),
            format!("{:.0} ms", startup.as_secs_f64() * 1000.0),
            format!("{:.1} MB", kb as f64 / 1024.0),
        ]);
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
    hosts.print();
}
