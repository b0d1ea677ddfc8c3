//! What a client is told about its limits: Kong's headers (`X-RateLimit-Limit-Second`,
//! `X-RateLimit-Remaining-Second`, ..., `RateLimit-Limit`, `RateLimit-Remaining`,
//! `RateLimit-Reset`) and the IETF draft's structured `RateLimit-Policy` and
//! `RateLimit` fields, one named policy per tier and window.
//!
//! Written for every admitted request, so names are static and numbers are written
//! with `itoa` into one buffer per value (core::fmt was most of the filter's time).

use crate::bucket::{Decision, reset_seconds};
use crate::config::{Config, Plan, Window};

fn limit_name(w: Window) -> &'static str {
    match w {
        Window::Second => "x-ratelimit-limit-second",
        Window::Minute => "x-ratelimit-limit-minute",
        Window::Hour => "x-ratelimit-limit-hour",
        Window::Day => "x-ratelimit-limit-day",
    }
}

fn remaining_name(w: Window) -> &'static str {
    match w {
        Window::Second => "x-ratelimit-remaining-second",
        Window::Minute => "x-ratelimit-remaining-minute",
        Window::Hour => "x-ratelimit-remaining-hour",
        Window::Day => "x-ratelimit-remaining-day",
    }
}

fn number(n: u64) -> String {
    itoa::Buffer::new().format(n).to_owned()
}

fn push_number(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn left(tokens: f64) -> u64 {
    tokens.max(0.0).floor() as u64
}

/// `"tier-window"`, the IETF draft's policy name.
fn push_policy_name(out: &mut String, plan: &Plan, w: Window) {
    out.push('"');
    out.push_str(&plan.name);
    out.push('-');
    out.push_str(w.name());
    out.push('"');
}

pub fn for_decision(config: &Config, plan: &Plan, d: &Decision) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(2 * plan.limits.len() + 5);
    if config.legacy_headers {
        for (l, t) in plan.limits.iter().zip(&d.remaining) {
            out.push((limit_name(l.window), number(l.limit as u64)));
            out.push((remaining_name(l.window), number(left(*t))));
        }
        // The most constrained window, as Kong reports it.
        if let Some((l, t)) = plan
            .limits
            .iter()
            .zip(&d.remaining)
            .min_by(|a, b| (a.1 / a.0.capacity).total_cmp(&(b.1 / b.0.capacity)))
        {
            out.push(("ratelimit-limit", number(l.limit as u64)));
            out.push(("ratelimit-remaining", number(left(*t))));
            out.push(("ratelimit-reset", number(reset_seconds(l, *t))));
        }
    }
    if config.ietf_headers {
        let size = plan.limits.len() * (plan.name.len() + 32);
        let (mut policy, mut state) = (String::with_capacity(size), String::with_capacity(size));
        for (i, (l, t)) in plan.limits.iter().zip(&d.remaining).enumerate() {
            if i > 0 {
                policy.push_str(", ");
                state.push_str(", ");
            }
            push_policy_name(&mut policy, plan, l.window);
            policy.push_str(";q=");
            push_number(&mut policy, l.limit as u64);
            policy.push_str(";w=");
            push_number(&mut policy, l.window.seconds());
            push_policy_name(&mut state, plan, l.window);
            state.push_str(";r=");
            push_number(&mut state, left(*t));
            state.push_str(";t=");
            push_number(&mut state, reset_seconds(l, *t));
        }
        out.push(("ratelimit-policy", policy));
        out.push(("ratelimit", state));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limit;

    #[test]
    fn both_header_groups_name_every_window() {
        let config = Config::parse(Some(
            br#"{"tiers": {"gold": {"second": 10, "hour": 3600}}, "default_tier": "gold"}"#,
        ))
        .unwrap();
        let plan = Plan {
            name: "gold".into(),
            limits: vec![
                Limit {
                    window: Window::Second,
                    limit: 10.0,
                    capacity: 10.0,
                },
                Limit {
                    window: Window::Hour,
                    limit: 3600.0,
                    capacity: 3600.0,
                },
            ],
        };
        let d = Decision {
            allowed: true,
            remaining: vec![4.5, 3599.0],
            retry_after: 0,
        };
        let h = for_decision(&config, &plan, &d);
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("x-ratelimit-limit-second"), Some("10"));
        assert_eq!(get("x-ratelimit-remaining-second"), Some("4"));
        assert_eq!(get("x-ratelimit-remaining-hour"), Some("3599"));
        // The second window is the tighter one (45% left against 99.97%).
        assert_eq!(get("ratelimit-limit"), Some("10"));
        assert_eq!(get("ratelimit-remaining"), Some("4"));
        assert_eq!(get("ratelimit-reset"), Some("1"));
        assert_eq!(
            get("ratelimit-policy"),
            Some(r#""gold-second";q=10;w=1, "gold-hour";q=3600;w=3600"#)
        );
        assert_eq!(
            get("ratelimit"),
            Some(r#""gold-second";r=4;t=1, "gold-hour";r=3599;t=1"#)
        );
    }
}
