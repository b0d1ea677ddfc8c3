//! The gateway's YAML configuration: `serde_norway` into `portcullis::config::ConfigFile`
//! and the whole of `config::check` with a real engine, on any text.
//!
//! The paths the file names (filter modules, TLS certificates and keys, CA files)
//! are pointed at files made here at start (a minimal proxy-wasm module, a fresh
//! self-signed certificate), keeping which ones are set: the fuzzer explores the
//! configuration, not the machine's file system.
//!
//! Invariants: no panic; a plan that checks is one the gateway can run: a listener,
//! a worker, routes that name existing services and filters by index, paths that
//! start with `/`, header limits and timeouts as written (no wrapped arithmetic).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portcullis::config::{ConfigFile, check};
use portcullis_engine::{Engine, EngineConfig};

/// `(module (func (export "proxy_abi_version_0_2_1")))`, encoded by hand.
const MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // types: () -> ()
    0x03, 0x02, 0x01, 0x00, // functions: one of type 0
    0x07, 0x1b, 0x01, 0x17, b'p', b'r', b'o', b'x', b'y', b'_', b'a', b'b', b'i', b'_', b'v',
    b'e', b'r', b's', b'i', b'o', b'n', b'_', b'0', b'_', b'2', b'_', b'1', 0x00, 0x00, // export
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code: an empty body
];

struct World {
    engine: Engine,
    module: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portcullis-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let module = dir.join("module.wasm");
        std::fs::write(&module, MODULE).expect("write the module");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .expect("a self-signed certificate");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).expect("write the certificate");
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write the key");
        let engine = Engine::new(EngineConfig {
            cache_dir: None,
            ..EngineConfig::default()
        })
        .expect("an engine");
        engine.load(MODULE).expect("the minimal module loads");
        World {
            engine,
            module,
            cert,
            key,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut file) = serde_norway::from_str::<ConfigFile>(text) else {
        return;
    };
    for l in &mut file.listeners {
        if let Some(t) = &mut l.tls {
            t.cert = w.cert.clone();
            t.key = w.key.clone();
        }
    }
    for s in &mut file.services {
        if s.ca_file.is_some() {
            s.ca_file = Some(w.cert.display().to_string());
        }
    }
    for f in &mut file.filters {
        f.wasm = w.module.clone();
    }
    let headers: Vec<(usize, usize)> = file
        .listeners
        .iter()
        .map(|l| (l.max_request_headers_kb, l.max_request_headers_count))
        .collect();
    let timeouts: Vec<u64> = file.services.iter().map(|s| s.timeout_ms).collect();
    let filter_mb: Vec<Option<usize>> = file.filters.iter().map(|f| f.memory_limit_mb).collect();
    let drain = file.drain_timeout_ms;
    let Ok(plan) = check(file, Path::new("/nonexistent"), &w.engine) else {
        return;
    };
    assert!(!plan.listeners.is_empty());
    assert!(plan.workers >= 1);
    assert_eq!(plan.drain_timeout, Duration::from_millis(drain));
    // Listeners with an unparsable address are errors, so all of them are here.
    assert_eq!(plan.listeners.len(), headers.len());
    for (l, (kb, count)) in plan.listeners.iter().zip(&headers) {
        assert_eq!(l.max_headers_bytes as u128, *kb as u128 * 1024, "header limit wrapped");
        assert_eq!(l.max_headers_count, *count);
    }
    for (s, ms) in plan.services.iter().zip(&timeouts) {
        assert!(!s.urls.is_empty());
        assert_eq!(s.timeout, Duration::from_millis(*ms));
        assert!(s.timeout > Duration::ZERO);
    }
    for (f, mb) in plan.filters.iter().zip(&filter_mb) {
        if let Some(mb) = mb {
            assert_eq!(f.limits.memory_bytes as u128, *mb as u128 * (1 << 20), "memory limit wrapped");
        }
    }
    for (i, r) in plan.routes.iter().enumerate() {
        assert_eq!(r.index, i);
        assert!(r.service < plan.services.len());
        assert!(r.filters.iter().all(|&f| f < plan.filters.len()));
        assert!(r.matches.paths.iter().all(|p| p.starts_with('/')));
    }
});
