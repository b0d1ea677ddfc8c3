//! One VM: a module instance in its own store, with a root context per plugin it runs
//! (plugins of the same `vm_id` and module share one VM, as in Envoy) and the HTTP
//! contexts of the requests those plugins are handling on this worker.
//!
//! Every call into the guest runs under an epoch deadline and a memory limit; a trap,
//! a missed deadline or a broken ABI reply comes back as a [`Fault`] and the VM must
//! not be used again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use wasmtime::{Store, StoreLimitsBuilder, Trap, TypedFunc, WasmParams, WasmResults};

use crate::abi::{Action, LogLevel};
use crate::engine::{CompiledModule, EPOCH_PERIOD, Engine};
use crate::headers::HeaderMap;
use crate::shared::QueueReady;
use crate::state::{
    CallbackData, Captured, HostState, HttpCtx, Outgoing, Phase, PluginEnv, VmLimiter,
};
use crate::types::{FailurePolicy, GrpcCallResponse, GrpcStatus, HttpCallResponse, RequestInfo};

/// Everything needed to start a plugin's VM on a worker.
#[derive(Clone)]
pub struct PluginSpec {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    pub configuration: Vec<u8>,
    pub vm_configuration: Vec<u8>,
    pub failure_policy: FailurePolicy,
    /// A pause in `on_request_headers` holds only the headers: the filter still gets
    /// the body (Envoy's `allow_on_headers_stop_iteration`, StopIteration instead of
    /// StopAllIteration). Off by default, as in Envoy.
    pub allow_on_headers_stop_iteration: bool,
    pub limits: VmLimits,
    pub module: Arc<CompiledModule>,
}

impl std::fmt::Debug for PluginSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSpec")
            .field("name", &self.name)
            .field("vm_id", &self.vm_id)
            .finish()
    }
}

impl PluginSpec {
    pub fn new(
        name: impl Into<String>,
        module: Arc<CompiledModule>,
        configuration: impl Into<Vec<u8>>,
    ) -> Self {
        let name = name.into();
        PluginSpec {
            root_id: name.clone(),
            vm_id: name.clone(),
            name,
            configuration: configuration.into(),
            vm_configuration: Vec::new(),
            failure_policy: FailurePolicy::default(),
            allow_on_headers_stop_iteration: false,
            limits: VmLimits::default(),
            module,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct VmLimits {
    /// Largest linear memory the module may grow to.
    pub memory_bytes: usize,
    /// Longest a single callback may run (Envoy has no such bound: a looping filter
    /// hangs its worker there).
    pub callback_timeout: Duration,
    /// Longest `_initialize` + `on_vm_start` + `on_configure` may run together.
    pub start_timeout: Duration,
}

impl Default for VmLimits {
    fn default() -> Self {
        VmLimits {
            memory_bytes: 128 << 20,
            callback_timeout: Duration::from_millis(500),
            start_timeout: Duration::from_secs(10),
        }
    }
}

/// A VM failed: it trapped, ran past its deadline, or broke the ABI.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("filter `{plugin}` failed in {callback}: {reason}")]
pub struct Fault {
    pub plugin: String,
    pub callback: &'static str,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("filter `{plugin}` could not start: {reason}")]
    Instantiate { plugin: String, reason: String },
    #[error("filter `{plugin}` failed while starting: {fault}{}", fmt_logs(.logs))]
    Fault {
        plugin: String,
        fault: Fault,
        logs: Vec<String>,
    },
    #[error("filter `{plugin}` rejected its configuration{}", fmt_logs(.logs))]
    Rejected { plugin: String, logs: Vec<String> },
}

fn fmt_logs(logs: &[String]) -> String {
    if logs.is_empty() {
        String::new()
    } else {
        format!(": {}", logs.join("; "))
    }
}

macro_rules! callbacks {
    ($($field:ident : $export:literal => ($($p:ty),*) -> $r:ty;)*) => {
        struct Callbacks { $($field: Option<TypedFunc<($($p,)*), $r>>,)* }
        impl Callbacks {
            fn resolve(store: &mut Store<HostState>, instance: &wasmtime::Instance) -> Result<Self, String> {
                Ok(Callbacks { $($field: match instance.get_export(&mut *store, $export) {
                    None => None,
                    Some(e) => Some(e.into_func()
                        .ok_or_else(|| format!("export `{}` is not a function", $export))?
                        .typed::<($($p,)*), $r>(&*store)
                        .map_err(|e| format!("export `{}` has the wrong signature: {e}", $export))?),
                },)* })
            }
        }
    };
}

/// A stream callback's signature: (context id, a count or size, end of stream) ->
/// the filter's status.
type StreamCallback = TypedFunc<(u32, u32, u32), u32>;

callbacks! {
    on_context_create: "proxy_on_context_create" => (u32, u32) -> ();
    on_vm_start: "proxy_on_vm_start" => (u32, u32) -> u32;
    on_configure: "proxy_on_configure" => (u32, u32) -> u32;
    on_tick: "proxy_on_tick" => (u32) -> ();
    on_queue_ready: "proxy_on_queue_ready" => (u32, u32) -> ();
    on_request_headers: "proxy_on_request_headers" => (u32, u32, u32) -> u32;
    on_request_body: "proxy_on_request_body" => (u32, u32, u32) -> u32;
    on_request_trailers: "proxy_on_request_trailers" => (u32, u32) -> u32;
    on_response_headers: "proxy_on_response_headers" => (u32, u32, u32) -> u32;
    on_response_body: "proxy_on_response_body" => (u32, u32, u32) -> u32;
    on_response_trailers: "proxy_on_response_trailers" => (u32, u32) -> u32;
    on_http_call_response: "proxy_on_http_call_response" => (u32, u32, u32, u32, u32) -> ();
    on_grpc_receive: "proxy_on_grpc_receive" => (u32, u32, u32) -> ();
    on_grpc_close: "proxy_on_grpc_close" => (u32, u32, u32) -> ();
    on_done: "proxy_on_done" => (u32) -> u32;
    on_log: "proxy_on_log" => (u32) -> ();
    on_delete: "proxy_on_delete" => (u32) -> ();
}

/// The first plugin's root context; the others follow, then the HTTP contexts.
pub(crate) const ROOT_CONTEXT_ID: u32 = 1;

/// How many finished contexts' wake-up signals a VM keeps for its next contexts.
const SPARE_SIGNALS: usize = 64;

pub struct Vm {
    store: Store<HostState>,
    /// Shared with each call, so calling needs no clone of the typed functions.
    cb: std::rc::Rc<Callbacks>,
    queue_rx: UnboundedReceiver<QueueReady>,
    deadline_ticks: u64,
    next_context_id: u32,
    /// Root contexts are 1..=roots; HTTP contexts are numbered after them.
    roots: u32,
}

impl Vm {
    /// Instantiates the module and runs `_initialize`, then for each plugin (root
    /// context `n` for `plugins[n - 1]`) `proxy_on_context_create`, `proxy_on_vm_start`
    /// and `proxy_on_configure`, as Envoy starts each plugin's root context in a shared
    /// VM. The module, `vm_id`, VM configuration and limits are the first plugin's (the
    /// caller groups plugins that agree on them).
    pub fn start(
        engine: &Engine,
        plugins: &[PluginSpec],
        has_cluster: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> Result<Vm, StartError> {
        let inner = &engine.inner;
        let spec = plugins.first().ok_or_else(|| StartError::Instantiate {
            plugin: "(none)".into(),
            reason: "a VM needs at least one plugin".into(),
        })?;
        let limits = engine.limits();
        let roots: Vec<Arc<PluginEnv>> = plugins
            .iter()
            .map(|p| {
                Arc::new(PluginEnv {
                    name: p.name.clone(),
                    root_id: p.root_id.clone(),
                    vm_id: spec.vm_id.clone(),
                    vm_configuration: spec.vm_configuration.clone(),
                    configuration: p.configuration.clone(),
                    clock: inner.clock.clone(),
                    shared_data: inner.shared_data.clone(),
                    queues: inner.queues.clone(),
                    metrics: inner.metrics.clone(),
                    log: inner.log.clone(),
                    log_level: inner.log_level,
                    has_cluster: has_cluster.clone(),
                    limits: limits.clone(),
                })
            })
            .collect();
        let env = roots[0].clone();
        let (queue_tx, queue_rx) = unbounded_channel();
        let table_elements = env.limits.table_elements;
        let limiter = VmLimiter {
            limits: StoreLimitsBuilder::new()
                .memory_size(spec.limits.memory_bytes)
                .table_elements(table_elements)
                .instances(1)
                .memories(1)
                .tables(8)
                .trap_on_grow_failure(false)
                .build(),
            memory_bytes: spec.limits.memory_bytes,
            table_elements,
            env: env.clone(),
        };
        let state = HostState {
            limiter,
            memory: None,
            alloc: None,
            env,
            root_context_id: ROOT_CONTEXT_ID,
            tick_periods: vec![0; roots.len()],
            roots,
            http: Default::default(),
            effective: ROOT_CONTEXT_ID,
            outgoing: Vec::new(),
            next_token: 0,
            callback: CallbackData::None,
            grpc_status: (0, Vec::new()),
            metric_ids: Vec::new(),
            queue_tx,
            fault: None,
            foreign_args: Vec::new(),
            grpc_in_flight: Default::default(),
            cancelled_grpc: Default::default(),
            pending_calls: 0,
            spare_signals: Vec::new(),
            captured: Some(Captured::default()),
        };
        let mut store = Store::new(&inner.wasmtime, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        let start_ticks = ticks(spec.limits.start_timeout);
        store.set_epoch_deadline(start_ticks);
        let plugin = spec.name.clone();
        let instantiate_err = |reason: String| StartError::Instantiate {
            plugin: plugin.clone(),
            reason,
        };
        let instance = spec
            .module
            .pre
            .instantiate(&mut store)
            .map_err(|e| instantiate_err(format!("{e:#}")))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| instantiate_err("the module exports no `memory`".into()))?;
        let alloc =
            match instance.get_typed_func::<u32, u32>(&mut store, "proxy_on_memory_allocate") {
                Ok(f) => f,
                Err(_) => instance
                    .get_typed_func::<u32, u32>(&mut store, "malloc")
                    .map_err(|_| {
                        instantiate_err(
                            "the module exports no `proxy_on_memory_allocate` (or `malloc`)".into(),
                        )
                    })?,
            };
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = Some(alloc);
        let cb =
            std::rc::Rc::new(Callbacks::resolve(&mut store, &instance).map_err(instantiate_err)?);
        let n = plugins.len() as u32;
        let mut vm = Vm {
            store,
            cb,
            queue_rx,
            deadline_ticks: ticks(spec.limits.callback_timeout),
            next_context_id: n + 1,
            roots: n,
        };
        let started = vm.run_start(&instance, plugins, start_ticks);
        let logs = vm
            .store
            .data_mut()
            .captured
            .take()
            .unwrap_or_default()
            .into_lines();
        // The plugin whose callback refused or failed.
        let plugin = vm.store.data().env.name.clone();
        match started {
            Ok(true) => Ok(vm),
            Ok(false) => Err(StartError::Rejected { plugin, logs }),
            Err(fault) => Err(StartError::Fault {
                plugin,
                fault,
                logs,
            }),
        }
    }

    fn run_start(
        &mut self,
        instance: &wasmtime::Instance,
        plugins: &[PluginSpec],
        start_ticks: u64,
    ) -> Result<bool, Fault> {
        let saved = self.deadline_ticks;
        // Start-up gets its own, longer deadline: configuration parsing may build keys.
        self.deadline_ticks = start_ticks;
        let result = self.run_start_callbacks(instance, plugins);
        self.deadline_ticks = saved;
        result
    }

    fn run_start_callbacks(
        &mut self,
        instance: &wasmtime::Instance,
        plugins: &[PluginSpec],
    ) -> Result<bool, Fault> {
        for name in ["_initialize", "_start"] {
            if let Ok(f) = instance.get_typed_func::<(), ()>(&mut self.store, name) {
                self.call_raw(name, &f, ())?;
                break;
            }
        }
        for (root, plugin) in (ROOT_CONTEXT_ID..).zip(plugins) {
            if !self.start_root(root, plugin)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One plugin's root context: created, `proxy_on_vm_start` (Envoy calls it for
    /// every root context, with the VM's configuration) and `proxy_on_configure`.
    fn start_root(&mut self, root: u32, plugin: &PluginSpec) -> Result<bool, Fault> {
        let cb = self.cb.clone();
        if let Some(f) = cb.on_context_create.as_ref() {
            self.with_context(root, |vm| {
                vm.call_raw("proxy_on_context_create", f, (root, 0))
            })?;
        }
        if let Some(f) = cb.on_vm_start.as_ref() {
            let size = plugin.vm_configuration.len() as u32;
            let ok =
                self.with_context(root, |vm| vm.call_raw("proxy_on_vm_start", f, (root, size)))?;
            if ok == 0 {
                return Ok(false);
            }
        }
        if let Some(f) = cb.on_configure.as_ref() {
            let size = plugin.configuration.len() as u32;
            let ok = self.with_context(root, |vm| {
                vm.call_raw("proxy_on_configure", f, (root, size))
            })?;
            if ok == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn call_raw<P: WasmParams, R: WasmResults>(
        &mut self,
        callback: &'static str,
        f: &TypedFunc<P, R>,
        params: P,
    ) -> Result<R, Fault> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let result = f.call(&mut self.store, params);
        let state = self.store.data_mut();
        state.effective = state.root_context_id;
        state.callback = CallbackData::None;
        if let Some(reason) = state.fault.take() {
            return Err(self.fault(callback, reason));
        }
        result.map_err(|e| {
            let reason = match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => format!(
                    "ran longer than its limit of {} ms",
                    self.deadline_ticks * EPOCH_PERIOD.as_millis() as u64
                ),
                Some(Trap::UnreachableCodeReached) => {
                    "trapped (a panic or abort in the filter)".to_owned()
                }
                Some(trap) => format!("trapped: {trap}"),
                None => format!("{e:#}"),
            };
            self.fault(callback, reason)
        })
    }

    fn fault(&mut self, callback: &'static str, reason: String) -> Fault {
        let fault = Fault {
            plugin: self.store.data().env.name.clone(),
            callback,
            reason,
        };
        self.store
            .data_mut()
            .log(LogLevel::Error, fault.to_string());
        fault
    }

    fn action(&mut self, callback: &'static str, v: u32) -> Result<Action, Fault> {
        Action::from_abi(v).ok_or_else(|| {
            self.fault(
                callback,
                format!("returned {v}, which is not a filter status"),
            )
        })
    }

    /// Creates an HTTP context for a new request of the plugin at root context `root`.
    pub fn create_http_context(
        &mut self,
        root: u32,
        info: Arc<RequestInfo>,
        properties: crate::state::StreamProperties,
    ) -> Result<u32, Fault> {
        let id = loop {
            let id = self.next_context_id;
            self.next_context_id = self
                .next_context_id
                .checked_add(1)
                .unwrap_or(self.roots + 1);
            if !self.store.data().http.contains_key(id) {
                break id;
            }
        };
        let state = self.store.data_mut();
        let signal = state.spare_signals.pop().unwrap_or_default();
        state
            .http
            .insert(id, HttpCtx::new(root, info, properties, signal));
        let cb = self.cb.clone();
        if let Some(f) = cb.on_context_create.as_ref() {
            self.with_context(id, |vm| {
                vm.call_raw("proxy_on_context_create", f, (id, root))
            })?;
        }
        Ok(id)
    }

    pub fn ctx(&mut self, id: u32) -> Option<&mut HttpCtx> {
        self.store.data_mut().http.get_mut(id)
    }

    fn with_context<T>(
        &mut self,
        id: u32,
        f: impl FnOnce(&mut Self) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        self.store.data_mut().enter(id);
        f(self)
    }

    pub fn on_request_headers(&mut self, id: u32, count: u32, eos: bool) -> Result<Action, Fault> {
        self.stream_call(
            "proxy_on_request_headers",
            |c| c.on_request_headers.as_ref(),
            id,
            count,
            eos,
        )
    }

    pub fn on_request_body(&mut self, id: u32, size: u32, eos: bool) -> Result<Action, Fault> {
        self.stream_call(
            "proxy_on_request_body",
            |c| c.on_request_body.as_ref(),
            id,
            size,
            eos,
        )
    }

    pub fn on_response_headers(&mut self, id: u32, count: u32, eos: bool) -> Result<Action, Fault> {
        self.stream_call(
            "proxy_on_response_headers",
            |c| c.on_response_headers.as_ref(),
            id,
            count,
            eos,
        )
    }

    pub fn on_response_body(&mut self, id: u32, size: u32, eos: bool) -> Result<Action, Fault> {
        self.stream_call(
            "proxy_on_response_body",
            |c| c.on_response_body.as_ref(),
            id,
            size,
            eos,
        )
    }

    pub fn on_request_trailers(&mut self, id: u32, count: u32) -> Result<Action, Fault> {
        let cb = self.cb.clone();
        let Some(f) = cb.on_request_trailers.as_ref() else {
            return Ok(Action::Continue);
        };
        let v = self.with_context(id, |vm| {
            vm.call_raw("proxy_on_request_trailers", f, (id, count))
        })?;
        self.action("proxy_on_request_trailers", v)
    }

    pub fn on_response_trailers(&mut self, id: u32, count: u32) -> Result<Action, Fault> {
        let cb = self.cb.clone();
        let Some(f) = cb.on_response_trailers.as_ref() else {
            return Ok(Action::Continue);
        };
        let v = self.with_context(id, |vm| {
            vm.call_raw("proxy_on_response_trailers", f, (id, count))
        })?;
        self.action("proxy_on_response_trailers", v)
    }

    fn stream_call(
        &mut self,
        name: &'static str,
        pick: fn(&Callbacks) -> Option<&StreamCallback>,
        id: u32,
        n: u32,
        eos: bool,
    ) -> Result<Action, Fault> {
        let cb = self.cb.clone();
        let Some(f) = pick(&cb) else {
            return Ok(Action::Continue);
        };
        let v = self.with_context(id, |vm| vm.call_raw(name, f, (id, n, eos as u32)))?;
        self.action(name, v)
    }

    /// Runs `on_log`, `on_done` and `on_delete` for a finished request, forgets it,
    /// and hands back the header maps it held for `on_log`.
    pub fn finish_http_context(&mut self, id: u32) -> Result<(HeaderMap, HeaderMap), Fault> {
        match self.ctx(id) {
            Some(ctx) => ctx.phase = Phase::Log,
            None => return Ok(Default::default()),
        }
        let result = (|| {
            let cb = self.cb.clone();
            if let Some(f) = cb.on_log.as_ref() {
                self.with_context(id, |vm| vm.call_raw("proxy_on_log", f, (id,)))?;
            }
            let cb = self.cb.clone();
            if let Some(f) = cb.on_done.as_ref() {
                self.with_context(id, |vm| vm.call_raw("proxy_on_done", f, (id,)))?;
            }
            let cb = self.cb.clone();
            if let Some(f) = cb.on_delete.as_ref() {
                self.with_context(id, |vm| vm.call_raw("proxy_on_delete", f, (id,)))?;
            }
            Ok(())
        })();
        let state = self.store.data_mut();
        let ctx = state.http.remove(id);
        if let Some(c) = &ctx
            && Arc::strong_count(&c.signal) == 1
            && state.spare_signals.len() < SPARE_SIGNALS
        {
            state.spare_signals.push(c.signal.clone());
        }
        result?;
        Ok(ctx
            .map(|c| {
                (
                    c.request_headers.unwrap_or_default(),
                    c.response_headers.unwrap_or_default(),
                )
            })
            .unwrap_or_default())
    }

    /// Delivers an `http_call` answer (`None`: the call failed without a response).
    pub fn on_http_call_response(
        &mut self,
        context_id: u32,
        root: u32,
        token: u32,
        response: Option<HttpCallResponse>,
    ) -> Result<(), Fault> {
        self.store.data_mut().call_done(context_id);
        let cb = self.cb.clone();
        let Some(f) = cb.on_http_call_response.as_ref() else {
            return Ok(());
        };
        let (h, b, t) = match &response {
            Some(r) => (
                r.headers.len() as u32,
                r.body.len() as u32,
                r.trailers.len() as u32,
            ),
            None => (0, 0, 0),
        };
        self.store.data_mut().callback = response.map_or(CallbackData::None, CallbackData::Http);
        // As in Envoy, a call belongs to the plugin's root context: its answer comes to
        // the root context (argument and effective context), whether or not the stream
        // that made it is still there; the SDKs find the stream by the token.
        self.with_context(root, |vm| {
            vm.call_raw("proxy_on_http_call_response", f, (root, token, h, b, t))
        })
    }

    /// Delivers a unary gRPC answer: the message on success, the status otherwise.
    pub fn on_grpc_call_response(
        &mut self,
        context_id: u32,
        root: u32,
        token: u32,
        result: Result<GrpcCallResponse, GrpcStatus>,
    ) -> Result<(), Fault> {
        let s = self.store.data_mut();
        s.call_done(context_id);
        s.grpc_in_flight.remove(&token);
        if s.cancelled_grpc.remove(&token) {
            return Ok(());
        }
        match result {
            Ok(r) => {
                let cb = self.cb.clone();
                let Some(f) = cb.on_grpc_receive.as_ref() else {
                    return Ok(());
                };
                let size = r.message.len() as u32;
                self.store.data_mut().callback = CallbackData::Grpc {
                    initial: r.initial_metadata,
                    message: r.message,
                    trailing: r.trailing_metadata,
                };
                self.store.data_mut().grpc_status = (0, Vec::new());
                // The root context's, as for http_call.
                self.with_context(root, |vm| {
                    vm.call_raw("proxy_on_grpc_receive", f, (root, token, size))
                })
            }
            Err(status) => {
                let cb = self.cb.clone();
                let Some(f) = cb.on_grpc_close.as_ref() else {
                    return Ok(());
                };
                self.store.data_mut().grpc_status = (status.code, status.message.into_bytes());
                self.with_context(root, |vm| {
                    vm.call_raw("proxy_on_grpc_close", f, (root, token, status.code))
                })
            }
        }
    }

    /// A tick for the plugin at root context `root`.
    pub fn on_tick(&mut self, root: u32) -> Result<(), Fault> {
        let cb = self.cb.clone();
        let Some(f) = cb.on_tick.as_ref() else {
            return Ok(());
        };
        self.with_context(root, |vm| vm.call_raw("proxy_on_tick", f, (root,)))
    }

    /// Runs `on_queue_ready` for the queue notifications waiting for this VM when it
    /// begins: those a callback causes (an item put back from `on_queue_ready`) wait
    /// for the next drain, so a queue that never runs dry cannot hold the worker.
    pub fn drain_queue_notifications(&mut self) -> Result<(), Fault> {
        let waiting: Vec<QueueReady> =
            std::iter::from_fn(|| self.queue_rx.try_recv().ok()).collect();
        for ready in waiting {
            self.store.data().env.queues.delivered(ready.token);
            let cb = self.cb.clone();
            if let Some(f) = cb.on_queue_ready.as_ref() {
                let root = ready.root_context_id;
                self.with_context(root, |vm| {
                    vm.call_raw("proxy_on_queue_ready", f, (root, ready.token))
                })?;
            }
        }
        Ok(())
    }

    pub fn take_outgoing(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.store.data_mut().outgoing)
    }

    /// The tick period the plugin at root context `root` asked for.
    pub fn tick_period(&self, root: u32) -> Option<Duration> {
        let periods = &self.store.data().tick_periods;
        match periods.get((root as usize).wrapping_sub(1)).copied() {
            None | Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms as u64)),
        }
    }

    /// Bytes of linear memory the module uses now.
    pub fn memory_bytes(&self) -> usize {
        self.store
            .data()
            .memory
            .map_or(0, |m| m.data_size(&self.store))
    }

    pub fn live_contexts(&self) -> usize {
        self.store.data().http.len()
    }

    /// Wakes every request waiting on this VM (it is about to be dropped).
    pub fn wake_all(&self) {
        for ctx in self.store.data().http.values() {
            ctx.signal.notify_one();
        }
    }
}

impl Drop for Vm {
    /// The queues this VM registered stay (with their items, for the next
    /// registrant), but no longer name it as the owner to notify.
    fn drop(&mut self) {
        let s = self.store.data();
        s.env.queues.release(&s.queue_tx);
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_millis() as u64 / EPOCH_PERIOD.as_millis() as u64).max(1)
}
