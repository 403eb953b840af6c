//! The two-phase air gap: `mirror save` writes an OCI image layout as one tar, streamed;
//! `mirror load` pushes any OCI image layout (a tar in any member order, or a folder)
//! into a registry, verifying every blob.
//!
//! `save` writes `oci-layout`, `index.json`, every manifest, then the other blobs, so
//! `load` reads its own bundles once, front to back. A member that comes before `load`
//! knows where it goes (another tool's order) is noted by its offset and read afterwards
//! by seeking, so memory holds only manifests whatever the order.
//!
//! A bundle may be split in parts (`oci::parts`: checked before a byte is read, then
//! read as one tar) or incremental (`since`: what it leaves out must be at the
//! destination before anything is tagged).

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::bundle_verify::entry_name;
use super::engine::attached;
use super::lists;
use super::since::{Previous, Since, SourceRepository};
use crate::cli::{MirrorLoadArgs, MirrorSaveArgs};
use crate::context::Ctx;
use crate::naming::{has_host, ImageRef};
use crate::oci::blobs::{read_blob, upload_verified};
use crate::oci::image::{descriptor_digest, Document};
use crate::oci::layout::{
    self, classify, folder_file, read_document, Member, Members, Skipping, REF_NAME,
};
use crate::oci::media;
use crate::oci::parts::{self, BundleWriter, Concat, Located};
use crate::oci::registry::{receiver_stream, Client};
use crate::oci::{Digest, Error, Reference, Registries, Registry, Repository, Tag};
use crate::text::printable;

/// All manifests of a bundle held at once; each is at most `MAX_MANIFEST_BYTES`.
const MAX_ALL_MANIFEST_BYTES: u64 = 256 << 20;

/// A manifest tree read from a registry: every manifest's bytes, and every blob.
#[derive(Default)]
struct Collected {
    manifests: BTreeMap<Digest, (Bytes, String)>,
    /// Parents before children, the order `load` needs them in.
    manifest_order: Vec<Digest>,
    blobs: BTreeMap<Digest, u64>,
    /// Which repository each blob was read from.
    blob_sources: HashMap<Digest, (Registry, Repository)>,
    /// The source repositories each manifest and blob is used in.
    needed: HashMap<Digest, BTreeSet<SourceRepository>>,
}

impl Collected {
    /// Notes that `top` and everything below it are used in `repository`.
    fn needed_in(&mut self, top: &Digest, repository: &str) -> Result<()> {
        let mut stack = vec![top.clone()];
        while let Some(digest) = stack.pop() {
            let repositories = self.needed.entry(digest.clone()).or_default();
            if !repositories.insert(repository.to_string()) {
                continue;
            }
            let Some((bytes, _)) = self.manifests.get(&digest) else {
                continue;
            };
            let document = Document::parse(bytes, &format!("manifest {digest}"))?;
            for child in document.children() {
                stack.push(descriptor_digest(child)?);
            }
            for (blob, _) in referenced_blobs(&document)? {
                self.needed
                    .entry(blob)
                    .or_default()
                    .insert(repository.to_string());
            }
        }
        Ok(())
    }
}

pub async fn save(ctx: &Ctx, args: &MirrorSaveArgs) -> Result<()> {
    // Local first: a bad size, PREVIOUS or --out is named before any registry is asked.
    let limit = args
        .max_part_size
        .as_deref()
        .map(|text| {
            let size = parts::parse_size(text).context("--max-part-size")?;
            if size < parts::MIN_PART_SIZE {
                bail!("--max-part-size {text} is below the 1 MiB minimum; pass 1MiB or more");
            }
            Ok(size)
        })
        .transpose()?;
    let previous = match &args.since {
        Some(path) => {
            Some(Previous::read(path).with_context(|| format!("--since {}", path.display()))?)
        }
        None => None,
    };
    let entries = super::selected_entries(ctx, &args.select).await?;
    let writer = BundleWriter::create(&args.out, limit)?;
    let saved = save_into(&ctx.registries, args, &entries, writer, previous.as_ref()).await;
    if saved.is_err() {
        parts::remove_partials(&args.out);
    }
    saved
}

async fn save_into(
    registries: &Registries,
    args: &MirrorSaveArgs,
    entries: &[lists::Entry],
    writer: BundleWriter,
    previous: Option<&Previous>,
) -> Result<()> {
    let cli_rule = args
        .trust
        .spec()
        .build(Path::new(""), &crate::trust::FLAG_NAMES)?;
    let mut collected = Collected::default();
    let mut tops = Vec::new();
    let mut refused = Vec::new();
    for entry in entries {
        let registry = registries.get(&entry.source.registry).await?;
        let reference = entry.source.pointer();
        let top = registry
            .head_manifest(&entry.source.repository, &reference)
            .await?
            .ok_or_else(|| anyhow!("{} does not exist at the source", entry.source))?;
        // Checked on the connected side too: a refused image is left out of the bundle.
        let rule = entry.verify.as_ref().or(cli_rule.as_ref());
        let verdict =
            super::verify::check(&registry, &entry.source, &top.digest, None, rule).await?;
        let signatures = match verdict {
            Ok(verdict) if rule.is_some() => verdict.signatures,
            // Without a policy, the children's signatures still come along, so the
            // bundle can be verified inside the air gap.
            Ok(_) => super::verify::signatures(&registry, &entry.source, &top.digest).await?,
            Err(why) => {
                eprintln!("REFUSED  {}: {why}", entry.source);
                refused.push(entry.source.to_string());
                continue;
            }
        };
        collect(
            &registry,
            &entry.source.repository,
            &top.digest,
            &mut collected,
        )
        .await?;
        let mut names = vec![(entry.source.to_string(), top.digest.clone())];
        // Signatures and referrers ride along as entries of their own, so `load`
        // restores them like any image: a tag by tag, a referrer by digest.
        let repository = format!("{}/{}", entry.source.registry, entry.source.repository);
        let mut attachments = attached(&registry, &entry.source.repository, &top.digest).await?;
        super::engine::with_signatures(&mut attachments, signatures);
        for (tag, digest) in attachments {
            collect(&registry, &entry.source.repository, &digest, &mut collected).await?;
            let name = match tag {
                Some(tag) => format!("{repository}:{tag}"),
                None => format!("{repository}@{digest}"),
            };
            names.push((name, digest));
        }
        for (name, digest) in names {
            collected.needed_in(&digest, &repository)?;
            let (bytes, media_type) = &collected.manifests[&digest];
            tops.push(serde_json::json!({
                "mediaType": media_type,
                "digest": digest,
                "size": bytes.len(),
                "annotations": { REF_NAME: name },
            }));
            eprintln!("saving   {name} ({digest})");
        }
    }
    let summary = Summary {
        saved: entries.len() - refused.len(),
        tops,
    };
    finish_save(registries, args, &collected, writer, previous, summary).await?;
    if !refused.is_empty() {
        bail!(
            "{} of {} images were refused by the signature policy and left out of the bundle: {}",
            refused.len(),
            entries.len(),
            refused.join(", ")
        );
    }
    Ok(())
}

/// What the save loop hands on: images saved, and index.json's entries.
struct Summary {
    saved: usize,
    tops: Vec<serde_json::Value>,
}

/// Writes index.json and what PREVIOUS lacks, commits the files, and says what it did.
async fn finish_save(
    registries: &Registries,
    args: &MirrorSaveArgs,
    collected: &Collected,
    writer: BundleWriter,
    previous: Option<&Previous>,
    summary: Summary,
) -> Result<()> {
    let mut index = serde_json::json!({
        "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": summary.tops
    });
    let left_out = match previous {
        Some(previous) => {
            index["annotations"] = previous.since.annotations();
            previous.left_out(&collected.needed)
        }
        None => BTreeSet::new(),
    };
    let index = serde_json::to_vec_pretty(&index)?;
    let writer =
        write_archive(registries, collected, Bytes::from(index), writer, &left_out).await?;
    let committed = writer.commit()?;
    let blobs: Vec<(&Digest, &u64)> = collected
        .blobs
        .iter()
        .filter(|(d, _)| !left_out.contains(*d))
        .collect();
    let manifests = collected.manifests.len()
        - collected
            .manifests
            .keys()
            .filter(|d| left_out.contains(*d))
            .count();
    let total: u64 = blobs.iter().map(|(_, size)| **size).sum();
    let written: u64 = committed.files.iter().map(|(_, size)| size).sum();
    println!(
        "saved {} images and {} signatures or referrers ({manifests} manifests, {} blobs, {}) to {}: {written} bytes",
        summary.saved,
        summary.tops.len() - summary.saved,
        blobs.len(),
        super::human_bytes(total),
        args.out.display()
    );
    if let Some(previous) = previous {
        println!(
            "left out {} manifests and blobs that {} (sha256:{}) carries",
            left_out.len(),
            previous.since.name,
            previous.since.sha256
        );
    }
    if let Some(sidecar) = &committed.sidecar {
        println!(
            "in {} parts, listed in {}",
            committed.files.len(),
            sidecar.display()
        );
    }
    Ok(())
}

pub(super) fn partial_path(out: &Path) -> PathBuf {
    parts::with_suffix(out, ".partial")
}

fn collect<'a>(
    registry: &'a Arc<Client>,
    repository: &'a Repository,
    digest: &'a Digest,
    into: &'a mut Collected,
) -> futures_util::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        if into.manifests.contains_key(digest) {
            return Ok(());
        }
        let reference = Reference::Digest(digest.clone());
        let (bytes, header_type) = registry.get_manifest(repository, &reference).await?;
        let document = Document::parse(&bytes, &format!("manifest {digest}"))?;
        let media_type = Document::declared_type(&bytes).unwrap_or(header_type);
        let children = document
            .children()
            .iter()
            .map(descriptor_digest)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("an index entry of {digest}: {e}"))?;
        let blobs = referenced_blobs(&document)?;
        into.manifests.insert(digest.clone(), (bytes, media_type));
        into.manifest_order.push(digest.clone());
        for child in children {
            collect(registry, repository, &child, into).await?;
        }
        for (blob, size) in blobs {
            into.blobs.insert(blob.clone(), size);
            into.blob_sources
                .entry(blob)
                .or_insert_with(|| (registry.host.clone(), repository.clone()));
        }
        Ok(())
    })
}

/// (digest, size) of the config and layers of an image manifest.
fn referenced_blobs(document: &Document) -> Result<Vec<(Digest, u64)>> {
    document
        .blobs()
        .into_iter()
        .map(|d| Ok((descriptor_digest(d)?, d.size())))
        .collect()
}

/// Streams the collected tree into a layout tar through `layout::TarWriter`: manifests
/// first, then every blob through the same resumable, verifying reader as a copy.
async fn write_archive(
    registries: &Registries,
    collected: &Collected,
    index: Bytes,
    writer: BundleWriter,
    left_out: &BTreeSet<Digest>,
) -> Result<BundleWriter> {
    let tar = layout::TarWriter::start(writer, index).await?;
    let feed = async {
        for digest in &collected.manifest_order {
            if left_out.contains(digest) {
                continue;
            }
            let (bytes, _) = &collected.manifests[digest];
            tar.manifest(digest, bytes.clone()).await?;
        }
        for (digest, size) in &collected.blobs {
            if left_out.contains(digest) {
                continue;
            }
            let (host, repository) = &collected.blob_sources[digest];
            let registry = registries.get(host).await?;
            let sender = tar.blob(digest, *size).await?;
            let mut verified = Box::pin(read_blob(registry, repository, digest, *size));
            while let Some(item) = verified.next().await {
                let chunk = match item {
                    Ok(chunk) => chunk,
                    Err(error) => {
                        // The writer stops on any error; the caller is told this one.
                        let _ = sender.send(Err(Error::Refused(error.to_string()))).await;
                        return Err(
                            anyhow::Error::new(error).context("the archive was not written")
                        );
                    }
                };
                if sender.send(Ok(chunk)).await.is_err() {
                    break;
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    let fed = feed.await;
    tar.finish(fed).await
}

/// Where `load` puts each image of a bundle.
#[derive(Clone)]
struct Naming {
    to: String,
    keep_host: bool,
    /// `--repository`: every image goes to `TO/REPO`, keeping its tag.
    repository: Option<String>,
}

/// `localhost/` keeps a relative path as written (no `library/`), then it goes under TO.
fn under(to: &str, path: &str) -> Result<ImageRef> {
    ImageRef::parse(&format!("localhost/{path}"))
        .map_err(|_| anyhow!("'{}' is not a valid image name", printable(path)))?
        .under_prefix(to)
}

impl Naming {
    /// The destination of one index.json entry, from the name the bundle gives it: a
    /// full reference, a path relative to TO, a bare tag, or nothing. An entry with no
    /// tag is loaded by digest.
    fn destination(&self, name: Option<&str>, digest: &Digest) -> Result<ImageRef> {
        let to = self.to.trim_end_matches('/');
        let mut placed = match (&self.repository, name) {
            (Some(repository), _) => {
                let tag = match name.map(|n| (n, Tag::parse(n))) {
                    Some((_, Ok(tag))) => Some(tag),
                    Some((n, Err(_))) => {
                        ImageRef::parse(n)
                            .map_err(|_| anyhow!("'{}' is not an image name", printable(n)))?
                            .tag
                    }
                    None => None,
                };
                ImageRef {
                    tag,
                    ..under(to, repository).context("--repository")?
                }
            }
            (None, Some(n)) if has_host(n) => {
                let source =
                    ImageRef::parse(n).map_err(|e| anyhow!("{}", printable(&e.to_string())))?;
                lists::destination(&source, to, self.keep_host)?
            }
            (None, Some(n)) if Tag::parse(n).is_ok() => bail!(
                "image {digest} is named only '{n}', a tag with no repository; \
                 pass --repository REPO to load it as {to}/REPO:{n}"
            ),
            (None, Some(n)) => under(to, n)?,
            (None, None) => bail!(
                "image {digest} has no name (no {REF_NAME} annotation in index.json); \
                 pass --repository REPO to load it as {to}/REPO@{digest}"
            ),
        };
        if placed.digest.as_ref().is_some_and(|d| d != digest) {
            bail!(
                "index.json names {} for image {digest}: the digests differ",
                printable(name.unwrap_or_default())
            );
        }
        placed.digest = placed.tag.is_none().then(|| digest.clone());
        Ok(placed)
    }
}

/// One image named by index.json, and where it goes.
struct Top {
    name: String,
    destination: ImageRef,
    digest: Digest,
}

struct Manifest {
    bytes: Bytes,
    media_type: String,
    children: Vec<Digest>,
    repositories: BTreeSet<Repository>,
    blobs: Vec<(Digest, u64)>,
}

struct Blob {
    size: u64,
    /// The manifest that first referenced it, for messages.
    referenced_by: Digest,
    repositories: BTreeSet<Repository>,
    /// Repositories it is known to be in at the destination.
    placed: BTreeSet<Repository>,
}

#[derive(Default)]
struct Counts {
    verified: u64,
    /// Bytes of the verified uploads: a load copies nothing registry to registry.
    uploaded_bytes: u64,
    mounted: u64,
    present: u64,
}

/// Reads a bundle into a plan, uploading blobs as soon as it knows where they go.
struct Loader {
    naming: Naming,
    registry: Arc<Client>,
    handle: tokio::runtime::Handle,
    saw_layout: bool,
    saw_index: bool,
    tops: Vec<Top>,
    /// Manifests wanted and not yet read: who listed them, and for which repositories.
    expected: BTreeMap<Digest, (String, BTreeSet<Repository>)>,
    manifests: BTreeMap<Digest, Manifest>,
    manifest_bytes: u64,
    blobs: BTreeMap<Digest, Blob>,
    counts: Counts,
    /// index.json entries the signature policy refused.
    skip: BTreeSet<(Option<String>, Digest)>,
    /// The bundle this one was saved --since, from index.json.
    since: Option<Since>,
    /// Manifests an incremental bundle leaves out, and where they must already be.
    absent: BTreeMap<Digest, BTreeSet<Repository>>,
}

impl Loader {
    fn read_layout(&mut self, reader: &mut dyn Read, size: u64) -> Result<()> {
        if std::mem::replace(&mut self.saw_layout, true) {
            bail!("oci-layout appears twice");
        }
        let bytes = read_document(reader, size, "oci-layout")?;
        if !layout::declares_version_1(&bytes) {
            bail!("oci-layout does not declare imageLayoutVersion 1.x; this is not an OCI image layout");
        }
        Ok(())
    }

    fn read_index(&mut self, reader: &mut dyn Read, size: u64) -> Result<()> {
        if std::mem::replace(&mut self.saw_index, true) {
            bail!("index.json appears twice");
        }
        let bytes = read_document(reader, size, "index.json")?;
        let index: oci_spec::image::ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow!("index.json is not an OCI image index: {e}"))?;
        if index.manifests().is_empty() {
            bail!("index.json lists no images; the bundle is empty");
        }
        self.since = Since::from_annotations(index.annotations().as_ref());
        for entry in index.manifests() {
            let digest = Digest::parse(entry.digest().as_ref()).context("index.json")?;
            let name = entry_name(entry.annotations().as_ref());
            let name = name.as_deref();
            // Refused by the signature policy: none of it is wanted, so nothing is pushed.
            if self
                .skip
                .contains(&(name.map(String::from), digest.clone()))
            {
                continue;
            }
            let destination = self.naming.destination(name, &digest)?;
            if let Some(other) = self.tops.iter().find(|t| {
                t.destination.repository == destination.repository
                    && t.destination.pointer() == destination.pointer()
                    && t.digest != digest
            }) {
                bail!(
                    "index.json puts both {} and {digest} at {destination}; name them apart",
                    other.digest
                );
            }
            let repositories = BTreeSet::from([destination.repository.clone()]);
            self.want(digest.clone(), repositories, "index.json".into())?;
            self.tops.push(Top {
                name: name.map_or_else(|| digest.to_string(), printable),
                destination,
                digest,
            });
        }
        Ok(())
    }

    /// Notes that `digest` (a manifest) and all below it go to `repositories`.
    fn want(
        &mut self,
        digest: Digest,
        repositories: BTreeSet<Repository>,
        listed_by: String,
    ) -> Result<()> {
        let mut work = vec![(digest, repositories, listed_by)];
        while let Some((digest, repositories, listed_by)) = work.pop() {
            let Some(manifest) = self.manifests.get_mut(&digest) else {
                let (_, wanted) = self
                    .expected
                    .entry(digest)
                    .or_insert_with(|| (listed_by, BTreeSet::new()));
                wanted.extend(repositories);
                continue;
            };
            let new: BTreeSet<Repository> = repositories
                .difference(&manifest.repositories)
                .cloned()
                .collect();
            if new.is_empty() {
                continue;
            }
            manifest.repositories.extend(new.iter().cloned());
            for child in &manifest.children {
                work.push((child.clone(), new.clone(), format!("index {digest}")));
            }
            for (blob, size) in manifest.blobs.clone() {
                let entry = self.blobs.entry(blob.clone()).or_insert_with(|| Blob {
                    size,
                    referenced_by: digest.clone(),
                    repositories: BTreeSet::new(),
                    placed: BTreeSet::new(),
                });
                if entry.size != size {
                    bail!(
                        "blob {blob} is {} bytes in manifest {} and {size} in {digest}; the bundle contradicts itself",
                        entry.size,
                        entry.referenced_by
                    );
                }
                entry.repositories.extend(new.iter().cloned());
            }
        }
        Ok(())
    }

    fn read_manifest(&mut self, digest: &Digest, reader: &mut dyn Read, size: u64) -> Result<()> {
        let Some((_, repositories)) = self.expected.remove(digest) else {
            return Ok(());
        };
        let what = format!("manifest {digest}");
        let bytes = read_document(reader, size, &what)?;
        if !digest.matches(&bytes) {
            bail!(crate::oci::Error::DigestMismatch {
                what: format!("{what} in the bundle")
            });
        }
        self.manifest_bytes += size;
        if self.manifest_bytes > MAX_ALL_MANIFEST_BYTES {
            bail!(
                "the bundle's manifests add up to more than {} MiB; refusing it",
                MAX_ALL_MANIFEST_BYTES >> 20
            );
        }
        let document = Document::parse(&bytes, &what)?;
        let children = document
            .children()
            .iter()
            .map(descriptor_digest)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("an entry of index {digest}"))?;
        let blobs = referenced_blobs(&document).with_context(|| format!("a blob of {what}"))?;
        let media_type = document.media_type(&bytes);
        self.manifests.insert(
            digest.clone(),
            Manifest {
                bytes: Bytes::from(bytes),
                media_type,
                children,
                repositories: BTreeSet::new(),
                blobs,
            },
        );
        self.want(digest.clone(), repositories, String::new())
    }

    /// A blob member as it streams by: a manifest is read, a blob uploaded if it is
    /// needed, anything else left for later.
    fn offer(&mut self, digest: &Digest, reader: &mut dyn Read, size: u64) -> Result<()> {
        if self.expected.contains_key(digest) {
            return self.read_manifest(digest, reader, size);
        }
        // An incremental bundle uploads nothing until what it leaves out is found at the
        // destination: its blobs are placed by offset after that check.
        let unplaced = self.blobs.get(digest).is_some_and(|b| b.placed.is_empty());
        if unplaced && self.since.is_none() {
            self.upload(digest, reader)?;
        }
        Ok(())
    }

    /// Uploads a blob to its first repository (unless it is there), verified on the fly,
    /// then mounts it into the others.
    fn upload(&mut self, digest: &Digest, reader: &mut dyn Read) -> Result<()> {
        let blob = &self.blobs[digest];
        let Some(first) = blob.repositories.first().cloned() else {
            return Ok(());
        };
        let size = blob.size;
        let registry = self.registry.clone();
        if self.handle.block_on(registry.has_blob(&first, digest))? {
            self.counts.present += 1;
        } else {
            let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
            let label = format!("blob {digest} in the bundle");
            let (repository, pushed) = (first.clone(), digest.clone());
            let upload = self.handle.spawn(async move {
                let chunks = Box::pin(receiver_stream(receiver));
                upload_verified(&registry, &repository, &pushed, size, chunks, label).await
            });
            let mut buffer = vec![0u8; 1 << 20];
            let (mut reader, mut read) = (reader.take(size + 1), 0u64);
            let ended = loop {
                let n = reader
                    .read(&mut buffer)
                    .with_context(|| format!("reading blob {digest}"))?;
                read += n as u64;
                let chunk = Bytes::copy_from_slice(&buffer[..n]);
                if n == 0 || sender.blocking_send(Ok(chunk)).is_err() {
                    break n == 0;
                }
            };
            drop(sender);
            // The registry's answer would bury this in transport errors; say it plainly.
            if ended && read != size {
                upload.abort();
                match read < size {
                    true => bail!("blob {digest} is cut short: {read} of {size} bytes; the bundle is incomplete: write it again"),
                    false => bail!("blob {digest} is larger in the bundle than the {size} bytes its manifest declares"),
                }
            }
            self.handle.block_on(upload)??;
            self.counts.verified += 1;
            self.counts.uploaded_bytes += size;
        }
        self.blobs
            .get_mut(digest)
            .expect("checked above")
            .placed
            .insert(first);
        self.mount_rest(digest)
    }

    /// Mounts a placed blob into the repositories that need it and lack it.
    fn mount_rest(&mut self, digest: &Digest) -> Result<()> {
        let blob = &self.blobs[digest];
        let Some(from) = blob.placed.first().cloned() else {
            return Ok(());
        };
        let missing: Vec<Repository> = blob
            .repositories
            .difference(&blob.placed)
            .cloned()
            .collect();
        for repository in missing {
            let registry = &self.registry;
            let present = self
                .handle
                .block_on(registry.has_blob(&repository, digest))?;
            if present {
                self.counts.present += 1;
            } else if self
                .handle
                .block_on(registry.mount_blob(&repository, digest, &from))?
            {
                self.counts.mounted += 1;
            } else {
                bail!("the registry refused to mount {digest} into {repository}");
            }
            self.blobs
                .get_mut(digest)
                .expect("checked above")
                .placed
                .insert(repository);
        }
        Ok(())
    }

    /// The first pass over a tar, front to back.
    fn stream_tar(&mut self, files: &[(PathBuf, u64)]) -> Result<Members> {
        let reader = BufReader::with_capacity(1 << 20, Concat::new(files));
        let mut archive = tar::Archive::new(Skipping(reader));
        let mut toc = HashMap::new();
        for entry in archive.entries_with_seek().context("not a tar archive")? {
            let mut entry = entry.context("not a tar archive, or one cut short or damaged")?;
            let size = entry.size();
            match classify(entry.header(), &entry.path_bytes())? {
                Member::Other => {}
                Member::Layout => self.read_layout(&mut entry, size)?,
                Member::Index => self.read_index(&mut entry, size)?,
                Member::Blob(digest) => {
                    if toc.len() >= layout::MAX_MEMBERS {
                        bail!("more than {} blobs; refusing it", layout::MAX_MEMBERS);
                    }
                    if toc
                        .insert(digest.clone(), (entry.raw_file_position(), size))
                        .is_some()
                    {
                        bail!("blob {digest} appears twice");
                    }
                    self.offer(&digest, &mut entry, size)?;
                }
            }
        }
        let file = archive.into_inner().0;
        Ok(Members::Tar { file, toc })
    }

    fn read_folder(&mut self, root: &Path) -> Result<Members> {
        if let Some((mut file, size)) = folder_file(root, "oci-layout")? {
            self.read_layout(&mut file, size)?;
        }
        if let Some((mut file, size)) = folder_file(root, "index.json")? {
            self.read_index(&mut file, size)?;
        }
        Ok(Members::Folder(root.to_path_buf()))
    }

    /// Reads what the first pass could not place, and proves the bundle complete:
    /// every manifest and blob below index.json is in it.
    fn finish(&mut self, members: &mut Members) -> Result<()> {
        match (self.saw_layout, self.saw_index) {
            (false, false) => bail!(
                "not an OCI image layout: no oci-layout and no index.json (empty, or not a layout?)"
            ),
            (false, true) => bail!("no oci-layout file, so not an OCI image layout"),
            (true, false) => bail!("no index.json, so nothing says which images it holds"),
            (true, true) => {}
        }
        while let Some((digest, (listed_by, _))) = self.expected.first_key_value() {
            let (digest, listed_by) = (digest.clone(), listed_by.clone());
            let Some((mut reader, size)) = members.open(&digest)? else {
                if self.since.is_none() {
                    bail!("manifest {digest} (listed by {listed_by}) is not in the bundle; it is incomplete: write it again");
                }
                let (_, repositories) = self.expected.remove(&digest).unwrap_or_default();
                self.absent.entry(digest).or_default().extend(repositories);
                continue;
            };
            self.read_manifest(&digest, &mut reader, size)?;
        }
        let unplaced: Vec<&Digest> = self
            .blobs
            .iter()
            .filter(|(_, b)| b.placed.is_empty())
            .map(|(d, _)| d)
            .collect();
        let missing: Vec<Digest> = unplaced
            .iter()
            .filter(|d| members.position(d).is_none())
            .map(|d| (*d).clone())
            .collect();
        if self.since.is_some() {
            return self.left_out_are_there(missing, members);
        }
        self.place_carried(members, missing)
    }

    /// What an incremental bundle leaves out must be at the destination already, in
    /// the repository that receives it: HEAD only, before any manifest or tag is written.
    fn left_out_are_there(&mut self, missing: Vec<Digest>, members: &mut Members) -> Result<()> {
        let registry = self.registry.clone();
        let mut blobs_missing = 0;
        for digest in &missing {
            let repositories = self.blobs[digest].repositories.clone();
            for repository in repositories {
                if self
                    .handle
                    .block_on(registry.has_blob(&repository, digest))?
                {
                    self.counts.present += 1;
                    let blob = self.blobs.get_mut(digest).expect("listed above");
                    blob.placed.insert(repository);
                }
            }
            blobs_missing += usize::from(self.blobs[digest].placed.is_empty());
        }
        let mut manifests_missing = 0;
        for (digest, repositories) in &self.absent {
            for repository in repositories {
                let reference = Reference::Digest(digest.clone());
                if self
                    .handle
                    .block_on(registry.head_manifest(repository, &reference))?
                    .is_none()
                {
                    manifests_missing += 1;
                    break;
                }
            }
        }
        if blobs_missing + manifests_missing > 0 {
            let since = self.since.as_ref().expect("an incremental bundle");
            bail!(since.refusal(blobs_missing, manifests_missing, &self.naming.to));
        }
        self.place_carried(members, Vec::new())
    }

    /// Uploads the carried blobs the first pass could not place, then mounts.
    fn place_carried(&mut self, members: &mut Members, missing: Vec<Digest>) -> Result<()> {
        let unplaced: Vec<&Digest> = self
            .blobs
            .iter()
            .filter(|(_, b)| b.placed.is_empty())
            .map(|(d, _)| d)
            .collect();
        if let Some(first) = missing.first() {
            let blob = &self.blobs[first];
            let more = match missing.len() - 1 {
                0 => String::new(),
                n => format!(" (and {n} more)"),
            };
            bail!(
                "blob {first} ({} bytes, of manifest {}) is not in the bundle{more}; it is incomplete: write it again",
                blob.size,
                blob.referenced_by
            );
        }
        let mut pending: Vec<(u64, Digest)> = unplaced
            .into_iter()
            .map(|d| (members.position(d).unwrap_or_default(), d.clone()))
            .collect();
        pending.sort();
        for (_, digest) in pending {
            let (mut reader, _) = members
                .open(&digest)?
                .ok_or_else(|| anyhow!("blob {digest} is not in the bundle"))?;
            self.upload(&digest, &mut reader)?;
        }
        let placed: Vec<Digest> = self.blobs.keys().cloned().collect();
        for digest in placed {
            self.mount_rest(&digest)?;
        }
        Ok(())
    }
}

pub async fn load(ctx: &Ctx, args: &MirrorLoadArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let registries = &ctx.registries;
    let destination_host = ImageRef::parse(&format!("{}/x", args.to.trim_end_matches('/')))
        .map_err(|e| anyhow!("--to {}: {e}", args.to))?
        .registry;
    // Local first: a missing bundle, a bad part or a bad --repository is named before
    // any connection; every part of a split bundle is checked here.
    let located = Arc::new(parts::locate(&args.bundle)?);
    if let Some(repository) = &args.repository {
        under(args.to.trim_end_matches('/'), repository).context("--repository")?;
    }
    let rule = args
        .trust
        .spec()
        .build(Path::new(""), &crate::trust::FLAG_NAMES)?;
    let registry = registries.get(&destination_host).await?;
    let naming = Naming {
        to: args.to.clone(),
        keep_host: args.keep_host,
        repository: args.repository.clone(),
    };
    let refused = match rule {
        Some(rule) => {
            let located = located.clone();
            let handle = tokio::runtime::Handle::current();
            let destination = super::bundle_verify::AtDestination {
                registry: registry.clone(),
                place: Box::new({
                    let naming = naming.clone();
                    move |name, digest| Ok(naming.destination(name, digest)?.repository)
                }),
            };
            tokio::task::spawn_blocking(move || {
                super::bundle_verify::check_bundle(&located, &rule, &destination, &handle)
            })
            .await?
            .with_context(|| args.bundle.display().to_string())?
        }
        None => Default::default(),
    };
    for line in &refused.lines {
        eprintln!("{line}");
    }
    let mut loader = Loader {
        skip: refused.entries.clone(),
        naming,
        registry: registry.clone(),
        handle: tokio::runtime::Handle::current(),
        saw_layout: false,
        saw_index: false,
        tops: Vec::new(),
        expected: BTreeMap::new(),
        manifests: BTreeMap::new(),
        manifest_bytes: 0,
        blobs: BTreeMap::new(),
        counts: Counts::default(),
        since: None,
        absent: BTreeMap::new(),
    };
    let path = args.bundle.clone();
    // Reading the bundle is blocking; uploads are handed to the runtime as they stream.
    let loader = tokio::task::spawn_blocking(move || {
        let members = match located.as_ref() {
            Located::Folder(root) => loader.read_folder(root),
            Located::Tar { files, .. } => loader.stream_tar(files),
        };
        members
            .and_then(|mut members| loader.finish(&mut members))
            .with_context(|| path.display().to_string())?;
        Ok::<_, anyhow::Error>(loader)
    })
    .await??;

    let (loaded, current) = push_tops(&registry, &loader).await?;
    let counts = &loader.counts;
    println!(
        "{loaded} loaded, {current} already current; blobs: {} verified and uploaded, {} mounted, {} already there; {} moved in {:.1}s",
        counts.verified,
        counts.mounted,
        counts.present,
        super::human_bytes(counts.uploaded_bytes),
        started.elapsed().as_secs_f64()
    );
    if !refused.lines.is_empty() {
        bail!(
            "{} images of the bundle were refused by the signature policy; nothing was written for them",
            refused.lines.len()
        );
    }
    Ok(())
}

/// Everything is in the registry now; only manifests remain, children first, tag last.
/// (loaded, already current)
async fn push_tops(registry: &Client, loader: &Loader) -> Result<(usize, usize)> {
    let mut loaded = 0;
    let mut current = 0;
    let mut pushed = BTreeSet::new();
    for top in &loader.tops {
        let destination = &top.destination;
        let pointer = destination.pointer();
        if registry
            .head_manifest(&destination.repository, &pointer)
            .await?
            .is_some_and(|d| d.digest == top.digest)
        {
            current += 1;
            eprintln!("current  {} (already at {destination})", top.name);
            continue;
        }
        push_children(
            registry,
            &destination.repository,
            &top.digest,
            &loader.manifests,
            &mut pushed,
        )
        .await?;
        let (bytes, media_type) = match loader.manifests.get(&top.digest) {
            Some(manifest) => (manifest.bytes.clone(), manifest.media_type.clone()),
            // Left out of an incremental bundle: proven at the destination already.
            None => {
                let reference = Reference::Digest(top.digest.clone());
                registry
                    .get_manifest(&destination.repository, &reference)
                    .await?
            }
        };
        registry
            .put_manifest(&destination.repository, &pointer, &bytes, &media_type)
            .await?;
        loaded += 1;
        eprintln!("loaded   {} -> {destination}", top.name);
    }
    Ok((loaded, current))
}

/// Pushes the manifests below `top` by digest, children before parents; the top is the
/// caller's. A loop, not recursion: a hostile bundle may nest indexes deeply.
async fn push_children(
    registry: &Client,
    repository: &Repository,
    top: &Digest,
    manifests: &BTreeMap<Digest, Manifest>,
    pushed: &mut BTreeSet<(Repository, Digest)>,
) -> Result<()> {
    let mut stack = vec![(top.clone(), false)];
    while let Some((digest, expanded)) = stack.pop() {
        let key = (repository.clone(), digest.clone());
        if pushed.contains(&key) {
            continue;
        }
        // Left out of an incremental bundle: at the destination, with all below it.
        let Some(manifest) = manifests.get(&digest) else {
            continue;
        };
        if !expanded {
            stack.push((digest, true));
            stack.extend(manifest.children.iter().map(|c| (c.clone(), false)));
        } else if digest != *top {
            registry
                .put_manifest(
                    repository,
                    &Reference::Digest(digest.clone()),
                    &manifest.bytes,
                    &manifest.media_type,
                )
                .await?;
            pushed.insert(key);
        }
    }
    Ok(())
}
