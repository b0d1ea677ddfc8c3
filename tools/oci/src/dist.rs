//! The release directory `cargo xtask dist` fills: files copied under their release
//! names, images as layout tarballs, and `SHA256SUMS` over all of them.

use std::path::{Path, PathBuf};

use crate::{Image, OciError, sums};

/// A release file name: one plain name, no directory.
fn check_name(name: &str) -> Result<(), OciError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(OciError::Invalid(format!(
            "{name:?}: not a release file name"
        )));
    }
    Ok(())
}

/// Writes into `dir` each of `files` (source path, release name) and each of `images`
/// (release name of its layout tarball, image), then `SHA256SUMS`, whose text is
/// returned. `dir` is replaced when it is empty or a release directory already (it
/// holds `SHA256SUMS`); anything else there is an error, so a wrong path loses nothing.
pub fn write_dist(
    dir: &Path,
    files: &[(PathBuf, String)],
    images: &[(String, &Image)],
) -> Result<String, OciError> {
    for name in files
        .iter()
        .map(|f| &f.1)
        .chain(images.iter().map(|i| &i.0))
    {
        check_name(name)?;
    }
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| OciError::io(dir, e))?
            .next()
            .is_none();
        if !empty && !dir.join("SHA256SUMS").is_file() {
            return Err(OciError::Invalid(format!(
                "{} exists and is not a release directory; not replacing it",
                dir.display()
            )));
        }
        std::fs::remove_dir_all(dir).map_err(|e| OciError::io(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| OciError::io(dir, e))?;
    for (from, name) in files {
        std::fs::copy(from, dir.join(name)).map_err(|e| OciError::io(from, e))?;
    }
    for (name, image) in images {
        image.write_tar(&dir.join(name))?;
    }
    sums::write_sha256sums(dir)?;
    let path = dir.join("SHA256SUMS");
    std::fs::read_to_string(&path).map_err(|e| OciError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_a_directory_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "a\0"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("portcullis-0.1.0-x86_64-linux-gnu").is_ok());
    }

    #[test]
    fn a_directory_that_is_not_a_release_is_not_replaced() {
        let dir = std::env::temp_dir().join(format!("portcullis-dist-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a dir");
        std::fs::write(dir.join("keep"), b"mine").expect("a file");
        let src = dir.join("keep");
        assert!(write_dist(&dir, &[(src.clone(), "copy".into())], &[]).is_err());
        assert!(dir.join("keep").exists());
        let out = dir.join("dist");
        let text = write_dist(&out, &[(src.clone(), "copy".into())], &[]).expect("written");
        assert!(text.ends_with("  copy\n"), "{text}");
        // A release directory is replaced: what it held before is gone.
        std::fs::write(out.join("stale"), b"old").expect("a file");
        write_dist(&out, &[(src, "copy".into())], &[]).expect("replaced");
        assert!(!out.join("stale").exists());
        std::fs::remove_dir_all(&dir).expect("cleaned");
    }
}
