//! Kong's entities onto the gateway's configuration: services, routes, and each
//! route's plugins (Kong's precedence between scopes) as filter instances, in Kong's
//! plugin order (authentication, then limits, then transforms).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::Options;
use crate::input::{Consumer, Kong, Plugin, Route, Service};
use crate::report::Report;

/// Plugins with nothing of ours to map to, and the nearest thing we offer.
const NEAREST: [(&str, &str); 12] = [
    ("cors", "none in the gateway; Envoy's CORS filter in Envoy"),
    (
        "prometheus",
        "the admin endpoint's /metrics (Prometheus text)",
    ),
    (
        "correlation-id",
        "the gateway's x-request-id, kept from a client or made",
    ),
    ("ip-restriction", "none; Envoy's RBAC filter in Envoy"),
    ("proxy-cache", "none"),
    ("request-termination", "none"),
    ("bot-detection", "none"),
    (
        "file-log",
        "the gateway's access_log (one JSON line per request)",
    ),
    (
        "http-log",
        "the gateway's access_log (one JSON line per request)",
    ),
    ("basic-auth", "key-auth (API keys) or jwt-auth"),
    ("hmac-auth", "key-auth (API keys) or jwt-auth"),
    (
        "oauth2",
        "jwt-auth with an introspection provider, and oidc",
    ),
];

/// The plugins this importer maps, in Kong's execution order (PRIORITY, highest first).
const MAPPED: [&str; 11] = [
    "openid-connect",
    "jwt",
    "key-auth",
    "request-size-limiting",
    "acl",
    "rate-limiting",
    "rate-limiting-advanced",
    "request-transformer",
    "request-transformer-advanced",
    "response-transformer",
    "response-transformer-advanced",
];

/// Plugins that refuse requests, none of which is mapped here: a route one of them
/// guards is kept closed.
const GUARDS: [&str; 12] = [
    "basic-auth",
    "hmac-auth",
    "oauth2",
    "oauth2-introspection",
    "ldap-auth",
    "ldap-auth-advanced",
    "mtls-auth",
    "key-auth-enc",
    "vault-auth",
    "saml",
    "request-termination",
    "ip-restriction",
];

/// A key-auth configuration no request passes: a key header no client has a value
/// for (the digest of all zeros is no key's).
fn closed_route() -> Value {
    json!({"key_names": ["x-portcullis-closed-route"], "key_in_query": false,
        "realm": "closed", "consumers": [{"id": "none", "keys": [format!("sha256:{}", "0".repeat(64))]}]})
}

/// Consumers Kong stops on `route` with a plugin of their own (request-termination,
/// ip-restriction): their credentials are left out.
fn blocked_consumers(k: &Kong, route: &Route) -> Vec<String> {
    per_consumer(k, &["request-termination", "ip-restriction"], route)
        .iter()
        .filter_map(|p| p.scope.consumer.clone())
        .collect()
}

pub struct Mapped {
    pub config: Value,
}

/// The plugin of `name` that applies on `route` of `service` without a consumer
/// (Kong's precedence: route and service, route, service, global).
fn effective<'a>(k: &'a Kong, name: &str, route: &Route) -> Option<&'a Plugin> {
    let cands = k.plugins.iter().filter(|p| {
        p.name == name
            && p.enabled
            && p.scope.consumer.is_none()
            && p.scope.consumer_group.is_none()
            && p.scope.route.as_ref().is_none_or(|r| *r == route.name)
            && p.scope
                .service
                .as_ref()
                .is_none_or(|s| Some(s) == route.service.as_ref())
    });
    cands.max_by_key(|p| (p.scope.route.is_some(), p.scope.service.is_some()))
}

/// Plugins scoped to a consumer or a consumer group that apply on `route`.
fn per_consumer<'a>(k: &'a Kong, names: &[&str], route: &Route) -> Vec<&'a Plugin> {
    k.plugins
        .iter()
        .filter(|p| {
            names.contains(&p.name.as_str())
                && p.enabled
                && (p.scope.consumer.is_some() || p.scope.consumer_group.is_some())
                && p.scope.route.as_ref().is_none_or(|r| *r == route.name)
                && p.scope
                    .service
                    .as_ref()
                    .is_none_or(|s| Some(s) == route.service.as_ref())
        })
        .collect()
}

fn str_list(c: &Map<String, Value>, k: &str, default: &[&str]) -> Vec<String> {
    match c.get(k) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        Some(Value::Null) | None => default.iter().map(|s| s.to_string()).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(_) => Vec::new(),
    }
}

fn flag(c: &Map<String, Value>, k: &str, default: bool) -> bool {
    c.get(k).and_then(Value::as_bool).unwrap_or(default)
}

fn number(c: &Map<String, Value>, k: &str) -> Option<f64> {
    c.get(k).and_then(Value::as_f64)
}

fn service_url(k: &Kong, s: &Service, notes: &mut Vec<String>) -> Result<Vec<String>, String> {
    if !matches!(s.protocol.as_str(), "http" | "https") {
        return Err(format!(
            "protocol `{}`: the gateway proxies HTTP and HTTPS only",
            s.protocol
        ));
    }
    if s.host.contains(crate::input::KEPT) {
        return Err("its host is a decK placeholder: run with --env to take its value".into());
    }
    let host_ok = |h: &str| {
        !h.is_empty()
            && (h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
                || (h.starts_with('[') && h.ends_with(']')))
    };
    if !host_ok(&s.host) {
        return Err(format!("its host `{}` is not a host name", s.host));
    }
    // Kong's service path, put before the request's path upstream (v0 handling).
    let path = s.path.as_deref().filter(|p| *p != "/").unwrap_or("");
    if !path.starts_with('/') && !path.is_empty()
        || path.contains(['?', '#', ' '])
        || path.contains(crate::input::KEPT)
    {
        return Err(format!("its path `{path}` is not a URL path"));
    }
    if let Some(targets) = k.upstreams.get(&s.host) {
        let live: Vec<&(String, u64)> = targets.iter().filter(|(_, w)| *w > 0).collect();
        if live.is_empty() {
            return Err(format!("upstream `{}` has no target with weight", s.host));
        }
        if live.iter().any(|(_, w)| *w != live[0].1) {
            notes.push(format!(
                "upstream `{}`: targets are taken in turn (round robin); Kong's weights ({}) are not kept",
                s.host,
                live.iter()
                    .map(|(t, w)| format!("{t}={w}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        return Ok(live
            .iter()
            .map(|(t, _)| format!("{}://{t}{}", s.protocol, path))
            .collect());
    }
    Ok(vec![format!(
        "{}://{}:{}{path}",
        s.protocol, s.host, s.port
    )])
}

/// A `name:value` list of Kong's transformers as a map (first `:` splits).
/// Whether `name` is one of the identity contract's headers, which header-forwarder
/// refuses to set in the request or read with `$(headers.…)`.
fn is_identity_name(name: &str) -> bool {
    kit::identity::is_identity_name(name.trim())
}

/// A Kong template with its reads of identity headers as header-forwarder's verified
/// `$(consumer.…)` (Kong sets `X-Consumer-ID`, `-Username`, `-Groups` itself after
/// authentication); `Err` with the header's name for one header-forwarder has no
/// verified source for.
fn identity_refs(v: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find("$(headers.") {
        let after = &rest[i + "$(headers.".len()..];
        let Some(end) = after.find(')') else { break };
        let name = &after[..end];
        out.push_str(&rest[..i]);
        if is_identity_name(name) {
            let field = name.to_ascii_lowercase().replace('_', "-");
            match field.strip_prefix("x-consumer-") {
                Some(f @ ("id" | "username" | "groups" | "tier")) => {
                    out.push_str(&format!("$(consumer.{f})"));
                }
                _ => return Err(name.to_owned()),
            }
        } else {
            out.push_str(&rest[i..i + "$(headers.".len() + end + 1]);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn pairs(
    c: &Map<String, Value>,
    op: &str,
    what: &str,
    request: bool,
    notes: &mut Vec<String>,
) -> Map<String, Value> {
    let mut out = Map::new();
    let list = c
        .get(op)
        .and_then(|o| o.get(what))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for item in list {
        let Some(item) = item.as_str() else { continue };
        let (k, v) = item.split_once(':').unwrap_or((item, ""));
        let v = v
            .replace("$(query_params.", "$(query.")
            .replace("$(query_params[", "$(query.[");
        if v.contains("$(") && !template_ok(&v) {
            notes.push(format!(
                "`{op}.{what}` `{k}`: the template `{v}` uses what only Kong's Lua templates have; dropped"
            ));
            continue;
        }
        // The header this writes: a rename's is its new name.
        let target = if op == "rename" { v.as_str() } else { k };
        if request && what == "headers" && is_identity_name(target) {
            notes.push(format!(
                "`{op}.{what}` `{k}`: `{}` is an identity header, set only by an auth filter (header-forwarder refuses it); dropped",
                target.trim()
            ));
            continue;
        }
        let v = match identity_refs(&v) {
            Ok(v) => v,
            Err(name) => {
                notes.push(format!(
                    "`{op}.{what}` `{k}`: `$(headers.{name})` reads an identity header header-forwarder has no verified value for (only $(consumer.id|username|groups|tier)); dropped"
                ));
                continue;
            }
        };
        out.insert(k.trim().to_ascii_lowercase(), Value::String(v));
    }
    out
}

fn template_ok(v: &str) -> bool {
    let mut rest = v;
    while let Some(i) = rest.find("$(") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else {
            return false;
        };
        let inner = &after[..end];
        let ok = inner.starts_with("headers.")
            || inner.starts_with("query.")
            || inner.starts_with("consumer.")
            || inner.starts_with("request.")
            || inner == "source.address";
        if !ok {
            return false;
        }
        rest = &after[end + 1..];
    }
    true
}

/// Kong's request-/response-transformer as a header-forwarder phase.
fn transformer_phase(c: &Map<String, Value>, request: bool, notes: &mut Vec<String>) -> Value {
    let mut phase = Map::new();
    let headers_and_query: &[&str] = if request {
        &["headers", "querystring"]
    } else {
        &["headers"]
    };
    for op in ["remove", "rename", "replace", "add", "append"] {
        let mut o = Map::new();
        for what in headers_and_query {
            if op == "remove" {
                let list = c
                    .get(op)
                    .and_then(|x| x.get(*what))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if !list.is_empty() {
                    o.insert(what.to_string(), Value::Array(list));
                }
            } else {
                let m = pairs(c, op, what, request, notes);
                if !m.is_empty() {
                    o.insert(what.to_string(), Value::Object(m));
                }
            }
        }
        for (what, label) in [("body", "body"), ("json", "JSON body"), ("uri", "URI")] {
            let present = c
                .get(op)
                .and_then(|x| x.get(what))
                .is_some_and(|v| match v {
                    Value::Array(a) => !a.is_empty(),
                    Value::Null => false,
                    Value::String(s) => !s.is_empty(),
                    _ => true,
                });
            if present {
                notes.push(format!(
                    "`{op}.{what}`: {label} transforms are not supported (headers and query only); dropped"
                ));
            }
        }
        if !o.is_empty() {
            phase.insert(op.to_owned(), Value::Object(o));
        }
    }
    if c.get("http_method").is_some_and(|m| !m.is_null()) {
        notes.push("`http_method`: changing the method is not supported; dropped".into());
    }
    Value::Object(phase)
}

/// A tier-limiter plan from rate-limiting's windows (or -advanced's limit/window_size).
fn limits(p: &Plugin, notes: &mut Vec<String>) -> Map<String, Value> {
    let c = &p.config;
    let mut plan = Map::new();
    if p.name == "rate-limiting-advanced" {
        let lim: Vec<f64> = c
            .get("limit")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let win: Vec<f64> = c
            .get("window_size")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        for (l, w) in lim.iter().zip(&win) {
            let name = match *w as u64 {
                1 => "second",
                60 => "minute",
                3600 => "hour",
                86400 => "day",
                other => {
                    notes.push(format!(
                        "a window of {other} s has no tier-limiter window (second, minute, hour, day); dropped"
                    ));
                    continue;
                }
            };
            plan.insert(name.into(), json!(*l as u64));
        }
        if c.get("window_type").and_then(Value::as_str) != Some("fixed") {
            notes.push("Kong's sliding windows become token buckets refilled continuously".into());
        }
        notes.push(
            "headers are named by window (X-RateLimit-Limit-Minute), where rate-limiting-advanced names them by seconds (X-RateLimit-Limit-60)"
                .into(),
        );
    } else {
        for w in ["second", "minute", "hour", "day"] {
            if let Some(v) = number(c, w) {
                plan.insert(w.into(), json!(v as u64));
            }
        }
        for w in ["month", "year"] {
            if number(c, w).is_some() {
                notes.push(format!(
                    "the `{w}` limit has no tier-limiter window (second, minute, hour, day); dropped"
                ));
            }
        }
        notes.push(
            "limits are token buckets refilled continuously, where Kong counts fixed calendar windows"
                .into(),
        );
    }
    plan
}

struct Filters {
    /// (kind, config JSON) → name.
    seen: BTreeMap<(String, String), String>,
    out: Vec<Value>,
}

impl Filters {
    fn add(&mut self, kind: &str, config: Value, opts: &Options) -> String {
        let key = (kind.to_owned(), config.to_string());
        if let Some(n) = self.seen.get(&key) {
            return n.clone();
        }
        let name = format!(
            "{kind}-{}",
            self.seen.keys().filter(|(k, _)| k == kind).count() + 1
        );
        let wasm = format!("{}/{}.wasm", opts.wasm_dir, kind.replace('-', "_"));
        self.out
            .push(json!({"name": name, "wasm": wasm, "config": config}));
        self.seen.insert(key, name.clone());
        name
    }
}

pub fn map(k: &Kong, opts: &Options, report: &mut Report) -> Mapped {
    for key in &k.ignored {
        report.unsupported(
            "file",
            format!("`{key}`"),
            "this top-level key is not read",
            None,
        );
    }
    // Services.
    let mut services: BTreeMap<String, Value> = BTreeMap::new();
    for s in &k.services {
        let mut notes = Vec::new();
        match service_url(k, s, &mut notes) {
            Ok(urls) => {
                if s.retries > 0 {
                    notes.push(format!(
                        "Kong retries a failed connection up to {} times; the gateway does not retry",
                        s.retries
                    ));
                }
                if s.write_timeout != 60_000 {
                    notes.push(format!(
                        "write_timeout {} ms has no equivalent (the whole exchange is bounded by timeout_ms)",
                        s.write_timeout
                    ));
                }
                let mut v = json!({"name": s.name, "connect_timeout_ms": s.connect_timeout,
                    "read_timeout_ms": s.read_timeout});
                if urls.len() == 1 {
                    v["url"] = json!(urls[0]);
                } else {
                    v["urls"] = json!(urls);
                }
                services.insert(s.name.clone(), v);
                report.mapped("service", format!("`{}`", s.name), notes);
            }
            Err(why) => report.unsupported("service", format!("`{}`", s.name), why, None),
        }
    }
    // Consumer-scoped plugins that cannot be mapped, said once each.
    for p in &k.plugins {
        let consumer_scoped = p.scope.consumer.is_some() || p.scope.consumer_group.is_some();
        if consumer_scoped && !matches!(p.name.as_str(), "rate-limiting" | "rate-limiting-advanced")
        {
            report.unsupported(
                "plugin",
                format!("{} on {}", p.name, p.scope.describe()),
                "only rate limits can differ by consumer or consumer group here",
                Some("a route of its own for those consumers"),
            );
        }
        if !MAPPED.contains(&p.name.as_str()) && !consumer_scoped {
            let nearest = NEAREST.iter().find(|(n, _)| *n == p.name).map(|(_, w)| *w);
            report.unsupported(
                "plugin",
                format!("{} on {}", p.name, p.scope.describe()),
                "no Portcullis filter does this",
                nearest,
            );
        }
    }
    let mut filters = Filters {
        seen: BTreeMap::new(),
        out: Vec::new(),
    };
    let mut routes_out: Vec<Value> = Vec::new();
    // Match rules already taken, by the route that took them (Kong accepts duplicates;
    // the gateway refuses them).
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    let mut plugin_notes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unsupported_said: Vec<String> = Vec::new();
    for r in &k.routes {
        let label = format!("`{}`", r.name);
        let Some(svc_name) = &r.service else {
            report.unsupported("route", label, "it has no service", None);
            continue;
        };
        let Some(svc) = services.get(svc_name).cloned() else {
            report.unsupported(
                "route",
                label,
                format!("its service `{svc_name}` is not supported"),
                None,
            );
            continue;
        };
        let mut notes = Vec::new();
        if r.paths
            .iter()
            .chain(&r.hosts)
            .chain(&r.regex_paths)
            .any(|x| x.contains(crate::input::KEPT))
        {
            report.unsupported(
                "route",
                label,
                "a path or host is a decK placeholder: run with --env to take its value",
                None,
            );
            continue;
        }
        if !r.protocols.is_empty() && !r.protocols.iter().any(|p| p == "http" || p == "https") {
            report.unsupported(
                "route",
                label,
                format!("protocols {:?}: only HTTP routes are proxied", r.protocols),
                None,
            );
            continue;
        }
        if r.protocols.len() == 1 && r.protocols[0] == "https" {
            notes.push(
                "`protocols: [https]`: the route answers on whichever listener the request came in; Kong answers plain HTTP with 426"
                    .into(),
            );
        }
        // Kong's regex paths (PCRE) as the gateway's (the `regex` crate: no
        // look-around or back-references, linear time).
        let mut regex_paths = Vec::new();
        for re in &r.regex_paths {
            match regex::Regex::new(re).and_then(|_| regex::Regex::new(&format!("^(?:{re})"))) {
                Ok(_) => regex_paths.push(re.clone()),
                Err(_) => notes.push(format!(
                    "the regex path `{re}` uses what only PCRE has (look-around, back-references...); dropped"
                )),
            }
        }
        if !r.regex_paths.is_empty() && regex_paths.is_empty() && r.paths.is_empty() {
            report.unsupported(
                "route",
                label,
                "none of its regex paths can be matched here",
                Some("a regex without look-around or back-references, or a prefix path"),
            );
            continue;
        }
        if r.path_handling == "v1" {
            notes
                .push("`path_handling: v1` is read as v0 (as Kong 3's default router does)".into());
        }
        // Why the route must answer no request (it is then emitted closed: left out,
        // its requests could reach a broader route Kong would not have let them reach).
        let mut closed: Option<String> = None;
        // Header rules: one value each here; a rule with several values becomes one
        // route per value.
        let mut header_sets: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
        for (h, vals) in &r.headers {
            if vals.iter().any(|v| v.starts_with("~*")) {
                closed.get_or_insert(format!(
                    "its header rule `{h}` has regex values, which cannot be matched here"
                ));
                continue;
            }
            let mut next = Vec::new();
            for set in &header_sets {
                for v in vals {
                    let mut s = set.clone();
                    s.insert(h.clone(), v.clone());
                    next.push(s);
                }
            }
            header_sets = next;
            if header_sets.len() > 64 {
                closed.get_or_insert("its header rules would make more than 64 routes".into());
                header_sets.truncate(1);
            }
        }
        if !r.headers.is_empty() {
            notes.push(
                "header values are compared as written; Kong compares them ignoring case".into(),
            );
        }
        // The route's plugins.
        let mut chain: Vec<String> = Vec::new();
        let mut service = svc.clone();
        let mut service_name = svc_name.clone();
        let mut auth: Option<&str> = None;
        let acl = effective(k, "acl", r);
        let blocked = blocked_consumers(k, r);
        let oidc_p = effective(k, "openid-connect", r);
        let jwt_p = effective(k, "jwt", r);
        let key_p = effective(k, "key-auth", r);
        let auths: Vec<&Plugin> = [oidc_p, jwt_p, key_p].into_iter().flatten().collect();
        // Several authentication plugins: Kong wants each, unless one has `anonymous`
        // (then any one will do, which mapping only the first makes stricter).
        let either = auths
            .iter()
            .any(|p| p.config.get("anonymous").is_some_and(|a| !a.is_null()));
        let wanted: Vec<&Plugin> =
            if either && auths.len() > 1 {
                notes.push(format!(
                "{} apply with `anonymous`: only {} is mapped, so a request needs that credential",
                auths.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(" and "),
                auths[0].name
            ));
                auths[..1].to_vec()
            } else {
                auths.clone()
            };
        for p in wanted {
            let what = format!("{} on {}", p.name, p.scope.describe());
            let mapped = match p.name.as_str() {
                "openid-connect" => oidc(p, acl).map(|(cfg, idp, n)| {
                    let idp_name = idp["name"].as_str().unwrap_or("idp").to_owned();
                    services.entry(idp_name).or_insert(idp);
                    ("oidc", cfg, n)
                }),
                "jwt" => jwt_auth(k, p, acl, &blocked).map(|(cfg, n)| ("jwt-auth", cfg, n)),
                _ => {
                    let tiers = tier_of_groups(k, r);
                    key_auth(k, p, acl, &tiers, &blocked).map(|(cfg, n)| ("key-auth", cfg, n))
                }
            };
            match mapped {
                Ok((kind, cfg, n)) => {
                    plugin_notes.entry(what).or_default().extend(n);
                    chain.push(filters.add(kind, cfg, opts));
                    auth = Some(match kind {
                        "oidc" => "openid-connect",
                        "jwt-auth" => "jwt",
                        _ => "key-auth",
                    });
                }
                Err(why) => {
                    if !unsupported_said.contains(&what) {
                        report.unsupported("plugin", what.clone(), why.clone(), None);
                        unsupported_said.push(what.clone());
                    }
                    closed.get_or_insert(format!("its `{}` cannot be mapped: {why}", p.name));
                }
            }
        }
        if let Some(p) = acl {
            let what = format!("acl on {}", p.scope.describe());
            plugin_notes.entry(what).or_default();
            if auths.is_empty() {
                // Kong's acl without a consumer refuses every request (401).
                closed.get_or_insert("its `acl` has no authentication plugin to name the consumer: Kong refuses every request".into());
            }
        }
        for g in GUARDS {
            if effective(k, g, r).is_some() {
                closed.get_or_insert(format!(
                    "Kong guards it with `{g}`, which is not mapped here"
                ));
            }
        }
        if let Some(p) = effective(k, "request-size-limiting", r) {
            let c = &p.config;
            let size = number(c, "allowed_payload_size").unwrap_or(128.0) as u64;
            let unit = match c
                .get("size_unit")
                .and_then(Value::as_str)
                .unwrap_or("megabytes")
            {
                "bytes" => 1,
                "kilobytes" => 1024,
                _ => 1024 * 1024,
            };
            let mut n = vec![
                "the 413 body says \"request body too large\" where Kong says \"Request size limit exceeded\"".to_owned(),
            ];
            if flag(c, "require_content_length", false) {
                n.push("`require_content_length` is not supported: a body without Content-Length is still read".into());
            }
            if p.scope.route.is_some() {
                // The body limit is the service's: a route of its own gets a copy.
                service_name = format!("{svc_name}~{}", r.name);
                service["name"] = json!(service_name);
            }
            service["max_request_body_bytes"] = json!(size * unit);
            plugin_notes
                .entry(format!("request-size-limiting on {}", p.scope.describe()))
                .or_default()
                .extend(n);
        }
        let limiter =
            effective(k, "rate-limiting", r).or_else(|| effective(k, "rate-limiting-advanced", r));
        let scoped = per_consumer(k, &["rate-limiting", "rate-limiting-advanced"], r);
        if limiter.is_some() || !scoped.is_empty() {
            let (cfg, n, what) = tier_limiter(k, limiter, &scoped, auth);
            plugin_notes.entry(what).or_default().extend(n);
            if let Some(cfg) = cfg {
                if cfg.get("policy").and_then(Value::as_str) == Some("global") {
                    services
                        .entry("ratelimit".into())
                        .or_insert_with(|| json!({"name": "ratelimit", "url": opts.ratelimit_url}));
                }
                chain.push(filters.add("tier-limiter", cfg, opts));
            }
        }
        let req_t = effective(k, "request-transformer", r)
            .or_else(|| effective(k, "request-transformer-advanced", r));
        let resp_t = effective(k, "response-transformer", r)
            .or_else(|| effective(k, "response-transformer-advanced", r));
        if req_t.is_some() || resp_t.is_some() {
            let mut cfg = json!({"forward_authorization": false});
            for (p, request) in [(req_t, true), (resp_t, false)] {
                let Some(p) = p else { continue };
                let mut n = Vec::new();
                cfg[if request { "request" } else { "response" }] =
                    transformer_phase(&p.config, request, &mut n);
                plugin_notes
                    .entry(format!("{} on {}", p.name, p.scope.describe()))
                    .or_default()
                    .extend(n);
            }
            chain.push(filters.add("header-forwarder", cfg, opts));
        }
        services.insert(service_name.clone(), service);
        if let Some(why) = &closed {
            // Answers 401 to every request: the closed-route filter wants a header no
            // client has a value for.
            report.unsupported(
                "route",
                label.clone(),
                format!("{why}; it is kept closed (401 to every request) rather than left out, where a broader route could serve its requests"),
                Some("map what guards it by hand, then open the route"),
            );
            chain = vec![filters.add("key-auth", closed_route(), opts)];
            service = svc.clone();
            service_name = svc_name.clone();
        }
        // Emit the route (one per header-value combination).
        for (i, headers) in header_sets.iter().enumerate() {
            let name = if i == 0 {
                r.name.clone()
            } else {
                format!("{}~{}", r.name, i + 1)
            };
            let m = json!({"hosts": r.hosts, "paths": r.paths, "regex_paths": regex_paths,
                "methods": r.methods, "headers": headers});
            let key = m.to_string();
            if let Some(first) = taken.get(&key) {
                report.unsupported(
                    "route",
                    format!("`{name}`"),
                    format!(
                        "its match rules are those of route `{first}`: Kong would pick one by its internal order; the gateway refuses two such routes"
                    ),
                    Some("merge the two routes, or tell them apart by host, method or header"),
                );
                continue;
            }
            taken.insert(key, name.clone());
            let mut mm = Map::new();
            for (f, v) in [
                ("hosts", json!(r.hosts)),
                ("paths", json!(r.paths)),
                ("regex_paths", json!(regex_paths)),
                ("methods", json!(r.methods)),
                ("headers", json!(headers)),
            ] {
                let empty = v.as_array().is_some_and(Vec::is_empty)
                    || v.as_object().is_some_and(Map::is_empty);
                if !empty {
                    mm.insert(f.into(), v);
                }
            }
            if !regex_paths.is_empty() && r.regex_priority != 0 {
                mm.insert("regex_priority".into(), json!(r.regex_priority));
            }
            routes_out.push(json!({"name": name, "match": mm, "service": service_name,
                "filters": chain, "strip_path": r.strip_path, "preserve_host": r.preserve_host}));
        }
        if closed.is_none() {
            report.mapped("route", label, notes);
        }
    }
    for (what, notes) in plugin_notes {
        let mut notes = notes;
        notes.sort();
        notes.dedup();
        report.mapped("plugin", what, notes);
    }
    for c in &k.consumers {
        let mut notes = Vec::new();
        if c.id.is_none() {
            notes.push(
                "no id in the file: x-consumer-id is the username (Kong makes up a UUID)".into(),
            );
        }
        if c.custom_id.is_some() {
            notes.push("`custom_id` is not forwarded (Kong's X-Consumer-Custom-ID)".into());
        }
        report.mapped("consumer", format!("`{}`", c.label()), notes);
    }
    let config = json!({
        "listeners": [{"name": "proxy", "address": opts.listen}],
        "admin": {"address": opts.admin},
        "services": services.into_values().collect::<Vec<_>>(),
        "filters": filters.out,
        "routes": routes_out,
    });
    Mapped { config }
}

/// Consumer groups as tiers: a consumer's tier is its first group's name.
fn tier_of_groups(k: &Kong, _r: &Route) -> BTreeMap<String, String> {
    k.consumers
        .iter()
        .filter_map(|c| c.groups.first().map(|g| (c.key(), g.clone())))
        .collect()
}

/// An acl's `allow` and `deny` (Kong 1.x/2.x: `whitelist`, `blacklist`).
fn acl_lists(p: &Plugin) -> (Vec<String>, Vec<String>) {
    let read = |a: &str, b: &str| {
        let l = str_list(&p.config, a, &[]);
        if l.is_empty() {
            str_list(&p.config, b, &[])
        } else {
            l
        }
    };
    (read("allow", "whitelist"), read("deny", "blacklist"))
}

/// Whether Kong's acl lets a consumer of these ACL groups through.
fn acl_admits(acl: Option<&Plugin>, groups: &[String]) -> bool {
    let Some(p) = acl else { return true };
    let (allow, deny) = acl_lists(p);
    (allow.is_empty() || groups.iter().any(|g| allow.contains(g)))
        && !groups.iter().any(|g| deny.contains(g))
}

fn acl_rules(acl: Option<&Plugin>) -> Option<Value> {
    let p = acl?;
    let (allow, deny) = acl_lists(p);
    let any = |gs: &[String]| -> Value {
        Value::Array(
            gs.iter()
                .map(|g| json!({"claim": "groups", "contains": g}))
                .collect(),
        )
    };
    let mut rules = Vec::new();
    if !allow.is_empty() {
        rules.push(json!({"any": any(&allow)}));
    }
    if !deny.is_empty() {
        rules.push(json!({"none": any(&deny)}));
    }
    (!rules.is_empty()).then_some(Value::Array(rules))
}

fn key_auth(
    k: &Kong,
    p: &Plugin,
    acl: Option<&Plugin>,
    tiers: &BTreeMap<String, String>,
    blocked: &[String],
) -> Result<(Value, Vec<String>), String> {
    let c = &p.config;
    let mut notes = Vec::new();
    let mut consumers: Vec<Value> = Vec::new();
    for cons in k.consumers.iter().filter(|c| !c.keys.is_empty()) {
        if blocked.contains(&cons.label()) {
            notes.push(format!(
                "consumer `{}`: Kong stops it here with a plugin of its own; its keys are left out",
                cons.label()
            ));
            continue;
        }
        if let Some(v) = key_consumer(cons, tiers, &mut notes) {
            consumers.push(v);
        }
    }
    if consumers.is_empty() {
        return Err("no consumer has a usable key".into());
    }
    let mut cfg = json!({
        "key_names": str_list(c, "key_names", &["apikey"]),
        "key_in_header": flag(c, "key_in_header", true),
        "key_in_query": flag(c, "key_in_query", true),
        "hide_credentials": flag(c, "hide_credentials", false),
        "consumers": consumers,
    });
    if let Some(realm) = c.get("realm").and_then(Value::as_str) {
        cfg["realm"] = json!(realm);
    } else {
        cfg["realm"] = json!("kong");
    }
    if flag(c, "key_in_body", false) {
        notes.push("`key_in_body`: keys in the body are not read".into());
    }
    if c.get("anonymous").is_some_and(|a| !a.is_null()) {
        notes.push("`anonymous`: a request without a valid key is refused, never passed as the anonymous consumer".into());
    }
    if !flag(c, "run_on_preflight", true) {
        notes.push("`run_on_preflight: false`: OPTIONS requests need a key too".into());
    }
    notes.push("keys are kept as SHA-256 digests; x-credential-identifier is the credential's id, or the digest's first 16 hex digits".into());
    if let Some(rules) = acl_rules(acl) {
        cfg["claims"] = rules;
        notes.push("with acl: x-consumer-groups is always set, joined by `,` (Kong's acl sets X-Consumer-Groups joined by `, `)".into());
    }
    Ok((cfg, notes))
}

fn key_consumer(
    c: &Consumer,
    tiers: &BTreeMap<String, String>,
    notes: &mut Vec<String>,
) -> Option<Value> {
    let mut keys = Vec::new();
    for (key, id) in &c.keys {
        if key.contains(crate::input::KEPT) {
            notes.push(format!(
                "consumer `{}`: a key is a decK placeholder; run with --env to take its value",
                c.label()
            ));
            continue;
        }
        let hash = key_auth::directory::hash_string(key.as_bytes());
        keys.push(match id {
            Some(id) => json!({"id": id, "hash": hash}),
            None => json!(hash),
        });
    }
    if keys.is_empty() {
        return None;
    }
    // Groups travel joined by commas: a group with one would read as two, and could
    // slip past a `deny`. Such a consumer is left out.
    if let Some(g) = c.acl_groups.iter().find(|g| g.contains(',')) {
        notes.push(format!(
            "consumer `{}`: its ACL group `{g}` holds a comma; its keys are left out",
            c.label()
        ));
        return None;
    }
    let groups = &c.acl_groups;
    let mut v = json!({"id": c.key(), "keys": keys});
    if let Some(u) = &c.username {
        v["username"] = json!(u);
    }
    if !groups.is_empty() {
        v["groups"] = json!(groups);
    }
    if let Some(t) = tiers.get(&c.key()) {
        v["tier"] = json!(t);
    }
    Some(v)
}

fn jwt_auth(
    k: &Kong,
    p: &Plugin,
    acl: Option<&Plugin>,
    blocked: &[String],
) -> Result<(Value, Vec<String>), String> {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let c = &p.config;
    let mut notes = vec![
        "refusals are RFC 6750 401s with jwt-auth's own messages, where Kong answers {\"message\": ...} naming the failed check".to_owned(),
        "x-consumer-id is the consumer's id, set from the key that verified the token".to_owned(),
    ];
    let key_claim = c
        .get("key_claim_name")
        .and_then(Value::as_str)
        .unwrap_or("iss");
    if key_claim != "iss" {
        notes.push(format!(
            "`key_claim_name: {key_claim}`: tokens are matched to their key by `iss` only"
        ));
    }
    let verify = str_list(c, "claims_to_verify", &[]);
    if !verify.iter().any(|v| v == "exp") {
        notes.push(
            "`exp` is checked when present, though `claims_to_verify` does not name it".into(),
        );
    }
    if !verify.iter().any(|v| v == "nbf") {
        notes.push(
            "`nbf` is checked when present, though `claims_to_verify` does not name it".into(),
        );
    }
    let mut providers = Map::new();
    let secret_is_b64 = flag(c, "secret_is_base64", false);
    for cons in &k.consumers {
        // Kong's acl decides by the consumer's own ACL groups, which its token cannot
        // change: a consumer it refuses gets no provider here.
        if !cons.jwt_secrets.is_empty() && !acl_admits(acl, &cons.acl_groups) {
            notes.push(format!(
                "consumer `{}`: refused by the acl, its tokens get 401 (Kong: 403)",
                cons.label()
            ));
            continue;
        }
        if !cons.jwt_secrets.is_empty() && blocked.contains(&cons.label()) {
            notes.push(format!(
                "consumer `{}`: Kong stops it here with a plugin of its own; its secrets are left out",
                cons.label()
            ));
            continue;
        }
        for (i, s) in cons.jwt_secrets.iter().enumerate() {
            let alg = s.algorithm.to_ascii_uppercase();
            if s.key.is_empty() || s.key.contains(crate::input::KEPT) {
                notes.push(format!(
                    "consumer `{}`: a jwt_secret without a usable `key` (Kong makes one up) is left out",
                    cons.label()
                ));
                continue;
            }
            let jwk = if alg.starts_with("HS") {
                let Some(secret) = s
                    .secret
                    .as_ref()
                    .filter(|x| !x.contains(crate::input::KEPT))
                else {
                    notes.push(format!(
                        "consumer `{}`: the secret of `{}` is missing or a decK placeholder (run with --env); left out",
                        cons.label(),
                        s.key
                    ));
                    continue;
                };
                let bytes = if secret_is_b64 {
                    base64::engine::general_purpose::STANDARD
                        .decode(secret)
                        .unwrap_or_else(|_| secret.as_bytes().to_vec())
                } else {
                    secret.as_bytes().to_vec()
                };
                let min = match alg.as_str() {
                    "HS384" => 48,
                    "HS512" => 64,
                    _ => 32,
                };
                if bytes.len() < min {
                    notes.push(format!(
                        "consumer `{}`: the {alg} secret of `{}` is {} bytes, shorter than the hash ({min}): jwt-auth refuses such keys, so it is left out",
                        cons.label(),
                        s.key,
                        bytes.len()
                    ));
                    continue;
                }
                json!({"kty": "oct", "k": b64(&bytes), "alg": alg})
            } else if alg.starts_with("RS") {
                match s.rsa_public_key.as_deref().map(rsa_jwk) {
                    Some(Ok(mut j)) => {
                        j["alg"] = json!(alg);
                        j
                    }
                    _ => {
                        notes.push(format!(
                            "consumer `{}`: the {alg} key of `{}` is not a readable RSA public key; left out",
                            cons.label(),
                            s.key
                        ));
                        continue;
                    }
                }
            } else {
                notes.push(format!(
                    "consumer `{}`: {alg} credentials are not imported (HS* and RS* are)",
                    cons.label()
                ));
                continue;
            };
            let mut consumer = json!({"id": cons.key(), "id_claim": "sub"});
            if let Some(u) = &cons.username {
                consumer["username"] = json!(u);
            }
            providers.insert(
                format!("{}-{}", cons.label(), i + 1),
                json!({
                    "issuer": s.key,
                    "algorithms": [alg],
                    "local_jwks": {"keys": [jwk]},
                    "require_expiration": verify.iter().any(|v| v == "exp"),
                    "from_headers": str_list(c, "header_names", &["authorization"]).iter().map(|h| {
                        if h.eq_ignore_ascii_case("authorization") {
                            json!({"name": h, "value_prefix": "Bearer "})
                        } else {
                            json!({"name": h})
                        }
                    }).collect::<Vec<_>>(),
                    "from_params": str_list(c, "uri_param_names", &["jwt"]),
                    "from_cookies": str_list(c, "cookie_names", &[]),
                    "forward": true,
                    "consumer": consumer,
                }),
            );
        }
    }
    if let Some(max) = number(c, "maximum_expiration").filter(|m| *m > 0.0) {
        for p in providers.values_mut() {
            p["max_lifetime_seconds"] = json!(max as u64);
        }
        notes.push("`maximum_expiration` bounds `exp - iat`, where Kong bounds `exp - now`".into());
    }
    let names: Vec<String> = providers.keys().cloned().collect();
    if names.is_empty() {
        return Err("no consumer has a usable jwt_secret".into());
    }
    Ok((
        json!({"providers": providers, "rules": [{"match": {"prefix": "/"}, "requires": {"any": names}}]}),
        notes,
    ))
}

fn rsa_jwk(pem: &str) -> Result<Value, String> {
    use base64::Engine;
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    // One-line PEMs (`-----BEGIN ...-----MIIB...-----END ...-----`) are common in
    // Kong files.
    let body = if body.is_empty() {
        pem.split("-----")
            .find(|p| p.len() > 40 && !p.contains(' '))
            .unwrap_or("")
            .to_owned()
    } else {
        body
    };
    // A PEM written on one line with `\n` escapes, as some Kong files hold them.
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.replace("\\n", "").as_bytes())
        .map_err(|e| e.to_string())?;
    let key = rsa::PublicKey::from_public_key_der(&der)
        .or_else(|_| rsa::PublicKey::from_pkcs1_der(&der))
        .map_err(|e| e.to_string())?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Ok(
        json!({"kty": "RSA", "n": b64(&key.n().to_be_bytes_trimmed_vartime()),
        "e": b64(&key.e().to_be_bytes_trimmed_vartime())}),
    )
}

/// rate-limiting(-advanced) as tier-limiter: the plugin's limits as the default tier,
/// consumer-scoped plugins as overrides, consumer-group-scoped ones as tiers.
fn tier_limiter(
    k: &Kong,
    p: Option<&Plugin>,
    scoped: &[&Plugin],
    auth: Option<&str>,
) -> (Option<Value>, Vec<String>, String) {
    let mut notes = Vec::new();
    let what = match p {
        Some(p) => format!("{} on {}", p.name, p.scope.describe()),
        None => format!("{} on {}", scoped[0].name, scoped[0].scope.describe()),
    };
    let base = p
        .or(scoped.first().copied())
        .map(|p| p.config.clone())
        .unwrap_or_default();
    let default_plan = p.map(|p| limits(p, &mut notes)).unwrap_or_default();
    let mut tiers = Map::new();
    let mut overrides = Map::new();
    for s in scoped {
        let mut n = Vec::new();
        let plan = limits(s, &mut n);
        if let Some(c) = &s.scope.consumer {
            let key = k
                .consumers
                .iter()
                .find(|x| x.label() == *c)
                .map_or(c.clone(), Consumer::key);
            overrides.insert(key, Value::Object(plan));
        } else if let Some(g) = &s.scope.consumer_group {
            tiers.insert(g.clone(), Value::Object(plan));
        }
    }
    if default_plan.is_empty() && tiers.is_empty() && overrides.is_empty() {
        return (None, vec!["no limit it sets can be kept".into()], what);
    }
    tiers.insert(
        "kong-default".into(),
        if default_plan.is_empty() {
            // Only consumers or groups are limited: the others are not.
            json!({"day": 4_000_000_000u64})
        } else {
            Value::Object(default_plan)
        },
    );
    let limit_by = base
        .get("limit_by")
        .or_else(|| base.get("identifier"))
        .and_then(Value::as_str)
        .unwrap_or("consumer");
    let identify_by: Vec<String> = match limit_by {
        "ip" => vec!["ip".into()],
        "header" => {
            let h = base
                .get("header_name")
                .and_then(Value::as_str)
                .unwrap_or("x-forwarded-for")
                .to_ascii_lowercase();
            vec![format!("header:{h}"), "ip".into()]
        }
        "consumer" | "credential" => vec!["consumer".into(), "ip".into()],
        other => {
            notes.push(format!(
                "`limit_by: {other}` is counted per consumer (then per client address)"
            ));
            vec!["consumer".into(), "ip".into()]
        }
    };
    if limit_by == "credential" {
        notes.push("`limit_by: credential` is counted per consumer".into());
    }
    if auth.is_none() && identify_by.first().is_some_and(|i| i == "consumer") {
        notes.push("no authentication plugin names the consumer on this route: clients are counted by address".into());
    }
    if !tiers.is_empty() && tiers.len() > 1 && auth != Some("key-auth") {
        notes.push("consumer-group limits need the consumer's tier: key-auth sets it from the group, jwt-auth from the token's `tier` claim".into());
    }
    let mut cfg = json!({
        "identify_by": identify_by,
        "tiers": tiers,
        "default_tier": "kong-default",
        "error_code": base.get("error_code").and_then(Value::as_u64).unwrap_or(429),
        "error_message": base.get("error_message").and_then(Value::as_str).unwrap_or("API rate limit exceeded"),
        "headers": {"legacy": !flag(&base, "hide_client_headers", false), "ietf": false},
    });
    if !overrides.is_empty() {
        cfg["overrides"] = Value::Object(overrides);
    }
    let policy = base
        .get("policy")
        .or_else(|| base.get("strategy"))
        .and_then(Value::as_str)
        .unwrap_or("local");
    match policy {
        "redis" => {
            cfg["policy"] = json!("global");
            cfg["global"] = json!({"cluster": "ratelimit",
                "failure_mode": if flag(&base, "fault_tolerant", true) { "open" } else { "closed" }});
            notes.push("`policy: redis`: counted by the rate-limit service; run `portcullis ratelimit-service --redis redis://HOST:PORT` (service `ratelimit`)".into());
        }
        "cluster" => {
            notes.push("`policy: cluster`: counted per gateway node (exact across its workers); use the rate-limit service for counts across nodes".into());
        }
        _ => {}
    }
    (Some(cfg), notes, what)
}

/// openid-connect as the oidc filter (its authorization-code login, session and bearer
/// methods), and the service that reaches the IdP. Err: why it cannot be.
fn oidc(p: &Plugin, acl: Option<&Plugin>) -> Result<(Value, Value, Vec<String>), String> {
    use base64::Engine;
    let c = &p.config;
    let first = |k: &str| str_list(c, k, &[]).into_iter().next();
    let mut notes = Vec::new();
    let issuer = first("issuer").ok_or("it has no issuer")?;
    let issuer = issuer
        .trim_end_matches("/.well-known/openid-configuration")
        .trim_end_matches('/')
        .to_owned();
    let (scheme, rest) = issuer
        .split_once("://")
        .ok_or_else(|| format!("the issuer `{issuer}` is not a URL"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    if host.is_empty() || issuer.contains(crate::input::KEPT) {
        return Err(format!("the issuer `{issuer}` has no usable host"));
    }
    let client_id = first("client_id").ok_or("it has no client_id")?;
    let redirect_uri = first("redirect_uri").ok_or(
        "it has no redirect_uri (Kong makes one from the request; the oidc filter needs it written)",
    )?;
    let idp_name = format!("idp-{host}");
    let idp = json!({"name": idp_name, "url": format!("{scheme}://{host}:{port}")});
    let mut scopes = str_list(c, "scopes", &["openid"]);
    if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".into());
    }
    let mut cfg = json!({
        "issuer": issuer,
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scopes": scopes,
        "idp_cluster": idp_name,
        "idp_authority": authority,
    });
    match first("client_auth").as_deref() {
        None | Some("client_secret_basic") | Some("client_secret_post") | Some("none") => {
            if let Some(a) = first("client_auth") {
                cfg["client_auth"] = json!(a);
            }
            if let Some(secret) = first("client_secret") {
                if secret.contains(crate::input::KEPT) {
                    return Err("its client_secret is a decK placeholder: run with --env".into());
                }
                cfg["client_secret"] = json!(secret);
            } else if first("client_auth").as_deref() != Some("none") {
                return Err("it has no client_secret".into());
            }
        }
        Some("private_key_jwt") => {
            let jwk = c
                .get("client_jwk")
                .and_then(|j| j.as_array().and_then(|a| a.first()).or(Some(j)))
                .filter(|j| j.is_object())
                .ok_or("private_key_jwt without a client_jwk")?;
            cfg["client_auth"] = json!("private_key_jwt");
            cfg["client_jwk"] = jwk.clone();
        }
        Some(other) => return Err(format!("`client_auth: {other}` is not supported")),
    }
    if scheme == "http" {
        cfg["allow_insecure_http"] = json!(true);
        notes.push("the issuer is plain HTTP: allowed, as Kong allows it".into());
    }
    // The session: Kong's secret when it is long enough, else one made now.
    let secret = match first("session_secret")
        .filter(|s| s.len() >= 32 && !s.contains(crate::input::KEPT))
    {
        Some(s) => s,
        None => {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
            notes.push("a session secret was made for this output (Kong's was missing or shorter than 32 characters): keep the file private".into());
            base64::engine::general_purpose::STANDARD.encode(b)
        }
    };
    let mut session = json!({"secrets": [{"id": "kong", "secret": secret}]});
    for (kong, ours) in [
        ("session_cookie_name", "cookie_name"),
        ("session_cookie_same_site", "samesite"),
        ("session_cookie_domain", "domain"),
        ("session_cookie_path", "path"),
    ] {
        if let Some(v) = c.get(kong).and_then(Value::as_str) {
            session[ours] = json!(v);
        }
    }
    for (kong, ours) in [
        ("session_absolute_timeout", "lifetime"),
        ("session_idling_timeout", "idle_timeout"),
    ] {
        if let Some(v) = c.get(kong).and_then(Value::as_u64).filter(|v| *v > 0) {
            session[ours] = json!(v);
        }
    }
    cfg["session"] = session;
    let methods = str_list(c, "auth_methods", &[]);
    if methods.is_empty() || methods.iter().any(|m| m == "bearer") {
        cfg["bearer_passthrough"] = json!(true);
        let audiences: Vec<String> = str_list(c, "audience_required", &[])
            .iter()
            .flat_map(|a| a.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        if audiences.is_empty() {
            notes.push(format!(
                "bearer tokens must name `{client_id}` in `aud` (no `audience_required` was given)"
            ));
            cfg["bearer_audiences"] = json!([client_id]);
        } else {
            cfg["bearer_audiences"] = json!(audiences);
        }
    }
    for m in &methods {
        if !matches!(
            m.as_str(),
            "authorization_code" | "session" | "bearer" | "refresh_token"
        ) {
            notes.push(format!(
                "`auth_methods: {m}` is not mapped (introspection: a jwt-auth introspection provider does it)"
            ));
        }
    }
    for h in [
        "upstream_access_token_header",
        "upstream_id_token_header",
        "upstream_user_info_header",
    ] {
        if let Some(v) = c.get(h).and_then(Value::as_str) {
            cfg[h] = json!(v);
        }
    }
    if cfg.get("upstream_user_info_header").is_some() {
        cfg["userinfo"] = json!(true);
    }
    if let Some(claim) = first("consumer_claim") {
        cfg["consumer"] = json!({"id_claim": claim});
        notes.push("`consumer_claim` names the consumer from the token's claim; Kong looks the consumer up in its database".into());
    }
    // groups_required, scopes_required, roles_required: each entry an alternative whose
    // space-separated values must all be in the claim; and the acl, on the groups the
    // IdP signed (Kong's authenticated groups).
    let mut rules: Vec<Value> = Vec::new();
    for (required, claim_field, default_claim) in [
        ("groups_required", "groups_claim", "groups"),
        ("scopes_required", "scopes_claim", "scope"),
        ("roles_required", "roles_claim", "roles"),
    ] {
        let alts = str_list(c, required, &[]);
        if alts.is_empty() {
            continue;
        }
        let claim = first(claim_field).unwrap_or_else(|| default_claim.into());
        let any: Vec<Value> = alts
            .iter()
            .map(|alt| {
                json!({"all": alt.split_whitespace().map(|g| json!({"claim": claim, "contains": g})).collect::<Vec<_>>()})
            })
            .collect();
        rules.push(json!({"any": any}));
    }
    if let Some(Value::Array(acl_rules)) = acl_rules(acl) {
        rules.extend(acl_rules);
        notes.push(
            "with acl: the groups are the ID token's `groups` claim (Kong's authenticated groups)"
                .into(),
        );
    }
    if !rules.is_empty() {
        cfg["requires"] = json!({"claims": rules});
    }
    if let Some(l) = c.get("leeway").and_then(Value::as_u64) {
        cfg["clock_skew_seconds"] = json!(l);
    }
    if c.get("logout_uri_suffix").is_some() {
        notes.push(
            "`logout_uri_suffix` is not mapped: set `logout.path` to the path it ends".into(),
        );
    }
    notes.push("refusals and redirects are the oidc filter's (README, \"oidc\"): an API client gets 401, a browser is sent to log in".into());
    Ok((cfg, idp, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transformer_neither_sets_nor_reads_identity_headers_unverified() {
        let c = json!({
            "add": {"headers": ["X-Consumer-ID:admin", "x-user:$(headers.X-Consumer-Username)",
                "x-org:$(headers.x-consumer-custom-id)", "x-plain:$(headers.x-in)"]},
            "rename": {"headers": ["x-a:x_credential_identifier"]}
        });
        let mut notes = Vec::new();
        let phase = transformer_phase(c.as_object().unwrap(), true, &mut notes);
        assert_eq!(
            phase["add"]["headers"],
            json!({"x-user": "$(consumer.username)", "x-plain": "$(headers.x-in)"})
        );
        assert_eq!(phase.get("rename"), None);
        assert_eq!(notes.len(), 3, "{notes:?}");
        // In the response, an identity name is an ordinary header to set.
        let c = json!({"add": {"headers": ["x-consumer-id:$(headers.x_consumer_id)"]}});
        let phase = transformer_phase(c.as_object().unwrap(), false, &mut notes);
        assert_eq!(
            phase["add"]["headers"],
            json!({"x-consumer-id": "$(consumer.id)"})
        );
    }

    #[test]
    fn a_pem_public_key_becomes_the_jwk_of_the_same_key() {
        use base64::Engine;
        use rsa::pkcs8::EncodePublicKey;
        let key = jwt_mint::Key::rsa("k");
        let jwt_mint::Secret::Rsa(private) = &key.secret else {
            unreachable!()
        };
        let der = private.to_public_key().to_public_key_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
        let lines: Vec<String> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        );
        let want = key.jwk();
        for text in [pem.clone(), pem.replace('\n', ""), pem.replace('\n', "\\n")] {
            let got = rsa_jwk(&text).unwrap();
            assert_eq!((&got["n"], &got["e"]), (&want["n"], &want["e"]), "{text}");
        }
        assert!(
            rsa_jwk("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----").is_err()
        );
    }
}
