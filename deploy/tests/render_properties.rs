//! Properties of rendering: a value that [`check_value`] accepts lands in the rendered
//! manifest as exactly that value, at its place, and changes nothing else in the
//! document (no YAML structure smuggled in through a secret or a registry name); a
//! value it refuses is never rendered. The oidc templates carry the secrets, so they
//! are the ones rendered here, with random values.

use std::collections::BTreeMap;

use portcullis_deploy::{FILTERS, GATEWAY_IMAGE, Inputs, Template, check_value, render};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::Value;

fn template(path: &str) -> Template {
    portcullis_deploy::templates()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|t| t.path.to_str() == Some(path))
        .unwrap_or_else(|| panic!("no template {path}"))
}

fn inputs(registry: &str, client: &str, session: &str) -> Inputs {
    let hex = |s: &str| portcullis_deploy::sha256_hex(s.as_bytes());
    let names = FILTERS.iter().map(|f| f.name).chain([GATEWAY_IMAGE]);
    Inputs {
        registry: registry.to_owned(),
        images: names.clone().map(|n| (n.to_owned(), hex(n))).collect(),
        modules: FILTERS
            .iter()
            .map(|f| (f.name.to_owned(), hex(f.wasm)))
            .collect(),
        oidc_secrets: Some((client.to_owned(), session.to_owned())),
    }
}

/// The one YAML document of a rendered oidc template, or why it does not parse.
fn parse(text: &str) -> Result<Value, String> {
    let docs: Result<Vec<Value>, _> = serde_norway::Deserializer::from_str(text)
        .map(Value::deserialize)
        .collect();
    match docs.map_err(|e| e.to_string())?.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(format!("{} documents", other.len())),
    }
}

/// Where each template keeps the oidc configuration and the image URL.
const OIDC: [(&str, &[&str], &[&str], &str); 2] = [
    (
        "istio/oidc.yaml",
        &["spec", "pluginConfig"],
        &["spec", "url"],
        "oci://",
    ),
    (
        "envoy-gateway/oidc.yaml",
        &["spec", "wasm", "0", "config"],
        &["spec", "wasm", "0", "code", "image", "url"],
        "",
    ),
];

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[*k],
    })
}

/// Renders `path` with these values; None when a value is refused.
fn rendered(path: &str, registry: &str, client: &str, session: &str) -> Option<Value> {
    let vars: BTreeMap<String, String> = inputs(registry, client, session).variables().ok()?;
    let text = render(&template(path), &vars).unwrap_or_else(|e| panic!("{e}"));
    Some(parse(&text).unwrap_or_else(|e| panic!("{path} rendered with {vars:?}: {e}\n{text}")))
}

const REFERENCE: (&str, &str, &str) = (
    "registry.example.com/portcullis",
    "client-secret",
    "a-session-secret-of-32-characters",
);

/// The document with the three values put back to the reference ones, to compare the
/// rest of it.
fn normalized(mut v: Value, config: &[&str], url: &[&str], scheme: &str) -> Value {
    let mut put = |path: &[&str], value: Value| {
        let mut cur = &mut v;
        for k in path {
            cur = match k.parse::<usize>() {
                Ok(i) => &mut cur[i],
                Err(_) => &mut cur[*k],
            };
        }
        *cur = value;
    };
    let digest = portcullis_deploy::sha256_hex(b"oidc");
    put(
        url,
        Value::String(format!("{scheme}{}/oidc@sha256:{digest}", REFERENCE.0)),
    );
    let mut c = config.to_vec();
    c.push("client_secret");
    put(&c, Value::String(REFERENCE.1.to_owned()));
    c.pop();
    c.extend(["session", "secrets", "0", "secret"]);
    put(&c, Value::String(REFERENCE.2.to_owned()));
    v
}

fn registry() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.:/_-]{1,40}",
        "[ -~]{0,40}",
        Just("registry.example.com:5000/team/portcullis".to_owned()),
    ]
}

fn secret() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{0,60}", ".{0,40}", "[ -~]{32,60}"]
}

proptest! {
    #[test]
    fn accepted_values_land_verbatim_and_change_nothing_else(
        registry in registry(),
        client in secret(),
        session in secret(),
    ) {
        let accepted = check_value("REGISTRY", &registry).is_ok()
            && check_value("OIDC_CLIENT_SECRET", &client).is_ok()
            && check_value("OIDC_SESSION_SECRET", &session).is_ok();
        for (path, config, url, scheme) in OIDC {
            let Some(doc) = rendered(path, &registry, &client, &session) else {
                prop_assert!(!accepted, "{path}: accepted values not rendered");
                continue;
            };
            prop_assert!(accepted, "{path}: rendered with a refused value");
            let c = at(&doc, config);
            prop_assert_eq!(&c["client_secret"], &Value::String(client.clone()));
            prop_assert_eq!(&c["session"]["secrets"][0]["secret"], &Value::String(session.clone()));
            let digest = portcullis_deploy::sha256_hex(b"oidc");
            prop_assert_eq!(
                at(&doc, url),
                &Value::String(format!("{scheme}{registry}/oidc@sha256:{digest}"))
            );
            let reference = rendered(path, REFERENCE.0, REFERENCE.1, REFERENCE.2);
            prop_assert_eq!(Some(normalized(doc, config, url, scheme)), reference);
        }
    }
}
