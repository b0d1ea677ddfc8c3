//! Starting, reloading and draining the gateway.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use portcullis_engine::{Engine, EngineConfig};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use crate::access_log::AccessLog;
use crate::config::{self, Plan};
use crate::state::{Role, Shared, WorkerState, local_runtime};
use crate::worker::{self, Control, ListenerSocket};

/// Checks a configuration completely: parse, references, listeners' TLS files, every
/// module compiled and every filter started once (its `on_configure` accepts its
/// configuration). Returns every error found.
pub fn validate(path: &Path) -> Result<Plan, Vec<String>> {
    let engine = Engine::new(EngineConfig::default()).map_err(|e| vec![e.to_string()])?;
    validate_with(path, &engine)
}

fn validate_with(path: &Path, engine: &Engine) -> Result<Plan, Vec<String>> {
    let plan = config::load(path, engine)?;
    engine.set_limits(plan.limits.clone());
    let shared = Shared::new(engine.clone(), None);
    let rt = local_runtime().map_err(|e| vec![e.to_string()])?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        WorkerState::build(&plan, shared.clone(), Role::Main)?;
        WorkerState::build(&plan, shared, Role::Worker).map(|_| ())
    })?;
    Ok(plan)
}

/// Runs the gateway until SIGTERM or SIGINT (drain, then exit) and reloads on SIGHUP.
pub fn run(path: PathBuf) -> Result<(), Vec<String>> {
    let engine = Engine::new(EngineConfig::default()).map_err(|e| vec![e.to_string()])?;
    let started = std::time::Instant::now();
    let plan = Arc::new(config::load(&path, &engine)?);
    engine.set_limits(plan.limits.clone());
    let access_log = match &plan.access_log {
        None => None,
        Some(target) => {
            Some(AccessLog::open(target).map_err(|e| vec![format!("access_log `{target}`: {e}")])?)
        }
    };
    let mut sockets = Vec::new();
    for l in &plan.listeners {
        let std = std::net::TcpListener::bind(l.address)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|e| {
                vec![format!(
                    "listener `{}`: cannot listen on {}: {e}",
                    l.name, l.address
                )]
            })?;
        let tls = l.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        sockets.push(ListenerSocket {
            std,
            tls,
            limits: l.clients,
            open: Default::default(),
        });
    }
    let sockets = Arc::new(sockets);
    let shared = Shared::new(engine, access_log);
    let rt = local_runtime().map_err(|e| vec![e.to_string()])?;
    // A `LocalSet` for the admin server's connections, which are the thread's own.
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut controls = Vec::new();
        let mut threads = Vec::new();
        let mut starts = Vec::new();
        // The first worker first: a reload it refuses reaches no other thread. The
        // thread of the singleton wasm services next.
        let roles = (0..plan.workers)
            .map(|i| (i, Role::Worker, sockets.clone()))
            .collect::<Vec<_>>();
        let mut roles = roles.into_iter();
        let first = roles.next();
        let roles = first
            .into_iter()
            .chain(std::iter::once((0, Role::Main, Arc::new(Vec::new()))))
            .chain(roles);
        for (i, role, sockets) in roles {
            let (tx, rx) = mpsc::unbounded_channel();
            let (started_tx, started_rx) = oneshot::channel();
            let t = worker::spawn(
                i,
                role,
                plan.clone(),
                shared.clone(),
                sockets,
                rx,
                started_tx,
            )
            .map_err(|e| vec![format!("cannot start the {role:?} thread {i}: {e}")])?;
            controls.push(tx);
            threads.push(t);
            starts.push(started_rx);
        }
        for s in starts {
            match s.await {
                Ok(Ok(())) => {}
                Ok(Err(errors)) => return Err(errors),
                Err(_) => return Err(vec!["a worker stopped while starting".into()]),
            }
        }
        if let Some(addr) = plan.admin {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| vec![format!("admin: cannot listen on {addr}: {e}")])?;
            tokio::task::spawn_local(crate::admin::serve(l, shared.clone()));
            tracing::info!("admin on http://{addr}");
        }
        for (l, s) in plan.listeners.iter().zip(sockets.iter()) {
            let addr = s
                .std
                .local_addr()
                .map_or(l.address.to_string(), |a| a.to_string());
            let scheme = if l.tls.is_some() { "https" } else { "http" };
            tracing::info!(listener = %l.name, "listening on {scheme}://{addr}");
        }
        shared.ready.store(true, Ordering::Relaxed);
        tracing::info!(
            workers = plan.workers,
            "portcullis ready in {} ms",
            started.elapsed().as_millis()
        );

        let mut term = signal(SignalKind::terminate()).map_err(|e| vec![e.to_string()])?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| vec![e.to_string()])?;
        let mut hup = signal(SignalKind::hangup()).map_err(|e| vec![e.to_string()])?;
        let drain = plan.drain_timeout;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => reload(&path, &shared, &controls, &plan).await,
            }
        }
        tracing::info!(
            "draining: no new connections; waiting up to {} ms for requests in flight",
            drain.as_millis()
        );
        shared.draining.store(true, Ordering::Relaxed);
        for c in &controls {
            let _ = c.send(Control::Drain(drain));
        }
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let _ = tokio::time::timeout(drain + Duration::from_secs(1), joined).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// SIGHUP: the new configuration is checked completely (on the first worker) before
/// any other thread uses it; a bad one is logged and the old one keeps serving. The
/// singleton wasm services start on their own thread after it: if one refuses the new
/// configuration, the old ones keep running (logged) while the workers take it.
async fn reload(
    path: &Path,
    shared: &Arc<Shared>,
    controls: &[mpsc::UnboundedSender<Control>],
    running: &Plan,
) {
    tracing::info!("reloading {}", path.display());
    let plan = match config::load(path, &shared.engine) {
        Ok(p) => {
            // Sockets, workers and the access log are set up once; the rest reloads.
            let addrs = |p: &Plan| {
                p.listeners
                    .iter()
                    .map(|l| (l.name.clone(), l.address))
                    .collect::<Vec<_>>()
            };
            if addrs(&p) != addrs(running)
                || p.workers != running.workers
                || p.admin != running.admin
            {
                tracing::warn!(
                    "listeners, workers and admin changes take effect at the next restart"
                );
            }
            Arc::new(p)
        }
        Err(errors) => {
            for e in &errors {
                tracing::error!("reload refused: {e}");
            }
            return;
        }
    };
    // The VMs the workers start for the new configuration take its limits; if the
    // first worker refuses it, the old limits stand with the old configuration.
    let old_limits = shared.engine.limits();
    shared.engine.set_limits(plan.limits.clone());
    for (i, c) in controls.iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        if c.send(Control::Reload(plan.clone(), tx)).is_err() {
            continue;
        }
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(errors)) => {
                for e in &errors {
                    tracing::error!("reload refused: {e}");
                }
                if i == 0 {
                    shared.engine.set_limits((*old_limits).clone());
                    return;
                }
            }
            Err(_) => {}
        }
    }
    tracing::info!("reloaded {}", path.display());
}
