//! A filter that makes the host calls its configuration lists and nothing else.
//! Configured `{"setup": [...], "calls": [...], "response_calls": [...]}`: `calls` in
//! `on_http_request_headers`, `response_calls` in `on_http_response_headers` (where
//! the header calls act on the response's headers), `setup` once in `on_configure` (a
//! `shared_set` there gives a `shared_get` something to find). Each call is one of:
//!
//! ```text
//! headers                 read the whole request header map (as jwt-auth does: the
//!                         serialized map, not decoded into strings)
//! header NAME             read one request header
//! set_header NAME VALUE   set a request header
//! remove_header NAME      remove a request header
//! property PATH           read a property, its segments split by `/` (`request/path`)
//! set_property NAME VALUE set a stream property
//! shared_get KEY          read shared data
//! shared_set KEY VALUE    write shared data
//! time                    read the current time
//! copy BYTES              no host call: copy BYTES bytes inside the filter, a hundred
//!                         times (`memory.copy`: what a host's wasm runtime makes of it)
//! ```
//!
//! With the calls a real filter makes, it prices them with none of that filter's work:
//! the floor under any filter that has to make those calls (`compare`, jwt section).
#![cfg(target_arch = "wasm32")]

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root { calls: Rc::default() }));
}}

enum Call {
    Headers,
    Header(String),
    SetHeader(String, String),
    RemoveHeader(String),
    Property(String),
    SetProperty(String, String),
    SharedGet(String),
    SharedSet(String, String),
    Time,
    Copy(usize),
}

fn parse(line: &str) -> Option<Call> {
    let mut words = line.split_whitespace();
    let call = match (words.next()?, words.next(), words.next()) {
        ("headers", None, None) => Call::Headers,
        ("header", Some(n), None) => Call::Header(n.into()),
        ("set_header", Some(n), Some(v)) => Call::SetHeader(n.into(), v.into()),
        ("remove_header", Some(n), None) => Call::RemoveHeader(n.into()),
        ("property", Some(n), None) => Call::Property(n.into()),
        ("set_property", Some(n), Some(v)) => Call::SetProperty(n.into(), v.into()),
        ("shared_get", Some(k), None) => Call::SharedGet(k.into()),
        ("shared_set", Some(k), Some(v)) => Call::SharedSet(k.into(), v.into()),
        ("time", None, None) => Call::Time,
        ("copy", Some(n), None) => Call::Copy(n.parse().ok()?),
        _ => return None,
    };
    words.next().is_none().then_some(call)
}

struct Root {
    calls: Rc<Lists>,
}

#[derive(Default)]
struct Lists {
    request: Vec<Call>,
    response: Vec<Call>,
}

impl Context for Root {}

/// The calls listed under `field`, none when it is absent.
fn listed(config: &serde_json::Value, field: &str) -> Result<Vec<Call>, String> {
    let Some(calls) = config.get(field) else {
        return Ok(Vec::new());
    };
    calls
        .as_array()
        .ok_or(format!("`{field}` is not a list"))?
        .iter()
        .map(|c| {
            c.as_str()
                .and_then(parse)
                .ok_or_else(|| format!("unknown call {c}"))
        })
        .collect()
}

/// Makes `call`; header calls act on `map`.
fn make(call: &Call, map: MapType) {
    // The answers are dropped: the calls are what is measured.
    let _ = match call {
        Call::Headers => {
            drop(kit::glue::RawMap::read(map));
            Ok(())
        }
        Call::Header(n) => hostcalls::get_map_value(map, n).map(drop),
        Call::SetHeader(n, v) => hostcalls::set_map_value(map, n, Some(v)),
        Call::RemoveHeader(n) => hostcalls::set_map_value(map, n, None),
        Call::Property(n) => hostcalls::get_property(n.split('/').collect()).map(drop),
        Call::SetProperty(n, v) => hostcalls::set_property(vec![n], Some(v.as_bytes())),
        Call::SharedGet(k) => hostcalls::get_shared_data(k).map(drop),
        Call::SharedSet(k, v) => hostcalls::set_shared_data(k, Some(v.as_bytes()), None),
        Call::Time => hostcalls::get_current_time().map(drop),
        Call::Copy(n) => {
            let from = vec![7u8; *n];
            let mut to = vec![0u8; *n];
            for _ in 0..100 {
                // A length the compiler cannot see: a real memory.copy each time.
                let len = std::hint::black_box(*n);
                to[..len].copy_from_slice(&from[..len]);
                std::hint::black_box(&mut to);
            }
            Ok(())
        }
    };
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let parsed = if config.iter().all(u8::is_ascii_whitespace) {
            Ok((Vec::new(), Lists::default()))
        } else {
            serde_json::from_slice::<serde_json::Value>(&config)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    let lists = Lists {
                        request: listed(&v, "calls")?,
                        response: listed(&v, "response_calls")?,
                    };
                    Ok((listed(&v, "setup")?, lists))
                })
        };
        let (setup, calls) = match parsed {
            Ok(lists) => lists,
            Err(e) => {
                hostcalls::log(proxy_wasm::types::LogLevel::Error, &format!("calls: {e}")).ok();
                return false;
            }
        };
        setup
            .iter()
            .for_each(|c| make(c, MapType::HttpRequestHeaders));
        self.calls = Rc::new(calls);
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Calls {
            calls: self.calls.clone(),
        }))
    }
}

struct Calls {
    calls: Rc<Lists>,
}

impl Context for Calls {}

impl HttpContext for Calls {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        for c in &self.calls.request {
            make(c, MapType::HttpRequestHeaders);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for c in &self.calls.response {
            make(c, MapType::HttpResponseHeaders);
        }
        Action::Continue
    }
}
