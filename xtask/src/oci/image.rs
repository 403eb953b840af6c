//! A typed, read-only view of an image: the platforms of an index, and for each its
//! layers with the history step that created them. Every document is fetched by digest,
//! bounded, and verified by whichever `ContentSource` provides it.

use bytes::Bytes;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Serialize;

use super::error::{Error, Result};
use super::name::{Digest, Reference, Repository};
use super::registry::{Client, MAX_MANIFEST_BYTES};
use crate::text::printable;

/// Where manifests and configs come from: a registry, or an OCI layout.
pub trait ContentSource {
    /// A manifest by digest: at most `MAX_MANIFEST_BYTES`, checked against the digest.
    fn manifest(&self, digest: &Digest) -> impl std::future::Future<Output = Result<Bytes>>;
    /// A config blob by digest, with the same limit and check.
    fn config(&self, digest: &Digest) -> impl std::future::Future<Output = Result<Bytes>>;
    /// Whether the source may hold only some platforms of an index (an engine's store
    /// keeps what was pulled); those missing are then left out rather than an error.
    fn partial(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    pub digest: Digest,
    /// Bytes as stored and pulled (compressed for gzip layers).
    pub size: u64,
    pub media_type: String,
    /// The history step that made this layer, e.g. `RUN apt-get install ...`.
    pub created_by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlatformImage {
    pub platform: String,
    pub manifest: Digest,
    pub config_size: u64,
    pub layers: Vec<Layer>,
}

impl PlatformImage {
    /// What a node pulls for this platform: config and layers.
    pub fn compressed_size(&self) -> u64 {
        self.config_size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

/// The runnable images under a manifest or index (attestations and other artifacts are
/// skipped), in index order.
pub async fn platform_images(
    source: &impl ContentSource,
    root: &Bytes,
    root_digest: &Digest,
) -> Result<Vec<PlatformImage>> {
    let value: serde_json::Value = serde_json::from_slice(root)
        .map_err(|e| Error::Refused(format!("manifest {root_digest} is not JSON: {e}")))?;
    if value.get("manifests").is_none() {
        return Ok(vec![image(source, root, root_digest, None).await?]);
    }
    let index: ImageIndex = serde_json::from_slice(root).map_err(|e| {
        Error::Refused(format!(
            "index {root_digest} is not a valid image index: {e}"
        ))
    })?;
    let mut images = Vec::new();
    for child in index.manifests() {
        if is_attestation(child) {
            continue;
        }
        let digest = descriptor_digest(child)?;
        let platform = child.platform().as_ref().map(|p| {
            let mut name = format!("{}/{}", p.os(), p.architecture());
            if let Some(variant) = p.variant() {
                name.push('/');
                name.push_str(variant);
            }
            name
        });
        let bytes = match source.manifest(&digest).await {
            Ok(bytes) => bytes,
            Err(_) if source.partial() => continue,
            Err(e) => return Err(e),
        };
        images.push(image(source, &bytes, &digest, platform).await?);
    }
    if images.is_empty() {
        return Err(Error::Refused(format!(
            "index {root_digest} lists no runnable image"
        )));
    }
    Ok(images)
}

/// Whether a manifest's bytes are an index (it lists manifests) rather than an image.
pub fn is_index(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        manifests: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(bytes).is_ok_and(|p| p.manifests.is_some())
}

/// An attestation manifest (BuildKit's `unknown/unknown` entries), not a runnable image.
pub fn is_attestation(descriptor: &Descriptor) -> bool {
    let unknown = descriptor
        .platform()
        .as_ref()
        .is_some_and(|p| p.os().to_string() == "unknown");
    let annotated = descriptor.annotations().as_ref().is_some_and(|a| {
        a.get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest")
    });
    unknown || annotated
}

fn descriptor_digest(descriptor: &Descriptor) -> Result<Digest> {
    Digest::parse(descriptor.digest().as_ref())
}

async fn image(
    source: &impl ContentSource,
    bytes: &Bytes,
    digest: &Digest,
    platform: Option<String>,
) -> Result<PlatformImage> {
    let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(|e| {
        Error::Refused(format!(
            "manifest {digest} is not a valid image manifest: {e}"
        ))
    })?;
    let config_digest = descriptor_digest(manifest.config())?;
    let config_bytes = source.config(&config_digest).await?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|e| {
        Error::Refused(format!(
            "config {config_digest} of {digest} is not an image config: {e}"
        ))
    })?;
    let platform = platform.unwrap_or_else(|| {
        let mut name = format!("{}/{}", config.os(), config.architecture());
        if let Some(variant) = config.variant() {
            name.push('/');
            name.push_str(variant);
        }
        name
    });
    // History lists every step; only those without `empty_layer` made a layer.
    let mut steps = config
        .history()
        .iter()
        .filter(|h| !h.empty_layer().unwrap_or(false))
        .map(|h| h.created_by().clone());
    let layers = manifest
        .layers()
        .iter()
        .map(|layer| {
            Ok(Layer {
                digest: descriptor_digest(layer)?,
                size: layer.size(),
                media_type: layer.media_type().to_string(),
                created_by: steps.next().flatten().map(|s| printable_step(&s)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PlatformImage {
        platform,
        manifest: digest.clone(),
        config_size: manifest.config().size(),
        layers,
    })
}

/// A history step as one readable line: BuildKit's `|N ARG=… /bin/sh -c` noise and the
/// `# buildkit` suffix dropped.
fn printable_step(step: &str) -> String {
    let mut text = step
        .trim()
        .trim_end_matches("# buildkit")
        .trim()
        .to_string();
    if let Some(rest) = text.strip_prefix("RUN |") {
        // "RUN |2 A=1 B=2 /bin/sh -c cmd": keep the command.
        if let Some(pos) = rest.find("/bin/sh -c ") {
            text = format!("RUN {}", &rest[pos + "/bin/sh -c ".len()..]);
        }
    }
    let text = text.replace("/bin/sh -c #(nop) ", "");
    printable(&text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// A registry repository as a content source.
pub struct RegistrySource<'a> {
    pub registry: &'a Client,
    pub repository: &'a Repository,
}

impl ContentSource for RegistrySource<'_> {
    async fn manifest(&self, digest: &Digest) -> Result<Bytes> {
        let reference = Reference::Digest(digest.clone());
        let (bytes, _) = self
            .registry
            .get_manifest(self.repository, &reference)
            .await?;
        Ok(bytes)
    }

    async fn config(&self, digest: &Digest) -> Result<Bytes> {
        self.registry
            .get_small_blob(self.repository, digest, MAX_MANIFEST_BYTES)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_steps_read_like_the_dockerfile() {
        assert_eq!(
            printable_step("RUN |2 A=1 B=2 /bin/sh -c apt-get install -y  curl # buildkit"),
            "RUN apt-get install -y curl"
        );
        assert_eq!(
            printable_step("COPY /out/opencode /opencode # buildkit"),
            "COPY /out/opencode /opencode"
        );
        assert_eq!(
            printable_step("/bin/sh -c #(nop) ADD file:abc in / "),
            "ADD file:abc in /"
        );
        assert_eq!(printable_step("RUN x\x1b[2J"), "RUN x\\u{1b}[2J");
    }
}
