//! Limits for descriptors that arrive without one: the rule files of
//! envoyproxy/ratelimit (`domain`, nested `descriptors` of `key`, optional `value`,
//! `rate_limit: { unit, requests_per_unit }`), so a client such as Envoy's native
//! `envoy.filters.http.ratelimit`, which sends only entries, gets the same service.
//! Our own addition: `burst`, a bucket capacity above the limit.
//!
//! ```yaml
//! domain: portcullis
//! descriptors:
//!   - key: tier
//!     value: free
//!     descriptors:
//!       - key: identity
//!         rate_limit: { unit: second, requests_per_unit: 5 }
//! ```
//!
//! A descriptor's entries are matched in order, level by level: an entry matches a
//! rule with the same key and value, else one with the same key and no value. The
//! limit is that of the rule the last entry matched; no match means no limit.

use std::collections::HashMap;

use portcullis_rls::{Entry, Unit};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub unit: Unit,
    pub requests_per_unit: u32,
    /// The bucket's capacity: `burst` when above the limit, else the limit.
    pub capacity: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    domain: String,
    #[serde(default)]
    descriptors: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    key: String,
    value: Option<String>,
    rate_limit: Option<LimitSpec>,
    #[serde(default)]
    descriptors: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    unit: String,
    requests_per_unit: u32,
    burst: Option<u32>,
}

#[derive(Debug, Default)]
struct Node {
    limit: Option<Limit>,
    /// (key, Some(value)) for exact rules, (key, None) for any value.
    children: HashMap<(String, Option<String>), Node>,
}

/// The rules of every domain.
#[derive(Debug, Default)]
pub struct Rules {
    domains: HashMap<String, Node>,
}

pub fn unit_named(name: &str) -> Option<Unit> {
    match name.to_ascii_lowercase().as_str() {
        "second" => Some(Unit::Second),
        "minute" => Some(Unit::Minute),
        "hour" => Some(Unit::Hour),
        "day" => Some(Unit::Day),
        _ => None,
    }
}

fn build(specs: Vec<RuleSpec>, at: &str, node: &mut Node) -> Result<(), String> {
    for s in specs {
        let here = match &s.value {
            Some(v) => format!("{at}/{}={v}", s.key),
            None => format!("{at}/{}", s.key),
        };
        if s.key.is_empty() {
            return Err(format!("{here}: `key` is empty"));
        }
        let limit = match s.rate_limit {
            None => None,
            Some(l) => {
                let unit = unit_named(&l.unit).ok_or_else(|| {
                    format!(
                        "{here}: unit `{}` is not one of second, minute, hour, day",
                        l.unit
                    )
                })?;
                let capacity = l.burst.unwrap_or(l.requests_per_unit);
                if capacity < l.requests_per_unit {
                    return Err(format!(
                        "{here}: burst {capacity} is below requests_per_unit {}",
                        l.requests_per_unit
                    ));
                }
                Some(Limit {
                    unit,
                    requests_per_unit: l.requests_per_unit,
                    capacity,
                })
            }
        };
        let key = (s.key, s.value);
        if node.children.contains_key(&key) {
            return Err(format!("{here}: defined twice"));
        }
        let mut child = Node {
            limit,
            children: HashMap::new(),
        };
        build(s.descriptors, &here, &mut child)?;
        node.children.insert(key, child);
    }
    Ok(())
}

impl Rules {
    /// Adds one rule file (YAML); an error names the file's place that is wrong.
    pub fn add_yaml(&mut self, text: &str) -> Result<(), String> {
        let f: File = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        if f.domain.is_empty() {
            return Err("`domain` is empty".into());
        }
        if self.domains.contains_key(&f.domain) {
            return Err(format!("domain `{}` is defined twice", f.domain));
        }
        let mut root = Node::default();
        build(f.descriptors, &f.domain, &mut root)?;
        self.domains.insert(f.domain, root);
        Ok(())
    }

    /// The limit for a descriptor's entries in `domain`, if a rule gives one.
    pub fn limit(&self, domain: &str, entries: &[Entry]) -> Option<Limit> {
        let mut node = self.domains.get(domain)?;
        for e in entries {
            let exact = (e.key.clone(), Some(e.value.clone()));
            node = node
                .children
                .get(&exact)
                .or_else(|| node.children.get(&(e.key.clone(), None)))?;
        }
        node.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> Vec<Entry> {
        pairs
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect()
    }

    const FILE: &str = r#"
domain: portcullis
descriptors:
  - key: tier
    value: free
    descriptors:
      - key: identity
        rate_limit: { unit: second, requests_per_unit: 5 }
  - key: tier
    descriptors:
      - key: identity
        rate_limit: { unit: minute, requests_per_unit: 100, burst: 150 }
  - key: tier
    value: premium
    rate_limit: { unit: hour, requests_per_unit: 360000 }
"#;

    #[test]
    fn exact_values_win_over_any_value_and_the_last_entry_decides() {
        let mut r = Rules::default();
        r.add_yaml(FILE).unwrap();
        let free = r.limit(
            "portcullis",
            &entries(&[("tier", "free"), ("identity", "ada")]),
        );
        assert_eq!(
            free,
            Some(Limit {
                unit: Unit::Second,
                requests_per_unit: 5,
                capacity: 5
            })
        );
        let other = r
            .limit(
                "portcullis",
                &entries(&[("tier", "gold"), ("identity", "ada")]),
            )
            .unwrap();
        assert_eq!((other.unit, other.capacity), (Unit::Minute, 150));
        let premium = r.limit("portcullis", &entries(&[("tier", "premium")]));
        assert_eq!(premium.map(|l| l.unit), Some(Unit::Hour));
        // A descriptor that stops above a rule with a limit, goes past the rules, or
        // names another domain has none.
        assert_eq!(r.limit("portcullis", &entries(&[("tier", "free")])), None);
        assert_eq!(
            r.limit(
                "portcullis",
                &entries(&[("tier", "free"), ("identity", "a"), ("x", "y")])
            ),
            None
        );
        assert_eq!(r.limit("other", &entries(&[("tier", "free")])), None);
    }

    #[test]
    fn the_shipped_example_rules_load() {
        let text = include_str!("../../../examples/ratelimit/rules.yaml");
        let mut r = Rules::default();
        r.add_yaml(text).unwrap();
        let l = r
            .limit(
                "envoy-native",
                &entries(&[("tier", "premium"), ("identity", "k")]),
            )
            .unwrap();
        assert_eq!((l.requests_per_unit, l.capacity), (100, 200));
    }

    #[test]
    fn bad_files_are_refused_naming_the_place() {
        let cases = [
            (
                "domain: d\ndescriptors: [{key: k, rate_limit: {unit: week, requests_per_unit: 1}}]",
                "d/k: unit `week`",
            ),
            (
                "domain: d\ndescriptors: [{key: k, value: v, rate_limit: {unit: second, requests_per_unit: 5, burst: 2}}]",
                "d/k=v: burst 2",
            ),
            (
                "domain: d\ndescriptors: [{key: k}, {key: k}]",
                "d/k: defined twice",
            ),
            ("domain: ''", "`domain` is empty"),
            ("domain: d\nextra: 1", "unknown field"),
        ];
        for (text, want) in cases {
            let err = Rules::default().add_yaml(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        let mut r = Rules::default();
        r.add_yaml("domain: d").unwrap();
        assert!(r.add_yaml("domain: d").unwrap_err().contains("twice"));
    }
}
