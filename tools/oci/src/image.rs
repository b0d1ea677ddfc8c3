//! One image in memory (its manifest, config and layers, each a blob named by its
//! digest) and the OCI image layout it is written as: a directory (`oci-layout`,
//! `index.json`, `blobs/sha256/<hex>`) or the same as one tar file, which
//! `skopeo copy oci-archive:`, `oras` and `crane` read.
//!
//! The JSON is our own serde types, serialized in one fixed field order with maps
//! sorted, so a manifest's bytes (and digest) depend only on what it describes.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::archive::Tree;
use crate::{OciError, sha256_digest};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const IMAGE_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TAR_GZIP_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation a layout's `index.json` names an image by (its tag).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const TITLE: &str = "org.opencontainers.image.title";

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
        }
    }

    pub fn annotated(mut self, key: &str, value: &str) -> Descriptor {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// An OCI image manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index (a layout's `index.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// An OCI image configuration (`application/vnd.oci.image.config.v1+json`): the
/// platform, how a runtime starts it, and the digests of its uncompressed layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub config: RunConfig,
    pub rootfs: RootFs,
}

/// The part of an image configuration a container runtime starts the container from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    /// A configuration for one layer whose uncompressed tar is `layer_tar`.
    pub fn one_layer(
        architecture: &str,
        os: &str,
        config: RunConfig,
        layer_tar: &[u8],
    ) -> ImageConfig {
        ImageConfig {
            architecture: architecture.into(),
            os: os.into(),
            config,
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![sha256_digest(layer_tar)],
            },
        }
    }

    pub fn to_json(&self) -> Result<Vec<u8>, OciError> {
        to_json(self)
    }
}

/// An image: the manifest and every blob it names.
#[derive(Clone, Debug)]
pub struct Image {
    /// The tag `index.json` gives it.
    pub tag: String,
    pub manifest: Manifest,
    manifest_bytes: Vec<u8>,
    /// Config and layers by digest (a blob named twice is held once).
    blobs: BTreeMap<String, Vec<u8>>,
}

impl Image {
    /// An image of one tar+gzip layer holding `tar` (a container image's or the Wasm
    /// compat variant's), its config naming `architecture` and `os`.
    pub fn one_tar_gzip_layer(
        tag: &str,
        (architecture, os): (&str, &str),
        run: RunConfig,
        tar: &[u8],
        annotations: BTreeMap<String, String>,
    ) -> Result<Image, OciError> {
        let layer = crate::archive::gzip(tar);
        let config = ImageConfig::one_layer(architecture, os, run, tar);
        let desc = Descriptor {
            media_type: LAYER_TAR_GZIP_MEDIA_TYPE.into(),
            digest: sha256_digest(&layer),
            size: layer.len() as u64,
            annotations: BTreeMap::new(),
        };
        Image::new(
            tag,
            (IMAGE_CONFIG_MEDIA_TYPE, config.to_json()?),
            vec![(desc, layer)],
            annotations,
        )
    }

    /// An image of `config` (with its media type) and `layers` (media type, bytes,
    /// annotations), the manifest annotated with `annotations`.
    pub fn new(
        tag: &str,
        config: (&str, Vec<u8>),
        layers: Vec<(Descriptor, Vec<u8>)>,
        annotations: BTreeMap<String, String>,
    ) -> Result<Image, OciError> {
        let mut blobs = BTreeMap::new();
        let config_desc = Descriptor::of(config.0, &config.1);
        blobs.insert(config_desc.digest.clone(), config.1);
        let mut descs = Vec::new();
        for (d, bytes) in layers {
            if d.digest != sha256_digest(&bytes) || d.size != bytes.len() as u64 {
                return Err(OciError::Invalid(format!(
                    "layer {} does not match its bytes",
                    d.digest
                )));
            }
            blobs.insert(d.digest.clone(), bytes);
            descs.push(d);
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.into(),
            config: config_desc,
            layers: descs,
            annotations,
        };
        let manifest_bytes = to_json(&manifest)?;
        Ok(Image {
            tag: tag.to_owned(),
            manifest,
            manifest_bytes,
            blobs,
        })
    }

    /// The manifest's digest: what Istio's `url: oci://...@sha256:...` and Envoy
    /// Gateway's image `url` pin.
    pub fn digest(&self) -> String {
        sha256_digest(&self.manifest_bytes)
    }

    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The manifest's descriptor, as `index.json` lists it.
    pub fn manifest_descriptor(&self) -> Descriptor {
        Descriptor::of(MANIFEST_MEDIA_TYPE, &self.manifest_bytes).annotated(REF_NAME, &self.tag)
    }

    /// A blob the manifest names (config or layer).
    pub fn blob(&self, digest: &str) -> Option<&[u8]> {
        self.blobs.get(digest).map(Vec::as_slice)
    }

    /// Config and layers, by digest.
    pub fn blobs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.blobs.iter().map(|(d, b)| (d.as_str(), b.as_slice()))
    }

    /// The OCI image layout's files: `oci-layout`, `index.json` and every blob.
    pub fn layout(&self) -> Result<Tree, OciError> {
        let index = Index {
            schema_version: 2,
            media_type: INDEX_MEDIA_TYPE.into(),
            manifests: vec![self.manifest_descriptor()],
        };
        let mut t = Tree::new();
        t.file(
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            0o644,
        )?;
        t.file("index.json", to_json(&index)?, 0o644)?;
        t.file(
            &blob_path(&self.digest()),
            self.manifest_bytes.clone(),
            0o644,
        )?;
        for (digest, bytes) in &self.blobs {
            t.file(&blob_path(digest), bytes.clone(), 0o644)?;
        }
        Ok(t)
    }

    /// Writes the layout as a directory. `dir` is replaced if it is a layout already;
    /// anything else there is an error (so a wrong path never loses files).
    pub fn write_dir(&self, dir: &Path) -> Result<(), OciError> {
        if dir.exists() {
            if !dir.join("oci-layout").is_file() {
                return Err(OciError::Invalid(format!(
                    "{} exists and is not an OCI image layout; not replacing it",
                    dir.display()
                )));
            }
            std::fs::remove_dir_all(dir).map_err(|e| OciError::io(dir, e))?;
        }
        for (path, node) in self.layout()?.entries() {
            let p = dir.join(path);
            match node {
                crate::archive::Node::Dir { .. } => {
                    std::fs::create_dir_all(&p).map_err(|e| OciError::io(&p, e))?
                }
                crate::archive::Node::File { data, .. } => {
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| OciError::io(parent, e))?;
                    }
                    std::fs::write(&p, data).map_err(|e| OciError::io(&p, e))?
                }
            }
        }
        Ok(())
    }

    /// The layout as one tar (deterministic, like every archive here).
    pub fn layout_tar(&self) -> Result<Vec<u8>, OciError> {
        self.layout()?.tar()
    }

    pub fn write_tar(&self, path: &Path) -> Result<(), OciError> {
        std::fs::write(path, self.layout_tar()?).map_err(|e| OciError::io(path, e))
    }
}

/// `blobs/sha256/<hex>` for `sha256:<hex>`.
pub fn blob_path(digest: &str) -> String {
    digest
        .replacen(':', "/", 1)
        .replace("sha256/", "blobs/sha256/")
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, OciError> {
    serde_json::to_vec(v).map_err(|e| OciError::Invalid(format!("json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Image {
        let layer = b"layer".to_vec();
        Image::new(
            "1.0.0",
            ("application/vnd.example.config+json", b"{}".to_vec()),
            vec![(
                Descriptor::of("application/vnd.example.layer", &layer),
                layer,
            )],
            BTreeMap::from([("b".into(), "2".into()), ("a".into(), "1".into())]),
        )
        .expect("an image")
    }

    #[test]
    fn manifest_json_has_one_fixed_shape() {
        let img = sample();
        let text = String::from_utf8(img.manifest_bytes().to_vec()).expect("utf-8");
        let want = format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
                r#""config":{{"mediaType":"application/vnd.example.config+json","#,
                r#""digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"#,
                r#""layers":[{{"mediaType":"application/vnd.example.layer","digest":"sha256:{}","size":5}}],"#,
                r#""annotations":{{"a":"1","b":"2"}}}}"#
            ),
            crate::sha256_hex(b"layer")
        );
        assert_eq!(text, want);
        assert_eq!(img.digest(), sha256_digest(img.manifest_bytes()));
    }

    #[test]
    fn a_layer_whose_descriptor_lies_is_refused() {
        let d = Descriptor::of("application/vnd.example.layer", b"one");
        let r = Image::new(
            "t",
            ("c", b"{}".to_vec()),
            vec![(d, b"two".to_vec())],
            BTreeMap::new(),
        );
        assert!(r.is_err());
    }

    #[test]
    fn layout_names_every_blob_by_digest() {
        let img = sample();
        let tree = img.layout().expect("a layout");
        let names: Vec<&str> = tree.entries().map(|(p, _)| p).collect();
        assert!(names.contains(&"oci-layout"));
        assert!(names.contains(&"index.json"));
        for d in [
            img.digest(),
            img.manifest.config.digest.clone(),
            img.manifest.layers[0].digest.clone(),
        ] {
            assert!(names.contains(&blob_path(&d).as_str()), "{d}");
        }
        assert_eq!(blob_path("sha256:ab"), "blobs/sha256/ab");
    }

    #[test]
    fn write_dir_never_replaces_what_is_not_a_layout() {
        let dir = std::env::temp_dir().join(format!("portcullis-oci-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a dir");
        std::fs::write(dir.join("keep"), b"mine").expect("a file");
        assert!(sample().write_dir(&dir).is_err());
        assert!(dir.join("keep").exists());
        std::fs::remove_dir_all(&dir).expect("cleaned");
        sample().write_dir(&dir).expect("written");
        sample().write_dir(&dir).expect("replaced: it is a layout");
        assert!(dir.join("oci-layout").is_file());
        std::fs::remove_dir_all(&dir).expect("cleaned");
    }
}
