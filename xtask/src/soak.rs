//! `cargo xtask soak [--minutes N] [--tokens N] [--connections N] [--new-identities]`:
//! the gateway under load for a while, in real time, with its memory sampled.
//!
//! The quickstart's chain (jwt-auth → tier-limiter → header-forwarder) in front of the
//! echo upstream, the demo IdP serving the JWKS. Each minute a fresh batch of tokens
//! (a two-minute lifetime) replaces the last: by default for the same `--tokens`
//! consumers, so the verified-token cache keeps meeting new tokens while old ones
//! expire; with `--new-identities`, for new consumers each minute, so the rate-limit
//! table fills too (up to its `max_buckets`, the bound on what it holds). wrk drives
//! the load. The gateway's RSS is sampled every 10 s and printed as a curve, with the
//! growth from the end of the first minute (warm-up) to the end.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{build_host, root, run, target_dir};

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn flag(args: &[String], name: &str, default: u64) -> Result<u64, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number")),
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn wait_for_port(port: u16) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listens on 127.0.0.1:{port}"))
}

const WRK_SCRIPT: &str = r#"
local tokens = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  i = math.random(#tokens)
end
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/orders/" .. i, { ["authorization"] = "Bearer " .. tokens[i] })
end
"#;

pub fn soak(args: &[String]) -> Result<(), String> {
    let minutes = flag(args, "--minutes", 10)?.max(2);
    let tokens = flag(args, "--tokens", 2000)?.max(1);
    let connections = flag(args, "--connections", 16)?.max(1);
    let new_identities = args.iter().any(|a| a == "--new-identities");
    if Command::new("wrk").arg("--version").output().is_err() {
        run(Command::new("apt-get").args(["install", "-y", "-qq", "wrk"]))?;
    }
    build_host(&["portcullis", "jwt-mint"])?;
    let dir = target_dir().join("soak");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (gw_port, echo_port, idp_port) = (free_port()?, free_port()?, free_port()?);
    let wasm = crate::wasm_dir();
    let config = std::fs::read_to_string(root().join("examples/quickstart.yaml"))
        .map_err(|e| format!("examples/quickstart.yaml: {e}"))?
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{gw_port}"))
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{echo_port}"))
        .replace("127.0.0.1:9001", &format!("127.0.0.1:{idp_port}"))
        .replace(
            "../target/wasm32-wasip1/release",
            &wasm.display().to_string(),
        )
        .replace("admin:\n  address: 127.0.0.1:9901\n", "")
        .replace("listeners:\n", "access_log: \"off\"\nlisteners:\n");
    let config_path = dir.join("soak.yaml");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("tokens.lua"), WRK_SCRIPT).map_err(|e| e.to_string())?;
    let bin = target_dir().join("host");
    let spawn = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{cmd:?}: {e}"))
    };
    let mut children = Killed(Vec::new());
    children
        .0
        .push(spawn(Command::new(bin.join("portcullis")).args([
            "echo",
            "--address",
            &format!("127.0.0.1:{echo_port}"),
        ]))?);
    children.0.push(spawn(
        Command::new(bin.join("demo-idp"))
            .args([
                "serve",
                "--address",
                &format!("127.0.0.1:{idp_port}"),
                "--dir",
            ])
            .arg(&dir),
    )?);
    let gateway = spawn(
        Command::new(bin.join("portcullis"))
            .args(["run", "--config"])
            .arg(&config_path),
    )?;
    let pid = gateway.id();
    children.0.push(gateway);
    wait_for_port(gw_port)?;
    wait_for_port(idp_port)?;

    eprintln!(
        "soak: {minutes} min, {tokens} fresh tokens a minute for {} consumers, {connections} connections; RSS every 10 s",
        if new_identities { "new" } else { "the same" }
    );
    eprintln!(
        "{:>6} {:>9} {:>10} {:>9}",
        "t(s)", "RSS(MiB)", "requests", "non-2xx"
    );
    let start = Instant::now();
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let (mut total, mut bad) = (0u64, 0u64);
    for minute in 0..minutes {
        let subjects = if new_identities {
            format!("m{minute}")
        } else {
            "soak".to_owned()
        };
        mint(&bin, &dir, tokens, &subjects)?;
        // Six 10-second runs a minute, one RSS sample after each.
        for _ in 0..6 {
            let (n, non2xx) = wrk(&dir, gw_port, connections)?;
            total += n;
            bad += non2xx;
            let t = start.elapsed().as_secs();
            let rss = rss_kib(pid).ok_or("the gateway is gone")?;
            samples.push((t, rss));
            eprintln!("{t:>6} {:>9.1} {total:>10} {bad:>9}", rss as f64 / 1024.0);
        }
    }
    let warm = samples.get(5).map_or(0, |s| s.1);
    let end = samples.last().map_or(0, |s| s.1);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    eprintln!(
        "soak: RSS after warm-up {:.1} MiB, at the end {:.1} MiB ({:+.1}%), peak {:.1} MiB; {total} requests, {bad} not 2xx",
        warm as f64 / 1024.0,
        end as f64 / 1024.0,
        (end as f64 - warm as f64) * 100.0 / warm.max(1) as f64,
        peak as f64 / 1024.0
    );
    Ok(())
}

/// A fresh batch of tokens (subjects `<prefix>-<i>`, two minutes of life) for wrk.
fn mint(bin: &Path, dir: &Path, count: u64, prefix: &str) -> Result<(), String> {
    let out = Command::new(bin.join("demo-idp"))
        .args(["token", "--tier", "premium", "--ttl", "120", "--count"])
        .arg(count.to_string())
        .arg("--sub")
        .arg(prefix)
        .arg("--dir")
        .arg(dir)
        .output()
        .map_err(|e| format!("demo-idp token: {e}"))?;
    if !out.status.success() {
        return Err("demo-idp token failed".into());
    }
    std::fs::write(dir.join("tokens.txt"), out.stdout).map_err(|e| e.to_string())
}

/// One 10-second wrk run: requests done and responses that were not 2xx.
fn wrk(dir: &Path, port: u16, connections: u64) -> Result<(u64, u64), String> {
    let out = Command::new("wrk")
        .args(["-t", "1", "-c"])
        .arg(connections.to_string())
        .args(["-d", "10s", "-s"])
        .arg(dir.join("tokens.lua"))
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("--")
        .arg(dir.join("tokens.txt"))
        .output()
        .map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let number = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim()))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("wrk printed no request count:\n{text}"))?;
    let non2xx = number("Non-2xx or 3xx responses:").unwrap_or(0);
    Ok((requests, non2xx))
}
