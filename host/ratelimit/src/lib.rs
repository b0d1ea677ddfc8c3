//! `portcullis ratelimit-service`: Envoy's rate-limit service protocol
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, unary gRPC on
//! cleartext HTTP/2) on Redis: one Redis, a Redis Cluster, or the master a set of
//! Sentinels names ([`Topology`]). Each descriptor is one token bucket in Redis, and
//! one request's buckets are checked and taken in one atomic script (one round trip):
//! every bucket gives a token or none does, as in the tier-limiter's local policy. On
//! a cluster a script runs in one hash slot: the buckets of one consumer share one
//! ([`hash_tag`]); buckets of one request in several slots are taken slot by slot and
//! given back when one refuses.
//!
//! The limit of a descriptor is its `limit` override when the client sends one (the
//! tier-limiter does, so the service needs no configuration for it), else the rule
//! files (see [`rules`]); a `burst` entry raises the bucket's capacity above the
//! limit. A descriptor with no limit is not limited. When Redis cannot answer within
//! the configured time the call fails with UNAVAILABLE, and the client's failure
//! mode decides.
#![forbid(unsafe_code)]

pub mod grpc;
pub mod rules;
pub mod store;

use std::time::Duration;

use portcullis_rls::{
    Code, DescriptorStatus, Duration as PbDuration, Entry, RateLimit, RateLimitRequest,
    RateLimitResponse, Unit,
};

pub use rules::{Limit, Rules};
pub use store::{Store, Topology};

/// Why a call fails: a gRPC status code and a message for the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: u32,
    pub message: String,
}

impl Failure {
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;

    pub fn new(code: u32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// At most this many descriptors in one request (each is a key in the script).
pub const MAX_DESCRIPTORS: usize = 64;

pub fn unit_seconds(unit: Unit) -> Option<f64> {
    match unit {
        Unit::Second => Some(1.0),
        Unit::Minute => Some(60.0),
        Unit::Hour => Some(3600.0),
        Unit::Day => Some(86400.0),
        Unit::Unknown => None,
    }
}

pub fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Second => "second",
        Unit::Minute => "minute",
        Unit::Hour => "hour",
        Unit::Day => "day",
        Unit::Unknown => "unknown",
    }
}

/// One descriptor's bucket, as the script gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub key: Vec<u8>,
    pub limit: Limit,
    /// Tokens per microsecond.
    pub rate: f64,
}

/// A bucket's state after a hit, as the script returns it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketState {
    pub remaining: u64,
    pub wait_us: u64,
    pub full_us: u64,
}

fn push_field(key: &mut Vec<u8>, s: &str) {
    // Length-prefixed, so no value can forge another descriptor's key.
    key.extend_from_slice(s.len().to_string().as_bytes());
    key.push(b':');
    key.extend_from_slice(s.as_bytes());
}

/// The hash tag of a descriptor's bucket, which decides its Redis Cluster slot: a
/// digest of the domain and the entries but the last (the only entry when there is
/// one). The descriptors of one request that differ only in their last entry (the
/// tier-limiter's windows of one consumer) share a slot, so one script takes from them
/// at once, and consumers spread over the masters. A digest in hex, so no value can
/// close the tag early (Redis hashes what lies between the first `{` and the next `}`).
pub fn hash_tag(domain: &str, entries: &[Entry]) -> String {
    let shared = match entries {
        [only] => std::slice::from_ref(only),
        [head @ .., _] => head,
        [] => &[],
    };
    let mut fields = Vec::new();
    push_field(&mut fields, domain);
    for e in shared {
        push_field(&mut fields, &e.key);
        push_field(&mut fields, &e.value);
    }
    // FNV-1a: stable across versions and builds, which the keys must be. Its only
    // job is spreading; the key that follows the tag keeps the descriptor whole.
    let hash = fields.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// The Redis key of a descriptor: the prefix, the hash tag in braces, then the domain,
/// its entries in order and the unit.
pub fn bucket_key(prefix: &str, domain: &str, entries: &[Entry], unit: Unit) -> Vec<u8> {
    let mut key = prefix.as_bytes().to_vec();
    key.push(b'{');
    key.extend_from_slice(hash_tag(domain, entries).as_bytes());
    key.push(b'}');
    push_field(&mut key, domain);
    for e in entries {
        push_field(&mut key, &e.key);
        push_field(&mut key, &e.value);
    }
    push_field(&mut key, unit_name(unit));
    key
}

/// The limit of one descriptor, and the entries that identify its bucket (without
/// the `burst` parameter).
fn descriptor_limit(
    rules: &Rules,
    domain: &str,
    index: usize,
    d: &portcullis_rls::RateLimitDescriptor,
) -> Result<(Vec<Entry>, Option<Limit>), Failure> {
    let mut burst = None;
    let mut entries = Vec::with_capacity(d.entries.len());
    for e in &d.entries {
        if e.key == "burst" {
            burst = Some(e.value.parse::<u32>().map_err(|_| {
                Failure::new(
                    Failure::INVALID_ARGUMENT,
                    format!(
                        "descriptor {index}: burst `{}` is not a whole number",
                        e.value
                    ),
                )
            })?);
        } else {
            entries.push(e.clone());
        }
    }
    if entries.is_empty() {
        return Err(Failure::new(
            Failure::INVALID_ARGUMENT,
            format!("descriptor {index} has no entries"),
        ));
    }
    let limit = match &d.limit {
        Some(o) => {
            let unit = Unit::try_from(o.unit)
                .ok()
                .filter(|u| *u != Unit::Unknown)
                .ok_or_else(|| {
                    Failure::new(
                        Failure::INVALID_ARGUMENT,
                        format!("descriptor {index}: limit unit {} is not known", o.unit),
                    )
                })?;
            Some(Limit {
                unit,
                requests_per_unit: o.requests_per_unit,
                capacity: o.requests_per_unit,
            })
        }
        None => rules.limit(domain, &entries),
    };
    let limit = limit.map(|mut l| {
        if let Some(b) = burst {
            l.capacity = l.capacity.max(b);
        }
        l
    });
    Ok((entries, limit))
}

/// Where a request's descriptors go: a bucket in Redis, always over the limit (a
/// limit of zero), or no limit.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Bucket(Bucket),
    Zero(Limit),
    Unlimited,
}

/// The plan of every descriptor of a request.
pub fn plan(rules: &Rules, prefix: &str, req: &RateLimitRequest) -> Result<Vec<Plan>, Failure> {
    if req.domain.is_empty() {
        return Err(Failure::new(Failure::INVALID_ARGUMENT, "domain is empty"));
    }
    if req.descriptors.is_empty() {
        return Err(Failure::new(Failure::INVALID_ARGUMENT, "no descriptors"));
    }
    if req.descriptors.len() > MAX_DESCRIPTORS {
        return Err(Failure::new(
            Failure::INVALID_ARGUMENT,
            format!(
                "{} descriptors, at most {MAX_DESCRIPTORS}",
                req.descriptors.len()
            ),
        ));
    }
    req.descriptors
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (entries, limit) = descriptor_limit(rules, &req.domain, i, d)?;
            Ok(match limit {
                None => Plan::Unlimited,
                Some(l) if l.requests_per_unit == 0 => Plan::Zero(l),
                Some(l) => {
                    let secs = unit_seconds(l.unit).unwrap_or(1.0);
                    Plan::Bucket(Bucket {
                        key: bucket_key(prefix, &req.domain, &entries, l.unit),
                        limit: l,
                        rate: f64::from(l.requests_per_unit) / (secs * 1e6),
                    })
                }
            })
        })
        .collect()
}

fn duration(us: u64) -> PbDuration {
    PbDuration {
        seconds: (us / 1_000_000) as i64,
        nanos: ((us % 1_000_000) * 1000) as i32,
    }
}

fn current(l: &Limit) -> RateLimit {
    RateLimit {
        requests_per_unit: l.requests_per_unit,
        unit: l.unit as i32,
        name: String::new(),
    }
}

/// The answer from the plans and the script's result for the buckets among them
/// (`states` in the order of the `Plan::Bucket`s; `allowed` as the script decided).
pub fn answer(plans: &[Plan], allowed: bool, states: &[BucketState]) -> RateLimitResponse {
    let mut states = states.iter();
    let mut over = !allowed;
    let statuses = plans
        .iter()
        .map(|p| match p {
            Plan::Unlimited => DescriptorStatus {
                code: Code::Ok as i32,
                current_limit: None,
                limit_remaining: 0,
                duration_until_reset: None,
            },
            Plan::Zero(l) => {
                over = true;
                DescriptorStatus {
                    code: Code::OverLimit as i32,
                    current_limit: Some(current(l)),
                    limit_remaining: 0,
                    duration_until_reset: Some(duration(
                        (unit_seconds(l.unit).unwrap_or(1.0) * 1e6) as u64,
                    )),
                }
            }
            Plan::Bucket(b) => {
                let s = states.next().copied().unwrap_or(BucketState {
                    remaining: 0,
                    wait_us: 0,
                    full_us: 0,
                });
                let short = s.wait_us > 0;
                DescriptorStatus {
                    code: if short { Code::OverLimit } else { Code::Ok } as i32,
                    current_limit: Some(current(&b.limit)),
                    limit_remaining: s.remaining.min(u64::from(u32::MAX)) as u32,
                    duration_until_reset: Some(duration(if short { s.wait_us } else { s.full_us })),
                }
            }
        })
        .collect();
    RateLimitResponse {
        overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
        statuses,
    }
}

/// The service: rules for descriptors without a limit, and the Redis store.
#[derive(Debug)]
pub struct Service {
    pub rules: Rules,
    pub store: Store,
    pub key_prefix: String,
}

impl Service {
    /// Decides one request: one script call for all its buckets.
    pub async fn should_rate_limit(
        &self,
        req: &RateLimitRequest,
    ) -> Result<RateLimitResponse, Failure> {
        let plans = plan(&self.rules, &self.key_prefix, req)?;
        // A limit of zero refuses without counting anything else.
        if plans.iter().any(|p| matches!(p, Plan::Zero(_))) {
            return Ok(answer(&plans, false, &[]));
        }
        let buckets: Vec<&Bucket> = plans
            .iter()
            .filter_map(|p| match p {
                Plan::Bucket(b) => Some(b),
                _ => None,
            })
            .collect();
        if buckets.is_empty() {
            return Ok(answer(&plans, true, &[]));
        }
        let hits = req.hits_addend.max(1);
        let (allowed, states) = self.store.take(&buckets, hits).await?;
        Ok(answer(&plans, allowed, &states))
    }
}

/// How long the service waits for Redis before answering UNAVAILABLE.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// What `portcullis ratelimit-service` is started with.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: String,
    pub redis: Topology,
    pub rules: Vec<std::path::PathBuf>,
    pub redis_timeout: Duration,
    pub key_prefix: String,
    pub threads: usize,
}

/// Loads the rule files; every error names its file.
pub fn load_rules(files: &[std::path::PathBuf]) -> Result<Rules, Vec<String>> {
    let mut rules = Rules::default();
    let mut errors = Vec::new();
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(text) => {
                if let Err(e) = rules.add_yaml(&text) {
                    errors.push(format!("{}: {e}", f.display()));
                }
            }
            Err(e) => errors.push(format!("{}: {e}", f.display())),
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

/// Runs the service until SIGTERM or SIGINT.
pub fn run(opts: Options) -> Result<(), Vec<String>> {
    let rules = load_rules(&opts.rules)?;
    if matches!(opts.redis, Topology::Cluster(_)) && opts.key_prefix.contains(['{', '}']) {
        // Redis would hash the prefix's braces instead of the bucket's tag.
        return Err(vec![format!(
            "--key-prefix `{}`: no braces with --redis-cluster (the service puts each bucket's hash tag in braces)",
            opts.key_prefix
        )]);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| vec![e.to_string()])?;
    rt.block_on(async move {
        let store = Store::connect(&opts.redis, opts.redis_timeout).map_err(|e| vec![e])?;
        let listener = tokio::net::TcpListener::bind(&opts.listen)
            .await
            .map_err(|e| vec![format!("cannot listen on {}: {e}", opts.listen)])?;
        let addr = listener.local_addr().map_err(|e| vec![e.to_string()])?;
        let service = std::sync::Arc::new(Service {
            rules,
            store,
            key_prefix: opts.key_prefix,
        });
        tracing::info!(%addr, redis = %opts.redis.describe(), "rate-limit service listening (gRPC h2c)");
        eprintln!("ratelimit-service listening on {addr}");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| vec![e.to_string()])?;
        tokio::select! {
            _ = grpc::serve(listener, service) => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_rls::{RateLimitDescriptor, RateLimitOverride};

    fn entry(k: &str, v: &str) -> Entry {
        Entry {
            key: k.into(),
            value: v.into(),
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "d".into(),
            descriptors,
            hits_addend: 0,
        }
    }

    fn with_limit(entries: Vec<Entry>, n: u32, unit: Unit) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries,
            limit: Some(RateLimitOverride {
                requests_per_unit: n,
                unit: unit as i32,
            }),
        }
    }

    #[test]
    fn keys_cannot_be_forged_by_values_with_separators() {
        let a = bucket_key("p:", "d", &[entry("a", "b1:c")], Unit::Second);
        let b = bucket_key("p:", "d", &[entry("a", "b"), entry("1", "c")], Unit::Second);
        assert_ne!(a, b);
        assert_ne!(
            bucket_key("p:", "d", &[entry("a", "b")], Unit::Second),
            bucket_key("p:", "d", &[entry("a", "b")], Unit::Minute)
        );
    }

    #[test]
    fn the_override_and_burst_make_the_bucket_and_burst_is_not_part_of_the_key() {
        let r = Rules::default();
        let plans = plan(
            &r,
            "p:",
            &request(vec![with_limit(
                vec![entry("tier", "premium"), entry("burst", "200")],
                100,
                Unit::Second,
            )]),
        )
        .unwrap();
        let Plan::Bucket(b) = &plans[0] else {
            panic!("{plans:?}")
        };
        assert_eq!(b.limit.capacity, 200);
        assert_eq!(b.limit.requests_per_unit, 100);
        assert!((b.rate - 100.0 / 1e6).abs() < 1e-12);
        assert_eq!(
            b.key,
            bucket_key("p:", "d", &[entry("tier", "premium")], Unit::Second)
        );
    }

    #[test]
    fn malformed_requests_are_invalid_arguments() {
        let r = Rules::default();
        let bad = [
            request(vec![]),
            request(vec![with_limit(vec![], 1, Unit::Second)]),
            request(vec![with_limit(vec![entry("k", "v")], 1, Unit::Unknown)]),
            request(vec![with_limit(
                vec![entry("k", "v"), entry("burst", "x")],
                1,
                Unit::Second,
            )]),
            request(vec![with_limit(vec![entry("k", "v")], 1, Unit::Second); 65]),
            RateLimitRequest {
                domain: String::new(),
                ..request(vec![with_limit(vec![entry("k", "v")], 1, Unit::Second)])
            },
        ];
        for req in bad {
            let e = plan(&r, "p:", &req).unwrap_err();
            assert_eq!(e.code, Failure::INVALID_ARGUMENT, "{req:?}");
        }
    }

    #[test]
    fn answers_mark_the_short_buckets_and_zero_limits() {
        let r = Rules::default();
        let plans = plan(
            &r,
            "p:",
            &request(vec![
                with_limit(vec![entry("w", "second")], 5, Unit::Second),
                RateLimitDescriptor {
                    entries: vec![entry("no", "rule")],
                    limit: None,
                },
                with_limit(vec![entry("w", "hour")], 100, Unit::Hour),
            ]),
        )
        .unwrap();
        assert_eq!(plans[1], Plan::Unlimited);
        let states = [
            BucketState {
                remaining: 0,
                wait_us: 150_000,
                full_us: 1_000_000,
            },
            BucketState {
                remaining: 40,
                wait_us: 0,
                full_us: 2_000_000,
            },
        ];
        let a = answer(&plans, false, &states);
        assert_eq!(a.overall_code, Code::OverLimit as i32);
        let codes: Vec<i32> = a.statuses.iter().map(|s| s.code).collect();
        assert_eq!(
            codes,
            vec![Code::OverLimit as i32, Code::Ok as i32, Code::Ok as i32]
        );
        assert_eq!(
            a.statuses[0].duration_until_reset,
            Some(PbDuration {
                seconds: 0,
                nanos: 150_000_000
            })
        );
        assert_eq!(a.statuses[2].limit_remaining, 40);

        let zero = plan(
            &r,
            "p:",
            &request(vec![with_limit(vec![entry("k", "v")], 0, Unit::Minute)]),
        )
        .unwrap();
        let a = answer(&zero, false, &[]);
        assert_eq!(a.overall_code, Code::OverLimit as i32);
        assert_eq!(
            a.statuses[0].duration_until_reset.as_ref().unwrap().seconds,
            60
        );
    }
}
