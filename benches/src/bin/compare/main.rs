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
//! - `floor`: one and three no-op wasm filters in each host, and three bare no-ops
//!   (a module without the SDK, made by the run): what running a wasm
//!   filter costs a host before the filter does anything (the floor under the chain).
//! - `calls` (only when asked for: 38 targets): the price of each kind of proxy-wasm
//!   host call in each host, the first of a request and each further one.
//!
//! `$PORTCULLIS_COMPARE_ALT_WASM=DIR` adds the chain built from a second directory of
//! filters to the chain section, in both hosts, interleaved with the first: an A/B of
//! a filter change within one run (this machine's run-to-run noise is ±5-7%).
//! `$PORTCULLIS_COMPARE_ALT_GATEWAY=BIN` does the same for a second build of the
//! gateway: the chain and no filters in it, interleaved with the first.
//!
//! `cargo xtask bench` runs it; directly:
//! `target/host/compare --rounds 3 --seconds 5 [--workers 1] [--only chain]`
//!
//! The modules: `context` (arguments, and what every section shares), `hosts` (starting
//! the upstream, portcullis and Envoy), `measure` (wrk runs, medians, CPU and RSS from
//! `/proc`; `compare` returns the medians by target label), `tables` (the markdown
//! tables: `Ratios`, one named ratio per row), and `sections`, one module per section.

mod context;
mod hosts;
mod measure;
mod sections;
mod tables;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use context::{Ctx, args};
use hosts::fast_upstream;

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
    let root = portcullis_testbed::workspace_dir();
    let portcullis = root.join("target/host/portcullis");
    assert!(
        portcullis.exists(),
        "{} is missing: `cargo build --profile host -p portcullis`",
        portcullis.display()
    );
    let (upstream, up_addr) = hosts::start_upstream();
    let dir = std::env::temp_dir().join(format!("portcullis-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (es256, rs256) = (jwt_mint::Key::ec256("es"), jwt_mint::Key::rsa("rs"));
    let ctx = Ctx {
        jwks: jwt_mint::jwks(&[&es256, &rs256]),
        es256,
        rs256,
        portcullis: std::cell::RefCell::new(portcullis),
        alt_portcullis: std::env::var_os("PORTCULLIS_COMPARE_ALT_GATEWAY").map(PathBuf::from),
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
        sections::chain::run(&ctx);
    }
    if ctx.runs("uncached") {
        sections::uncached::run(&ctx);
    }
    if ctx.runs("limiter") {
        sections::limiter::run(&ctx);
    }
    if ctx.runs("jwt") {
        sections::jwt::run(&ctx);
    }
    if ctx.runs("floor") {
        sections::floor::run(&ctx);
    }
    if ctx.a.only.as_deref() == Some("calls") {
        sections::calls::run(&ctx);
    }
    let _ = std::fs::remove_dir_all(&ctx.dir);
}
