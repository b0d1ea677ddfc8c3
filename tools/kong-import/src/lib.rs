//! `portcullis import kong`: a Kong declarative configuration (decK or DB-less, YAML or
//! JSON, `_format_version` 1.1, 2.1 or 3.0) mapped onto the gateway's configuration
//! and its filters, with a report that says of every entity whether it was mapped
//! exactly, mapped with differences (each said in one sentence) or not supported.
//!
//! [`input`] reads Kong's file into one flat model (placeholders, nesting, references);
//! [`map`] maps it; [`report`] says what changed.

pub mod envoy;
pub mod input;
pub mod map;
pub mod report;

pub use report::{Report, Status};

/// Where the output runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The proxy listener (Kong's default proxy port).
    pub listen: String,
    /// The gateway's admin endpoint (metrics, health).
    pub admin: String,
    /// Where the filters' `.wasm` files are.
    pub wasm_dir: String,
    /// The rate-limit service, for `policy: redis`.
    pub ratelimit_url: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: "127.0.0.1:8000".into(),
            admin: "127.0.0.1:8100".into(),
            wasm_dir: "/usr/local/lib/portcullis/filters".into(),
            ratelimit_url: "http://127.0.0.1:8081".into(),
        }
    }
}

/// An imported configuration and what changed on the way.
pub struct Imported {
    /// The gateway's configuration (`portcullis run --config`), as YAML.
    pub yaml: String,
    pub config: serde_json::Value,
    /// The same routes and filters as an Envoy bootstrap, as YAML.
    pub envoy_yaml: String,
    pub report: Report,
}

/// Imports `text`. `env`: take decK's `${{ env "DECK_X" }}` values from it (`None`:
/// keep the placeholders, and say so where they matter).
pub fn import(
    text: &str,
    env: Option<&dyn Fn(&str) -> Option<String>>,
    opts: &Options,
) -> Result<Imported, String> {
    let text = input::render_placeholders(text, env)?;
    let kong = input::Kong::parse(&text)?;
    let mut report = Report::default();
    if env.is_none() && text.contains(input::KEPT) {
        report.mapped(
            "file",
            "placeholders",
            vec!["decK placeholders (`${{ env \"DECK_...\" }}`) are kept as written; run with --env to take their values".into()],
        );
    }
    let mapped = map::map(&kong, opts, &mut report);
    let yaml = format!(
        "# Imported from a Kong configuration (_format_version {}) by `portcullis import kong`.\n{}",
        kong.format,
        serde_norway::to_string(&mapped.config).map_err(|e| e.to_string())?
    );
    let envoy_yaml = format!(
        "# Imported from a Kong configuration by `portcullis import kong --envoy`: the same\n# routes and filters as an Envoy bootstrap.\n{}",
        serde_norway::to_string(&envoy::bootstrap(&mapped.config)).map_err(|e| e.to_string())?
    );
    Ok(Imported {
        yaml,
        config: mapped.config,
        envoy_yaml,
        report,
    })
}
