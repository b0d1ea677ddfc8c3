//! Workers: each a thread with its own tokio runtime and its own VMs (Envoy's model),
//! accepting on the shared listening sockets, serving HTTP/1.1 and HTTP/2, and
//! swapping its configuration on reload.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::LocalSet;

use crate::config::Plan;
use crate::proxy::{Conn, handle};
use crate::state::{Role, Shared, WorkerState};

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
    /// Set at start (a reload does not change them).
    pub limits: crate::downstream::ClientLimits,
    /// Open connections, across workers.
    pub open: Arc<crate::downstream::ConnectionCount>,
}

/// Starts a worker thread (or, with `Role::Main` and no sockets, the thread of the
/// singleton wasm services). It reports once whether its VMs started.
pub fn spawn(
    index: usize,
    role: Role,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    sockets: Arc<Vec<ListenerSocket>>,
    mut control: mpsc::UnboundedReceiver<Control>,
    started: oneshot::Sender<Result<(), Vec<String>>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(match role {
            Role::Worker => format!("worker-{index}"),
            Role::Main => "wasm-main".to_owned(),
        })
        .spawn(move || {
            let rt = match crate::state::local_runtime() {
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
                let state = match WorkerState::build(&plan, shared.clone(), role) {
                    Ok(s) => Rc::new(RefCell::new(Rc::new(s))),
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let (stop_tx, stop_rx) = watch::channel(false);
                let open = Rc::new(Cell::new(0usize));
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
                        socket.limits,
                        socket.open.clone(),
                        state.clone(),
                        open.clone(),
                        stop_rx.clone(),
                    ));
                }
                let _ = started.send(Ok(()));
                while let Some(msg) = control.recv().await {
                    match msg {
                        Control::Reload(plan, done) => {
                            let result = WorkerState::build(&plan, shared.clone(), role).map(|s| {
                                *state.borrow_mut() = Rc::new(s);
                            });
                            let _ = done.send(result);
                        }
                        Control::Drain(deadline) => {
                            // Accept loops stop; each connection is told to finish
                            // (HTTP/2: GOAWAY) and ends when its requests are done.
                            let _ = stop_tx.send(true);
                            let until = tokio::time::Instant::now() + deadline;
                            while open.get() > 0 && tokio::time::Instant::now() < until {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            return;
                        }
                    }
                }
            });
        })
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    index: usize,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: crate::downstream::ClientLimits,
    count: Arc<crate::downstream::ConnectionCount>,
    state: Rc<RefCell<Rc<WorkerState>>>,
    open: Rc<Cell<usize>>,
    mut stop: watch::Receiver<bool>,
) {
    use crate::downstream::{Activity, Watched, drive};
    let drain = stop.clone();
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
        let metrics = state.borrow().shared.clone();
        let Some(slot) = count.acquire(limits.max_connections) else {
            // Closed at once: a client over the cap learns it now, not after a wait.
            metrics
                .metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let conn = Rc::new(Conn {
            peer,
            local,
            tls: tls.is_some(),
            listener: index,
        });
        let activity = Activity::new();
        let state = state.clone();
        let requests = activity.clone();
        let service = service_fn(move |req| {
            let st = state.borrow().clone();
            let conn = conn.clone();
            let in_flight = requests.request();
            async move {
                st.shared.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                let resp = handle(st.clone(), conn, req).await;
                st.shared.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                // The response body is still to be sent: its bytes count as activity.
                drop(in_flight);
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
            .header_read_timeout(limits.request_headers_timeout)
            .timer(hyper_util::rt::TokioTimer::new());
        builder
            .http2()
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_pending_accept_reset_streams(limits.http2_max_pending_resets)
            .max_header_list_size(limits.http2_max_header_list_bytes)
            .timer(hyper_util::rt::TokioTimer::new());
        let drain = drain.clone();
        let open = open.clone();
        let tls = tls.clone();
        tokio::task::spawn_local(async move {
            open.set(open.get() + 1);
            let idle = {
                let metrics = metrics.clone();
                move || {
                    metrics
                        .metrics
                        .connections_idle_closed
                        .fetch_add(1, Ordering::Relaxed);
                }
            };
            let watched = Watched::new(stream, activity.clone());
            match tls {
                None => {
                    let c = builder.serve_connection(TokioIo::new(watched), service);
                    drive(c, activity, &limits, drain, idle).await;
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        limits.request_headers_timeout.min(Duration::from_secs(10)),
                        acceptor.accept(watched),
                    )
                    .await;
                    if let Ok(Ok(tls_stream)) = handshake {
                        let c = builder.serve_connection(TokioIo::new(tls_stream), service);
                        drive(c, activity, &limits, drain, idle).await;
                    }
                }
            }
            open.set(open.get() - 1);
            drop(slot);
        });
    }
}
