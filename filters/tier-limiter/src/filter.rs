//! The proxy-wasm glue: identify, pick the plan, take from the shared buckets, answer
//! or let through with the limit headers.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::config::{Config, Identify};
use crate::slots::{self, Store, Taken};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { shared: None }));
}}

struct HostStore;

impl Store for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(v), Some(cas))) => Some((v, cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        hostcalls::set_shared_data(key, Some(value), if cas == 0 { None } else { Some(cas) })
            .is_ok()
    }
}

struct Shared {
    config: Config,
    prefix: String,
    allowed: u32,
    limited: u32,
    contended: u32,
    global_failures: u32,
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
                let root = self
                    .get_property(vec!["plugin_root_id"])
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let c = |n: &str| hostcalls::define_metric(MetricType::Counter, n).unwrap_or(0);
                self.shared = Some(Rc::new(Shared {
                    config,
                    prefix: format!("tier-limiter/{root}/"),
                    allowed: c("tier_limiter_allowed"),
                    limited: c("tier_limiter_limited"),
                    contended: c("tier_limiter_contended"),
                    global_failures: c("tier_limiter_global_failures"),
                }));
                true
            }
            Err(e) => {
                hostcalls::log(LogLevel::Error, &format!("tier-limiter: {e}")).ok();
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Limit {
            shared: self.shared.clone()?,
            response_headers: Vec::new(),
            waiting: None,
        }))
    }
}

struct Limit {
    shared: Rc<Shared>,
    /// The limit headers, added to the upstream's response.
    response_headers: Vec<(&'static str, String)>,
    /// The plan a global-policy request is waiting on the service for.
    waiting: Option<(u32, crate::config::Plan)>,
}

impl Limit {
    /// Lets the request through with the limit headers, or answers it.
    fn act(&mut self, plan: &crate::config::Plan, d: &crate::bucket::Decision) -> Action {
        let shared = self.shared.clone();
        let c = &shared.config;
        let headers = crate::headers::for_decision(c, plan, d);
        if d.allowed {
            let _ = hostcalls::increment_metric(shared.allowed, 1);
            self.response_headers = headers;
            return Action::Continue;
        }
        let _ = hostcalls::increment_metric(shared.limited, 1);
        let request_id = self.get_http_request_header("x-request-id");
        let body = kit::reply::json_body(&c.error_message, request_id.as_deref());
        let retry = d.retry_after.to_string();
        let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.push(("retry-after", &retry));
        h.push(kit::reply::CONTENT_TYPE_JSON);
        self.send_http_response(c.error_code, h, Some(&body));
        Action::Pause
    }

    /// The rate-limit service failed or was too slow: `failure_mode` decides.
    fn global_failure(&mut self, why: &str) -> Action {
        let shared = self.shared.clone();
        let _ = hostcalls::increment_metric(shared.global_failures, 1);
        let open = shared.config.global.as_ref().is_none_or(|g| g.fail_open);
        hostcalls::log(
            LogLevel::Warn,
            &format!(
                "tier-limiter: rate-limit service: {why}; request {}",
                if open {
                    "let through (failure_mode open)"
                } else {
                    "refused (failure_mode closed)"
                }
            ),
        )
        .ok();
        if open {
            return Action::Continue;
        }
        let request_id = self.get_http_request_header("x-request-id");
        let body = kit::reply::json_body("rate-limit service unavailable", request_id.as_deref());
        self.send_http_response(503, vec![kit::reply::CONTENT_TYPE_JSON], Some(&body));
        Action::Pause
    }
}

impl Context for Limit {
    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        let Some((t, plan)) = self.waiting.take() else {
            return;
        };
        if t != token {
            return;
        }
        let action = if status_code != 0 {
            self.global_failure(&format!("gRPC status {status_code}"))
        } else {
            let answer = self
                .get_grpc_call_response_body(0, response_size)
                .unwrap_or_default();
            match crate::global::decision(&plan, &answer) {
                Some(d) => self.act(&plan, &d),
                None => self.global_failure("an answer that is not a RateLimitResponse"),
            }
        };
        if action == Action::Continue {
            self.resume_http_request();
        }
    }
}

impl HttpContext for Limit {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let shared = self.shared.clone();
        let c = &shared.config;
        // Identity counts only when an auth filter verified it; otherwise the identity
        // headers are the client's own words.
        let verified = self
            .get_property(vec![kit::identity::CREDENTIAL_PROPERTY])
            .is_some();
        let consumer = if verified {
            self.get_http_request_header(kit::identity::CONSUMER_ID)
        } else {
            None
        };
        let tier = if verified {
            self.get_http_request_header(kit::identity::CONSUMER_TIER)
        } else {
            None
        };
        let mut identity = None;
        for way in &c.identify_by {
            identity = match way {
                Identify::Consumer => consumer.clone().map(|c| format!("consumer:{c}")),
                Identify::Header(h) => self
                    .get_http_request_header(h)
                    .filter(|v| !v.is_empty())
                    .map(|v| format!("{h}:{v}")),
                Identify::Ip => self
                    .get_property(vec!["source", "address"])
                    .map(|a| {
                        String::from_utf8_lossy(&a).rsplit_once(':').map_or_else(
                            || String::from_utf8_lossy(&a).into_owned(),
                            |(ip, _)| ip.to_owned(),
                        )
                    })
                    .map(|ip| format!("ip:{ip}")),
            };
            if identity.is_some() {
                break;
            }
        }
        let identity = identity.unwrap_or_else(|| "anonymous".to_owned());
        let plan = c.plan_for(consumer.as_deref(), tier.as_deref());
        let now = self
            .get_current_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        if let Some(g) = &c.global {
            let message = crate::global::request(&g.domain, plan, &identity);
            let sent = self.dispatch_grpc_call(
                &g.cluster,
                kit::ratelimit::SERVICE,
                kit::ratelimit::METHOD,
                vec![],
                Some(&message),
                std::time::Duration::from_millis(g.timeout_ms),
            );
            return match sent {
                Ok(token) => {
                    self.waiting = Some((token, plan.clone()));
                    Action::Pause
                }
                Err(e) => {
                    self.global_failure(&format!("cannot call cluster `{}`: {e:?}", g.cluster))
                }
            };
        }
        match slots::take(
            &HostStore,
            &shared.prefix,
            c.max_buckets,
            plan,
            &identity,
            now,
        ) {
            Taken::Decided(d) => self.act(plan, &d),
            Taken::Contended => {
                // Fail open: a full table of active consumers must not stop traffic.
                let _ = hostcalls::increment_metric(shared.contended, 1);
                hostcalls::log(LogLevel::Warn, "tier-limiter: no bucket for this consumer (table full or contended); request let through").ok();
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for (k, v) in std::mem::take(&mut self.response_headers) {
            self.set_http_response_header(k, Some(&v));
        }
        Action::Continue
    }
}
