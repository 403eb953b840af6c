//! `images retag SRC DST...`: more tags for a manifest that is already in the registry.
//! Nothing but manifests moves; into another repository, blobs are mounted.

use anyhow::{anyhow, bail, Result};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use crate::cli::RetagArgs;
use crate::naming::ImageRef;
use crate::oci::registry::Registry;
use crate::oci::Registries;

impl RetagArgs {
    pub fn run(self, _root: &Path) -> Result<()> {
        crate::oci::block_on_within(self.registry.timeout.map(Into::into), retag(&self))
    }
}

/// A target is a full reference, or just a tag for the source's repository.
fn target_ref(source: &ImageRef, target: &str) -> Result<ImageRef> {
    if target.contains('/') || target.contains('@') {
        return ImageRef::parse(target);
    }
    let tag = target.strip_prefix(':').unwrap_or(target);
    ImageRef::parse(&format!("{}/{}:{tag}", source.registry, source.repository))
}

async fn retag(args: &RetagArgs) -> Result<()> {
    let source = ImageRef::parse(&args.source).map_err(|e| anyhow!("SRC: {e}"))?;
    let registries = Registries::new(args.registry.insecure.clone());
    let registry = registries.get(&source.registry).await?;
    let reference = source.pointer();
    let (bytes, header_type) = registry
        .get_manifest(&source.repository, &reference)
        .await?;
    let json: serde_json::Value = serde_json::from_slice(&bytes)?;
    let media_type = json["mediaType"]
        .as_str()
        .map(String::from)
        .unwrap_or(header_type);
    let digest = crate::oci::registry::sha256_digest(&bytes);
    for target in &args.targets {
        let target = target_ref(&source, target)?;
        if target.registry != source.registry {
            bail!("{target}: retag stays inside {}; use `cargo xtask images mirror` to copy to another registry", source.registry);
        }
        let tag = target
            .tag
            .clone()
            .ok_or_else(|| anyhow!("{target}: a retag target needs a tag"))?;
        if target.repository != source.repository {
            mount_tree(&registry, &source.repository, &target.repository, &json).await?;
        }
        registry
            .put_manifest(&target.repository, &tag, &bytes, &media_type)
            .await?;
        println!("{target} -> {digest}");
    }
    Ok(())
}

/// Makes everything `manifest` references available in `to`, by mount.
fn mount_tree<'a>(
    registry: &'a Arc<Registry>,
    from: &'a str,
    to: &'a str,
    manifest: &'a serde_json::Value,
) -> futures_util::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let mut blobs = BTreeSet::new();
        blobs.extend(manifest["config"]["digest"].as_str());
        for key in ["layers", "blobs"] {
            blobs.extend(
                manifest[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l["digest"].as_str()),
            );
        }
        for blob in blobs {
            if !registry.has_blob(to, blob).await? && !registry.mount_blob(to, blob, from).await? {
                bail!(
                    "{}/{to}: the registry refused to mount {blob} from {from}",
                    registry.host
                );
            }
        }
        for child in manifest["manifests"].as_array().into_iter().flatten() {
            let digest = child["digest"]
                .as_str()
                .ok_or_else(|| anyhow!("an index entry has no digest"))?;
            let (bytes, header_type) = registry.get_manifest(from, digest).await?;
            let json: serde_json::Value = serde_json::from_slice(&bytes)?;
            mount_tree(registry, from, to, &json).await?;
            let media_type = json["mediaType"]
                .as_str()
                .map(String::from)
                .unwrap_or(header_type);
            registry
                .put_manifest(to, digest, &bytes, &media_type)
                .await?;
        }
        Ok(())
    })
}
