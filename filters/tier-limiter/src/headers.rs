//! What a client is told about its limits: Kong's headers (`X-RateLimit-Limit-Second`,
//! `X-RateLimit-Remaining-Second`, ..., `RateLimit-Limit`, `RateLimit-Remaining`,
//! `RateLimit-Reset`) and the IETF draft's structured `RateLimit-Policy` and
//! `RateLimit` fields, one named policy per tier and window.

use crate::bucket::{Decision, reset_seconds};
use crate::config::{Config, Plan};

pub fn for_decision(config: &Config, plan: &Plan, d: &Decision) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if config.legacy_headers {
        for (l, t) in plan.limits.iter().zip(&d.remaining) {
            out.push((
                format!("x-ratelimit-limit-{}", l.window.name()),
                format!("{}", l.limit as u64),
            ));
            out.push((
                format!("x-ratelimit-remaining-{}", l.window.name()),
                format!("{}", t.max(0.0).floor() as u64),
            ));
        }
        // The most constrained window, as Kong reports it.
        if let Some((l, t)) = plan
            .limits
            .iter()
            .zip(&d.remaining)
            .min_by(|a, b| (a.1 / a.0.capacity).total_cmp(&(b.1 / b.0.capacity)))
        {
            out.push(("ratelimit-limit".into(), format!("{}", l.limit as u64)));
            out.push((
                "ratelimit-remaining".into(),
                format!("{}", t.max(0.0).floor() as u64),
            ));
            out.push((
                "ratelimit-reset".into(),
                format!("{}", reset_seconds(l, *t)),
            ));
        }
    }
    if config.ietf_headers {
        let policy: Vec<String> = plan
            .limits
            .iter()
            .map(|l| {
                format!(
                    "\"{}-{}\";q={};w={}",
                    plan.name,
                    l.window.name(),
                    l.limit as u64,
                    l.window.seconds()
                )
            })
            .collect();
        let state: Vec<String> = plan
            .limits
            .iter()
            .zip(&d.remaining)
            .map(|(l, t)| {
                format!(
                    "\"{}-{}\";r={};t={}",
                    plan.name,
                    l.window.name(),
                    t.max(0.0).floor() as u64,
                    reset_seconds(l, *t)
                )
            })
            .collect();
        out.push(("ratelimit-policy".into(), policy.join(", ")));
        out.push(("ratelimit".into(), state.join(", ")));
    }
    out
}
