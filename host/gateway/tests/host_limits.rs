//! A hostile filter against the real gateway: what it asks the host to hold is refused
//! at the host's limits, and the gateway process's resident memory stays bounded.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

/// Resident memory of a process, from `/proc/<pid>/status` (`VmRSS`, in kB).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// The conformance filter on one worker (one VM, so one guest memory in the figure).
fn hostile_gateway(limits: &str) -> Gateway {
    let up = echo();
    Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
access_log: "off"
workers: 1
{limits}
services: [{{ name: backend, url: "http://{up}", max_request_body_bytes: 65536 }}]
filters: [{{ name: hostile, wasm: "{}", config: {{ upstream: backend }} }}]
routes: [{{ name: r, match: {{ paths: [/] }}, service: backend, filters: [hostile], strip_path: false }}]
"#,
        wasm("conformance_filter")
    ))
}

fn report(r: &Res, key: &str) -> String {
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no `{key}` in {:?}", r.body))
        .to_owned()
}

/// The issue's attacks, at the default limits: 100 writes of 64 MiB to shared data,
/// then 20 values of 1 MiB per request for 100 requests, then the same into a queue
/// nobody drains, then 2 MB of headers added to one request. Without limits the first
/// alone makes the host hold 6.4 GB.
///
/// The bound: what the gateway held after a warm-up in which the guest allocated its
/// 64 MiB buffer (so the VM's own memory is already counted), plus the two host
/// limits these requests can fill (64 MiB of shared data and 64 MiB of queued items
/// for the vm_id), plus 32 MiB for everything else (allocator slack, connection
/// buffers). It is checked after every request, so a gateway without limits fails at
/// the third 64 MiB write instead of taking the machine's memory.
#[test]
fn a_filter_flooding_shared_data_and_queues_is_refused_and_rss_stays_bounded() {
    let gw = hostile_gateway("");
    let pid = gw.child.id();
    // Warm-up: the guest's buffers, without storing anything.
    for size in [64 * MIB, MIB] {
        let r = get(&gw, &format!("/case/limit-shared?n=0&size={size}"), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let before = rss(pid);
    let bound = before + 64 * MIB + 64 * MIB + 32 * MIB;
    let check = |what: &str, i: usize| {
        let now = rss(pid);
        assert!(
            now <= bound,
            "{what} #{i}: RSS {} MiB, over the bound of {} MiB (it was {} MiB)",
            now / MIB,
            bound / MIB,
            before / MIB
        );
    };
    for i in 0..100 {
        let r = get(
            &gw,
            &format!("/case/limit-shared?n=1&size={}", 64 * MIB),
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        check("64 MiB value", i);
        assert_eq!(report(&r, "ok"), "0", "a 64 MiB value is never stored");
        assert_eq!(report(&r, "status"), "CasMismatch");
    }
    let mut stored = 0;
    for i in 0..100 {
        let r = get(&gw, &format!("/case/limit-shared?n=20&size={MIB}"), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        check("20 values of 1 MiB", i);
        stored += report(&r, "ok").parse::<u64>().expect("a count");
    }
    assert_eq!(
        stored, 63,
        "64 MiB of shared data holds 63 values of 1 MiB and their keys"
    );
    let mut queued = 0;
    for i in 0..100 {
        let r = get(&gw, &format!("/case/limit-queue?n=20&size={MIB}"), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        check("20 queued items of 1 MiB", i);
        queued += report(&r, "ok").parse::<u64>().expect("a count");
    }
    assert_eq!(queued, 64);
    // Headers: 2 MB added to one request's map; 1 MiB of it is taken.
    let r = get(&gw, "/case/limit-headers?n=200&size=10000", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    check("200 headers of 10 000 bytes", 0);
    let added: usize = report(&r, "ok").parse().expect("a count");
    assert!((100..=104).contains(&added), "{added} headers added");
    assert_eq!(report(&r, "status"), "InternalFailure");
    eprintln!(
        "RSS: {} MiB before, {} MiB after (bound {} MiB)",
        before / MIB,
        rss(pid) / MIB,
        bound / MIB
    );

    let admin = format!("http://127.0.0.1:{}", gw.admin);
    let m = send(&admin, "GET", "/metrics", &[], b"")
        .expect("metrics")
        .body;
    for (limit, n) in [
        ("value_bytes", 100),
        ("shared_data_bytes", 2000 - 63),
        ("queue_bytes", 2000 - 64),
        ("header_bytes", 200 - added),
    ] {
        let line = format!(
            "portcullis_host_limit_refusals_total{{filter=\"hostile\",limit=\"{limit}\"}} {n}"
        );
        assert!(m.contains(&line), "{line} in\n{m}");
    }
    // Logged, but not once per refusal.
    let lines = gw.stderr_text();
    let logged = lines.matches("host limit shared_data_bytes").count();
    assert!((1..100).contains(&logged), "{logged} lines");
    assert_eq!(get(&gw, "/case/headers", &[]).status, 200);
}

/// `limits:` in the configuration sets the host's limits; a body a filter grows
/// stops at the service's own body limit.
#[test]
fn limits_come_from_the_configuration_and_bodies_from_the_service() {
    let gw = hostile_gateway(
        "limits: { shared_data_keys: 10, calls_per_request: 2, header_bytes: 32768 }",
    );
    let r = get(&gw, "/case/limit-shared?n=15&size=1", &[]);
    assert_eq!(
        (report(&r, "ok").as_str(), report(&r, "status").as_str()),
        ("10", "CasMismatch")
    );
    let r = get(&gw, "/case/limit-calls?n=3", &[]);
    assert_eq!(
        (report(&r, "ok").as_str(), report(&r, "status").as_str()),
        ("2", "InternalFailure")
    );
    let r = get(&gw, "/case/limit-headers?n=5&size=10000", &[]);
    assert_eq!(
        (report(&r, "ok").as_str(), report(&r, "status").as_str()),
        ("3", "InternalFailure")
    );
    let r = send(
        &gw.url(),
        "POST",
        "/case/limit-body?size=65534",
        &[],
        b"abc",
    )
    .expect("answered");
    assert_eq!(report(&r, "status"), "InternalFailure", "{}", r.body);
    let r = send(
        &gw.url(),
        "POST",
        "/case/limit-body?size=65533",
        &[],
        b"abc",
    )
    .expect("answered");
    assert_eq!(report(&r, "status"), "Ok", "{}", r.body);
    assert_eq!(report(&r, "body_len"), "65536");
}

#[test]
fn a_bad_limit_is_a_configuration_error_naming_it() {
    let err = Gateway::try_start(
        r#"
listeners: [{ name: public, address: "127.0.0.1:{PORT}" }]
limits: { queues: 1, no_such_limit: 1 }
"#,
    )
    .err()
    .expect("refused");
    assert!(err.contains("no_such_limit"), "{err}");
    let err = Gateway::try_start(
        r#"
listeners: [{ name: public, address: "127.0.0.1:{PORT}" }]
limits: { queues: 0 }
"#,
    )
    .err()
    .expect("refused");
    assert!(err.contains("limits: queues must be positive"), "{err}");
}

/// A service that accepts connections and never answers; it counts those still open.
fn blackhole() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = l.local_addr().expect("bound");
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            count.fetch_add(1, Ordering::SeqCst);
            let count = count.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Calls a filter made without a timeout, to a service that never answers, go with
/// the filter when a configuration reload replaces it: neither the calls nor the old
/// VM they would keep alive outlive the configuration.
#[test]
fn a_configuration_reload_leaves_no_call_of_the_old_filters_behind() {
    let (hole, open) = blackhole();
    let up = echo();
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
workers: 1
services: [{{ name: backend, url: "http://{up}" }}, {{ name: hole, url: "http://{hole}" }}]
filters: [{{ name: hostile, wasm: "{}", config: {{ upstream: backend, blackhole: hole }} }}]
routes: [{{ name: r, match: {{ paths: [/] }}, service: backend, filters: [hostile], strip_path: false }}]
"#,
        wasm("conformance_filter")
    ));
    let r = get(
        &gw,
        "/case/limit-calls?n=3&cluster=blackhole&timeout=0",
        &[],
    );
    assert_eq!(report(&r, "ok"), "3", "{}", r.body);
    wait_for("three calls open", Duration::from_secs(5), || {
        open.load(Ordering::SeqCst) == 3
    });
    gw.signal("-HUP");
    wait_for("reloaded", Duration::from_secs(10), || {
        gw.logged("reloaded")
    });
    wait_for(
        "the old filter's calls closed",
        Duration::from_secs(5),
        || open.load(Ordering::SeqCst) == 0,
    );
    assert_eq!(get(&gw, "/case/headers", &[]).status, 200);
    assert!(gw.wait_exit(Duration::from_millis(10)).is_none());
}
