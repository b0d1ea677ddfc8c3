//! The manifests of `deploy/`, rendered by the code `cargo xtask deploy-manifests`
//! uses, checked without a cluster:
//!
//! - every Kubernetes resource against the API schemas of Kubernetes 1.30 (the oldest
//!   with the preStop `sleep` action on by default) and 1.37, with kubernetes-validate
//!   in strict mode (an unknown or misspelt field is an error, where an API server
//!   would drop it silently);
//! - every Istio and Envoy Gateway resource against the fields of the CRD versions we
//!   target, encoded below (required fields, enums, types, patterns, list bounds, the
//!   CEL rules that apply, unknown fields): Istio 1.30 (`extensions.istio.io/v1alpha1`
//!   WasmPlugin, `networking.istio.io/v1` ServiceEntry and DestinationRule) and Envoy
//!   Gateway 1.9 (`gateway.envoyproxy.io/v1alpha1` EnvoyExtensionPolicy, EnvoyProxy,
//!   ClientTrafficPolicy);
//! - each filter's image pinned by digest with `sha256` equal to it, and each module
//!   annotation equal to the SHA-256 of the built `.wasm`
//!   (`target/wasm32-wasip1/release/`);
//! - every filter configuration in them accepted by the built filter (the gateway's
//!   `validate`: module compiled, `on_configure` run), the gateway's ConfigMap included;
//! - the clusters the filters call exist (Envoy Gateway: in the bootstrap of
//!   `envoyproxy.yaml`, which a real Envoy loads; Istio: a ServiceEntry or Service of
//!   `deploy/`), and the chains hold the same filters as the single-filter files;
//! - the gateway's Deployment: probes on `/ready` and `/healthz` at its admin port, a
//!   drain that fits `terminationGracePeriodSeconds`, and, for every Deployment,
//!   non-root, read-only, no privilege escalation, resource requests;
//! - the systemd unit: `systemd-analyze verify`, and `security` rating it 2.0 or less.
//!
//! What it cannot check here: what only a cluster decides (admission webhooks, the
//! CEL rules not encoded here, that Istio or Envoy Gateway reconcile the resources and
//! pull the images, that pods start and get ready). The filters' image digests are
//! those of the images `cargo xtask oci` makes of the built modules; the gateway's is a
//! stand-in (its image needs a release build; `host/gateway/tests/images.rs` checks it).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_deploy::{FILTERS, GATEWAY_IMAGE, Inputs, RenderedSet};
use serde::Deserialize;
use serde_json::Value;

const REGISTRY: &str = "registry.example.com/portcullis";

/// Kubernetes versions the manifests are validated against.
const KUBERNETES: [&str; 2] = ["1.30.0", "1.37.0"];

fn wasm_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PORTCULLIS_WASM_DIR") {
        return PathBuf::from(d);
    }
    portcullis_deploy::deploy_dir().join("../target/wasm32-wasip1/release")
}

/// The built module's SHA-256, by filter name.
fn modules() -> BTreeMap<String, String> {
    FILTERS
        .iter()
        .map(|f| {
            let path = wasm_dir().join(f.wasm);
            let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}: build the filters first with `cargo xtask build`",
                    path.display()
                )
            });
            (f.name.to_owned(), portcullis_deploy::sha256_hex(&bytes))
        })
        .collect()
}

/// The image digest per image. A filter's is the digest of the image `cargo xtask oci`
/// makes of the built module (its compat variant, made here by the same code): the
/// manifests pin what would be pushed. The gateway's image needs a release build of
/// the gateway, so it keeps a stand-in here; `host/gateway/tests/images.rs` checks
/// that image.
fn image_digest(name: &str) -> String {
    let Some(filter) = FILTERS.iter().find(|f| f.name == name) else {
        return portcullis_deploy::sha256_hex(format!("stand-in image of {name}").as_bytes());
    };
    let wasm = std::fs::read(wasm_dir().join(filter.wasm)).unwrap();
    let cargo = portcullis_deploy::deploy_dir().join(format!("../filters/{name}/Cargo.toml"));
    let text = std::fs::read_to_string(&cargo).unwrap();
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = \"")?.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{}: no package version", cargo.display()));
    let image =
        portcullis_oci::wasm::image(portcullis_oci::wasm::Variant::Compat, name, version, &wasm)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    image.digest().trim_start_matches("sha256:").to_owned()
}

fn inputs() -> Inputs {
    let mut images = BTreeMap::new();
    for name in FILTERS.iter().map(|f| f.name).chain([GATEWAY_IMAGE]) {
        images.insert(name.to_owned(), image_digest(name));
    }
    // Secrets made for this run only, so that the oidc manifests are rendered too.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let nonce = format!("{:x}{nanos:x}", std::process::id());
    Inputs {
        registry: REGISTRY.to_owned(),
        images,
        modules: modules(),
        oidc_secrets: Some((
            format!("client-{nonce}"),
            format!("session-secret-for-this-test-{nonce}-0123456789"),
        )),
    }
}

fn rendered() -> RenderedSet {
    let set = portcullis_deploy::render_all(&inputs()).unwrap_or_else(|e| panic!("{e}"));
    assert!(set.skipped.is_empty(), "skipped: {:?}", set.skipped);
    set
}

/// One YAML document of a rendered file.
#[derive(Debug, Clone)]
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or("")
    }
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
    fn what(&self) -> String {
        format!("{}: {} {}", self.file, self.kind(), self.name())
    }
    fn group(&self) -> &str {
        match self.api_version().rsplit_once('/') {
            Some((g, _)) => g,
            None => "",
        }
    }
    /// A kind of Kubernetes itself (core or `*.k8s.io`), not a custom resource.
    fn builtin(&self) -> bool {
        let g = self.group();
        !g.contains('.') || g.ends_with(".k8s.io")
    }
}

fn parse(file: &str, text: &str) -> Vec<Doc> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .filter(|v| !v.is_null())
        .map(|value| Doc {
            file: file.to_owned(),
            value,
        })
        .collect()
}

fn docs() -> Vec<Doc> {
    rendered()
        .files
        .iter()
        .flat_map(|r| parse(&r.path.display().to_string(), &r.text))
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-deploy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn kubernetes_validate() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_KUBERNETES_VALIDATE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let venv = std::env::var_os("PORTCULLIS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/portcullis"))
        .join("kubernetes-validate-venv/bin/kubernetes-validate");
    assert!(
        venv.exists(),
        "kubernetes-validate is missing: `cargo xtask test` installs it, or run `bash deploy/setup.sh` (a venv under ~/.cache/portcullis)"
    );
    venv
}

// ---------------------------------------------------------------------------------
// Kubernetes' own kinds, against the API schemas.

#[test]
fn kubernetes_resources_validate_against_the_api_schemas() {
    let docs = docs();
    let builtin: Vec<&Doc> = docs.iter().filter(|d| d.builtin()).collect();
    let kinds: BTreeSet<&str> = builtin.iter().map(|d| d.kind()).collect();
    for k in [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(k), "no {k} in deploy/: {kinds:?}");
    }
    let dir = scratch("k8s");
    let mut files = Vec::new();
    for (i, d) in builtin.iter().enumerate() {
        let path = dir.join(format!("{i:02}-{}-{}.yaml", d.kind(), d.name()));
        std::fs::write(&path, serde_json::to_string(&d.value).unwrap()).unwrap();
        files.push(path);
    }
    let tool = kubernetes_validate();
    for version in KUBERNETES {
        let out = Command::new(&tool)
            .args(["--strict", "-k", version])
            .args(&files)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", tool.display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Every document passes: no error, and no warning either (a warning is a kind
        // it has no schema for: a misspelt apiVersion or kind).
        let passed = text
            .lines()
            .filter(|l| l.starts_with("INFO") && l.contains(" passed "))
            .count();
        assert!(
            out.status.success()
                && passed == files.len()
                && !text.contains("WARN")
                && !text.contains("ERROR"),
            "Kubernetes {version}: {passed} of {} passed:\n{text}",
            files.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The validator catches what this test relies on it for: an unknown field.
#[test]
fn the_schema_validator_refuses_an_unknown_field() {
    let dir = scratch("k8s-bad");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers: [{name: c, image: i, readinesProbe: {}}]\n",
    )
    .unwrap();
    let out = Command::new(kubernetes_validate())
        .args(["--strict", "-k", KUBERNETES[0]])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// Istio's and Envoy Gateway's kinds, against the fields of their CRDs.

/// A field's schema: the subset of OpenAPI v3 the CRDs use.
#[derive(Clone, Copy)]
enum S {
    Str,
    /// A string the predicate accepts (described for the error).
    Matches(fn(&str) -> bool, &'static str),
    Enum(&'static [&'static str]),
    Int(i64, i64),
    Bool,
    /// Any value (`x-kubernetes-preserve-unknown-fields`, protobuf Struct).
    Any,
    /// An object with these fields and no others.
    Obj(&'static [F]),
    /// A list, at most this many items.
    List(&'static S, usize),
    /// An object of any keys, each value this.
    Map(&'static S),
}

/// A field: name, required, schema.
type F = (&'static str, bool, S);

fn check(v: &Value, s: S, at: &str, errors: &mut Vec<String>) {
    let mut bad = |why: String| errors.push(format!("{at}: {why}"));
    match s {
        S::Any => {}
        S::Str => {
            if !v.is_string() {
                bad(format!("expected a string, got {v}"));
            }
        }
        S::Matches(ok, what) => match v.as_str() {
            Some(x) if ok(x) => {}
            _ => bad(format!("expected {what}, got {v}")),
        },
        S::Enum(values) => match v.as_str() {
            Some(x) if values.contains(&x) => {}
            _ => bad(format!("expected one of {values:?}, got {v}")),
        },
        S::Int(lo, hi) => match v.as_i64() {
            Some(x) if (lo..=hi).contains(&x) => {}
            _ => bad(format!("expected an integer in {lo}..={hi}, got {v}")),
        },
        S::Bool => {
            if !v.is_boolean() {
                bad(format!("expected true or false, got {v}"));
            }
        }
        S::List(item, max) => match v.as_array() {
            Some(a) if a.len() <= max => {
                for (i, x) in a.iter().enumerate() {
                    check(x, *item, &format!("{at}[{i}]"), errors);
                }
            }
            Some(a) => bad(format!("{} items, at most {max}", a.len())),
            None => bad(format!("expected a list, got {v}")),
        },
        S::Map(item) => match v.as_object() {
            Some(m) => {
                for (k, x) in m {
                    check(x, *item, &format!("{at}.{k}"), errors);
                }
            }
            None => bad(format!("expected an object, got {v}")),
        },
        S::Obj(fields) => match v.as_object() {
            Some(m) => {
                for (name, required, _) in fields {
                    if *required && !m.contains_key(*name) {
                        errors.push(format!("{at}: `{name}` is required"));
                    }
                }
                for (k, x) in m {
                    match fields.iter().find(|(n, _, _)| n == k) {
                        Some((_, _, s)) => check(x, *s, &format!("{at}.{k}"), errors),
                        None => errors.push(format!("{at}: unknown field `{k}`")),
                    }
                }
            }
            None => bad(format!("expected an object, got {v}")),
        },
    }
}

fn hex64_or_empty(s: &str) -> bool {
    s.is_empty() || hex64(s)
}
fn hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
fn non_empty(s: &str) -> bool {
    !s.is_empty()
}
/// Istio's rule on `url`: a scheme of http, https, oci or file, or none (oci).
fn wasm_plugin_url(s: &str) -> bool {
    match s.split_once("://") {
        Some((scheme, rest)) => {
            ["http", "https", "oci", "file"].contains(&scheme) && !rest.is_empty()
        }
        None => !s.is_empty(),
    }
}
fn plugin_name(s: &str) -> bool {
    (1..=256).contains(&s.len())
}
/// A Kubernetes object name (DNS subdomain).
fn dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}
/// Gateway API's Kind: a letter, then letters, digits and dashes.
fn kind_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}
/// An HTTP header name (Envoy Gateway's pattern).
fn header_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn image_pull_secret(s: &str) -> bool {
    (1..=253).contains(&s.len())
}
fn env_name(s: &str) -> bool {
    (1..=256).contains(&s.len())
}
fn gateway_api_group(s: &str) -> bool {
    s.is_empty() || dns_subdomain(s)
}
fn section_name(s: &str) -> bool {
    (1..=253).contains(&s.len()) && dns_subdomain(s)
}
fn header_value(s: &str) -> bool {
    (1..=1024).contains(&s.len())
}

const METADATA: S = S::Obj(&[
    (
        "name",
        true,
        S::Matches(dns_subdomain, "a DNS subdomain name"),
    ),
    (
        "namespace",
        false,
        S::Matches(dns_subdomain, "a namespace name"),
    ),
    ("labels", false, S::Map(&S::Str)),
    ("annotations", false, S::Map(&S::Str)),
]);

// Istio 1.30 (istio/api v1.30.3, kubernetes/customresourcedefinitions.gen.yaml).

const ISTIO_TARGET_REF: S = S::Obj(&[
    (
        "group",
        false,
        S::Matches(gateway_api_group, "an API group"),
    ),
    ("kind", true, S::Matches(kind_name, "a kind")),
    ("name", true, S::Matches(non_empty, "a name")),
    ("namespace", false, S::Str),
]);

/// `extensions.istio.io/v1alpha1` WasmPlugin.
const WASM_PLUGIN: S = S::Obj(&[
    (
        "selector",
        false,
        S::Obj(&[("matchLabels", false, S::Map(&S::Str))]),
    ),
    ("targetRef", false, ISTIO_TARGET_REF),
    ("targetRefs", false, S::List(&ISTIO_TARGET_REF, 16)),
    (
        "url",
        true,
        S::Matches(wasm_plugin_url, "a URL of scheme oci, http, https or file"),
    ),
    (
        "sha256",
        false,
        S::Matches(hex64_or_empty, "64 lower-case hex digits"),
    ),
    (
        "imagePullPolicy",
        false,
        S::Enum(&["UNSPECIFIED_POLICY", "IfNotPresent", "Always"]),
    ),
    (
        "imagePullSecret",
        false,
        S::Matches(image_pull_secret, "1 to 253 characters"),
    ),
    ("verificationKey", false, S::Str),
    ("pluginConfig", false, S::Map(&S::Any)),
    (
        "pluginName",
        false,
        S::Matches(plugin_name, "1 to 256 characters"),
    ),
    (
        "phase",
        false,
        S::Enum(&["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"]),
    ),
    ("priority", false, S::Int(i32::MIN as i64, i32::MAX as i64)),
    (
        "failStrategy",
        false,
        S::Enum(&["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"]),
    ),
    (
        "vmConfig",
        false,
        S::Obj(&[(
            "env",
            false,
            S::List(
                &S::Obj(&[
                    ("name", true, S::Matches(env_name, "1 to 256 characters")),
                    ("value", false, S::Str),
                    ("valueFrom", false, S::Enum(&["INLINE", "HOST"])),
                ]),
                256,
            ),
        )]),
    ),
    (
        "match",
        false,
        S::List(
            &S::Obj(&[
                (
                    "mode",
                    false,
                    S::Enum(&["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"]),
                ),
                (
                    "ports",
                    false,
                    S::List(&S::Obj(&[("number", true, S::Int(1, 65535))]), usize::MAX),
                ),
            ]),
            usize::MAX,
        ),
    ),
    (
        "type",
        false,
        S::Enum(&["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"]),
    ),
]);

const ISTIO_PORT: S = S::Obj(&[
    ("number", true, S::Int(1, 65535)),
    ("name", true, S::Str),
    ("protocol", false, S::Str),
    ("targetPort", false, S::Int(1, 65535)),
]);

/// `networking.istio.io/v1` ServiceEntry.
const SERVICE_ENTRY: S = S::Obj(&[
    (
        "hosts",
        true,
        S::List(&S::Matches(non_empty, "a host"), 256),
    ),
    ("addresses", false, S::List(&S::Str, 256)),
    ("ports", false, S::List(&ISTIO_PORT, 256)),
    (
        "location",
        false,
        S::Enum(&["MESH_EXTERNAL", "MESH_INTERNAL"]),
    ),
    (
        "resolution",
        false,
        S::Enum(&["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"]),
    ),
    ("endpoints", false, S::List(&S::Any, 4096)),
    ("workloadSelector", false, S::Any),
    ("exportTo", false, S::List(&S::Str, usize::MAX)),
    ("subjectAltNames", false, S::List(&S::Str, usize::MAX)),
]);

const ISTIO_TLS: S = S::Obj(&[
    (
        "mode",
        false,
        S::Enum(&["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]),
    ),
    ("sni", false, S::Str),
    ("credentialName", false, S::Str),
    ("caCertificates", false, S::Str),
    ("caCrl", false, S::Str),
    ("clientCertificate", false, S::Str),
    ("privateKey", false, S::Str),
    ("subjectAltNames", false, S::List(&S::Str, usize::MAX)),
    ("insecureSkipVerify", false, S::Bool),
]);

/// `networking.istio.io/v1` DestinationRule.
const DESTINATION_RULE: S = S::Obj(&[
    ("host", true, S::Matches(non_empty, "a host")),
    (
        "trafficPolicy",
        false,
        S::Obj(&[
            (
                "portLevelSettings",
                false,
                S::List(
                    &S::Obj(&[
                        (
                            "port",
                            false,
                            S::Obj(&[("number", false, S::Int(0, 4294967295))]),
                        ),
                        ("tls", false, ISTIO_TLS),
                        ("connectionPool", false, S::Any),
                        ("loadBalancer", false, S::Any),
                        ("outlierDetection", false, S::Any),
                    ]),
                    4096,
                ),
            ),
            ("tls", false, ISTIO_TLS),
            ("connectionPool", false, S::Any),
            ("loadBalancer", false, S::Any),
            ("outlierDetection", false, S::Any),
            ("proxyProtocol", false, S::Any),
            ("retryBudget", false, S::Any),
            ("tunnel", false, S::Any),
        ]),
    ),
    ("subsets", false, S::List(&S::Any, usize::MAX)),
    ("exportTo", false, S::List(&S::Str, usize::MAX)),
    ("workloadSelector", false, S::Any),
]);

// Envoy Gateway 1.9 (envoyproxy/gateway v1.9.0,
// charts/gateway-helm/charts/crds/crds/generated/).

const EG_TARGET_REF: S = S::Obj(&[
    ("group", true, S::Matches(gateway_api_group, "an API group")),
    ("kind", true, S::Matches(kind_name, "a kind")),
    ("name", true, S::Matches(non_empty, "a name")),
    (
        "sectionName",
        false,
        S::Matches(section_name, "a section name"),
    ),
]);

const EG_SECRET_REF: S = S::Obj(&[
    (
        "group",
        false,
        S::Matches(gateway_api_group, "an API group"),
    ),
    ("kind", false, S::Matches(kind_name, "a kind")),
    ("name", true, S::Matches(non_empty, "a name")),
    ("namespace", false, S::Matches(dns_subdomain, "a namespace")),
]);

const EG_WASM_TLS: S = S::Obj(&[("caCertificateRef", true, EG_SECRET_REF)]);

const EG_WASM: S = S::Obj(&[
    ("name", false, S::Str),
    ("rootID", false, S::Str),
    (
        "code",
        true,
        S::Obj(&[
            // The CRD's allOf of [HTTP, Image] and [HTTP, Image, ConfigMap].
            ("type", true, S::Enum(&["HTTP", "Image"])),
            (
                "http",
                false,
                S::Obj(&[
                    ("url", true, S::Str),
                    ("sha256", false, S::Str),
                    ("tls", false, EG_WASM_TLS),
                ]),
            ),
            (
                "image",
                false,
                S::Obj(&[
                    ("url", true, S::Str),
                    ("sha256", false, S::Str),
                    ("pullSecretRef", false, EG_SECRET_REF),
                    ("tls", false, EG_WASM_TLS),
                ]),
            ),
            ("pullPolicy", false, S::Enum(&["IfNotPresent", "Always"])),
        ]),
    ),
    ("config", false, S::Any),
    ("failOpen", false, S::Bool),
    (
        "env",
        false,
        S::Obj(&[("hostKeys", false, S::List(&S::Str, usize::MAX))]),
    ),
]);

/// `gateway.envoyproxy.io/v1alpha1` EnvoyExtensionPolicy.
const EXTENSION_POLICY: S = S::Obj(&[
    ("targetRef", false, EG_TARGET_REF),
    ("targetRefs", false, S::List(&EG_TARGET_REF, usize::MAX)),
    ("targetSelectors", false, S::List(&S::Any, usize::MAX)),
    ("mergeType", false, S::Str),
    ("wasm", false, S::List(&EG_WASM, 16)),
    ("extProc", false, S::List(&S::Any, 16)),
    ("lua", false, S::List(&S::Any, 16)),
    ("dynamicModule", false, S::List(&S::Any, 16)),
]);

/// `gateway.envoyproxy.io/v1alpha1` EnvoyProxy: its bootstrap in full, the other
/// fields by name.
const ENVOY_PROXY: S = S::Obj(&[
    (
        "bootstrap",
        false,
        S::Obj(&[
            ("type", false, S::Enum(&["Merge", "Replace", "JSONPatch"])),
            ("value", false, S::Str),
            ("jsonPatches", false, S::List(&S::Any, usize::MAX)),
        ]),
    ),
    ("backendTLS", false, S::Any),
    ("concurrency", false, S::Any),
    ("dynamicModules", false, S::Any),
    ("extraArgs", false, S::Any),
    ("filterOrder", false, S::Any),
    ("geoIP", false, S::Any),
    ("ipFamily", false, S::Any),
    ("logging", false, S::Any),
    ("luaValidation", false, S::Any),
    ("mergeBackends", false, S::Any),
    ("mergeGateways", false, S::Any),
    ("mergeType", false, S::Any),
    ("preserveRouteOrder", false, S::Any),
    ("provider", false, S::Any),
    ("routingType", false, S::Any),
    ("shutdown", false, S::Any),
    ("telemetry", false, S::Any),
]);

const EG_HEADER: S = S::Obj(&[
    ("name", true, S::Matches(header_name, "a header name")),
    ("value", true, S::Str),
]);

const EG_HEADER_MUTATION: S = S::Obj(&[
    ("add", false, S::List(&EG_HEADER, 64)),
    ("addIfAbsent", false, S::List(&EG_HEADER, 64)),
    ("set", false, S::List(&EG_HEADER, 64)),
    (
        "remove",
        false,
        S::List(&S::Matches(header_name, "a header name"), 64),
    ),
    (
        "removeOnMatch",
        false,
        S::List(
            &S::Obj(&[
                (
                    "type",
                    false,
                    S::Enum(&["Exact", "Prefix", "Suffix", "RegularExpression"]),
                ),
                (
                    "value",
                    true,
                    S::Matches(header_value, "1 to 1024 characters"),
                ),
            ]),
            64,
        ),
    ),
]);

/// `gateway.envoyproxy.io/v1alpha1` ClientTrafficPolicy: `path` and `headers` in
/// full, the other fields by name.
const CLIENT_TRAFFIC_POLICY: S = S::Obj(&[
    ("targetRef", false, EG_TARGET_REF),
    ("targetRefs", false, S::List(&EG_TARGET_REF, usize::MAX)),
    ("targetSelectors", false, S::List(&S::Any, usize::MAX)),
    (
        "path",
        false,
        S::Obj(&[
            ("disableMergeSlashes", false, S::Bool),
            (
                "escapedSlashesAction",
                false,
                S::Enum(&[
                    "KeepUnchanged",
                    "RejectRequest",
                    "UnescapeAndForward",
                    "UnescapeAndRedirect",
                ]),
            ),
        ]),
    ),
    (
        "headers",
        false,
        S::Obj(&[
            ("earlyRequestHeaders", false, EG_HEADER_MUTATION),
            ("lateResponseHeaders", false, EG_HEADER_MUTATION),
            ("preserveXRequestID", false, S::Bool),
            ("disableRateLimitHeaders", false, S::Bool),
            ("enableEnvoyHeaders", false, S::Bool),
            ("host", false, S::Any),
            ("requestID", false, S::Any),
            ("withUnderscoresAction", false, S::Any),
            ("xForwardedClientCert", false, S::Any),
        ]),
    ),
    ("clientIPDetection", false, S::Any),
    ("connection", false, S::Any),
    ("enableProxyProtocol", false, S::Bool),
    ("grpc", false, S::Any),
    ("healthCheck", false, S::Any),
    ("http1", false, S::Any),
    ("http2", false, S::Any),
    ("http3", false, S::Any),
    ("proxyProtocol", false, S::Any),
    ("scheme", false, S::Any),
    ("tcpKeepalive", false, S::Any),
    ("timeout", false, S::Any),
    ("tls", false, S::Any),
]);

/// The custom resources we target: (apiVersion, kind, the spec's schema).
const CRDS: [(&str, &str, S); 6] = [
    ("extensions.istio.io/v1alpha1", "WasmPlugin", WASM_PLUGIN),
    ("networking.istio.io/v1", "ServiceEntry", SERVICE_ENTRY),
    (
        "networking.istio.io/v1",
        "DestinationRule",
        DESTINATION_RULE,
    ),
    (
        "gateway.envoyproxy.io/v1alpha1",
        "EnvoyExtensionPolicy",
        EXTENSION_POLICY,
    ),
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy", ENVOY_PROXY),
    (
        "gateway.envoyproxy.io/v1alpha1",
        "ClientTrafficPolicy",
        CLIENT_TRAFFIC_POLICY,
    ),
];

const EG_TARGET_KINDS: [&str; 7] = [
    "Gateway",
    "ListenerSet",
    "HTTPRoute",
    "GRPCRoute",
    "UDPRoute",
    "TCPRoute",
    "TLSRoute",
];

/// The CRDs' CEL rules that our resources could break.
fn rules(kind: &str, spec: &Value, errors: &mut Vec<String>) {
    let has = |k: &str| spec.get(k).is_some();
    let refs: Vec<&Value> = spec["targetRefs"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    match kind {
        "WasmPlugin" => {
            if ["selector", "targetRef", "targetRefs"]
                .iter()
                .filter(|k| has(k))
                .count()
                > 1
            {
                errors.push("only one of targetRefs or selector can be set".into());
            }
            for e in spec["vmConfig"]["env"].as_array().into_iter().flatten() {
                if e["valueFrom"] == "HOST" && e.get("value").is_some() {
                    errors.push("value may only be set when valueFrom is INLINE".into());
                }
            }
        }
        "EnvoyExtensionPolicy" | "ClientTrafficPolicy" => {
            let selectors = spec["targetSelectors"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
            if !((has("targetRef") != has("targetRefs")) || selectors) {
                errors.push("either targetRef or targetRefs must be used".into());
            }
            let kinds: &[&str] = if kind == "ClientTrafficPolicy" {
                &["Gateway", "ListenerSet"]
            } else {
                &EG_TARGET_KINDS
            };
            for r in refs.iter().copied().chain(spec.get("targetRef")) {
                if r["group"] != "gateway.networking.k8s.io" {
                    errors.push(format!(
                        "targetRefs: group must be gateway.networking.k8s.io: {r}"
                    ));
                }
                if !r["kind"].as_str().is_some_and(|k| kinds.contains(&k)) {
                    errors.push(format!("targetRefs: kind must be one of {kinds:?}: {r}"));
                }
            }
            for (i, w) in spec["wasm"].as_array().into_iter().flatten().enumerate() {
                let code = &w["code"];
                for (ty, field) in [("HTTP", "http"), ("Image", "image")] {
                    if (code["type"] == ty) != code.get(field).is_some() {
                        errors.push(format!("wasm[{i}]: if type is {ty}, {field} field needs to be set (and only then)"));
                    }
                }
            }
        }
        "EnvoyProxy" => {
            let b = &spec["bootstrap"];
            if b.is_object() {
                let ty = b["type"].as_str().unwrap_or("Replace");
                let ok = if ty == "JSONPatch" {
                    b["jsonPatches"].as_array().is_some_and(|a| !a.is_empty())
                } else {
                    b.get("value").is_some()
                };
                if !ok {
                    errors.push(
                        "provided bootstrap patch doesn't match the configured patch type".into(),
                    );
                }
            }
        }
        _ => {}
    }
}

/// A custom resource against its CRD; None when we target no such kind.
fn check_custom(doc: &Doc) -> Option<Vec<String>> {
    let (_, _, spec_schema) = CRDS
        .iter()
        .find(|(api, kind, _)| *api == doc.api_version() && *kind == doc.kind())?;
    let mut errors = Vec::new();
    let top = doc.value.as_object().cloned().unwrap_or_default();
    for k in top.keys() {
        if !["apiVersion", "kind", "metadata", "spec"].contains(&k.as_str()) {
            errors.push(format!("unknown field `{k}`"));
        }
    }
    check(&doc.value["metadata"], METADATA, "metadata", &mut errors);
    match top.get("spec") {
        Some(spec) => {
            check(spec, *spec_schema, "spec", &mut errors);
            rules(doc.kind(), spec, &mut errors);
        }
        None => errors.push("`spec` is required".into()),
    }
    Some(errors)
}

#[test]
fn istio_and_envoy_gateway_resources_match_their_crds() {
    let docs = docs();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for d in docs.iter().filter(|d| !d.builtin()) {
        match check_custom(d) {
            Some(errors) => {
                *seen
                    .entry(CRDS.iter().find(|c| c.1 == d.kind()).map_or("", |c| c.1))
                    .or_default() += 1;
                failures.extend(errors.into_iter().map(|e| format!("{}: {e}", d.what())));
            }
            None => failures.push(format!(
                "{}: {} is not a kind this test knows",
                d.what(),
                d.api_version()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for (_, kind, _) in CRDS {
        assert!(
            seen.contains_key(kind),
            "no {kind} in deploy/ (seen: {seen:?})"
        );
    }
}

/// The encoded schemas catch what they are for: each mistake below is refused.
#[test]
fn the_crd_checks_refuse_what_the_crds_refuse() {
    let good = |kind: &str| {
        docs()
            .into_iter()
            .find(|d| d.kind() == kind && d.name().contains("jwt-auth"))
            .unwrap_or_else(|| panic!("no jwt-auth {kind}"))
    };
    let refused = |mut d: Doc, edit: &dyn Fn(&mut Value), what: &str| {
        edit(&mut d.value);
        let errors = check_custom(&d).unwrap_or_default();
        assert!(!errors.is_empty(), "{what}: accepted");
    };
    let wp = good("WasmPlugin");
    assert_eq!(check_custom(&wp), Some(vec![]));
    refused(
        wp.clone(),
        &|v| v["spec"]["phase"] = "AUTHENTICATION".into(),
        "an unknown phase",
    );
    refused(
        wp.clone(),
        &|v| v["spec"]["failStrategy"] = "FAIL_CLOSED".into(),
        "Envoy's spelling of the fail strategy",
    );
    refused(
        wp.clone(),
        &|v| v["spec"]["sha256"] = "sha256:abc".into(),
        "a sha256 with its algorithm",
    );
    refused(
        wp.clone(),
        &|v| v["spec"]["priority"] = "10".into(),
        "a priority as a string",
    );
    refused(
        wp.clone(),
        &|v| v["spec"]["rootID"] = "x".into(),
        "Envoy Gateway's field name in a WasmPlugin",
    );
    refused(
        wp.clone(),
        &|v| {
            v["spec"]
                .as_object_mut()
                .map(|m| m.remove("url"))
                .map_or((), |_| ())
        },
        "no url",
    );
    refused(
        wp.clone(),
        &|v| v["spec"]["targetRefs"] = serde_json::json!([{"kind": "Gateway", "name": "g"}]),
        "selector and targetRefs",
    );
    refused(
        wp,
        &|v| v["spec"]["url"] = "ftp://x/y".into(),
        "a url of another scheme",
    );
    let eep = good("EnvoyExtensionPolicy");
    assert_eq!(check_custom(&eep), Some(vec![]));
    refused(
        eep.clone(),
        &|v| v["spec"]["wasm"][0]["code"]["type"] = "OCI".into(),
        "an unknown code type",
    );
    refused(
        eep.clone(),
        &|v| v["spec"]["wasm"][0]["code"]["type"] = "HTTP".into(),
        "type HTTP with an image",
    );
    refused(
        eep.clone(),
        &|v| v["spec"]["wasm"][0]["failOpen"] = "false".into(),
        "failOpen as a string",
    );
    refused(
        eep.clone(),
        &|v| v["spec"]["wasm"][0]["root_id"] = "x".into(),
        "Envoy's field name",
    );
    refused(
        eep.clone(),
        &|v| v["spec"]["targetRefs"][0]["kind"] = "Service".into(),
        "a Service target",
    );
    refused(
        eep,
        &|v| {
            v["spec"]
                .as_object_mut()
                .map(|m| m.remove("targetRefs"))
                .map_or((), |_| ())
        },
        "no target",
    );
}

// ---------------------------------------------------------------------------------
// Images, modules and the filters' configurations.

/// The filter a resource or wasm entry named `portcullis-<filter>` runs.
fn filter_named(name: &str) -> Option<&'static str> {
    let f = name.strip_prefix("portcullis-")?;
    FILTERS.iter().map(|x| x.name).find(|n| *n == f)
}

/// Every filter a manifest runs: (file, filter, its image reference, its `sha256`,
/// the module annotation of its resource, its configuration).
struct Use {
    what: String,
    filter: &'static str,
    url: String,
    sha256: String,
    module: Option<String>,
    config: Value,
}

fn uses(docs: &[Doc]) -> Vec<Use> {
    let mut out = Vec::new();
    for d in docs {
        let annotation = |f: &str| {
            d.value["metadata"]["annotations"][portcullis_deploy::module_annotation(f)]
                .as_str()
                .map(str::to_owned)
        };
        match d.kind() {
            "WasmPlugin" => {
                let f = filter_named(d.name())
                    .unwrap_or_else(|| panic!("{}: not named portcullis-<filter>", d.what()));
                let spec = &d.value["spec"];
                out.push(Use {
                    what: d.what(),
                    filter: f,
                    url: spec["url"].as_str().unwrap_or("").to_owned(),
                    sha256: spec["sha256"].as_str().unwrap_or("").to_owned(),
                    module: annotation(f),
                    config: spec["pluginConfig"].clone(),
                });
            }
            "EnvoyExtensionPolicy" => {
                for w in d.value["spec"]["wasm"].as_array().into_iter().flatten() {
                    let name = w["name"].as_str().unwrap_or("");
                    let f = filter_named(name).unwrap_or_else(|| {
                        panic!("{}: wasm `{name}` not named portcullis-<filter>", d.what())
                    });
                    let image = &w["code"]["image"];
                    out.push(Use {
                        what: format!("{} wasm {name}", d.what()),
                        filter: f,
                        url: image["url"].as_str().unwrap_or("").to_owned(),
                        sha256: image["sha256"].as_str().unwrap_or("").to_owned(),
                        module: annotation(f),
                        config: w["config"].clone(),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn images_are_pinned_by_digest_and_annotations_name_the_built_modules() {
    let docs = docs();
    let modules = modules();
    let uses = uses(&docs);
    let mut failures = Vec::new();
    for u in &uses {
        let digest = image_digest(u.filter);
        let scheme = if u.what.contains("WasmPlugin") {
            "oci://"
        } else {
            ""
        };
        let want = format!("{scheme}{REGISTRY}/{}@sha256:{digest}", u.filter);
        if u.url != want {
            failures.push(format!("{}: url {} (expected {want})", u.what, u.url));
        }
        // Istio and Envoy Gateway compare `sha256` with the pulled image's digest.
        if u.sha256 != digest {
            failures.push(format!(
                "{}: sha256 {} is not the image's digest {digest}",
                u.what, u.sha256
            ));
        }
        if u.module.as_ref() != modules.get(u.filter) {
            failures.push(format!(
                "{}: module annotation {:?}, the built {}.wasm is {:?}",
                u.what,
                u.module,
                u.filter,
                modules.get(u.filter)
            ));
        }
    }
    // Every container runs the gateway's image, pinned by digest (Redis aside).
    for d in docs.iter().filter(|d| d.kind() == "Deployment") {
        for c in d.value["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let image = c["image"].as_str().unwrap_or("");
            if image.starts_with(REGISTRY) {
                let want = format!(
                    "{REGISTRY}/{GATEWAY_IMAGE}@sha256:{}",
                    image_digest(GATEWAY_IMAGE)
                );
                if image != want {
                    failures.push(format!("{}: image {image} (expected {want})", d.what()));
                }
            } else if !image.starts_with("redis:") {
                failures.push(format!("{}: image {image} is not ours", d.what()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Each filter in each of Istio and Envoy Gateway, and the chains.
    for f in FILTERS {
        for kind in ["WasmPlugin", "EnvoyExtensionPolicy"] {
            assert!(
                uses.iter()
                    .any(|u| u.filter == f.name && u.what.contains(kind)),
                "no {kind} runs {}",
                f.name
            );
        }
    }
    for file in ["istio/chain.yaml", "envoy-gateway/chain.yaml"] {
        let chain: Vec<&str> = uses
            .iter()
            .filter(|u| u.what.starts_with(file))
            .map(|u| u.filter)
            .collect();
        assert_eq!(
            chain,
            ["jwt-auth", "tier-limiter", "header-forwarder"],
            "{file}"
        );
    }
}

/// A chain's filters are those of the single-filter files, to the byte: the test
/// keeps the copies from drifting apart.
#[test]
fn the_chains_hold_the_single_filter_resources() {
    let docs = docs();
    let in_file = |file: &str| -> Vec<&Doc> { docs.iter().filter(|d| d.file == file).collect() };
    for d in in_file("istio/chain.yaml") {
        let f = filter_named(d.name()).unwrap_or("?");
        let single = in_file(&format!("istio/{f}.yaml"));
        assert_eq!(single.len(), 1, "istio/{f}.yaml");
        assert_eq!(
            d.value,
            single[0].value,
            "istio/chain.yaml: {} differs from istio/{f}.yaml",
            d.name()
        );
    }
    let chain = in_file("envoy-gateway/chain.yaml");
    assert_eq!(chain.len(), 1);
    for w in chain[0].value["spec"]["wasm"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let f = filter_named(w["name"].as_str().unwrap_or("")).unwrap_or("?");
        let single = in_file(&format!("envoy-gateway/{f}.yaml"));
        assert_eq!(single.len(), 1, "envoy-gateway/{f}.yaml");
        assert_eq!(
            Some(w),
            single[0].value["spec"]["wasm"]
                .as_array()
                .and_then(|a| a.first()),
            "envoy-gateway/chain.yaml: {f} differs from envoy-gateway/{f}.yaml"
        );
        let key = portcullis_deploy::module_annotation(f);
        assert_eq!(
            chain[0].value["metadata"]["annotations"][&key],
            single[0].value["metadata"]["annotations"][&key]
        );
    }
}

/// A gateway configuration holding these filters, each with the built module.
fn gateway_config(filters: &[(&str, &Value)]) -> String {
    let filters: Vec<Value> = filters
        .iter()
        .enumerate()
        .map(|(i, (f, config))| {
            let wasm = FILTERS
                .iter()
                .find(|x| x.name == *f)
                .map(|x| x.wasm)
                .unwrap_or("?");
            serde_json::json!({
                "name": format!("f{i}-{f}"),
                "wasm": wasm_dir().join(wasm),
                "config": config,
            })
        })
        .collect();
    serde_json::json!({
        "listeners": [{ "name": "l", "address": "127.0.0.1:0" }],
        "filters": filters,
    })
    .to_string()
}

fn validate(name: &str, yaml: &str) -> Result<(), String> {
    let dir = scratch(&format!("validate-{name}"));
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, yaml).unwrap();
    let r = portcullis::run::validate(&path)
        .map(|_| ())
        .map_err(|e| e.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
    r
}

#[test]
fn every_filter_configuration_is_accepted_by_its_filter() {
    let docs = docs();
    let mut failures = Vec::new();
    let uses = uses(&docs);
    for (i, u) in uses.iter().enumerate() {
        if let Err(e) = validate(
            &format!("use{i}"),
            &gateway_config(&[(u.filter, &u.config)]),
        ) {
            failures.push(format!("{}: {e}", u.what));
        }
    }
    // The gateway's own configuration, with the filters where the build put them
    // instead of where the image has them.
    let cm = docs
        .iter()
        .find(|d| d.kind() == "ConfigMap" && d.name() == "portcullis")
        .expect("the gateway's ConfigMap");
    let text = cm.value["data"]["portcullis.yaml"]
        .as_str()
        .expect("portcullis.yaml in the ConfigMap");
    assert!(text.contains("/usr/local/lib/portcullis/"));
    let local = text.replace(
        "/usr/local/lib/portcullis/",
        &format!("{}/", wasm_dir().display()),
    );
    if let Err(e) = validate("configmap", &local) {
        failures.push(format!("{}: portcullis.yaml: {e}", cm.what()));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(uses.len() >= 14, "{} filter uses", uses.len());
}

/// A configuration the filter refuses is reported: the check above can fail.
#[test]
fn a_configuration_the_filter_refuses_fails_validation() {
    let bad =
        serde_json::json!({ "tiers": { "free": { "fortnight": 5 } }, "default_tier": "free" });
    let e = validate("bad", &gateway_config(&[("tier-limiter", &bad)]));
    assert!(e.is_err(), "accepted: {bad}");
}

// ---------------------------------------------------------------------------------
// The clusters the filters call.

/// The Envoy clusters a filter configuration names.
fn clusters_named(config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in config["providers"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
    {
        if let Some(c) = p["remote_jwks"]["cluster"].as_str() {
            out.push(c.to_owned());
        }
    }
    for c in [
        &config["idp_cluster"],
        &config["global"]["cluster"],
        &config["key_service"]["cluster"],
    ] {
        if let Some(c) = c.as_str() {
            out.push(c.to_owned());
        }
    }
    out
}

#[test]
fn the_clusters_the_filters_call_exist() {
    let docs = docs();
    let uses = uses(&docs);
    // Envoy Gateway: the bootstrap clusters of envoyproxy.yaml, which Envoy loads.
    let proxy = docs
        .iter()
        .find(|d| d.kind() == "EnvoyProxy")
        .expect("an EnvoyProxy");
    let bootstrap_text = proxy.value["spec"]["bootstrap"]["value"]
        .as_str()
        .expect("a bootstrap");
    let bootstrap: Value = serde_norway::from_str(bootstrap_text).expect("the bootstrap is YAML");
    let defined: BTreeSet<&str> = bootstrap["static_resources"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    // Istio: `outbound|PORT||HOST` of a ServiceEntry's port or a Service of deploy/.
    let mut istio: BTreeSet<String> = BTreeSet::new();
    for d in &docs {
        match d.kind() {
            "ServiceEntry" => {
                for h in d.value["spec"]["hosts"].as_array().into_iter().flatten() {
                    for p in d.value["spec"]["ports"].as_array().into_iter().flatten() {
                        istio.insert(format!(
                            "outbound|{}||{}",
                            p["number"],
                            h.as_str().unwrap_or("")
                        ));
                    }
                }
            }
            "Service" => {
                let ns = d.value["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default");
                for p in d.value["spec"]["ports"].as_array().into_iter().flatten() {
                    istio.insert(format!(
                        "outbound|{}||{}.{ns}.svc.cluster.local",
                        p["port"],
                        d.name()
                    ));
                }
            }
            _ => {}
        }
    }
    let mut failures = Vec::new();
    let mut named = 0;
    for u in &uses {
        for c in clusters_named(&u.config) {
            named += 1;
            let known = if u.what.contains("WasmPlugin") {
                istio.contains(&c)
            } else {
                defined.contains(c.as_str())
            };
            if !known {
                failures.push(format!(
                    "{}: cluster `{c}` is defined nowhere in deploy/",
                    u.what
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nIstio: {istio:?}\nEnvoy Gateway: {defined:?}",
        failures.join("\n")
    );
    assert!(named >= 8, "{named} clusters named");

    // The bootstrap Envoy Gateway merges in is one Envoy accepts.
    let envoy = portcullis_envoy::envoy_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = scratch("bootstrap");
    let path = dir.join("bootstrap.yaml");
    std::fs::write(&path, bootstrap_text).unwrap();
    let out = Command::new(&envoy)
        .args(["--mode", "validate", "-l", "error", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// The Deployments.

fn gateway_deployment(docs: &[Doc]) -> (&Doc, Value) {
    let d = docs
        .iter()
        .find(|d| d.kind() == "Deployment" && d.name() == "portcullis")
        .expect("the gateway's Deployment");
    let cm = docs
        .iter()
        .find(|d| d.kind() == "ConfigMap" && d.name() == "portcullis")
        .expect("the gateway's ConfigMap");
    let config: Value =
        serde_norway::from_str(cm.value["data"]["portcullis.yaml"].as_str().unwrap_or(""))
            .expect("portcullis.yaml is YAML");
    (d, config)
}

/// A probe's or container port's number, resolving a named port.
fn port_number(container: &Value, port: &Value) -> Option<i64> {
    if let Some(n) = port.as_i64() {
        return Some(n);
    }
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == *port)?["containerPort"]
        .as_i64()
}

#[test]
fn the_gateway_is_probed_on_its_admin_port_and_drains_within_its_grace_period() {
    let docs = docs();
    let (d, config) = gateway_deployment(&docs);
    let pod = &d.value["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let admin_port: i64 = config["admin"]["address"]
        .as_str()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("an admin address in portcullis.yaml");
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            port_number(c, &get["port"]),
            Some(admin_port),
            "{probe} port"
        );
    }
    let listen: i64 = config["listeners"][0]["address"]
        .as_str()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("a listener");
    assert_eq!(port_number(c, &serde_json::json!("http")), Some(listen));

    // Stopping: the preStop sleep, then SIGTERM and the drain (the gateway waits up to
    // drain_timeout_ms and one second more for its workers); all of it before the
    // grace period's SIGKILL.
    let drain_ms = config["drain_timeout_ms"].as_i64().unwrap_or(15_000);
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap_or(0);
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
    assert!(
        pre_stop >= 1,
        "a preStop sleep lets endpoints drop the pod before it stops accepting"
    );
    let needed_ms = pre_stop * 1000 + drain_ms + 1000;
    assert!(
        grace * 1000 > needed_ms,
        "terminationGracePeriodSeconds {grace} s does not cover preStop {pre_stop} s + drain {drain_ms} ms + 1 s"
    );

    // The module cache on a writable emptyDir, named by PORTCULLIS_CACHE_DIR.
    let cache = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "PORTCULLIS_CACHE_DIR")
        .and_then(|e| e["value"].as_str())
        .expect("PORTCULLIS_CACHE_DIR");
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == cache)
        .expect("a volume at PORTCULLIS_CACHE_DIR");
    assert_ne!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .expect("the cache's volume");
    assert!(
        volume.get("emptyDir").is_some(),
        "the cache is an emptyDir: {volume}"
    );

    // The configuration comes from the ConfigMap, at the path the arguments name.
    let args: Vec<&str> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    let file = Path::new(args[at + 1]);
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str().map(Path::new) == file.parent())
        .expect("a volume holding the configuration");
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .expect("volume");
    assert_eq!(volume["configMap"]["name"], "portcullis");
    assert_eq!(
        file.file_name().and_then(|f| f.to_str()),
        Some("portcullis.yaml")
    );
}

#[test]
fn every_container_runs_unprivileged_read_only_and_with_requests() {
    let docs = docs();
    let mut failures = Vec::new();
    let mut containers = 0;
    for d in docs.iter().filter(|d| d.kind() == "Deployment") {
        let pod = &d.value["spec"]["template"]["spec"];
        for c in pod["containers"].as_array().into_iter().flatten() {
            containers += 1;
            let what = format!("{} container {}", d.what(), c["name"]);
            let sc = &c["securityContext"];
            let non_root = sc["runAsNonRoot"] == true
                || (sc.get("runAsNonRoot").is_none()
                    && pod["securityContext"]["runAsNonRoot"] == true);
            let checks = [
                ("runAsNonRoot", non_root),
                (
                    "readOnlyRootFilesystem",
                    sc["readOnlyRootFilesystem"] == true,
                ),
                (
                    "allowPrivilegeEscalation: false",
                    sc["allowPrivilegeEscalation"] == false,
                ),
                (
                    "capabilities dropped",
                    sc["capabilities"]["drop"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "ALL")),
                ),
                ("cpu request", c["resources"]["requests"]["cpu"].is_string()),
                (
                    "memory request",
                    c["resources"]["requests"]["memory"].is_string(),
                ),
                (
                    "memory limit",
                    c["resources"]["limits"]["memory"].is_string(),
                ),
                ("readiness probe", c.get("readinessProbe").is_some()),
                ("liveness probe", c.get("livenessProbe").is_some()),
                (
                    "seccomp",
                    pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
                ),
            ];
            for (name, ok) in checks {
                if !ok {
                    failures.push(format!("{what}: {name}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(containers >= 3);
}

// ---------------------------------------------------------------------------------
// The systemd unit.

fn systemd_analyze() -> &'static str {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "systemd-analyze is missing: `cargo xtask test` installs it (Debian: apt-get install systemd)"
    );
    "systemd-analyze"
}

/// A root directory holding the unit and stand-ins for the programs it runs, so that
/// systemd-analyze checks the unit and not this machine.
fn unit_root(unit: &str) -> PathBuf {
    let root = scratch("systemd");
    for (dir, file, text) in [
        ("etc/systemd/system", "portcullis.service", unit),
        ("usr/local/bin", "portcullis", "#!/bin/sh\n"),
        ("bin", "kill", "#!/bin/sh\n"),
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        let path = root.join(dir).join(file);
        std::fs::write(&path, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    root
}

/// `systemd-analyze security` exposure, 0.0 (locked down) to 10.0, with threshold 2.0.
fn analyze(unit: &str) -> (bool, bool, String) {
    let tool = systemd_analyze();
    let root = unit_root(unit);
    let verify = Command::new(tool)
        .args(["verify", "--recursive-errors=no", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .arg("/etc/systemd/system/portcullis.service")
        .output()
        .unwrap();
    let security = Command::new(tool)
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(format!("--root={}", root.display()))
        .arg("/etc/systemd/system/portcullis.service")
        .output()
        .unwrap();
    let text = format!(
        "{}{}{}",
        String::from_utf8_lossy(&verify.stderr),
        String::from_utf8_lossy(&security.stdout)
            .lines()
            .last()
            .unwrap_or(""),
        String::from_utf8_lossy(&security.stderr)
    );
    let _ = std::fs::remove_dir_all(&root);
    // An unknown directive is only a warning to verify: count it as a failure.
    let verified = verify.status.success()
        && !text.contains("Unknown key")
        && !text.contains("Failed to parse");
    (verified, security.status.success(), text)
}

#[test]
fn the_systemd_unit_verifies_and_is_locked_down() {
    let unit =
        std::fs::read_to_string(portcullis_deploy::deploy_dir().join("systemd/portcullis.service"))
            .unwrap();
    let (verified, secure, text) = analyze(&unit);
    assert!(verified, "systemd-analyze verify:\n{text}");
    assert!(
        secure,
        "systemd-analyze security rates it above 2.0:\n{text}"
    );
    for line in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(line), "{line:?} missing");
    }
    // SIGTERM drains for drain_timeout_ms (15 s by default) and a second more.
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec");
    assert!(
        stop > 16,
        "TimeoutStopSec={stop} does not cover the default drain"
    );

    // The checks can fail: a misspelt directive, and the hardening taken away.
    let (verified, _, _) = analyze(&unit.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"));
    assert!(!verified, "a misspelt directive passed");
    let weak: String = unit
        .lines()
        .filter(|l| {
            ![
                "DynamicUser",
                "ProtectSystem",
                "PrivateUsers",
                "CapabilityBoundingSet",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let (_, secure, text) = analyze(&weak);
    assert!(!secure, "a unit without its hardening passed:\n{text}");
}
