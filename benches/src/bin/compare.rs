//! The end-to-end comparison: our gateway against Envoy on loopback, in one run, with
//! `wrk`. Reports requests per second, p50 and p99, CPU used per process, peak RSS,
//! start-up time and RSS at rest, medians of interleaved rounds, and the ratios.
//!
//! `cargo xtask bench` runs it; directly:
//! `cargo run --profile host -p portcullis-benches --bin compare -- --rounds 3 --seconds 5`

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter, free_port};

struct Args {
    rounds: usize,
    seconds: u64,
    connections: usize,
    workers: usize,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 3,
        seconds: 5,
        connections: 32,
        workers: 1,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < v.len() {
        let n = v[i + 1].parse().unwrap_or(0);
        match v[i].as_str() {
            "--rounds" => a.rounds = n as usize,
            "--seconds" => a.seconds = n,
            "--connections" => a.connections = n as usize,
            "--workers" => a.workers = n as usize,
            _ => {}
        }
        i += 2;
    }
    a
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("upstream") {
        let addr: SocketAddr = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .expect("address");
        fast_upstream(addr);
        return;
    }
    let a = args();
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is not installed: `apt-get install wrk` (cargo xtask bench installs it)");
        std::process::exit(1);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let portcullis = root.join("target/host/portcullis");
    assert!(
        portcullis.exists(),
        "{} is missing: `cargo build --profile host -p portcullis`",
        portcullis.display()
    );

    let up_port = free_port();
    let mut upstream = Proc(
        Command::new(std::env::current_exe().expect("self"))
            .args(["upstream", &format!("127.0.0.1:{up_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("upstream starts"),
    );
    let up_addr = SocketAddr::from(([127, 0, 0, 1], up_port));
    wait_200(up_addr, Duration::from_secs(5));

    // Our gateway, no filters.
    let gw_port = free_port();
    let dir = std::env::temp_dir().join(format!("portcullis-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{ name: bench, address: \"127.0.0.1:{gw_port}\" }}]\nworkers: {}\naccess_log: \"off\"\nservices: [{{ name: up, url: \"http://{up_addr}\" }}]\nroutes: [{{ name: all, service: up }}]\n",
            a.workers
        ),
    )
    .expect("config");
    let launched = Instant::now();
    let mut gw = Proc(
        Command::new(&portcullis)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("portcullis starts"),
    );
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], gw_port));
    wait_200(gw_addr, Duration::from_secs(30));
    let gw_startup = launched.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let gw_rest = rss_kb(gw.0.id());

    // Envoy, no filters, same worker count.
    let launched = Instant::now();
    let envoy =
        Envoy::start(&EnvoyConfig::new(up_addr).concurrency(a.workers)).expect("envoy starts");
    wait_200(envoy.listener, Duration::from_secs(30));
    let envoy_startup = launched.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let envoy_rest = rss_kb(envoy.pid());

    let targets: Vec<(&str, SocketAddr, Option<u32>)> = vec![
        ("upstream alone", up_addr, Some(upstream.0.id())),
        ("portcullis", gw_addr, Some(gw.0.id())),
        ("envoy", envoy.listener, Some(envoy.pid())),
    ];
    let title = format!(
        "Pass-through, no filters ({} worker(s), wrk -t1 -c{} -d{}s, {} interleaved rounds, medians)",
        a.workers, a.connections, a.seconds, a.rounds
    );
    let med = compare(&title, &targets, None, &a);
    let (ours, theirs) = (&med[1], &med[2]);
    println!("\n| ratio (portcullis / envoy) | value |");
    println!("|---|---|");
    println!("| req/s | {:.2}x |", ours.rps / theirs.rps);
    println!(
        "| req per CPU-second of the proxy | {:.2}x |",
        ours.rps_per_cpu() / theirs.rps_per_cpu()
    );
    println!(
        "| p99 latency | {:.2}x (lower is better) |",
        ours.p99_ms / theirs.p99_ms
    );
    println!("\n| start-up to first proxied 200 | RSS at rest |");
    println!("|---|---|");
    println!(
        "| portcullis {:.0} ms | {:.1} MB |",
        gw_startup.as_secs_f64() * 1000.0,
        gw_rest as f64 / 1024.0
    );
    println!(
        "| envoy {:.0} ms | {:.1} MB |",
        envoy_startup.as_secs_f64() * 1000.0,
        envoy_rest as f64 / 1024.0
    );
    drop(envoy);
    gw.stop();
    jwt_section(&portcullis, up_addr, &dir, &a);
    upstream.stop();
    let _ = std::fs::remove_dir_all(dir);
}

/// Interleaved rounds over `targets` (optionally with one request header), a table
/// of medians; returns the medians in target order.
fn compare(
    title: &str,
    targets: &[(&str, SocketAddr, Option<u32>)],
    header: Option<&str>,
    a: &Args,
) -> Vec<Run> {
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 0..a.rounds {
        for (i, (name, addr, pid)) in targets.iter().enumerate() {
            let r = measure(*addr, *pid, header, a);
            eprintln!(
                "round {} {name:>22}: {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  cpu {:>5.2} s",
                round + 1,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.cpu_s
            );
            results[i].push(r);
        }
    }
    println!("\n## {title}\n");
    println!("| target | req/s | p50 ms | p99 ms | req per CPU-second | peak RSS MB |");
    println!("|---|---|---|---|---|---|");
    let mut med = Vec::new();
    for (i, (name, _, pid)) in targets.iter().enumerate() {
        let m = Run::median(&results[i]);
        let peak = pid.map_or(0, peak_rss_kb) as f64 / 1024.0;
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {:.0} | {:.1} |",
            m.rps,
            m.p50_ms,
            m.p99_ms,
            m.rps_per_cpu(),
            peak
        );
        med.push(m);
    }
    med
}

/// jwt-auth with a valid, cached token: our filter in portcullis and in Envoy, and
/// Envoy's native jwt_authn with its JWT cache.
fn jwt_section(portcullis: &std::path::Path, up_addr: SocketAddr, dir: &std::path::Path, a: &Args) {
    let key = jwt_mint::Key::ec256("bench");
    let set = jwt_mint::jwks(&[&key]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token = key.sign("ES256", serde_json::json!({"iss": "https://idp.bench", "aud": "api", "sub": "user-1", "iat": now, "exp": now + 3600}));
    let ours = serde_json::json!({
        "providers": {"idp": {"issuer": "https://idp.bench", "audiences": ["api"], "local_jwks": set, "algorithms": ["ES256"], "forward": true}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    });
    let wasm = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip1/release/jwt_auth.wasm");
    let gw_port = free_port();
    let config = dir.join("jwt.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{ name: bench, address: \"127.0.0.1:{gw_port}\" }}]\nworkers: {}\naccess_log: \"off\"\nservices: [{{ name: up, url: \"http://{up_addr}\" }}]\nfilters: [{{ name: jwt, wasm: \"{}\", config: {ours} }}]\nroutes: [{{ name: all, service: up, filters: [jwt] }}]\n",
            a.workers,
            wasm.display()
        ),
    )
    .expect("config");
    let mut gw = Proc(
        Command::new(portcullis)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("portcullis starts"),
    );
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], gw_port));
    wait_listening(gw_addr, Duration::from_secs(30));
    let wasm_envoy = Envoy::start(
        &EnvoyConfig::new(up_addr)
            .concurrency(a.workers)
            .filter(WasmFilter::new("jwt", &wasm, &ours.to_string())),
    )
    .expect("envoy starts");
    let native = serde_json::json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": {"issuer": "https://idp.bench", "audiences": ["api"], "local_jwks": {"inline_string": set.to_string()},
                "forward": true, "jwt_cache_config": {"jwt_cache_size": 1000}}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]
        }
    });
    let native_envoy = Envoy::start(
        &EnvoyConfig::new(up_addr)
            .concurrency(a.workers)
            .native_filter(native),
    )
    .expect("envoy starts");
    let header = format!("authorization: Bearer {token}");
    let targets = vec![
        ("portcullis + jwt-auth", gw_addr, Some(gw.0.id())),
        (
            "envoy + jwt-auth (wasm)",
            wasm_envoy.listener,
            Some(wasm_envoy.pid()),
        ),
        (
            "envoy + jwt_authn (native)",
            native_envoy.listener,
            Some(native_envoy.pid()),
        ),
    ];
    let title = format!(
        "jwt-auth, one valid ES256 token (cached), {} worker(s)",
        a.workers
    );
    let med = compare(&title, &targets, Some(&header), a);
    println!("\n| ratio | value |");
    println!("|---|---|");
    println!(
        "| our filter in Envoy / native jwt_authn, req/s | {:.2}x |",
        med[1].rps / med[2].rps
    );
    println!(
        "| portcullis + jwt-auth / Envoy + jwt-auth, req per CPU-second | {:.2}x |",
        med[0].rps_per_cpu() / med[1].rps_per_cpu()
    );
    gw.stop();
}

/// Waits for a listener to accept (the JWT routes answer 401 without a token).
fn wait_listening(addr: SocketAddr, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{addr} did not listen within {limit:?}");
}

#[derive(Clone, Copy, Debug, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_s: f64,
    seconds: f64,
}

impl Run {
    fn rps_per_cpu(&self) -> f64 {
        if self.cpu_s > 0.0 {
            self.rps * self.seconds / self.cpu_s
        } else {
            0.0
        }
    }

    fn median(runs: &[Run]) -> Run {
        let pick = |f: fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        Run {
            rps: pick(|r| r.rps),
            p50_ms: pick(|r| r.p50_ms),
            p99_ms: pick(|r| r.p99_ms),
            cpu_s: pick(|r| r.cpu_s),
            seconds: pick(|r| r.seconds),
        }
    }
}

fn measure(addr: SocketAddr, pid: Option<u32>, header: Option<&str>, a: &Args) -> Run {
    let cpu0 = pid.map_or(0.0, cpu_seconds);
    let mut wrk = Command::new("wrk");
    if let Some(h) = header {
        wrk.args(["-H", h]);
    }
    let out = wrk
        .args([
            "-t1",
            &format!("-c{}", a.connections),
            &format!("-d{}s", a.seconds),
            "--latency",
        ])
        .arg(format!("http://{addr}/bench"))
        .output()
        .expect("wrk runs");
    let cpu1 = pid.map_or(0.0, cpu_seconds);
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Requests/sec:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0);
    let pct = |p: &str| {
        text.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(p))
                .then(|| it.next().map(parse_ms))
                .flatten()
        })
    };
    if text.contains("Non-2xx") {
        eprintln!("warning: non-2xx answers from {addr}:\n{text}");
    }
    Run {
        rps,
        p50_ms: pct("50%").unwrap_or(0.0),
        p99_ms: pct("99%").unwrap_or(0.0),
        cpu_s: cpu1 - cpu0,
        seconds: a.seconds as f64,
    }
}

fn parse_ms(v: &str) -> f64 {
    let num = |s: &str| s.parse::<f64>().unwrap_or(0.0);
    if let Some(x) = v.strip_suffix("us") {
        num(x) / 1000.0
    } else if let Some(x) = v.strip_suffix("ms") {
        num(x)
    } else if let Some(x) = v.strip_suffix('s') {
        num(x) * 1000.0
    } else {
        num(v)
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

fn peak_rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

fn wait_200(addr: SocketAddr, limit: Duration) {
    use std::io::{Read, Write};
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = write!(
                s,
                "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
            );
            let mut buf = [0u8; 12];
            if s.read_exact(&mut buf).is_ok() && &buf[9..12] == b"200" {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("{addr} did not answer 200 within {limit:?}");
}

struct Proc(Child);

impl Proc {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The fast upstream: 200 with a 2-byte body, HTTP/1.1 keep-alive, one thread.
fn fast_upstream(addr: SocketAddr) {
    use bytes_free::respond;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(respond(s));
        }
    });
}

/// A minimal keep-alive HTTP/1.1 responder (requests without bodies), so the upstream
/// costs as little as possible and the proxies dominate the measurement.
mod bytes_free {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const RESPONSE: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";

    pub async fn respond(mut s: tokio::net::TcpStream) {
        let mut buf = vec![0u8; 16 * 1024];
        let mut have = 0;
        loop {
            match s.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
            // Answer every complete request head in the buffer (pipelining included).
            loop {
                let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
                    break;
                };
                if s.write_all(RESPONSE).await.is_err() {
                    return;
                }
                buf.copy_within(end + 4..have, 0);
                have -= end + 4;
            }
            if have == buf.len() {
                return;
            }
        }
    }
}
