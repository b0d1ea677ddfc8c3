//! The demo's identity provider: an EC P-256 signing key made on first use (kept in
//! the demo directory, never in the repository), its JWKS served over HTTP, and tokens
//! minted for a chosen consumer and tier.
//!
//! ```text
//! demo-idp serve --dir target/demo --address 127.0.0.1:9001
//! demo-idp token --dir target/demo --sub ada --tier premium --ttl 3600
//! demo-idp token --dir target/demo --sub soak --count 1000   # soak-0 ... soak-999, one per line
//! ```

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use jwt_mint::{Key, jwks};
use serde_json::json;

pub const ISSUER: &str = "https://demo-idp.portcullis.local";
pub const AUDIENCE: &str = "demo-api";

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

fn key(dir: &Path) -> Key {
    let path = dir.join("signing-key.json");
    if let Some(k) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .and_then(|j| Key::from_private_jwk(&j))
    {
        return k;
    }
    let k = Key::ec256(&format!(
        "demo-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    ));
    std::fs::create_dir_all(dir).expect("demo directory");
    std::fs::write(&path, k.private_jwk().expect("an EC key").to_string())
        .expect("write the demo key");
    k
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(arg(&args, "--dir", "target/demo"));
    match args.first().map(String::as_str) {
        Some("token") => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let ttl: u64 = arg(&args, "--ttl", "3600").parse().unwrap_or(3600);
            let sub = arg(&args, "--sub", "ada");
            let tier = arg(&args, "--tier", "free");
            // The groups claim, comma-separated (a claim rule of the demo wants `admin`).
            let groups: Vec<String> = arg(&args, "--groups", "demo")
                .split(',')
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect();
            // One token, or many (subjects `<sub>-<i>`) for load tests.
            let count: Option<usize> = args
                .iter()
                .any(|a| a == "--count")
                .then(|| arg(&args, "--count", "1").parse().unwrap_or(1));
            let key = key(&dir);
            let subjects: Vec<String> = match count {
                None => vec![sub],
                Some(n) => (0..n).map(|i| format!("{sub}-{i}")).collect(),
            };
            let mut out = String::new();
            for sub in subjects {
                let claims = json!({
                    "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "preferred_username": sub,
                    "tier": tier, "groups": groups, "scope": "orders:read",
                    "iat": now, "exp": now + ttl
                });
                out.push_str(&key.sign("ES256", claims));
                out.push('\n');
            }
            print!("{out}");
        }
        Some("serve") => {
            let address = arg(&args, "--address", "127.0.0.1:9001");
            let body = Bytes::from(jwks(&[&key(&dir)]).to_string());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&address)
                    .await
                    .unwrap_or_else(|e| panic!("cannot listen on {address}: {e}"));
                eprintln!("demo IdP: JWKS at http://{address}/jwks (issuer {ISSUER})");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let body = body.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |_req| {
                            let body = body.clone();
                            async move {
                                let mut r = hyper::Response::new(Full::new(body));
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
            });
        }
        _ => {
            eprintln!(
                "usage: demo-idp serve [--dir D] [--address A] | token [--dir D] [--sub S] [--tier T] [--ttl SECONDS] [--count N]"
            );
            std::process::exit(2);
        }
    }
}
