//! Thin proxy-wasm helpers every filter's glue uses. Only compiled for wasm32.

use std::borrow::Cow;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

/// Registers a root context that accepts a JSON-object configuration (or none) and
/// passes every request through untouched: the state of a filter whose policy has
/// not landed yet, so every test can already load all four filters.
pub fn install_pass_through(filter: &'static str) {
    proxy_wasm::set_log_level(LogLevel::Info);
    FILTER_NAME.with(|n| n.set(filter));
    proxy_wasm::set_root_context(|_| {
        Box::new(PassThroughRoot {
            filter: FILTER_NAME.with(|n| n.get()),
        })
    });
}

thread_local! {
    // The SDK takes a plain fn for the root-context factory, so the name travels here.
    static FILTER_NAME: std::cell::Cell<&'static str> = const { std::cell::Cell::new("filter") };
}

struct PassThroughRoot {
    filter: &'static str,
}

impl Context for PassThroughRoot {}

impl RootContext for PassThroughRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration();
        match crate::config::parse::<serde_json::Map<String, serde_json::Value>>(bytes.as_deref()) {
            Ok(_) => true,
            Err(e) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &format!("{}: {e}", self.filter)).ok();
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PassThrough))
    }
}

struct PassThrough;
impl Context for PassThrough {}
impl HttpContext for PassThrough {}

/// A header map read in one host call, kept as the bytes the host sent: the pairs
/// borrow from it, so reading a map costs one allocation instead of two per header
/// (the SDK's `get_http_request_headers` makes a `String` of every name and value).
pub struct RawMap {
    buf: Vec<u8>,
}

#[allow(unsafe_code)]
#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
}

/// Borrowed when valid UTF-8 (checked with the standard library's ASCII fast path,
/// several times faster in wasm than the lossy decoder), lossy otherwise.
fn utf8(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

impl RawMap {
    /// Reads map `map_type` (0 request headers, 2 response headers); empty when the host
    /// has none to give.
    #[allow(unsafe_code)]
    pub fn read(map_type: proxy_wasm::types::MapType) -> RawMap {
        let mut ptr: *mut u8 = std::ptr::null_mut();
        let mut len: usize = 0;
        // SAFETY: on Ok the host wrote a pointer it got from this module's allocator
        // (`proxy_on_memory_allocate`, which hands out a boxed slice of exactly `len`
        // bytes), so this module owns it and may rebuild the Vec.
        let buf = unsafe {
            if proxy_get_header_map_pairs(map_type as u32, &mut ptr, &mut len) == 0
                && !ptr.is_null()
            {
                Vec::from_raw_parts(ptr, len, len)
            } else {
                Vec::new()
            }
        };
        RawMap { buf }
    }

    /// The pairs in order. A malformed map is empty; a name or value that is not UTF-8
    /// is kept lossily (the SDK would panic on it).
    pub fn pairs(&self) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
        let b = &self.buf;
        let u32_at = |i: usize| {
            b.get(i..i + 4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
        };
        let Some(n) = u32_at(0) else {
            return Vec::new();
        };
        if n.saturating_mul(10).saturating_add(4) > b.len() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(n);
        let mut at = 4 + n * 8;
        for i in 0..n {
            let (Some(kl), Some(vl)) = (u32_at(4 + i * 8), u32_at(8 + i * 8)) else {
                return Vec::new();
            };
            let (Some(k), Some(v)) = (b.get(at..at + kl), b.get(at + kl + 1..at + kl + 1 + vl))
            else {
                return Vec::new();
            };
            at += kl + vl + 2;
            out.push((utf8(k), utf8(v)));
        }
        out
    }
}

/// A u64 kept in shared data (a timestamp, a lease's end), with its CAS; 0 when absent
/// or shorter than 8 bytes.
pub fn read_u64(key: &str) -> (u64, Option<u32>) {
    match proxy_wasm::hostcalls::get_shared_data(key) {
        Ok((Some(b), cas)) if b.len() >= 8 => {
            (u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])), cas)
        }
        Ok((_, cas)) => (0, cas),
        Err(_) => (0, None),
    }
}

/// Writes a u64 to shared data (with `cas`, as proxy-wasm: `None` unconditionally);
/// false on a CAS mismatch.
pub fn write_u64(key: &str, v: u64, cas: Option<u32>) -> bool {
    proxy_wasm::hostcalls::set_shared_data(key, Some(&v.to_le_bytes()), cas).is_ok()
}

/// Creates `key` holding the u64 0 when it is absent, so that a lease kept there is
/// won by CAS from the start: proxy-wasm (Envoy, and our host) accepts any CAS for an
/// absent key, so two VMs racing for a key never written would both win it.
pub fn create_u64(key: &str) {
    if !matches!(
        proxy_wasm::hostcalls::get_shared_data(key),
        Ok((Some(_), _))
    ) {
        write_u64(key, 0, None);
    }
}

/// What a filter's `on_configure` starts with: the plugin configuration parsed by
/// `parse` (`None`, logged as `<filter>: <error>`, when refused) and the root id the
/// host gave (`plugin_root_id`; "" when none), under which the filter keys its shared
/// data.
pub fn configure<C, E: std::fmt::Display>(
    ctx: &dyn RootContext,
    filter: &str,
    parse: impl FnOnce(Option<&[u8]>) -> Result<C, E>,
) -> Option<(C, String)> {
    let bytes = ctx.get_plugin_configuration();
    match parse(bytes.as_deref()) {
        Ok(config) => {
            let root_id = ctx
                .get_property(vec!["plugin_root_id"])
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            Some((config, root_id))
        }
        Err(e) => {
            proxy_wasm::hostcalls::log(LogLevel::Error, &format!("{filter}: {e}")).ok();
            None
        }
    }
}

/// A header's value, not necessarily UTF-8 (HTTP allows obs-text, and Envoy passes a
/// client's or an upstream's bytes on): the SDK's string getters panic on such a value,
/// which in a fail-closed filter turns one request into an outage.
pub fn header(map: proxy_wasm::types::MapType, name: &str) -> Option<String> {
    proxy_wasm::hostcalls::get_map_value_bytes(map, name)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The request's `x-request-id`, for a local reply's body.
pub fn request_id() -> Option<String> {
    header(
        proxy_wasm::types::MapType::HttpRequestHeaders,
        "x-request-id",
    )
}

/// GETs a JSON document (a JWKS, a discovery document, a key service's consumers)
/// from `cluster` with `http_call`; `authority` defaults to the cluster's name.
pub fn get_json(
    ctx: &dyn Context,
    cluster: &str,
    path: &str,
    authority: Option<&str>,
    timeout_ms: u64,
) -> Result<u32, proxy_wasm::types::Status> {
    let headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", authority.unwrap_or(cluster)),
        ("accept", "application/json"),
    ];
    ctx.dispatch_http_call(
        cluster,
        headers,
        None,
        vec![],
        std::time::Duration::from_millis(timeout_ms),
    )
}

/// Stores a document fetched from an IdP (JWKS, discovery) under `key` as the fetch
/// time followed by the body. With `None` (the fetch failed) only the time is
/// written, and only when nothing was fetched before: serving a stale document beats
/// refusing everyone.
pub fn store_fetched(key: &str, body: Option<&[u8]>, now: u64) {
    use proxy_wasm::hostcalls::{get_shared_data, set_shared_data};
    match body {
        Some(body) => {
            let mut v = now.to_le_bytes().to_vec();
            v.extend_from_slice(body);
            let _ = set_shared_data(key, Some(&v), None);
        }
        None => {
            let stale = matches!(get_shared_data(key), Ok((Some(b), _)) if b.len() > 8);
            if !stale {
                let _ = set_shared_data(key, Some(&now.to_le_bytes()), None);
            }
        }
    }
}

/// The host's clock in whole seconds since the epoch (0 if it cannot say).
pub fn now_secs() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}
