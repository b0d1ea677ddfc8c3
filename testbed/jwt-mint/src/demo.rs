//! The demo IdP (`demo-idp`, `cargo xtask demo`): an EC P-256 signing key made on first
//! use and kept in the demo directory (never in the repository), its JWKS served over
//! HTTP, and opaque (reference) tokens with an introspection endpoint (RFC 7662), as
//! PingFederate issues them.
//!
//! An opaque token is random; what it stands for is written to
//! `<dir>/opaque/<SHA-256 of the token>.json`, which `POST /introspect` reads (so
//! deleting the file revokes the token). The endpoint wants `client_secret_basic` for
//! the demo client `demo-gateway` / `demo-secret`, a demo-only credential.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::{Key, jwks};

pub const ISSUER: &str = "https://demo-idp.portcullis.local";
pub const AUDIENCE: &str = "demo-api";
/// The demo client at the introspection endpoint (`client_secret_basic`).
const CLIENT: &str = "demo-gateway:demo-secret";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The demo's signing key: the one kept in `dir`, or a new one written there.
pub fn signing_key(dir: &Path) -> Key {
    let path = dir.join("signing-key.json");
    if let Some(k) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .and_then(|j| Key::from_private_jwk(&j))
    {
        return k;
    }
    let k = Key::ec256(&format!("demo-{}", now()));
    std::fs::create_dir_all(dir).expect("demo directory");
    std::fs::write(&path, k.private_jwk().expect("an EC key").to_string())
        .expect("write the demo key");
    k
}

/// Where an opaque token's claims are kept.
fn opaque_path(dir: &Path, token: &str) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    dir.join("opaque").join(format!("{hex}.json"))
}

/// A new opaque token standing for `claims`.
pub fn mint_opaque(dir: &Path, claims: &Value) -> String {
    let mut random = [0u8; 24];
    getrandom::fill(&mut random).expect("randomness");
    let token: String = std::iter::once("opq_".to_owned())
        .chain(random.iter().map(|b| format!("{b:02x}")))
        .collect();
    let path = opaque_path(dir, &token);
    std::fs::create_dir_all(path.parent().expect("a directory"))
        .expect("the opaque token directory");
    std::fs::write(&path, claims.to_string()).expect("write the opaque token");
    token
}

/// The introspection endpoint's answer for a request's form body and authorization.
pub fn introspect(dir: &Path, authorization: Option<&str>, form: &[u8]) -> (u16, String) {
    use base64::Engine;
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(CLIENT)
    );
    if authorization != Some(want.as_str()) {
        return (401, json!({"error": "invalid_client"}).to_string());
    }
    let form = String::from_utf8_lossy(form);
    let token = form
        .split('&')
        .find_map(|p| p.strip_prefix("token="))
        .unwrap_or("");
    let claims = std::fs::read(opaque_path(dir, token))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter(|c| c["exp"].as_u64().is_some_and(|exp| exp > now()));
    let answer = match claims {
        Some(mut c) if !token.is_empty() => {
            c["active"] = json!(true);
            c
        }
        _ => json!({"active": false}),
    };
    (200, answer.to_string())
}

/// Serves the JWKS (any GET) and `POST /introspect` on `listener` until the process ends.
pub async fn serve(dir: PathBuf, listener: tokio::net::TcpListener) {
    let body = Bytes::from(jwks(&[&signing_key(&dir)]).to_string());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
        let dir = dir.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    let dir = dir.clone();
                    async move {
                        let (status, answer) = if req.uri().path() == "/introspect" {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let form = match req.into_body().collect().await {
                                Ok(b) => b.to_bytes(),
                                Err(_) => Bytes::new(),
                            };
                            let (s, a) = introspect(&dir, auth.as_deref(), &form);
                            (s, Bytes::from(a))
                        } else {
                            (200, body)
                        };
                        let mut r = hyper::Response::new(Full::new(answer));
                        *r.status_mut() =
                            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
                        r.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The demo IdP on a free loopback port, on a thread of its own (for tests).
pub fn spawn(dir: PathBuf) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a loopback port");
            let _ = tx.send(listener.local_addr().expect("an address"));
            serve(dir, listener).await;
        });
    });
    rx.recv().expect("the demo IdP started")
}
