//! The proxy-wasm glue: one read and one write of each header map per phase.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::config::Config;
use crate::ops;
use crate::template::{Facts, Part, Source};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { shared: None }));
}}

/// Where an auth filter leaves the credential it verified for this request.
pub const CREDENTIAL_PROPERTY: &str = kit::identity::CREDENTIAL_PROPERTY;

struct Shared {
    config: Config,
    needs: crate::template::Needs,
    blocked_metric: u32,
    uses_source_address: bool,
}

struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration();
        match Config::parse(bytes.as_deref()) {
            Ok(config) => {
                let uses_source_address = [&config.request, &config.response].iter().any(|p| {
                    p.replace
                        .iter()
                        .chain(&p.add)
                        .chain(&p.append)
                        .any(|(_, t)| {
                            t.parts
                                .iter()
                                .any(|x| *x == Part::Ref(Source::SourceAddress))
                        })
                });
                let blocked_metric = hostcalls::define_metric(
                    MetricType::Counter,
                    "header_forwarder_injection_blocked",
                )
                .unwrap_or(0);
                let needs = crate::template::Needs::of(
                    [&config.request, &config.response]
                        .into_iter()
                        .flat_map(|p| {
                            p.replace
                                .iter()
                                .chain(&p.add)
                                .chain(&p.append)
                                .chain(&p.query_replace)
                                .chain(&p.query_add)
                                .chain(&p.query_append)
                        })
                        .map(|(_, t)| t),
                );
                self.shared = Some(Rc::new(Shared {
                    config,
                    needs,
                    blocked_metric,
                    uses_source_address,
                }));
                true
            }
            Err(e) => {
                hostcalls::log(LogLevel::Error, &format!("header-forwarder: {e}")).ok();
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Forward {
            shared: self.shared.clone()?,
            facts: None,
        }))
    }
}

/// Writes back only the headers that changed: a host call per changed header costs
/// less than moving the whole map across the boundary and back.
fn write_back(
    outcome: &ops::Outcome,
    headers: &ops::Headers<'_>,
    set: impl Fn(&str, Option<&str>),
    add: impl Fn(&str, &str),
) {
    for name in &outcome.touched {
        let mut values = headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref());
        match values.next() {
            None => set(name, None),
            Some(first) => {
                set(name, Some(first));
                for v in values {
                    add(name, v);
                }
            }
        }
    }
}

struct Forward {
    shared: Rc<Shared>,
    /// The request as templates saw it, kept for the response phase.
    facts: Option<Facts>,
}

impl Forward {
    fn report(&self, blocked: &[String]) {
        for name in blocked {
            let _ = hostcalls::increment_metric(self.shared.blocked_metric, 1);
            hostcalls::log(LogLevel::Warn, &format!("header-forwarder: not setting `{name}`: its value would carry CR, LF or NUL (header injection)")).ok();
        }
    }
}

impl Context for Forward {}

impl HttpContext for Forward {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let shared = self.shared.clone();
        let c = &shared.config;
        let response_needs_facts = c.response.uses_templates();
        if c.request.is_empty() && !response_needs_facts && !c.forward_authorization {
            return Action::Continue;
        }
        let raw = kit::glue::RawMap::read(proxy_wasm::types::MapType::HttpRequestHeaders);
        let mut headers = raw.pairs();
        let source = if shared.uses_source_address {
            self.get_property(vec!["source", "address"])
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        } else {
            None
        };
        let credential = self.get_property(vec![CREDENTIAL_PROPERTY]);
        let mut facts = Facts::gather(&headers, source, Some(&shared.needs));
        facts.verified = credential.is_some();
        let mut outcome = ops::apply(&c.request, &mut headers, &facts, c.skip_missing);
        if c.forward_authorization {
            // The credential the auth filter verified wins over anything the transforms
            // or the client put in `authorization`.
            if let Some(cred) = &credential {
                // The common case (the client's own header, untouched) is found without
                // building the value: wasm's byte-wise memcmp and lossy decoder are
                // slow over a whole token.
                let is_it = |v: &str| {
                    v.strip_prefix("Bearer ")
                        .is_some_and(|t| kit::bytes::same(t.as_bytes(), cred))
                };
                let mut present = headers.iter().filter(|(k, _)| k == "authorization");
                let already =
                    present.next().is_some_and(|(_, v)| is_it(v)) && present.next().is_none();
                // An API key is no bearer token: it stays where the client put it. Asked
                // only when there is something to write (one host call fewer otherwise).
                let bearer = || {
                    self.get_property(vec![kit::identity::CREDENTIAL_KIND_PROPERTY])
                        .is_none_or(|k| k != kit::identity::API_KEY.as_bytes())
                };
                if !already && bearer() {
                    let value = match std::str::from_utf8(cred) {
                        Ok(t) => format!("Bearer {t}"),
                        Err(_) => format!("Bearer {}", String::from_utf8_lossy(cred)),
                    };
                    ops::set(&mut headers, "authorization", value);
                    outcome.touch("authorization");
                }
            }
        }
        write_back(
            &outcome,
            &headers,
            |k, v| self.set_http_request_header(k, v),
            |k, v| self.add_http_request_header(k, v),
        );
        self.report(&outcome.blocked);
        if response_needs_facts {
            self.facts = Some(facts);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let shared = self.shared.clone();
        let c = &shared.config;
        if c.response.is_empty() {
            return Action::Continue;
        }
        let facts = self.facts.take().unwrap_or_default();
        if c.response.rename.is_empty() && c.response.replace.is_empty() {
            // Remove, add and append need no look at the map: a call each.
            let mut blocked = Vec::new();
            for name in &c.response.remove {
                self.set_http_response_header(name, None);
            }
            for (name, t) in &c.response.add {
                if kit::glue::header(proxy_wasm::types::MapType::HttpResponseHeaders, name)
                    .is_none()
                {
                    match ops::value(name, t, &facts, c.skip_missing, &mut blocked) {
                        Some(v) => self.set_http_response_header(name, Some(&v)),
                        None => {}
                    }
                }
            }
            for (name, t) in &c.response.append {
                if let Some(v) = ops::value(name, t, &facts, c.skip_missing, &mut blocked) {
                    self.add_http_response_header(name, &v);
                }
            }
            self.report(&blocked);
            return Action::Continue;
        }
        let raw = kit::glue::RawMap::read(proxy_wasm::types::MapType::HttpResponseHeaders);
        let mut headers = raw.pairs();
        let outcome = ops::apply(&c.response, &mut headers, &facts, c.skip_missing);
        write_back(
            &outcome,
            &headers,
            |k, v| self.set_http_response_header(k, v),
            |k, v| self.add_http_response_header(k, v),
        );
        self.report(&outcome.blocked);
        Action::Continue
    }
}
