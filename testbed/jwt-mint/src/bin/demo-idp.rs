//! The demo's identity provider (see `jwt_mint::demo`): its JWKS and introspection
//! endpoint served over HTTP, and tokens minted for a chosen consumer and tier.
//!
//! ```text
//! demo-idp serve --dir target/demo --address 127.0.0.1:9001
//! demo-idp token --dir target/demo --sub ada --tier premium --ttl 3600
//! demo-idp token --dir target/demo --sub ada --opaque        # an opaque token
//! demo-idp token --dir target/demo --sub soak --count 1000   # soak-0 ... soak-999, one per line
//! ```

use std::path::PathBuf;

use jwt_mint::demo::{AUDIENCE, ISSUER, mint_opaque, now, serve, signing_key};
use serde_json::json;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(arg(&args, "--dir", "target/demo"));
    match args.first().map(String::as_str) {
        Some("token") => {
            let now = now();
            let ttl: u64 = arg(&args, "--ttl", "3600").parse().unwrap_or(3600);
            let sub = arg(&args, "--sub", "ada");
            let tier = arg(&args, "--tier", "free");
            // The groups claim, comma-separated (a claim rule of the demo wants `admin`).
            let groups: Vec<String> = arg(&args, "--groups", "demo")
                .split(',')
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect();
            if args.iter().any(|a| a == "--opaque") {
                let claims = json!({
                    "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "client_id": sub,
                    "preferred_username": sub, "tier": tier, "groups": groups,
                    "scope": "orders:read", "token_type": "Bearer", "iat": now, "exp": now + ttl
                });
                println!("{}", mint_opaque(&dir, &claims));
                return;
            }
            // One token, or many (subjects `<sub>-<i>`) for load tests.
            let count: Option<usize> = args
                .iter()
                .any(|a| a == "--count")
                .then(|| arg(&args, "--count", "1").parse().unwrap_or(1));
            let key = signing_key(&dir);
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
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&address)
                    .await
                    .unwrap_or_else(|e| panic!("cannot listen on {address}: {e}"));
                eprintln!(
                    "demo IdP: JWKS at http://{address}/jwks, introspection at http://{address}/introspect (issuer {ISSUER})"
                );
                serve(dir, listener).await;
            });
        }
        _ => {
            eprintln!(
                "usage: demo-idp serve [--dir D] [--address A] | token [--dir D] [--sub S] [--tier T] [--groups G,..] [--ttl SECONDS] [--count N] [--opaque]"
            );
            std::process::exit(2);
        }
    }
}
