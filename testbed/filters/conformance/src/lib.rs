//! The conformance filter: each request path `/case/<name>` exercises one host
//! behaviour and reports what it observed, so the same `.wasm` can be run in our host
//! and in Envoy and the answers compared. Some cases misbehave on purpose (trap, loop,
//! bad pointers, memory bomb) to check that a host survives a hostile filter.
//!
//! A case answers with a local reply whose body is `key=value` lines, or lets the
//! request through to the upstream with changes the upstream can see.
//!
//! The `limit-*` cases ask the host to hold more than it should (shared data, queues,
//! properties, bodies, calls, metrics), as many times and as large as the query says
//! (`?n=20&size=1048576`), through the raw host calls, and report how many calls were
//! accepted and the status of the first refused one. They are host-specific (Envoy has
//! no such limits) and stay out of the parity suite.
//!
//! Configuration (JSON): `{"upstream": "<cluster>", "blackhole": "<cluster>",
//! "refused": "<cluster>", "grpc": "<cluster>"}`: a cluster that answers, one that
//! accepts connections and never answers, one whose port is closed, a gRPC service.
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used)] // a test filter: a panic is an observable outcome

use std::cell::RefCell;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

mod raw {
    // Host calls with every argument a plain i32, for the "raw" case.
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        #[link_name = "proxy_log"]
        pub fn log3(a: u32, b: u32, c: u32) -> u32;
        #[link_name = "proxy_get_header_map_value"]
        pub fn get_header5(a: u32, b: u32, c: u32, d: u32, e: u32) -> u32;
        #[link_name = "proxy_get_header_map_pairs"]
        pub fn get_pairs3(a: u32, b: u32, c: u32) -> u32;
        #[link_name = "proxy_set_header_map_pairs"]
        pub fn set_pairs3(a: u32, b: u32, c: u32) -> u32;
        #[link_name = "proxy_add_header_map_value"]
        pub fn add_header5(a: u32, b: u32, c: u32, d: u32, e: u32) -> u32;
        #[link_name = "proxy_replace_header_map_value"]
        pub fn replace_header5(a: u32, b: u32, c: u32, d: u32, e: u32) -> u32;
        #[link_name = "proxy_get_property"]
        pub fn get_property4(a: u32, b: u32, c: u32, d: u32) -> u32;
        #[link_name = "proxy_set_property"]
        pub fn set_property4(a: u32, b: u32, c: u32, d: u32) -> u32;
        #[link_name = "proxy_get_buffer_bytes"]
        pub fn get_buffer5(a: u32, b: u32, c: u32, d: u32, e: u32) -> u32;
        #[link_name = "proxy_set_buffer_bytes"]
        pub fn set_buffer5(a: u32, b: u32, c: u32, d: u32, e: u32) -> u32;
        #[link_name = "proxy_get_shared_data"]
        pub fn get_shared5(a: u32, b: u32, c: u32, d: u32, e: u32) -> u32;
        #[link_name = "proxy_set_shared_data"]
        pub fn set_shared5(a: u32, b: u32, c: u32, d: u32, e: u32) -> u32;
        #[link_name = "proxy_send_local_response"]
        pub fn local_response8(
            a: u32,
            b: u32,
            c: u32,
            d: u32,
            e: u32,
            f: u32,
            g: u32,
            h: u32,
        ) -> u32;
        #[link_name = "proxy_http_call"]
        pub fn http_call10(
            a: u32,
            b: u32,
            c: u32,
            d: u32,
            e: u32,
            f: u32,
            g: u32,
            h: u32,
            i: u32,
            j: u32,
        ) -> u32;
        #[link_name = "proxy_define_metric"]
        pub fn define_metric4(a: u32, b: u32, c: u32, d: u32) -> u32;
        #[link_name = "proxy_register_shared_queue"]
        pub fn register_queue3(a: u32, b: u32, c: u32) -> u32;
        #[link_name = "proxy_enqueue_shared_queue"]
        pub fn enqueue3(a: u32, b: u32, c: u32) -> u32;
        #[link_name = "proxy_grpc_cancel"]
        pub fn grpc_cancel1(a: u32) -> u32;
        #[link_name = "proxy_grpc_send"]
        pub fn grpc_send4(a: u32, b: u32, c: u32, d: u32) -> u32;
        #[link_name = "proxy_grpc_call"]
        pub fn grpc_call12(
            a: u32,
            b: u32,
            c: u32,
            d: u32,
            e: u32,
            f: u32,
            g: u32,
            h: u32,
            i: u32,
            j: u32,
            k: u32,
            l: u32,
        ) -> u32;
        #[link_name = "proxy_get_current_time_nanoseconds"]
        pub fn time1(a: u32) -> u32;
        #[link_name = "proxy_set_effective_context"]
        pub fn effective1(a: u32) -> u32;
        #[link_name = "proxy_continue_stream"]
        pub fn continue1(a: u32) -> u32;
    }

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        #[link_name = "fd_write"]
        pub fn fd_write4(a: u32, b: u32, c: u32, d: u32) -> u32;
        #[link_name = "random_get"]
        pub fn random_get2(a: u32, b: u32) -> u32;
    }

    /// Calls host function `name` with `args` (missing ones are 0). `None`: unknown.
    pub fn call(name: &str, args: &[u32]) -> Option<u32> {
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        // SAFETY: deliberately none. The host must survive whatever these arguments
        // are; the filter may corrupt its own memory, which only this filter pays for.
        unsafe {
            Some(match name {
                "proxy_log" => log3(a(0), a(1), a(2)),
                "proxy_get_header_map_value" => get_header5(a(0), a(1), a(2), a(3), a(4)),
                "proxy_get_header_map_pairs" => get_pairs3(a(0), a(1), a(2)),
                "proxy_set_header_map_pairs" => set_pairs3(a(0), a(1), a(2)),
                "proxy_add_header_map_value" => add_header5(a(0), a(1), a(2), a(3), a(4)),
                "proxy_replace_header_map_value" => replace_header5(a(0), a(1), a(2), a(3), a(4)),
                "proxy_get_property" => get_property4(a(0), a(1), a(2), a(3)),
                "proxy_set_property" => set_property4(a(0), a(1), a(2), a(3)),
                "proxy_get_buffer_bytes" => get_buffer5(a(0), a(1), a(2), a(3), a(4)),
                "proxy_set_buffer_bytes" => set_buffer5(a(0), a(1), a(2), a(3), a(4)),
                "proxy_get_shared_data" => get_shared5(a(0), a(1), a(2), a(3), a(4)),
                "proxy_set_shared_data" => set_shared5(a(0), a(1), a(2), a(3), a(4)),
                "proxy_send_local_response" => {
                    local_response8(a(0), a(1), a(2), a(3), a(4), a(5), a(6), a(7))
                }
                "proxy_http_call" => {
                    http_call10(a(0), a(1), a(2), a(3), a(4), a(5), a(6), a(7), a(8), a(9))
                }
                "proxy_define_metric" => define_metric4(a(0), a(1), a(2), a(3)),
                "proxy_register_shared_queue" => register_queue3(a(0), a(1), a(2)),
                "proxy_enqueue_shared_queue" => enqueue3(a(0), a(1), a(2)),
                "proxy_get_current_time_nanoseconds" => time1(a(0)),
                "proxy_set_effective_context" => effective1(a(0)),
                "proxy_continue_stream" => continue1(a(0)),
                "fd_write" => fd_write4(a(0), a(1), a(2), a(3)),
                "random_get" => random_get2(a(0), a(1)),
                _ => return None,
            })
        }
    }

    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn proxy_get_header_map_value(
            t: u32,
            kp: *const u8,
            kl: usize,
            rp: *mut *mut u8,
            rl: *mut usize,
        ) -> u32;
        pub fn proxy_set_header_map_pairs(t: u32, p: *const u8, l: usize) -> u32;
        pub fn proxy_get_header_map_pairs(t: u32, rp: *mut *mut u8, rl: *mut usize) -> u32;
        pub fn proxy_log(level: u32, p: *const u8, l: usize) -> u32;
        pub fn proxy_grpc_call(
            up: *const u8,
            ul: usize,
            sp: *const u8,
            sl: usize,
            mp: *const u8,
            ml: usize,
            ip: *const u8,
            il: usize,
            msgp: *const u8,
            msgl: usize,
            timeout: u32,
            rt: *mut u32,
        ) -> u32;
        pub fn proxy_http_call(
            up: *const u8,
            ul: usize,
            hp: *const u8,
            hl: usize,
            bp: *const u8,
            bl: usize,
            tp: *const u8,
            tl: usize,
            timeout: u32,
            rt: *mut u32,
        ) -> u32;
    }
}

#[derive(Default, Clone)]
struct Config {
    /// The plugin configuration's bytes as the host gave them.
    raw: Vec<u8>,
    upstream: String,
    blackhole: String,
    refused: String,
    grpc: String,
    /// `trap_on_body_chunk`: the request body chunk this plugin traps on, passing
    /// every other chunk on whatever the case (a VM that fails under another plugin
    /// sharing it).
    trap_on_body_chunk: Option<u64>,
}

thread_local! {
    static QUEUE: RefCell<u32> = const { RefCell::new(0) };
    /// The VM configuration's bytes, as `proxy_on_vm_start` was given them.
    static VM_CONFIG: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// What reading the plugin configuration from past its end gave in on_configure.
    static PAST_END: RefCell<String> = const { RefCell::new(String::new()) };
    /// What stream calls made from the root context in on_configure answered.
    static ROOT_CALLS: RefCell<String> = const { RefCell::new(String::new()) };
    /// `vm-counter` requests this VM has served, whichever plugin served them: plugins
    /// that share a VM share its memory.
    static VM_COUNTER: RefCell<u64> = const { RefCell::new(0) };
    /// How many times `proxy_on_vm_start` ran in this VM.
    static VM_STARTS: RefCell<u64> = const { RefCell::new(0) };
}

/// The guest address of `b`, as the raw host calls take it (wasm32: 32-bit pointers).
fn addr(b: &[u8]) -> u32 {
    b.as_ptr() as usize as u32
}

/// A header map in the ABI's encoding: the count, each pair's sizes, then each name
/// and value followed by a NUL.
fn encode_pairs(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        for part in [k, v] {
            out.extend_from_slice(part);
            out.push(0);
        }
    }
    out
}

/// The outcome of `n` calls: how many were accepted, and the first refusal's status.
fn tally(statuses: impl IntoIterator<Item = u32>) -> Vec<(&'static str, String)> {
    let (mut ok, mut refused, mut first) = (0, 0, "none");
    for s in statuses {
        if s == 0 {
            ok += 1;
        } else {
            refused += 1;
            if first == "none" {
                first = status_name(s);
            }
        }
    }
    vec![
        ("ok", ok.to_string()),
        ("refused", refused.to_string()),
        ("status", first.to_owned()),
    ]
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(Root { config: Config::default(), ticks: 0, tick_call: false, tick_grpc: false, requeue: false, ready_calls: 0 }));
}}

struct Root {
    config: Config,
    ticks: u64,
    /// Call the upstream cluster on each tick (a wasm service's job: fetch, then let
    /// the workers read the result from shared data).
    tick_call: bool,
    /// Make a unary gRPC call to the `grpc` cluster on each tick.
    tick_grpc: bool,
    /// Put an item back in its own queue from `on_queue_ready`, which then never runs
    /// dry: the host must still get on with its other work.
    requeue: bool,
    /// `on_queue_ready` calls so far (in shared data as `queue-ready-calls`).
    ready_calls: u64,
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, _: u32, status: u32, size: usize) {
        let message = self
            .get_grpc_call_response_body(0, size)
            .unwrap_or_default();
        let seen = format!(
            "status={status} message={}",
            String::from_utf8_lossy(&message)
        );
        self.set_shared_data("tick-grpc", Some(seen.as_bytes()), None)
            .unwrap();
    }

    fn on_http_call_response(&mut self, _: u32, _: usize, _: usize, _: usize) {
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_else(|| "none".into());
        self.set_shared_data("tick-call-status", Some(status.as_bytes()), None)
            .unwrap();
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        let bytes = self.get_vm_configuration().unwrap_or_default();
        VM_CONFIG.with(|c| *c.borrow_mut() = bytes);
        VM_STARTS.with(|c| *c.borrow_mut() += 1);
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let past = hostcalls::get_buffer(BufferType::PluginConfiguration, bytes.len() + 5, 1);
        PAST_END.with(|p| *p.borrow_mut() = format!("{:?}", past.map(|b| b.map(|v| v.len()))));
        // Stream calls from the root context, where there is no stream: raw, since the
        // SDK panics on some statuses.
        let (path, value) = (b"portcullis\0root-probe".as_slice(), b"x".as_slice());
        let set = unsafe {
            raw::set_property4(
                addr(path),
                path.len() as u32,
                addr(value),
                value.len() as u32,
            )
        };
        let resume = unsafe { raw::continue1(0) };
        ROOT_CALLS.with(|r| {
            *r.borrow_mut() = format!(
                "set_property={} continue={}",
                status_name(set),
                status_name(resume)
            )
        });
        // Any bytes are a configuration (the `config` case reports them back); a JSON
        // object also sets the fields below.
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        // Logs this many lines of 1000 bytes first.
        if let Some(n) = v.get("log_flood").and_then(|n| n.as_u64()) {
            let line = "f".repeat(1000);
            for i in 0..n {
                proxy_wasm::hostcalls::log(LogLevel::Info, &format!("{i} {line}")).ok();
            }
        }
        if v.get("reject").is_some() {
            proxy_wasm::hostcalls::log(LogLevel::Error, "conformance: configuration says reject")
                .ok();
            return false;
        }
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
        self.config = Config {
            raw: bytes,
            upstream: s("upstream"),
            blackhole: s("blackhole"),
            refused: s("refused"),
            grpc: s("grpc"),
            trap_on_body_chunk: v.get("trap_on_body_chunk").and_then(|x| x.as_u64()),
        };
        // One item per root context configured with this queue name, across the
        // vm_id's VMs: an enqueue cannot lose an update, where a first shared-data
        // write can (two VMs both find the key absent, and a write to an absent key
        // has no CAS to fail).
        if let Some(name) = v.get("count_queue").and_then(|x| x.as_str()) {
            let q = self.register_shared_queue(name);
            let _ = self.enqueue_shared_queue(q, Some(b"vm"));
        }
        // Counts the root contexts configured with this key, across the vm_id's VMs.
        if let Some(key) = v.get("count_key").and_then(|x| x.as_str()) {
            loop {
                let (value, cas) = self.get_shared_data(key);
                let n = value
                    .and_then(|b| String::from_utf8(b).ok()?.parse::<u64>().ok())
                    .unwrap_or(0);
                if self
                    .set_shared_data(key, Some((n + 1).to_string().as_bytes()), cas)
                    .is_ok()
                {
                    break;
                }
            }
        }
        self.tick_call = v.get("tick_call").and_then(|x| x.as_bool()) == Some(true);
        self.tick_grpc = v.get("tick_grpc").and_then(|x| x.as_bool()) == Some(true);
        self.requeue = v.get("requeue").and_then(|x| x.as_bool()) == Some(true);
        if let Some(ms) = v.get("tick_ms").and_then(|x| x.as_u64()) {
            self.set_tick_period(Duration::from_millis(ms));
        }
        let q = self.register_shared_queue("conformance");
        QUEUE.with(|c| *c.borrow_mut() = q);
        true
    }

    fn on_tick(&mut self) {
        if self.tick_call {
            let _ = self.dispatch_http_call(
                &self.config.upstream,
                vec![
                    (":method", "GET"),
                    (":path", "/from-tick"),
                    (":authority", "tick"),
                ],
                None,
                vec![],
                Duration::from_secs(5),
            );
        }
        if self.tick_grpc {
            let _ = self.dispatch_grpc_call(
                &self.config.grpc,
                "portcullis.test.Probe",
                "Ping",
                vec![],
                Some(b"ping"),
                Duration::from_secs(5),
            );
        }
        self.ticks += 1;
        self.set_shared_data("ticks", Some(self.ticks.to_string().as_bytes()), None)
            .unwrap();
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        // Only our own queue has a consumer: the limit cases' queues must fill up.
        if queue_id != QUEUE.with(|c| *c.borrow()) {
            return;
        }
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            self.set_shared_data("queue-last", Some(&item), None)
                .unwrap();
        }
        self.ready_calls += 1;
        let calls = self.ready_calls.to_string();
        self.set_shared_data("queue-ready-calls", Some(calls.as_bytes()), None)
            .unwrap();
        if self.requeue {
            let _ = self.enqueue_shared_queue(queue_id, Some(b"again"));
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Case {
            config: self.config.clone(),
            case: String::new(),
            query: String::new(),
            answered: false,
            counted: 0,
            chunks: 0,
        }))
    }
}

struct Case {
    config: Config,
    case: String,
    query: String,
    /// `headers-wait-for-call`: the call made in the headers was answered.
    answered: bool,
    /// `vm-counter`: the VM's count when this request came.
    counted: u64,
    /// Request body chunks seen (for `trap_on_body_chunk`).
    chunks: u64,
}

fn status_name(code: u32) -> &'static str {
    match code {
        0 => "Ok",
        1 => "NotFound",
        2 => "BadArgument",
        3 => "SerializationFailure",
        4 => "ParseFailure",
        6 => "InvalidMemoryAccess",
        7 => "Empty",
        8 => "CasMismatch",
        10 => "InternalFailure",
        12 => "Unimplemented",
        _ => "Other",
    }
}

impl Case {
    fn report(&self, lines: &[(&str, String)]) {
        let body: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        self.send_http_response(
            200,
            vec![("content-type", "text/plain"), ("x-case", &self.case)],
            Some(body.as_bytes()),
        );
    }

    /// `name=value` of the request's query.
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }

    fn number(&self, name: &str, default: usize) -> usize {
        self.param(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// A prefix unique to this request (on every worker), or the query's `tag`: keys
    /// and names of the limit cases.
    fn tag(&self) -> String {
        match self.param("tag") {
            Some(t) => t.to_owned(),
            None => prop(self, &["request", "id"]),
        }
    }

    fn call(&self, cluster: &str, path: &str, timeout_ms: u64) -> Result<u32, Status> {
        self.dispatch_http_call(
            cluster,
            vec![
                (":method", "GET"),
                (":path", path),
                (":authority", "conformance"),
            ],
            None,
            vec![],
            Duration::from_millis(timeout_ms),
        )
    }
}

fn prop(ctx: &dyn Context, path: &[&str]) -> String {
    match ctx.get_property(path.to_vec()) {
        None => "<none>".into(),
        Some(b) => match path.last() {
            Some(&"port") | Some(&"code") if b.len() == 8 => {
                u64::from_le_bytes(b[..8].try_into().unwrap()).to_string()
            }
            _ => String::from_utf8_lossy(&b).into_owned(),
        },
    }
}

impl Context for Case {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        n_headers: usize,
        body_size: usize,
        _n_trailers: usize,
    ) {
        match self.case.as_str() {
            "panic-in-callback" => panic!("conformance: panic in on_http_call_response"),
            "http-call-resume" | "headers-wait-for-call" => {
                let status = self
                    .get_http_call_response_header(":status")
                    .unwrap_or_default();
                self.set_http_request_header("x-call-status", Some(&status));
                self.answered = true;
                self.resume_http_request();
            }
            "response-body-wait-for-call" => {
                // The response body waits in the host for the answer, which is
                // appended to it before the response goes on.
                let status = self
                    .get_http_call_response_header(":status")
                    .unwrap_or_default();
                let body = self
                    .get_http_response_body(0, usize::MAX)
                    .unwrap_or_default();
                let mut new = body.clone();
                new.extend_from_slice(format!("|call={status}").as_bytes());
                self.set_http_response_body(0, body.len(), &new);
                self.resume_http_response();
            }
            // A reset call: no answer at all (the SDK would panic reading its headers).
            _ if n_headers == 0 && body_size == 0 => {
                self.report(&[("headers", "false".into()), ("status", "reset".into())]);
            }
            _ => {
                let status = self
                    .get_http_call_response_header(":status")
                    .unwrap_or_else(|| "<none>".into());
                let body = self
                    .get_http_call_response_body(0, body_size)
                    .map(|b| b.len())
                    .unwrap_or(0);
                self.report(&[
                    ("headers", (n_headers > 0).to_string()),
                    ("status", status),
                    ("body_nonempty", (body > 0).to_string()),
                ]);
            }
        }
    }
}

impl HttpContext for Case {
    fn on_http_request_headers(&mut self, _: usize, eos: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let (case, query) = path
            .strip_prefix("/case/")
            .unwrap_or("")
            .split_once('?')
            .unwrap_or((path.strip_prefix("/case/").unwrap_or(""), ""));
        let case = case.to_owned();
        self.query = query.to_owned();
        self.case = case.clone();
        match case.as_str() {
            "" => Action::Continue,
            "headers" => {
                self.add_http_request_header("x-added", "1");
                self.set_http_request_header("x-replace", Some("new"));
                self.set_http_request_header("x-remove", None);
                let multi = self
                    .get_http_request_header("x-multi")
                    .unwrap_or_else(|| "<none>".into());
                self.set_http_request_header("x-seen-multi", Some(&multi));
                let missing = self.get_http_request_header("x-missing").is_none();
                self.set_http_request_header("x-missing-is-none", Some(&missing.to_string()));
                Action::Continue
            }
            "pairs" => {
                let mut pairs = self.get_http_request_headers();
                pairs.retain(|(k, _)| !k.starts_with("x-drop"));
                pairs.push(("x-from-pairs".into(), "yes".into()));
                let refs: Vec<(&str, &str)> = pairs
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                self.set_http_request_headers(refs);
                Action::Continue
            }
            // The configuration bytes the host handed over, as the body of a reply.
            "config" => {
                self.send_http_response(200, vec![], Some(&self.config.raw));
                Action::Pause
            }
            // Counts in the request, reports in the response (`x-vm-counter-<root id>`),
            // so every filter of a chain takes part.
            "vm-counter" => {
                let n = VM_COUNTER.with(|c| {
                    *c.borrow_mut() += 1;
                    *c.borrow()
                });
                self.counted = n;
                Action::Continue
            }
            "vm-config" => {
                let bytes = VM_CONFIG.with(|c| c.borrow().clone());
                self.send_http_response(200, vec![], Some(&bytes));
                Action::Pause
            }
            // A shared-data value of this VM's vm_id, as the body (404 when absent).
            "shared-get" => {
                let key = self.param("key").unwrap_or("").to_owned();
                match self.get_shared_data(&key) {
                    (Some(value), _) => self.send_http_response(200, vec![], Some(&value)),
                    (None, _) => self.send_http_response(404, vec![], None),
                }
                Action::Pause
            }
            // Takes every item of the queue `name` of vm_id `vm`: their count, the body.
            "queue-drain" => {
                let (vm, name) = (
                    self.param("vm").unwrap_or("").to_owned(),
                    self.param("name").unwrap_or("").to_owned(),
                );
                let mut n = 0;
                if let Some(q) = self.resolve_shared_queue(&vm, &name) {
                    while let Ok(Some(_)) = self.dequeue_shared_queue(q) {
                        n += 1;
                    }
                }
                self.send_http_response(200, vec![], Some(n.to_string().as_bytes()));
                Action::Pause
            }
            "local-reply" => {
                self.send_http_response(403, vec![("x-reason", "case")], Some(b"denied"));
                Action::Pause
            }
            // A filter that pauses and never resumes: the host must not hang on it.
            "pause-forever" => Action::Pause,
            "props" => {
                let lines = vec![
                    ("request.path", prop(self, &["request", "path"])),
                    ("request.url_path", prop(self, &["request", "url_path"])),
                    ("request.query", prop(self, &["request", "query"])),
                    ("request.host", prop(self, &["request", "host"])),
                    ("request.method", prop(self, &["request", "method"])),
                    ("request.scheme", prop(self, &["request", "scheme"])),
                    ("request.protocol", prop(self, &["request", "protocol"])),
                    (
                        "request.id.present",
                        (prop(self, &["request", "id"]) != "<none>").to_string(),
                    ),
                    (
                        "request.time.len",
                        self.get_property(vec!["request", "time"])
                            .map_or(0, |b| b.len())
                            .to_string(),
                    ),
                    (
                        "source.address.ip",
                        prop(self, &["source", "address"])
                            .rsplit_once(':')
                            .map_or("<none>".into(), |(ip, _)| ip.to_owned()),
                    ),
                    (
                        "destination.port.present",
                        (prop(self, &["destination", "port"]) != "<none>").to_string(),
                    ),
                    ("plugin_name", prop(self, &["plugin_name"])),
                    ("plugin_root_id", prop(self, &["plugin_root_id"])),
                    ("plugin_vm_id", prop(self, &["plugin_vm_id"])),
                    ("unknown", prop(self, &["no", "such", "thing"])),
                ];
                self.report(&lines);
                Action::Pause
            }
            "shared-cas" => {
                let key = format!(
                    "cas-{}",
                    self.get_property(vec!["request", "id"])
                        .map(|b| b.len())
                        .unwrap_or(0)
                );
                let missing = self.get_shared_data("never-set").0.is_none();
                self.set_shared_data(&key, Some(b"v1"), None).unwrap();
                let (v, cas) = self.get_shared_data(&key);
                let cas = cas.unwrap();
                let wrong = self.set_shared_data(&key, Some(b"v2"), Some(cas.wrapping_add(1000)));
                let right = self.set_shared_data(&key, Some(b"v3"), Some(cas));
                let stale = self.set_shared_data(&key, Some(b"v4"), Some(cas));
                let (now, _) = self.get_shared_data(&key);
                self.report(&[
                    ("missing_is_none", missing.to_string()),
                    ("first", String::from_utf8_lossy(&v.unwrap()).into_owned()),
                    ("wrong_cas", format!("{wrong:?}")),
                    ("right_cas", format!("{right:?}")),
                    ("stale_cas", format!("{stale:?}")),
                    ("now", String::from_utf8_lossy(&now.unwrap()).into_owned()),
                ]);
                Action::Pause
            }
            "http-call-unknown-cluster" => {
                let r = self.call("no-such-cluster", "/", 1000);
                self.report(&[("result", format!("{r:?}"))]);
                Action::Pause
            }
            "http-call-missing-path" => {
                let r = self.dispatch_http_call(
                    &self.config.upstream,
                    vec![(":method", "GET"), (":authority", "x")],
                    None,
                    vec![],
                    Duration::from_secs(1),
                );
                self.report(&[("result", format!("{r:?}"))]);
                Action::Pause
            }
            // Held headers (`allow_on_headers_stop_iteration`): the body comes to
            // `on_http_request_body` while they wait; it puts what it read in a
            // header, so the upstream shows the order.
            "headers-wait-for-body" if !eos => Action::Pause,
            "headers-wait-for-body" => Action::Continue,
            "hold-headers-then-trap" => {
                self.set_http_request_header("x-tampered", Some("1"));
                Action::Pause
            }
            "http-call" | "panic-in-callback" | "http-call-resume" | "headers-wait-for-call" => {
                match self.call(&self.config.upstream.clone(), "/from-call", 5000) {
                    Ok(_) => Action::Pause,
                    Err(e) => {
                        self.report(&[("dispatch", format!("{e:?}"))]);
                        Action::Pause
                    }
                }
            }
            "http-call-timeout" => {
                self.call(&self.config.blackhole.clone(), "/", 300).unwrap();
                Action::Pause
            }
            "http-call-refused" => {
                self.call(&self.config.refused.clone(), "/", 5000).unwrap();
                Action::Pause
            }
            "request-headers-in-response"
            | "response-phase"
            | "pause-response-forever"
            | "pause-body-forever"
            | "response-body-wait-for-call"
            | "body-until-end"
            | "trap-in-trailers"
            | "trailers-reply"
            | "response-trailers"
            | "uncarried-response-header" => Action::Continue,
            // A value HTTP cannot carry (it would split the header in two on the wire).
            "uncarried-header" => {
                self.add_http_request_header("x-bad", "a\r\nx-injected: 1");
                Action::Continue
            }
            "grpc-unknown-cluster" => {
                let (up, svc, m) = ("no-such-cluster", "svc.S", "M");
                let mut token = 0u32;
                let code = unsafe {
                    raw::proxy_grpc_call(
                        up.as_ptr(),
                        up.len(),
                        svc.as_ptr(),
                        svc.len(),
                        m.as_ptr(),
                        m.len(),
                        std::ptr::null(),
                        0,
                        std::ptr::null(),
                        0,
                        1000,
                        &mut token,
                    )
                };
                self.report(&[("status", status_name(code).into())]);
                Action::Pause
            }
            // Edges of the ABI the other cases do not reach.
            "abi-edges" => {
                let own = QUEUE.with(|c| *c.borrow());
                let resolved = hostcalls::resolve_shared_queue("", "conformance");
                let c = hostcalls::define_metric(MetricType::Counter, "conformance_edges").unwrap();
                let by_zero = hostcalls::increment_metric(c, 0);
                // continue_stream of the downstream (2), upstream (3) and an unknown (9)
                // stream type, and grpc_send of a token that is no stream's.
                let streams: Vec<&str> = [2, 3, 9]
                    .iter()
                    .map(|t| status_name(unsafe { raw::continue1(*t) }))
                    .collect();
                let msg = b"m";
                let send = unsafe { raw::grpc_send4(424_242, addr(msg), msg.len() as u32, 0) };
                self.report(&[
                    ("continue_stream_2_3_9", streams.join(" ")),
                    ("grpc_send_unknown", status_name(send).into()),
                    (
                        "resolve_empty_vm_id",
                        format!("{:?}", resolved.map(|q| q == Some(own))),
                    ),
                    ("counter_by_zero", format!("{by_zero:?}")),
                    ("config_past_end", PAST_END.with(|p| p.borrow().clone())),
                    ("root_stream_calls", ROOT_CALLS.with(|r| r.borrow().clone())),
                ]);
                Action::Pause
            }
            "metrics" => {
                let c =
                    hostcalls::define_metric(MetricType::Counter, "conformance_requests").unwrap();
                hostcalls::increment_metric(c, 3).unwrap();
                let again =
                    hostcalls::define_metric(MetricType::Counter, "conformance_requests").unwrap();
                let g = hostcalls::define_metric(MetricType::Gauge, "conformance_gauge").unwrap();
                hostcalls::record_metric(g, 42).unwrap();
                hostcalls::increment_metric(g, -2).unwrap();
                let h =
                    hostcalls::define_metric(MetricType::Histogram, "conformance_hist").unwrap();
                hostcalls::record_metric(h, 7).unwrap();
                self.report(&[
                    ("same_id", (c == again).to_string()),
                    (
                        "counter_positive",
                        (hostcalls::get_metric(c).unwrap() >= 3).to_string(),
                    ),
                    ("gauge", hostcalls::get_metric(g).unwrap().to_string()),
                    (
                        "histogram_get",
                        format!("{:?}", hostcalls::get_metric(h).err()),
                    ),
                ]);
                Action::Pause
            }
            "enqueue" => {
                let q = self.resolve_shared_queue(&prop(self, &["plugin_vm_id"]), "conformance");
                let r = q.map(|q| self.enqueue_shared_queue(q, Some(b"item-1")));
                self.report(&[
                    ("resolved", q.is_some().to_string()),
                    ("enqueue", format!("{r:?}")),
                ]);
                Action::Pause
            }
            "queue-last" | "ticks" => {
                let key = if case == "ticks" {
                    "ticks"
                } else {
                    "queue-last"
                };
                let v = self
                    .get_shared_data(key)
                    .0
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                self.report(&[("value", v.unwrap_or_else(|| "<none>".into()))]);
                Action::Pause
            }
            "log" => {
                self.add_http_request_header("x-logged", "1");
                proxy_wasm::hostcalls::log(LogLevel::Warn, "conformance: hello from the log case")
                    .ok();
                println!("conformance: hello from stdout");
                Action::Continue
            }
            "time" => {
                let now = self.get_current_time();
                let secs = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                self.report(&[("after_2020", (secs > 1_577_836_800).to_string())]);
                Action::Pause
            }
            "body" | "tamper-body-then-trap" | "tamper-response-then-trap" => Action::Continue,
            // Hostile cases.
            "trap" => panic!("conformance: panic in on_request_headers"),
            // Changes the request, then fails: a fail-open host must pass on the
            // request as it was before this filter, not what the filter left of it.
            "tamper-then-trap" => {
                self.set_http_request_header("x-tampered", Some("1"));
                self.set_http_request_header("x-keep", None);
                self.set_http_request_header(":path", Some("/tampered"));
                self.set_property(vec!["portcullis.credential"], Some(b"forged"));
                panic!("conformance: panic after changing the request headers")
            }
            // Sets built-in attributes, then reads them back: what a later filter would
            // read.
            "spoof-attributes" => {
                let paths = [vec!["source", "address"], vec!["request", "path"]];
                let mut lines = Vec::new();
                for path in paths {
                    self.set_property(path.clone(), Some(b"forged"));
                    let got = self.get_property(path.clone()).unwrap_or_default();
                    lines.push((path[0], String::from_utf8_lossy(&got).into_owned()));
                }
                self.report(&lines);
                Action::Pause
            }
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "memory-bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "oob" => {
                let key = ":path";
                let mut rp: *mut u8 = std::ptr::null_mut();
                let mut rl: usize = 0;
                let bad = 0xFFFF_FFF0usize as *const u8;
                let (a, b, c, d) = unsafe {
                    (
                        raw::proxy_get_header_map_value(0, bad, 64, &mut rp, &mut rl),
                        raw::proxy_get_header_map_value(
                            0,
                            key.as_ptr(),
                            usize::MAX,
                            &mut rp,
                            &mut rl,
                        ),
                        raw::proxy_get_header_map_value(
                            0,
                            key.as_ptr(),
                            key.len(),
                            0xFFFF_FFF0usize as *mut *mut u8,
                            &mut rl,
                        ),
                        raw::proxy_log(2, bad, 1 << 20),
                    )
                };
                self.report(&[
                    ("bad_key_ptr", status_name(a).into()),
                    ("bad_key_len", status_name(b).into()),
                    ("bad_return_ptr", status_name(c).into()),
                    ("bad_log", status_name(d).into()),
                ]);
                Action::Pause
            }
            "hostile-map" => {
                // A header map claiming 2^31 pairs in 12 bytes.
                let blob: [u8; 12] = [0, 0, 0, 0x80, 1, 0, 0, 0, 1, 0, 0, 0];
                let code = unsafe {
                    raw::proxy_set_header_map_pairs(
                        MapType::HttpRequestHeaders as u32,
                        blob.as_ptr(),
                        blob.len(),
                    )
                };
                let (up, hdr) = (self.config.upstream.clone(), blob);
                let mut token = 0;
                let call = unsafe {
                    raw::proxy_http_call(
                        up.as_ptr(),
                        up.len(),
                        hdr.as_ptr(),
                        hdr.len(),
                        std::ptr::null(),
                        0,
                        std::ptr::null(),
                        0,
                        1000,
                        &mut token,
                    )
                };
                let left = self.get_http_request_headers().len();
                self.report(&[
                    ("set_pairs", status_name(code).into()),
                    ("headers_left", left.to_string()),
                    ("http_call", status_name(call).into()),
                ]);
                Action::Pause
            }
            "raw" => {
                let name = self.get_http_request_header("x-call").unwrap_or_default();
                let args: Vec<u32> = self
                    .get_http_request_header("x-args")
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|a| a.trim().parse().ok())
                    .collect();
                let status = raw::call(&name, &args);
                self.report(&[(
                    "status",
                    status.map_or("unknown function".into(), |s| s.to_string()),
                )]);
                Action::Pause
            }
            // Hostile: the host must refuse to hold what these ask for.
            "limit-shared" => {
                // `n` values of `size` bytes under distinct keys (or one key of
                // `key_size` bytes).
                let (n, size) = (self.number("n", 1), self.number("size", 1));
                let value = vec![b'v'; size];
                let tag = self.tag();
                let keys: Vec<String> = match self.param("key_size") {
                    Some(k) => vec!["k".repeat(k.parse().unwrap_or(1))],
                    None => (0..n).map(|i| format!("flood-{tag}-{i}")).collect(),
                };
                let statuses: Vec<u32> = keys
                    .iter()
                    .map(|k| unsafe {
                        raw::set_shared5(
                            addr(k.as_bytes()),
                            k.len() as u32,
                            addr(&value),
                            value.len() as u32,
                            0,
                        )
                    })
                    .collect();
                self.report(&tally(statuses));
                Action::Pause
            }
            "limit-property" => {
                let (n, size) = (self.number("n", 1), self.number("size", 1));
                let value = vec![b'p'; size];
                let paths: Vec<String> = match self.param("path_size") {
                    Some(k) => vec!["p".repeat(k.parse().unwrap_or(1))],
                    None => (0..n).map(|i| format!("limit.{i}")).collect(),
                };
                let statuses: Vec<u32> = paths
                    .iter()
                    .map(|p| unsafe {
                        raw::set_property4(
                            addr(p.as_bytes()),
                            p.len() as u32,
                            addr(&value),
                            value.len() as u32,
                        )
                    })
                    .collect();
                self.report(&tally(statuses));
                Action::Pause
            }
            // `n` request headers of `size`-byte values: added, or one name replaced
            // `n` times, or set as a whole map of `n` pairs, or the `crowd` and `empty`
            // attacks below (`op`).
            "limit-headers" => {
                let (n, size) = (self.number("n", 1), self.number("size", 1));
                let value = vec![b'h'; size];
                let names: Vec<String> = (0..n).map(|i| format!("x-limit-{i:03}")).collect();
                let request = 0; // MapType::HttpRequestHeaders
                let statuses: Vec<u32> = match self.param("op") {
                    // `n` pseudo-headers `:x` then `n` fields `a` in one map, then `:x`
                    // replaced: each step must be linear in the map's size.
                    Some("crowd") => {
                        let mut pairs: Vec<(&[u8], &[u8])> = vec![(b":x", b""); n];
                        pairs.extend(std::iter::repeat_n((&b"a"[..], &b"v"[..]), n));
                        let blob = encode_pairs(&pairs);
                        let set =
                            unsafe { raw::set_pairs3(request, addr(&blob), blob.len() as u32) };
                        let (k, v) = (b":x", b"v");
                        let replace =
                            unsafe { raw::replace_header5(request, addr(k), 2, addr(v), 1) };
                        vec![set, replace]
                    }
                    // Entries with an empty name and value.
                    Some("empty") => (0..n)
                        .map(|_| unsafe {
                            raw::add_header5(request, addr(&value), 0, addr(&value), 0)
                        })
                        .collect(),
                    Some("pairs") => {
                        let pairs: Vec<(&[u8], &[u8])> =
                            names.iter().map(|k| (k.as_bytes(), &value[..])).collect();
                        let blob = encode_pairs(&pairs);
                        vec![unsafe { raw::set_pairs3(request, addr(&blob), blob.len() as u32) }]
                    }
                    op => names
                        .iter()
                        .map(|k| {
                            let k = if op == Some("replace") { "x-limit" } else { k };
                            let (kp, kl) = (addr(k.as_bytes()), k.len() as u32);
                            let (vp, vl) = (addr(&value), value.len() as u32);
                            unsafe {
                                if op == Some("replace") {
                                    raw::replace_header5(request, kp, kl, vp, vl)
                                } else {
                                    raw::add_header5(request, kp, kl, vp, vl)
                                }
                            }
                        })
                        .collect(),
                };
                let mut lines = tally(statuses);
                let map = self.get_http_request_headers_bytes();
                let size = map.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
                lines.push(("map_bytes", size.to_string()));
                lines.push(("map_entries", map.len().to_string()));
                self.report(&lines);
                Action::Pause
            }
            // A reply of status 299 with a body of `size` bytes and `n` headers of
            // `header_size`-byte values; when the host refuses it, the report says so.
            "limit-reply" => {
                let (size, n) = (self.number("size", 0), self.number("n", 0));
                let header_size = self.number("header_size", 1);
                let body = vec![b'r'; size];
                let value = vec![b'h'; header_size];
                let names: Vec<String> = (0..n).map(|i| format!("x-reply-{i:03}")).collect();
                let pairs: Vec<(&[u8], &[u8])> =
                    names.iter().map(|k| (k.as_bytes(), &value[..])).collect();
                let headers = encode_pairs(&pairs);
                let details = "d".repeat(self.number("details", 0));
                let status = unsafe {
                    raw::local_response8(
                        299,
                        addr(details.as_bytes()),
                        details.len() as u32,
                        addr(&body),
                        body.len() as u32,
                        addr(&headers),
                        headers.len() as u32,
                        u32::MAX,
                    )
                };
                if status != 0 {
                    self.report(&tally([status]));
                }
                Action::Pause
            }
            // Grows the request body in `on_http_request_body`.
            "limit-body" => Action::Continue,
            "limit-calls" => {
                let (n, size) = (self.number("n", 1), self.number("size", 0));
                let cluster = match self.param("cluster") {
                    Some("blackhole") => self.config.blackhole.clone(),
                    _ => self.config.upstream.clone(),
                };
                let timeout = Duration::from_millis(self.number("timeout", 5000) as u64);
                let body = vec![b'b'; size];
                let headers = vec![
                    (":method", "POST"),
                    (":path", "/from-limit-calls"),
                    (":authority", "conformance"),
                ];
                let statuses: Vec<u32> = (0..n)
                    .map(|_| {
                        match self.dispatch_http_call(
                            &cluster,
                            headers.clone(),
                            Some(&body),
                            vec![],
                            timeout,
                        ) {
                            Ok(_) => 0,
                            Err(e) => e as u32,
                        }
                    })
                    .collect();
                self.report(&tally(statuses));
                Action::Pause
            }
            "limit-grpc" => {
                let (n, size) = (self.number("n", 1), self.number("size", 0));
                let (up, svc, m) = (self.config.grpc.clone(), "svc.S", "M");
                let message = vec![b'g'; size];
                let statuses: Vec<u32> = (0..n)
                    .map(|_| {
                        let mut token = 0u32;
                        unsafe {
                            raw::grpc_call12(
                                addr(up.as_bytes()),
                                up.len() as u32,
                                addr(svc.as_bytes()),
                                svc.len() as u32,
                                addr(m.as_bytes()),
                                m.len() as u32,
                                0,
                                0,
                                addr(&message),
                                message.len() as u32,
                                self.number("timeout", 5000) as u32,
                                &mut token as *mut u32 as usize as u32,
                            )
                        }
                    })
                    .collect();
                self.report(&tally(statuses));
                Action::Pause
            }
            // One log line of `size` bytes through proxy_log, or through fd_write as
            // `iovs` pieces that all point at the same `size` bytes.
            "limit-log" => {
                let size = self.number("size", 1);
                let text = vec![b'l'; size];
                let status = match self.number("iovs", 0) {
                    0 => unsafe { raw::log3(2, addr(&text), text.len() as u32) },
                    n => {
                        let iovs: Vec<u32> = (0..n)
                            .flat_map(|_| [addr(&text), text.len() as u32])
                            .collect();
                        let mut written = 0u32;
                        unsafe {
                            raw::fd_write4(
                                1,
                                iovs.as_ptr() as usize as u32,
                                n as u32,
                                &mut written as *mut u32 as usize as u32,
                            )
                        }
                    }
                };
                self.report(&[("status", status.to_string())]);
                Action::Pause
            }
            // Cancels `n` calls that were never made: each must be NotFound, and the
            // host must remember none of them.
            "limit-grpc-cancel" => {
                let n = self.number("n", 1) as u32;
                let statuses: Vec<u32> = (0..n)
                    .map(|i| unsafe { raw::grpc_cancel1(1_000_000 + i) })
                    .collect();
                self.report(&tally(statuses));
                Action::Pause
            }
            "limit-queue" => {
                // Registers the queue `name` (nobody drains it) and enqueues `n` items
                // of `size` bytes.
                let (n, size) = (self.number("n", 1), self.number("size", 1));
                let name = match self.param("name_size") {
                    Some(k) => "q".repeat(k.parse().unwrap_or(1)),
                    None => self.param("name").unwrap_or("flood").to_owned(),
                };
                let mut token = 0u32;
                let registered = unsafe {
                    raw::register_queue3(
                        addr(name.as_bytes()),
                        name.len() as u32,
                        &mut token as *mut u32 as usize as u32,
                    )
                };
                let item = vec![b'i'; size];
                let statuses: Vec<u32> = (0..n)
                    .map(|_| unsafe { raw::enqueue3(token, addr(&item), item.len() as u32) })
                    .collect();
                let mut lines = vec![("register", status_name(registered).to_owned())];
                lines.extend(tally(statuses));
                self.report(&lines);
                Action::Pause
            }
            "limit-queues" => {
                let n = self.number("n", 1);
                let tag = self.tag();
                let statuses: Vec<u32> = (0..n)
                    .map(|i| {
                        let name = format!("queue-{tag}-{i}");
                        let mut token = 0u32;
                        unsafe {
                            raw::register_queue3(
                                addr(name.as_bytes()),
                                name.len() as u32,
                                &mut token as *mut u32 as usize as u32,
                            )
                        }
                    })
                    .collect();
                self.report(&tally(statuses));
                Action::Pause
            }
            "limit-metrics" => {
                let n = self.number("n", 1);
                let tag = self.tag();
                let names: Vec<String> = match self.param("name_size") {
                    Some(k) => vec!["m".repeat(k.parse().unwrap_or(1))],
                    None => (0..n).map(|i| format!("flood_{tag}_{i}")).collect(),
                };
                let statuses: Vec<u32> = names
                    .iter()
                    .map(|name| {
                        let mut id = 0u32;
                        unsafe {
                            raw::define_metric4(
                                MetricType::Counter as u32,
                                addr(name.as_bytes()),
                                name.len() as u32,
                                &mut id as *mut u32 as usize as u32,
                            )
                        }
                    })
                    .collect();
                self.report(&tally(statuses));
                Action::Pause
            }
            "huge-headers" => {
                for i in 0..2000 {
                    self.add_http_request_header(&format!("x-huge-{i}"), &"v".repeat(100));
                }
                let n = self.get_http_request_headers().len();
                self.set_http_request_header("x-count-after", Some(&n.to_string()));
                Action::Continue
            }
            _ => {
                self.send_http_response(404, vec![], Some(b"unknown case"));
                Action::Pause
            }
        }
    }

    fn on_http_request_trailers(&mut self, n: usize) -> Action {
        if self.case == "trailers-reply" {
            // Answers from the trailers: what they were.
            let t = self
                .get_http_request_trailer("x-t")
                .unwrap_or_else(|| "<none>".into());
            self.report(&[("trailers", n.to_string()), ("x-t", t)]);
            return Action::Pause;
        }
        if self.case == "body-until-end" {
            // The body is still held here, readable: the trailers come before it
            // goes on.
            self.add_http_request_trailer("x-trailers-seen", &n.to_string());
            let held = self.get_http_request_body(0, usize::MAX).map_or_else(
                || "<none>".to_owned(),
                |b| String::from_utf8_lossy(&b).into_owned(),
            );
            self.add_http_request_trailer("x-held-body", &held);
        }
        if self.case == "headers-wait-for-body" {
            // With `allow_on_headers_stop_iteration`, the headers are still held here
            // (the body never ended: the trailers did): they can still change, and
            // the body held so far is readable. Continuing lets them go.
            let held = self.get_http_request_body(0, usize::MAX).map_or_else(
                || "<none>".to_owned(),
                |b| String::from_utf8_lossy(&b).into_owned(),
            );
            self.set_http_request_header("x-trailers-at-holder", Some(&n.to_string()));
            self.set_http_request_header("x-body-at-trailers", Some(&held));
        }
        if self.case == "trap-in-trailers" {
            self.set_http_request_trailer("x-checksum", Some("tampered"));
            panic!("conformance: panic in on_http_request_trailers");
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, n: usize) -> Action {
        if self.case == "response-trailers" {
            let up = self
                .get_http_response_trailer("x-upstream-trailer")
                .unwrap_or_else(|| "<none>".into());
            self.add_http_response_trailer("x-filter-trailer", &format!("{n}:{up}"));
            self.set_http_response_trailer("x-drop", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, _: usize, eos: bool) -> Action {
        if (self.case == "body-until-end" || self.case == "response-trailers") && !eos {
            // Holds every chunk until the end of the body (or the trailers).
            return Action::Pause;
        }
        if self.case == "pause-body-forever" {
            return Action::Pause;
        }
        if self.case == "response-body-wait-for-call" {
            // Buffers the body; at its end, pauses on a call.
            if eos
                && self
                    .call(&self.config.upstream.clone(), "/from-call", 5000)
                    .is_err()
            {
                return Action::Continue;
            }
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if let Some(n) = self.config.trap_on_body_chunk {
            self.chunks += 1;
            if self.chunks == n {
                panic!("conformance: panic on request body chunk {n}");
            }
            return Action::Continue;
        }
        if self.case == "tamper-body-then-trap" || self.case == "hold-headers-then-trap" {
            self.set_http_request_body(0, size, b"tampered");
            panic!("conformance: panic after changing the request body");
        }
        if self.case == "limit-body" && eos {
            // Appends `size` bytes to the request body.
            let extra = vec![b'x'; self.number("size", 1)];
            let status =
                unsafe { raw::set_buffer5(0, size as u32, 0, addr(&extra), extra.len() as u32) };
            let now = self
                .get_http_request_body(0, usize::MAX)
                .map_or(0, |b| b.len());
            self.report(&[
                ("status", status_name(status).into()),
                ("body_len", now.to_string()),
            ]);
            return Action::Pause;
        }
        if self.case == "body-until-end" {
            // Holds every chunk until the end of the body (or the trailers).
            return if eos { Action::Continue } else { Action::Pause };
        }
        if self.case == "headers-wait-for-body" {
            if !eos {
                return Action::Pause;
            }
            let body = self.get_http_request_body(0, size).unwrap_or_default();
            let seen = String::from_utf8_lossy(&body).into_owned();
            self.set_http_request_header("x-body-seen", Some(&seen));
            return Action::Continue;
        }
        if self.case == "headers-wait-for-call" {
            // The body waits with the headers until the call is answered.
            return if self.answered {
                Action::Continue
            } else {
                Action::Pause
            };
        }
        if self.case != "body" {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        let upper = body.to_ascii_uppercase();
        self.set_http_request_body(0, size, &upper);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.case == "tamper-response-then-trap" {
            self.set_http_response_header("x-upstream", None);
            self.set_http_response_header(":status", Some("299"));
            panic!("conformance: panic after changing the response headers");
        }
        self.set_http_response_header("x-saw-response", Some(&self.case.clone()));
        if self.case == "response-body-wait-for-call" {
            // The body will grow: its length may no longer be announced (as Envoy
            // expects of a filter that changes a body's length).
            self.set_http_response_header("content-length", None);
        }
        match self.case.as_str() {
            "uncarried-response-header" => {
                self.set_http_response_header("x-bad", Some("a\nx-injected: 1"));
                self.set_http_response_header("bad name", Some("v"));
            }
            "vm-counter" => {
                let root = self
                    .get_property(vec!["plugin_root_id"])
                    .unwrap_or_default();
                let root = String::from_utf8_lossy(&root);
                let name = format!("x-vm-counter-{root}");
                self.set_http_response_header(&name, Some(&self.counted.to_string()));
                let starts = VM_STARTS.with(|c| *c.borrow());
                let name = format!("x-vm-starts-{root}");
                self.set_http_response_header(&name, Some(&starts.to_string()));
            }
            "request-headers-in-response" => {
                let key = ":path";
                let mut rp: *mut u8 = std::ptr::null_mut();
                let mut rl: usize = 0;
                let code = unsafe {
                    raw::proxy_get_header_map_value(0, key.as_ptr(), key.len(), &mut rp, &mut rl)
                };
                self.set_http_response_header("x-request-header-status", Some(status_name(code)));
                // The whole map, the way the SDK's get_http_request_headers asks for it.
                let code = unsafe { raw::proxy_get_header_map_pairs(0, &mut rp, &mut rl) };
                self.set_http_response_header(
                    "x-request-pairs-status",
                    Some(&format!("{} {rl}", status_name(code))),
                );
            }
            "response-phase" => {
                self.set_http_response_header(
                    "x-status-seen",
                    Some(&prop(self, &["response", "code"])),
                );
                self.set_http_response_header("server", None);
            }
            "pause-response-forever" => return Action::Pause,
            _ => {}
        }
        Action::Continue
    }
}
