//! The configuration: plans (tiers) with a limit per window, how a consumer is
//! identified, and what a refused request is told. Checked whole at load.

use std::collections::BTreeMap;

use kit::config::ConfigError;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub identify_by: Option<Vec<String>>,
    pub tiers: BTreeMap<String, TierFile>,
    pub default_tier: String,
    #[serde(default)]
    pub anonymous: Option<TierFile>,
    /// Per-consumer limits (by consumer id), replacing the tier's.
    #[serde(default)]
    pub overrides: BTreeMap<String, TierFile>,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub global: Option<GlobalFile>,
    #[serde(default)]
    pub headers: HeadersFile,
    #[serde(default)]
    pub error_code: Option<u32>,
    #[serde(default)]
    pub error_message: Option<String>,
    /// Buckets kept per gateway (shared data slots); idle ones are reused.
    #[serde(default)]
    pub max_buckets: Option<u32>,
    /// What a request gets when no bucket can be had for it: `deny` (default) or
    /// `allow`.
    #[serde(default)]
    pub on_full: Option<String>,
    /// IPv6 clients identified by `ip` count as their network of this many bits
    /// (default 64: one subscriber's, handed out whole).
    #[serde(default)]
    pub ipv6_prefix_length: Option<u8>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct GlobalFile {
    /// The cluster (gateway service, Envoy cluster) of the rate-limit service.
    pub cluster: String,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// `open` (default): a failed or slow service lets the request through; `closed`: 503.
    #[serde(default)]
    pub failure_mode: Option<String>,
}

/// The global policy: every node asks one rate-limit service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    pub cluster: String,
    pub domain: String,
    pub timeout_ms: u64,
    pub fail_open: bool,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct TierFile {
    #[serde(default)]
    pub second: Option<f64>,
    #[serde(default)]
    pub minute: Option<f64>,
    #[serde(default)]
    pub hour: Option<f64>,
    #[serde(default)]
    pub day: Option<f64>,
    /// Capacity of the shortest window's bucket, when it should exceed its limit.
    #[serde(default)]
    pub burst: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersFile {
    #[serde(default = "yes")]
    pub ietf: bool,
    #[serde(default = "yes")]
    pub legacy: bool,
}

impl Default for HeadersFile {
    fn default() -> Self {
        HeadersFile {
            ietf: true,
            legacy: true,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Second,
    Minute,
    Hour,
    Day,
}

impl Window {
    pub const ALL: [Window; 4] = [Window::Second, Window::Minute, Window::Hour, Window::Day];

    pub fn seconds(self) -> u64 {
        match self {
            Window::Second => 1,
            Window::Minute => 60,
            Window::Hour => 3600,
            Window::Day => 86400,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }

    /// Kong's header suffix: `X-RateLimit-Limit-Second`.
    pub fn title(self) -> &'static str {
        match self {
            Window::Second => "Second",
            Window::Minute => "Minute",
            Window::Hour => "Hour",
            Window::Day => "Day",
        }
    }
}

/// One window of a plan: a token bucket of `capacity`, refilled at `limit / window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub window: Window,
    pub limit: f64,
    pub capacity: f64,
}

impl Limit {
    pub fn rate_per_ns(&self) -> f64 {
        self.limit / (self.window.seconds() as f64 * 1e9)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: String,
    pub limits: Vec<Limit>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identify {
    Consumer,
    Header(String),
    Ip,
}

/// What a request gets when the bucket table has no slot for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// `error_code` with `Retry-After`: never unlimited.
    Deny,
    /// Let through uncounted (the operator prefers availability).
    Allow,
}

#[derive(Debug)]
pub struct Config {
    pub identify_by: Vec<Identify>,
    pub tiers: BTreeMap<String, Plan>,
    pub default_tier: String,
    pub anonymous: Option<Plan>,
    pub overrides: BTreeMap<String, Plan>,
    pub ietf_headers: bool,
    pub legacy_headers: bool,
    pub error_code: u32,
    pub error_message: String,
    pub max_buckets: u32,
    pub on_full: OnFull,
    pub ipv6_prefix_length: u8,
    /// `None`: the local policy.
    pub global: Option<Global>,
}

fn plan(name: &str, t: &TierFile, field: &str) -> Result<Plan, ConfigError> {
    let mut limits = Vec::new();
    for w in Window::ALL {
        let v = match w {
            Window::Second => t.second,
            Window::Minute => t.minute,
            Window::Hour => t.hour,
            Window::Day => t.day,
        };
        if let Some(v) = v {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::field(
                    format!("{field}.{}", w.name()),
                    "must be a positive number",
                ));
            }
            limits.push(Limit {
                window: w,
                limit: v,
                capacity: v,
            });
        }
    }
    if limits.is_empty() {
        return Err(ConfigError::field(
            field,
            "needs at least one of second, minute, hour, day",
        ));
    }
    if let Some(b) = t.burst {
        if !(b.is_finite() && b >= limits[0].limit) {
            return Err(ConfigError::field(
                format!("{field}.burst"),
                "must be at least the shortest window's limit",
            ));
        }
        limits[0].capacity = b;
    }
    Ok(Plan {
        name: name.to_owned(),
        limits,
    })
}

impl Config {
    pub fn parse(bytes: Option<&[u8]>) -> Result<Config, ConfigError> {
        let f: ConfigFile = kit::config::parse(bytes)?;
        let mut tiers = BTreeMap::new();
        for (name, t) in &f.tiers {
            tiers.insert(name.clone(), plan(name, t, &format!("tiers.{name}"))?);
        }
        if !tiers.contains_key(&f.default_tier) {
            return Err(ConfigError::field(
                "default_tier",
                format!("`{}` is not one of the tiers", f.default_tier),
            ));
        }
        let identify_by = match &f.identify_by {
            None => vec![Identify::Consumer, Identify::Ip],
            Some(list) if list.is_empty() => {
                return Err(ConfigError::field("identify_by", "must not be empty"));
            }
            Some(list) => list
                .iter()
                .map(|s| match s.as_str() {
                    "consumer" => Ok(Identify::Consumer),
                    "ip" => Ok(Identify::Ip),
                    h if h.starts_with("header:") && h.len() > 7 => {
                        Ok(Identify::Header(h[7..].to_ascii_lowercase()))
                    }
                    other => Err(ConfigError::field(
                        "identify_by",
                        format!("`{other}`: expected consumer, ip or header:NAME"),
                    )),
                })
                .collect::<Result<_, _>>()?,
        };
        let global = match f.policy.as_deref().unwrap_or("local") {
            "local" => None,
            "global" => {
                let g = f.global.as_ref().ok_or_else(|| {
                    ConfigError::field("global", "policy global needs `global.cluster`")
                })?;
                let fail_open = match g.failure_mode.as_deref() {
                    None | Some("open") => true,
                    Some("closed") => false,
                    Some(other) => {
                        return Err(ConfigError::field(
                            "global.failure_mode",
                            format!("`{other}`: expected open or closed"),
                        ));
                    }
                };
                if g.cluster.is_empty() {
                    return Err(ConfigError::field("global.cluster", "must not be empty"));
                }
                Some(Global {
                    cluster: g.cluster.clone(),
                    domain: g.domain.clone().unwrap_or_else(|| "portcullis".into()),
                    timeout_ms: g.timeout_ms.unwrap_or(20).max(1),
                    fail_open,
                })
            }
            other => {
                return Err(ConfigError::field(
                    "policy",
                    format!("`{other}`: expected local or global"),
                ));
            }
        };
        let error_code = f.error_code.unwrap_or(429);
        if !(400..=599).contains(&error_code) {
            return Err(ConfigError::field(
                "error_code",
                "must be an HTTP error status (400-599)",
            ));
        }
        let mut overrides = BTreeMap::new();
        for (id, t) in &f.overrides {
            overrides.insert(
                id.clone(),
                plan(&format!("override-{id}"), t, &format!("overrides.{id}"))?,
            );
        }
        let max_buckets = f.max_buckets.unwrap_or(65_536);
        if max_buckets == 0 {
            return Err(ConfigError::field("max_buckets", "must be positive"));
        }
        let on_full = match f.on_full.as_deref() {
            None | Some("deny") => OnFull::Deny,
            Some("allow") => OnFull::Allow,
            Some(other) => {
                return Err(ConfigError::field(
                    "on_full",
                    format!("`{other}`: expected deny or allow"),
                ));
            }
        };
        let ipv6_prefix_length = f.ipv6_prefix_length.unwrap_or(64);
        if !(1..=128).contains(&ipv6_prefix_length) {
            return Err(ConfigError::field(
                "ipv6_prefix_length",
                "must be between 1 and 128",
            ));
        }
        Ok(Config {
            identify_by,
            anonymous: f
                .anonymous
                .as_ref()
                .map(|a| plan("anonymous", a, "anonymous"))
                .transpose()?,
            tiers,
            default_tier: f.default_tier,
            overrides,
            ietf_headers: f.headers.ietf,
            legacy_headers: f.headers.legacy,
            error_code,
            error_message: f
                .error_message
                .unwrap_or_else(|| "API rate limit exceeded".into()),
            max_buckets,
            on_full,
            ipv6_prefix_length,
            global,
        })
    }

    /// The plan for a request: a per-consumer override, else the verified tier (the
    /// default tier when it names none we know), else the anonymous plan.
    pub fn plan_for(&self, consumer: Option<&str>, tier: Option<&str>) -> &Plan {
        if let Some(c) = consumer {
            if let Some(p) = self.overrides.get(c) {
                return p;
            }
            if let Some(p) = tier.and_then(|t| self.tiers.get(t)) {
                return p;
            }
            return &self.tiers[&self.default_tier];
        }
        self.anonymous
            .as_ref()
            .unwrap_or(&self.tiers[&self.default_tier])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        let doc = format!(r#"{{"tiers": {{"t": {{"second": 1}}}}, "default_tier": "t"{extra}}}"#);
        Config::parse(Some(doc.as_bytes()))
    }

    #[test]
    fn a_full_table_denies_unless_told_to_allow() {
        assert_eq!(parse("").unwrap().on_full, OnFull::Deny);
        assert_eq!(
            parse(r#", "on_full": "deny""#).unwrap().on_full,
            OnFull::Deny
        );
        assert_eq!(
            parse(r#", "on_full": "allow""#).unwrap().on_full,
            OnFull::Allow
        );
        let err = parse(r#", "on_full": "open""#).unwrap_err().to_string();
        assert!(err.contains("on_full"), "{err}");
    }

    #[test]
    fn ipv6_clients_are_their_64_unless_configured() {
        assert_eq!(parse("").unwrap().ipv6_prefix_length, 64);
        assert_eq!(
            parse(r#", "ipv6_prefix_length": 128"#)
                .unwrap()
                .ipv6_prefix_length,
            128
        );
        for bad in ["0", "129"] {
            let err = parse(&format!(r#", "ipv6_prefix_length": {bad}"#))
                .unwrap_err()
                .to_string();
            assert!(err.contains("ipv6_prefix_length"), "{bad}: {err}");
        }
    }
}
