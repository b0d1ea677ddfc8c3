//! What a worker holds while it serves: the state every worker shares (the engine,
//! metrics, access log, readiness) and one worker's view of a configuration (listener
//! limits, routes, service pools, filter chains). The request path reads it; the
//! worker builds and swaps it.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use portcullis_engine::{Engine, Filter, PluginSpec};

use crate::access_log::AccessLog;
use crate::config::{FilterPlan, Plan};
use crate::metrics::GatewayMetrics;
use crate::router::Router;
use crate::upstream::{GatewayClusters, ServiceClient};

/// What every worker shares.
pub struct Shared {
    pub engine: Engine,
    pub metrics: GatewayMetrics,
    pub access_log: Option<AccessLog>,
    pub draining: AtomicBool,
    pub ready: AtomicBool,
}

impl Shared {
    /// Not draining, not yet ready.
    pub fn new(engine: Engine, access_log: Option<AccessLog>) -> Arc<Shared> {
        Arc::new(Shared {
            engine,
            metrics: GatewayMetrics::default(),
            access_log,
            draining: Default::default(),
            ready: Default::default(),
        })
    }
}

/// A runtime on the calling thread: a worker's, or the main thread's.
pub fn local_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub struct ListenerLimits {
    pub max_headers_bytes: usize,
    pub max_headers_count: usize,
    pub escaped_slashes: crate::path::EscapedSlashes,
    pub trusted_proxies: crate::edge::Trusted,
}

/// One worker's view of a configuration: routes, service pools, and the filter chain
/// of every route (a filter is one root context in the worker's VM of its `vm_id` and
/// module, shared by the routes that use it).
pub struct WorkerState {
    pub listeners: Vec<ListenerLimits>,
    pub router: Router,
    pub services: Vec<ServiceClient>,
    pub chains: Vec<Vec<Filter>>,
    /// The wasm services this thread runs, kept alive for their ticks and calls.
    pub wasm_services: Vec<Filter>,
    /// Extra identity header names stripped from client requests.
    pub identity_headers: Vec<String>,
    pub shared: Arc<Shared>,
}

/// What a thread of the gateway runs: a worker serves requests (filters, and the wasm
/// services that run per worker); the main VM thread runs the singleton wasm services.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Worker,
    Main,
}

impl WorkerState {
    /// Starts the VMs `plan` gives this thread's `role`: a worker's filters and
    /// per-worker wasm services, or the singleton wasm services. Must run inside a
    /// `LocalSet`.
    pub fn build(plan: &Plan, shared: Arc<Shared>, role: Role) -> Result<WorkerState, Vec<String>> {
        let clusters: Rc<dyn portcullis_engine::Clusters> =
            Rc::new(GatewayClusters::new(&plan.services));
        let spec = |f: &FilterPlan| PluginSpec {
            name: f.name.clone(),
            root_id: f.root_id.clone(),
            vm_id: f.vm_id.clone(),
            configuration: f.configuration.clone(),
            vm_configuration: f.vm_configuration.clone(),
            failure_policy: f.failure_policy,
            allow_on_headers_stop_iteration: f.allow_on_headers_stop_iteration,
            limits: f.limits,
            module: f.module.clone(),
        };
        let engine = &shared.engine;
        let mut errors = Vec::new();
        // Filters of the same vm_id and module share a VM on the worker, with a root
        // context each (Filter::start_all groups them).
        let filters: Vec<Filter> = if role == Role::Worker {
            let specs = plan.filters.iter().map(|f| spec(f)).collect();
            Filter::start_all(engine, specs, clusters.clone()).unwrap_or_else(|e| {
                errors.extend(e.iter().map(ToString::to_string));
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let services: Vec<PluginSpec> = plan
            .wasm_services
            .iter()
            .filter(|w| w.singleton == (role == Role::Main))
            .map(|w| spec(&w.filter))
            .collect();
        let wasm_services =
            Filter::start_all(engine, services, clusters.clone()).unwrap_or_else(|e| {
                errors.extend(e.iter().map(|e| format!("wasm service: {e}")));
                Vec::new()
            });
        if !errors.is_empty() {
            return Err(errors);
        }
        let chains = plan
            .routes
            .iter()
            .map(|r| {
                r.filters
                    .iter()
                    .filter_map(|i| filters.get(*i).cloned())
                    .collect()
            })
            .collect();
        Ok(WorkerState {
            listeners: plan
                .listeners
                .iter()
                .map(|l| ListenerLimits {
                    max_headers_bytes: l.max_headers_bytes,
                    max_headers_count: l.max_headers_count,
                    escaped_slashes: l.escaped_slashes,
                    trusted_proxies: l.trusted_proxies.clone(),
                })
                .collect(),
            router: Router::new(&plan.routes),
            services: plan
                .services
                .iter()
                .map(|s| ServiceClient::new(s.clone()))
                .collect(),
            chains,
            wasm_services,
            identity_headers: plan.identity_headers.clone(),
            shared,
        })
    }
}
