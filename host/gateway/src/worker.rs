//! Workers: each a thread with its own tokio runtime and its own VMs (Envoy's model),
//! accepting on the shared listening sockets, serving HTTP/1.1 and HTTP/2, and
//! swapping its configuration on reload.

use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use portcullis_engine::{Engine, Filter, PluginSpec};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::LocalSet;

use crate::access_log::AccessLog;
use crate::config::Plan;
use crate::metrics::GatewayMetrics;
use crate::proxy::{Conn, handle};
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

pub struct ListenerLimits {
    pub max_headers_bytes: usize,
    pub max_headers_count: usize,
    pub escaped_slashes: crate::path::EscapedSlashes,
    pub trusted_proxies: crate::edge::Trusted,
}

/// One worker's view of a configuration: routes, service pools, and the filter chain
/// of every route (one VM per filter per worker, shared by the routes that use it).
pub struct WorkerState {
    pub listeners: Vec<ListenerLimits>,
    pub router: Router,
    pub services: Vec<ServiceClient>,
    pub chains: Vec<Vec<Filter>>,
    /// Extra identity header names stripped from client requests.
    pub identity_headers: Vec<String>,
    pub shared: Arc<Shared>,
}

impl WorkerState {
    /// Starts every filter of `plan` on this thread. Must run inside a `LocalSet`.
    pub fn build(plan: &Plan, shared: Arc<Shared>) -> Result<WorkerState, Vec<String>> {
        let clusters: Rc<dyn portcullis_engine::Clusters> =
            Rc::new(GatewayClusters::new(&plan.services));
        let mut filters = Vec::new();
        let mut errors = Vec::new();
        for f in &plan.filters {
            let spec = PluginSpec {
                name: f.name.clone(),
                root_id: f.name.clone(),
                vm_id: f.vm_id.clone(),
                configuration: f.configuration.clone(),
                vm_configuration: Vec::new(),
                failure_policy: f.failure_policy,
                limits: f.limits,
                module: f.module.clone(),
            };
            match Filter::start(&shared.engine, spec, clusters.clone()) {
                Ok(filter) => filters.push(Some(filter)),
                Err(e) => {
                    errors.push(e.to_string());
                    filters.push(None);
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let chains = plan
            .routes
            .iter()
            .map(|r| {
                r.filters
                    .iter()
                    .filter_map(|i| filters[*i].clone())
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
            identity_headers: plan.identity_headers.clone(),
            shared,
        })
    }
}

pub enum Control {
    Reload(Arc<Plan>, oneshot::Sender<Result<(), Vec<String>>>),
    Drain(Duration),
}

/// Runs hyper's futures on the worker's own thread: our request futures hold `Rc`s.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

pub struct ListenerSocket {
    pub std: std::net::TcpListener,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Starts a worker thread. It reports once whether its filters started.
pub fn spawn(
    index: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    sockets: Arc<Vec<ListenerSocket>>,
    mut control: mpsc::UnboundedReceiver<Control>,
    started: oneshot::Sender<Result<(), Vec<String>>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("worker-{index}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started.send(Err(vec![format!(
                        "worker {index}: cannot start a runtime: {e}"
                    )]));
                    return;
                }
            };
            let local = LocalSet::new();
            local.block_on(&rt, async move {
                let state = match WorkerState::build(&plan, shared.clone()) {
                    Ok(s) => Rc::new(RefCell::new(Rc::new(s))),
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let (stop_tx, stop_rx) = watch::channel(false);
                let graceful = Rc::new(GracefulShutdown::new());
                for (i, socket) in sockets.iter().enumerate() {
                    let listener = match socket.std.try_clone().and_then(TcpListener::from_std) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ =
                                started.send(Err(vec![format!("worker {index}: listener: {e}")]));
                            return;
                        }
                    };
                    tokio::task::spawn_local(accept_loop(
                        i,
                        listener,
                        socket.tls.clone(),
                        state.clone(),
                        graceful.clone(),
                        stop_rx.clone(),
                    ));
                }
                let _ = started.send(Ok(()));
                while let Some(msg) = control.recv().await {
                    match msg {
                        Control::Reload(plan, done) => {
                            let result = WorkerState::build(&plan, shared.clone()).map(|s| {
                                *state.borrow_mut() = Rc::new(s);
                            });
                            let _ = done.send(result);
                        }
                        Control::Drain(deadline) => {
                            let _ = stop_tx.send(true);
                            // The accept loops let go of the shutdown handle as they stop.
                            let mut g = graceful;
                            let graceful = loop {
                                match Rc::try_unwrap(g) {
                                    Ok(inner) => break inner,
                                    Err(still_shared) => {
                                        g = still_shared;
                                        tokio::task::yield_now().await;
                                    }
                                }
                            };
                            let _ = tokio::time::timeout(deadline, graceful.shutdown()).await;
                            return;
                        }
                    }
                }
            });
        })
}

async fn accept_loop(
    index: usize,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Rc<RefCell<Rc<WorkerState>>>,
    graceful: Rc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let conn = Rc::new(Conn {
            peer,
            local,
            tls: tls.is_some(),
            listener: index,
        });
        let state = state.clone();
        let service = service_fn(move |req| {
            let st = state.borrow().clone();
            let conn = conn.clone();
            async move {
                st.shared.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                let resp = handle(st.clone(), conn, req).await;
                st.shared.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                Ok::<_, Infallible>(resp)
            }
        });
        let mut builder = auto::Builder::new(LocalExec);
        // hyper's own header limits sit above the listener's, so the gateway answers an
        // oversized request with its own JSON 431.
        builder
            .http1()
            .max_buf_size(1 << 20)
            .max_headers(4096)
            .timer(hyper_util::rt::TokioTimer::new());
        builder.http2().timer(hyper_util::rt::TokioTimer::new());
        let watcher = graceful.watcher();
        match &tls {
            None => {
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                tokio::task::spawn_local(watcher.watch(conn));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::task::spawn_local(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await;
                    let Ok(Ok(tls_stream)) = handshake else {
                        return;
                    };
                    let conn = builder
                        .serve_connection(TokioIo::new(tls_stream), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
}
