//! The copy engine: one image at a time from the caller's view, blobs and platform
//! manifests in parallel underneath, a manifest pushed only once all it references is
//! in place, and the tag last.

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use futures_util::future::try_join_all;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OnceCell, Semaphore};

use crate::naming::ImageRef;
use crate::oci::image::{
    descriptor_digest, referrer_digests, rewrite_index, subset_positions, Descriptor, Document,
};
use crate::oci::registry::Client;
pub use crate::oci::Registries;
use crate::oci::{Digest, Reference, Registry, Repository, Tag};

#[derive(Debug, Clone)]
pub struct CopyJob {
    pub source: ImageRef,
    pub destination: ImageRef,
    /// Copy only these platforms; this rewrites the index and so changes its digest.
    pub platforms: Option<Vec<String>>,
    /// Who must have signed it (none: copied unverified, as before).
    pub rule: Option<Arc<crate::trust::Rule>>,
    /// The `.sig` tags a check verified, copied as they were when checked.
    pub signatures: Vec<(Tag, Digest)>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", tag = "result")]
pub enum Outcome {
    Copied { digest: Digest },
    Skipped { digest: Digest },
}

impl Outcome {
    pub fn digest(&self) -> &Digest {
        match self {
            Outcome::Copied { digest } | Outcome::Skipped { digest } => digest,
        }
    }
}

#[derive(Debug, Default)]
pub struct BlobCounts {
    pub copied: AtomicU64,
    pub mounted: AtomicU64,
    pub present: AtomicU64,
}

/// Called as blobs finish, for progress display.
pub type OnBytes = Arc<dyn Fn(u64) + Send + Sync>;

/// The repository a blob was first placed in at a destination registry.
type Placement = Arc<OnceCell<Repository>>;
/// Set once a blob is in a destination repository.
type Ensured = Arc<OnceCell<()>>;

pub struct Engine {
    pub registries: Arc<Registries>,
    blob_slots: Semaphore,
    /// Where each blob already is at a destination registry in this run, for mounts.
    placed: Mutex<HashMap<(Registry, Digest), Placement>>,
    /// Blobs known to be in a destination repository in this run.
    ensured: Mutex<HashMap<(Registry, Repository, Digest), Ensured>>,
    /// Manifests already pushed in this run.
    pushed: Mutex<HashSet<(Registry, Repository, Digest)>>,
    pub blobs: BlobCounts,
    on_bytes: OnBytes,
}

struct Side<'a> {
    registry: Arc<Client>,
    repository: &'a Repository,
}

impl Engine {
    pub fn new(registries: Arc<Registries>, blob_jobs: usize, on_bytes: OnBytes) -> Engine {
        Engine {
            registries,
            blob_slots: Semaphore::new(blob_jobs.max(1)),
            placed: Mutex::new(HashMap::new()),
            ensured: Mutex::new(HashMap::new()),
            pushed: Mutex::new(HashSet::new()),
            blobs: BlobCounts::default(),
            on_bytes,
        }
    }

    /// The source's digest for `job`, by HEAD only.
    pub async fn source_digest(&self, job: &CopyJob) -> Result<Digest> {
        let source = self.registries.get(&job.source.registry).await?;
        let reference = job.source.pointer();
        let described = source
            .head_manifest(&job.source.repository, &reference)
            .await?
            .ok_or_else(|| anyhow!("{} does not exist at the source", job.source))?;
        if let Some(pinned) = &job.source.digest {
            if &described.digest != pinned {
                bail!(
                    "digest mismatch: {} resolves to {}, not the pinned {pinned}",
                    job.source,
                    described.digest
                );
            }
        }
        Ok(described.digest)
    }

    /// The digest the destination tag points at, by HEAD only.
    pub async fn destination_digest(&self, job: &CopyJob) -> Result<Option<Digest>> {
        let destination = self.registries.get(&job.destination.registry).await?;
        let described = destination
            .head_manifest(&job.destination.repository, &destination_reference(job))
            .await?;
        Ok(described.map(|d| d.digest))
    }

    pub async fn copy(&self, job: &CopyJob) -> Result<Outcome> {
        let source_digest = self.source_digest(job).await?;
        // No-op: the destination already has exactly this; nothing else is requested.
        if job.platforms.is_none()
            && self.destination_digest(job).await?.as_ref() == Some(&source_digest)
        {
            return Ok(Outcome::Skipped {
                digest: source_digest,
            });
        }
        let src = Side {
            registry: self.registries.get(&job.source.registry).await?,
            repository: &job.source.repository,
        };
        let dst = Side {
            registry: self.registries.get(&job.destination.registry).await?,
            repository: &job.destination.repository,
        };
        // What hangs on the image is read first: a hostile referrer is refused before
        // anything is written.
        let mut attachments = attached(&src.registry, src.repository, &source_digest).await?;
        with_signatures(&mut attachments, job.signatures.clone());
        let (bytes, media_type) = self
            .copy_children(&src, &dst, &source_digest, job.platforms.as_deref())
            .await?;
        // A subset is a new index, named by its sha256 as the registry names it.
        let digest = match job.platforms {
            Some(_) => Digest::of_sha256(&bytes),
            None => source_digest.clone(),
        };
        let tag = destination_reference(job);
        if job.platforms.is_some() && tag.digest().is_some_and(|pinned| *pinned != digest) {
            bail!("{}: a platform subset changes the digest, so it needs a tag, not a digest, as destination", job.source);
        }
        if job.platforms.is_some() && job.destination.digest.is_none() {
            // A subset can already be in place: compare before pushing.
            if self.destination_digest(job).await?.as_ref() == Some(&digest) {
                return Ok(Outcome::Skipped { digest });
            }
        }
        // Signatures before the tag: the tag is what the no-op check trusts, so it must
        // only appear once everything that belongs with it is in place.
        self.copy_attached(&src, &dst, attachments).await?;
        dst.registry
            .put_manifest(dst.repository, &tag, &bytes, &media_type)
            .await?;
        Ok(Outcome::Copied { digest })
    }

    /// Pushes everything `digest` references (recursively), then returns its bytes for
    /// the caller to push under a tag or digest.
    fn copy_children<'a>(
        &'a self,
        src: &'a Side<'a>,
        dst: &'a Side<'a>,
        digest: &'a Digest,
        platforms: Option<&'a [String]>,
    ) -> futures_util::future::BoxFuture<'a, Result<(Bytes, String)>> {
        Box::pin(async move {
            let reference = Reference::Digest(digest.clone());
            let (bytes, header_type) = src
                .registry
                .get_manifest(src.repository, &reference)
                .await?;
            let document =
                Document::parse(&bytes, &format!("manifest {digest} of {}", src.repository))?;
            let media_type = Document::declared_type(&bytes).unwrap_or(header_type);
            if let Document::Index(index) = &document {
                let children = index.manifests();
                let (kept, bytes) = match platforms {
                    Some(platforms) => {
                        let positions = subset_positions(children, platforms);
                        let kept: Vec<Descriptor> =
                            positions.iter().map(|&i| children[i].clone()).collect();
                        if kept.is_empty() {
                            bail!(
                                "{}@{digest} has none of the platforms {}",
                                src.repository,
                                platforms.join(", ")
                            );
                        }
                        let rewritten = rewrite_index(&bytes, &positions)?;
                        (kept, rewritten)
                    }
                    None => (children.to_vec(), bytes),
                };
                try_join_all(kept.iter().map(|child| async move {
                    let child_digest = descriptor_digest(child)
                        .map_err(|e| anyhow!("an index entry of {digest}: {e}"))?;
                    self.copy_manifest_by_digest(src, dst, &child_digest).await
                }))
                .await?;
                return Ok((bytes, media_type));
            }
            try_join_all(
                document
                    .blobs()
                    .into_iter()
                    .map(|blob| self.copy_blob(src, dst, blob)),
            )
            .await?;
            Ok((bytes, media_type))
        })
    }

    async fn copy_manifest_by_digest(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        digest: &Digest,
    ) -> Result<()> {
        let key = (
            dst.registry.host.clone(),
            dst.repository.clone(),
            digest.clone(),
        );
        if self.pushed.lock().unwrap().contains(&key) {
            return Ok(());
        }
        let (bytes, media_type) = self.copy_children(src, dst, digest, None).await?;
        dst.registry
            .put_manifest(
                dst.repository,
                &Reference::Digest(digest.clone()),
                &bytes,
                &media_type,
            )
            .await?;
        self.pushed.lock().unwrap().insert(key);
        Ok(())
    }

    /// Copies what `attached` finds beside the image: tags by tag, referrers by digest.
    async fn copy_attached(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        attachments: Vec<(Option<Tag>, Digest)>,
    ) -> Result<()> {
        for (tag, found) in attachments {
            match tag {
                Some(tag) => {
                    let (bytes, media_type) = self.copy_children(src, dst, &found, None).await?;
                    dst.registry
                        .put_manifest(dst.repository, &Reference::Tag(tag), &bytes, &media_type)
                        .await?;
                }
                None => self.copy_manifest_by_digest(src, dst, &found).await?,
            }
        }
        Ok(())
    }

    async fn copy_blob(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        descriptor: &Descriptor,
    ) -> Result<()> {
        let digest = descriptor_digest(descriptor)
            .map_err(|e| anyhow!("a descriptor in {}: {e}", src.repository))?;
        let size = descriptor.size();
        // One task per blob and repository: a second mount of a blob that is already
        // linked rewrites the link, and a manifest verified meanwhile fails (distribution).
        let key = (
            dst.registry.host.clone(),
            dst.repository.clone(),
            digest.clone(),
        );
        let ensured = self.ensured.lock().unwrap().entry(key).or_default().clone();
        ensured
            .get_or_try_init(|| self.ensure_blob(src, dst, &digest, size))
            .await?;
        Ok(())
    }

    /// Places the blob in this repository: copied if it is the first at this registry,
    /// mounted from where it already is otherwise.
    async fn ensure_blob(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        let cell = self
            .placed
            .lock()
            .unwrap()
            .entry((dst.registry.host.clone(), digest.clone()))
            .or_default()
            .clone();
        // The first task to need a blob at this registry places it; the rest mount it.
        let placed_in = cell
            .get_or_try_init(|| async {
                self.transfer(src, dst, digest, size).await?;
                Ok::<_, anyhow::Error>(dst.repository.clone())
            })
            .await?;
        if placed_in == dst.repository {
            return Ok(());
        }
        let _slot = self.blob_slots.acquire().await?;
        if dst.registry.has_blob(dst.repository, digest).await? {
            self.blobs.present.fetch_add(1, Ordering::Relaxed);
        } else if dst
            .registry
            .mount_blob(dst.repository, digest, placed_in)
            .await?
        {
            self.blobs.mounted.fetch_add(1, Ordering::Relaxed);
        } else {
            drop(_slot);
            self.transfer(src, dst, digest, size).await?;
        }
        Ok(())
    }

    /// HEAD at the destination, then a resumable, verified copy.
    async fn transfer(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        let _slot = self.blob_slots.acquire().await?;
        let copied = if dst.registry.has_blob(dst.repository, digest).await? {
            false
        } else {
            crate::oci::blobs::copy_blob(
                &src.registry,
                src.repository,
                &dst.registry,
                dst.repository,
                digest,
                size,
            )
            .await?;
            true
        };
        if copied {
            self.blobs.copied.fetch_add(1, Ordering::Relaxed);
            (self.on_bytes)(size);
        } else {
            self.blobs.present.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Signatures and attestations that live beside an image, as (tag, digest): cosign's
/// `sha256-<hex>.{sig,att,sbom}` tags and the referrers fallback index `sha256-<hex>`
/// (cosign 3's bundles on a registry without the referrers API), then OCI 1.1
/// referrers (no tag).
pub async fn attached(
    registry: &Client,
    repository: &Repository,
    digest: &Digest,
) -> Result<Vec<(Option<Tag>, Digest)>> {
    let mut found = Vec::new();
    for suffix in [".sig", ".att", ".sbom", ""] {
        // A sha512 digest makes a name longer than any tag may be: no such tag can exist.
        let name = format!("{}{suffix}", digest.as_str().replacen(':', "-", 1));
        let Ok(tag) = Tag::parse(&name) else {
            continue;
        };
        let reference = Reference::Tag(tag.clone());
        if let Some(described) = registry.head_manifest(repository, &reference).await? {
            found.push((Some(tag), described.digest));
        }
    }
    if let Some(index) = registry.referrers(repository, digest).await? {
        let referrers = referrer_digests(&index)
            .map_err(|e| anyhow!("a referrer of {repository}@{digest}: {e}"))?;
        found.extend(referrers.into_iter().map(|d| (None, d)));
    }
    Ok(found)
}

/// `attachments` with the `.sig` tags a check verified: what was verified is what is
/// copied, even if a tag moved since. Order is kept; the children's tags come last.
pub fn with_signatures(
    attachments: &mut Vec<(Option<Tag>, Digest)>,
    signatures: Vec<(Tag, Digest)>,
) {
    for (tag, digest) in signatures {
        match attachments
            .iter_mut()
            .find(|(t, _)| t.as_ref() == Some(&tag))
        {
            Some(found) => found.1 = digest,
            None => attachments.push((Some(tag), digest)),
        }
    }
}

fn destination_reference(job: &CopyJob) -> Reference {
    match (&job.destination.tag, &job.destination.digest) {
        (Some(tag), _) => Reference::Tag(tag.clone()),
        (None, Some(digest)) => Reference::Digest(digest.clone()),
        (None, None) => Reference::Tag(Tag::latest()),
    }
}
