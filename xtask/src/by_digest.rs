//! Pushing the OCI layouts BuildKit writes (buildx's docker driver has no
//! `push-by-digest`), through `oci::layout`: tagged for `images build --push`, or by
//! digest for `--by-digest DIR`, where each image is pushed under its repository with no
//! tag and one small JSON record per image and platform goes to `DIR` for
//! `images merge` to join. A service under `build` and `merge`.

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::naming::ImageRef;
use crate::oci::image::{
    attestations_for, child_for, descriptor_digest, Descriptor, Document, ImageIndex, Platform,
};
use crate::oci::{layout, media, Digest, Registries, Registry, Repository};
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
    /// The attestation manifests' descriptors, as BuildKit wrote them.
    #[serde(default)]
    pub attestations: Vec<Descriptor>,
    /// The parent's manifest for this platform that this image was built from.
    #[serde(default)]
    pub parent: Option<Digest>,
}

impl Record {
    /// The index entry for this platform's image.
    pub fn descriptor(&self) -> Result<Descriptor> {
        let mut parts = self.platform.splitn(3, '/');
        let (os, arch) = (parts.next(), parts.next());
        let mut platform = Platform::default();
        platform.set_os(os.unwrap_or_default().into());
        platform.set_architecture(arch.unwrap_or_default().into());
        platform.set_variant(parts.next().map(String::from));
        let mut descriptor = Descriptor::new(
            self.media_type.as_str().into(),
            self.size,
            self.digest.as_str().parse::<oci_spec::image::Digest>()?,
        );
        descriptor.set_platform(Some(platform));
        Ok(descriptor)
    }
}

/// `DIR/<image>.<os>-<arch>[-variant].json`
pub fn record_path(dir: &Path, image: &str, platform: &str) -> PathBuf {
    dir.join(format!("{image}.{}.json", platform.replace('/', "-")))
}

/// The records of `target` from the index it was pushed (or found) as.
pub fn records(target: &BuildTarget, repository: &str, index: &Bytes) -> Result<Vec<Record>> {
    let Document::Index(document) = Document::parse(index, &format!("{repository}'s index"))?
    else {
        return Err(anyhow!("{repository}: the pushed manifest is not an index"));
    };
    target
        .inputs
        .platforms
        .iter()
        .map(|(platform, input_digest)| {
            let child = child_for(&document, platform)
                .ok_or_else(|| anyhow!("{repository}: the index has no {platform} image"))?;
            let digest = descriptor_digest(child)?;
            Ok(Record {
                image: target.name.clone(),
                repository: repository.to_string(),
                platform: platform.clone(),
                size: child.size(),
                media_type: child.media_type().to_string(),
                attestations: attestations_for(&document, &digest),
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
pub async fn push_layout(registries: &Registries, to: &ImageRef, dir: &Path) -> Result<Bytes> {
    let client = registries.get(&to.registry).await?;
    layout::push(&client, &to.repository, dir).await
}

/// Pushes the OCI layout BuildKit wrote for `target` by digest, then writes each of its
/// tags from those exact bytes, one at a time. Returns the index's digest.
pub async fn push_tagged(registries: &Registries, target: &BuildTarget) -> Result<Digest> {
    let mut pushed: Vec<(Registry, Repository)> = Vec::new();
    let mut index: Option<(Bytes, String)> = None;
    for tag in &target.tags {
        let tag = ImageRef::parse(tag)?;
        let client = registries.get(&tag.registry).await?;
        let place = (tag.registry.clone(), tag.repository.clone());
        if !pushed.contains(&place) {
            let bytes = layout::push(&client, &tag.repository, &target.layout).await?;
            let media_type =
                Document::declared_type(&bytes).unwrap_or_else(|| media::OCI_INDEX.to_string());
            index = Some((bytes, media_type));
            pushed.push(place);
        }
        let (bytes, media_type) = index.as_ref().expect("pushed above");
        client
            .put_manifest(&tag.repository, &tag.pointer(), bytes, media_type)
            .await?;
    }
    let (bytes, _) = index.ok_or_else(|| anyhow!("{} has no tag to push", target.name))?;
    Ok(Digest::of_sha256(&bytes))
}

/// A new index of `manifests`, annotated; written by `merge`, never a mirrored one.
pub fn new_index(
    manifests: Vec<Descriptor>,
    annotations: std::collections::HashMap<String, String>,
) -> Result<Bytes> {
    let mut index = ImageIndex::default();
    index.set_media_type(Some(media::OCI_INDEX.into()));
    index.set_manifests(manifests);
    index.set_annotations(Some(annotations));
    Ok(Bytes::from(serde_json::to_vec(&index)?))
}
