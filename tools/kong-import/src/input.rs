//! Reading a Kong declarative configuration: decK's `${{ env "DECK_X" }}` placeholders,
//! YAML or JSON, `_format_version` 1.1, 2.1 and 3.0, and every entity nested or at
//! the top level with references by name or id, into one flat model.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// What a placeholder becomes when the environment is not asked.
pub const KEPT: &str = "${{";

/// decK's placeholders, rendered in the raw text before it is parsed (as decK does);
/// lines that are comments are left alone. `env`: take each value from the
/// environment (`None`: keep the placeholders as they are). Names must start with
/// `DECK_`; a name that is not set is an error.
pub fn render_placeholders(
    text: &str,
    env: Option<&dyn Fn(&str) -> Option<String>>,
) -> Result<String, String> {
    let Some(env) = env else {
        return Ok(text.to_owned());
    };
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') || !line.contains("${{") {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 3..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("an unclosed `${{{{` in: {}", line.trim()))?;
            let expr = after[..end].trim();
            let mut parts = expr.split('|').map(str::trim);
            let call = parts.next().unwrap_or("");
            let name = call
                .strip_prefix("env")
                .map(str::trim)
                .and_then(|n| n.strip_prefix('"'))
                .and_then(|n| n.strip_suffix('"'))
                .ok_or_else(|| format!("`${{{{ {expr} }}}}`: only `env \"DECK_NAME\"` is known"))?;
            if !name.starts_with("DECK_") {
                return Err(format!(
                    "environment variables in the file must be prefixed with 'DECK_', found: '{name}'"
                ));
            }
            let value = env(name).ok_or_else(|| {
                format!("environment variable '{name}' present in the file but not set")
            })?;
            // toInt / toBool / toFloat: the value as YAML reads it, unquoted.
            out.push_str(&value);
            for pipe in parts {
                if !matches!(pipe, "toInt" | "toBool" | "toFloat") && !pipe.starts_with("indent") {
                    return Err(format!("`${{{{ {expr} }}}}`: unknown function `{pipe}`"));
                }
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[derive(Debug, Clone, Default)]
pub struct Service {
    pub name: String,
    pub id: Option<String>,
    pub protocol: String,
    pub host: String,
    pub port: u64,
    pub path: Option<String>,
    pub connect_timeout: u64,
    pub read_timeout: u64,
    pub write_timeout: u64,
    pub retries: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Route {
    pub name: String,
    pub id: Option<String>,
    /// The service's name.
    pub service: Option<String>,
    pub paths: Vec<String>,
    pub regex_paths: Vec<String>,
    pub hosts: Vec<String>,
    pub methods: Vec<String>,
    pub headers: BTreeMap<String, Vec<String>>,
    pub strip_path: bool,
    pub preserve_host: bool,
    pub path_handling: String,
    pub protocols: Vec<String>,
    pub regex_priority: i64,
}

#[derive(Debug, Clone, Default)]
pub struct JwtSecret {
    pub key: String,
    pub algorithm: String,
    pub secret: Option<String>,
    pub rsa_public_key: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Consumer {
    pub username: Option<String>,
    pub id: Option<String>,
    pub custom_id: Option<String>,
    /// key-auth keys, in clear as Kong holds them, with their credential ids.
    pub keys: Vec<(String, Option<String>)>,
    pub jwt_secrets: Vec<JwtSecret>,
    /// ACL groups (the `acl` plugin).
    pub acl_groups: Vec<String>,
    /// Consumer groups (Kong Enterprise).
    pub groups: Vec<String>,
}

impl Consumer {
    /// Kong's X-Consumer-ID: the id, or (none given) the username.
    pub fn key(&self) -> String {
        self.id
            .clone()
            .or_else(|| self.username.clone())
            .unwrap_or_else(|| self.custom_id.clone().unwrap_or_default())
    }

    pub fn label(&self) -> String {
        self.username
            .clone()
            .or_else(|| self.id.clone())
            .or_else(|| self.custom_id.clone())
            .unwrap_or_else(|| "?".into())
    }
}

/// Where a plugin applies (names, resolved).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub service: Option<String>,
    pub route: Option<String>,
    pub consumer: Option<String>,
    pub consumer_group: Option<String>,
}

impl Scope {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("consumer", &self.consumer),
            ("consumer group", &self.consumer_group),
            ("route", &self.route),
            ("service", &self.service),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k} `{v}`"));
            }
        }
        if parts.is_empty() {
            "global".into()
        } else {
            parts.join(", ")
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plugin {
    pub name: String,
    pub config: Map<String, Value>,
    pub scope: Scope,
    pub enabled: bool,
}

#[derive(Debug, Default)]
pub struct Kong {
    pub format: String,
    pub services: Vec<Service>,
    pub routes: Vec<Route>,
    pub consumers: Vec<Consumer>,
    pub plugins: Vec<Plugin>,
    /// Upstream name → (target, weight).
    pub upstreams: BTreeMap<String, Vec<(String, u64)>>,
    /// Top-level keys not understood, for the report.
    pub ignored: Vec<String>,
}

fn to_json(v: serde_norway::Value) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("not a JSON-shaped document: {e}"))
}

fn s(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn strings(v: &Value, k: &str) -> Vec<String> {
    match v.get(k) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| match x {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn num(v: &Value, k: &str, default: u64) -> Result<u64, String> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("`{k}` is not a whole number: {n}")),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| format!("`{k}` is not a number: `{s}`")),
        Some(other) => Err(format!("`{k}` is not a number: {other}")),
    }
}

fn list<'a>(v: &'a Value, k: &str) -> &'a [Value] {
    v.get(k)
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
}

/// A reference: a string, or decK's `{name|id|username: ...}`.
fn reference(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => ["name", "username", "id"]
            .iter()
            .find_map(|f| o.get(*f).and_then(Value::as_str).map(str::to_owned)),
        _ => None,
    }
}

/// A Kong 1.1/2.1 path is a regex when it holds a character outside this class.
fn regex_like_2x(path: &str) -> bool {
    !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._~/%-".contains(&b))
}

impl Kong {
    pub fn parse(text: &str) -> Result<Kong, String> {
        let yaml: serde_norway::Value =
            serde_norway::from_str(text).map_err(|e| format!("not YAML or JSON: {e}"))?;
        let doc = to_json(yaml)?;
        let Some(top) = doc.as_object() else {
            return Err("the document is not a mapping".into());
        };
        let format = s(&doc, "_format_version").ok_or("`_format_version` is missing")?;
        if !matches!(format.as_str(), "1.1" | "2.1" | "3.0") {
            return Err(format!(
                "`_format_version` {format}: expected 1.1, 2.1 or 3.0"
            ));
        }
        let mut k = Kong {
            format,
            ..Kong::default()
        };
        for key in top.keys() {
            if !matches!(
                key.as_str(),
                "_format_version"
                    | "_transform"
                    | "_comment"
                    | "_ignore"
                    | "_info"
                    | "_workspace"
                    | "_konnect"
                    | "services"
                    | "routes"
                    | "consumers"
                    | "plugins"
                    | "upstreams"
                    | "targets"
                    | "consumer_groups"
                    | "jwt_secrets"
                    | "keyauth_credentials"
                    | "acls"
            ) {
                k.ignored.push(key.clone());
            }
        }
        for u in list(&doc, "upstreams") {
            let name = s(u, "name").ok_or("an upstream has no name")?;
            let mut targets = Vec::new();
            for t in list(u, "targets") {
                targets.push(target(t)?);
            }
            k.upstreams.insert(name, targets);
        }
        for t in list(&doc, "targets") {
            let up = reference(t, "upstream").ok_or("a target names no upstream")?;
            let tg = target(t)?;
            k.upstreams.entry(up).or_default().push(tg);
        }
        for (si, sv) in list(&doc, "services").iter().enumerate() {
            let svc = k.service(sv, si)?;
            for (ri, rv) in list(sv, "routes").iter().enumerate() {
                // Unnamed routes are named after their service, so two services'
                // unnamed routes never share a name.
                let mut r = k.route(rv, &format!("{}-route-{ri}", svc.name))?;
                r.service = Some(svc.name.clone());
                k.push_route(rv, r);
            }
            k.nested_plugins(
                sv,
                Scope {
                    service: Some(svc.name.clone()),
                    ..Scope::default()
                },
            );
            k.services.push(svc);
        }
        for (ri, rv) in list(&doc, "routes").iter().enumerate() {
            let mut r = k.route(rv, &format!("route-{ri}"))?;
            r.service = reference(rv, "service");
            k.push_route(rv, r);
        }
        for cv in list(&doc, "consumers") {
            let mut c = Consumer {
                username: s(cv, "username"),
                id: s(cv, "id"),
                custom_id: s(cv, "custom_id"),
                ..Consumer::default()
            };
            if c.username.is_none() && c.id.is_none() && c.custom_id.is_none() {
                return Err("a consumer has no username, id or custom_id".into());
            }
            for kv in list(cv, "keyauth_credentials") {
                c.keys.push((
                    s(kv, "key").ok_or("a keyauth_credential has no key")?,
                    s(kv, "id"),
                ));
            }
            for jv in list(cv, "jwt_secrets") {
                c.jwt_secrets.push(jwt_secret(jv)?);
            }
            for av in list(cv, "acls") {
                c.acl_groups
                    .push(s(av, "group").ok_or("an acl has no group")?);
            }
            for g in list(cv, "groups") {
                if let Some(n) = s(g, "name") {
                    c.groups.push(n);
                }
            }
            let label = c.label();
            k.nested_plugins(
                cv,
                Scope {
                    consumer: Some(label),
                    ..Scope::default()
                },
            );
            k.consumers.push(c);
        }
        // Kong's native shape: credentials at the top level, naming their consumer.
        for (key, what) in [("keyauth_credentials", 0), ("jwt_secrets", 1), ("acls", 2)] {
            for v in list(&doc, key) {
                let who = reference(v, "consumer")
                    .ok_or_else(|| format!("an entry of `{key}` names no consumer"))?;
                let c = k.consumer_mut(&who).ok_or_else(|| {
                    format!("invalid reference 'consumer: {who}' (no such entry in 'consumers')")
                })?;
                match what {
                    0 => c.keys.push((
                        s(v, "key").ok_or("a keyauth_credential has no key")?,
                        s(v, "id"),
                    )),
                    1 => c.jwt_secrets.push(jwt_secret(v)?),
                    _ => c
                        .acl_groups
                        .push(s(v, "group").ok_or("an acl has no group")?),
                }
            }
        }
        for gv in list(&doc, "consumer_groups") {
            let name = s(gv, "name").ok_or("a consumer group has no name")?;
            for m in list(gv, "consumers") {
                let who = s(m, "username")
                    .or_else(|| s(m, "id"))
                    .or_else(|| m.as_str().map(str::to_owned))
                    .unwrap_or_default();
                if let Some(c) = k.consumer_mut(&who) {
                    c.groups.push(name.clone());
                }
            }
            k.nested_plugins(
                gv,
                Scope {
                    consumer_group: Some(name.clone()),
                    ..Scope::default()
                },
            );
        }
        for pv in list(&doc, "plugins") {
            let scope = Scope {
                service: reference(pv, "service"),
                route: reference(pv, "route"),
                consumer: reference(pv, "consumer"),
                consumer_group: reference(pv, "consumer_group"),
            };
            k.push_plugin(pv, scope);
        }
        k.resolve()?;
        Ok(k)
    }

    fn consumer_mut(&mut self, who: &str) -> Option<&mut Consumer> {
        self.consumers
            .iter_mut()
            .find(|c| c.username.as_deref() == Some(who) || c.id.as_deref() == Some(who))
    }

    fn service(&self, v: &Value, i: usize) -> Result<Service, String> {
        let name = s(v, "name")
            .or_else(|| s(v, "id"))
            .unwrap_or_else(|| format!("service-{i}"));
        let at = |e: String| format!("service `{name}`: {e}");
        let mut svc = Service {
            name: name.clone(),
            id: s(v, "id"),
            protocol: s(v, "protocol").unwrap_or_else(|| "http".into()),
            host: s(v, "host").unwrap_or_default(),
            port: num(v, "port", 80).map_err(at)?,
            path: s(v, "path"),
            connect_timeout: num(v, "connect_timeout", 60_000).map_err(at)?,
            read_timeout: num(v, "read_timeout", 60_000).map_err(at)?,
            write_timeout: num(v, "write_timeout", 60_000).map_err(at)?,
            retries: num(v, "retries", 5).map_err(at)?,
        };
        if let Some(url) = s(v, "url") {
            let (scheme, rest) = url
                .split_once("://")
                .ok_or_else(|| at(format!("url `{url}` has no scheme")))?;
            svc.protocol = scheme.to_owned();
            let (authority, path) = match rest.find('/') {
                Some(p) => (&rest[..p], Some(rest[p..].to_owned())),
                None => (rest, None),
            };
            svc.path = path.filter(|p| p != "/");
            match authority.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                    svc.host = h.to_owned();
                    svc.port = p
                        .parse()
                        .map_err(|_| at(format!("url `{url}`: bad port")))?;
                }
                _ => {
                    svc.host = authority.to_owned();
                    svc.port = if scheme == "https" { 443 } else { 80 };
                }
            }
        }
        if svc.host.is_empty() {
            return Err(at("no host or url".into()));
        }
        Ok(svc)
    }

    /// A route and the plugins nested under it.
    fn push_route(&mut self, v: &Value, r: Route) {
        self.nested_plugins(
            v,
            Scope {
                route: Some(r.name.clone()),
                ..Scope::default()
            },
        );
        self.routes.push(r);
    }

    /// A route; `unnamed` is its name when it has neither a name nor an id.
    fn route(&self, v: &Value, unnamed: &str) -> Result<Route, String> {
        let name = s(v, "name")
            .or_else(|| s(v, "id"))
            .unwrap_or_else(|| unnamed.to_owned());
        let mut r = Route {
            name,
            id: s(v, "id"),
            hosts: strings(v, "hosts"),
            methods: strings(v, "methods")
                .into_iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
            strip_path: v.get("strip_path").and_then(Value::as_bool).unwrap_or(true),
            preserve_host: v
                .get("preserve_host")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            path_handling: s(v, "path_handling").unwrap_or_else(|| "v0".into()),
            protocols: strings(v, "protocols"),
            regex_priority: v.get("regex_priority").and_then(Value::as_i64).unwrap_or(0),
            ..Route::default()
        };
        for p in strings(v, "paths") {
            if let Some(re) = p.strip_prefix('~') {
                r.regex_paths.push(re.to_owned());
            } else if self.format != "3.0" && regex_like_2x(&p) {
                r.regex_paths.push(p);
            } else {
                r.paths.push(p);
            }
        }
        if let Some(Value::Object(h)) = v.get("headers") {
            for (name, vals) in h {
                let vals = match vals {
                    Value::Array(a) => a
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect(),
                    Value::String(s) => vec![s.clone()],
                    _ => Vec::new(),
                };
                r.headers.insert(name.to_ascii_lowercase(), vals);
            }
        }
        Ok(r)
    }

    fn nested_plugins(&mut self, parent: &Value, scope: Scope) {
        for pv in list(parent, "plugins") {
            // A nested plugin may still name more of its scope (a consumer, say).
            let mut sc = scope.clone();
            sc.service = sc.service.or_else(|| reference(pv, "service"));
            sc.route = sc.route.or_else(|| reference(pv, "route"));
            sc.consumer = sc.consumer.or_else(|| reference(pv, "consumer"));
            sc.consumer_group = sc
                .consumer_group
                .or_else(|| reference(pv, "consumer_group"));
            self.push_plugin(pv, sc);
        }
    }

    fn push_plugin(&mut self, v: &Value, scope: Scope) {
        let Some(name) = s(v, "name") else { return };
        self.plugins.push(Plugin {
            name,
            config: v
                .get("config")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            scope,
            enabled: v.get("enabled").and_then(Value::as_bool).unwrap_or(true),
        });
    }

    /// References by id become names; every reference must resolve.
    fn resolve(&mut self) -> Result<(), String> {
        let services: Vec<(String, Option<String>)> = self
            .services
            .iter()
            .map(|s| (s.name.clone(), s.id.clone()))
            .collect();
        let routes: Vec<(String, Option<String>)> = self
            .routes
            .iter()
            .map(|r| (r.name.clone(), r.id.clone()))
            .collect();
        let find = |list: &[(String, Option<String>)], what: &str, r: &str| {
            list.iter()
                .find(|(n, id)| n == r || id.as_deref() == Some(r))
                .map(|(n, _)| n.clone())
                .ok_or_else(|| {
                    format!("invalid reference '{what}: {r}' (no such entry in '{what}s')")
                })
        };
        for r in &mut self.routes {
            if let Some(sv) = &r.service {
                r.service = Some(find(&services, "service", sv)?);
            }
        }
        let consumers: Vec<String> = self.consumers.iter().map(Consumer::label).collect();
        let ids: Vec<(String, Option<String>)> = self
            .consumers
            .iter()
            .map(|c| (c.label(), c.id.clone()))
            .collect();
        for p in &mut self.plugins {
            if let Some(sv) = &p.scope.service {
                p.scope.service = Some(find(&services, "service", sv)?);
            }
            if let Some(rv) = &p.scope.route {
                p.scope.route = Some(find(&routes, "route", rv)?);
            }
            if let Some(cv) = &p.scope.consumer {
                if !consumers.contains(cv) {
                    p.scope.consumer = Some(find(&ids, "consumer", cv)?);
                }
            }
        }
        Ok(())
    }
}

fn target(t: &Value) -> Result<(String, u64), String> {
    let mut tg = s(t, "target").ok_or("a target has no `target`")?;
    // Kong's default target port.
    if !tg.contains(':') || tg.ends_with(']') {
        tg.push_str(":8000");
    }
    Ok((tg, num(t, "weight", 100)?))
}

/// A jwt_secret; Kong makes up a missing `key`, which no token can know: such a
/// secret is kept with an empty key and left out when mapped.
fn jwt_secret(v: &Value) -> Result<JwtSecret, String> {
    Ok(JwtSecret {
        key: s(v, "key").unwrap_or_default(),
        algorithm: s(v, "algorithm").unwrap_or_else(|| "HS256".into()),
        secret: s(v, "secret"),
        rsa_public_key: s(v, "rsa_public_key"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_take_the_environment_as_deck_does() {
        let env = |n: &str| (n == "DECK_PORT").then(|| "8080".to_owned());
        let text = "port: ${{ env \"DECK_PORT\" | toInt }}\n# ${{ env \"NOPE\" }}\n";
        assert_eq!(
            render_placeholders(text, Some(&env)).unwrap(),
            "port: 8080\n# ${{ env \"NOPE\" }}\n"
        );
        assert!(
            render_placeholders("a: ${{ env \"HOME\" }}", Some(&env))
                .unwrap_err()
                .contains("prefixed with 'DECK_'")
        );
        assert!(
            render_placeholders("a: ${{ env \"DECK_X\" }}", Some(&env))
                .unwrap_err()
                .contains("not set")
        );
        assert_eq!(
            render_placeholders("a: ${{ env \"DECK_X\" }}", None).unwrap(),
            "a: ${{ env \"DECK_X\" }}"
        );
    }

    #[test]
    fn nested_and_top_level_shapes_read_alike() {
        let nested = r#"
_format_version: "3.0"
services:
  - name: orders
    url: http://orders.internal:9000/api
    routes:
      - name: list
        paths: [/orders, '~/orders/\d+$']
        plugins: [{name: rate-limiting, config: {minute: 5}}]
    plugins: [{name: key-auth}]
consumers:
  - username: ada
    keyauth_credentials: [{key: k1}]
    acls: [{group: ops}]
"#;
        let flat = r#"
_format_version: "3.0"
services: [{name: orders, protocol: http, host: orders.internal, port: 9000, path: /api}]
routes: [{name: list, service: {name: orders}, paths: [/orders, "~/orders/\\d+$"]}]
consumers: [{username: ada}]
keyauth_credentials: [{consumer: ada, key: k1}]
acls: [{consumer: ada, group: ops}]
plugins:
  - {name: rate-limiting, route: list, config: {minute: 5}}
  - {name: key-auth, service: orders}
"#;
        for text in [nested, flat] {
            let k = Kong::parse(text).unwrap();
            let s = &k.services[0];
            assert_eq!(
                (s.host.as_str(), s.port, s.path.as_deref()),
                ("orders.internal", 9000, Some("/api"))
            );
            let r = &k.routes[0];
            assert_eq!(r.service.as_deref(), Some("orders"));
            assert_eq!(r.paths, ["/orders"]);
            assert_eq!(r.regex_paths, ["/orders/\\d+$"]);
            assert_eq!(k.consumers[0].keys, [("k1".to_owned(), None)]);
            assert_eq!(k.consumers[0].acl_groups, ["ops"]);
            let rl = k
                .plugins
                .iter()
                .find(|p| p.name == "rate-limiting")
                .unwrap();
            assert_eq!(rl.scope.route.as_deref(), Some("list"));
            let ka = k.plugins.iter().find(|p| p.name == "key-auth").unwrap();
            assert_eq!(ka.scope.service.as_deref(), Some("orders"));
        }
    }

    #[test]
    fn unnamed_routes_of_two_services_get_two_names() {
        let k = Kong::parse(
            "_format_version: \"3.0\"\nservices:\n  - {name: a, url: http://a, routes: [{paths: [/a]}]}\n  - {name: b, url: http://b, routes: [{paths: [/b]}]}\n",
        )
        .unwrap();
        assert_eq!(k.routes[0].name, "a-route-0");
        assert_eq!(k.routes[1].name, "b-route-0");
    }

    #[test]
    fn format_versions_decide_what_a_regex_path_is() {
        let doc = |v: &str| {
            format!(
                "_format_version: \"{v}\"\nroutes: [{{name: r, paths: [\"/users/\\\\d+\", /plain]}}]\n"
            )
        };
        let k = Kong::parse(&doc("1.1")).unwrap();
        assert_eq!(k.routes[0].regex_paths, ["/users/\\d+"]);
        assert_eq!(k.routes[0].paths, ["/plain"]);
        let k = Kong::parse(&doc("3.0")).unwrap();
        assert!(k.routes[0].regex_paths.is_empty());
        for bad in [
            "_format_version: \"4.0\"",
            "services: []",
            "[]",
            "services: {",
        ] {
            assert!(Kong::parse(bad).is_err(), "{bad}");
        }
        let dangling = "_format_version: \"3.0\"\nplugins: [{name: cors, service: nope}]";
        assert!(
            Kong::parse(dangling)
                .unwrap_err()
                .contains("'service: nope'")
        );
    }
}
