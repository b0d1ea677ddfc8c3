//! The proxy-wasm glue: identify, pick the plan, take from the shared buckets, answer
//! or let through with the limit headers.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::config::{Config, Identify, OnFull};
use crate::slots::{self, HashKey, Store, Taken};

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
    /// The slot table's keys: `tier-limiter/<root id>/slot/<i>`.
    prefix: String,
    /// The host's slot-placement key (zeros under the global policy, which has no
    /// table).
    hash_key: HashKey,
    allowed: u32,
    limited: u32,
    contended: u32,
    table_full: u32,
    global_failures: u32,
    /// When (s) this VM last logged a request that found no bucket: at most one line
    /// a second, whatever the rate of such requests.
    last_full_log: std::cell::Cell<u64>,
    /// Admitted requests not yet added to `allowed`: every admitted request counts
    /// here, and the tick adds them to the host's counter once a second (one host
    /// call fewer per request).
    pending_allowed: std::cell::Cell<u64>,
}

struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        match kit::glue::configure(self, "tier-limiter", Config::parse) {
            Some((config, root)) => {
                // One key for every VM of the host (they share the table): the first to
                // start draws it, the others read it from shared data.
                let hash_key = if config.global.is_some() {
                    [0; 16]
                } else {
                    let name = format!("tier-limiter/{root}/hash-key");
                    let mut random = |b: &mut [u8]| getrandom::fill(b).is_ok();
                    match slots::hash_key(&HostStore, &name, &mut random) {
                        Some(k) => k,
                        None => {
                            hostcalls::log(
                                LogLevel::Error,
                                "tier-limiter: no hash key for the bucket table (no randomness from the host, or shared data refused it)",
                            )
                            .ok();
                            return false;
                        }
                    }
                };
                let c = |n: &str| hostcalls::define_metric(MetricType::Counter, n).unwrap_or(0);
                self.shared = Some(Rc::new(Shared {
                    config,
                    prefix: format!("tier-limiter/{root}/slot/"),
                    hash_key,
                    allowed: c("tier_limiter_allowed"),
                    limited: c("tier_limiter_limited"),
                    contended: c("tier_limiter_contended"),
                    table_full: c("tier_limiter_table_full"),
                    global_failures: c("tier_limiter_global_failures"),
                    last_full_log: std::cell::Cell::new(0),
                    pending_allowed: std::cell::Cell::new(0),
                }));
                self.set_tick_period(std::time::Duration::from_secs(1));
                true
            }
            None => false,
        }
    }

    fn on_tick(&mut self) {
        if let Some(s) = &self.shared {
            let n = s.pending_allowed.replace(0);
            if n > 0 {
                let _ = hostcalls::increment_metric(s.allowed, n as i64);
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
            shared.pending_allowed.set(shared.pending_allowed.get() + 1);
            self.response_headers = headers;
            return Action::Continue;
        }
        let _ = hostcalls::increment_metric(shared.limited, 1);
        let request_id = kit::glue::request_id();
        let body = kit::reply::json_body(&c.error_message, request_id.as_deref());
        let retry = d.retry_after.to_string();
        let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.push(("retry-after", &retry));
        h.push(kit::reply::CONTENT_TYPE_JSON);
        self.send_http_response(c.error_code, h, Some(&body));
        Action::Pause
    }

    /// No bucket could be had for the request (`metric` says why): `on_full` decides.
    /// Denied, it gets `error_code` with a `Retry-After` of when a slot is free again.
    fn no_bucket(&mut self, metric: u32, retry_after: u64, why: &str) -> Action {
        let shared = self.shared.clone();
        let c = &shared.config;
        let _ = hostcalls::increment_metric(metric, 1);
        let now = kit::glue::now_secs();
        if shared.last_full_log.get() != now {
            shared.last_full_log.set(now);
            let outcome = match c.on_full {
                OnFull::Deny => "refused (on_full deny)",
                OnFull::Allow => "let through uncounted (on_full allow)",
            };
            hostcalls::log(
                LogLevel::Warn,
                &format!("tier-limiter: no bucket for a request ({why}); {outcome}"),
            )
            .ok();
        }
        if c.on_full == OnFull::Allow {
            return Action::Continue;
        }
        let request_id = kit::glue::request_id();
        let body = kit::reply::json_body(&c.error_message, request_id.as_deref());
        let retry = itoa::Buffer::new().format(retry_after).to_owned();
        self.send_http_response(
            c.error_code,
            vec![
                ("retry-after", retry.as_str()),
                kit::reply::CONTENT_TYPE_JSON,
            ],
            Some(&body),
        );
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
        let request_id = kit::glue::request_id();
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
            kit::glue::header(
                proxy_wasm::types::MapType::HttpRequestHeaders,
                kit::identity::CONSUMER_ID,
            )
        } else {
            None
        };
        let tier = if verified {
            kit::glue::header(
                proxy_wasm::types::MapType::HttpRequestHeaders,
                kit::identity::CONSUMER_TIER,
            )
        } else {
            None
        };
        let mut identity = None;
        for way in &c.identify_by {
            identity = match way {
                Identify::Consumer => consumer.clone().map(|c| format!("consumer:{c}")),
                // The value's bytes as they are: a lossy reading would count every
                // client whose key is not UTF-8 as one.
                Identify::Header(h) => proxy_wasm::hostcalls::get_map_value_bytes(
                    proxy_wasm::types::MapType::HttpRequestHeaders,
                    h,
                )
                .ok()
                .flatten()
                .filter(|v| !v.is_empty())
                .map(|v| match std::str::from_utf8(&v) {
                    Ok(text) => format!("{h}:{text}"),
                    Err(_) => {
                        let mut id = format!("{h}#");
                        crate::identity::push_hex(&mut id, &v);
                        id
                    }
                }),
                Identify::Ip => self.get_property(vec!["source", "address"]).map(|a| {
                    crate::address::identity(&String::from_utf8_lossy(&a), c.ipv6_prefix_length)
                }),
            };
            if identity.is_some() {
                break;
            }
        }
        let identity = crate::identity::bounded(identity.unwrap_or_else(|| "anonymous".to_owned()));
        let plan = c.plan_for(consumer.as_deref(), tier.as_deref());
        let now = self
            .get_current_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        if let Some(g) = &c.global {
            let message = crate::global::request(&g.domain, plan, &identity);
            let sent = self.dispatch_grpc_call(
                &g.cluster,
                portcullis_rls::SERVICE,
                portcullis_rls::METHOD,
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
            &shared.hash_key,
            plan,
            &identity,
            now,
        ) {
            Taken::Decided(d) => self.act(plan, &d),
            Taken::Full { retry_after } => {
                self.no_bucket(shared.table_full, retry_after, "the bucket table is full")
            }
            Taken::Contended => self.no_bucket(
                shared.contended,
                1,
                "the store kept refusing the bucket's update",
            ),
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for (k, v) in std::mem::take(&mut self.response_headers) {
            self.set_http_response_header(k, Some(&v));
        }
        Action::Continue
    }
}
