//! `uncached`: the chain in both hosts and Envoy's native equivalent, with a fresh RS256
//! token per request from a pool larger than every cache.

use crate::context::Ctx;
use crate::hosts::{start_envoy, start_portcullis};
use crate::measure::{Load, compare, target};
use crate::sections::chain::{
    E_CHAIN, E_NATIVE, P_CHAIN, chain_filters, envoy_chain, envoy_native,
};
use crate::tables::{Ratios, times, two};

/// A fresh token per request: wrk cycles through a pool larger than every cache.
pub fn run(ctx: &Ctx) {
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
        target(P_CHAIN, &p_chain),
        target(E_CHAIN, &e_chain),
        target(E_NATIVE, &e_native),
    ];
    let m = compare(
        &format!("The chain, a fresh RS256-2048 token per request (a pool of {POOL})"),
        &targets,
        &Load::script(&script),
        a,
    );
    let mut r = Ratios::new("ratio", "measured");
    r.row(
        "uncached chain: portcullis / Envoy, req/s",
        times(m[P_CHAIN].rps / m[E_CHAIN].rps),
        "",
    );
    r.row(
        "uncached: our chain in Envoy / native equivalent, req/s",
        two(m[E_CHAIN].rps / m[E_NATIVE].rps),
        "",
    );
    r.print();
}
