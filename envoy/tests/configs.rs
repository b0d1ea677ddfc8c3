//! The ready-made Envoy configurations in `envoy/configs/` stay valid: each is checked
//! by `envoy --mode validate` (from the repository root, where their paths point).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn every_shipped_envoy_config_validates() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let envoy = portcullis_envoy::envoy_binary().unwrap_or_else(|e| panic!("{e}"));
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("envoy/configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Command::new(&envoy)
                .args(["--mode", "validate", "-l", "error", "-c"])
                .arg(&path)
                .current_dir(&root)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}{}",
                path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 1);
}
