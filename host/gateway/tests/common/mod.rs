//! Starting the real `portcullis` binary on loopback with real upstream servers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use portcullis_clients::HttpCluster;
use portcullis_engine::{HeaderMap, HttpCallRequest, HttpCallResponse};

pub use portcullis_testbed::free_port;

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "portcullis-gw-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs async upstream servers on a background thread.
pub fn background<F: std::future::Future<Output = SocketAddr> + Send + 'static>(
    f: F,
) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tx.send(f.await).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

/// A raw HTTP/1.1 upstream: on each connection it reads a request head, then hands
/// the connection to `answer`, which writes what it likes.
#[allow(dead_code)]
pub fn raw_upstream<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    background(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = l.local_addr().expect("its address");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    answer(s).await;
                });
            }
        });
        addr
    })
}

pub fn echo() -> SocketAddr {
    portcullis_echo::spawn_thread().unwrap()
}

/// An upstream that answers 200 "slow" after `delay`.
pub fn slow(delay: Duration) -> SocketAddr {
    answering(delay, Bytes::from_static(b"slow"))
}

/// An upstream that answers every request 200 with `body`, after `delay`.
pub fn answering(delay: Duration, body: Bytes) -> SocketAddr {
    background(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let body = body.clone();
                        async move {
                            tokio::time::sleep(delay).await;
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    })
}

/// An upstream that counts the requests whose head reached it and answers each at once
/// with 200 "upstream", without reading the body.
pub fn counting() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let addr = background(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = l.local_addr().expect("its address");
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        count.fetch_add(1, Ordering::SeqCst);
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"upstream"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    });
    (addr, seen)
}

/// One HTTP/1.1 request written by hand on a new connection: the head, a pause, then
/// the body (as a client on a slow link does); the raw response, read to the end.
pub fn raw_request(addr: &str, head: &str, pause: Duration, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("the host under test listens");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    s.write_all(head.as_bytes()).expect("the head is sent");
    std::thread::sleep(pause);
    // The gateway may have answered and closed already.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A certificate for `localhost` made now, written as PEM in `dir`: the certificate,
/// its file and its key's file.
pub fn localhost_cert(dir: &TempDir) -> (rcgen::CertifiedKey<rcgen::KeyPair>, PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.0.join("localhost.pem"), dir.0.join("localhost.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert, cert_path, key_path)
}

/// A gateway on TLS (a `localhost` certificate made now) in front of `up`.
pub fn tls_gateway_in_front_of(up: SocketAddr) -> (Gateway, rcgen::CertifiedKey<rcgen::KeyPair>) {
    let dir = TempDir::new();
    let (cert, cert_path, key_path) = localhost_cert(&dir);
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - name: secure
    address: 127.0.0.1:{{PORT}}
    tls: {{ cert: "{}", key: "{}" }}
access_log: "off"
services: [{{ name: s, url: "http://{up}" }}]
routes: [{{ name: r, match: {{ paths: [/] }}, service: s }}]
"#,
        cert_path.display(),
        key_path.display()
    ));
    // The gateway read the files at start.
    (gw, cert)
}

pub fn refused() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

pub fn wasm(name: &str) -> String {
    portcullis_testbed::wasm(name).display().to_string()
}

/// Starts `cmd` with its standard error collected line by line (for `logged`).
fn spawn_logged(mut cmd: Command) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let lines = stderr.clone();
    let pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    (child, stderr)
}

pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub admin: u16,
    pub dir: TempDir,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Writes `yaml` (with `{PORT}` and `{ADMIN}` filled in) and starts the gateway on it.
    pub fn start(yaml: &str) -> Gateway {
        Self::try_start(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(yaml: &str) -> Result<Gateway, String> {
        Self::try_start_with(
            Command::new(portcullis_testbed::built_binary("portcullis")),
            yaml,
        )
    }

    /// As `try_start`, the gateway being `program` (another build of it, or the binary
    /// behind a loader); `run --config FILE` is appended.
    pub fn try_start_with(mut program: Command, yaml: &str) -> Result<Gateway, String> {
        let dir = TempDir::new();
        let (port, admin) = (free_port(), free_port());
        let config = yaml
            .replace("{PORT}", &port.to_string())
            .replace("{ADMIN}", &admin.to_string())
            .replace("{DIR}", &dir.0.display().to_string());
        std::fs::write(dir.0.join("gateway.yaml"), config).unwrap();
        program
            .args(["run", "--config"])
            .arg(dir.0.join("gateway.yaml"));
        let (child, stderr) = spawn_logged(program);
        let mut gw = Gateway {
            child,
            port,
            admin,
            dir,
            stderr,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if gw.logged("portcullis ready") {
                return Ok(gw);
            }
            if let Ok(Some(status)) = gw.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "the gateway exited ({status}):\n{}",
                    gw.stderr_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("the gateway did not start:\n{}", gw.stderr_text()))
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn logged(&self, text: &str) -> bool {
        self.stderr.lock().unwrap().iter().any(|l| l.contains(text))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.0.join("gateway.yaml")
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client response, with the body as text.
pub struct Res {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Res {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header the echo upstream says it received.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"]
            .as_array()?
            .iter()
            .find(|p| p[0] == name)
            .map(|p| p[1].as_str().unwrap_or("").to_owned())
    }
}

pub fn send(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Res, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = HttpCluster::new(base, Duration::from_secs(2), None)?;
    let mut h = HeaderMap::new();
    h.add(":method", method);
    h.add(":path", path);
    let host = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map_or("gateway.test", |(_, v)| *v);
    h.add(":authority", host);
    for (k, v) in headers {
        if !k.eq_ignore_ascii_case("host") {
            h.add(*k, *v);
        }
    }
    let req = HttpCallRequest {
        headers: h,
        body: body.to_vec(),
        trailers: HeaderMap::new(),
        timeout: Duration::from_secs(10),
    };
    let r: HttpCallResponse = rt
        .block_on(client.call(req))
        .map_err(|e| format!("{e:?}"))?;
    Ok(Res {
        status: r
            .headers
            .get_str(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        headers: r.headers.clone(),
        body: String::from_utf8_lossy(&r.body).into_owned(),
    })
}

pub fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Res {
    send(&gw.url(), "GET", path, headers, b"").unwrap()
}

/// `portcullis ratelimit-service` on a free port, in front of `redis`.
pub struct RatelimitService {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl RatelimitService {
    pub fn start(redis: &str, extra: &[&str]) -> RatelimitService {
        let mut args = vec!["--redis", redis];
        args.extend(extra);
        RatelimitService::start_with(&args)
    }

    /// The service with these arguments, which say where the buckets are
    /// (`--redis-cluster`, `--redis-sentinel` ...).
    pub fn start_with(args: &[&str]) -> RatelimitService {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(portcullis_testbed::built_binary("portcullis"));
        cmd.args(["ratelimit-service", "--listen", &addr.to_string()])
            .args(args);
        let (child, stderr) = spawn_logged(cmd);
        let mut s = RatelimitService {
            child,
            addr,
            stderr,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if s.logged("ratelimit-service listening") {
                return s;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                panic!("ratelimit-service exited ({status}):\n{}", s.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("ratelimit-service did not start:\n{}", s.stderr_text());
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn logged(&self, text: &str) -> bool {
        self.stderr.lock().unwrap().iter().any(|l| l.contains(text))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the service has connected to Redis (it listens before).
    pub fn wait_connected(&self) {
        let start = Instant::now();
        while !self.logged("connected to redis") {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "ratelimit-service did not connect to redis:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RatelimitService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 exchange: `request` is written as it is (any bytes a client can
/// put on the wire, which an HTTP library would refuse or fix), with
/// `Connection: close`; the answer's status and body.
pub fn raw_http(addr: &str, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, dechunk(&body))
}

/// The body of a chunked answer, or `body` as it is when it is not chunked.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_owned();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// A GET for `target` as raw bytes, with the headers given.
pub fn raw_get(addr: &str, target: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nhost: gateway.test\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    raw_http(addr, &req)
}

/// A path as a lax upstream reads it (one percent-decoding, `\` as `/`, `;params`
/// cut from segments, `//` merged, dot segments resolved and clamped at the root):
/// what an upstream behind the gateway could serve for it.
pub fn lax_reading(path: &str) -> String {
    let path = path.split('?').next().unwrap_or("");
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                decoded.push(v);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}
