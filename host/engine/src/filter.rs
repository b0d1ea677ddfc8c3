//! A plugin as one worker runs it: its VM, the failure policy applied when that VM
//! fails, and the calls (`http_call`, `grpc_call`), ticks and queue notifications
//! the VM is waiting for. Lives on one thread (`Rc`); needs a tokio `LocalSet`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::abi::LogLevel;
use crate::engine::Engine;
use crate::headers::HeaderMap;
use crate::state::Outgoing;
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

pub(crate) struct FilterInner {
    pub spec: PluginSpec,
    pub engine: Engine,
    pub clusters: Rc<dyn Clusters>,
    pub vm: RefCell<Option<Vm>>,
    /// Bumped whenever the VM is replaced, so answers for an old VM are dropped.
    pub generation: Cell<u64>,
    pub health: RefCell<Health>,
    pub reloads: Cell<u64>,
    /// Monotonic time (ns) the next tick is due.
    pub next_tick: Cell<Option<u64>>,
    pub ticker_started: Cell<bool>,
    /// The tasks carrying out this filter's calls, by a number of their own; each
    /// removes itself when its answer has been delivered. A failed VM's calls are
    /// cancelled with it, and every call goes with the filter.
    pub calls: RefCell<std::collections::HashMap<u64, tokio::task::AbortHandle>>,
    pub next_call: Cell<u64>,
}

impl FilterInner {
    fn cancel_calls(&self) {
        let calls = std::mem::take(&mut *self.calls.borrow_mut());
        for (_, call) in calls {
            call.abort();
        }
    }
}

impl Drop for FilterInner {
    fn drop(&mut self) {
        self.cancel_calls();
    }
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
        let vm = Vm::start(engine, &spec, clusters.names())?;
        let filter = Filter {
            inner: Rc::new(FilterInner {
                spec,
                engine: engine.clone(),
                clusters,
                vm: RefCell::new(Some(vm)),
                generation: Cell::new(1),
                health: RefCell::new(Health::Running),
                reloads: Cell::new(0),
                next_tick: Cell::new(None),
                ticker_started: Cell::new(false),
                calls: RefCell::default(),
                next_call: Cell::new(0),
            }),
        };
        filter.after_callback();
        Ok(filter)
    }

    pub fn name(&self) -> &str {
        &self.inner.spec.name
    }

    pub fn spec(&self) -> &PluginSpec {
        &self.inner.spec
    }

    pub fn health(&self) -> Health {
        self.inner.health.borrow().clone()
    }

    pub fn policy(&self) -> FailurePolicy {
        self.inner.spec.failure_policy
    }

    /// Whether a pause in `on_request_headers` still lets the body reach the filter
    /// (see [`PluginSpec::allow_on_headers_stop_iteration`]).
    pub fn holds_headers_for_body(&self) -> bool {
        self.inner.spec.allow_on_headers_stop_iteration
    }

    pub fn generation(&self) -> u64 {
        self.inner.generation.get()
    }

    /// How many times a fresh VM replaced a failed one (`reload` policy).
    pub fn reloads(&self) -> u64 {
        self.inner.reloads.get()
    }

    /// Runs `f` on the VM if it is healthy; a fault marks the filter failed.
    pub(crate) fn with_vm<T>(
        &self,
        f: impl FnOnce(&mut Vm) -> Result<T, Fault>,
    ) -> Option<Result<T, Fault>> {
        let result = {
            let mut vm = self.inner.vm.borrow_mut();
            let vm = vm.as_mut()?;
            f(vm)
        };
        if let Err(fault) = &result {
            self.fail(fault.clone());
        }
        self.after_callback();
        Some(result)
    }

    /// Marks the VM failed and drops it; requests waiting on it are woken and see it.
    pub(crate) fn fail(&self, fault: Fault) {
        if let Some(vm) = self.inner.vm.borrow_mut().take() {
            vm.wake_all();
        }
        // Their answers would be dropped (the generation changes): stop them now, so
        // a call without a timeout does not outlive the VM that made it.
        self.inner.cancel_calls();
        self.inner.generation.set(self.inner.generation.get() + 1);
        self.inner.next_tick.set(None);
        *self.inner.health.borrow_mut() = Health::Failed(fault);
    }

    /// For the `reload` policy: a fresh VM after a failure. Called when a new request
    /// arrives, so a filter that fails at every request does not spin.
    pub(crate) fn reload_if_failed(&self) {
        if self.policy() != FailurePolicy::Reload || self.inner.vm.borrow().is_some() {
            return;
        }
        match Vm::start(
            &self.inner.engine,
            &self.inner.spec,
            self.inner.clusters.names(),
        ) {
            Ok(vm) => {
                *self.inner.vm.borrow_mut() = Some(vm);
                self.inner.generation.set(self.inner.generation.get() + 1);
                self.inner.reloads.set(self.inner.reloads.get() + 1);
                *self.inner.health.borrow_mut() = Health::Running;
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
        (self.inner.engine.inner.log)(LogRecord {
            plugin: self.name().to_owned(),
            level,
            message,
        });
    }

    /// After every callback: carry out the calls the filter made, and keep the tick
    /// schedule in step with the period it asked for.
    fn after_callback(&self) {
        let (outgoing, period) = {
            let mut vm = self.inner.vm.borrow_mut();
            match vm.as_mut() {
                Some(vm) => (vm.take_outgoing(), vm.tick_period()),
                None => return,
            }
        };
        for call in outgoing {
            self.dispatch(call);
        }
        self.schedule_ticks(period);
    }

    fn dispatch(&self, call: Outgoing) {
        let generation = self.generation();
        // The task holds the filter weakly: a filter dropped (a configuration reload)
        // cancels its calls instead of being kept alive by them.
        let weak = Rc::downgrade(&self.inner);
        let n = self.inner.next_call.get();
        self.inner.next_call.set(n.wrapping_add(1));
        let task = match call {
            Outgoing::Http {
                token,
                context_id,
                cluster,
                request,
            } => {
                let timeout = request.timeout;
                let fut = self.inner.clusters.http_call(&cluster, request);
                tokio::task::spawn_local(async move {
                    let result = with_timeout(timeout, fut)
                        .await
                        .unwrap_or(Err(CallFailure::Timeout));
                    let response = match result {
                        Ok(r) => Some(r),
                        Err(f) => failure_response(&f),
                    };
                    let Some(inner) = weak.upgrade() else { return };
                    let this = Filter { inner };
                    if this.generation() == generation {
                        this.with_vm(|vm| vm.on_http_call_response(context_id, token, response));
                    }
                    this.inner.calls.borrow_mut().remove(&n);
                })
            }
            Outgoing::Grpc {
                token,
                context_id,
                cluster,
                request,
            } => {
                let timeout = request.timeout;
                let fut = self.inner.clusters.grpc_call(&cluster, request);
                tokio::task::spawn_local(async move {
                    let result = with_timeout(timeout, fut).await.unwrap_or_else(|| {
                        Err(GrpcStatus {
                            code: GrpcStatus::DEADLINE_EXCEEDED,
                            message: "deadline exceeded".into(),
                        })
                    });
                    let Some(inner) = weak.upgrade() else { return };
                    let this = Filter { inner };
                    if this.generation() == generation {
                        this.with_vm(|vm| vm.on_grpc_call_response(context_id, token, result));
                    }
                    this.inner.calls.borrow_mut().remove(&n);
                })
            }
        };
        self.inner.calls.borrow_mut().insert(n, task.abort_handle());
    }

    /// Keeps the next tick in step with the period the filter asked for, and on the
    /// system clock runs a timer task that fires ticks on time and delivers shared-queue
    /// notifications (within `QUEUE_POLL`; a VM's queue has no waker the host can hold).
    fn schedule_ticks(&self, period: Option<Duration>) {
        let clock = self.inner.engine.clock().clone();
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
                    let now = inner.engine.clock().monotonic_ns();
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
        let now = self.inner.engine.clock().monotonic_ns();
        let Some(due) = self.inner.next_tick.get() else {
            return;
        };
        if now < due {
            return;
        }
        let period = self
            .inner
            .vm
            .borrow()
            .as_ref()
            .and_then(|vm| vm.tick_period());
        // The next tick is one period after this one; missed ticks are not replayed.
        self.inner
            .next_tick
            .set(period.map(|p| now + p.as_nanos() as u64));
        let _ = self.with_vm(|vm| vm.on_tick());
    }

    /// Bytes of linear memory the VM uses (0 when it has failed).
    pub fn memory_bytes(&self) -> usize {
        self.inner
            .vm
            .borrow()
            .as_ref()
            .map_or(0, |vm| vm.memory_bytes())
    }

    /// Calls (`http_call`, `grpc_call`) still being carried out for this filter.
    pub fn pending_calls(&self) -> usize {
        self.inner.calls.borrow().len()
    }

    pub fn live_contexts(&self) -> usize {
        self.inner
            .vm
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
