//! The `portcullis` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc, as Envoy links tcmalloc: a filtered request allocates for every
/// filter's context, maps and calls, and glibc's allocator was an eighth of its CPU
/// (docs/performance.md). Built without transparent huge pages: with them, RSS grew by
/// 10 MB at one worker and filtered requests were no faster.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Bring another gateway's configuration over.
    Import {
        #[command(subcommand)]
        from: ImportFrom,
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

#[derive(Subcommand)]
enum ImportFrom {
    /// A Kong declarative configuration (decK or DB-less; YAML or JSON; format 1.1,
    /// 2.1 or 3.0) as a portcullis configuration, with a report of what changed. Exits
    /// 0 when the output is usable.
    Kong {
        /// The Kong file.
        file: PathBuf,
        /// Where to write the configuration (default: standard output).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Where to write the report: Markdown, or JSON when the name ends in .json.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Also write an Envoy bootstrap running the same routes and filters.
        #[arg(long)]
        envoy: Option<PathBuf>,
        /// Fail (exit 1) when anything was mapped with differences or not at all.
        #[arg(long)]
        strict: bool,
        /// Take decK's `${{ env "DECK_X" }}` values from the environment.
        #[arg(long)]
        env: bool,
        /// Where the filters' .wasm files are.
        #[arg(long, default_value = "/usr/local/lib/portcullis/filters")]
        wasm_dir: String,
        /// The proxy listener.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: String,
        /// The admin endpoint.
        #[arg(long, default_value = "127.0.0.1:8100")]
        admin: String,
    },
}

/// `portcullis import kong`.
#[allow(clippy::too_many_arguments)]
fn import_kong(
    file: &std::path::Path,
    out: Option<&std::path::Path>,
    report: Option<&std::path::Path>,
    envoy: Option<&std::path::Path>,
    strict: bool,
    env: bool,
    options: portcullis_kong::Options,
) -> Result<(), Vec<String>> {
    let text =
        std::fs::read_to_string(file).map_err(|e| vec![format!("{}: {e}", file.display())])?;
    let from_env = |name: &str| std::env::var(name).ok();
    let imported =
        portcullis_kong::import(&text, if env { Some(&from_env) } else { None }, &options)
            .map_err(|e| vec![format!("{}: {e}", file.display())])?;
    match out {
        Some(path) => std::fs::write(path, &imported.yaml)
            .map_err(|e| vec![format!("{}: {e}", path.display())])?,
        None => print!("{}", imported.yaml),
    }
    if let Some(path) = envoy {
        std::fs::write(path, &imported.envoy_yaml)
            .map_err(|e| vec![format!("{}: {e}", path.display())])?;
    }
    let r = &imported.report;
    if let Some(path) = report {
        let text = if path.extension().is_some_and(|e| e == "json") {
            serde_json::to_string_pretty(&r.json()).unwrap_or_default()
        } else {
            r.markdown()
        };
        std::fs::write(path, text).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    }
    eprintln!("{}", r.summary());
    for e in &r.entries {
        if e.status != portcullis_kong::Status::Exact {
            eprintln!("  {} {}: {}", e.kind, e.name, e.notes.join("; "));
        }
    }
    let changed = r.count(portcullis_kong::Status::Differences)
        + r.count(portcullis_kong::Status::Unsupported);
    if strict && changed > 0 {
        return Err(vec![format!(
            "--strict: {changed} entities were not mapped exactly"
        )]);
    }
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
        Command::Import {
            from:
                ImportFrom::Kong {
                    file,
                    out,
                    report,
                    envoy,
                    strict,
                    env,
                    wasm_dir,
                    listen,
                    admin,
                },
        } => import_kong(
            &file,
            out.as_deref(),
            report.as_deref(),
            envoy.as_deref(),
            strict,
            env,
            portcullis_kong::Options {
                listen,
                admin,
                wasm_dir,
                ..portcullis_kong::Options::default()
            },
        ),
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
    let rt = portcullis::state::local_runtime().map_err(|e| vec![e.to_string()])?;
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| vec![format!("cannot listen on {address}: {e}")])?;
        eprintln!("echo upstream on http://{address}");
        portcullis_echo::serve(l).await;
        Ok(())
    })
}
