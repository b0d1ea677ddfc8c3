//! The host-side state of one VM: what the proxy-wasm host calls read and change.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;
use wasmtime::{Memory, StoreLimits, TypedFunc};

use crate::abi::LogLevel;
use crate::clock::Clock;
use crate::headers::HeaderMap;
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
    pub info: Arc<RequestInfo>,
    pub phase: Phase,
    pub request_headers: Option<HeaderMap>,
    pub request_trailers: Option<HeaderMap>,
    pub response_headers: Option<HeaderMap>,
    pub response_trailers: Option<HeaderMap>,
    /// The body buffer of the current phase (request or response).
    pub body: Option<Vec<u8>>,
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
}

pub type StreamProperties = Arc<parking_lot::Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

impl HttpCtx {
    pub fn new(info: Arc<RequestInfo>, properties: StreamProperties) -> Self {
        HttpCtx {
            info,
            phase: Phase::Request,
            request_headers: None,
            request_trailers: None,
            response_headers: None,
            response_trailers: None,
            body: None,
            local_reply: None,
            resume_request: false,
            resume_response: false,
            close: false,
            signal: Arc::new(Notify::new()),
            properties,
            response_code: None,
        }
    }
}

/// A call a filter made during a callback; the embedder carries it out afterwards.
pub enum Outgoing {
    Http {
        token: u32,
        context_id: u32,
        cluster: String,
        request: HttpCallRequest,
    },
    Grpc {
        token: u32,
        context_id: u32,
        cluster: String,
        request: GrpcCallRequest,
    },
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
        self.0 = u64::from(n);
    }
}

pub struct HostState {
    pub limits: StoreLimits,
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<u32, u32>>,
    pub env: Arc<PluginEnv>,
    pub root_context_id: u32,
    pub tick_period_ms: u32,
    pub http: HashMap<u32, HttpCtx, ContextIds>,
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
    /// gRPC calls the filter cancelled after they were sent; their answers are dropped.
    pub cancelled_grpc: std::collections::HashSet<u32>,
    /// Log lines kept while the VM starts, for the error of a rejected configuration.
    pub captured: Option<Vec<String>>,
    /// Properties a filter set from its root context.
    pub root_properties: HashMap<Vec<u8>, Vec<u8>>,
}

impl HostState {
    pub fn http_ctx(&mut self) -> Option<&mut HttpCtx> {
        self.http.get_mut(&self.effective)
    }

    pub fn log(&mut self, level: LogLevel, message: String) {
        if let Some(c) = &mut self.captured {
            c.push(format!("{level:?}: {message}"));
        }
        self.env.log(level, message);
    }
}
