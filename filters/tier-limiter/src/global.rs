//! The global policy's side of Envoy's rate-limit protocol: a plan becomes one
//! descriptor per window (tier, identity, window, with the limit as an override, so
//! the service needs no configuration of its own), and the service's answer becomes
//! the same decision the local policy makes.

use portcullis_rls::{
    Code, Entry, RateLimitDescriptor, RateLimitOverride, RateLimitRequest, RateLimitResponse, Unit,
};
use prost::Message;

use crate::bucket::Decision;
use crate::config::{Plan, Window};

fn unit(w: Window) -> Unit {
    match w {
        Window::Second => Unit::Second,
        Window::Minute => Unit::Minute,
        Window::Hour => Unit::Hour,
        Window::Day => Unit::Day,
    }
}

/// The `ShouldRateLimit` request for one hit of `identity` under `plan`. A burst
/// capacity above the limit travels as a `burst` entry (a service that does not know
/// it counts the plain limit).
pub fn request(domain: &str, plan: &Plan, identity: &str) -> Vec<u8> {
    let descriptors = plan
        .limits
        .iter()
        .map(|l| {
            let mut entries = vec![
                Entry {
                    key: "tier".into(),
                    value: plan.name.clone(),
                },
                Entry {
                    key: "identity".into(),
                    value: identity.to_owned(),
                },
                Entry {
                    key: "window".into(),
                    value: l.window.name().into(),
                },
            ];
            if l.capacity > l.limit {
                entries.push(Entry {
                    key: "burst".into(),
                    value: format!("{}", l.capacity as u64),
                });
            }
            RateLimitDescriptor {
                entries,
                limit: Some(RateLimitOverride {
                    requests_per_unit: l.limit.ceil() as u32,
                    unit: unit(l.window) as i32,
                }),
            }
        })
        .collect();
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: 1,
    }
    .encode_to_vec()
}

/// The decision from the service's answer; `None` for an answer that is not one.
pub fn decision(plan: &Plan, answer: &[u8]) -> Option<Decision> {
    let r = RateLimitResponse::decode(answer).ok()?;
    let allowed = match Code::try_from(r.overall_code).ok()? {
        Code::Ok => true,
        Code::OverLimit => false,
        Code::Unknown => return None,
    };
    let remaining = plan
        .limits
        .iter()
        .enumerate()
        .map(|(i, _)| {
            r.statuses
                .get(i)
                .map_or(0.0, |s| f64::from(s.limit_remaining))
        })
        .collect();
    let retry_after = if allowed {
        0
    } else {
        r.statuses
            .iter()
            .filter(|s| s.code == Code::OverLimit as i32)
            .filter_map(|s| s.duration_until_reset.as_ref())
            .map(|d| (d.seconds.max(0) as u64) + u64::from(d.nanos > 0))
            .max()
            .unwrap_or(1)
            .max(1)
    };
    Some(Decision {
        allowed,
        remaining,
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limit;
    use portcullis_rls::{DescriptorStatus, Duration};

    fn plan() -> Plan {
        Plan {
            name: "premium".into(),
            limits: vec![
                Limit {
                    window: Window::Second,
                    limit: 100.0,
                    capacity: 200.0,
                },
                Limit {
                    window: Window::Hour,
                    limit: 360000.0,
                    capacity: 360000.0,
                },
            ],
        }
    }

    #[test]
    fn one_descriptor_per_window_with_the_limit_as_override() {
        let r =
            RateLimitRequest::decode(&request("portcullis", &plan(), "consumer:ada")[..]).unwrap();
        assert_eq!(r.domain, "portcullis");
        assert_eq!(r.hits_addend, 1);
        assert_eq!(r.descriptors.len(), 2);
        let d = &r.descriptors[0];
        assert_eq!(
            d.entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("tier", "premium"),
                ("identity", "consumer:ada"),
                ("window", "second"),
                ("burst", "200")
            ]
        );
        assert_eq!(
            d.limit,
            Some(RateLimitOverride {
                requests_per_unit: 100,
                unit: Unit::Second as i32
            })
        );
        assert_eq!(
            r.descriptors[1].limit.as_ref().unwrap().unit,
            Unit::Hour as i32
        );
    }

    #[test]
    fn answers_become_decisions() {
        let over = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![
                DescriptorStatus {
                    code: Code::OverLimit as i32,
                    current_limit: None,
                    limit_remaining: 0,
                    duration_until_reset: Some(Duration {
                        seconds: 2,
                        nanos: 5,
                    }),
                },
                DescriptorStatus {
                    code: Code::Ok as i32,
                    current_limit: None,
                    limit_remaining: 99,
                    duration_until_reset: None,
                },
            ],
        };
        let d = decision(&plan(), &over.encode_to_vec()).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after, 3);
        assert_eq!(d.remaining, vec![0.0, 99.0]);
        let ok = RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![],
        };
        assert!(decision(&plan(), &ok.encode_to_vec()).unwrap().allowed);
        assert_eq!(decision(&plan(), b"\xff\xff\xff"), None);
        assert_eq!(
            decision(
                &plan(),
                &RateLimitResponse {
                    overall_code: 0,
                    statuses: vec![]
                }
                .encode_to_vec()
            ),
            None
        );
    }
}
