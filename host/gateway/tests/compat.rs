//! Filters written elsewhere: the gateway hands a filter what Envoy hands it.

mod common;

use std::time::Duration;

use common::*;
use portcullis_clients::HttpCluster;
use portcullis_engine::{HeaderMap, HttpCallRequest};
use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter};

/// The status and the body's bytes of `GET path` at `base`, for `host`.
fn fetch(base: &str, host: &str, path: &str) -> (u16, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = HttpCluster::new(base, Duration::from_secs(2), None).unwrap();
    let mut headers = HeaderMap::new();
    headers.add(":method", "GET");
    headers.add(":path", path);
    headers.add(":authority", host);
    let r = rt
        .block_on(client.call(HttpCallRequest {
            headers,
            body: Vec::new(),
            trailers: HeaderMap::new(),
            timeout: Duration::from_secs(10),
        }))
        .unwrap_or_else(|e| panic!("GET {base}{path}: {e:?}"));
    let status = r.headers.get_str(":status").and_then(|s| s.parse().ok());
    (status.unwrap_or(0), r.body)
}

#[test]
fn configuration_bytes_reach_the_filter_as_envoy_hands_them() {
    let upstream = echo();
    let conformance = wasm("conformance_filter");
    let dir = TempDir::new();
    // Not UTF-8, with a NUL and a newline: a file's bytes pass untouched.
    let binary = b"\x00\xffbinary\nconfig\x80".to_vec();
    let file = dir.0.join("plugin.bin");
    std::fs::write(&file, &binary).unwrap();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
filters:
  - {{ name: string, wasm: "{conformance}", config: "hello from config", vm_config: "vm says hi" }}
  - {{ name: mapping, wasm: "{conformance}", config: {{ greeting: hello, n: [1, 2] }}, vm_config: {{ a: 1 }} }}
  - {{ name: number, wasm: "{conformance}", config: 42 }}
  - {{ name: file, wasm: "{conformance}", config_file: "{}", vm_config_file: "{}" }}
  - {{ name: none, wasm: "{conformance}" }}
routes:
  - {{ name: string, match: {{ hosts: [string.test] }}, service: echo, filters: [string] }}
  - {{ name: mapping, match: {{ hosts: [mapping.test] }}, service: echo, filters: [mapping] }}
  - {{ name: number, match: {{ hosts: [number.test] }}, service: echo, filters: [number] }}
  - {{ name: file, match: {{ hosts: [file.test] }}, service: echo, filters: [file] }}
  - {{ name: none, match: {{ hosts: [none.test] }}, service: echo, filters: [none] }}
"#,
        file.display(),
        file.display(),
    ));
    let url = gw.url();
    let case = |route: &str, case: &str| {
        let (status, body) = fetch(&url, &format!("{route}.test"), &format!("/case/{case}"));
        assert_eq!(status, 200, "{route} {case}");
        body
    };
    assert_eq!(case("string", "config"), b"hello from config");
    assert_eq!(case("string", "vm-config"), b"vm says hi");
    let mapping: serde_json::Value = serde_json::from_slice(&case("mapping", "config")).unwrap();
    assert_eq!(
        mapping,
        serde_json::json!({"greeting": "hello", "n": [1, 2]})
    );
    assert_eq!(case("mapping", "vm-config"), br#"{"a":1}"#);
    assert_eq!(case("number", "config"), b"42");
    assert_eq!(case("file", "config"), binary);
    assert_eq!(case("file", "vm-config"), binary);
    assert_eq!(case("none", "config"), b"");
    assert_eq!(case("none", "vm-config"), b"");

    // Envoy, given the same string as a StringValue, hands over the same bytes.
    let mut filter = WasmFilter::new("string", &conformance, "hello from config");
    filter.vm_configuration = Some("vm says hi".into());
    let envoy =
        Envoy::start(&EnvoyConfig::new(upstream).filter(filter)).unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://{}", envoy.listener);
    assert_eq!(
        fetch(&base, "gateway.test", "/case/config"),
        (200, b"hello from config".to_vec())
    );
    assert_eq!(
        fetch(&base, "gateway.test", "/case/vm-config"),
        (200, b"vm says hi".to_vec())
    );
}

#[test]
fn a_configuration_given_twice_or_from_a_missing_file_is_refused_at_start() {
    let conformance = wasm("conformance_filter");
    let err = Gateway::try_start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
services: [{{ name: echo, url: "http://127.0.0.1:9" }}]
filters:
  - {{ name: twice, wasm: "{conformance}", config: "a", config_file: "/etc/hostname" }}
  - {{ name: missing, wasm: "{conformance}", vm_config_file: "/nonexistent/vm.bin" }}
routes: [{{ name: r, match: {{ paths: [/] }}, service: echo, filters: [twice, missing] }}]
"#
    ))
    .err()
    .expect("the gateway must refuse the configuration");
    assert!(
        err.contains("filter `twice`: `config` and `config_file` both given"),
        "{err}"
    );
    assert!(
        err.contains("filter `missing`: vm_config_file `/nonexistent/vm.bin`"),
        "{err}"
    );
}

/// A gateway of two workers whose route `reader.test` runs a conformance filter of
/// vm_id `shared-vm` (and `other.test` one of `other-vm`), beside the wasm service
/// `service` (its YAML mapping, of vm_id `shared-vm`).
fn with_wasm_service(service: &str) -> Gateway {
    let upstream = echo();
    let conformance = wasm("conformance_filter");
    Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
workers: 2
services: [{{ name: echo, url: "http://{upstream}" }}]
wasm_services:
  - {{ name: fetcher, wasm: "{conformance}", vm_id: shared-vm, {service} }}
filters:
  - {{ name: reader, wasm: "{conformance}", vm_id: shared-vm }}
  - {{ name: other, wasm: "{conformance}", vm_id: other-vm }}
routes:
  - {{ name: reader, match: {{ hosts: [reader.test] }}, service: echo, filters: [reader] }}
  - {{ name: other, match: {{ hosts: [other.test] }}, service: echo, filters: [other] }}
"#
    ))
}

/// A shared-data value of vm_id `shared-vm`, as the filter of `reader.test` reads it.
fn shared(gw: &Gateway, key: &str) -> Option<String> {
    let (status, body) = fetch(
        &gw.url(),
        "reader.test",
        &format!("/case/shared-get?key={key}"),
    );
    (status == 200).then(|| String::from_utf8(body).unwrap())
}

/// The service's tick count once its first tick has come (10 s at most).
fn first_ticks(gw: &Gateway) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(n) = shared(gw, "ticks") {
            return n.parse().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no tick in 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_wasm_service_ticks_on_no_route_and_fills_shared_data_the_filters_read() {
    let gw = with_wasm_service("singleton: true, config: { tick_ms: 50, count_key: services }");
    let ticks = || shared(&gw, "ticks").unwrap().parse::<u64>().unwrap();
    // The service's ticks come, and keep coming, on no route at all.
    let first = first_ticks(&gw);
    std::thread::sleep(Duration::from_millis(300));
    let later = ticks();
    assert!(
        later >= first + 2,
        "ticks {first} then {later} after 300 ms"
    );
    // One VM for the gateway: every worker's filter reads the one count, which grows
    // by about one per 50 ms (two per-worker services would write two counts).
    std::thread::sleep(Duration::from_millis(500));
    let after = ticks();
    assert!(
        (after - later) <= 15,
        "ticks went {later} -> {after} in 500 ms at one tick per 50 ms"
    );
    assert_eq!(
        shared(&gw, "services").as_deref(),
        Some("1"),
        "one singleton VM"
    );
    // Shared data is scoped by vm_id: a filter of another vm_id does not see it.
    assert_eq!(
        fetch(&gw.url(), "other.test", "/case/shared-get?key=ticks").0,
        404
    );
}

#[test]
fn a_wasm_service_per_worker_runs_on_every_worker() {
    let gw = with_wasm_service("config: { tick_ms: 100, count_queue: vms }");
    let a = first_ticks(&gw);
    // One VM per worker: two root contexts configured (each puts one item in the
    // queue), and ticks go on. The second worker's VM may start after the first tick
    // on a busy machine: wait for it, and never see a third.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut vms = 0;
    while vms < 2 {
        let (status, body) = fetch(
            &gw.url(),
            "reader.test",
            "/case/queue-drain?vm=shared-vm&name=vms",
        );
        assert_eq!(status, 200);
        vms += String::from_utf8(body).unwrap().parse::<u32>().unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "the second worker's VM did not start in 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(600));
    let (_, more) = fetch(
        &gw.url(),
        "reader.test",
        "/case/queue-drain?vm=shared-vm&name=vms",
    );
    assert_eq!(
        vms + String::from_utf8(more).unwrap().parse::<u32>().unwrap(),
        2,
        "one VM per worker, two workers"
    );
    let b: u64 = shared(&gw, "ticks").unwrap().parse().unwrap();
    assert!(b > a, "ticks {a} then {b}");
}

#[test]
fn a_wasm_service_calls_out_on_its_ticks_and_the_filters_read_the_answer() {
    let gw = with_wasm_service(
        "singleton: true, config: { tick_ms: 50, upstream: echo, tick_call: true }",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = shared(&gw, "tick-call-status") {
            assert_eq!(
                status, "200",
                "the service's http_call to the echo upstream"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no call answered in 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An upstream that tells when a request's head has arrived (before its body has),
/// then reads the chunked body to its end and answers 200 with what it got.
fn head_watching_upstream() -> (std::net::SocketAddr, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let mut head_told = false;
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                if !head_told && text.contains("\r\n\r\n") {
                    head_told = true;
                    let _ = tx.send(text.clone());
                }
                if text.ends_with("0\r\n\r\n") {
                    break;
                }
            }
            let body = String::from_utf8_lossy(&got).into_owned();
            let _ = tx.send(body.clone());
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    (addr, rx)
}

#[test]
fn a_filter_holding_the_headers_reads_the_body_as_with_envoys_allow_on_headers_stop_iteration() {
    let upstream = echo();
    let (watched, heads) = head_watching_upstream();
    let conformance = wasm("conformance_filter");
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services:
  - {{ name: echo, url: "http://{upstream}" }}
  - {{ name: watched, url: "http://{watched}" }}
  - {{ name: small, url: "http://{upstream}", max_request_body_bytes: 16 }}
  - {{ name: quick, url: "http://{upstream}", timeout_ms: 1000 }}
filters:
  - {{ name: holds, wasm: "{conformance}", config: {{ upstream: echo }}, allow_on_headers_stop_iteration: true }}
  - {{ name: pauses, wasm: "{conformance}", config: {{ upstream: echo }} }}
routes:
  - {{ name: holds, match: {{ hosts: [holds.test] }}, service: echo, filters: [holds] }}
  - {{ name: watched, match: {{ hosts: [watched.test] }}, service: watched, filters: [holds] }}
  - {{ name: small, match: {{ hosts: [small.test] }}, service: small, filters: [holds] }}
  - {{ name: pauses, match: {{ hosts: [pauses.test] }}, service: quick, filters: [pauses] }}
"#
    ));
    let addr = gw.url().trim_start_matches("http://").to_owned();
    let chunked = |host: &str, case: &str| {
        format!(
            "POST /case/{case} HTTP/1.1\r\nhost: {host}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )
    };

    // The body, sent in two chunks after a pause, reaches the filter while it holds
    // the headers; what it read is in a header the upstream gets with that body.
    let out = raw_request(
        &addr,
        &chunked("holds.test", "headers-wait-for-body"),
        Duration::from_millis(200),
        b"6\r\nhello \r\n4\r\nbody\r\n0\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(r#"["x-body-seen","hello body"]"#), "{out}");
    assert!(out.contains(r#""body":"hello body""#), "{out}");

    // Trailers instead of the body's end: they reach the holder, which may still
    // change the headers and read the body it held, and whose continuing lets the
    // headers go, then the body (as Envoy calls a holder's trailers callback).
    let out = raw_request(
        &addr,
        &chunked("holds.test", "headers-wait-for-body"),
        Duration::from_millis(200),
        b"6\r\nhello \r\n4\r\nbody\r\n0\r\nx-t: 1\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(r#"["x-trailers-at-holder","1"]"#), "{out}");
    assert!(
        out.contains(r#"["x-body-at-trailers","hello body"]"#),
        "{out}"
    );
    assert!(!out.contains("x-body-seen"), "the body never ended: {out}");
    assert!(out.contains(r#""body":"hello body""#), "{out}");

    // A filter that resumes after its call lets the headers go at once, without
    // waiting for the client's next bytes: the upstream has the head (with what the
    // call set) while the client still holds back the end of its body.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(chunked("watched.test", "headers-wait-for-call").as_bytes())
            .unwrap();
        s.write_all(b"5\r\nhello\r\n").unwrap();
        let head = heads
            .recv_timeout(Duration::from_secs(10))
            .expect("the upstream gets the head before the body ends");
        assert!(head.contains("x-call-status: 200"), "{head}");
        s.write_all(b"0\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let whole = heads.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(whole.contains("5\r\nhello\r\n"), "{whole}");
    }

    // What a filter holds while it reads the body is bounded by the service's limit.
    let out = raw_request(
        &addr,
        &chunked("small.test", "headers-wait-for-body"),
        Duration::from_millis(50),
        format!("40\r\n{}\r\n0\r\n\r\n", "x".repeat(64)).as_bytes(),
    );
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");

    // Without the option (Envoy's default), a filter paused in the headers gets no
    // body until it resumes: this one never does, and the request times out.
    let out = raw_request(
        &addr,
        &chunked("pauses.test", "headers-wait-for-body"),
        Duration::from_millis(50),
        b"4\r\nbody\r\n0\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    assert!(
        out.contains("did not let the request go on in time"),
        "{out}"
    );
}

/// The counters (`x-vm-counter-*`, `x-as-first`, `x-as-second`) in the responses to
/// two `GET /case/vm-counter` through `base`.
fn counters(base: &str) -> Vec<Vec<(String, String)>> {
    (0..2)
        .map(|_| {
            let res = send(base, "GET", "/case/vm-counter", &[("host", "vm.test")], b"")
                .unwrap_or_else(|e| panic!("GET {base}: {e}"));
            assert_eq!(res.status, 200, "{}", res.body);
            let mut seen: Vec<(String, String)> = res
                .headers
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("x-vm-") || *k == "x-as-first" || *k == "x-as-second"
                })
                .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
                .collect();
            seen.sort();
            seen
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn filters_of_one_vm_id_and_module_share_a_vm_with_a_root_context_each_as_in_envoy() {
    let upstream = echo();
    let conformance = wasm("conformance_filter");
    let as_conformance = wasm("as_conformance");
    // `a` and `b`: one module, one vm_id, two configurations and root ids: one VM, two
    // root contexts, `proxy_on_vm_start` run for each. `c`: another vm_id, its own VM. `first` and `second`: the
    // AssemblyScript module's two root contexts, picked by root_id, in one VM.
    let gw = Gateway::start(&format!(
        r#"
workers: 1
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
filters:
  - {{ name: a, wasm: "{conformance}", vm_id: shared, config: {{ upstream: one }} }}
  - {{ name: b, wasm: "{conformance}", vm_id: shared, config: {{ upstream: two }} }}
  - {{ name: c, wasm: "{conformance}", vm_id: other }}
  - {{ name: first, wasm: "{as_conformance}", vm_id: as, root_id: as_conformance, config: echo }}
  - {{ name: second, wasm: "{as_conformance}", vm_id: as, root_id: as_second, config: echo }}
routes:
  - {{ name: vm, match: {{ hosts: [vm.test] }}, service: echo, filters: [a, b, c, first, second] }}
  - {{ name: a, match: {{ hosts: [a.test] }}, service: echo, filters: [a] }}
  - {{ name: b, match: {{ hosts: [b.test] }}, service: echo, filters: [b] }}
"#
    ));
    let want = vec![
        pairs(&[
            ("x-as-first", "1"),
            ("x-as-second", "2"),
            ("x-vm-counter-a", "1"),
            ("x-vm-counter-b", "2"),
            ("x-vm-counter-c", "1"),
            ("x-vm-starts-a", "2"),
            ("x-vm-starts-b", "2"),
            ("x-vm-starts-c", "1"),
        ]),
        pairs(&[
            ("x-as-first", "3"),
            ("x-as-second", "4"),
            ("x-vm-counter-a", "3"),
            ("x-vm-counter-b", "4"),
            ("x-vm-counter-c", "2"),
            ("x-vm-starts-a", "2"),
            ("x-vm-starts-b", "2"),
            ("x-vm-starts-c", "1"),
        ]),
    ];
    assert_eq!(counters(&gw.url()), want);
    // Each root context has its own configuration in the shared VM.
    for (host, config) in [("a.test", "one"), ("b.test", "two")] {
        let res = get(&gw, "/case/config", &[("host", host)]);
        assert_eq!(res.status, 200, "{}", res.body);
        assert_eq!(res.json()["upstream"], config, "{host}: {}", res.body);
    }

    // The same filters in Envoy: the same counts.
    let mut cfg = EnvoyConfig::new(upstream);
    for (name, vm_id, config) in [
        ("a", "shared", r#"{"upstream": "one"}"#),
        ("b", "shared", r#"{"upstream": "two"}"#),
        ("c", "other", ""),
    ] {
        let mut f = WasmFilter::new(name, &conformance, config);
        f.vm_id = vm_id.into();
        cfg = cfg.filter(f);
    }
    for (name, root_id) in [("first", "as_conformance"), ("second", "as_second")] {
        let mut f = WasmFilter::new(name, &as_conformance, "echo");
        f.vm_id = "as".into();
        f.root_id = root_id.into();
        cfg = cfg.filter(f);
    }
    let envoy = Envoy::start(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://{}", envoy.listener);
    assert_eq!(counters(&base), want, "{}", envoy.log_text());
}
