//! Token buckets: one per window of a plan, refilled continuously at limit / window.
//! A request takes one token from every bucket of its plan, or is refused and takes
//! none. Plain data in and out.

use crate::config::{Limit, Plan};

/// The buckets of one identity under one plan, at `last_ns`.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    pub last_ns: u64,
    pub tokens: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Tokens left in each bucket after the decision.
    pub remaining: Vec<f64>,
    /// Seconds until the request would fit (0 when allowed).
    pub retry_after: u64,
}

fn refill(l: &Limit, tokens: f64, elapsed_ns: u64) -> f64 {
    (tokens + elapsed_ns as f64 * l.rate_per_ns()).min(l.capacity)
}

/// The buckets at `now_ns`, from a stored state (or full, for none).
pub fn current(plan: &Plan, state: Option<&Buckets>, now_ns: u64) -> Vec<f64> {
    match state {
        Some(s) if s.tokens.len() == plan.limits.len() => {
            let elapsed = now_ns.saturating_sub(s.last_ns);
            plan.limits
                .iter()
                .zip(&s.tokens)
                .map(|(l, t)| refill(l, *t, elapsed))
                .collect()
        }
        _ => plan.limits.iter().map(|l| l.capacity).collect(),
    }
}

/// Takes one token from every bucket, or none.
pub fn take(plan: &Plan, state: Option<&Buckets>, now_ns: u64) -> (Buckets, Decision) {
    let mut tokens = current(plan, state, now_ns);
    let allowed = tokens.iter().all(|t| *t >= 1.0);
    let mut retry_after = 0u64;
    if allowed {
        for t in &mut tokens {
            *t -= 1.0;
        }
    } else {
        for (l, t) in plan.limits.iter().zip(&tokens) {
            if *t < 1.0 {
                let secs = (1.0 - t) / (l.rate_per_ns() * 1e9);
                retry_after = retry_after.max(secs.ceil().max(1.0) as u64);
            }
        }
    }
    (
        Buckets {
            last_ns: now_ns,
            tokens: tokens.clone(),
        },
        Decision {
            allowed,
            remaining: tokens,
            retry_after,
        },
    )
}

/// Whether stored buckets are as good as none: every one full again by `now_ns`.
pub fn idle(plan_limits: &[Limit], state: &Buckets, now_ns: u64) -> bool {
    let elapsed = now_ns.saturating_sub(state.last_ns);
    plan_limits
        .iter()
        .zip(&state.tokens)
        .all(|(l, t)| refill(l, *t, elapsed) >= l.capacity)
}

/// When (ns) every bucket of `state` is full again under `plan`, the plan that wrote
/// it: stored with the buckets, so that whoever meets them later judges them idle by
/// their owner's plan, never by its own (a requester with a short window would find
/// an hour's bucket "full again" after a second).
pub fn full_at(plan: &Plan, state: &Buckets) -> u64 {
    let wait = plan
        .limits
        .iter()
        .zip(&state.tokens)
        .map(|(l, t)| ((l.capacity - t).max(0.0) / l.rate_per_ns()).ceil())
        .fold(0.0, f64::max);
    // `as` saturates: a wait beyond u64 (or NaN from a broken rate) is "never" or "now";
    // the rate is positive by construction (config checks every limit).
    state.last_ns.saturating_add(wait as u64)
}

/// Seconds until a bucket is full again (the reset the headers report).
pub fn reset_seconds(l: &Limit, tokens: f64) -> u64 {
    ((l.capacity - tokens).max(0.0) / (l.rate_per_ns() * 1e9)).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Window;

    const S: u64 = 1_000_000_000;

    fn plan() -> Plan {
        Plan {
            name: "t".into(),
            limits: vec![
                Limit {
                    window: Window::Second,
                    limit: 5.0,
                    capacity: 10.0,
                },
                Limit {
                    window: Window::Hour,
                    limit: 100.0,
                    capacity: 100.0,
                },
            ],
        }
    }

    #[test]
    fn burst_then_steady_refill() {
        let p = plan();
        let mut state = None;
        let mut admitted = 0;
        for _ in 0..20 {
            let (s, d) = take(&p, state.as_ref(), 0);
            admitted += d.allowed as u32;
            state = Some(s);
        }
        assert_eq!(admitted, 10, "the burst capacity");
        // 1 s later: 5 more tokens in the second bucket.
        let mut later = 0;
        for _ in 0..20 {
            let (s, d) = take(&p, state.as_ref(), S);
            later += d.allowed as u32;
            state = Some(s);
        }
        assert_eq!(later, 5);
    }

    #[test]
    fn a_refused_request_takes_nothing_and_says_when_to_retry() {
        let p = plan();
        let full = Buckets {
            last_ns: 0,
            tokens: vec![0.2, 50.0],
        };
        let (s, d) = take(&p, Some(&full), 0);
        assert!(!d.allowed);
        assert_eq!(s.tokens, vec![0.2, 50.0]);
        assert_eq!(
            d.retry_after, 1,
            "0.8 tokens at 5/s: 0.16 s, rounded up to 1"
        );
        let hourly = Buckets {
            last_ns: 0,
            tokens: vec![10.0, 0.0],
        };
        let (_, d) = take(&p, Some(&hourly), 0);
        assert_eq!(d.retry_after, 36, "one token at 100/h");
    }

    #[test]
    fn every_window_must_fit() {
        let p = plan();
        let (_, d) = take(
            &p,
            Some(&Buckets {
                last_ns: 0,
                tokens: vec![10.0, 0.5],
            }),
            0,
        );
        assert!(!d.allowed);
    }

    #[test]
    fn full_at_is_when_the_slowest_window_is_full_again() {
        let p = plan();
        let s = Buckets {
            last_ns: 7 * S,
            tokens: vec![9.0, 99.0],
        };
        // One token short in each: 0.2 s at 5/s, 36 s at 100/h; the hour decides.
        assert_eq!(full_at(&p, &s), 43 * S);
        let full = Buckets {
            last_ns: 7 * S,
            tokens: vec![10.0, 100.0],
        };
        assert_eq!(full_at(&p, &full), 7 * S, "full already");
        assert!(idle(&p.limits, &s, full_at(&p, &s)));
        assert!(!idle(&p.limits, &s, full_at(&p, &s) - S));
    }

    #[test]
    fn idle_buckets_are_full_again() {
        let p = plan();
        let s = Buckets {
            last_ns: 0,
            tokens: vec![0.0, 0.0],
        };
        assert!(!idle(&p.limits, &s, 10 * S));
        assert!(idle(&p.limits, &s, 3600 * S));
    }
}
