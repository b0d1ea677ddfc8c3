//! `cargo xtask`: the one build entry point.
//!
//! - `cargo xtask build`: the filters' `.wasm` files (installs the wasm32-wasip1 target
//!   with rustup when missing) into `target/wasm32-wasip1/release/`.
//! - `cargo xtask test`: builds, installs the real components the tests need (Debian's
//!   redis-server, chromium, chromium-driver, python3-venv and systemd with apt-get
//!   when missing and run as root; Envoy and kubernetes-validate in venvs; the test
//!   OpenID provider and the AssemblyScript compiler from npm), and runs every test.
//! - `cargo xtask demo`: builds and starts the demo (see README).
//! - `cargo xtask bench`: the benchmarks, printing ratios.
//! - `cargo xtask soak`: the gateway under load for minutes, its memory sampled.
//! - `cargo xtask oci [--push PREFIX] [--plain-http]`: the OCI images of the filters
//!   (Istio's and Envoy Gateway's Wasm image formats) and of the gateway, as layouts
//!   under `target/oci/`, digests printed; `--push` sends them to a registry.
//! - `cargo xtask dist`: the release artifacts and their `SHA256SUMS` in `target/dist/`.
//! - `cargo xtask fuzz [--seconds N] [TARGET...]`: the fuzz targets, N seconds each
//!   (see `fuzz.rs`).
//! - `cargo xtask deploy-manifests`: the manifests of deploy/ rendered into
//!   `target/deploy/` (see deploy.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod deploy;
mod fuzz;
mod images;
mod soak;

const FILTERS: [&str; 5] = [
    "oidc",
    "jwt-auth",
    "tier-limiter",
    "header-forwarder",
    "key-auth",
];
const TEST_FILTERS: [&str; 3] = ["conformance-filter", "noop-filter", "calls-filter"];
const TARGET: &str = "wasm32-wasip1";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") => build(),
        Some("test") => build().and_then(|()| test(&args[1..])),
        // The demo runs the product's filters only, not the test filters.
        Some("demo") => build_only(&FILTERS).and_then(|()| demo(&args[1..])),
        Some("bench") => build().and_then(|()| bench(&args[1..])),
        Some("token") => token(&args[1..]),
        Some("soak") => build().and_then(|()| soak::soak(&args[1..])),
        Some("oci") => images::oci(&args[1..]),
        Some("dist") => images::dist(),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("deploy-manifests") => {
            build_only(&FILTERS).and_then(|()| deploy::deploy_manifests(&args[1..]))
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <build | test | demo | bench | soak [--minutes N] [--tokens N] [--new-identities] | token [--tier T] [--sub S] [--groups G,..] [--ttl SECONDS] [--opaque] | fuzz [--seconds N] [TARGET...] | oci [--push PREFIX] [--plain-http] | dist | deploy-manifests [--registry R] [--image NAME=DIGEST]...>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The checkout: `cargo xtask` sets `CARGO_MANIFEST_DIR` to this checkout's `xtask/`
/// when it runs (the path baked in at build time may be another checkout's, since
/// checkouts share one target directory).
fn root() -> PathBuf {
    let xtask = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    xtask
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("+ {cmd:?}");
    // In the workspace unless the command says where.
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

/// Builds these packages with the `host` profile (optimized, as the gateway ships).
fn build_host(packages: &[&str]) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.args(["build", "--profile", "host"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    run(&mut cmd)
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ensure_target() -> Result<(), String> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match out {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET) =>
        {
            Ok(())
        }
        Ok(_) => run(Command::new("rustup").args(["target", "add", TARGET])),
        // No rustup: the toolchain may still have the target (a distro Rust, say).
        Err(_) => Ok(()),
    }
}

/// Builds the five filters and the test filters for wasm32-wasip1 (release profile),
/// and the AssemblyScript test filter.
fn build() -> Result<(), String> {
    let all: Vec<&str> = FILTERS.iter().chain(TEST_FILTERS.iter()).copied().collect();
    build_only(&all)?;
    build_assemblyscript()
}

/// Builds the conformance filter written with the AssemblyScript SDK (npm
/// `assemblyscript` and `@solo-io/proxy-runtime`, pinned in its package-lock.json)
/// into the directory of the other filters, as `as_conformance.wasm`.
fn build_assemblyscript() -> Result<(), String> {
    let dir = root().join("testbed/filters/as-conformance");
    if !dir.join("node_modules/.bin/asc").exists() {
        run(Command::new("npm")
            .current_dir(&dir)
            .args(["ci", "--no-audit", "--no-fund"]))
        .map_err(|e| format!("{e}\n(the AssemblyScript test filter needs Node.js and npm)"))?;
    }
    let out = wasm_dir().join("as_conformance.wasm");
    run(Command::new(dir.join("node_modules/.bin/asc"))
        .current_dir(&dir)
        .arg("assembly/index.ts")
        .arg("-b")
        .arg(&out)
        .args(["--use", "abort=abort_proc_exit", "-O", "--noColors"]))
}

/// Builds these filter packages for wasm32-wasip1 (release profile).
fn build_only(packages: &[&str]) -> Result<(), String> {
    ensure_target()?;
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", TARGET]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    run(&mut cmd)?;
    let dir = wasm_dir();
    for f in FILTERS {
        let path = dir.join(format!("{}.wasm", f.replace('-', "_")));
        let size = std::fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        eprintln!("  {} ({} KiB)", path.display(), size / 1024);
    }
    Ok(())
}

fn wasm_dir() -> PathBuf {
    target_dir().join(TARGET).join("release")
}

/// Installs Envoy (pinned, in a venv outside the clone) and returns its path.
fn ensure_envoy() -> Result<String, String> {
    let out = Command::new("bash")
        .arg(root().join("envoy/setup.sh"))
        .output()
        .map_err(|e| format!("cannot run envoy/setup.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "envoy/setup.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Installs kubernetes-validate (pinned, in a venv outside the clone) for the
/// manifest test and returns its path.
fn ensure_kubernetes_validate() -> Result<String, String> {
    let out = Command::new("bash")
        .arg(root().join("deploy/setup.sh"))
        .output()
        .map_err(|e| format!("cannot run deploy/setup.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "deploy/setup.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Installs the test OpenID provider (npm `oidc-provider`, pinned in
/// testbed/idp/package.json) when missing.
fn ensure_idp() -> Result<(), String> {
    if root()
        .join("testbed/idp/node_modules/oidc-provider")
        .exists()
    {
        return Ok(());
    }
    run(Command::new("npm").args([
        "install",
        "--prefix",
        "testbed/idp",
        "--no-audit",
        "--no-fund",
    ]))
    .map_err(|e| format!("{e}\n(the end-to-end tests need Node.js 20+ and npm)"))
}

/// Whether `binary --version` runs.
fn has(binary: &str) -> bool {
    Command::new(binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            == Some("0")
    })
}

/// The Debian packages the tests need that this machine lacks: installed with apt-get
/// when we run as root and apt is there; otherwise the one command to run.
fn ensure_system_packages() -> Result<(), String> {
    let mut missing: Vec<&str> = Vec::new();
    // Redis for the global rate-limit tests (redis-server brings redis-cli, which
    // creates the test cluster; redis-sentinel for the failover test); Chromium and its
    // driver for the oidc browser test; Python's venv module for Envoy's venv (Debian
    // splits it out of python3); Node.js and npm for the test OpenID provider;
    // systemd-analyze for the check of the systemd unit (containers often lack systemd);
    // Docker's registry (distribution) for the image push and pull-by-digest test.
    if !has("redis-server") {
        missing.push("redis-server");
    }
    if !has("redis-sentinel") {
        missing.push("redis-sentinel");
    }
    if !has("chromedriver") {
        missing.extend(["chromium", "chromium-driver"]);
    }
    let venv = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !venv {
        missing.push("python3-venv");
    }
    if !has("npm") {
        missing.extend(["nodejs", "npm"]);
    }
    if !has("systemd-analyze") {
        missing.push("systemd");
    }
    if !has("docker-registry") {
        missing.push("docker-registry");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() || !has("apt-get") {
        return Err(format!(
            "the tests need Debian packages this machine lacks; install them with:\n    sudo apt-get install -y {list}"
        ));
    }
    eprintln!("xtask: installing {list} (apt-get)");
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(&missing);
    apt(&args)?;
    // The package enables a system-wide registry service on :5000; the tests start
    // their own on loopback, so under systemd that service is stopped and disabled.
    if missing.contains(&"docker-registry") && Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "docker-registry.service"])
            .status();
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<(), String> {
    ensure_system_packages()?;
    let envoy = ensure_envoy()?;
    let kubernetes_validate = ensure_kubernetes_validate()?;
    ensure_idp()?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "portcullis-benches"])
        .args(extra)
        .env("PORTCULLIS_ENVOY", envoy)
        .env("PORTCULLIS_KUBERNETES_VALIDATE", kubernetes_validate);
    let result = run(&mut cmd);
    prune_test_binaries(&target_dir().join("debug/deps"));
    // Incremental caches only grow in a shared target directory (18 GB filled the
    // disk once); without them the next build recompiles the crates that changed, no
    // more.
    let _ = std::fs::remove_dir_all(target_dir().join("debug/incremental"));
    result
}

/// Deletes the test executables that a newer build of the same test replaced. The
/// target directory is shared between checkouts and CI runs (README, "Set up"); every
/// change to a test crate's dependencies leaves its old executable behind (hundreds of
/// megabytes each), and nothing else ever removes them.
fn prune_test_binaries(deps: &Path) {
    let Ok(entries) = std::fs::read_dir(deps) else {
        return;
    };
    // Each test's executables (named `<test>-<16 hex digits>`), newest first.
    let mut by_test: std::collections::HashMap<String, Vec<(std::time::SystemTime, PathBuf)>> =
        std::collections::HashMap::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((test, hash)) = name.rsplit_once('-') else {
            continue;
        };
        // Test executables have no extension; libraries and their metadata do.
        if name.contains('.') || hash.len() != 16 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        if let Ok(modified) = e.metadata().and_then(|m| m.modified()) {
            by_test
                .entry(test.to_owned())
                .or_default()
                .push((modified, e.path()));
        }
    }
    let mut stale = Vec::new();
    for mut builds in by_test.into_values() {
        builds.sort_by(|a, b| b.0.cmp(&a.0));
        stale.extend(builds.into_iter().skip(1).map(|(_, p)| p));
    }
    for p in stale {
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(p.with_extension("d"));
    }
}

/// Builds the gateway, starts the echo upstream on 127.0.0.1:9000 and the gateway on
/// `examples/quickstart.yaml` (127.0.0.1:8080, admin 127.0.0.1:9901) until Ctrl-C.
/// With `examples/oidc-demo.yaml` it also starts the test OpenID provider on
/// 127.0.0.1:4000 with the demo's client.
fn demo(extra: &[String]) -> Result<(), String> {
    build_host(&["portcullis", "jwt-mint"])?;
    let config = extra
        .first()
        .map_or("examples/quickstart.yaml", String::as_str);
    // The OpenID provider for the oidc demo, checked before anything starts.
    let oidc_clients = if config.contains("oidc") {
        ensure_idp()?;
        Some(
            std::fs::read_to_string(root().join("examples/oidc-demo-clients.json"))
                .map_err(|e| format!("examples/oidc-demo-clients.json: {e}"))?,
        )
    } else {
        None
    };
    let bin = target_dir().join("host/portcullis");
    let demo_dir = target_dir().join("demo");
    let children = Children::default();
    // Ctrl-C, SIGTERM or SIGHUP: every process the demo started is stopped with it.
    {
        let children = children.clone();
        ctrlc::set_handler(move || {
            children.stop();
            std::process::exit(130);
        })
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    children.spawn(
        Command::new(&bin).args(["echo", "--address", "127.0.0.1:9000"]),
        "the echo upstream",
    )?;
    children.spawn(
        Command::new(target_dir().join("host/demo-idp"))
            .args(["serve", "--address", "127.0.0.1:9001", "--dir"])
            .arg(&demo_dir),
        "the demo IdP",
    )?;
    if let Some(clients) = oidc_clients {
        children.spawn(
            Command::new("node")
                .arg(root().join("testbed/idp/idp.mjs"))
                .env("IDP_PORT", "4000")
                .env("IDP_CLIENTS", clients),
            "the OpenID provider (Node.js 20+)",
        )?;
        eprintln!("\nOpen http://127.0.0.1:8080/orders/42 in a browser and log in with any name;");
        eprintln!(
            "http://127.0.0.1:8080/logout asks to confirm, then logs out. An API client gets 401:"
        );
        eprintln!("      curl -si localhost:8080/orders/42\n");
    } else {
        eprintln!("\nTry:  TOKEN=$(cargo xtask token --tier premium --sub ada)");
        eprintln!(
            "      curl -s localhost:8080/orders/42 -H \"authorization: Bearer $TOKEN\" | python3 -m json.tool"
        );
        eprintln!("      curl -si localhost:8080/orders/42");
        eprintln!("      OPAQUE=$(cargo xtask token --sub bob --opaque)   # introspected");
        eprintln!("      curl -s localhost:8080/orders/42 -H \"authorization: Bearer $OPAQUE\"");
        eprintln!("      curl -s localhost:9901/metrics\n");
    }
    let gateway = children.spawn(
        Command::new(&bin)
            .args(["run", "--config", config])
            .current_dir(root()),
        "the gateway",
    )?;
    let status = children.wait(gateway);
    children.stop();
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("the gateway stopped ({s})")),
        None => Err("the gateway could not be waited for".into()),
    }
}

/// The processes `cargo xtask demo` started, stopped together (also from a signal
/// handler, so they live behind a lock).
#[derive(Clone, Default)]
struct Children(std::sync::Arc<std::sync::Mutex<Vec<std::process::Child>>>);

impl Children {
    fn spawn(&self, cmd: &mut Command, what: &str) -> Result<usize, String> {
        match cmd.spawn() {
            Ok(child) => {
                let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
                all.push(child);
                Ok(all.len() - 1)
            }
            Err(e) => {
                self.stop();
                Err(format!("cannot start {what}: {e}"))
            }
        }
    }

    /// Waits for child `i` without holding the lock (a signal may need it).
    fn wait(&self, i: usize) -> Option<std::process::ExitStatus> {
        loop {
            {
                let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
                match all.get_mut(i)?.try_wait() {
                    Ok(Some(s)) => return Some(s),
                    Ok(None) => {}
                    Err(_) => return None,
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// SIGTERM to each (the gateway drains), then a wait for them to go.
    fn stop(&self) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for c in all.iter() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in all.iter_mut() {
            let _ = c.wait();
        }
        all.clear();
    }
}

/// Prints a token from the demo IdP's key (made on first use in target/demo/).
fn token(extra: &[String]) -> Result<(), String> {
    let bin = target_dir().join("host/demo-idp");
    if !bin.exists() {
        let status = cargo()
            .args(["build", "--quiet", "--profile", "host", "-p", "jwt-mint"])
            .current_dir(root())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            return Err("cannot build demo-idp".into());
        }
    }
    let status = Command::new(bin)
        .arg("token")
        .arg("--dir")
        .arg(target_dir().join("demo"))
        .args(extra)
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err("demo-idp token failed".into())
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The criterion benchmarks (host engine costs), then the end-to-end comparison
/// against Envoy with wrk (installed with apt-get when missing).
fn bench(extra: &[String]) -> Result<(), String> {
    let envoy = ensure_envoy()?;
    if Command::new("wrk").arg("--version").output().is_err() {
        run(Command::new("apt-get").args(["install", "-y", "-qq", "wrk"]))?;
    }
    run(cargo()
        .args([
            "bench",
            "--profile",
            "host",
            "-p",
            "portcullis-benches",
            "--bench",
            "host",
        ])
        .args(extra))?;
    build_host(&["portcullis", "portcullis-benches"])?;
    run(Command::new(target_dir().join("host/compare")).env("PORTCULLIS_ENVOY", envoy))
}
