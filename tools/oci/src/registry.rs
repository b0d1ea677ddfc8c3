//! Pushing an [`Image`] to a registry exactly as built (the same blobs and manifest
//! bytes, so the registry serves the digest the layout has), and pulling an image back
//! by digest with every byte checked, through the ORAS project's `oci-client`.
//!
//! Credentials: `PORTCULLIS_REGISTRY_USER` and `PORTCULLIS_REGISTRY_PASSWORD` (basic
//! auth, or the token exchange the registry asks for); anonymous without them.
//! Registries on loopback (`localhost`, `127.0.0.1`, `[::1]`) are spoken to over plain
//! HTTP, as Docker does; any other over HTTPS unless `plain_http` is set.

use std::collections::BTreeMap;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::image::{Descriptor, MANIFEST_MEDIA_TYPE, Manifest};
use crate::{Image, OciError, sha256_digest};

/// A manifest is a few KB: a registry sending more is refused.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Plain HTTP to every registry, not only to those on loopback.
    pub plain_http: bool,
}

fn registry_err(what: &str, e: impl std::fmt::Display) -> OciError {
    OciError::Registry(format!("{what}: {e}"))
}

fn parse(reference: &str) -> Result<Reference, OciError> {
    reference
        .parse::<Reference>()
        .map_err(|e| registry_err(&format!("bad reference {reference:?}"), e))
}

fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

fn client(reference: &Reference, options: &Options) -> Result<Client, OciError> {
    // reqwest's rustls needs a process-wide provider: ring, as the gateway uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = reference.resolve_registry().to_owned();
    let protocol = if options.plain_http {
        ClientProtocol::Http
    } else if is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    Client::try_from(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    })
    .map_err(|e| registry_err("cannot make a registry client", e))
}

fn auth() -> RegistryAuth {
    match (
        std::env::var("PORTCULLIS_REGISTRY_USER"),
        std::env::var("PORTCULLIS_REGISTRY_PASSWORD"),
    ) {
        (Ok(user), Ok(password)) => RegistryAuth::Basic(user, password),
        _ => RegistryAuth::Anonymous,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, OciError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| registry_err("cannot start a runtime", e))
}

/// Pushes `image` as `reference` (`registry/repository:tag`): every blob the registry
/// lacks, then the manifest. Returns `registry/repository@sha256:...`, the digest the
/// registry answered (checked to be the image's).
pub fn push(image: &Image, reference: &str, options: &Options) -> Result<String, OciError> {
    let r = parse(reference)?;
    let client = client(&r, options)?;
    let auth = auth();
    runtime()?.block_on(async {
        client
            .auth(&r, &auth, oci_client::RegistryOperation::Push)
            .await
            .map_err(|e| registry_err(&format!("{reference}: authenticating"), e))?;
        for (digest, bytes) in image.blobs() {
            let present = client
                .blob_exists(&r, digest)
                .await
                .map_err(|e| registry_err(&format!("{reference}: is {digest} there"), e))?;
            if !present {
                client
                    .push_blob(&r, bytes.to_vec(), digest)
                    .await
                    .map_err(|e| registry_err(&format!("{reference}: pushing {digest}"), e))?;
            }
        }
        client
            .push_manifest_raw(
                &r,
                image.manifest_bytes().to_vec(),
                http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE),
            )
            .await
            .map_err(|e| registry_err(&format!("{reference}: pushing the manifest"), e))?;
        // What the registry now serves under the tag must be exactly this manifest.
        let digest = client
            .fetch_manifest_digest(&r, &auth)
            .await
            .map_err(|e| registry_err(&format!("{reference}: reading the digest back"), e))?;
        if digest != image.digest() {
            return Err(OciError::Registry(format!(
                "{reference}: the registry serves {digest}, not the pushed {}",
                image.digest()
            )));
        }
        Ok(format!("{}/{}@{digest}", r.registry(), r.repository()))
    })
}

/// An image pulled from a registry, every byte checked against its digest.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub digest: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    /// Config and layers by digest.
    pub blobs: BTreeMap<String, Vec<u8>>,
}

/// Whether `bytes` are what `d` describes (size and digest).
pub fn verify(d: &Descriptor, bytes: &[u8]) -> Result<(), OciError> {
    if bytes.len() as u64 != d.size {
        return Err(OciError::Invalid(format!(
            "{}: {} bytes, the descriptor says {}",
            d.digest,
            bytes.len(),
            d.size
        )));
    }
    let actual = sha256_digest(bytes);
    if actual != d.digest {
        return Err(OciError::Invalid(format!(
            "{}: the content is {actual}",
            d.digest
        )));
    }
    Ok(())
}

/// Pulls `reference`, which names a manifest by digest (`registry/repo@sha256:...`):
/// the manifest (its bytes must hash to that digest), then its config and layers,
/// each read no further than its descriptor's size and checked against its digest.
pub fn pull_by_digest(reference: &str, options: &Options) -> Result<Pulled, OciError> {
    use futures_util::StreamExt;
    let r = parse(reference)?;
    let Some(want) = r.digest().map(str::to_owned) else {
        return Err(OciError::Registry(format!(
            "{reference}: not a reference by digest (repository@sha256:...)"
        )));
    };
    let client = client(&r, options)?;
    let auth = auth();
    runtime()?.block_on(async {
        client
            .auth(&r, &auth, oci_client::RegistryOperation::Pull)
            .await
            .map_err(|e| registry_err(&format!("{reference}: authenticating"), e))?;
        let (bytes, _) = client
            .pull_manifest_raw(&r, &auth, &[MANIFEST_MEDIA_TYPE])
            .await
            .map_err(|e| registry_err(&format!("{reference}: the manifest"), e))?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(OciError::Invalid(format!(
                "{reference}: a manifest of {} bytes",
                bytes.len()
            )));
        }
        if sha256_digest(&bytes) != want {
            return Err(OciError::Invalid(format!(
                "{reference}: the registry's manifest is {}",
                sha256_digest(&bytes)
            )));
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| OciError::Invalid(format!("{reference}: manifest: {e}")))?;
        let mut blobs = BTreeMap::new();
        for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if blobs.contains_key(&d.digest) {
                continue;
            }
            let mut stream = client
                .pull_blob_stream(&r, d.digest.as_str())
                .await
                .map_err(|e| registry_err(&format!("{reference}: {}", d.digest), e))?;
            let mut data = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk =
                    chunk.map_err(|e| registry_err(&format!("{reference}: {}", d.digest), e))?;
                if (data.len() + chunk.len()) as u64 > d.size {
                    return Err(OciError::Invalid(format!(
                        "{}: the registry sends more than the descriptor's {} bytes",
                        d.digest, d.size
                    )));
                }
                data.extend_from_slice(&chunk);
            }
            verify(d, &data)?;
            blobs.insert(d.digest.clone(), data);
        }
        Ok(Pulled {
            digest: want,
            manifest_bytes: bytes.to_vec(),
            manifest,
            blobs,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.0.0.1",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "registry.example.com",
            "localhost.example.com:5000",
            "10.0.0.1:5000",
            "[2001:db8::1]:5000",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn a_pull_needs_a_digest() {
        let e = pull_by_digest("127.0.0.1:1/portcullis/jwt-auth:0.1.0", &Options::default());
        assert!(matches!(e, Err(OciError::Registry(m)) if m.contains("not a reference by digest")));
    }

    proptest! {
        // Content is accepted only when it is exactly what the descriptor names: any
        // change of a byte, any byte more or less, is refused.
        #[test]
        fn only_the_described_bytes_verify(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<proptest::sample::Index>(),
            extra in any::<u8>(),
        ) {
            let d = Descriptor::of("application/octet-stream", &data);
            prop_assert!(verify(&d, &data).is_ok());
            if !data.is_empty() {
                let mut changed = data.clone();
                let i = flip.index(changed.len());
                changed[i] ^= 1;
                prop_assert!(verify(&d, &changed).is_err());
                prop_assert!(verify(&d, &data[..data.len() - 1]).is_err());
            }
            let mut longer = data.clone();
            longer.push(extra);
            prop_assert!(verify(&d, &longer).is_err());
        }
    }
}
