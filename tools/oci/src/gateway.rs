//! The gateway as a runnable container image with no base image: one layer holding the
//! `portcullis` binary, the shared libraries it links (glibc's loader, libc, libm,
//! libgcc_s, copied from the build machine, with their Debian copyright files), the CA
//! bundle, a `nonroot` user (65532, as distroless images have) and the five filters.
//! It runs as 65532 with a read-only root filesystem: the only places it writes are
//! `$PORTCULLIS_CACHE_DIR` (`/var/cache/portcullis`, owned by 65532: mount a tmpfs or
//! emptyDir there) and `/tmp`.
//!
//! The `Dockerfile` at the root of the repository builds the same layout on
//! `gcr.io/distroless/cc-debian12:nonroot` where a container engine runs;
//! `host/gateway/tests/images.rs` checks the two agree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::OciError;
use crate::archive::Tree;
use crate::image::{Image, RunConfig, TITLE};

/// The user and group the gateway runs as (distroless's `nonroot`).
pub const UID: u64 = 65532;
pub const BINARY: &str = "/usr/local/bin/portcullis";
pub const FILTERS_DIR: &str = "/usr/local/lib/portcullis/filters";
pub const CACHE_DIR: &str = "/var/cache/portcullis";
/// Where the default command reads the configuration: mount it there.
pub const CONFIG: &str = "/etc/portcullis/portcullis.yaml";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How a runtime starts the image.
pub fn run_config(tag: &str) -> RunConfig {
    RunConfig {
        user: Some(format!("{UID}:{UID}")),
        env: vec![
            "PATH=/usr/local/bin".into(),
            format!("PORTCULLIS_CACHE_DIR={CACHE_DIR}"),
        ],
        entrypoint: vec![BINARY.into()],
        cmd: vec!["run".into(), "--config".into(), CONFIG.into()],
        working_dir: Some("/".into()),
        labels: BTreeMap::from([
            (TITLE.to_owned(), "portcullis".to_owned()),
            (
                "org.opencontainers.image.version".to_owned(),
                tag.to_owned(),
            ),
        ]),
    }
}

/// The shared libraries `ldd` names for `binary` (the loader included; the vDSO is the
/// kernel's), or none for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, OciError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| OciError::Invalid(format!("cannot run ldd (Debian: libc-bin): {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable" (a static binary) is ldd's failure.
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(OciError::Invalid(format!(
            "ldd {}: {err}",
            binary.display()
        )));
    }
    parse_ldd(&text)
}

/// The library paths in `ldd` output.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, OciError> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(OciError::Invalid(format!(
                        "{} is needed and not found",
                        name.trim()
                    )));
                }
                target.split(" (").next().unwrap_or("").trim()
            }
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if !path.starts_with("linux-vdso") && !path.starts_with("linux-gate") {
            return Err(OciError::Invalid(format!("unexpected ldd line: {line}")));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// The copyright file of the Debian package that installed `lib`, if dpkg knows it.
fn copyright_of(lib: &Path) -> Option<PathBuf> {
    let canonical = std::fs::canonicalize(lib).ok();
    for p in std::iter::once(lib.to_path_buf()).chain(canonical) {
        let out = Command::new("dpkg").arg("-S").arg(&p).output().ok()?;
        if !out.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let package = text.split(':').next()?.trim();
        let file = PathBuf::from("/usr/share/doc")
            .join(package)
            .join("copyright");
        if file.is_file() {
            return Some(file);
        }
    }
    None
}

fn read(path: &Path) -> Result<Vec<u8>, OciError> {
    std::fs::read(path).map_err(|e| OciError::io(path, e))
}

fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// The image's files: `binary`, the libraries it needs, `filters` (`.wasm` paths, kept
/// under their file names), the CA bundle if the build machine has one.
pub fn rootfs(binary: &Path, filters: &[PathBuf]) -> Result<Tree, OciError> {
    let mut t = Tree::new();
    t.file(rel(BINARY), read(binary)?, 0o755)?;
    for lib in shared_libraries(binary)? {
        let name = lib.to_string_lossy().into_owned();
        t.file(rel(&name), read(&lib)?, 0o755)?;
        if let Some(c) = copyright_of(&lib) {
            t.file(rel(&c.to_string_lossy()), read(&c)?, 0o644)?;
        }
    }
    for f in filters {
        let name = f
            .file_name()
            .ok_or_else(|| OciError::Invalid(format!("{}: no file name", f.display())))?
            .to_string_lossy()
            .into_owned();
        t.file(&format!("{}/{name}", rel(FILTERS_DIR)), read(f)?, 0o644)?;
    }
    if Path::new(CA_BUNDLE).is_file() {
        t.file(rel(CA_BUNDLE), read(Path::new(CA_BUNDLE))?, 0o644)?;
    }
    t.file(
        "etc/passwd",
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{UID}:{UID}:nonroot:/home/nonroot:/sbin/nologin\n"
        )
        .into_bytes(),
        0o644,
    )?;
    t.file(
        "etc/group",
        format!("root:x:0:\nnonroot:x:{UID}:\n").into_bytes(),
        0o644,
    )?;
    t.dir("etc/portcullis", 0o755, 0, 0)?;
    t.dir("home/nonroot", 0o700, UID, UID)?;
    t.dir(rel(CACHE_DIR), 0o755, UID, UID)?;
    t.dir("tmp", 0o1777, 0, 0)?;
    Ok(t)
}

/// The OCI architecture name of the machine building (the binary's).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The gateway image, tagged `tag`.
pub fn image(tag: &str, binary: &Path, filters: &[PathBuf]) -> Result<Image, OciError> {
    let tar = rootfs(binary, filters)?.tar()?;
    Image::one_tar_gzip_layer(
        tag,
        (oci_arch(), "linux"),
        run_config(tag),
        &tar,
        BTreeMap::from([(TITLE.to_owned(), "portcullis".to_owned())]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f61)\n\
                   \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f62)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f63)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f64)\n";
        let libs = parse_ldd(out).expect("parsed");
        let names: Vec<&str> = libs.iter().map(|p| p.to_str().unwrap_or("")).collect();
        assert_eq!(
            names,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn a_missing_library_or_an_odd_line_is_an_error() {
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
        assert!(parse_ldd("\tsomething odd\n").is_err());
        assert_eq!(
            parse_ldd("\tstatically linked\n").expect("parsed"),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn it_runs_as_nonroot_with_its_cache_outside_the_root_filesystem() {
        let c = run_config("0.1.0");
        assert_eq!(c.user.as_deref(), Some("65532:65532"));
        assert!(
            c.env
                .contains(&"PORTCULLIS_CACHE_DIR=/var/cache/portcullis".to_owned())
        );
        assert_eq!(c.entrypoint, [BINARY]);
    }
}
