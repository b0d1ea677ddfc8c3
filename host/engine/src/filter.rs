//! A plugin as one worker runs it: its root context in a VM (plugins with the same
//! `vm_id`, module, VM configuration, limits and failure policy share one VM per
//! worker, as Envoy shares a VM by `vm_id` and code), the failure policy applied when
//! that VM fails, and the calls (`http_call`, `grpc_call`), ticks and queue
//! notifications the VM is waiting for. Lives on one thread (`Rc`); needs a tokio
//! `LocalSet`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::abi::LogLevel;
use crate::engine::Engine;
use crate::headers::HeaderMap;
use crate::state::{Outgoing, OutgoingRequest};
use crate::types::{
    CallFailure, FailurePolicy, GrpcCallRequest, GrpcCallResponse, GrpcStatus, HttpCallRequest,
    HttpCallResponse, LogRecord,
};
use crate::vm::{Fault, PluginSpec, StartError, Vm};

pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// How often, at most, a worker looks for shared-queue notifications.
const QUEUE_POLL: Duration = Duration::from_millis(20);

/// The clusters filters reach with `http_call` and `grpc_call`. The gateway answers
/// with real connections; the test bed with scripted replies or loopback services.
pub trait Clusters {
    fn has_cluster(&self, name: &str) -> bool;
    fn http_call(
        &self,
        cluster: &str,
        request: HttpCallRequest,
    ) -> LocalFuture<Result<HttpCallResponse, CallFailure>>;
    fn grpc_call(
        &self,
        cluster: &str,
        request: GrpcCallRequest,
    ) -> LocalFuture<Result<GrpcCallResponse, GrpcStatus>>;
    /// Cluster names for the host-call check, shared with VMs on any thread.
    fn names(&self) -> Arc<dyn Fn(&str) -> bool + Send + Sync>;
}

/// Health of a filter on this worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Running,
    /// The VM failed; `fail_closed` answers 503, `fail_open` skips the filter,
    /// `reload` starts a fresh VM for the next request.
    Failed(Fault),
}

#[derive(Clone)]
pub struct Filter {
    pub(crate) inner: Rc<FilterInner>,
}

/// One plugin: its root context in a shared VM.
pub(crate) struct FilterInner {
    pub cell: Rc<VmCell>,
    /// The plugin's root context id in the VM (its place in `cell.plugins`, plus one).
    pub root: u32,
    /// Monotonic time (ns) the plugin's next tick is due.
    pub next_tick: Cell<Option<u64>>,
    pub ticker_started: Cell<bool>,
}

/// A VM and what lives and dies with it: the plugins whose root contexts it holds,
/// its health, and the calls it is waiting for.
pub(crate) struct VmCell {
    /// In root-context order; a reload starts them all again, in this order.
    pub plugins: Vec<PluginSpec>,
    pub engine: Engine,
    pub clusters: Rc<dyn Clusters>,
    pub vm: RefCell<Option<Vm>>,
    /// Bumped whenever the VM is replaced, so answers for an old VM are dropped.
    pub generation: Cell<u64>,
    pub health: RefCell<Health>,
    pub reloads: Cell<u64>,
    /// The tasks carrying out this VM's calls, by a number of their own; each
    /// removes itself when its answer has been delivered. A failed VM's calls are
    /// cancelled with it, and every call goes with the VM.
    pub calls: RefCell<std::collections::HashMap<u64, tokio::task::AbortHandle>>,
    pub next_call: Cell<u64>,
}

impl VmCell {
    fn cancel_calls(&self) {
        let calls = std::mem::take(&mut *self.calls.borrow_mut());
        for (_, call) in calls {
            call.abort();
        }
    }
}

impl Drop for VmCell {
    fn drop(&mut self) {
        self.cancel_calls();
    }
}

/// What plugins must agree on to share a VM: Envoy's key (`vm_id`, code, VM
/// configuration), plus what a VM has only one of here (its limits and, since a
/// failure takes the whole VM down, the failure policy).
fn shares_vm(a: &PluginSpec, b: &PluginSpec) -> bool {
    a.vm_id == b.vm_id
        && a.module.hash == b.module.hash
        && a.vm_configuration == b.vm_configuration
        && a.failure_policy == b.failure_policy
        && a.limits.memory_bytes == b.limits.memory_bytes
        && a.limits.callback_timeout == b.limits.callback_timeout
        && a.limits.start_timeout == b.limits.start_timeout
}

/// Answer a filter gets for a call whose cluster could not answer (Envoy's
/// `AsyncClient` local replies).
fn failure_response(f: &CallFailure) -> Option<HttpCallResponse> {
    let (status, body) = match f {
        CallFailure::Timeout => ("504", "upstream request timeout".to_owned()),
        CallFailure::ConnectFailed(reason) => (
            "503",
            format!(
                "upstream connect error or disconnect/reset before headers. reset reason: {reason}"
            ),
        ),
        CallFailure::Reset(_) => return None,
    };
    let mut headers = HeaderMap::new();
    headers.add(":status", status);
    headers.add("content-length", body.len().to_string());
    headers.add("content-type", "text/plain");
    Some(HttpCallResponse {
        headers,
        body: body.into_bytes(),
        trailers: HeaderMap::new(),
    })
}

impl Filter {
    /// Starts the plugin's VM on this worker. A rejected configuration or a failure
    /// during start is an error naming the filter and carrying its log lines.
    pub fn start(
        engine: &Engine,
        spec: PluginSpec,
        clusters: Rc<dyn Clusters>,
    ) -> Result<Filter, StartError> {
        let mut started = Filter::start_vm(engine, vec![spec], clusters)?;
        Ok(started.remove(0))
    }

    /// Starts a worker's plugins, those that agree on `vm_id`, module, VM
    /// configuration, limits and failure policy in one VM with a root context each
    /// (as Envoy does), and gives them back in the order given. Every group that
    /// failed to start is an error.
    pub fn start_all(
        engine: &Engine,
        specs: Vec<PluginSpec>,
        clusters: Rc<dyn Clusters>,
    ) -> Result<Vec<Filter>, Vec<StartError>> {
        // Groups of (place in `specs`, spec), in the order their first member came.
        let mut groups: Vec<Vec<(usize, PluginSpec)>> = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            match groups.iter_mut().find(|g| shares_vm(&g[0].1, &spec)) {
                Some(g) => g.push((i, spec)),
                None => groups.push(vec![(i, spec)]),
            }
        }
        let mut placed: Vec<(usize, Filter)> = Vec::new();
        let mut errors = Vec::new();
        for group in groups {
            let (places, plugins): (Vec<usize>, Vec<PluginSpec>) = group.into_iter().unzip();
            match Filter::start_vm(engine, plugins, clusters.clone()) {
                Ok(filters) => placed.extend(places.into_iter().zip(filters)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        placed.sort_by_key(|(i, _)| *i);
        Ok(placed.into_iter().map(|(_, f)| f).collect())
    }

    /// One VM for `plugins`, with a root context each; a filter per plugin.
    fn start_vm(
        engine: &Engine,
        plugins: Vec<PluginSpec>,
        clusters: Rc<dyn Clusters>,
    ) -> Result<Vec<Filter>, StartError> {
        let vm = Vm::start(engine, &plugins, clusters.names())?;
        let n = plugins.len() as u32;
        let cell = Rc::new(VmCell {
            plugins,
            engine: engine.clone(),
            clusters,
            vm: RefCell::new(Some(vm)),
            generation: Cell::new(1),
            health: RefCell::new(Health::Running),
            reloads: Cell::new(0),
            calls: RefCell::default(),
            next_call: Cell::new(0),
        });
        let filters: Vec<Filter> = (crate::vm::ROOT_CONTEXT_ID..crate::vm::ROOT_CONTEXT_ID + n)
            .map(|root| Filter {
                inner: Rc::new(FilterInner {
                    cell: cell.clone(),
                    root,
                    next_tick: Cell::new(None),
                    ticker_started: Cell::new(false),
                }),
            })
            .collect();
        for f in &filters {
            f.after_callback();
        }
        Ok(filters)
    }

    pub fn name(&self) -> &str {
        &self.spec().name
    }

    pub fn spec(&self) -> &PluginSpec {
        &self.inner.cell.plugins[self.inner.root as usize - 1]
    }

    /// The plugin's root context id in its VM.
    pub fn root_context_id(&self) -> u32 {
        self.inner.root
    }

    /// Whether this filter and `other` run in the same VM.
    pub fn shares_vm_with(&self, other: &Filter) -> bool {
        Rc::ptr_eq(&self.inner.cell, &other.inner.cell)
    }

    pub fn health(&self) -> Health {
        self.inner.cell.health.borrow().clone()
    }

    pub fn policy(&self) -> FailurePolicy {
        self.spec().failure_policy
    }

    /// Whether a pause in `on_request_headers` still lets the body reach the filter
    /// (see [`PluginSpec::allow_on_headers_stop_iteration`]).
    pub fn holds_headers_for_body(&self) -> bool {
        self.spec().allow_on_headers_stop_iteration
    }

    pub fn generation(&self) -> u64 {
        self.inner.cell.generation.get()
    }

    /// How many times a fresh VM replaced a failed one (`reload` policy).
    pub fn reloads(&self) -> u64 {
        self.inner.cell.reloads.get()
    }

    /// The VM (`None` once it failed), for the stream to reach its contexts.
    pub(crate) fn vm(&self) -> &RefCell<Option<Vm>> {
        &self.inner.cell.vm
    }

    /// Runs `f` on the VM if it is healthy; a fault marks the filter failed.
    pub(crate) fn with_vm<T>(
        &self,
        f: impl FnOnce(&mut Vm) -> Result<T, Fault>,
    ) -> Option<Result<T, Fault>> {
        let (result, outgoing, period) = {
            let mut vm = self.vm().borrow_mut();
            let vm = vm.as_mut()?;
            let result = f(vm);
            (result, vm.take_outgoing(), vm.tick_period(self.inner.root))
        };
        match &result {
            // The failed VM is gone, and with it what it would have sent.
            Err(fault) => self.fail(fault.clone()),
            Ok(_) => self.dispatch_and_schedule(outgoing, period),
        }
        Some(result)
    }

    /// Marks the VM failed and drops it, for every plugin in it; requests waiting on
    /// it are woken and see it.
    pub(crate) fn fail(&self, fault: Fault) {
        let cell = &self.inner.cell;
        if let Some(vm) = cell.vm.borrow_mut().take() {
            vm.wake_all();
        }
        // Their answers would be dropped (the generation changes): stop them now, so
        // a call without a timeout does not outlive the VM that made it.
        cell.cancel_calls();
        cell.generation.set(cell.generation.get() + 1);
        self.inner.next_tick.set(None);
        *cell.health.borrow_mut() = Health::Failed(fault);
    }

    /// For the `reload` policy: a fresh VM after a failure, with every plugin's root
    /// context. Called when a new request arrives, so a filter that fails at every
    /// request does not spin.
    pub(crate) fn reload_if_failed(&self) {
        let cell = &self.inner.cell;
        if self.policy() != FailurePolicy::Reload || cell.vm.borrow().is_some() {
            return;
        }
        match Vm::start(&cell.engine, &cell.plugins, cell.clusters.names()) {
            Ok(vm) => {
                *cell.vm.borrow_mut() = Some(vm);
                cell.generation.set(cell.generation.get() + 1);
                cell.reloads.set(cell.reloads.get() + 1);
                *cell.health.borrow_mut() = Health::Running;
                self.log(
                    LogLevel::Warn,
                    "started a fresh VM after a failure (failure_policy: reload)".into(),
                );
                self.after_callback();
            }
            Err(e) => self.log(LogLevel::Error, format!("reload failed: {e}")),
        }
    }

    fn log(&self, level: LogLevel, message: String) {
        (self.inner.cell.engine.inner.log)(LogRecord {
            plugin: self.name().to_owned(),
            level,
            message,
        });
    }

    /// After every callback: carry out the calls the filter made, and keep the tick
    /// schedule in step with the period it asked for.
    fn after_callback(&self) {
        let (outgoing, period) = {
            let mut vm = self.vm().borrow_mut();
            match vm.as_mut() {
                Some(vm) => (vm.take_outgoing(), vm.tick_period(self.inner.root)),
                None => return,
            }
        };
        self.dispatch_and_schedule(outgoing, period);
    }

    fn dispatch_and_schedule(&self, outgoing: Vec<Outgoing>, period: Option<Duration>) {
        for call in outgoing {
            self.dispatch(call);
        }
        self.schedule_ticks(period);
    }

    fn dispatch(&self, call: Outgoing) {
        let clusters = &self.inner.cell.clusters;
        let Outgoing {
            token,
            context_id,
            root,
            cluster,
            request,
        } = call;
        match request {
            OutgoingRequest::Http(request) => {
                let timeout = request.timeout;
                let fut = clusters.http_call(&cluster, request);
                self.spawn_call(timeout, fut, move |vm, result| {
                    let response = match result {
                        Some(Ok(r)) => Some(r),
                        Some(Err(f)) => failure_response(&f),
                        None => failure_response(&CallFailure::Timeout),
                    };
                    vm.on_http_call_response(context_id, root, token, response)
                });
            }
            OutgoingRequest::Grpc(request) => {
                let timeout = request.timeout;
                let fut = clusters.grpc_call(&cluster, request);
                self.spawn_call(timeout, fut, move |vm, result| {
                    let result = result.unwrap_or_else(|| {
                        Err(GrpcStatus {
                            code: GrpcStatus::DEADLINE_EXCEEDED,
                            message: "deadline exceeded".into(),
                        })
                    });
                    vm.on_grpc_call_response(context_id, root, token, result)
                });
            }
        }
    }

    /// Runs one outgoing call as a task of its own: its answer (`None`: it timed out)
    /// goes to `deliver` in the VM that made it, unless the filter was dropped (a
    /// configuration reload cancels its calls) or its VM was reloaded meanwhile.
    fn spawn_call<T: 'static>(
        &self,
        timeout: Duration,
        fut: LocalFuture<T>,
        deliver: impl FnOnce(&mut Vm, Option<T>) -> Result<(), Fault> + 'static,
    ) {
        let generation = self.generation();
        // The task holds the filter weakly, so that its calls do not keep it alive.
        let weak = Rc::downgrade(&self.inner);
        let cell = &self.inner.cell;
        let n = cell.next_call.get();
        cell.next_call.set(n.wrapping_add(1));
        let task = tokio::task::spawn_local(async move {
            let result = with_timeout(timeout, fut).await;
            let Some(inner) = weak.upgrade() else { return };
            let this = Filter { inner };
            if this.generation() == generation {
                this.with_vm(|vm| deliver(vm, result));
            }
            this.inner.cell.calls.borrow_mut().remove(&n);
        });
        cell.calls.borrow_mut().insert(n, task.abort_handle());
    }

    /// Keeps the next tick in step with the period the filter asked for, and on the
    /// system clock runs a timer task that fires ticks on time and delivers shared-queue
    /// notifications (within `QUEUE_POLL`; a VM's queue has no waker the host can hold).
    fn schedule_ticks(&self, period: Option<Duration>) {
        let clock = self.inner.cell.engine.clock().clone();
        match period {
            None => self.inner.next_tick.set(None),
            Some(p) => {
                if self.inner.next_tick.get().is_none() {
                    self.inner
                        .next_tick
                        .set(Some(clock.monotonic_ns() + p.as_nanos() as u64));
                }
            }
        }
        if clock.is_manual() || self.inner.ticker_started.replace(true) {
            return;
        }
        let weak = Rc::downgrade(&self.inner);
        tokio::task::spawn_local(async move {
            loop {
                let wait = {
                    let Some(inner) = weak.upgrade() else { return };
                    let now = inner.cell.engine.clock().monotonic_ns();
                    match inner.next_tick.get() {
                        Some(due) => Duration::from_nanos(due.saturating_sub(now)).min(QUEUE_POLL),
                        None => QUEUE_POLL,
                    }
                };
                tokio::time::sleep(wait).await;
                let Some(inner) = weak.upgrade() else { return };
                Filter { inner }.run_due_ticks();
            }
        });
    }

    /// Fires `on_tick` if a tick is due (the test bed calls this after moving its
    /// clock; the gateway's ticker task calls it on time), and delivers queue
    /// notifications.
    pub fn run_due_ticks(&self) {
        let _ = self.with_vm(|vm| vm.drain_queue_notifications());
        let now = self.inner.cell.engine.clock().monotonic_ns();
        let Some(due) = self.inner.next_tick.get() else {
            return;
        };
        if now < due {
            return;
        }
        let period = self
            .vm()
            .borrow()
            .as_ref()
            .and_then(|vm| vm.tick_period(self.inner.root));
        // The next tick is one period after this one; missed ticks are not replayed.
        self.inner
            .next_tick
            .set(period.map(|p| now + p.as_nanos() as u64));
        let root = self.inner.root;
        let _ = self.with_vm(|vm| vm.on_tick(root));
    }

    /// Bytes of linear memory the VM uses (0 when it has failed).
    pub fn memory_bytes(&self) -> usize {
        self.vm()
            .borrow()
            .as_ref()
            .map_or(0, |vm| vm.memory_bytes())
    }

    /// Calls (`http_call`, `grpc_call`) still being carried out for this filter's VM.
    pub fn pending_calls(&self) -> usize {
        self.inner.cell.calls.borrow().len()
    }

    /// Requests in flight in this filter's VM (every plugin's).
    pub fn live_contexts(&self) -> usize {
        self.vm()
            .borrow()
            .as_ref()
            .map_or(0, |vm| vm.live_contexts())
    }
}

async fn with_timeout<T>(timeout: Duration, fut: LocalFuture<T>) -> Option<T> {
    // A zero timeout means none, as in Envoy's async client.
    if timeout.is_zero() {
        return Some(fut.await);
    }
    tokio::time::timeout(timeout, fut).await.ok()
}
