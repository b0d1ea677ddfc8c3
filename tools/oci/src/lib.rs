//! OCI images of Portcullis, made from what `cargo xtask build` produced, with no
//! container engine: each filter in the two Wasm image formats Istio's `WasmPlugin` and
//! Envoy Gateway's `EnvoyExtensionPolicy` pull, and the gateway as a runnable image.
//!
//! - [`archive`]: deterministic tar and gzip (fixed timestamps, owners and order).
//! - [`image`]: an image in memory (manifest, config, layers), written as an OCI image
//!   layout directory or tarball.
//! - [`wasm`]: a filter module as the `oci` and the `compat` Wasm image variants.
//! - [`gateway`]: the gateway binary, the shared libraries it needs and the filters as
//!   one image.
//! - [`registry`]: push to a registry and pull back by digest (the ORAS project's client).
//! - [`sums`]: `SHA256SUMS` for release artifacts.
//! - [`dist`]: the release directory (files, layout tarballs, `SHA256SUMS`).
//!
//! Everything here is reproducible: the same inputs make the same bytes, so the same
//! sources give the same digests (what Istio and Envoy Gateway pin).

pub mod archive;
pub mod dist;
pub mod gateway;
pub mod image;
pub mod registry;
pub mod sums;
pub mod wasm;

pub use image::{Descriptor, Image};

/// What can go wrong making, writing, pushing or pulling an image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a proxy-wasm module: {0}")]
    NotAFilter(String),
    #[error("invalid image content: {0}")]
    Invalid(String),
    #[error("registry: {0}")]
    Registry(String),
}

impl OciError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> OciError {
        OciError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// `sha256:<hex>` of `bytes`, the digest form OCI descriptors use.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// The lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in sum.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_in_lower_case_hex() {
        // SHA-256 of the empty string, and of "abc" (FIPS 180-2's example).
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
