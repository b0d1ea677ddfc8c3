//! Starting the hosts: the fast upstream (this binary run as `compare upstream ADDR`),
//! portcullis with a configuration written for it, and Envoy; each waited for until it
//! proxies its first 200, with its start-up time and RSS at rest.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter, free_port};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::measure::rss_kb;

/// Starts the fast upstream (this binary, `compare upstream ADDR`) and waits for its
/// first 200.
pub fn start_upstream() -> (Proc, SocketAddr) {
    let up_port = free_port();
    let upstream = Proc(
        Command::new(std::env::current_exe().expect("self"))
            .args(["upstream", &format!("127.0.0.1:{up_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("upstream starts"),
    );
    let up_addr = SocketAddr::from(([127, 0, 0, 1], up_port));
    wait_200(up_addr, &[], Duration::from_secs(5));
    (upstream, up_addr)
}

/// One configured filter of our gateway.
pub struct Filter<'a> {
    pub name: &'a str,
    pub wasm: &'a str,
    pub config: Value,
}

/// A running proxy: its address, process id, start-up time and RSS at rest.
pub struct Started {
    pub addr: SocketAddr,
    pub pid: u32,
    pub startup: Duration,
    pub rest_kb: u64,
    _proc: Option<Proc>,
    _envoy: Option<Envoy>,
}

/// Starts portcullis with `filters` on its one route (and `services` besides the
/// upstream) and waits for the first proxied 200 sent with `headers`.
pub fn start_portcullis(
    ctx: &Ctx,
    name: &str,
    filters: &[Filter],
    services: &[(&str, String)],
    headers: &[String],
) -> Started {
    start_portcullis_routes(ctx, name, filters, &[], services, headers)
}

/// The same, with `side` filters on a route of their own under `/app` (loaded and
/// started, but not on the measured path).
pub fn start_portcullis_routes(
    ctx: &Ctx,
    name: &str,
    filters: &[Filter],
    side: &[Filter],
    services: &[(&str, String)],
    headers: &[String],
) -> Started {
    let port = free_port();
    let mut yaml = format!(
        "listeners: [{{ name: bench, address: \"127.0.0.1:{port}\" }}]\nworkers: {}\naccess_log: \"off\"\nservices:\n  - {{ name: up, url: \"http://{}\" }}\n",
        ctx.a.workers, ctx.upstream
    );
    for (n, url) in services {
        yaml.push_str(&format!("  - {{ name: {n}, url: \"{url}\" }}\n"));
    }
    yaml.push_str("filters:\n");
    for f in filters.iter().chain(side) {
        yaml.push_str(&format!(
            "  - {{ name: {}, wasm: \"{}\", config: {} }}\n",
            f.name,
            ctx.wasm(f.wasm).display(),
            f.config
        ));
    }
    if filters.is_empty() && side.is_empty() {
        yaml.push_str("  []\n");
    }
    let names = |list: &[Filter]| list.iter().map(|f| f.name).collect::<Vec<_>>().join(", ");
    yaml.push_str("routes:\n");
    if !side.is_empty() {
        yaml.push_str(&format!(
            "  - {{ name: side, match: {{ paths: [/app] }}, service: up, filters: [{}] }}\n",
            names(side)
        ));
    }
    yaml.push_str(&format!(
        "  - {{ name: all, service: up, filters: [{}] }}\n",
        names(filters)
    ));
    let config = ctx.dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml).expect("config");
    let launched = Instant::now();
    let proc = Proc(
        Command::new(&*ctx.portcullis.borrow())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("portcullis starts"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_200(addr, headers, Duration::from_secs(30));
    let startup = launched.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    Started {
        addr,
        pid: proc.0.id(),
        startup,
        rest_kb: rss_kb(proc.0.id()),
        _proc: Some(proc),
        _envoy: None,
    }
}

pub fn start_envoy(config: &EnvoyConfig, headers: &[String]) -> Started {
    let launched = Instant::now();
    let envoy = Envoy::start(config).expect("envoy starts");
    wait_200(envoy.listener, headers, Duration::from_secs(30));
    let startup = launched.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    Started {
        addr: envoy.listener,
        pid: envoy.pid(),
        startup,
        rest_kb: rss_kb(envoy.pid()),
        _proc: None,
        _envoy: Some(envoy),
    }
}

/// `n` filters that do nothing, for our gateway: the host's own cost per filter.
pub fn noop_filters(n: usize) -> Vec<Filter<'static>> {
    copies("noop_filter", n)
}

/// `n` filters (at most three) that are each the module `wasm`, with no configuration.
pub fn copies(wasm: &'static str, n: usize) -> Vec<Filter<'static>> {
    const NAMES: [&str; 3] = ["n1", "n2", "n3"];
    NAMES[..n]
        .iter()
        .map(|&name| Filter {
            name,
            wasm,
            config: json!({}),
        })
        .collect()
}

/// Envoy with `filters`, the same wasm and configurations our gateway gets.
pub fn envoy_with(ctx: &Ctx, filters: &[Filter]) -> EnvoyConfig {
    filters.iter().fold(
        EnvoyConfig::new(ctx.upstream).concurrency(ctx.a.workers),
        |c, f| {
            c.filter(WasmFilter::new(
                f.name,
                ctx.wasm(f.wasm),
                &f.config.to_string(),
            ))
        },
    )
}

/// Envoy with `n` wasm filters that do nothing.
pub fn envoy_noops(ctx: &Ctx, n: usize) -> EnvoyConfig {
    envoy_with(ctx, &noop_filters(n))
}

/// Waits for a listener to accept.
pub fn wait_listening(addr: SocketAddr, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{addr} did not listen within {limit:?}");
}

/// Waits for the first 200 to a request with `headers` ("name: value").
pub fn wait_200(addr: SocketAddr, headers: &[String], limit: Duration) {
    use std::io::{Read, Write};
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = write!(
                s,
                "GET / HTTP/1.1\r\nHost: bench\r\n{extra}Connection: close\r\n\r\n"
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

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

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
pub fn fast_upstream(addr: SocketAddr) {
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
            while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
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
