//! TLS (certificate generated at run time) and HTTP/2, downstream.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;

fn tls_gateway() -> (Gateway, rcgen::CertifiedKey<rcgen::KeyPair>) {
    tls_gateway_in_front_of(echo())
}

fn client_config(
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// GET over TLS; returns (HTTP version, status, body).
async fn tls_get(port: u16, config: Arc<rustls::ClientConfig>) -> (http::Version, u16, String) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let req = http::Request::builder()
        .uri(format!("https://localhost:{port}/hello"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let (v, s) = (resp.version(), resp.status().as_u16());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (v, s, String::from_utf8_lossy(&body).into_owned())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn tls_listener_serves_http1_and_http2_by_alpn() {
    let (gw, cert) = tls_gateway();
    let (v, status, body) = rt().block_on(tls_get(gw.port, client_config(&cert, &[b"http/1.1"])));
    assert_eq!((v, status), (http::Version::HTTP_11, 200));
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let proto = doc["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == "x-forwarded-proto")
        .unwrap()[1]
        .clone();
    assert_eq!(proto, "https");
    let (v, status, _) = rt().block_on(tls_get(
        gw.port,
        client_config(&cert, &[b"h2", b"http/1.1"]),
    ));
    assert_eq!((v, status), (http::Version::HTTP_2, 200));
}

#[test]
fn a_client_that_does_not_trust_the_certificate_is_refused() {
    let (gw, cert) = tls_gateway();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let result = rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        tokio_rustls::TlsConnector::from(client_config(&other, &[]))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    });
    assert!(result.is_err());
    let (_, status, _) = rt().block_on(tls_get(gw.port, client_config(&cert, &[])));
    assert_eq!(status, 200, "the gateway keeps serving trusted clients");
}

#[test]
fn cleartext_http2_with_prior_knowledge() {
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: s, url: "http://{}" }}]
routes: [{{ name: r, match: {{ paths: [/] }}, service: s }}]
"#,
        echo()
    ));
    let answer = h2_get(gw.port, "/x");
    let (v, status) = (answer.version, answer.status);
    assert_eq!((v, status), (http::Version::HTTP_2, 200));
}

/// An upstream that answers every request with a chunked body of two chunks and the
/// trailers `x-upstream-trailer: up` and `x-drop: 1`.
fn trailing() -> std::net::SocketAddr {
    raw_upstream(|mut s| async move {
        use tokio::io::AsyncWriteExt;
        let _ = s
            .write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\
                  trailer: x-upstream-trailer, x-drop\r\n\r\n\
                  5\r\nhello\r\n6\r\n world\r\n0\r\n\
                  x-upstream-trailer: up\r\nx-drop: 1\r\n\r\n",
            )
            .await;
    })
}

/// What a cleartext HTTP/2 GET got back.
struct H2Answer {
    version: http::Version,
    status: u16,
    body: String,
    trailers: Option<http::HeaderMap>,
}

/// A request body given frame by frame: data, then trailers.
struct Frames(std::collections::VecDeque<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// POST `path` over cleartext HTTP/2 with a body in two chunks and then trailers; the
/// status and what the echo upstream answered.
fn h2_post_with_trailers(port: u16, path: &str) -> (u16, serde_json::Value) {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-t", http::HeaderValue::from_static("1"));
    let frames = Frames(
        [
            hyper::body::Frame::data(Bytes::from_static(b"hello ")),
            hyper::body::Frame::data(Bytes::from_static(b"body")),
            hyper::body::Frame::trailers(trailers),
        ]
        .into(),
    );
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .body(frames)
        .unwrap();
    let answer = h2_send(port, req);
    (
        answer.status,
        serde_json::from_str(&answer.body).unwrap_or(serde_json::Value::Null),
    )
}

/// GET `path` over cleartext HTTP/2 (prior knowledge), the body read to its end.
fn h2_get(port: u16, path: &str) -> H2Answer {
    let req = http::Request::builder()
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    h2_send(port, req)
}

/// Sends `req` over cleartext HTTP/2 (prior knowledge); the answer, its body read to
/// its end.
fn h2_send<B>(port: u16, req: http::Request<B>) -> H2Answer
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        let (version, status) = (resp.version(), resp.status().as_u16());
        let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
            .await
            .expect("the body ends")
            .expect("the body is whole");
        H2Answer {
            version,
            status,
            trailers: body.trailers().cloned(),
            body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        }
    })
}

/// The upstream's response trailers reach an HTTP/2 client through the filters'
/// `on_response_trailers`, in our gateway as in Envoy: the conformance filter holds
/// the body for its end, which the trailers bring; it adds a trailer naming the
/// upstream's and removes another, and the body it held goes out whole before the
/// trailers. A route without filters passes the trailers as they came.
#[test]
fn response_trailers_go_through_the_filters_to_http2_clients_as_in_envoy() {
    let up = trailing();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: s, url: "http://{up}" }}]
filters: [{{ name: conformance, wasm: "{}", config: {{ upstream: s }} }}]
routes:
  - {{ name: filtered, match: {{ paths: [/case] }}, service: s, filters: [conformance], strip_path: false }}
  - {{ name: plain, match: {{ paths: [/plain] }}, service: s }}
"#,
        wasm("conformance_filter")
    ));
    let ours = h2_get(gw.port, "/case/response-trailers");
    assert_eq!((ours.status, ours.body.as_str()), (200, "hello world"));
    let trailers = ours.trailers.as_ref().expect("trailers reach the client");
    assert_eq!(trailers.get("x-filter-trailer").unwrap(), "2:up");
    assert_eq!(trailers.get("x-upstream-trailer").unwrap(), "up");
    assert!(trailers.get("x-drop").is_none(), "{trailers:?}");

    let plain = h2_get(gw.port, "/plain");
    assert_eq!((plain.status, plain.body.as_str()), (200, "hello world"));
    let trailers = plain.trailers.expect("trailers reach the client");
    assert_eq!(trailers.get("x-drop").unwrap(), "1");
    assert!(trailers.get("x-filter-trailer").is_none());

    // Envoy, with the same filter, its HTTP/1.1 upstream's trailers enabled.
    let filter = portcullis_envoy::WasmFilter::new(
        "conformance",
        wasm("conformance_filter"),
        r#"{"upstream": "upstream"}"#,
    );
    let config = portcullis_envoy::EnvoyConfig::new(up).filter(filter);
    let (listen, admin) = (portcullis_envoy::free_port(), portcullis_envoy::free_port());
    let mut bootstrap = config.bootstrap(listen, admin);
    bootstrap["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = serde_json::json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http_protocol_options": { "enable_trailers": true } }
        }
    });
    let path = std::env::temp_dir().join(format!("trailers-envoy-{}.json", std::process::id()));
    std::fs::write(&path, bootstrap.to_string()).expect("write the bootstrap");
    let envoy = portcullis_envoy::Envoy::start_file(
        &path,
        std::net::SocketAddr::from(([127, 0, 0, 1], listen)),
        std::net::SocketAddr::from(([127, 0, 0, 1], admin)),
        1,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&path);
    let theirs = h2_get(envoy.listener.port(), "/case/response-trailers");
    let named = |r: &H2Answer| {
        let t = r.trailers.as_ref();
        let get = |n: &str| {
            t.and_then(|t| t.get(n))
                .map(|v| v.to_str().unwrap_or("").to_owned())
        };
        (
            r.status,
            r.body.clone(),
            get("x-filter-trailer"),
            get("x-upstream-trailer"),
            get("x-drop"),
        )
    };
    assert_eq!(named(&ours), named(&theirs), "ours, then Envoy's");
}

/// Request trailers from an HTTP/2 client while a filter holds the headers
/// (`allow_on_headers_stop_iteration`): in both hosts the holder's trailers callback
/// runs while it still holds the headers (it sets two) and the body (it reads it), its
/// body callback never sees an end of body, and the headers and body then go on.
#[test]
fn request_trailers_reach_a_filter_holding_the_headers_as_in_envoy() {
    let up = echo();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: s, url: "http://{up}" }}]
filters: [{{ name: conformance, wasm: "{}", config: {{ upstream: s }}, allow_on_headers_stop_iteration: true }}]
routes: [{{ name: r, match: {{ paths: [/case] }}, service: s, filters: [conformance], strip_path: false }}]
"#,
        wasm("conformance_filter")
    ));
    let mut filter = portcullis_envoy::WasmFilter::new(
        "conformance",
        wasm("conformance_filter"),
        r#"{"upstream": "upstream"}"#,
    );
    filter.allow_on_headers_stop_iteration = true;
    let envoy =
        portcullis_envoy::Envoy::start(&portcullis_envoy::EnvoyConfig::new(up).filter(filter))
            .unwrap_or_else(|e| panic!("{e}"));
    let seen = |port: u16| {
        let (status, echo) = h2_post_with_trailers(port, "/case/headers-wait-for-body");
        let header = |name: &str| {
            echo["headers"].as_array().and_then(|h| {
                h.iter()
                    .find(|p| p[0].as_str() == Some(name))
                    .and_then(|p| p[1].as_str().map(str::to_owned))
            })
        };
        (
            status,
            header("x-trailers-at-holder"),
            header("x-body-at-trailers"),
            header("x-body-seen"),
            echo["body"].as_str().map(str::to_owned),
        )
    };
    let ours = seen(gw.port);
    assert_eq!(
        ours,
        (
            200,
            Some("1".into()),
            Some("hello body".into()),
            None,
            Some("hello body".into())
        )
    );
    assert_eq!(ours, seen(envoy.listener.port()), "ours, then Envoy's");
}
