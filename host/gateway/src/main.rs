//! The `portcullis` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "API gateway running proxy-wasm policy filters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway. SIGTERM drains and exits; SIGHUP reloads the configuration.
    Run {
        /// The YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration completely (including loading every filter) and exit
    /// non-zero listing every error.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Serve Envoy's rate-limit gRPC protocol (ShouldRateLimit) on Redis, for the
    /// tier-limiter's `global` policy and any other client of the protocol (Envoy's
    /// native ratelimit filter included).
    RatelimitService {
        /// Where to listen (cleartext HTTP/2, as gRPC clusters speak it).
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// One Redis that holds the buckets: redis://[:password@]host:port[/db].
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// A Redis Cluster that holds the buckets, from some of its nodes:
        /// redis://[:password@]host:port,redis://... (the others are discovered).
        #[arg(long, value_name = "URL,URL,...")]
        redis_cluster: Option<String>,
        /// Redis Sentinels that name the master holding the buckets:
        /// redis://[:password@]host:port[/db],redis://... (the password and database
        /// serve for the sentinels and the master alike).
        #[arg(long, value_name = "URL,URL,...", requires = "sentinel_master")]
        redis_sentinel: Option<String>,
        /// The name the sentinels monitor the master by (with --redis-sentinel).
        #[arg(long, value_name = "NAME", requires = "redis_sentinel")]
        sentinel_master: Option<String>,
        /// Limits for descriptors that carry none (envoyproxy/ratelimit's rule file
        /// format); may be given several times, one domain per file.
        #[arg(long)]
        rules: Vec<PathBuf>,
        /// How long to wait for Redis before answering UNAVAILABLE.
        #[arg(long, default_value_t = 100)]
        redis_timeout_ms: u64,
        /// Prefix of every Redis key the service writes.
        #[arg(long, default_value = "portcullis:rl:")]
        key_prefix: String,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Print the digest key-auth's configuration holds for an API key read from
    /// standard input (one line): `sha256:<64 hex digits>`. With --new, make a fresh
    /// random key (256 bits) and print it, then its digest.
    KeyHash {
        #[arg(long)]
        new: bool,
    },
    /// Serve the echo upstream: it answers with what it received, as JSON.
    Echo {
        #[arg(long, default_value = "127.0.0.1:9000")]
        address: String,
    },
}

/// `portcullis key-hash`.
fn key_hash(new: bool) -> Result<(), Vec<String>> {
    let key = if new {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| vec![format!("no randomness: {e}")])?;
        let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        println!("{key}");
        key
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| vec![format!("reading the key: {e}")])?;
        let key = line.trim_end_matches(['\r', '\n']).to_owned();
        if key.is_empty() {
            return Err(vec!["no key on standard input".into()]);
        }
        key
    };
    println!("{}", key_auth::directory::hash_string(key.as_bytes()));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Run { config } => portcullis::run::run(config),
        Command::Validate { config } => portcullis::run::validate(&config).map(|plan| {
            println!(
                "{}: OK ({} listeners, {} services, {} filters, {} routes)",
                config.display(),
                plan.listeners.len(),
                plan.services.len(),
                plan.filters.len(),
                plan.routes.len()
            );
        }),
        Command::Echo { address } => echo(&address),
        Command::KeyHash { new } => key_hash(new),
        Command::RatelimitService {
            listen,
            redis,
            redis_cluster,
            redis_sentinel,
            sentinel_master,
            rules,
            redis_timeout_ms,
            key_prefix,
            threads,
        } => portcullis_ratelimit::Topology::from_options(
            redis.as_deref(),
            redis_cluster.as_deref(),
            redis_sentinel.as_deref(),
            sentinel_master.as_deref(),
        )
        .map_err(|e| vec![e])
        .and_then(|redis| {
            portcullis_ratelimit::run(portcullis_ratelimit::Options {
                listen,
                redis,
                rules,
                redis_timeout: std::time::Duration::from_millis(redis_timeout_ms),
                key_prefix,
                threads,
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn echo(address: &str) -> Result<(), Vec<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| vec![e.to_string()])?;
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| vec![format!("cannot listen on {address}: {e}")])?;
        eprintln!("echo upstream on http://{address}");
        portcullis_echo::serve(l).await;
        Ok(())
    })
}
