//! The imported configuration as an Envoy bootstrap running the same filters: one
//! listener with the edge the gateway holds (normalized paths, encoded slashes refused,
//! the client's forwarding and identity headers dropped), a cluster per service, the
//! routes in the gateway's order, and every filter instance in the chain, disabled by
//! default and enabled on the routes that list it.

use serde_json::{Value, json};

/// The buffer filter that holds a service's body limit.
const BUFFER: &str = "envoy.filters.http.buffer";

/// The order filter kinds run in (Kong's plugin priorities).
const KINDS: [&str; 5] = [
    "oidc",
    "jwt-auth",
    "key-auth",
    "tier-limiter",
    "header-forwarder",
];

fn split_addr(a: &str) -> (String, u16) {
    match a.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_matches(['[', ']']).to_owned(),
            p.parse().unwrap_or(80),
        ),
        None => (a.to_owned(), 80),
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `host:port` and TLS of a service URL.
fn endpoint(url: &str) -> (bool, String, u16) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let authority = rest.split('/').next().unwrap_or("");
    let https = scheme == "https";
    match authority.rsplit_once(':') {
        Some((h, p)) => (
            https,
            h.trim_matches(['[', ']']).to_owned(),
            p.parse().unwrap_or(if https { 443 } else { 80 }),
        ),
        None => (https, authority.to_owned(), if https { 443 } else { 80 }),
    }
}

fn base_path(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/')
        .map_or("/".to_owned(), |i| rest[i..].to_owned())
}

fn cluster(service: &Value) -> Value {
    let name = service["name"].as_str().unwrap_or("?");
    let urls: Vec<String> = match (&service["url"], &service["urls"]) {
        (Value::String(u), _) => vec![u.clone()],
        (_, Value::Array(a)) => a
            .iter()
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let endpoints: Vec<Value> = urls
        .iter()
        .map(|u| {
            let (_, h, p) = endpoint(u);
            json!({"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}})
        })
        .collect();
    let https = urls.first().is_some_and(|u| endpoint(u).0);
    let any_name = urls
        .iter()
        .any(|u| endpoint(u).1.parse::<std::net::IpAddr>().is_err());
    let ms = |k: &str, d: u64| format!("{}s", service[k].as_u64().unwrap_or(d) as f64 / 1000.0);
    let mut c = json!({
        "name": name,
        "type": if any_name { "STRICT_DNS" } else { "STATIC" },
        "connect_timeout": ms("connect_timeout_ms", 1000),
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    });
    if name == "ratelimit" {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    if https {
        let sni = urls.first().map(|u| endpoint(u).1).unwrap_or_default();
        c["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": sni,
                "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"}}}
            }
        });
    }
    c
}

/// One Envoy route per path of `route`, with `service`'s path put before the request's
/// as the gateway does (Kong's v0 handling).
/// How specific an Envoy route is, as the gateway ranks routes within a host set:
/// regex (by priority) over prefixes (by length), then methods, then headers.
type Rank = (i64, usize, bool, usize);

fn routes(route: &Value, service: &Value) -> Vec<(Rank, Value)> {
    let base = service["url"]
        .as_str()
        .or_else(|| service["urls"][0].as_str())
        .map(base_path)
        .unwrap_or_else(|| "/".into());
    let m = &route["match"];
    let strip = route["strip_path"].as_bool().unwrap_or(true);
    let mut headers: Vec<Value> = Vec::new();
    if let Some(methods) = m["methods"].as_array().filter(|a| !a.is_empty()) {
        let alts: Vec<String> = methods
            .iter()
            .filter_map(|x| x.as_str().map(regex_escape))
            .collect();
        headers.push(
            json!({"name": ":method", "string_match": {"safe_regex": {"regex": alts.join("|")}}}),
        );
    }
    if let Some(h) = m["headers"].as_object() {
        for (k, v) in h {
            headers.push(json!({"name": k, "string_match": {"exact": v}}));
        }
    }
    let mut action = json!({"cluster": route["service"], "timeout": "60s"});
    if !route["preserve_host"].as_bool().unwrap_or(false) {
        action["auto_host_rewrite"] = json!(true);
    }
    let rewrite = |pattern: String| -> Option<Value> {
        let trimmed = base.trim_end_matches('/');
        match (strip, base.as_str()) {
            (true, "/") => {
                Some(json!({"pattern": {"regex": format!("{pattern}/?")}, "substitution": "/"}))
            }
            (true, _) => Some(
                json!({"pattern": {"regex": format!("{pattern}(/?)")}, "substitution": format!("{trimmed}\\1")}),
            ),
            (false, "/") => None,
            (false, _) => Some(
                json!({"pattern": {"regex": "^/(.*)"}, "substitution": format!("{trimmed}/\\1")}),
            ),
        }
    };
    let filters: Vec<&str> = route["filters"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut per_filter = serde_json::Map::new();
    for f in &filters {
        per_filter.insert(
            f.to_string(),
            // Enables a filter the chain disables by default. The wasm filter takes no
            // per-route configuration: an optional empty one only carries the flag.
            json!({"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                "is_optional": true,
                "config": {"@type": "type.googleapis.com/google.protobuf.Empty"}}),
        );
    }
    // The service's body limit: Envoy's buffer filter answers 413 above it.
    if let Some(max) = service["max_request_body_bytes"].as_u64() {
        per_filter.insert(
            BUFFER.into(),
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
                "buffer": {"max_request_bytes": max}}),
        );
    }
    let mut out = Vec::new();
    let methods = m["methods"].as_array().is_some_and(|a| !a.is_empty());
    let header_count = m["headers"].as_object().map_or(0, |h| h.len());
    let mut add = |matcher: Value, prefix_pattern: String, rank: (i64, usize)| {
        let mut a = action.clone();
        if let Some(rw) = rewrite(prefix_pattern) {
            a["regex_rewrite"] = rw;
        }
        let mut mm = matcher;
        if !headers.is_empty() {
            mm["headers"] = json!(headers);
        }
        out.push((
            (rank.0, rank.1, methods, header_count),
            json!({"name": route["name"], "match": mm, "route": a, "typed_per_filter_config": per_filter}),
        ));
    };
    let priority = m["regex_priority"].as_i64().unwrap_or(0);
    for re in m["regex_paths"].as_array().into_iter().flatten() {
        let Some(re) = re.as_str() else { continue };
        // Envoy matches a route's regex against the whole path: `.*` keeps Kong's
        // start-only anchoring.
        add(
            json!({"safe_regex": {"regex": format!("(?:{re}).*")}}),
            format!("^(?:{re})"),
            (1 + priority.max(-1_000_000), usize::MAX),
        );
    }
    let paths: Vec<&str> = m["paths"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_else(|| vec!["/"]);
    for p in if paths.is_empty() { vec!["/"] } else { paths } {
        add(
            json!({"prefix": p}),
            format!("^{}", regex_escape(p)),
            (i64::MIN, p.len()),
        );
    }
    out
}

/// The bootstrap for `config` (the gateway configuration `map` made).
pub fn bootstrap(config: &Value) -> Value {
    let empty = Vec::new();
    let services = config["services"].as_array().unwrap_or(&empty);
    let find = |name: &Value| {
        services
            .iter()
            .find(|s| &s["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    // Virtual hosts by host set, routes in the gateway's order within each.
    let mut vhosts: Vec<(Vec<String>, Vec<(Rank, Value)>)> = Vec::new();
    for r in config["routes"].as_array().unwrap_or(&empty) {
        let mut hosts: Vec<String> = r["match"]["hosts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        hosts.sort();
        let entries = routes(r, &find(&r["service"]));
        match vhosts.iter_mut().find(|(h, _)| *h == hosts) {
            Some((_, list)) => list.extend(entries),
            None => vhosts.push((hosts, entries)),
        }
    }
    let virtual_hosts: Vec<Value> = vhosts
        .into_iter()
        .enumerate()
        .map(|(i, (hosts, mut list))| {
            // The most specific first: Envoy takes the first route that matches.
            // (A stable sort keeps the configuration's order among equals.)
            list.sort_by(|a, b| b.0.cmp(&a.0));
            let domains = if hosts.is_empty() {
                vec!["*".to_owned()]
            } else {
                hosts
                    .iter()
                    .flat_map(|h| [h.clone(), format!("{h}:*")])
                    .collect()
            };
            json!({"name": format!("vhost-{i}"), "domains": domains,
                "routes": list.into_iter().map(|(_, r)| r).collect::<Vec<_>>()})
        })
        .collect();
    // Every filter instance, in Kong's order, disabled unless a route enables it.
    let mut filters: Vec<&Value> = config["filters"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .collect();
    filters.sort_by_key(|f| {
        let name = f["name"].as_str().unwrap_or("");
        KINDS
            .iter()
            .position(|k| name.starts_with(&format!("{k}-")))
            .unwrap_or(KINDS.len())
    });
    let mut http_filters: Vec<Value> = filters
        .iter()
        .map(|f| {
            json!({
                "name": f["name"],
                "disabled": true,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": f["name"],
                        "root_id": f["name"],
                        "vm_config": {
                            "vm_id": f["name"],
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": f["wasm"]}}
                        },
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": f["config"].to_string()
                        }
                    }
                }
            })
        })
        .collect();
    // After authentication, before the limiter (Kong's request-size-limiting runs
    // between them), only where a route sets a limit.
    let at = filters
        .iter()
        .position(|f| {
            let n = f["name"].as_str().unwrap_or("");
            n.starts_with("tier-limiter-") || n.starts_with("header-forwarder-")
        })
        .unwrap_or(http_filters.len());
    http_filters.insert(
        at,
        json!({"name": BUFFER, "disabled": true, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": 10485760}}),
    );
    http_filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    let (lh, lp) = split_addr(
        config["listeners"][0]["address"]
            .as_str()
            .unwrap_or("127.0.0.1:8000"),
    );
    let (ah, ap) = split_addr(
        config["admin"]["address"]
            .as_str()
            .unwrap_or("127.0.0.1:8100"),
    );
    let remove = |h: &str| json!({"remove": h});
    json!({
        "static_resources": {
            "listeners": [{
                "name": "proxy",
                "address": {"socket_address": {"address": lh, "port_value": lp}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "normalize_path": true,
                        "common_http_protocol_options": {"headers_with_underscores_action": "DROP_HEADER"},
                        "merge_slashes": true,
                        "path_with_escaped_slashes_action": "REJECT_REQUEST",
                        "use_remote_address": true,
                        "preserve_external_request_id": true,
                        "early_header_mutation_extensions": [{
                            "name": "envoy.http.early_header_mutation.header_mutation",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                                "mutations": [
                                    {"remove_on_match": {"key_matcher": {"prefix": "x-consumer-"}}},
                                    remove("x-credential-identifier"),
                                    remove("x-anonymous-consumer"),
                                    remove("x-forwarded-for"),
                                    remove("x-forwarded-host"),
                                    remove("x-forwarded-port"),
                                    remove("forwarded"),
                                    remove("x-real-ip"),
                                ]
                            }
                        }],
                        "route_config": {"virtual_hosts": virtual_hosts},
                        "http_filters": http_filters,
                    }
                }]}]
            }],
            "clusters": services.iter().map(cluster).collect::<Vec<_>>(),
        },
        "admin": {"address": {"socket_address": {"address": ah, "port_value": ap}}}
    })
}
