//! The gateway's YAML configuration: Kong's entities (services, routes, plugins, which
//! we call filters) plus listeners and an admin address. Parsed and checked whole at
//! the edge; what comes out of [`load`] is trusted by the rest of the gateway.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis_engine::{CompiledModule, Engine, FailurePolicy, HostLimits, VmLimits};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    #[serde(default)]
    pub filters: Vec<ModuleConfig>,
    /// VMs on no route (Envoy's wasm services).
    #[serde(default)]
    pub wasm_services: Vec<ModuleConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Worker threads (default: the number of cores).
    #[serde(default)]
    pub workers: Option<usize>,
    /// `stdout` (default), `off`, or a file path.
    #[serde(default)]
    pub access_log: Option<String>,
    /// How long SIGTERM waits for requests in flight.
    #[serde(default = "default_drain")]
    pub drain_timeout_ms: u64,
    /// Header names removed from every client request besides the identity contract's
    /// own (`x-consumer-*`, `x-credential-identifier`, `x-anonymous-consumer`): those
    /// an auth filter sets from verified claims (`claim_to_headers`, a payload header).
    #[serde(default)]
    pub identity_headers: Vec<String>,
    /// What filters may make the host hold (the engine's [`HostLimits`]).
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// The `limits:` section: any of the engine's host limits, the rest at their
/// defaults. A body a filter rewrites is bounded by its service's body limits instead;
/// `body_bytes` bounds the body of a filter's own reply.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub shared_data_bytes: Option<usize>,
    pub shared_data_keys: Option<usize>,
    pub value_bytes: Option<usize>,
    pub key_bytes: Option<usize>,
    pub property_bytes: Option<usize>,
    pub body_bytes: Option<usize>,
    pub header_bytes: Option<usize>,
    pub calls_per_request: Option<usize>,
    pub calls_per_vm: Option<usize>,
    pub call_bytes: Option<usize>,
    pub queues: Option<usize>,
    pub queue_bytes: Option<usize>,
    pub queue_items: Option<usize>,
    pub metrics: Option<usize>,
    pub metric_name_bytes: Option<usize>,
    pub table_elements: Option<usize>,
    pub log_bytes: Option<usize>,
}

impl LimitsConfig {
    /// The engine's limits with these set; a zero is an error naming the field.
    fn apply(&self, errors: &mut Vec<String>) -> HostLimits {
        let mut l = HostLimits::default();
        let fields: [(&str, Option<usize>, &mut usize); 17] = [
            (
                "shared_data_bytes",
                self.shared_data_bytes,
                &mut l.shared_data_bytes,
            ),
            (
                "shared_data_keys",
                self.shared_data_keys,
                &mut l.shared_data_keys,
            ),
            ("value_bytes", self.value_bytes, &mut l.value_bytes),
            ("key_bytes", self.key_bytes, &mut l.key_bytes),
            ("property_bytes", self.property_bytes, &mut l.property_bytes),
            ("body_bytes", self.body_bytes, &mut l.body_bytes),
            ("header_bytes", self.header_bytes, &mut l.header_bytes),
            (
                "calls_per_request",
                self.calls_per_request,
                &mut l.calls_per_request,
            ),
            ("calls_per_vm", self.calls_per_vm, &mut l.calls_per_vm),
            ("call_bytes", self.call_bytes, &mut l.call_bytes),
            ("queues", self.queues, &mut l.queues),
            ("queue_bytes", self.queue_bytes, &mut l.queue_bytes),
            ("queue_items", self.queue_items, &mut l.queue_items),
            ("metrics", self.metrics, &mut l.metrics),
            (
                "metric_name_bytes",
                self.metric_name_bytes,
                &mut l.metric_name_bytes,
            ),
            ("table_elements", self.table_elements, &mut l.table_elements),
            ("log_bytes", self.log_bytes, &mut l.log_bytes),
        ];
        for (name, set, field) in fields {
            match set {
                Some(0) => errors.push(format!("limits: {name} must be positive")),
                Some(v) => *field = v,
                None => {}
            }
        }
        l
    }
}

fn default_drain() -> u64 {
    15_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Request header limits (Envoy's defaults: 60 KiB, 100 headers).
    #[serde(default = "default_headers_kb")]
    pub max_request_headers_kb: usize,
    #[serde(default = "default_headers_count")]
    pub max_request_headers_count: usize,
    /// What `%2F` and `%5C` in a path get: `reject` (400, the default), `keep`, or
    /// `unescape` (Envoy's `path_with_escaped_slashes_action`).
    #[serde(default)]
    pub escaped_slashes: crate::path::EscapedSlashes,
    /// Peers (CIDRs or addresses) whose forwarding headers are believed (Kong's
    /// `trusted_ips`). Empty by default: every client's are replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Limits on clients; see `crate::downstream::ClientLimits` for the defaults.
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub request_headers_timeout_ms: Option<u64>,
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default)]
    pub http2_max_concurrent_streams: Option<u32>,
}

fn default_headers_kb() -> usize {
    60
}

fn default_headers_count() -> usize {
    100
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default = "default_connect")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_read")]
    pub read_timeout_ms: u64,
    #[serde(default = "default_total")]
    pub timeout_ms: u64,
    #[serde(default = "default_body")]
    pub max_request_body_bytes: u64,
    #[serde(default = "default_body")]
    pub max_response_body_bytes: u64,
    /// For `https://` URLs: trust only the CAs in this PEM file instead of the
    /// system's certificate store.
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_connect() -> u64 {
    1_000
}
fn default_read() -> u64 {
    15_000
}
fn default_total() -> u64 {
    60_000
}
fn default_body() -> u64 {
    10 << 20
}

/// A filter (`filters:`) or a wasm service (`wasm_services:`): a module, its
/// configuration and its VM. `failure_policy` and `allow_on_headers_stop_iteration`
/// are a filter's only (no request waits on a service); `singleton` is a service's
/// only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    pub name: String,
    pub wasm: PathBuf,
    /// The filter's configuration (`proxy_on_configure`'s bytes), given as Envoy gives
    /// a `google.protobuf.StringValue`: a YAML string as its raw bytes, a mapping or a
    /// sequence as JSON text.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// The filter's configuration read from a file, byte for byte (text or binary).
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    /// The VM's configuration (`proxy_on_vm_start`'s bytes, Envoy's
    /// `vm_config.configuration`), by the same rule as `config`.
    #[serde(default)]
    pub vm_config: Option<serde_json::Value>,
    /// The VM's configuration read from a file, byte for byte.
    #[serde(default)]
    pub vm_config_file: Option<PathBuf>,
    #[serde(default)]
    pub failure_policy: Option<String>,
    /// A pause in `on_http_request_headers` holds only the headers, and the filter
    /// still gets the body (Envoy's `allow_on_headers_stop_iteration`; off, as in
    /// Envoy: the body then waits with the headers).
    #[serde(default)]
    pub allow_on_headers_stop_iteration: bool,
    /// Filters with the same `vm_id` share shared data and queues, and those that
    /// also share the module (and VM configuration, limits and failure policy) run in
    /// one VM per worker, a root context each (default: the filter's name).
    #[serde(default)]
    pub vm_id: Option<String>,
    /// The root context's id (`plugin_root_id`; an SDK may pick one of several root
    /// contexts a module registers by it). Default: the filter's name.
    #[serde(default)]
    pub root_id: Option<String>,
    #[serde(default)]
    pub memory_limit_mb: Option<usize>,
    #[serde(default)]
    pub callback_timeout_ms: Option<u64>,
    /// Envoy's `singleton`, for a wasm service: one VM for the whole gateway; false
    /// (Envoy's default): one per worker.
    #[serde(default)]
    pub singleton: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: MatchConfig,
    pub service: String,
    #[serde(default)]
    pub filters: Vec<String>,
    /// Kong's `strip_path`: remove the matched path prefix before proxying (Kong's
    /// default, true).
    #[serde(default = "yes")]
    pub strip_path: bool,
    /// Kong's `preserve_host`: send the client's Host upstream instead of the
    /// service's (Kong's default, false).
    #[serde(default)]
    pub preserve_host: bool,
    /// Keep the identity headers a trusted proxy (the listener's `trusted_proxies`)
    /// sent, for a route behind an inner hop that authenticated the request already.
    #[serde(default)]
    pub trust_identity_headers: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Kong's `paths`: plain prefixes (`/health` matches `/healthcare` too).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Envoy's `path_separated_prefix`: `/health` matches `/health` and `/health/x`,
    /// not `/healthcare`.
    #[serde(default)]
    pub path_separated_prefixes: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Kong's regex paths (`~/users/\d+` in Kong 3, without the `~` here): matched at
    /// the start of the normalized path by a linear-time engine (the `regex` crate).
    /// A route matched by one wins over prefix routes of the same host rank; among
    /// them the higher `regex_priority` wins. `strip_path` removes the whole match.
    #[serde(default)]
    pub regex_paths: Vec<String>,
    #[serde(default)]
    pub regex_priority: i64,
}

/// A checked configuration, with every module compiled and every filter's
/// configuration accepted by the filter itself.
pub struct Plan {
    pub listeners: Vec<Listener>,
    pub admin: Option<SocketAddr>,
    pub services: Vec<Arc<Service>>,
    pub filters: Vec<Arc<FilterPlan>>,
    pub wasm_services: Vec<WasmServicePlan>,
    pub routes: Vec<Arc<Route>>,
    pub workers: usize,
    pub access_log: Option<String>,
    pub drain_timeout: Duration,
    /// Extra identity header names stripped from client requests (lower case, `_`
    /// written `-`).
    pub identity_headers: Vec<String>,
    pub limits: HostLimits,
}

pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_headers_bytes: usize,
    pub max_headers_count: usize,
    pub escaped_slashes: crate::path::EscapedSlashes,
    pub trusted_proxies: crate::edge::Trusted,
    pub clients: crate::downstream::ClientLimits,
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub urls: Vec<http::Uri>,
    /// The URLs' path (Kong's service `path`), put before the request's path
    /// upstream; `None` for `/` or none.
    pub base_path: Option<String>,
    /// `http` or `https`, the same for every URL of the service.
    pub scheme: http::uri::Scheme,
    /// The TLS client configuration, for an `https` service.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub timeout: Duration,
    pub max_request_body: u64,
    pub max_response_body: u64,
}

/// A wasm service: a VM on no route (Envoy's `envoy.bootstrap.wasm`), for the work of
/// a whole `vm_id` (fetching what the filters read from shared data, ticks).
pub struct WasmServicePlan {
    pub filter: Arc<FilterPlan>,
    /// One VM for the whole gateway (on its own thread) rather than one per worker.
    pub singleton: bool,
}

pub struct FilterPlan {
    pub name: String,
    pub module: Arc<CompiledModule>,
    pub configuration: Vec<u8>,
    pub vm_configuration: Vec<u8>,
    pub failure_policy: FailurePolicy,
    pub allow_on_headers_stop_iteration: bool,
    pub vm_id: String,
    pub root_id: String,
    pub limits: VmLimits,
}

#[derive(Debug)]
pub struct Route {
    /// Position in the configuration (the worker keeps each route's chain there).
    pub index: usize,
    pub name: String,
    pub matches: MatchConfig,
    pub service: usize,
    pub filters: Vec<usize>,
    pub strip_path: bool,
    pub preserve_host: bool,
    pub trust_identity_headers: bool,
    /// `matches.regex_paths`, compiled and anchored at the start.
    pub regexes: Vec<regex::Regex>,
}

/// Reads, parses and checks a configuration file. Every problem found is reported
/// (not only the first), each naming the entity and field.
pub fn load(path: &Path, engine: &Engine) -> Result<Plan, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    let file: ConfigFile = serde_norway::from_str(&text).map_err(|e| vec![yaml_error(path, &e)])?;
    let base = path.parent().unwrap_or(Path::new("."));
    check(file, base, engine)
}

/// A YAML error as compilers give theirs: `FILE:LINE:COLUMN: FIELD: what is wrong`
/// (the field path comes from serde_norway; the location moves to the front).
fn yaml_error(path: &Path, e: &serde_norway::Error) -> String {
    let message = e.to_string();
    match e.location() {
        Some(at) => {
            let suffix = format!(" at line {} column {}", at.line(), at.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message);
            format!(
                "{}:{}:{}: {message}",
                path.display(),
                at.line(),
                at.column()
            )
        }
        None => format!("{}: {message}", path.display()),
    }
}

pub fn check(file: ConfigFile, base: &Path, engine: &Engine) -> Result<Plan, Vec<String>> {
    let mut errors = Vec::new();
    let limits = file.limits.apply(&mut errors);
    if file.listeners.is_empty() {
        errors.push("listeners: at least one listener is needed".into());
    }
    let mut listeners = Vec::new();
    for l in &file.listeners {
        let address = match l.address.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(format!(
                    "listener `{}`: address `{}`: {e} (expected IP:PORT)",
                    l.name, l.address
                ));
                None
            }
        };
        let tls = match &l.tls {
            None => None,
            Some(t) => {
                match crate::tls::server_config(&resolve(base, &t.cert), &resolve(base, &t.key)) {
                    Ok(c) => Some(Arc::new(c)),
                    Err(e) => {
                        errors.push(format!("listener `{}`: tls: {e}", l.name));
                        None
                    }
                }
            }
        };
        // Checked: a wrapped product would be a limit of a few bytes (or none).
        let max_headers_bytes = l.max_request_headers_kb.checked_mul(1024);
        if max_headers_bytes.is_none() {
            errors.push(format!(
                "listener `{}`: max_request_headers_kb {} is too large",
                l.name, l.max_request_headers_kb
            ));
        }
        let mut nets = Vec::new();
        for t in &l.trusted_proxies {
            match crate::edge::parse_net(t) {
                Ok(n) => nets.push(n),
                Err(e) => errors.push(format!("listener `{}`: trusted_proxies: {e}", l.name)),
            }
        }
        let mut clients = crate::downstream::ClientLimits::default();
        if let Some(n) = l.max_connections {
            clients.max_connections = n;
        }
        if let Some(ms) = l.request_headers_timeout_ms {
            clients.request_headers_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = l.idle_timeout_ms {
            clients.idle_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = l.http2_max_concurrent_streams {
            clients.http2_max_concurrent_streams = n;
        }
        // An HTTP/2 header block as large as the listener's header limit, plus
        // HPACK's 32 bytes of accounting per header.
        clients.http2_max_header_list_bytes = max_headers_bytes
            .and_then(|b| b.checked_add(l.max_request_headers_count.checked_mul(32)?))
            .and_then(|b| u32::try_from(b).ok())
            .unwrap_or(u32::MAX);
        for (field, zero) in [
            ("max_connections", clients.max_connections == 0),
            (
                "request_headers_timeout_ms",
                clients.request_headers_timeout.is_zero(),
            ),
            ("idle_timeout_ms", clients.idle_timeout.is_zero()),
            (
                "http2_max_concurrent_streams",
                clients.http2_max_concurrent_streams == 0,
            ),
        ] {
            if zero {
                errors.push(format!("listener `{}`: {field} must be positive", l.name));
            }
        }
        if let (Some(address), Some(max_headers_bytes)) = (address, max_headers_bytes) {
            listeners.push(Listener {
                name: l.name.clone(),
                address,
                tls,
                max_headers_bytes,
                max_headers_count: l.max_request_headers_count,
                escaped_slashes: l.escaped_slashes,
                trusted_proxies: crate::edge::Trusted::new(nets),
                clients,
            });
        }
    }
    let admin = file
        .admin
        .as_ref()
        .and_then(|a| match a.address.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(format!(
                    "admin: address `{}`: {e} (expected IP:PORT)",
                    a.address
                ));
                None
            }
        });
    let mut services = Vec::new();
    let mut service_index = HashMap::new();
    for s in &file.services {
        if service_index
            .insert(s.name.clone(), services.len())
            .is_some()
        {
            errors.push(format!("service `{}`: defined twice", s.name));
        }
        let raw: Vec<&String> = s.url.iter().chain(s.urls.iter()).collect();
        if raw.is_empty() {
            errors.push(format!("service `{}`: needs `url` or `urls`", s.name));
        }
        let mut urls = Vec::new();
        for u in raw {
            match u.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.authority().is_some() =>
                {
                    urls.push(uri)
                }
                Ok(_) => errors.push(format!(
                    "service `{}`: url `{u}`: expected http://HOST:PORT or https://HOST:PORT",
                    s.name
                )),
                Err(e) => errors.push(format!("service `{}`: url `{u}`: {e}", s.name)),
            }
        }
        let https = urls.iter().any(|u| u.scheme_str() == Some("https"));
        if https && urls.iter().any(|u| u.scheme_str() == Some("http")) {
            errors.push(format!("service `{}`: its urls mix http and https", s.name));
        }
        let tls = match (&s.ca_file, https) {
            (Some(_), false) => {
                errors.push(format!("service `{}`: ca_file is for https urls", s.name));
                None
            }
            (ca_file, true) => {
                match portcullis_clients::tls::client_config(ca_file.as_deref().map(Path::new)) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        errors.push(format!("service `{}`: {e}", s.name));
                        None
                    }
                }
            }
            (None, false) => None,
        };
        // Kong's service `path`: one for every URL of the service.
        let paths: Vec<&str> = urls.iter().map(|u| u.path()).collect();
        if paths.iter().any(|p| *p != paths[0]) {
            errors.push(format!(
                "service `{}`: its urls have different paths",
                s.name
            ));
        }
        if urls.iter().any(|u| u.query().is_some()) {
            errors.push(format!("service `{}`: a url has a query", s.name));
        }
        let base_path = paths
            .first()
            .filter(|p| !p.is_empty() && **p != "/")
            .map(|p| p.to_string());
        for (field, v) in [
            ("connect_timeout_ms", s.connect_timeout_ms),
            ("read_timeout_ms", s.read_timeout_ms),
            ("timeout_ms", s.timeout_ms),
        ] {
            if v == 0 {
                errors.push(format!("service `{}`: {field} must be positive", s.name));
            }
        }
        services.push(Arc::new(Service {
            name: s.name.clone(),
            urls,
            base_path,
            scheme: if https {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            },
            tls,
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            read_timeout: Duration::from_millis(s.read_timeout_ms),
            timeout: Duration::from_millis(s.timeout_ms),
            max_request_body: s.max_request_body_bytes,
            max_response_body: s.max_response_body_bytes,
        }));
    }
    let mut filters = Vec::new();
    let mut filter_index = HashMap::new();
    for f in &file.filters {
        if filter_index.insert(f.name.clone(), filters.len()).is_some() {
            errors.push(format!("filter `{}`: defined twice", f.name));
        }
        if f.singleton {
            errors.push(format!(
                "filter `{}`: `singleton` is a wasm service's field (a filter runs in each worker)",
                f.name
            ));
        }
        filters.extend(filter_plan(f, "filter", base, engine, &mut errors).map(Arc::new));
    }
    let mut wasm_services = Vec::new();
    let mut service_names = HashSet::new();
    for w in &file.wasm_services {
        if !service_names.insert(w.name.as_str()) {
            errors.push(format!("wasm service `{}`: defined twice", w.name));
        }
        for (given, field) in [
            (w.failure_policy.is_some(), "failure_policy"),
            (
                w.allow_on_headers_stop_iteration,
                "allow_on_headers_stop_iteration",
            ),
        ] {
            if given {
                errors.push(format!(
                    "wasm service `{}`: `{field}` is a filter's field (no request waits on a wasm service)",
                    w.name
                ));
            }
        }
        if let Some(plan) = filter_plan(w, "wasm service", base, engine, &mut errors) {
            wasm_services.push(WasmServicePlan {
                filter: Arc::new(plan),
                singleton: w.singleton,
            });
        }
    }
    let mut routes = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    // In the form the edge compares a request's names in (`_` read as `-`): else
    // `x_tenant_id` here would match neither spelling a client sends.
    let identity_headers: Vec<String> = file
        .identity_headers
        .iter()
        .map(|h| h.to_ascii_lowercase().replace('_', "-"))
        .collect();
    for r in &file.routes {
        let service = match service_index.get(&r.service) {
            Some(i) => *i,
            None => {
                errors.push(format!(
                    "route `{}`: unknown service `{}`",
                    r.name, r.service
                ));
                0
            }
        };
        let mut fidx = Vec::new();
        for f in &r.filters {
            match filter_index.get(f) {
                Some(i) => fidx.push(*i),
                None => errors.push(format!("route `{}`: unknown filter `{f}`", r.name)),
            }
        }
        let matches = normalize(&r.matches);
        for p in &matches.paths {
            if !p.starts_with('/') {
                errors.push(format!(
                    "route `{}`: path `{p}` must start with `/` (a regular expression goes in `regex_paths`)",
                    r.name
                ));
            }
        }
        for p in &matches.path_separated_prefixes {
            if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) {
                errors.push(format!(
                    "route `{}`: path_separated_prefixes: `{p}` must start with `/` and not end with one",
                    r.name
                ));
            }
        }
        for p in matches.paths.iter().chain(&matches.path_separated_prefixes) {
            if matches!(crate::path::normalize(p, crate::path::EscapedSlashes::Keep), Ok(n) if n != p.as_str())
            {
                errors.push(format!(
                    "route `{}`: path `{p}` is not in normal form (requests are normalized before routing, so it could never match as written)",
                    r.name
                ));
            }
        }
        // A route that does not trust identity headers forwards none: one in its match
        // rules would route on a value stripped before the request leaves, which nobody
        // verified (a client behind a trusted proxy would choose the route).
        if !r.trust_identity_headers {
            for name in matches.headers.keys() {
                if crate::edge::is_identity(name, &identity_headers) {
                    errors.push(format!(
                        "route `{}`: matches on identity header `{name}`, which it removes before forwarding (only a route with trust_identity_headers: true, reached through a trusted proxy, keeps it)",
                        r.name
                    ));
                }
            }
        }
        let mut regexes = Vec::new();
        for p in &matches.regex_paths {
            // Anchored at the start, as Kong anchors them; bounded in size, and linear
            // in the path's length whatever the pattern. The pattern must stand on its
            // own first: `/x)|(/admin` would otherwise close the anchoring group and
            // add an unanchored alternative.
            if let Err(e) = regex::RegexBuilder::new(p).size_limit(1 << 20).build() {
                errors.push(format!(
                    "route `{}`: regex path `{p}`: {}",
                    r.name,
                    e.to_string().lines().last().unwrap_or("invalid")
                ));
                continue;
            }
            match regex::RegexBuilder::new(&format!("^(?:{p})"))
                .size_limit(1 << 20)
                .build()
            {
                Ok(re) => regexes.push(re),
                Err(e) => errors.push(format!(
                    "route `{}`: regex path `{p}`: {}",
                    r.name,
                    e.to_string().lines().last().unwrap_or("invalid")
                )),
            }
        }
        let key = format!("{matches:?}");
        if let Some(other) = seen.insert(key, r.name.clone()) {
            errors.push(format!(
                "routes `{other}` and `{}` have identical match rules: which one a request takes would be arbitrary",
                r.name
            ));
        }
        routes.push(Arc::new(Route {
            index: routes.len(),
            name: r.name.clone(),
            matches,
            service,
            filters: fidx,
            strip_path: r.strip_path,
            preserve_host: r.preserve_host,
            trust_identity_headers: r.trust_identity_headers,
            regexes,
        }));
    }
    for h in &file.identity_headers {
        if http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).is_err() {
            errors.push(format!("identity_headers: `{h}` is not a header name"));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let workers = file
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    Ok(Plan {
        listeners,
        admin,
        services,
        filters: filters.into_iter().collect(),
        wasm_services,
        routes,
        workers,
        access_log: match file.access_log.as_deref() {
            Some("off") => None,
            Some(p) => Some(p.to_owned()),
            None => Some("stdout".to_owned()),
        },
        drain_timeout: Duration::from_millis(file.drain_timeout_ms),
        identity_headers,
        limits,
    })
}

/// A filter's (or a wasm service's) plan: its configuration bytes, limits and module.
/// Problems are added to `errors`, each naming `what` and the name.
fn filter_plan(
    f: &ModuleConfig,
    what: &str,
    base: &Path,
    engine: &Engine,
    errors: &mut Vec<String>,
) -> Option<FilterPlan> {
    let name = &f.name;
    let failure_policy = match f
        .failure_policy
        .as_deref()
        .map(str::parse::<FailurePolicy>)
        .transpose()
    {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            errors.push(format!("{what} `{name}`: {e}"));
            FailurePolicy::default()
        }
    };
    let mut bytes = |field: &str, inline: &Option<serde_json::Value>, file: &Option<PathBuf>| match (
        inline, file,
    ) {
        (Some(_), Some(_)) => {
            errors.push(format!(
                "{what} `{name}`: `{field}` and `{field}_file` both given: choose one"
            ));
            Vec::new()
        }
        (Some(v), None) => plugin_bytes(v),
        (None, Some(path)) => std::fs::read(resolve(base, path)).unwrap_or_else(|e| {
            errors.push(format!(
                "{what} `{name}`: {field}_file `{}`: {e}",
                path.display()
            ));
            Vec::new()
        }),
        (None, None) => Vec::new(),
    };
    let configuration = bytes("config", &f.config, &f.config_file);
    let vm_configuration = bytes("vm_config", &f.vm_config, &f.vm_config_file);
    let mut limits = VmLimits::default();
    if let Some(mb) = f.memory_limit_mb {
        // `mb << 20` would drop the high bits: a huge limit turned into a small one.
        match mb.checked_mul(1 << 20) {
            Some(bytes) => limits.memory_bytes = bytes,
            None => errors.push(format!(
                "{what} `{name}`: memory_limit_mb {mb} is too large"
            )),
        }
    }
    if let Some(ms) = f.callback_timeout_ms {
        limits.callback_timeout = Duration::from_millis(ms.max(1));
    }
    match engine.load_file(&resolve(base, &f.wasm)) {
        Ok(module) => Some(FilterPlan {
            name: name.clone(),
            module,
            configuration,
            vm_configuration,
            failure_policy,
            allow_on_headers_stop_iteration: f.allow_on_headers_stop_iteration,
            vm_id: f.vm_id.clone().unwrap_or_else(|| name.clone()),
            root_id: f.root_id.clone().unwrap_or_else(|| name.clone()),
            limits,
        }),
        Err(e) => {
            errors.push(format!("{what} `{name}`: wasm `{}`: {e}", f.wasm.display()));
            None
        }
    }
}

/// A configuration value as the filter receives it, the way Envoy hands over a
/// `StringValue`: a string is its own bytes (no quotes), null is empty, anything else
/// is its JSON text.
fn plugin_bytes(value: &serde_json::Value) -> Vec<u8> {
    match value {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        serde_json::Value::Null => Vec::new(),
        other => other.to_string().into_bytes(),
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Match rules in a canonical form: hosts lower-case, methods upper-case, all sorted,
/// so two routes that match the same requests compare equal. A host loses one trailing
/// dot, as a request's Host does (`crate::edge::normalize_host`).
fn normalize(m: &MatchConfig) -> MatchConfig {
    let mut hosts: Vec<String> = m
        .hosts
        .iter()
        .map(|h| h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase())
        .collect();
    hosts.sort();
    hosts.dedup();
    let mut paths = m.paths.clone();
    paths.sort();
    paths.dedup();
    let mut path_separated_prefixes = m.path_separated_prefixes.clone();
    path_separated_prefixes.sort();
    path_separated_prefixes.dedup();
    let mut methods: Vec<String> = m.methods.iter().map(|x| x.to_ascii_uppercase()).collect();
    methods.sort();
    methods.dedup();
    let headers = m
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let mut regex_paths = m.regex_paths.clone();
    regex_paths.sort();
    regex_paths.dedup();
    MatchConfig {
        hosts,
        paths,
        path_separated_prefixes,
        methods,
        headers,
        regex_paths,
        regex_priority: m.regex_priority,
    }
}
