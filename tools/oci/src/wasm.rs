//! A filter's `.wasm` as the Wasm OCI images Istio (`WasmPlugin`) and Envoy Gateway
//! (`EnvoyExtensionPolicy`, image code source) pull. Both fetch an image by tag or
//! digest and accept either variant of the Wasm image specification:
//!
//! - **oci**: the manifest's config is the runtime configuration
//!   (`application/vnd.module.wasm.config.v1+json`: `{"type": "envoy_proxy",
//!   "abiVersions": [...], "config": {}}`) and the module is one layer of
//!   `application/vnd.module.wasm.content.layer.v1+wasm`, the raw `.wasm`. Istio's and
//!   Envoy Gateway's fetchers take this variant only with exactly two layers, the
//!   runtime configuration being the other (as `wasme` and `oras push` lay it out), so
//!   it is listed as the first layer too (the same blob, stored once).
//! - **compat**: a plain OCI image (`application/vnd.oci.image.config.v1+json`) with one
//!   `application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`, and the
//!   manifest annotation `module.wasm.image/variant: compat`: any registry and any
//!   image tool takes it.
//!
//! The module is checked first: a core Wasm module (not a component) that validates and
//! exports a proxy-wasm ABI version; the versions it exports are the config's
//! `abiVersions`. Our filters register one root context whatever the `root_id`, so the
//! config names none.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::OciError;
use crate::archive::Tree;
use crate::image::{Descriptor, Image, RunConfig, TITLE, to_json};

pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.module.wasm.config.v1+json";
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";
/// The file the compat layer holds, the name Istio and Envoy Gateway look for.
pub const PLUGIN_FILE: &str = "plugin.wasm";
pub const RUNTIME_CONFIG_FILE: &str = "runtime-config.json";
const VERSION: &str = "org.opencontainers.image.version";

/// The two variants of the Wasm image specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Oci,
    Compat,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Oci, Variant::Compat];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Oci => "oci",
            Variant::Compat => "compat",
        }
    }
}

/// The runtime configuration of the oci variant.
#[derive(Serialize)]
struct RuntimeConfig {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "abiVersions")]
    abi_versions: Vec<String>,
    config: BTreeMap<String, String>,
}

/// The proxy-wasm ABI versions `wasm` exports (`proxy_abi_version_0_2_1`, ...), after
/// checking it is a valid core Wasm module.
pub fn abi_versions(wasm: &[u8]) -> Result<Vec<String>, OciError> {
    let mut validator = wasmparser::Validator::new();
    validator
        .validate_all(wasm)
        .map_err(|e| OciError::NotAFilter(format!("invalid Wasm: {e}")))?;
    let mut versions = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| OciError::NotAFilter(e.to_string()))? {
            wasmparser::Payload::Version { encoding, .. }
                if encoding != wasmparser::Encoding::Module =>
            {
                return Err(OciError::NotAFilter(
                    "a Wasm component, not a core module".into(),
                ));
            }
            wasmparser::Payload::ExportSection(exports) => {
                for export in exports {
                    let export = export.map_err(|e| OciError::NotAFilter(e.to_string()))?;
                    if export.name.starts_with("proxy_abi_version_") {
                        versions.push(export.name.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    if versions.is_empty() {
        return Err(OciError::NotAFilter(
            "it exports no proxy_abi_version_* function".into(),
        ));
    }
    versions.sort();
    Ok(versions)
}

/// `wasm` as an image of `variant`, tagged `tag`, titled `name`.
pub fn image(variant: Variant, name: &str, tag: &str, wasm: &[u8]) -> Result<Image, OciError> {
    let abi = abi_versions(wasm)?;
    let mut annotations = BTreeMap::from([
        (TITLE.to_owned(), name.to_owned()),
        (VERSION.to_owned(), tag.to_owned()),
    ]);
    match variant {
        Variant::Oci => {
            let runtime = to_json(&RuntimeConfig {
                kind: "envoy_proxy",
                abi_versions: abi,
                config: BTreeMap::new(),
            })?;
            let config_layer = Descriptor::of(WASM_CONFIG_MEDIA_TYPE, &runtime)
                .annotated(TITLE, RUNTIME_CONFIG_FILE);
            let module = Descriptor::of(WASM_LAYER_MEDIA_TYPE, wasm).annotated(TITLE, PLUGIN_FILE);
            Image::new(
                tag,
                (WASM_CONFIG_MEDIA_TYPE, runtime.clone()),
                vec![(config_layer, runtime), (module, wasm.to_vec())],
                annotations,
            )
        }
        Variant::Compat => {
            let mut tree = Tree::new();
            tree.file(PLUGIN_FILE, wasm.to_vec(), 0o644)?;
            annotations.insert(VARIANT_ANNOTATION.into(), "compat".into());
            Image::one_tar_gzip_layer(
                tag,
                ("wasm", "wasip1"),
                RunConfig::default(),
                &tree.tar()?,
                annotations,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{IMAGE_CONFIG_MEDIA_TYPE, ImageConfig, LAYER_TAR_GZIP_MEDIA_TYPE};
    use crate::sha256_digest;

    /// The smallest proxy-wasm-looking module: one exported ABI marker function.
    fn module(export: &str) -> Vec<u8> {
        module_with_body(export, &[0x0b])
    }

    /// As `module`, the function's code being `code` (ending in `end`, 0x0b).
    fn module_with_body(export: &str, code: &[u8]) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        m.extend([1, 4, 1, 0x60, 0, 0]); // type section: () -> ()
        m.extend([3, 2, 1, 0]); // function section: one function of type 0
        let name = export.as_bytes();
        let mut exports = vec![1, name.len() as u8];
        exports.extend(name);
        exports.extend([0, 0]); // a function, index 0
        m.push(7);
        m.push(exports.len() as u8);
        m.extend(exports);
        // Code section: one body, no locals, then `code`.
        let body_len = 1 + code.len();
        m.extend([10, (2 + body_len) as u8, 1, body_len as u8, 0]);
        m.extend(code);
        m
    }

    #[test]
    fn a_module_using_simd_is_a_filter() {
        // v128.const 0, drop, end: our release builds of oidc carry SIMD instructions
        // (from its crypto dependencies), which Envoy and the gateway both run.
        let mut code = vec![0xfd, 0x0c];
        code.extend([0; 16]);
        code.extend([0x1a, 0x0b]);
        let wasm = module_with_body("proxy_abi_version_0_2_1", &code);
        assert_eq!(
            abi_versions(&wasm).expect("a filter"),
            ["proxy_abi_version_0_2_1"]
        );
    }

    #[test]
    fn a_proxy_wasm_module_gives_its_abi_version() {
        assert_eq!(
            abi_versions(&module("proxy_abi_version_0_2_1")).expect("a filter"),
            ["proxy_abi_version_0_2_1"]
        );
    }

    #[test]
    fn what_is_not_a_filter_is_refused() {
        assert!(abi_versions(&module("main")).is_err(), "no ABI export");
        assert!(abi_versions(b"not wasm").is_err());
        let mut truncated = module("proxy_abi_version_0_2_1");
        truncated.truncate(truncated.len() - 2);
        assert!(abi_versions(&truncated).is_err());
    }

    #[test]
    fn oci_variant_has_the_wasm_config_and_the_module_as_its_content_layer() {
        let wasm = module("proxy_abi_version_0_2_1");
        let img = image(Variant::Oci, "jwt-auth", "0.1.0", &wasm).expect("an image");
        let m = &img.manifest;
        assert_eq!(m.config.media_type, WASM_CONFIG_MEDIA_TYPE);
        let config: serde_json::Value =
            serde_json::from_slice(img.blob(&m.config.digest).expect("config")).expect("json");
        assert_eq!(config["type"], "envoy_proxy");
        assert_eq!(config["abiVersions"][0], "proxy_abi_version_0_2_1");
        let types: Vec<&str> = m.layers.iter().map(|l| l.media_type.as_str()).collect();
        assert_eq!(types, [WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE]);
        assert_eq!(img.blob(&m.layers[1].digest), Some(wasm.as_slice()));
        assert!(!m.annotations.contains_key(VARIANT_ANNOTATION));
    }

    #[test]
    fn compat_variant_is_one_gzip_layer_holding_plugin_wasm() {
        use std::io::Read;
        let wasm = module("proxy_abi_version_0_2_1");
        let img = image(Variant::Compat, "jwt-auth", "0.1.0", &wasm).expect("an image");
        let m = &img.manifest;
        assert_eq!(m.config.media_type, IMAGE_CONFIG_MEDIA_TYPE);
        assert_eq!(m.annotations[VARIANT_ANNOTATION], "compat");
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].media_type, LAYER_TAR_GZIP_MEDIA_TYPE);
        let gz = img.blob(&m.layers[0].digest).expect("the layer");
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut tar)
            .expect("gunzip");
        let config: ImageConfig =
            serde_json::from_slice(img.blob(&m.config.digest).expect("config")).expect("json");
        assert_eq!(config.rootfs.diff_ids, [sha256_digest(&tar)]);
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive.entries().expect("entries");
        let mut e = entries.next().expect("one entry").expect("readable");
        assert_eq!(e.path().expect("a path").to_str(), Some(PLUGIN_FILE));
        let mut got = Vec::new();
        e.read_to_end(&mut got).expect("its data");
        assert_eq!(got, wasm);
        assert!(entries.next().is_none());
    }

    #[test]
    fn the_same_module_makes_the_same_digests_and_another_does_not() {
        let a = module("proxy_abi_version_0_2_1");
        let b = module("proxy_abi_version_0_2_0");
        for v in Variant::ALL {
            let one = image(v, "f", "1", &a).expect("an image");
            let two = image(v, "f", "1", &a).expect("an image");
            assert_eq!(one.digest(), two.digest());
            assert_eq!(
                one.layout_tar().expect("tar"),
                two.layout_tar().expect("tar")
            );
            assert_ne!(
                one.digest(),
                image(v, "f", "1", &b).expect("an image").digest()
            );
        }
    }
}
