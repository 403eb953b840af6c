//! `images build --push --by-digest DIR`: each image is pushed under its repository
//! with no tag, and one small JSON record per image and platform goes to `DIR` for
//! `images merge` to join. BuildKit writes an OCI layout (buildx's docker driver has no
//! `push-by-digest`); our registry client pushes it, blobs and manifests by digest.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::index::{attestations_for, child_for, children};
use crate::naming::ImageRef;
use crate::oci::registry::{Client, MAX_MANIFEST_BYTES};
use crate::oci::{Digest, Reference, Repository};
use crate::plan::BuildTarget;

/// What one runner built for one image and platform.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub image: String,
    /// `registry/repository` it was pushed to.
    pub repository: String,
    pub platform: String,
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub input_digest: Digest,
    /// The attestation manifests' descriptors, exactly as BuildKit wrote them.
    #[serde(default)]
    pub attestations: Vec<serde_json::Value>,
    /// The parent's manifest for this platform that this image was built from.
    #[serde(default)]
    pub parent: Option<Digest>,
}

impl Record {
    /// The index entry for this platform's image.
    pub fn descriptor(&self) -> serde_json::Value {
        let mut platform = serde_json::Map::new();
        let mut parts = self.platform.splitn(3, '/');
        let (os, arch) = (parts.next(), parts.next());
        platform.insert("architecture".into(), arch.unwrap_or_default().into());
        platform.insert("os".into(), os.unwrap_or_default().into());
        if let Some(variant) = parts.next() {
            platform.insert("variant".into(), variant.into());
        }
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
            "platform": platform,
        })
    }
}

/// `DIR/<image>.<os>-<arch>[-variant].json`
pub fn record_path(dir: &Path, image: &str, platform: &str) -> PathBuf {
    dir.join(format!("{image}.{}.json", platform.replace('/', "-")))
}

/// The records of `target` from the index it was pushed (or found) as.
pub fn records(target: &BuildTarget, repository: &str, index: &Bytes) -> Result<Vec<Record>> {
    let document: serde_json::Value = serde_json::from_slice(index)
        .with_context(|| format!("{repository}: the pushed index is not JSON"))?;
    target
        .inputs
        .platforms
        .iter()
        .map(|(platform, input_digest)| {
            let child = child_for(&document, platform)
                .ok_or_else(|| anyhow!("{repository}: the index has no {platform} image"))?;
            let digest = Digest::parse(child["digest"].as_str().unwrap_or_default())?;
            Ok(Record {
                image: target.name.clone(),
                repository: repository.to_string(),
                platform: platform.clone(),
                size: child["size"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("{repository}@{digest}: no size in the index"))?,
                media_type: child["mediaType"]
                    .as_str()
                    .unwrap_or("application/vnd.oci.image.manifest.v1+json")
                    .to_string(),
                attestations: attestations_for(&document, digest.as_str()),
                digest,
                input_digest: input_digest.clone(),
                parent: None,
            })
        })
        .collect()
}

/// Writes each record whole (a temporary file, then a rename).
pub fn write_records(dir: &Path, records: &[Record]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for record in records {
        let path = record_path(dir, &record.image, &record.platform);
        let partial = path.with_extension("json.partial");
        std::fs::write(&partial, serde_json::to_string_pretty(record)? + "\n")
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Sets each record's parent to the parent image's record of the same platform.
pub fn link_parents(records: &mut [Record], parents: &BTreeMap<String, String>) {
    let digests: BTreeMap<(String, String), Digest> = records
        .iter()
        .map(|r| ((r.image.clone(), r.platform.clone()), r.digest.clone()))
        .collect();
    for record in records.iter_mut() {
        if let Some(parent) = parents.get(&record.image) {
            record.parent = digests
                .get(&(parent.clone(), record.platform.clone()))
                .cloned();
        }
    }
}

/// Pushes the OCI layout BuildKit wrote for `target` to `to`, by digest: its index's
/// exact bytes.
pub async fn push_layout(client: &Client, to: &ImageRef, layout: &Path) -> Result<Bytes> {
    let top = std::fs::read(layout.join("index.json"))
        .with_context(|| format!("reading the OCI layout {}", layout.display()))?;
    let top: serde_json::Value = serde_json::from_slice(&top)
        .with_context(|| format!("{}/index.json is not JSON", layout.display()))?;
    let Some(root) = children(&top).next() else {
        bail!("{}/index.json lists no image", layout.display());
    };
    let digest = Digest::parse(root["digest"].as_str().unwrap_or_default())?;
    let media_type = root["mediaType"].as_str().unwrap_or_default().to_string();
    push_tree(client, &to.repository, layout, digest, media_type).await
}

fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    let algorithm = digest.as_str().split(':').next().unwrap_or("sha256");
    layout.join("blobs").join(algorithm).join(digest.hex())
}

fn push_tree<'a>(
    client: &'a Client,
    repository: &'a Repository,
    layout: &'a Path,
    digest: Digest,
    media_type: String,
) -> futures_util::future::BoxFuture<'a, Result<Bytes>> {
    Box::pin(async move {
        let path = blob_path(layout, &digest);
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)?;
        if !digest.matches(&bytes) {
            bail!("{} does not hash to its name", path.display());
        }
        let bytes = Bytes::from(bytes);
        let document: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        for child in children(&document) {
            let child_digest = Digest::parse(child["digest"].as_str().unwrap_or_default())?;
            let child_type = child["mediaType"].as_str().unwrap_or_default().to_string();
            push_tree(client, repository, layout, child_digest, child_type).await?;
        }
        let blobs = std::iter::once(&document["config"])
            .chain(document["layers"].as_array().into_iter().flatten())
            .filter(|d| d.is_object());
        for blob in blobs {
            let blob_digest = Digest::parse(blob["digest"].as_str().unwrap_or_default())?;
            if client.has_blob(repository, &blob_digest).await? {
                continue;
            }
            let path = blob_path(layout, &blob_digest);
            let size = std::fs::metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .len();
            client
                .put_blob_stream(repository, &blob_digest, size, file_chunks(&path)?)
                .await?;
        }
        let media_type = document["mediaType"]
            .as_str()
            .map(String::from)
            .unwrap_or(media_type);
        client
            .put_manifest(repository, &Reference::Digest(digest), &bytes, &media_type)
            .await?;
        Ok(bytes)
    })
}

/// A file as a stream of 1 MiB chunks: never held whole.
fn file_chunks(
    path: &Path,
) -> Result<impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut done = false;
    Ok(futures_util::stream::iter(std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut chunk = vec![0u8; 1 << 20];
        match file.read(&mut chunk) {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some(Ok(Bytes::from(chunk)))
            }
            Err(e) => {
                done = true;
                Some(Err(e))
            }
        }
    })))
}
