//! Claim rules: what a route demands of a verified identity's claims beyond its
//! scopes (the job of Kong's `acl` groups and Istio's `request.auth.claims[...]`
//! conditions), the same for a JWT's payload, an introspection answer or an oidc
//! session's ID token.
//!
//! As written in a configuration, a rule is one of:
//!
//! - a condition on one claim: `{claim: groups, contains: admin}`, with exactly one of
//!   `equals` (the claim is this JSON value), `one_of` (it is one of these values),
//!   `contains` (it is an array holding this value, or a string of space-separated
//!   words holding it, as `scope` is written) or `present` (true: it is there; false:
//!   it is not);
//! - `{all: [rules]}`, `{any: [rules]}` or `{none: [rules]}`.
//!
//! A claim name is looked up as it is first (names such as
//! `https://example.com/roles` hold dots), then as a path through nested objects:
//! `org.tier` is `{"org": {"tier": ...}}`. A claim that is not there satisfies only
//! `present: false`.

use serde::Deserialize;
use serde_json::{Map, Value};

/// How deep `all`/`any`/`none` may nest.
pub const MAX_DEPTH: usize = 8;

/// A rule as a configuration writes it (checked by [`ClaimRule::compile`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRuleConfig {
    #[serde(default)]
    pub claim: Option<String>,
    #[serde(default, deserialize_with = "given")]
    pub equals: Option<Value>,
    #[serde(default)]
    pub one_of: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "given")]
    pub contains: Option<Value>,
    #[serde(default)]
    pub present: Option<bool>,
    #[serde(default)]
    pub all: Option<Vec<ClaimRuleConfig>>,
    #[serde(default)]
    pub any: Option<Vec<ClaimRuleConfig>>,
    #[serde(default)]
    pub none: Option<Vec<ClaimRuleConfig>>,
}

/// A field that is there, `null` included (serde would read `null` as absent).
fn given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Where a claim is: its name as written, and the same split at dots.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimPath {
    name: String,
    parts: Vec<String>,
}

impl ClaimPath {
    pub fn new(name: &str) -> ClaimPath {
        ClaimPath {
            name: name.to_owned(),
            parts: name.split('.').map(str::to_owned).collect(),
        }
    }

    /// The claim's value in `claims`, if there is one.
    pub fn find<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        if let Some(v) = claims.get(&self.name) {
            return Some(v);
        }
        if self.parts.len() < 2 {
            return None;
        }
        let (first, rest) = self.parts.split_first()?;
        let mut at = claims.get(first)?;
        for part in rest {
            at = at.as_object()?.get(part)?;
        }
        Some(at)
    }
}

/// A rule written wrong: where in it (`[1].any[0]`, empty for the rule itself) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub at: String,
    pub reason: String,
}

impl RuleError {
    fn new(reason: impl Into<String>) -> RuleError {
        RuleError {
            at: String::new(),
            reason: reason.into(),
        }
    }

    fn within(mut self, place: String) -> RuleError {
        self.at = format!("{place}{}", self.at);
        self
    }
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.at.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.at, self.reason)
        }
    }
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimRule {
    Equals(ClaimPath, Value),
    OneOf(ClaimPath, Vec<Value>),
    Contains(ClaimPath, Value),
    Present(ClaimPath, bool),
    All(Vec<ClaimRule>),
    Any(Vec<ClaimRule>),
    None(Vec<ClaimRule>),
}

impl ClaimRule {
    /// Checks a rule as written; the error says where in it and what is wrong.
    pub fn compile(c: &ClaimRuleConfig) -> Result<ClaimRule, RuleError> {
        compile(c, 0)
    }

    /// A list of rules that must all hold (`None` for an empty list).
    pub fn compile_all(list: &[ClaimRuleConfig]) -> Result<Option<ClaimRule>, RuleError> {
        if list.is_empty() {
            return Ok(None);
        }
        let rules = list
            .iter()
            .enumerate()
            .map(|(i, c)| compile(c, 1).map_err(|e| e.within(format!("[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(ClaimRule::All(rules)))
    }

    /// Whether `claims` satisfy the rule.
    pub fn holds(&self, claims: &Map<String, Value>) -> bool {
        match self {
            ClaimRule::Equals(p, v) => p.find(claims) == Some(v),
            ClaimRule::OneOf(p, vs) => p.find(claims).is_some_and(|c| vs.contains(c)),
            ClaimRule::Contains(p, v) => match p.find(claims) {
                Some(Value::Array(items)) => items.contains(v),
                Some(Value::String(words)) => {
                    v.as_str().is_some_and(|w| words.split(' ').any(|x| x == w))
                }
                _ => false,
            },
            ClaimRule::Present(p, want) => p.find(claims).is_some() == *want,
            ClaimRule::All(rules) => rules.iter().all(|r| r.holds(claims)),
            ClaimRule::Any(rules) => rules.iter().any(|r| r.holds(claims)),
            ClaimRule::None(rules) => !rules.iter().any(|r| r.holds(claims)),
        }
    }
}

fn compile(c: &ClaimRuleConfig, depth: usize) -> Result<ClaimRule, RuleError> {
    compile_here(c, depth).map_err(|e| match e {
        Here::Reason(r) => RuleError::new(r),
        Here::Nested(e) => e,
    })
}

/// A rule's own problem, or one found inside it (already placed).
enum Here {
    Reason(String),
    Nested(RuleError),
}

impl From<String> for Here {
    fn from(s: String) -> Here {
        Here::Reason(s)
    }
}

impl From<&str> for Here {
    fn from(s: &str) -> Here {
        Here::Reason(s.to_owned())
    }
}

fn compile_here(c: &ClaimRuleConfig, depth: usize) -> Result<ClaimRule, Here> {
    if depth > MAX_DEPTH {
        return Err(format!("rules nest deeper than {MAX_DEPTH}").into());
    }
    let conditions = [
        c.equals.is_some(),
        c.one_of.is_some(),
        c.contains.is_some(),
        c.present.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    let groups = [c.all.is_some(), c.any.is_some(), c.none.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    let nested = |list: &Vec<ClaimRuleConfig>, key: &str| -> Result<Vec<ClaimRule>, Here> {
        if list.is_empty() {
            return Err(format!("`{key}` needs at least one rule").into());
        }
        list.iter()
            .enumerate()
            .map(|(i, r)| {
                compile(r, depth + 1).map_err(|e| Here::Nested(e.within(format!(".{key}[{i}]"))))
            })
            .collect()
    };
    match (&c.claim, conditions, groups) {
        (None, 0, 1) => {
            if let Some(list) = &c.all {
                return Ok(ClaimRule::All(nested(list, "all")?));
            }
            if let Some(list) = &c.any {
                return Ok(ClaimRule::Any(nested(list, "any")?));
            }
            match &c.none {
                Some(list) => Ok(ClaimRule::None(nested(list, "none")?)),
                None => Err("a rule needs `all`, `any` or `none`".into()),
            }
        }
        (Some(name), 1, 0) => {
            if name.is_empty() || name.split('.').any(str::is_empty) {
                return Err(format!("`claim: {name}` is not a claim name or path").into());
            }
            let p = ClaimPath::new(name);
            if let Some(v) = &c.equals {
                return Ok(ClaimRule::Equals(p, v.clone()));
            }
            if let Some(vs) = &c.one_of {
                if vs.is_empty() {
                    return Err("`one_of` needs at least one value".into());
                }
                return Ok(ClaimRule::OneOf(p, vs.clone()));
            }
            if let Some(v) = &c.contains {
                if v.is_array() || v.is_object() {
                    return Err("`contains` takes one value (use `any` for several)".into());
                }
                return Ok(ClaimRule::Contains(p, v.clone()));
            }
            Ok(ClaimRule::Present(p, c.present.unwrap_or(true)))
        }
        (Some(_), 0, _) => {
            Err("a `claim` needs one of `equals`, `one_of`, `contains`, `present`".into())
        }
        (Some(_), _, _) => Err(
            "a rule on a `claim` takes exactly one of `equals`, `one_of`, `contains`, `present`, and no `all`/`any`/`none`"
                .into(),
        ),
        (None, 0, 0) => Err(
            "a rule needs a `claim` (with `equals`, `one_of`, `contains` or `present`), or `all`, `any` or `none`"
                .into(),
        ),
        (None, _, _) => Err(
            "`equals`, `one_of`, `contains` and `present` need a `claim`; `all`, `any` and `none` go one to a rule"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn rule(v: Value) -> Result<ClaimRule, String> {
        let c: ClaimRuleConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
        ClaimRule::compile(&c).map_err(|e| e.to_string())
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn each_condition_means_what_it_says() {
        let c = claims(json!({
            "sub": "alice",
            "groups": ["staff", "admin"],
            "scope": "orders:read orders:write",
            "org": {"tier": "premium", "id": 7},
            "https://example.com/roles": ["editor"],
            "email_verified": true,
        }));
        let holds = |v: Value| rule(v).unwrap().holds(&c);
        assert!(holds(json!({"claim": "sub", "equals": "alice"})));
        assert!(!holds(json!({"claim": "sub", "equals": "bob"})));
        assert!(holds(json!({"claim": "email_verified", "equals": true})));
        assert!(holds(
            json!({"claim": "org.tier", "one_of": ["standard", "premium"]})
        ));
        assert!(holds(json!({"claim": "org.id", "equals": 7})));
        assert!(!holds(json!({"claim": "org.tier", "one_of": ["free"]})));
        assert!(holds(json!({"claim": "groups", "contains": "admin"})));
        assert!(!holds(json!({"claim": "groups", "contains": "adm"})));
        assert!(holds(json!({"claim": "scope", "contains": "orders:write"})));
        assert!(!holds(json!({"claim": "scope", "contains": "orders"})));
        assert!(holds(
            json!({"claim": "https://example.com/roles", "contains": "editor"})
        ));
        assert!(holds(json!({"claim": "org", "present": true})));
        assert!(holds(json!({"claim": "banned", "present": false})));
        // An array is not equal to one of its elements.
        assert!(!holds(json!({"claim": "groups", "equals": "admin"})));
        // A missing claim fails every condition but `present: false`.
        for cond in [
            json!({"claim": "nope", "equals": null}),
            json!({"claim": "nope", "one_of": [null]}),
            json!({"claim": "nope", "contains": "x"}),
            json!({"claim": "org.nope.deeper", "present": true}),
            json!({"claim": "sub.x", "present": true}),
        ] {
            assert!(!holds(cond.clone()), "{cond}");
        }
        assert!(holds(json!({"all": [
            {"claim": "groups", "contains": "staff"},
            {"any": [{"claim": "org.tier", "equals": "free"}, {"claim": "groups", "contains": "admin"}]},
            {"none": [{"claim": "groups", "contains": "suspended"}]},
        ]})));
        assert!(!holds(
            json!({"none": [{"claim": "groups", "contains": "admin"}]})
        ));
    }

    #[test]
    fn a_rule_written_wrong_is_refused_with_the_reason() {
        for (v, says) in [
            (json!({}), "needs a `claim`"),
            (json!({"claim": "a"}), "needs one of"),
            (
                json!({"claim": "a", "equals": 1, "contains": 1}),
                "exactly one",
            ),
            (
                json!({"claim": "a", "equals": 1, "all": [{"claim": "b", "present": true}]}),
                "exactly one",
            ),
            (json!({"equals": 1}), "need a `claim`"),
            (json!({"all": [], }), "at least one rule"),
            (json!({"any": [{"claim": "a"}]}), ".any[0]: a `claim` needs"),
            (
                json!({"claim": "a..b", "present": true}),
                "not a claim name",
            ),
            (json!({"claim": "a", "contains": ["x"]}), "takes one value"),
            (json!({"claim": "a", "one_of": []}), "at least one value"),
            (
                json!({"all": [{"claim": "a", "present": true}], "any": [{"claim": "a", "present": true}]}),
                "one to a rule",
            ),
        ] {
            let e = rule(v.clone()).unwrap_err();
            assert!(e.contains(says), "{v}: {e}");
        }
        assert!(
            rule(json!({"claim": "a", "present": true, "typo": 1}))
                .unwrap_err()
                .contains("unknown field")
        );
        let mut deep = json!({"claim": "a", "present": true});
        for _ in 0..=MAX_DEPTH {
            deep = json!({"all": [deep]});
        }
        assert!(rule(deep).unwrap_err().contains("deeper"));
        // A list places the error by index and path.
        let list: Vec<ClaimRuleConfig> = serde_json::from_value(json!([
            {"claim": "a", "present": true},
            {"all": [{"claim": "b", "present": true}, {"any": [{"claim": "c"}]}]},
        ]))
        .unwrap();
        let e = ClaimRule::compile_all(&list).unwrap_err();
        assert_eq!(e.at, "[1].all[1].any[0]");
        assert!(e.reason.contains("needs one of"), "{e}");
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::from),
            (-5i64..5).prop_map(Value::from),
            "[a-c ]{0,4}".prop_map(Value::from),
        ]
    }

    fn claim_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            scalar(),
            prop::collection::vec(scalar(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-c]", scalar(), 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    }

    proptest! {
        /// `any` of rules is the negation of `none` of them, `all` of one rule is the
        /// rule, and no claims (nor any shape of value) makes evaluation panic.
        #[test]
        fn combinators_agree_and_never_panic(
            claims in prop::collection::btree_map("[a-c](\\.[a-c])?", claim_value(), 0..4),
            name in "[a-c](\\.[a-c])?",
            value in scalar(),
        ) {
            let claims: Map<String, Value> = claims.into_iter().collect();
            let leaves = [
                ClaimRule::Equals(ClaimPath::new(&name), value.clone()),
                ClaimRule::OneOf(ClaimPath::new(&name), vec![value.clone()]),
                ClaimRule::Contains(ClaimPath::new(&name), value.clone()),
                ClaimRule::Present(ClaimPath::new(&name), true),
            ];
            for leaf in &leaves {
                let one = leaf.holds(&claims);
                prop_assert_eq!(ClaimRule::All(vec![leaf.clone()]).holds(&claims), one);
                prop_assert_eq!(ClaimRule::Any(vec![leaf.clone()]).holds(&claims), one);
                prop_assert_eq!(ClaimRule::None(vec![leaf.clone()]).holds(&claims), !one);
            }
            let any = ClaimRule::Any(leaves.to_vec()).holds(&claims);
            prop_assert_eq!(ClaimRule::None(leaves.to_vec()).holds(&claims), !any);
            // `equals` and `one_of` with that one value agree.
            prop_assert_eq!(leaves[0].holds(&claims), leaves[1].holds(&claims));
            // What `equals` accepts is there.
            if leaves[0].holds(&claims) {
                prop_assert!(leaves[3].holds(&claims));
            }
        }
    }
}
