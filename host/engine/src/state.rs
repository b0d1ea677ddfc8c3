//! The host-side state of one VM: what the proxy-wasm host calls read and change.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;
use wasmtime::{Memory, ResourceLimiter, StoreLimits, TypedFunc};

use crate::abi::LogLevel;
use crate::clock::Clock;
use crate::headers::HeaderMap;
use crate::limits::{HostLimits, Limit};
use crate::metrics::{Metric, Metrics};
use crate::shared::{QueueReady, SharedData, SharedQueues};
use crate::types::{
    GrpcCallRequest, HttpCallRequest, HttpCallResponse, LocalReply, LogRecord, RequestInfo,
};

/// Everything about a plugin that does not change while its VM lives.
pub struct PluginEnv {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    pub vm_configuration: Vec<u8>,
    pub configuration: Vec<u8>,
    pub clock: Clock,
    pub shared_data: Arc<SharedData>,
    pub queues: Arc<SharedQueues>,
    pub metrics: Arc<Metrics>,
    pub log: Arc<dyn Fn(LogRecord) + Send + Sync>,
    pub log_level: LogLevel,
    /// Whether a cluster of this name exists (http_call to another is BadArgument).
    pub has_cluster: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// What the host holds for this VM at most (the engine's when the VM started).
    pub limits: Arc<HostLimits>,
}

impl std::fmt::Debug for PluginEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEnv")
            .field("name", &self.name)
            .field("vm_id", &self.vm_id)
            .finish()
    }
}

impl PluginEnv {
    pub fn log(&self, level: LogLevel, message: String) {
        if level >= self.log_level {
            (self.log)(LogRecord {
                plugin: self.name.clone(),
                level,
                message,
            });
        }
    }

    /// Counts a call refused at `limit` and logs it, at most one line per limit a
    /// second (`what` says what was refused; it is built only for a line).
    pub fn refused(&self, limit: Limit, what: impl FnOnce() -> String) {
        let now = self.clock.monotonic_ns();
        let Some(unlogged) = self.metrics.refusals().refuse(&self.name, limit, now) else {
            return;
        };
        let value = match limit.value(&self.limits) {
            Some(v) => format!(" ({v})"),
            None => String::new(),
        };
        let more = if unlogged > 0 {
            format!("; {unlogged} more refused since the last line")
        } else {
            String::new()
        };
        self.log(
            LogLevel::Warn,
            format!(
                "host limit {}{value} reached: {}{more}",
                limit.name(),
                what()
            ),
        );
    }
}

/// Where a stream is: which header maps a filter may touch depends on it (Envoy
/// refuses request headers during the response with `BadArgument`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Request,
    Response,
    Log,
}

/// One HTTP context: one request as one filter sees it.
pub struct HttpCtx {
    /// The root context (the plugin) the request belongs to.
    pub root: u32,
    pub info: Arc<RequestInfo>,
    pub phase: Phase,
    pub request_headers: Option<HeaderMap>,
    pub request_trailers: Option<HeaderMap>,
    pub response_headers: Option<HeaderMap>,
    pub response_trailers: Option<HeaderMap>,
    /// The body buffer of the current phase (request or response).
    pub body: Option<Vec<u8>>,
    /// How large the filter may make `body` (`None`: the engine's `body_bytes`).
    pub body_limit: Option<usize>,
    pub local_reply: Option<LocalReply>,
    pub resume_request: bool,
    pub resume_response: bool,
    pub close: bool,
    /// Woken when the filter resumes, replies, or fails while the stream waits.
    pub signal: Arc<Notify>,
    /// Properties filters set on this request (Envoy's filter state): shared by every
    /// filter of the request, so one filter can hand a value to the next.
    pub properties: StreamProperties,
    pub response_code: Option<u16>,
    /// Calls this context made that have not been answered yet.
    pub pending_calls: usize,
}

pub type StreamProperties = Arc<parking_lot::Mutex<Properties>>;

/// The last log lines of a VM's start, for the error that says why it did not start:
/// at most [`Captured::LINES`] lines and [`Captured::BYTES`] bytes, the older ones
/// counted and dropped. A filter that logs in a loop while it starts would otherwise
/// make the host keep every line (and print them all in one error).
#[derive(Debug, Default)]
pub struct Captured {
    lines: std::collections::VecDeque<String>,
    bytes: usize,
    dropped: usize,
}

impl Captured {
    pub const LINES: usize = 20;
    pub const BYTES: usize = 8 * 1024;

    pub fn push(&mut self, mut line: String) {
        const CUT: &str = "... (cut)";
        if line.len() > Self::BYTES {
            let mut at = Self::BYTES - CUT.len();
            while !line.is_char_boundary(at) {
                at -= 1;
            }
            line.truncate(at);
            line.push_str(CUT);
        }
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > Self::LINES || self.bytes > Self::BYTES {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.len();
            self.dropped += 1;
        }
    }

    /// The lines kept, after a note of how many earlier ones were dropped.
    pub fn into_lines(self) -> Vec<String> {
        let note = (self.dropped > 0).then(|| format!("({} earlier lines not kept)", self.dropped));
        note.into_iter().chain(self.lines).collect()
    }
}

/// What one property counts against `property_bytes` beyond its path and value: about
/// what the host keeps for it besides those bytes (the table's entry, two allocations),
/// so that empty properties are not free.
pub const PROPERTY_ENTRY_BYTES: usize = 64;

/// Properties filters set (`set_property`), by path, and what they hold.
#[derive(Default, Debug, Clone)]
pub struct Properties {
    map: HashMap<Vec<u8>, Vec<u8>>,
    /// Bytes of every path and value, and [`PROPERTY_ENTRY_BYTES`] for each.
    bytes: usize,
}

impl Properties {
    pub fn get(&self, path: &[u8]) -> Option<&Vec<u8>> {
        self.map.get(path)
    }

    /// Sets `path` to `value`, unless paths and values would then pass `max` bytes.
    pub fn set(&mut self, path: &[u8], value: &[u8], max: usize) -> Result<(), Limit> {
        let bytes = match self.map.get(path) {
            Some(old) => self.bytes.saturating_sub(old.len()) + value.len(),
            None => self.bytes + path.len() + value.len() + PROPERTY_ENTRY_BYTES,
        };
        if bytes > max {
            return Err(Limit::PropertyBytes);
        }
        match self.map.get_mut(path) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(value);
            }
            None => {
                self.map.insert(path.to_vec(), value.to_vec());
            }
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl HttpCtx {
    /// Whether the filter resumed `phase` since this was last asked (and forgets it).
    pub fn take_resumed(&mut self, phase: Phase) -> bool {
        match phase {
            Phase::Request => std::mem::take(&mut self.resume_request),
            _ => std::mem::take(&mut self.resume_response),
        }
    }

    /// A context for a request; `signal` is a fresh `Notify` or one a finished context
    /// left (a stale wake-up is harmless: a waiter checks what happened and waits
    /// again).
    pub fn new(
        root: u32,
        info: Arc<RequestInfo>,
        properties: StreamProperties,
        signal: Arc<Notify>,
    ) -> Self {
        HttpCtx {
            root,
            info,
            phase: Phase::Request,
            request_headers: None,
            request_trailers: None,
            response_headers: None,
            response_trailers: None,
            body: None,
            body_limit: None,
            local_reply: None,
            resume_request: false,
            resume_response: false,
            close: false,
            signal,
            properties,
            response_code: None,
            pending_calls: 0,
        }
    }
}

/// A call a filter made during a callback; the embedder carries it out afterwards.
pub struct Outgoing {
    pub token: u32,
    /// The context that made the call.
    pub context_id: u32,
    /// The root context the answer goes to (the caller's plugin).
    pub root: u32,
    pub cluster: String,
    pub request: OutgoingRequest,
}

/// What an [`Outgoing`] call sends.
pub enum OutgoingRequest {
    Http(HttpCallRequest),
    Grpc(GrpcCallRequest),
}

/// What `on_http_call_response` and the gRPC callbacks read while they run.
#[derive(Default)]
pub enum CallbackData {
    #[default]
    None,
    Http(HttpCallResponse),
    Grpc {
        initial: HeaderMap,
        message: Vec<u8>,
        trailing: HeaderMap,
    },
}

/// Context ids are small numbers the host hands out itself, looked up on every host
/// call: they need no keyed hash (nobody outside chooses them), so they are their own.
pub type ContextIds = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u32(&mut self, n: u32) {
        // Spread over the high bits too: the hash table keeps the top 7 bits of a hash
        // as each slot's tag, and small ids alone would give every slot the same one.
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The VM's resource limiter: wasmtime's limits on memory and tables, with each
/// refused growth counted and logged as the host's other limits are.
pub struct VmLimiter {
    pub limits: StoreLimits,
    pub memory_bytes: usize,
    pub table_elements: usize,
    pub env: Arc<PluginEnv>,
}

impl ResourceLimiter for VmLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.limits.memory_growing(current, desired, maximum)?;
        // Counted when our limit refused it, not the module's own declared maximum.
        if !ok && desired > self.memory_bytes {
            self.env.refused(Limit::Memory, || {
                format!("growing the VM's memory from {current} to {desired} bytes")
            });
        }
        Ok(ok)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.limits.table_growing(current, desired, maximum)?;
        if !ok && desired > self.table_elements {
            self.env.refused(Limit::TableElements, || {
                format!("growing a table from {current} to {desired} elements")
            });
        }
        Ok(ok)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

pub struct HostState {
    pub limiter: VmLimiter,
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<u32, u32>>,
    /// The plugin of the context host calls act on now (one of `roots`).
    pub env: Arc<PluginEnv>,
    /// The root context of the context host calls act on now.
    pub root_context_id: u32,
    /// Every plugin whose root context this VM holds: root context `n` is
    /// `roots[n - 1]` (Envoy keeps one root context per plugin in a shared VM).
    pub roots: Vec<Arc<PluginEnv>>,
    /// Each root context's tick period (ms; 0: none), by the same index.
    pub tick_periods: Vec<u32>,
    pub http: crate::contexts::Contexts,
    /// The context host calls act on (`proxy_set_effective_context` changes it).
    pub effective: u32,
    pub outgoing: Vec<Outgoing>,
    pub next_token: u32,
    pub callback: CallbackData,
    pub grpc_status: (u32, Vec<u8>),
    pub metric_ids: Vec<Arc<Metric>>,
    pub queue_tx: UnboundedSender<QueueReady>,
    /// Set by a host call that found the guest broke the ABI (its allocator returned
    /// memory outside its own memory, say); the callback is then treated as failed.
    pub fault: Option<String>,
    pub foreign_args: Vec<u8>,
    /// gRPC calls made and not answered yet (only these can be cancelled).
    pub grpc_in_flight: std::collections::HashSet<u32>,
    /// gRPC calls the filter cancelled after they were sent; their answers are dropped.
    pub cancelled_grpc: std::collections::HashSet<u32>,
    /// Log lines kept while the VM starts, for the error of a rejected configuration.
    pub captured: Option<Captured>,
    /// Calls made and not answered yet, every context's.
    pub pending_calls: usize,
    /// Wake-up signals of finished contexts nobody else holds, for the next ones: a
    /// context costs no allocation once the VM has served a few requests.
    pub spare_signals: Vec<Arc<Notify>>,
}

impl HostState {
    /// Whether `id` is one of the VM's root contexts.
    pub fn is_root(&self, id: u32) -> bool {
        id >= 1 && id as usize <= self.roots.len()
    }

    /// Makes `id` the context host calls act on, and its plugin the current one.
    pub fn enter(&mut self, id: u32) {
        self.effective = id;
        if self.roots.len() == 1 {
            // The usual VM: one plugin, nothing to switch.
            return;
        }
        let root = if self.is_root(id) {
            id
        } else {
            self.http.get(id).map_or(self.root_context_id, |c| c.root)
        };
        if root != self.root_context_id {
            self.root_context_id = root;
            self.env = self.roots[root as usize - 1].clone();
        }
    }

    pub fn http_ctx(&mut self) -> Option<&mut HttpCtx> {
        self.http.get_mut(self.effective)
    }

    /// A call of `context_id` was answered (or dropped): it is no longer in flight.
    pub fn call_done(&mut self, context_id: u32) {
        self.pending_calls = self.pending_calls.saturating_sub(1);
        if let Some(ctx) = self.http.get_mut(context_id) {
            ctx.pending_calls = ctx.pending_calls.saturating_sub(1);
        }
    }

    pub fn log(&mut self, level: LogLevel, message: String) {
        if let Some(c) = &mut self.captured {
            c.push(format!("{level:?}: {message}"));
        }
        self.env.log(level, message);
    }
}
