//! Parity: the conformance cases run in our host (through the test bed, its clusters
//! pointed at real loopback services) and in a real Envoy 1.40 with the same `.wasm`,
//! and what the client and the upstream saw must match. Where the hosts differ on
//! purpose, the difference is listed in `KNOWN_DIFFERENCES` with the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use portcullis_clients::HttpCluster;
use portcullis_engine::{HeaderMap, HttpCallRequest};
use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter, blackhole, refused};
use portcullis_testbed::{Request, TestBed, wasm};

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
    "x-saw-response",
    "x-reason",
    "x-request-header-status",
    "x-status-seen",
];
const UPSTREAM_HEADERS: &[&str] = &[
    "x-added",
    "x-replace",
    "x-remove",
    "x-seen-multi",
    "x-missing-is-none",
    "x-drop-me",
    "x-keep",
    "x-from-pairs",
    "x-call-status",
];

type Observation = BTreeMap<String, String>;

fn request_for(case: &str) -> (HeaderMap, Vec<u8>) {
    let mut h = HeaderMap::new();
    h.add(":method", if case == "body" { "POST" } else { "GET" });
    h.add(":path", format!("/case/{case}?a=1"));
    h.add(":authority", "gateway.test");
    h.add("x-replace", "old");
    h.add("x-remove", "gone");
    h.add("x-multi", "first");
    h.add("x-multi", "second");
    h.add("x-drop-me", "1");
    h.add("x-keep", "2");
    let body = if case == "body" {
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

fn config(envoy: bool) -> String {
    let _ = envoy;
    r#"{"upstream": "echo", "blackhole": "blackhole", "refused": "refused"}"#.into()
}

fn run_ours(
    echo: SocketAddr,
    hole: SocketAddr,
    closed: SocketAddr,
) -> BTreeMap<&'static str, Observation> {
    let mut bed = TestBed::new()
        .filter(wasm("conformance_filter"), config(false))
        .named("conformance")
        .cluster_url("echo", &format!("http://{echo}"))
        .cluster_url("blackhole", &format!("http://{hole}"))
        .cluster_url("refused", &format!("http://{closed}"))
        .failure_policy(portcullis_testbed::FailurePolicy::Reload)
        .build()
        .expect("starts");
    let mut out = BTreeMap::new();
    for case in CASES {
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
    echo: SocketAddr,
    hole: SocketAddr,
    closed: SocketAddr,
) -> BTreeMap<&'static str, Observation> {
    let mut filter = WasmFilter::new("conformance", wasm("conformance_filter"), &config(true));
    filter.failure_policy = "FAIL_RELOAD";
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
    for case in CASES {
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

#[test]
fn conformance_cases_match_envoy() {
    let (echo, hole, closed) = (spawn_echo(), blackhole(), refused());
    let ours = run_ours(echo, hole, closed);
    let envoy = run_envoy(echo, hole, closed);
    let mut differences = Vec::new();
    for case in CASES {
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
