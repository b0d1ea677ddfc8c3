//! Parity: the conformance cases run in our host (through the test bed, its clusters
//! pointed at real loopback services) and in a real Envoy 1.40 with the same `.wasm`,
//! and what the client and the upstream saw must match. Where the hosts differ on
//! purpose, the difference is listed in `KNOWN_DIFFERENCES` with the reason.
//!
//! Two SDKs: the Rust SDK's conformance filter, and one written with the
//! AssemblyScript SDK (`testbed/filters/as-conformance`: ABI 0.2.0 exports, its own
//! allocator, `wasi_unstable` imports).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use portcullis_clients::HttpCluster;
use portcullis_engine::{HeaderMap, HttpCallRequest};
use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter, blackhole, refused};
use portcullis_testbed::{Request, TestBed, wasm};

/// A filter and the cases both hosts must answer alike.
struct Suite {
    /// The filter's name, which is also its root_id (the AssemblyScript SDK picks its
    /// root context by it).
    name: &'static str,
    wasm: &'static str,
    configuration: &'static str,
    cases: &'static [&'static str],
    /// The filter's `allow_on_headers_stop_iteration`, in both hosts.
    holds_headers_for_body: bool,
}

const RUST_SDK: Suite = Suite {
    name: "conformance",
    wasm: "conformance_filter",
    configuration: r#"{"upstream": "echo", "blackhole": "blackhole", "refused": "refused"}"#,
    cases: CASES,
    holds_headers_for_body: false,
};

/// The Rust SDK's filter with `allow_on_headers_stop_iteration`: a pause in the
/// request headers holds only the headers, and the body still comes to the filter.
const HELD_HEADERS: Suite = Suite {
    cases: &[
        "headers-wait-for-body",
        "headers-wait-for-call",
        "body",
        "http-call-resume",
    ],
    holds_headers_for_body: true,
    ..RUST_SDK
};

/// The AssemblyScript filter's cases; its configuration is the cluster it calls.
const AS_SDK: Suite = Suite {
    name: "as_conformance",
    wasm: "as_conformance",
    configuration: "echo",
    cases: &[
        "headers",
        "pairs",
        "local-reply",
        "shared",
        "http-call",
        "body",
        "props",
        "none",
        "metrics",
        "tick",
    ],
    holds_headers_for_body: false,
};

/// The conformance cases both hosts must answer alike. The `limit-*` cases are left
/// out on purpose: they ask the host to hold more than our host's limits allow, and
/// Envoy has no such limits (docs/parity.md, "Where we differ on purpose").
const CASES: &[&str] = &[
    "headers",
    "pairs",
    "local-reply",
    "props",
    "shared-cas",
    "http-call-unknown-cluster",
    "http-call-missing-path",
    "http-call",
    "http-call-resume",
    "http-call-timeout",
    "http-call-refused",
    "request-headers-in-response",
    "response-phase",
    "grpc-unknown-cluster",
    "metrics",
    "abi-edges",
    "body",
    "time",
    "oob",
    "hostile-map",
    "trap",
];

/// (case, observation key, why the hosts differ there).
const KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[];

const RESPONSE_HEADERS: &[&str] = &[
    "x-case",
    "x-as-case",
    "x-call-status",
    "x-call-has-body",
    "x-saw-response",
    "x-reason",
    "x-request-header-status",
    "x-request-pairs-status",
    "x-status-seen",
];
const UPSTREAM_HEADERS: &[&str] = &[
    "x-added",
    "x-replace",
    "x-remove",
    "x-seen-multi",
    "x-missing-is-none",
    "x-missing-is-empty",
    "x-drop-me",
    "x-keep",
    "x-from-pairs",
    "x-call-status",
    "x-body-seen",
];

type Observation = BTreeMap<String, String>;

fn request_for(case: &str) -> (HeaderMap, Vec<u8>) {
    let mut h = HeaderMap::new();
    let posts = matches!(
        case,
        "body" | "headers-wait-for-body" | "headers-wait-for-call"
    );
    h.add(":method", if posts { "POST" } else { "GET" });
    h.add(":path", format!("/case/{case}?a=1"));
    h.add(":authority", "gateway.test");
    h.add("x-replace", "old");
    h.add("x-remove", "gone");
    h.add("x-multi", "first");
    h.add("x-multi", "second");
    h.add("x-drop-me", "1");
    h.add("x-keep", "2");
    let body = if posts {
        b"hello body".to_vec()
    } else {
        Vec::new()
    };
    (h, body)
}

fn observe(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    upstream: Option<(HeaderMap, Vec<u8>)>,
) -> Observation {
    let mut o = Observation::new();
    o.insert("status".into(), status.to_string());
    for h in RESPONSE_HEADERS {
        if let Some(v) = headers.get_str(h) {
            o.insert(format!("response {h}"), v.into());
        }
    }
    match upstream {
        Some((up, up_body)) => {
            for h in UPSTREAM_HEADERS {
                o.insert(
                    format!("upstream {h}"),
                    up.get_str(h).unwrap_or("<absent>").into(),
                );
            }
            o.insert(
                "upstream body".into(),
                String::from_utf8_lossy(&up_body).into(),
            );
        }
        // A host's own 503 for a failed filter has a body of its own; the status is
        // what a client acts on.
        None if status == 503 => {}
        None => {
            o.insert("body".into(), String::from_utf8_lossy(body).into());
        }
    }
    o
}

fn spawn_echo() -> SocketAddr {
    portcullis_echo::spawn_thread().expect("echo upstream starts")
}

fn run_ours(
    suite: &Suite,
    echo: SocketAddr,
    hole: SocketAddr,
    closed: SocketAddr,
) -> BTreeMap<&'static str, Observation> {
    let mut bed = TestBed::new().filter(wasm(suite.wasm), suite.configuration);
    if suite.holds_headers_for_body {
        bed = bed.allow_on_headers_stop_iteration();
    }
    let mut bed = bed
        .named(suite.name)
        .cluster_url("echo", &format!("http://{echo}"))
        .cluster_url("blackhole", &format!("http://{hole}"))
        .cluster_url("refused", &format!("http://{closed}"))
        .failure_policy(portcullis_testbed::FailurePolicy::Reload)
        .build()
        .expect("starts");
    let mut out = BTreeMap::new();
    for case in suite.cases {
        if case == &"tick" {
            // The test bed's clock moves only when told: as much time as Envoy's real
            // clock has passed by this case, at least.
            bed.advance(Duration::from_millis(100));
        }
        let (headers, body) = request_for(case);
        let mut req = Request::get("/");
        req.headers = headers;
        req.body = body;
        let res = bed.send(req);
        let upstream = res.upstream.clone().map(|u| (u.headers, u.body));
        out.insert(
            *case,
            observe(res.status, &res.headers, &res.body, upstream),
        );
    }
    out
}

fn run_envoy(
    suite: &Suite,
    echo: SocketAddr,
    hole: SocketAddr,
    closed: SocketAddr,
) -> BTreeMap<&'static str, Observation> {
    let mut filter = WasmFilter::new(suite.name, wasm(suite.wasm), suite.configuration);
    filter.failure_policy = "FAIL_RELOAD";
    filter.allow_on_headers_stop_iteration = suite.holds_headers_for_body;
    let cfg = EnvoyConfig::new(echo)
        .filter(filter)
        .cluster("echo", echo)
        .cluster("blackhole", hole)
        .cluster("refused", closed);
    let envoy = Envoy::start(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = HttpCluster::new(
        &format!("http://{}", envoy.listener),
        Duration::from_secs(1),
        None,
    )
    .expect("client");
    let mut out = BTreeMap::new();
    for case in suite.cases {
        if case == &"tick" {
            // Time for a few ticks (20 ms apart), as the test bed's clock is moved.
            std::thread::sleep(Duration::from_millis(100));
        }
        let (headers, body) = request_for(case);
        let req = HttpCallRequest {
            headers,
            body,
            trailers: HeaderMap::new(),
            timeout: Duration::from_secs(10),
        };
        let res = rt
            .block_on(client.call(req))
            .unwrap_or_else(|e| panic!("{case}: {e:?}\n{}", envoy.log_text()));
        let status = res
            .headers
            .get_str(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // The echo upstream answers JSON with what it received.
        let upstream = serde_json::from_slice::<serde_json::Value>(&res.body)
            .ok()
            .and_then(|doc| {
                let headers: HeaderMap = doc["headers"]
                    .as_array()?
                    .iter()
                    .filter_map(|p| {
                        Some((
                            p[0].as_str()?.to_owned(),
                            p[1].as_str()?.as_bytes().to_vec(),
                        ))
                    })
                    .collect();
                Some((headers, doc["body"].as_str()?.as_bytes().to_vec()))
            });
        out.insert(*case, observe(status, &res.headers, &res.body, upstream));
        if case == &"trap" {
            // FAIL_RELOAD: give Envoy time to bring up a fresh VM.
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    out
}

/// Runs `suite` in both hosts and fails on any difference not listed as known.
fn assert_hosts_agree(suite: &Suite) {
    let (echo, hole, closed) = (spawn_echo(), blackhole(), refused());
    let ours = run_ours(suite, echo, hole, closed);
    let envoy = run_envoy(suite, echo, hole, closed);
    let mut differences = Vec::new();
    for case in suite.cases {
        let (a, b) = (&ours[case], &envoy[case]);
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            let (x, y) = (a.get(k), b.get(k));
            if x != y
                && !KNOWN_DIFFERENCES
                    .iter()
                    .any(|(c, key, _)| c == case && key == k)
            {
                differences.push(format!("{case} / {k}: ours {x:?}, envoy {y:?}"));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "our host differs from Envoy:\n{}",
        differences.join("\n")
    );
}

#[test]
fn conformance_cases_match_envoy() {
    assert_hosts_agree(&RUST_SDK);
}

#[test]
fn assemblyscript_sdk_cases_match_envoy() {
    assert_hosts_agree(&AS_SDK);
}

#[test]
fn headers_held_for_the_body_match_envoy() {
    assert_hosts_agree(&HELD_HEADERS);
}
