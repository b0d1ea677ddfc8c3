//! `limiter`: portcullis without filters, with tier-limiter `local`, and with `global`
//! (Redis through `portcullis ratelimit-service`, both started here).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use portcullis_envoy::free_port;
use serde_json::json;

use crate::context::Ctx;
use crate::hosts::{Filter, Proc, start_portcullis, wait_listening};
use crate::measure::{Load, compare, target};
use crate::tables::{Ratios, two};

// The targets, by label.
const NONE: &str = "portcullis";
const LOCAL: &str = "portcullis + tier-limiter local";
const GLOBAL: &str = "portcullis + tier-limiter global";

/// Starts Redis and ratelimit-service (skipping the section without `redis-server`),
/// then compares the three.
pub fn run(ctx: &Ctx) {
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
        Command::new(&*ctx.portcullis.borrow())
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
        target(NONE, &p_none),
        target(LOCAL, &p_local),
        target(GLOBAL, &p_global),
    ];
    let m = compare(
        "tier-limiter: local, and global through ratelimit-service on Redis (one client key, limits that never refuse)",
        &targets,
        &Load::headers(&headers),
        a,
    );
    let mut r = Ratios::new("ratio (req/s against no limiter)", "measured");
    r.row("local", two(m[LOCAL].rps / m[NONE].rps), "");
    r.row("global", two(m[GLOBAL].rps / m[NONE].rps), "");
    r.print();
}
