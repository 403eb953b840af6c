//! Build avoidance: before a build, find which images are already where they go with
//! the same input digest (`inputs`), for every platform asked for. Those are not built;
//! a tag that is missing, or points elsewhere, is written from the manifest that does
//! carry the digest (registry-side for `--push`, `docker tag` for `--load`).

use anyhow::{Context, Result};
use bytes::Bytes;
use serde::Serialize;
use std::collections::BTreeMap;

use crate::inputs::{Inputs, KEY};
use crate::naming::ImageRef;
use crate::oci::image::{
    child_for, config_platform, descriptor_digest, Document, ImageConfiguration, ImageManifest,
};
use crate::oci::registry::Client;
use crate::oci::{Digest, Reference, Registries};
use crate::plan::{BuildPlan, BuildTarget};

/// A config blob larger than this is not an image config.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// What a build does with one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    #[serde(rename = "built")]
    Built,
    #[serde(rename = "up to date")]
    UpToDate,
    #[serde(rename = "retagged")]
    Retagged,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Built => "built",
            Status::UpToDate => "up to date",
            Status::Retagged => "retagged",
        }
    }
}

/// An image already in place with the input digest this build would record.
#[derive(Debug, Clone)]
pub struct Found {
    /// What the matching tag points at (registry: the manifest digest; engine: the image
    /// ID).
    pub digest: Digest,
    /// The manifest's exact bytes and type (registry only).
    pub manifest: Option<(Bytes, String)>,
    /// Tags that do not point at it yet.
    pub missing: Vec<ImageRef>,
    /// The image by digest, for a child's `docker-image://` context (registry only).
    pub by_digest: Option<String>,
}

impl Found {
    pub fn status(&self) -> Status {
        if self.missing.is_empty() {
            Status::UpToDate
        } else {
            Status::Retagged
        }
    }
}

fn tag_refs(target: &BuildTarget) -> Result<Vec<ImageRef>> {
    target.tags.iter().map(|t| ImageRef::parse(t)).collect()
}

/// Every target of `plan` already in the registry under one of its tags with its input
/// digests, by name.
pub async fn in_registry(
    plan: &BuildPlan,
    registries: &Registries,
) -> Result<BTreeMap<String, Found>> {
    let surveys = plan.targets.iter().map(|t| async move {
        let found = survey_registry(t, registries)
            .await
            .with_context(|| format!("checking whether {} is up to date", t.name))?;
        Ok::<_, anyhow::Error>(found.map(|f| (t.name.clone(), f)))
    });
    let mut all = BTreeMap::new();
    for found in futures_util::future::join_all(surveys).await {
        all.extend(found?);
    }
    Ok(all)
}

async fn survey_registry(target: &BuildTarget, registries: &Registries) -> Result<Option<Found>> {
    let refs = tag_refs(target)?;
    let Some(first) = refs.first() else {
        return Ok(None);
    };
    let client = registries.get(&first.registry).await?;
    let mut pointed: Vec<(ImageRef, Option<Digest>)> = Vec::new();
    for r in &refs {
        let described = client.head_manifest(&r.repository, &r.pointer()).await?;
        pointed.push((r.clone(), described.map(|d| d.digest)));
    }
    let mut tried: Vec<&Digest> = Vec::new();
    for digest in pointed.iter().filter_map(|(_, d)| d.as_ref()) {
        if tried.contains(&digest) {
            continue;
        }
        tried.push(digest);
        let (bytes, media_type) = client
            .get_manifest(&first.repository, &Reference::Digest(digest.clone()))
            .await?;
        if carries(&client, first, &bytes, &target.inputs).await? {
            let missing = pointed
                .iter()
                .filter(|(_, d)| d.as_ref() != Some(digest))
                .map(|(r, _)| r.clone())
                .collect();
            return Ok(Some(Found {
                digest: digest.clone(),
                manifest: Some((bytes, media_type)),
                missing,
                by_digest: Some(format!("{}/{}@{digest}", first.registry, first.repository)),
            }));
        }
    }
    Ok(None)
}

/// Whether the manifest `bytes` has, for every platform of `inputs`, an image carrying
/// that platform's input digest: an index's children by their annotation, a lone
/// manifest by its config's label.
async fn carries(client: &Client, at: &ImageRef, bytes: &Bytes, inputs: &Inputs) -> Result<bool> {
    let document = match Document::parse(bytes, "manifest") {
        Ok(Document::Artifact(_)) | Err(_) => return Ok(false),
        Ok(document) => document,
    };
    let image = match document {
        Document::Index(index) => {
            for (platform, digest) in &inputs.platforms {
                let Some(child) = child_for(&index, platform) else {
                    return Ok(false);
                };
                let (child_bytes, _) = client
                    .get_manifest(
                        &at.repository,
                        &Reference::Digest(descriptor_digest(child)?),
                    )
                    .await?;
                let annotated = serde_json::from_slice::<ImageManifest>(&child_bytes)
                    .ok()
                    .and_then(|m| m.annotations().as_ref()?.get(KEY).cloned());
                if annotated.as_deref() != Some(digest.as_str()) {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        Document::Image(image) => image,
        Document::Artifact(_) => return Ok(false),
    };
    if inputs.platforms.len() != 1 {
        return Ok(false);
    }
    let config = client
        .get_small_blob(
            &at.repository,
            &descriptor_digest(image.config())?,
            MAX_CONFIG_BYTES,
        )
        .await?;
    let Ok(config) = serde_json::from_slice::<ImageConfiguration>(&config) else {
        return Ok(false);
    };
    let label = config
        .config()
        .as_ref()
        .and_then(|c| c.labels().as_ref()?.get(KEY).cloned());
    Ok(label.as_deref() == Some(inputs.digest.as_str())
        && inputs.platforms.contains_key(&config_platform(&config)))
}

/// Writes the missing tags of `found` from its manifest, byte for byte: the manifest's
/// children are already in the repository.
pub async fn retag_in_registry(registries: &Registries, found: &Found) -> Result<()> {
    let Some((bytes, media_type)) = &found.manifest else {
        return Ok(());
    };
    for target in &found.missing {
        let client = registries.get(&target.registry).await?;
        client
            .put_manifest(&target.repository, &target.pointer(), bytes, media_type)
            .await?;
    }
    Ok(())
}

/// Every target of `plan` already in the local engine under one of its tags, labelled
/// with its input digest for the platforms of this build: one `docker images` for what
/// each tag points at, one `docker image inspect` for their labels.
pub fn in_engine(plan: &BuildPlan) -> Result<BTreeMap<String, Found>> {
    let listed = crate::docker::docker(&[
        "images",
        "--no-trunc",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}}",
    ])?;
    let ids: BTreeMap<&str, &str> = listed
        .lines()
        .filter_map(|line| line.split_once(' '))
        .collect();
    let mut wanted: Vec<&str> = Vec::new();
    for t in &plan.targets {
        for tag in &t.tags {
            if let Some(id) = ids.get(tag.as_str()) {
                if !wanted.contains(id) {
                    wanted.push(id);
                }
            }
        }
    }
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    if !wanted.is_empty() {
        let mut args = vec![
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{json .Config.Labels}}",
        ];
        args.extend(wanted);
        for line in crate::docker::docker(&args)?.lines() {
            let Some((id, json)) = line.split_once(' ') else {
                continue;
            };
            let value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
            if let Some(digest) = value[KEY].as_str() {
                labels.insert(id.to_string(), digest.to_string());
            }
        }
    }
    let mut found = BTreeMap::new();
    for t in &plan.targets {
        let refs = tag_refs(t)?;
        let matching = t
            .tags
            .iter()
            .filter_map(|tag| ids.get(tag.as_str()))
            .find(|id| labels.get(**id).map(String::as_str) == Some(t.inputs.digest.as_str()));
        let Some(id) = matching else {
            continue;
        };
        let Ok(digest) = Digest::parse(id) else {
            continue;
        };
        let missing = t
            .tags
            .iter()
            .zip(&refs)
            .filter(|(tag, _)| ids.get(tag.as_str()) != Some(id))
            .map(|(_, r)| r.clone())
            .collect();
        found.insert(
            t.name.clone(),
            Found {
                digest,
                manifest: None,
                missing,
                by_digest: None,
            },
        );
    }
    Ok(found)
}

/// `docker tag` for each missing tag of `found`.
pub fn retag_in_engine(found: &Found) -> Result<()> {
    for target in &found.missing {
        crate::docker::docker(&["tag", found.digest.as_str(), &target.to_string()])?;
    }
    Ok(())
}
