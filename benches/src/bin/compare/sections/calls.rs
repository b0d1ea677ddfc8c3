//! `calls` (only with `--only calls`: 38 targets): the price of each kind of proxy-wasm
//! host call in each host, the first of a request and each further one.

use serde_json::json;

use crate::context::Ctx;
use crate::hosts::{Filter, envoy_with, start_envoy, start_portcullis};
use crate::measure::{Load, compare, target};
use crate::tables::Table;

/// What each kind of proxy-wasm host call costs in each host: calls-filter making it
/// once and ten times per request, against the same filter making none. The first
/// call of a request can cost more than the next ones (Envoy clears the route cache on
/// a header change, creates the filter state on a property write), so both are shown:
/// the first, and each further one (the difference between ten and one, over nine), in
/// the proxy's CPU per request.
pub fn run(ctx: &Ctx) {
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
        let filter = [Filter {
            name,
            wasm: "calls_filter",
            config: config(call, *times),
        }];
        started.push(start_portcullis(ctx, name, &filter, &[], &headers));
        labels.push(label("portcullis", call, *times));
        started.push(start_envoy(&envoy_with(ctx, &filter), &headers));
        labels.push(label("envoy", call, *times));
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
    // CPU µs per request in `host` making `call` `times` times.
    let us = |host: &str, call: &str, times: usize| {
        1e6 / m[label(host, call, times).as_str()].rps_per_cpu()
    };
    let mut t = Table::new(&[
        "host call",
        "portcullis: first, further (CPU µs)",
        "Envoy: first, further (CPU µs)",
    ]);
    for (kind, call) in KINDS {
        // The first call against none; each further one: ten against one, over nine.
        let first = |host: &str| us(host, call, 1) - us(host, "", 0);
        let further = |host: &str| (us(host, call, TIMES) - us(host, call, 1)) / (TIMES - 1) as f64;
        t.row(&[
            kind.to_owned(),
            format!("{:.2}, {:.2}", first("portcullis"), further("portcullis")),
            format!("{:.2}, {:.2}", first("envoy"), further("envoy")),
        ]);
    }
    t.print();
}

/// A target's label: `portcullis, no call`, `envoy, 10 x time`.
fn label(host: &str, call: &str, times: usize) -> String {
    if times == 0 {
        format!("{host}, no call")
    } else {
        format!("{host}, {times} x {call}")
    }
}
