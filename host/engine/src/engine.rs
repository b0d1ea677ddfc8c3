//! The engine: one wasmtime engine per host process, the module compiler with its
//! on-disk cache of precompiled modules, and the state every worker shares.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{InstancePre, Linker, Module};

use crate::abi::LogLevel;
use crate::clock::Clock;
use crate::limits::HostLimits;
use crate::metrics::Metrics;
use crate::shared::{SharedData, SharedQueues};
use crate::state::HostState;
use crate::types::LogRecord;

/// How often the epoch advances; callback deadlines are counted in these.
pub const EPOCH_PERIOD: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot set up the wasm engine: {0}")]
    Setup(String),
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("not a valid proxy-wasm module: {0}")]
    Invalid(String),
}

pub struct EngineConfig {
    /// Where precompiled modules are kept (`None`: compile every time). Only this
    /// host writes there; its files are loaded without re-validation, so it must not
    /// be writable by anyone less trusted than the host.
    pub cache_dir: Option<PathBuf>,
    pub clock: Clock,
    pub log: Arc<dyn Fn(LogRecord) + Send + Sync>,
    pub log_level: LogLevel,
    /// What filters may make the host hold (see [`HostLimits`]); changed later with
    /// [`Engine::set_limits`].
    pub limits: HostLimits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cache_dir: default_cache_dir(),
            clock: Clock::system(),
            log: Arc::new(|r: LogRecord| match r.level {
                LogLevel::Trace | LogLevel::Debug => {
                    tracing::debug!(plugin = %r.plugin, "{}", r.message)
                }
                LogLevel::Info => tracing::info!(plugin = %r.plugin, "{}", r.message),
                LogLevel::Warn => tracing::warn!(plugin = %r.plugin, "{}", r.message),
                _ => tracing::error!(plugin = %r.plugin, "{}", r.message),
            }),
            log_level: LogLevel::Info,
            limits: HostLimits::default(),
        }
    }
}

/// `$PORTCULLIS_CACHE_DIR`, else `$XDG_CACHE_HOME/portcullis/modules`, else
/// `$HOME/.cache/portcullis/modules`.
pub(crate) fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PORTCULLIS_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("portcullis").join("modules"))
}

/// Shared by every worker; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub wasmtime: wasmtime::Engine,
    pub cache_dir: Option<PathBuf>,
    pub clock: Clock,
    pub shared_data: Arc<SharedData>,
    pub queues: Arc<SharedQueues>,
    pub metrics: Arc<Metrics>,
    pub log: Arc<dyn Fn(LogRecord) + Send + Sync>,
    pub log_level: LogLevel,
    /// Read when a VM starts: a VM keeps the limits it started with.
    pub limits: parking_lot::RwLock<Arc<HostLimits>>,
    stop: Arc<AtomicBool>,
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A compiled proxy-wasm module, ready to instantiate on any worker.
pub struct CompiledModule {
    pub(crate) pre: InstancePre<HostState>,
    /// Hex SHA-256 of the module bytes.
    pub hash: String,
    pub abi_version: &'static str,
    /// Whether it came from the precompiled cache.
    pub from_cache: bool,
}

impl std::fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModule")
            .field("hash", &self.hash)
            .field("abi", &self.abi_version)
            .finish()
    }
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        let mut c = wasmtime::Config::new();
        c.epoch_interruption(true);
        c.cranelift_opt_level(wasmtime::OptLevel::Speed);
        c.memory_init_cow(true);
        c.parallel_compilation(true);
        // `perf` can name the filters' functions (a /tmp/perf-PID.map) when asked.
        if std::env::var_os("PORTCULLIS_PERF_MAP").is_some() {
            c.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let wasmtime = wasmtime::Engine::new(&c).map_err(|e| EngineError::Setup(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(wasmtime.weak(), stop.clone());
        Ok(Engine {
            inner: Arc::new(EngineInner {
                wasmtime,
                cache_dir: config.cache_dir,
                clock: config.clock,
                shared_data: Arc::default(),
                queues: Arc::default(),
                metrics: Arc::default(),
                log: config.log,
                log_level: config.log_level,
                limits: parking_lot::RwLock::new(Arc::new(config.limits)),
                stop,
            }),
        })
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn shared_data(&self) -> &SharedData {
        &self.inner.shared_data
    }

    pub fn queues(&self) -> &SharedQueues {
        &self.inner.queues
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn limits(&self) -> Arc<HostLimits> {
        self.inner.limits.read().clone()
    }

    /// New limits for the VMs started from now on (the gateway's configuration
    /// reload); running VMs keep theirs.
    pub fn set_limits(&self, limits: HostLimits) {
        *self.inner.limits.write() = Arc::new(limits);
    }

    pub fn load_file(&self, path: &Path) -> Result<Arc<CompiledModule>, EngineError> {
        let bytes = std::fs::read(path).map_err(|e| EngineError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.load(&bytes)
    }

    /// Compiles a module, or loads its precompiled form from the cache (keyed by the
    /// module's SHA-256 and the engine's compatibility hash, which covers the wasmtime
    /// version and settings), and links it against the host functions.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<CompiledModule>, EngineError> {
        let hash = hex(&Sha256::digest(bytes));
        let (module, from_cache) = self.compile_cached(bytes, &hash)?;
        let abi_version = abi_version(&module)?;
        let mut linker = Linker::new(&self.inner.wasmtime);
        let known =
            crate::imports::define(&mut linker).map_err(|e| EngineError::Setup(e.to_string()))?;
        crate::imports::define_unknown(&mut linker, &module, &known)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| EngineError::Invalid(format!("{e:#}")))?;
        Ok(Arc::new(CompiledModule {
            pre,
            hash,
            abi_version,
            from_cache,
        }))
    }

    fn compile_cached(&self, bytes: &[u8], hash: &str) -> Result<(Module, bool), EngineError> {
        let engine = &self.inner.wasmtime;
        let Some(dir) = &self.inner.cache_dir else {
            return Ok((compile(engine, bytes)?, false));
        };
        let compat = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            h.finish()
        };
        let path = dir.join(format!("{hash}-{compat:016x}.cwasm"));
        if path.exists() {
            // SAFETY: files in the cache directory are written only by this function,
            // from `Module::serialize` of an engine with the same compatibility hash
            // (part of the file name); wasmtime checks the header and refuses a file
            // from another version or configuration.
            #[allow(unsafe_code)]
            let loaded = unsafe { Module::deserialize_file(engine, &path) };
            match loaded {
                Ok(m) => return Ok((m, true)),
                Err(e) => tracing::warn!("ignoring unusable cached module {}: {e}", path.display()),
            }
        }
        let module = compile(engine, bytes)?;
        if let Err(e) = store_atomically(dir, &path, &module) {
            tracing::warn!("cannot cache the compiled module in {}: {e}", dir.display());
        }
        Ok((module, false))
    }
}

fn compile(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Module, EngineError> {
    Module::new(engine, bytes).map_err(|e| EngineError::Invalid(format!("{e:#}")))
}

/// Precompiled modules kept in the cache; every rebuilt filter adds one, so the oldest
/// go once there are more (a development machine rebuilds often).
const CACHE_KEEP: usize = 64;

fn store_atomically(dir: &Path, path: &Path, module: &Module) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = module.serialize().map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    prune(dir, CACHE_KEEP);
    Ok(())
}

/// Removes the least recently written `.cwasm` files beyond `keep`.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    for (_, p) in &files[..files.len() - keep] {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pruning_keeps_the_newest_files() {
        let dir = std::env::temp_dir().join(format!("portcullis-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..5 {
            std::fs::write(dir.join(format!("{i}.cwasm")), b"x").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(dir.join("other.txt"), b"x").unwrap();
        super::prune(&dir, 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["3.cwasm", "4.cwasm", "other.txt"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn abi_version(module: &Module) -> Result<&'static str, EngineError> {
    for e in module.exports() {
        match e.name() {
            "proxy_abi_version_0_2_1" => return Ok("0.2.1"),
            "proxy_abi_version_0_2_0" => return Ok("0.2.0"),
            _ => {}
        }
    }
    Err(EngineError::Invalid(
        "no proxy_abi_version_0_2_1 or proxy_abi_version_0_2_0 export: not a proxy-wasm 0.2 module"
            .into(),
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn spawn_epoch_ticker(engine: wasmtime::EngineWeak, stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_PERIOD);
                match engine.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
            }
        })
        .ok();
}
