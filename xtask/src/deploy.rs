//! `cargo xtask deploy-manifests`: the manifests of `deploy/` rendered for a registry,
//! with the images' digests and the built modules' checksums, into `target/deploy/`
//! (the templates and their placeholders: `deploy/src/lib.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use portcullis_deploy::{FILTERS, GATEWAY_IMAGE, Inputs};

const USAGE: &str = "usage: cargo xtask deploy-manifests [--registry HOST/PATH] \
[--image NAME=sha256:HEX]... [--oci-layout NAME=DIR]... [--out DIR]
  NAME: oidc, jwt-auth, tier-limiter, header-forwarder or portcullis (the gateway)
  the oidc manifests are written only with PORTCULLIS_OIDC_CLIENT_SECRET and
  PORTCULLIS_OIDC_SESSION_SECRET set";

pub fn deploy_manifests(args: &[String]) -> Result<(), String> {
    let mut registry = portcullis_deploy::EXAMPLE_REGISTRY.to_owned();
    let mut images: BTreeMap<String, String> = BTreeMap::new();
    let mut out = super::target_dir().join("deploy");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--registry" => registry = value()?,
            "--out" => out = PathBuf::from(value()?),
            "--image" | "--oci-layout" => {
                let v = value()?;
                let (name, what) = v
                    .split_once('=')
                    .ok_or_else(|| format!("{a} {v}: expected NAME=...\n{USAGE}"))?;
                if name != GATEWAY_IMAGE && !FILTERS.iter().any(|f| f.name == name) {
                    return Err(format!("{a} {v}: unknown image `{name}`\n{USAGE}"));
                }
                let digest = if a == "--image" {
                    portcullis_deploy::parse_digest(what)
                } else {
                    portcullis_deploy::layout_digest(&PathBuf::from(what))
                }
                .map_err(|e| e.to_string())?;
                images.insert(name.to_owned(), digest);
            }
            _ => return Err(format!("unknown argument `{a}`\n{USAGE}")),
        }
    }
    let missing: Vec<&str> = FILTERS
        .iter()
        .map(|f| f.name)
        .chain([GATEWAY_IMAGE])
        .filter(|n| !images.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "no image digest for {}: the manifests pin every image by digest. Build and \
             push the images (`cargo xtask oci`, and the gateway's container image), then \
             pass each digest with --image NAME=sha256:HEX or its layout with \
             --oci-layout NAME=DIR\n{USAGE}",
            missing.join(", ")
        ));
    }
    let mut modules = BTreeMap::new();
    for f in FILTERS {
        let path = super::wasm_dir().join(f.wasm);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        modules.insert(f.name.to_owned(), portcullis_deploy::sha256_hex(&bytes));
    }
    let oidc_secrets = match (
        std::env::var("PORTCULLIS_OIDC_CLIENT_SECRET"),
        std::env::var("PORTCULLIS_OIDC_SESSION_SECRET"),
    ) {
        (Ok(client), Ok(session)) => Some((client, session)),
        _ => None,
    };
    let inputs = Inputs {
        registry,
        images,
        modules,
        oidc_secrets,
    };
    let set = portcullis_deploy::render_all(&inputs).map_err(|e| e.to_string())?;
    let written = portcullis_deploy::write_all(&set, &out).map_err(|e| e.to_string())?;
    for p in &written {
        eprintln!("  {}", p.display());
    }
    for p in &set.skipped {
        eprintln!(
            "  not written: {} (set PORTCULLIS_OIDC_CLIENT_SECRET and PORTCULLIS_OIDC_SESSION_SECRET)",
            p.display()
        );
    }
    eprintln!(
        "{} manifests in {}; apply with kubectl apply -f (README, \"Deploy\")",
        written.len(),
        out.display()
    );
    Ok(())
}
