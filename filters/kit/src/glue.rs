//! Thin proxy-wasm helpers every filter's glue uses. Only compiled for wasm32.

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
