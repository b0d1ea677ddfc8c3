//! `SHA256SUMS` for a directory of release artifacts, in the format `sha256sum -c`
//! checks: one `<hex>  <name>` line per file, sorted by name.

use std::path::Path;

use crate::{OciError, sha256_hex};

/// The `SHA256SUMS` text for the regular files directly in `dir` (not itself).
pub fn sha256sums(dir: &Path) -> Result<String, OciError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| OciError::io(dir, e))? {
        let entry = entry.map_err(|e| OciError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry
            .file_type()
            .map_err(|e| OciError::io(&entry.path(), e))?
            .is_file();
        if is_file && name != "SHA256SUMS" {
            if name.contains(['\n', '\\']) {
                return Err(OciError::Invalid(format!(
                    "{name:?}: not a name SHA256SUMS can hold"
                )));
            }
            names.push(name);
        }
    }
    names.sort();
    let mut out = String::new();
    for name in names {
        let path = dir.join(&name);
        let bytes = std::fs::read(&path).map_err(|e| OciError::io(&path, e))?;
        out.push_str(&format!("{}  {name}\n", sha256_hex(&bytes)));
    }
    Ok(out)
}

/// Writes `dir/SHA256SUMS`.
pub fn write_sha256sums(dir: &Path) -> Result<(), OciError> {
    let text = sha256sums(dir)?;
    let path = dir.join("SHA256SUMS");
    std::fs::write(&path, text).map_err(|e| OciError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sorted_line_per_file_and_none_for_itself_or_dirs() {
        let dir = std::env::temp_dir().join(format!("portcullis-sums-unit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("a dir");
        std::fs::write(dir.join("b.wasm"), b"abc").expect("a file");
        std::fs::write(dir.join("a.tar"), b"").expect("a file");
        std::fs::write(dir.join("SHA256SUMS"), b"old").expect("a file");
        let text = sha256sums(&dir).expect("sums");
        std::fs::remove_dir_all(&dir).expect("cleaned");
        assert_eq!(
            text,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  a.tar\n\
             ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  b.wasm\n"
        );
    }
}
