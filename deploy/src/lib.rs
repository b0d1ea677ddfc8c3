//! The manifests of `deploy/` (Kubernetes, Istio, Envoy Gateway) are templates: they
//! name the registry, the images by digest and the modules' checksums as `${NAME}`
//! placeholders, because those come from a build (`cargo xtask build`,
//! `cargo xtask oci`). This crate owns filling them in: which placeholders exist,
//! which values they accept, where the rendered files go. `cargo xtask
//! deploy-manifests` and the manifest test (`tests/manifests.rs`) both use it, so what
//! the test validates is what a user applies.
//!
//! Placeholders:
//! - `REGISTRY`: where the images live (`registry.example.com/portcullis`); a filter's
//!   image is `${REGISTRY}/<filter>`, the gateway's `${REGISTRY}/portcullis`.
//! - `<FILTER>_IMAGE`, `PORTCULLIS_IMAGE`: an image's manifest digest (64 hex digits),
//!   for `url: ...@sha256:` and the `sha256` fields, which Istio and Envoy Gateway
//!   compare with the image they pull.
//! - `<FILTER>_WASM`: the SHA-256 of the filter's built `.wasm`, recorded in an
//!   annotation (`portcullis/<filter>-module-sha256`) so a cluster's resources say which
//!   build they run.
//! - `OIDC_CLIENT_SECRET`, `OIDC_SESSION_SECRET`: the oidc filter's secrets; a template
//!   that needs them is only rendered when they are given.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One of the five filters, as the manifests name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    /// The package and image name: `jwt-auth`.
    pub name: &'static str,
    /// The built module's file name in `target/wasm32-wasip1/release/`.
    pub wasm: &'static str,
    /// The placeholders' prefix: `JWT_AUTH` for `${JWT_AUTH_IMAGE}`, `${JWT_AUTH_WASM}`.
    pub var: &'static str,
}

pub const FILTERS: [Filter; 5] = [
    Filter {
        name: "oidc",
        wasm: "oidc.wasm",
        var: "OIDC",
    },
    Filter {
        name: "jwt-auth",
        wasm: "jwt_auth.wasm",
        var: "JWT_AUTH",
    },
    Filter {
        name: "tier-limiter",
        wasm: "tier_limiter.wasm",
        var: "TIER_LIMITER",
    },
    Filter {
        name: "header-forwarder",
        wasm: "header_forwarder.wasm",
        var: "HEADER_FORWARDER",
    },
    Filter {
        name: "key-auth",
        wasm: "key_auth.wasm",
        var: "KEY_AUTH",
    },
];

/// The gateway's own image (`portcullis run`, `portcullis ratelimit-service`).
pub const GATEWAY_IMAGE: &str = "portcullis";

/// The default registry: a placeholder to replace with your own.
pub const EXAMPLE_REGISTRY: &str = "registry.example.com/portcullis";

/// The annotation that records a filter's module checksum.
pub fn module_annotation(filter: &str) -> String {
    format!("portcullis/{filter}-module-sha256")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: `${{` without a closing `}}`")]
    Unterminated(String),
    #[error("{file}: no value for ${{{name}}}")]
    Unset { file: String, name: String },
    #[error("{name}: {why}")]
    Value { name: String, why: String },
    #[error("{path}: {why}")]
    Layout { path: PathBuf, why: String },
}

/// A manifest template of `deploy/`.
#[derive(Debug, Clone)]
pub struct Template {
    /// Relative to `deploy/`: `istio/jwt-auth.yaml`.
    pub path: PathBuf,
    pub text: String,
}

impl Template {
    /// The placeholders it names.
    pub fn variables(&self) -> Result<BTreeSet<String>, Error> {
        let mut names = BTreeSet::new();
        scan(&self.text, |name| {
            names.insert(name.to_owned());
            Some(String::new())
        })
        .map_err(|e| match e {
            ScanError::Unterminated => Error::Unterminated(self.path.display().to_string()),
            ScanError::Unset(name) => Error::Unset {
                file: self.path.display().to_string(),
                name,
            },
        })?;
        Ok(names)
    }

    /// Whether it holds secrets once rendered (written readable by its owner only).
    pub fn secret(&self) -> Result<bool, Error> {
        Ok(self.variables()?.iter().any(|v| v.ends_with("_SECRET")))
    }
}

/// `deploy/`, where the templates live, in the checkout cargo runs in: the nearest
/// folder holding `Cargo.lock` above the package being run (`xtask`, or this crate's
/// tests) or the current folder. Not the path this crate was built in: checkouts share
/// one target directory, and cargo does not rebuild for another checkout's path.
pub fn deploy_dir() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let start = start
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();
    match start.ancestors().find(|d| d.join("Cargo.lock").is_file()) {
        Some(root) => root.join("deploy"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    }
}

/// The directories of `deploy/` that hold manifests for Kubernetes.
pub const MANIFEST_DIRS: [&str; 4] = ["gateway", "ratelimit", "istio", "envoy-gateway"];

/// Every manifest template, in a stable order.
pub fn templates() -> Result<Vec<Template>, Error> {
    let root = deploy_dir();
    let mut out = Vec::new();
    for dir in MANIFEST_DIRS {
        let full = root.join(dir);
        let entries = std::fs::read_dir(&full).map_err(|source| Error::Io {
            path: full.clone(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            let rel = path.strip_prefix(&root).unwrap_or(&path).to_path_buf();
            out.push(Template { path: rel, text });
        }
    }
    Ok(out)
}

/// What the templates are filled with.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub registry: String,
    /// Image manifest digests (hex), by image name: a filter's name or `portcullis`.
    pub images: BTreeMap<String, String>,
    /// Module checksums (hex), by filter name.
    pub modules: BTreeMap<String, String>,
    /// oidc's client secret and session secret.
    pub oidc_secrets: Option<(String, String)>,
}

impl Inputs {
    /// The placeholders' values, each checked (see [`check_value`]).
    pub fn variables(&self) -> Result<BTreeMap<String, String>, Error> {
        let mut vars = BTreeMap::new();
        vars.insert("REGISTRY".to_owned(), self.registry.clone());
        for f in FILTERS {
            if let Some(d) = self.images.get(f.name) {
                vars.insert(format!("{}_IMAGE", f.var), d.clone());
            }
            if let Some(d) = self.modules.get(f.name) {
                vars.insert(format!("{}_WASM", f.var), d.clone());
            }
        }
        if let Some(d) = self.images.get(GATEWAY_IMAGE) {
            vars.insert("PORTCULLIS_IMAGE".to_owned(), d.clone());
        }
        if let Some((client, session)) = &self.oidc_secrets {
            vars.insert("OIDC_CLIENT_SECRET".to_owned(), client.clone());
            vars.insert("OIDC_SESSION_SECRET".to_owned(), session.clone());
        }
        for (name, value) in &vars {
            check_value(name, value)?;
        }
        Ok(vars)
    }
}

/// A value fit for its placeholder: a digest is 64 lower-case hex digits; a registry
/// is a host and path an image reference accepts; a secret is printable ASCII without
/// quotes or backslashes (it goes inside a YAML double-quoted string), 32 characters or
/// more for the session secret. Anything else would render a manifest that breaks, or
/// means something else, far from the mistake.
pub fn check_value(name: &str, value: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::Value {
            name: name.to_owned(),
            why: why.to_owned(),
        })
    };
    if name.ends_with("_IMAGE") || name.ends_with("_WASM") {
        if !is_hex64(value) {
            return bad("expected a SHA-256 digest: 64 lower-case hex digits");
        }
    } else if name == "REGISTRY" {
        // Starts and ends with a letter or digit, as an image reference's host and
        // path components do; that also keeps it a plain YAML scalar where a template
        // puts it first (`url: ${REGISTRY}/...`).
        let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let ok = alnum(value.bytes().next())
            && alnum(value.bytes().last())
            && !value.contains("//")
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_/:".contains(&b));
        if !ok {
            return bad(
                "expected a registry host and path, lower case, such as registry.example.com/portcullis",
            );
        }
    } else if name.ends_with("_SECRET") {
        if value.is_empty() || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return bad("expected printable ASCII characters");
        }
        if value.contains('"') || value.contains('\\') {
            return bad("must not contain `\"` or `\\`");
        }
        if name == "OIDC_SESSION_SECRET" && value.len() < 32 {
            return bad("the session secret needs 32 characters or more");
        }
    }
    Ok(())
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

enum ScanError {
    Unterminated,
    Unset(String),
}

/// Replaces every `${NAME}` (NAME: upper-case letters, digits, `_`) with `value(NAME)`.
/// Other `$` text (Kubernetes' `$(VAR)`, header-forwarder's `$(consumer.id)`) is left
/// as it is.
fn scan(text: &str, mut value: impl FnMut(&str) -> Option<String>) -> Result<String, ScanError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or(ScanError::Unterminated)?;
        let name = &after[..end];
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ScanError::Unterminated);
        }
        out.push_str(&value(name).ok_or_else(|| ScanError::Unset(name.to_owned()))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Fills one template; a placeholder without a value is an error naming it.
pub fn render(template: &Template, vars: &BTreeMap<String, String>) -> Result<String, Error> {
    let file = template.path.display().to_string();
    scan(&template.text, |name| vars.get(name).cloned()).map_err(|e| match e {
        ScanError::Unterminated => Error::Unterminated(file.clone()),
        ScanError::Unset(name) => Error::Unset { file, name },
    })
}

/// A rendered manifest.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub path: PathBuf,
    pub text: String,
    pub secret: bool,
}

/// What [`render_all`] made, and the templates it left out for want of oidc secrets.
#[derive(Debug, Clone, Default)]
pub struct RenderedSet {
    pub files: Vec<Rendered>,
    pub skipped: Vec<PathBuf>,
}

/// Renders every template. Without oidc secrets, the templates that need them are
/// skipped (and listed); any other missing value is an error.
pub fn render_all(inputs: &Inputs) -> Result<RenderedSet, Error> {
    let vars = inputs.variables()?;
    let mut set = RenderedSet::default();
    for t in templates()? {
        let secret = t.secret()?;
        if secret && inputs.oidc_secrets.is_none() {
            set.skipped.push(t.path.clone());
            continue;
        }
        let text = render(&t, &vars)?;
        set.files.push(Rendered {
            path: t.path,
            text,
            secret,
        });
    }
    Ok(set)
}

/// Writes the rendered files under `out` (`out/istio/jwt-auth.yaml`...); files with
/// secrets are readable by their owner only.
pub fn write_all(set: &RenderedSet, out: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut written = Vec::new();
    for r in &set.files {
        let path = out.join(&r.path);
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Removed first, so that a secret file is never briefly world-readable and an
        // old file's mode is not kept.
        let _ = std::fs::remove_file(&path);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if r.secret { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&path).map_err(io)?;
        std::io::Write::write_all(&mut f, r.text.as_bytes()).map_err(io)?;
        written.push(path);
    }
    Ok(written)
}

/// The SHA-256 of some bytes, as 64 lower-case hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A digest as given on a command line: `sha256:<hex>` or `<hex>`.
pub fn parse_digest(s: &str) -> Result<String, Error> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    check_value("digest_IMAGE", hex).map_err(|_| Error::Value {
        name: s.to_owned(),
        why: "expected sha256:<64 lower-case hex digits>".to_owned(),
    })?;
    Ok(hex.to_owned())
}

/// The manifest digest of the one image in an OCI image layout (its `index.json`), as
/// `cargo xtask oci` writes them.
pub fn layout_digest(dir: &Path) -> Result<String, Error> {
    let path = dir.join("index.json");
    let layout = |why: String| Error::Layout {
        path: path.clone(),
        why,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| layout(e.to_string()))?;
    let index: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| layout(format!("not JSON: {e}")))?;
    let manifests = index
        .get("manifests")
        .and_then(|m| m.as_array())
        .ok_or_else(|| layout("no `manifests` list".into()))?;
    let [only] = manifests.as_slice() else {
        return Err(layout(format!(
            "{} manifests: expected one image",
            manifests.len()
        )));
    };
    let digest = only
        .get("digest")
        .and_then(|d| d.as_str())
        .ok_or_else(|| layout("the manifest has no digest".into()))?;
    parse_digest(digest).map_err(|e| layout(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn t(text: &str) -> Template {
        Template {
            path: "x.yaml".into(),
            text: text.into(),
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn placeholders_are_filled_and_other_dollar_text_is_kept() {
        let out = render(
            &t("url: ${REGISTRY}/x\nargs: [$(REDIS_PASSWORD)]\nh: \"$(consumer.id)\"\n"),
            &vars(&[("REGISTRY", "r.example/p")]),
        );
        assert_eq!(
            out.ok().as_deref(),
            Some("url: r.example/p/x\nargs: [$(REDIS_PASSWORD)]\nh: \"$(consumer.id)\"\n")
        );
    }

    #[test]
    fn a_missing_or_broken_placeholder_is_an_error_naming_it() {
        let e = render(&t("a: ${NOPE}"), &vars(&[]))
            .err()
            .map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("x.yaml: no value for ${NOPE}"));
        assert!(matches!(
            render(&t("a: ${OPEN"), &vars(&[])),
            Err(Error::Unterminated(_))
        ));
        assert!(matches!(
            render(&t("a: ${lower}"), &vars(&[])),
            Err(Error::Unterminated(_))
        ));
    }

    #[test]
    fn values_are_checked_for_their_placeholder() {
        let hex = "ab".repeat(32);
        assert!(check_value("JWT_AUTH_IMAGE", &hex).is_ok());
        assert!(check_value("JWT_AUTH_IMAGE", &hex.to_uppercase()).is_err());
        assert!(check_value("JWT_AUTH_WASM", &hex[1..]).is_err());
        assert!(check_value("REGISTRY", "registry.example.com:5000/portcullis").is_ok());
        assert!(check_value("REGISTRY", "registry.example.com/portcullis/").is_err());
        assert!(check_value("REGISTRY", "Registry.example.com").is_err());
        assert!(check_value("REGISTRY", "r.example/x y").is_err());
        assert!(check_value("REGISTRY", "-r.example").is_err());
        assert!(check_value("REGISTRY", ":5000/p").is_err());
        assert!(check_value("REGISTRY", "r.example/p.").is_err());
        assert!(check_value("OIDC_SESSION_SECRET", &"s".repeat(32)).is_ok());
        assert!(check_value("OIDC_SESSION_SECRET", &"s".repeat(31)).is_err());
        assert!(check_value("OIDC_CLIENT_SECRET", "a\"b").is_err());
        assert!(check_value("OIDC_CLIENT_SECRET", "a\nb").is_err());
        assert!(check_value("OIDC_CLIENT_SECRET", "a\\b").is_err());
    }

    #[test]
    fn digests_parse_with_or_without_their_algorithm() {
        let hex = "0f".repeat(32);
        assert_eq!(
            parse_digest(&format!("sha256:{hex}")).ok(),
            Some(hex.clone())
        );
        assert_eq!(parse_digest(&hex).ok(), Some(hex.clone()));
        assert!(parse_digest(&format!("sha512:{hex}")).is_err());
        assert!(parse_digest("sha256:").is_err());
    }

    #[test]
    fn a_layout_names_its_one_image() {
        let dir = std::env::temp_dir().join(format!("portcullis-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hex = "1a".repeat(32);
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{hex}","size":1}}]}}"#
        );
        std::fs::write(dir.join("index.json"), index).unwrap();
        assert_eq!(layout_digest(&dir).ok(), Some(hex.clone()));
        std::fs::write(dir.join("index.json"), r#"{"manifests":[]}"#).unwrap();
        assert!(layout_digest(&dir).is_err());
        std::fs::write(dir.join("index.json"), "not json").unwrap();
        assert!(layout_digest(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_template_names_only_known_placeholders() {
        let mut known: BTreeSet<String> = [
            "REGISTRY",
            "PORTCULLIS_IMAGE",
            "OIDC_CLIENT_SECRET",
            "OIDC_SESSION_SECRET",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for f in FILTERS {
            known.insert(format!("{}_IMAGE", f.var));
            known.insert(format!("{}_WASM", f.var));
        }
        let all = templates().unwrap();
        assert!(all.len() >= 10, "{} templates", all.len());
        for t in all {
            for v in t.variables().unwrap() {
                assert!(
                    known.contains(&v),
                    "{}: unknown placeholder ${{{v}}}",
                    t.path.display()
                );
            }
        }
    }

    #[test]
    fn secret_files_are_written_for_their_owner_only() {
        let dir = std::env::temp_dir().join(format!("portcullis-write-{}", std::process::id()));
        let set = RenderedSet {
            files: vec![
                Rendered {
                    path: "a/public.yaml".into(),
                    text: "a: 1\n".into(),
                    secret: false,
                },
                Rendered {
                    path: "a/secret.yaml".into(),
                    text: "s: x\n".into(),
                    secret: true,
                },
            ],
            skipped: vec![],
        };
        let written = write_all(&set, &dir).unwrap();
        assert_eq!(written.len(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode("a/secret.yaml") & 0o077, 0);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
