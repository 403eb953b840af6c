//! `images retag SRC DST...`: more tags for a manifest that is already in the registry.
//! Nothing but manifests moves; into another repository, blobs are mounted.

use anyhow::{anyhow, bail, Result};
use std::collections::BTreeSet;
use std::sync::Arc;

use crate::cli::RetagArgs;
use crate::naming::ImageRef;
use crate::oci::image::{descriptor_digest, Document};
use crate::oci::registry::Client;
use crate::oci::{Digest, Reference, Registries, Repository, Tag};

impl RetagArgs {
    pub fn run(self, ctx: &crate::context::Ctx) -> Result<()> {
        ctx.block_on(retag(&ctx.registries, &self))
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

/// Every target, checked before any connection: a bad tag is named as such even when
/// the registry is down.
fn targets(source: &ImageRef, targets: &[String]) -> Result<Vec<(ImageRef, Tag)>> {
    targets
        .iter()
        .map(|target| {
            let target = target_ref(source, target)?;
            if target.registry != source.registry {
                bail!("{target}: retag stays inside {}; use `cargo xtask images mirror` to copy to another registry", source.registry);
            }
            let tag = target
                .tag
                .clone()
                .ok_or_else(|| anyhow!("{target}: a retag target needs a tag"))?;
            Ok((target, tag))
        })
        .collect()
}

async fn retag(registries: &Registries, args: &RetagArgs) -> Result<()> {
    let source = ImageRef::parse(&args.source).map_err(|e| anyhow!("SRC: {e}"))?;
    let targets = targets(&source, &args.targets)?;
    let registry = registries.get(&source.registry).await?;
    let (bytes, header_type, digest) = registry
        .resolve(&source.repository, &source.pointer())
        .await?;
    let document = Document::parse(&bytes, &source.to_string())?;
    let media_type = Document::declared_type(&bytes).unwrap_or(header_type);
    for (target, tag) in targets {
        if target.repository != source.repository {
            mount_tree(&registry, &source.repository, &target.repository, &document).await?;
        }
        registry
            .put_manifest(
                &target.repository,
                &Reference::Tag(tag),
                &bytes,
                &media_type,
            )
            .await?;
        println!("{target} -> {digest}");
    }
    Ok(())
}

/// Makes everything `manifest` references available in `to`, by mount.
fn mount_tree<'a>(
    registry: &'a Arc<Client>,
    from: &'a Repository,
    to: &'a Repository,
    manifest: &'a Document,
) -> futures_util::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let blobs: BTreeSet<Digest> = manifest
            .blobs()
            .into_iter()
            .map(descriptor_digest)
            .collect::<Result<_, _>>()?;
        for blob in blobs {
            if !registry.has_blob(to, &blob).await? && !registry.mount_blob(to, &blob, from).await?
            {
                bail!(
                    "{}/{to}: the registry refused to mount {blob} from {from}",
                    registry.host
                );
            }
        }
        for child in manifest.children() {
            let digest = Reference::Digest(descriptor_digest(child)?);
            let (bytes, header_type) = registry.get_manifest(from, &digest).await?;
            let document = Document::parse(&bytes, &format!("{from}@{digest}"))?;
            mount_tree(registry, from, to, &document).await?;
            let media_type = Document::declared_type(&bytes).unwrap_or(header_type);
            registry
                .put_manifest(to, &digest, &bytes, &media_type)
                .await?;
        }
        Ok(())
    })
}
