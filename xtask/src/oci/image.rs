//! A typed, read-only view of an image, on oci-spec: what a manifest or index points at
//! (`Document`), the platform children and attestation manifests of an index, and for
//! each platform its layers with the history step that created them. Every document is
//! fetched by digest, bounded, and verified by whichever `ContentSource` provides it.
//! Views are for reading: a manifest that is copied keeps the exact bytes received.

use bytes::Bytes;
pub use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Platform};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::media;
use super::name::{Digest, Reference, Repository};
use super::registry::{Client, MAX_MANIFEST_BYTES};
use crate::text::printable;

/// A manifest or index as read, for what it points at.
#[derive(Debug, Clone)]
pub enum Document {
    Index(Box<ImageIndex>),
    Image(Box<ImageManifest>),
    /// An OCI 1.1-rc artifact manifest: `blobs`, no config.
    Artifact(Vec<Descriptor>),
}

/// Just enough of a document to know which kind it is.
#[derive(Deserialize)]
struct Shape {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
    blobs: Option<Vec<Descriptor>>,
    config: Option<serde::de::IgnoredAny>,
}

impl Document {
    /// `bytes` as an index (it lists `manifests`), an artifact (`blobs`, no config) or
    /// an image manifest; `what` names it in the error.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Document> {
        let invalid = |e: serde_json::Error| match bad_digest(bytes) {
            // A digest is named in the words of `Digest::parse`, whatever oci-spec says.
            Some(bad) => Error::Refused(format!("{what}: {bad}")),
            None => Error::Refused(format!("{what} is not valid: {e}")),
        };
        let shape: Shape = serde_json::from_slice(bytes).map_err(invalid)?;
        Ok(match shape {
            Shape {
                manifests: Some(_), ..
            } => Document::Index(Box::new(serde_json::from_slice(bytes).map_err(invalid)?)),
            Shape {
                blobs: Some(blobs),
                config: None,
                ..
            } => Document::Artifact(blobs),
            _ => Document::Image(Box::new(serde_json::from_slice(bytes).map_err(invalid)?)),
        })
    }

    /// The `mediaType` the document declares, if any.
    pub fn declared_type(bytes: &[u8]) -> Option<String> {
        serde_json::from_slice::<Shape>(bytes)
            .ok()?
            .media_type
            .filter(|m| !m.is_empty())
    }

    /// The manifests an index lists; none for an image.
    pub fn children(&self) -> &[Descriptor] {
        match self {
            Document::Index(index) => index.manifests(),
            _ => &[],
        }
    }

    /// The config and layers of an image (or an artifact's blobs), foreign layers left
    /// out: registries do not hold those.
    pub fn blobs(&self) -> Vec<&Descriptor> {
        let all: Vec<&Descriptor> = match self {
            Document::Index(_) => Vec::new(),
            Document::Image(image) => std::iter::once(image.config())
                .chain(image.layers())
                .collect(),
            Document::Artifact(blobs) => blobs.iter().collect(),
        };
        all.into_iter().filter(|d| !is_foreign(d)).collect()
    }

    /// The media type to push it under: the declared one, else by its shape.
    pub fn media_type(&self, bytes: &[u8]) -> String {
        Document::declared_type(bytes).unwrap_or_else(|| {
            match self {
                Document::Index(_) => media::OCI_INDEX,
                Document::Image(_) => media::OCI_MANIFEST,
                Document::Artifact(_) => media::OCI_ARTIFACT,
            }
            .to_string()
        })
    }
}

/// The first descriptor digest of a document that `Digest::parse` refuses.
fn bad_digest(bytes: &[u8]) -> Option<Error> {
    let json: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let lists = ["manifests", "layers", "blobs"]
        .into_iter()
        .filter_map(|key| json.get(key)?.as_array())
        .flatten();
    lists
        .chain(json.get("config"))
        .filter_map(|descriptor| descriptor.get("digest")?.as_str())
        .find_map(|digest| Digest::parse(digest).err())
}

/// A layer a registry does not hold (Windows base layers): never copied.
pub fn is_foreign(descriptor: &Descriptor) -> bool {
    let media_type = descriptor.media_type().to_string();
    media_type.contains("foreign") || media_type.contains("nondistributable")
}

/// `os/architecture[/variant]`.
pub fn platform_name(platform: &Platform) -> String {
    os_architecture(
        &platform.os().to_string(),
        &platform.architecture().to_string(),
        platform.variant().as_deref(),
    )
}

/// The platform of an image config, as `platform_name` writes it.
pub fn config_platform(config: &ImageConfiguration) -> String {
    os_architecture(
        &config.os().to_string(),
        &config.architecture().to_string(),
        config.variant().as_deref(),
    )
}

fn os_architecture(os: &str, architecture: &str, variant: Option<&str>) -> String {
    match variant.filter(|v| !v.is_empty()) {
        Some(variant) => format!("{os}/{architecture}/{variant}"),
        None => format!("{os}/{architecture}"),
    }
}

/// The runnable child of `index` for `platform`.
pub fn child_for<'a>(index: &'a ImageIndex, platform: &str) -> Option<&'a Descriptor> {
    index.manifests().iter().find(|d| {
        !is_attestation(d) && d.platform().as_ref().map(platform_name).as_deref() == Some(platform)
    })
}

/// The attestation manifests of `index` that describe the child `digest`.
pub fn attestations_for(index: &ImageIndex, digest: &Digest) -> Vec<Descriptor> {
    index
        .manifests()
        .iter()
        .filter(|d| {
            is_attestation(d)
                && annotation(d, "vnd.docker.reference.digest") == Some(digest.as_str())
        })
        .cloned()
        .collect()
}

/// The index entries of `children` for `platforms`, plus the attestation manifests that
/// describe them, in index order.
pub fn subset(children: &[Descriptor], platforms: &[String]) -> Vec<Descriptor> {
    subset_positions(children, platforms)
        .into_iter()
        .map(|i| children[i].clone())
        .collect()
}

/// Where `subset`'s entries are in `children`: two entries may share a digest (the same
/// attestation for two platforms), so they are told apart by position.
pub fn subset_positions(children: &[Descriptor], platforms: &[String]) -> Vec<usize> {
    let kept_digests: Vec<String> = children
        .iter()
        .filter(|c| {
            c.platform()
                .as_ref()
                .is_some_and(|p| platforms.contains(&platform_name(p)))
        })
        .map(|c| c.digest().to_string())
        .collect();
    (0..children.len())
        .filter(|&i| {
            let child = &children[i];
            let platform = child.platform().as_ref().map(platform_name);
            platform.is_some_and(|p| platforms.contains(&p))
                || annotation(child, "vnd.docker.reference.digest")
                    .is_some_and(|d| kept_digests.iter().any(|k| k == d))
        })
        .collect()
}

/// The index `bytes` with only its entries at `kept` (positions, as `subset_positions`
/// gives them), each as written, every other field untouched. A `--platform` subset is a
/// new index by design; this is the one place an index is written again.
pub fn rewrite_index(bytes: &[u8], kept: &[usize]) -> Result<Bytes> {
    let mut json: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::Refused(format!("the index is not JSON: {e}")))?;
    if let Some(entries) = json.get_mut("manifests").and_then(|m| m.as_array_mut()) {
        let mut position = 0;
        entries.retain(|_| {
            position += 1;
            kept.contains(&(position - 1))
        });
    }
    let bytes = serde_json::to_vec_pretty(&json)
        .map_err(|e| Error::Refused(format!("writing the index: {e}")))?;
    Ok(Bytes::from(bytes))
}

/// The digests a referrers answer (an image index) lists, each parsed.
pub fn referrer_digests(index: &serde_json::Value) -> Result<Vec<Digest>> {
    let entries = index.get("manifests").and_then(|m| m.as_array());
    entries
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("digest").and_then(|d| d.as_str()))
        .map(Digest::parse)
        .collect()
}

/// The layers of `media_type` a manifest lists, read leniently (a cosign `.sig`
/// manifest): (digest, size, annotations); a layer with no size gets `u64::MAX`.
pub fn layers_of_type(
    manifest: &[u8],
    media_type: &str,
) -> Result<Vec<(Digest, u64, serde_json::Value)>> {
    let json: serde_json::Value = serde_json::from_slice(manifest)
        .map_err(|e| Error::Refused(format!("the manifest is not JSON: {e}")))?;
    let layers = json.get("layers").and_then(|l| l.as_array());
    layers
        .into_iter()
        .flatten()
        .filter(|layer| layer.get("mediaType").and_then(|m| m.as_str()) == Some(media_type))
        .map(|layer| {
            let digest = layer
                .get("digest")
                .and_then(|d| d.as_str())
                .unwrap_or_default();
            let size = layer
                .get("size")
                .and_then(|s| s.as_u64())
                .unwrap_or(u64::MAX);
            let annotations = layer.get("annotations").cloned().unwrap_or_default();
            Ok((Digest::parse(digest)?, size, annotations))
        })
        .collect()
}

pub fn annotation<'a>(descriptor: &'a Descriptor, key: &str) -> Option<&'a str> {
    descriptor
        .annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

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
    let Document::Index(index) = Document::parse(root, &format!("manifest {root_digest}"))? else {
        return Ok(vec![image(source, root, root_digest, None).await?]);
    };
    let mut images = Vec::new();
    for child in index.manifests() {
        if is_attestation(child) {
            continue;
        }
        let digest = descriptor_digest(child)?;
        let platform = child.platform().as_ref().map(platform_name);
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

/// An attestation manifest (BuildKit's provenance, SBOMs), not a runnable image.
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

/// A descriptor's digest, parsed as every digest that reaches a URL or a path is.
pub fn descriptor_digest(descriptor: &Descriptor) -> Result<Digest> {
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
    let platform = platform.unwrap_or_else(|| config_platform(&config));
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

    #[test]
    fn children_and_their_attestations() {
        let index: ImageIndex = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": media::OCI_MANIFEST, "size": 1, "digest": format!("sha256:{}", "a".repeat(64)),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": media::OCI_MANIFEST, "size": 1, "digest": format!("sha256:{}", "b".repeat(64)),
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": media::OCI_MANIFEST, "size": 1, "digest": format!("sha256:{}", "c".repeat(64)),
                 "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                 "vnd.docker.reference.digest": format!("sha256:{}", "b".repeat(64))}},
            ]
        }))
        .unwrap();
        let digest = |c: &str| Digest::parse(&format!("sha256:{}", c.repeat(64))).unwrap();
        let child = |p| descriptor_digest(child_for(&index, p).unwrap()).unwrap();
        assert_eq!(child("linux/arm64/v8"), digest("a"));
        assert_eq!(child("linux/amd64"), digest("b"));
        assert!(child_for(&index, "unknown/unknown").is_none());
        let attestations = attestations_for(&index, &digest("b"));
        assert_eq!(attestations.len(), 1);
        assert_eq!(descriptor_digest(&attestations[0]).unwrap(), digest("c"));
        assert!(attestations_for(&index, &digest("a")).is_empty());
        // An index is told from an image by its shape, and keeps its children.
        let bytes = serde_json::to_vec(&index).unwrap();
        let document = Document::parse(&bytes, "index").unwrap();
        assert_eq!(document.children().len(), 3);
        assert_eq!(document.media_type(&bytes), media::OCI_INDEX);
    }

    #[test]
    fn subset_keeps_attestations_of_kept_platforms_and_every_field_as_written() {
        let digest = |c: &str| format!("sha256:{}", c.repeat(64));
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "x-extra": "kept",
            "manifests": [
                {"mediaType": media::OCI_MANIFEST, "size": 1, "digest": digest("a"),
                 "platform": {"os": "linux", "architecture": "amd64"}, "x-field": 1},
                {"mediaType": media::OCI_MANIFEST, "size": 1, "digest": digest("b"),
                 "platform": {"os": "linux", "architecture": "arm64"}},
                {"mediaType": media::OCI_MANIFEST, "size": 1, "digest": digest("c"),
                 "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.digest": digest("a")}},
                // The same attestation for the other platform: one digest, two entries.
                {"mediaType": media::OCI_MANIFEST, "size": 1, "digest": digest("c"),
                 "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.digest": digest("b")}},
            ]
        }))
        .unwrap();
        let document = Document::parse(&bytes, "index").unwrap();
        let kept = subset(document.children(), &["linux/amd64".into()]);
        let kept_digests: Vec<String> = kept.iter().map(|c| c.digest().to_string()).collect();
        assert_eq!(kept_digests, [digest("a"), digest("c")]);
        let positions = subset_positions(document.children(), &["linux/amd64".into()]);
        let rewritten: serde_json::Value =
            serde_json::from_slice(&rewrite_index(&bytes, &positions).unwrap()).unwrap();
        assert_eq!(rewritten["x-extra"], "kept");
        assert_eq!(rewritten["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(rewritten["manifests"][0]["x-field"], 1);
    }

    #[test]
    fn a_bad_digest_is_named_in_our_words() {
        let escaping = format!(
            "sha256:{}/../../other/repo/manifests/latest",
            "a".repeat(64)
        );
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": media::OCI_MANIFEST, "size": 2, "digest": escaping}]});
        let error = Document::parse(&serde_json::to_vec(&index).unwrap(), "index x")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("is not a digest: sha256 needs 64 lower-case hex digits"),
            "{error}"
        );
    }
}
