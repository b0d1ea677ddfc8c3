//! Slow and abusive clients, each against a gateway that must keep serving an honest
//! client meanwhile: slowloris, idle connections, a connection flood past the
//! listener's cap (and the same on the admin address), and HTTP/2's stream limit,
//! rapid reset and CONTINUATION flood, spoken frame by frame.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn gateway(listener_extra: &str) -> Gateway {
    let upstream = echo();
    Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}"{listener_extra} }}]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
routes: [{{ name: api, match: {{ paths: [/] }}, service: echo }}]
"#
    ))
}

fn addr(gw: &Gateway) -> String {
    format!("127.0.0.1:{}", gw.port)
}

fn honest_client_is_served(gw: &Gateway) {
    let r = get(gw, "/still-here", &[]);
    assert_eq!(r.status, 200, "an honest client is served: {}", r.body);
}

/// Whether the server closed `s` within `limit` (reads until EOF or an error).
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

fn metric(gw: &Gateway, name: &str) -> u64 {
    let page = send(
        &format!("http://127.0.0.1:{}", gw.admin),
        "GET",
        "/metrics",
        &[],
        b"",
    )
    .unwrap()
    .body;
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn slowloris_connections_are_closed_at_the_header_timeout() {
    let gw = gateway(", request_headers_timeout_ms: 1000");
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(addr(&gw)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-a: ").unwrap();
            s
        })
        .collect();
    // A byte now and then, never the end of the headers.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        for s in &mut slow {
            let _ = s.write_all(b"a");
        }
    }
    honest_client_is_served(&gw);
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "slow connection {i} is still open"
        );
    }
    honest_client_is_served(&gw);
}

#[test]
fn a_connection_that_never_sends_is_closed_too() {
    let gw = gateway(", request_headers_timeout_ms: 1000");
    let mut s = TcpStream::connect(addr(&gw)).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let gw = gateway(", idle_timeout_ms: 1000");
    let mut s = TcpStream::connect(addr(&gw)).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive after the answer, then closed once idle.
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    assert!(metric(&gw, "portcullis_downstream_connections_idle_closed_total") >= 1);
    honest_client_is_served(&gw);
}

#[test]
fn connections_past_the_listener_cap_are_closed_at_once() {
    let gw = gateway(", max_connections: 5");
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr(&gw)).unwrap();
        // A complete request each, so the gateway has surely accepted them.
        s.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 4096];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut extra = TcpStream::connect(addr(&gw)).unwrap();
    let _ = extra.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n");
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)),
        "the sixth is closed"
    );
    assert!(metric(&gw, "portcullis_downstream_connections_refused_total") >= 1);
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    honest_client_is_served(&gw);
}

fn admin_addr(gw: &Gateway) -> String {
    format!("127.0.0.1:{}", gw.admin)
}

fn admin_ready(gw: &Gateway) -> bool {
    send(
        &format!("http://{}", admin_addr(gw)),
        "GET",
        "/ready",
        &[],
        b"",
    )
    .is_ok_and(|r| r.status == 200)
}

/// The admin address is often open to a whole cluster (probes): a client that trickles
/// its headers, or sends nothing, is closed at its 10 s header timeout, as on a
/// listener.
#[test]
fn slowloris_on_the_admin_address_is_closed_at_its_header_timeout() {
    let gw = gateway("");
    let mut slow: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(admin_addr(&gw)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nx-a: ")
                .unwrap();
            s
        })
        .collect();
    let mut silent = TcpStream::connect(admin_addr(&gw)).unwrap();
    let start = Instant::now();
    let mut open: Vec<usize> = (0..slow.len()).collect();
    // A byte a second, never the end of the headers.
    while !open.is_empty() && start.elapsed() < Duration::from_secs(16) {
        open.retain(|&i| {
            let _ = slow[i].write_all(b"a");
            !closed_within(&mut slow[i], Duration::from_millis(100))
        });
        std::thread::sleep(Duration::from_millis(1000));
    }
    assert!(
        open.is_empty(),
        "slow admin connections {open:?} still open after {:?}",
        start.elapsed()
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(2)),
        "a silent admin connection is closed too"
    );
    assert!(admin_ready(&gw), "the admin still answers");
}

/// Past 64 open connections the admin closes new ones at once, rather than holding a
/// descriptor each for whoever asks; once they go, it answers again.
#[test]
fn admin_connections_past_its_cap_are_closed_and_it_answers_afterwards() {
    let gw = gateway("");
    let mut held: Vec<TcpStream> = Vec::new();
    for i in 0..64 {
        let mut s = TcpStream::connect(admin_addr(&gw)).unwrap();
        // A complete request each, so the admin has surely accepted them; kept alive.
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = s.read(&mut buf).unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "connection {i}"
        );
        held.push(s);
    }
    let mut extra = TcpStream::connect(admin_addr(&gw)).unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
    assert!(
        closed_within(&mut extra, Duration::from_secs(3)),
        "the 65th admin connection is closed"
    );
    drop(held);
    let start = Instant::now();
    while !admin_ready(&gw) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the admin answers /ready once the connections are gone"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    honest_client_is_served(&gw);
}

// HTTP/2 frames, written by hand: what a misbehaving client sends.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An upstream that answers with an endless chunked body and says when the gateway
/// closed the connection (a write failed), with how long after the request came.
fn endless_upstream() -> (std::net::SocketAddr, std::sync::mpsc::Receiver<Duration>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = raw_upstream(move |mut conn| {
        let tx = tx.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let start = Instant::now();
            let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
            let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            if conn.write_all(head).await.is_err() {
                return;
            }
            while conn.write_all(chunk.as_bytes()).await.is_ok() {}
            let _ = tx.send(start.elapsed());
        }
    });
    (addr, rx)
}

/// A client that asks for a large response and stops reading: hyper then stops
/// polling the body, and the body's own timer with it. The request's deadline still
/// ends the exchange: the gateway drops the upstream body, so the upstream connection
/// closes (before, it stayed busy for as long as the client held it).
#[test]
fn a_client_that_stops_reading_releases_the_upstream_at_the_deadline() {
    let (gw, closed) = endless_gateway();
    let mut s = TcpStream::connect(addr(&gw)).unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    // Read the head and a little, then nothing more.
    let mut buf = [0u8; 1024];
    let _ = s.read(&mut buf).unwrap();
    let took = closed
        .recv_timeout(Duration::from_secs(15))
        .expect("the upstream connection is closed while the client holds its own");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    drop(s);
}

/// The same over HTTP/2: a stream window of zero, and PINGs to keep the connection
/// busy. hyper never polls that stream's body at all.
#[test]
fn an_http2_client_with_a_zero_window_releases_the_upstream_at_the_deadline() {
    let (gw, closed) = endless_gateway();
    let mut s = TcpStream::connect(addr(&gw)).unwrap();
    s.write_all(PREFACE).unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE (4) = 0: no stream may be sent a byte of data.
    s.write_all(&frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 0])).unwrap();
    s.write_all(&frame(0x1, END_HEADERS | END_STREAM, 1, GET_BLOCK))
        .unwrap();
    let started = Instant::now();
    let took = loop {
        if let Ok(took) = closed.recv_timeout(Duration::from_millis(500)) {
            break took;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the upstream connection is still held"
        );
        s.write_all(&frame(0x6, 0, 0, &[0; 8])).unwrap();
    };
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
}

/// A gateway in front of [`endless_upstream`], with a 2 s deadline.
fn endless_gateway() -> (Gateway, std::sync::mpsc::Receiver<Duration>) {
    let (upstream, closed) = endless_upstream();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
access_log: "off"
services: [{{ name: endless, url: "http://{upstream}", timeout_ms: 2000, read_timeout_ms: 1000 }}]
routes: [{{ name: api, match: {{ paths: [/] }}, service: endless }}]
"#
    ));
    (gw, closed)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GET / header block in HPACK: indexed :method GET, :scheme http, :path /, and a
/// literal :authority.
const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x01, b'x'];
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads frames until `want` says stop, EOF, or `limit`; the frames read.
fn read_frames(
    s: &mut TcpStream,
    limit: Duration,
    want: impl Fn(&Frame) -> bool,
) -> (Vec<Frame>, bool) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 16384];
    while start.elapsed() < limit {
        match s.read(&mut chunk) {
            Ok(0) => return (frames, true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (frames, true),
        }
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let f = Frame {
                kind: buf[3],
                stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                payload: buf[9..9 + len].to_vec(),
            };
            buf.drain(..9 + len);
            let stop = want(&f);
            frames.push(f);
            if stop {
                return (frames, false);
            }
        }
    }
    (frames, false)
}

fn h2_connect(gw: &Gateway) -> TcpStream {
    let mut s = TcpStream::connect(addr(gw)).unwrap();
    s.write_all(PREFACE).unwrap();
    s.write_all(&frame(0x4, 0, 0, &[])).unwrap();
    s
}

fn goaway_code(frames: &[Frame]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.kind == 0x7)
        .map(|f| u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]))
}

#[test]
fn http2_advertises_and_enforces_its_stream_limit() {
    let gw = gateway(", http2_max_concurrent_streams: 3");
    let mut s = h2_connect(&gw);
    let (frames, _) = read_frames(&mut s, Duration::from_secs(5), |f| {
        f.kind == 0x4 && f.stream == 0
    });
    let settings = frames
        .iter()
        .find(|f| f.kind == 0x4)
        .expect("server SETTINGS");
    let max = settings
        .payload
        .chunks(6)
        .find(|c| u16::from_be_bytes([c[0], c[1]]) == 0x3)
        .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]));
    assert_eq!(max, Some(3), "SETTINGS_MAX_CONCURRENT_STREAMS");
    // Acknowledge, then open more streams than allowed without ending them.
    s.write_all(&frame(0x4, 0x1, 0, &[])).unwrap();
    for id in [1u32, 3, 5, 7, 9] {
        s.write_all(&frame(0x1, END_HEADERS, id, GET_BLOCK))
            .unwrap();
    }
    let (frames, _) = read_frames(&mut s, Duration::from_secs(5), |f| {
        f.kind == 0x3 || f.kind == 0x7
    });
    let refused = frames.iter().any(|f| {
        (f.kind == 0x3
            && u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]) == 0x7)
            || (f.kind == 0x7)
    });
    assert!(
        refused,
        "a stream past the limit is refused (REFUSED_STREAM) or the connection ended"
    );
    honest_client_is_served(&gw);
}

#[test]
fn http2_rapid_reset_ends_the_connection() {
    let gw = gateway("");
    let mut s = h2_connect(&gw);
    let mut burst = Vec::new();
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(0x1, END_HEADERS | END_STREAM, id, GET_BLOCK));
        burst.extend(frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let _ = s.write_all(&burst);
    let (frames, closed) = read_frames(&mut s, Duration::from_secs(10), |f| f.kind == 0x7);
    let code = goaway_code(&frames);
    assert!(
        code == Some(0xb) || (closed && code.is_some()),
        "GOAWAY with ENHANCE_YOUR_CALM expected, got {code:?} (closed: {closed})"
    );
    honest_client_is_served(&gw);
}

#[test]
fn http2_continuation_flood_is_cut_at_the_header_limit() {
    let gw = gateway(", max_request_headers_kb: 8");
    let mut s = h2_connect(&gw);
    s.write_all(&frame(0x1, 0, 1, GET_BLOCK)).unwrap();
    // Literal headers without indexing, new name: 0x00, name, value; 100 bytes each.
    let mut fragment = Vec::new();
    for i in 0..150u32 {
        let name = format!("x-flood-{i:04}");
        fragment.push(0x00);
        fragment.push(name.len() as u8);
        fragment.extend_from_slice(name.as_bytes());
        fragment.push(80);
        fragment.extend_from_slice(&[b'a'; 80]);
    }
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sent = 0usize;
    let start = Instant::now();
    while sent < (64 << 20) && start.elapsed() < Duration::from_secs(20) {
        if s.write_all(&frame(0x9, 0, 1, &fragment)).is_err() {
            break;
        }
        sent += fragment.len();
    }
    let (frames, closed) = read_frames(&mut s, Duration::from_secs(5), |f| f.kind == 0x7);
    let cut = closed || goaway_code(&frames).is_some();
    assert!(cut, "the connection survived {sent} bytes of CONTINUATION");
    assert!(sent < (16 << 20), "cut early: {sent} bytes");
    honest_client_is_served(&gw);
}
