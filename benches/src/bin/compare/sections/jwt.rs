//! `jwt`: jwt-auth alone in both hosts against Envoy's native jwt_authn, and in Envoy a
//! no-op wasm filter (the ceiling) and a filter making only jwt-auth's host calls (the
//! floor under any filter doing its job).

use portcullis_envoy::EnvoyConfig;
use serde_json::json;

use crate::context::{Ctx, ISSUER};
use crate::hosts::{Filter, envoy_noops, envoy_with, start_envoy, start_portcullis};
use crate::measure::{Load, compare, target};
use crate::tables::{Ratios, times};

// The targets, by label.
const P_JWT: &str = "portcullis + jwt-auth";
const E_JWT: &str = "envoy + jwt-auth (wasm)";
const E_NATIVE: &str = "envoy + jwt_authn (native)";
const E_NOOP: &str = "envoy + a no-op wasm filter";
const E_CALLS: &str = "envoy + jwt-auth's host calls alone";

/// jwt-auth alone with a valid, cached token: our filter in portcullis and in Envoy,
/// and Envoy's native jwt_authn with its JWT cache.
pub fn run(ctx: &Ctx) {
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
        target(P_JWT, &p),
        target(E_JWT, &e),
        target(E_NATIVE, &native),
        target(E_NOOP, &noop),
        target(E_CALLS, &floor),
    ];
    let m = compare(
        "jwt-auth alone, one valid ES256 token (cached)",
        &targets,
        &Load::headers(&headers),
        a,
    );
    let mut r = Ratios::new("ratio", "value");
    r.row(
        "our filter in Envoy / native jwt_authn, req/s",
        times(m[E_JWT].rps / m[E_NATIVE].rps),
        "",
    );
    r.row(
        "a no-op wasm filter in Envoy / native jwt_authn, req/s (the ceiling of the above)",
        times(m[E_NOOP].rps / m[E_NATIVE].rps),
        "",
    );
    r.row(
        "a wasm filter making only jwt-auth's host calls in Envoy / native jwt_authn, req/s (the floor under any wasm filter doing its job)",
        times(m[E_CALLS].rps / m[E_NATIVE].rps),
        "",
    );
    r.row(
        "portcullis + jwt-auth / Envoy + jwt-auth, req per CPU-second",
        times(m[P_JWT].rps_per_cpu() / m[E_JWT].rps_per_cpu()),
        "",
    );
    r.print();
}
