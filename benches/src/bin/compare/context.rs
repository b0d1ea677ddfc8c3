//! The command line (`--rounds`, `--seconds`, `--connections`, `--workers`, `--only`)
//! and the context every section shares: the binaries, the filters' directory, the
//! upstream, the temporary directory and the signing keys.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::{Value, json};

/// The command line; `--rounds 1 --seconds 1` makes a quick run.
pub struct Args {
    pub rounds: usize,
    pub seconds: u64,
    pub connections: usize,
    pub workers: usize,
    pub only: Option<String>,
}

pub fn args() -> Args {
    let mut a = Args {
        rounds: 3,
        seconds: 5,
        connections: 32,
        workers: 1,
        only: None,
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
            "--only" => a.only = Some(v[i + 1].clone()),
            _ => {}
        }
        i += 2;
    }
    a
}

/// What every section shares.
pub struct Ctx {
    pub a: Args,
    pub portcullis: std::cell::RefCell<PathBuf>,
    /// `$PORTCULLIS_COMPARE_ALT_GATEWAY`: a second build of the gateway, run beside the
    /// first in the chain section (an A/B of a host change in one run).
    pub alt_portcullis: Option<PathBuf>,
    pub wasm: std::cell::RefCell<PathBuf>,
    /// `$PORTCULLIS_COMPARE_ALT_WASM`: a second build of the filters, run beside the
    /// first in the chain section (an A/B of a filter change in one run).
    pub alt_wasm: Option<PathBuf>,
    pub dir: PathBuf,
    pub upstream: SocketAddr,
    pub upstream_pid: u32,
    /// The JWKS with both signing keys.
    pub jwks: Value,
    pub es256: jwt_mint::Key,
    pub rs256: jwt_mint::Key,
}

pub const ISSUER: &str = "https://idp.bench";

impl Ctx {
    /// Where the module `name` is: one this run made itself (in its own directory)
    /// first, else the built filters.
    pub fn wasm(&self, name: &str) -> PathBuf {
        let file = format!("{name}.wasm");
        let made = self.dir.join(&file);
        if made.exists() {
            return made;
        }
        self.wasm_dir().join(file)
    }

    pub fn wasm_dir(&self) -> PathBuf {
        self.wasm.borrow().clone()
    }

    pub fn token(&self, key: &jwt_mint::Key, alg: &str, sub: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        key.sign(
            alg,
            json!({"iss": ISSUER, "aud": "api", "sub": sub, "tier": "premium", "iat": now, "exp": now + 7200}),
        )
    }

    pub fn runs(&self, section: &str) -> bool {
        self.a.only.as_deref().is_none_or(|o| o == section)
    }
}
