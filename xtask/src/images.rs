//! `cargo xtask oci` and `cargo xtask dist`: the OCI images of the filters and of the
//! gateway (made by `tools/oci`, no container engine needed), pushed to a registry on
//! request, and the release artifacts with their `SHA256SUMS`.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_oci::wasm::Variant;
use portcullis_oci::{Image, gateway, registry};

use crate::{FILTERS, build_host, build_only, root, run, target_dir, wasm_dir};

/// One image as written: its short name (`jwt-auth-oci`), where the layout is, and the
/// repository name and tag a push gives it under the prefix.
struct Built {
    name: String,
    image: Image,
    repository: String,
    tag: String,
}

/// `version = "..."` of the `[package]` in `manifest`.
fn package_version(manifest: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
        })
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: no package version", manifest.display()))
}

fn filter_wasm(filter: &str) -> PathBuf {
    wasm_dir().join(format!("{}.wasm", filter.replace('-', "_")))
}

/// The gateway binary as released and put in the image: the `host` build without its
/// line tables (125 MB -> 26 MB; symbols stay, so a backtrace still names functions).
fn gateway_binary() -> Result<PathBuf, String> {
    let out = target_dir().join("oci-stage");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let stripped = out.join("portcullis");
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(target_dir().join("host/portcullis")))
    .map_err(|e| format!("{e} (strip is Debian's binutils)"))?;
    Ok(stripped)
}

/// Builds the filters and the gateway, makes every image and writes each as a layout
/// directory and a tarball under `target/oci/`.
fn build_images() -> Result<Vec<Built>, String> {
    build_only(&FILTERS)?;
    build_host(&["portcullis"])?;
    let mut built = Vec::new();
    for filter in FILTERS {
        let version = package_version(&root().join("filters").join(filter).join("Cargo.toml"))?;
        let path = filter_wasm(filter);
        let wasm = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for variant in Variant::ALL {
            let image = portcullis_oci::wasm::image(variant, filter, &version, &wasm)
                .map_err(|e| format!("{filter} ({}): {e}", variant.name()))?;
            // compat is what every registry and tool takes: it gets the plain tag.
            let tag = match variant {
                Variant::Compat => version.clone(),
                Variant::Oci => format!("{version}-oci"),
            };
            built.push(Built {
                name: format!("{filter}-{}", variant.name()),
                image,
                repository: filter.to_owned(),
                tag,
            });
        }
    }
    let version = package_version(&root().join("host/gateway/Cargo.toml"))?;
    let filters: Vec<PathBuf> = FILTERS.iter().map(|f| filter_wasm(f)).collect();
    let image = gateway::image(&version, &gateway_binary()?, &filters)
        .map_err(|e| format!("the gateway image: {e}"))?;
    built.push(Built {
        name: "portcullis".into(),
        image,
        repository: "portcullis".into(),
        tag: version,
    });
    let out = target_dir().join("oci");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    for b in &built {
        b.image
            .write_dir(&out.join(&b.name))
            .and_then(|()| b.image.write_tar(&out.join(format!("{}.tar", b.name))))
            .map_err(|e| format!("{}: {e}", b.name))?;
    }
    Ok(built)
}

/// `cargo xtask oci [--push REPOSITORY_PREFIX] [--plain-http]`.
pub fn oci(args: &[String]) -> Result<(), String> {
    let mut push_to = None;
    let mut options = registry::Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--push" => {
                push_to = Some(
                    it.next()
                        .ok_or("--push needs a repository prefix, e.g. ghcr.io/acme/portcullis")?
                        .trim_end_matches('/')
                        .to_owned(),
                )
            }
            "--plain-http" => options.plain_http = true,
            other => return Err(format!("oci: unknown argument {other}")),
        }
    }
    let built = build_images()?;
    let out = target_dir().join("oci");
    println!(
        "\n{:<26} {:<73} layout (and .tar)",
        "image", "manifest digest"
    );
    for b in &built {
        println!(
            "{:<26} {:<73} {}",
            b.name,
            b.image.digest(),
            out.join(&b.name).display()
        );
    }
    if let Some(prefix) = push_to {
        println!();
        for b in &built {
            let reference = format!("{prefix}/{}:{}", b.repository, b.tag);
            let pinned = registry::push(&b.image, &reference, &options)
                .map_err(|e| format!("pushing {}: {e}", b.name))?;
            println!("pushed {reference}\n       {pinned}");
        }
    }
    Ok(())
}

/// `cargo xtask dist`: into `target/dist/`, the five `.wasm`, the gateway binary, every
/// image's layout tarball and `SHA256SUMS`.
pub fn dist() -> Result<(), String> {
    let built = build_images()?;
    let dist = target_dir().join("dist");
    let mut files = Vec::new();
    for filter in FILTERS {
        let wasm = filter_wasm(filter);
        let name = wasm
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((wasm, name));
    }
    let version = package_version(&root().join("host/gateway/Cargo.toml"))?;
    files.push((
        gateway_binary()?,
        format!("portcullis-{version}-{}-linux-gnu", std::env::consts::ARCH),
    ));
    let images: Vec<(String, &Image)> = built
        .iter()
        .map(|b| {
            let version = b.tag.trim_end_matches("-oci");
            (format!("{}-{version}.oci.tar", b.name), &b.image)
        })
        .collect();
    let text = portcullis_oci::dist::write_dist(&dist, &files, &images)
        .map_err(|e| format!("{}: {e}", dist.display()))?;
    println!("\n{}:\n{text}", dist.display());
    Ok(())
}
