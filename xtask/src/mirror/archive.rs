//! The two-phase air gap: `mirror save` writes an OCI image layout as one tar, streamed;
//! `mirror load` pushes it into the private registry, verifying every blob as it goes.
//!
//! Layout order inside the tar: `oci-layout`, `index.json`, every manifest, then the
//! other blobs. Manifests before blobs lets `load` know where each blob goes while it
//! reads the archive once, front to back.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::lists;
use crate::cli::{MirrorLoadArgs, MirrorSaveArgs};
use crate::naming::ImageRef;
use crate::oci::registry::{receiver_stream, sha256_digest, verified_stream, Registry};
use crate::oci::Registries;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// A manifest tree read from a registry: every manifest's bytes, and every blob.
#[derive(Default)]
struct Collected {
    manifests: BTreeMap<String, (Bytes, String)>,
    /// Parents before children, the order `load` needs them in.
    manifest_order: Vec<String>,
    blobs: BTreeMap<String, u64>,
    /// Which repository each blob was read from.
    blob_sources: HashMap<String, (String, String)>,
}

pub async fn save(root: &Path, args: &MirrorSaveArgs) -> Result<()> {
    let entries = lists::load(root, &args.lists, &args.images)?;
    let registries = Registries::new(args.registry.insecure.clone());
    let mut collected = Collected::default();
    let mut tops = Vec::new();
    for entry in &entries {
        let registry = registries.get(&entry.source.registry).await?;
        let reference = entry.source.pointer();
        let top = registry
            .head_manifest(&entry.source.repository, &reference)
            .await?
            .ok_or_else(|| anyhow!("{} does not exist at the source", entry.source))?;
        collect(
            &registry,
            &entry.source.repository,
            &top.digest,
            &mut collected,
        )
        .await?;
        let (bytes, media_type) = &collected.manifests[&top.digest];
        tops.push(serde_json::json!({
            "mediaType": media_type,
            "digest": top.digest,
            "size": bytes.len(),
            "annotations": { REF_NAME: entry.source.to_string() },
        }));
        eprintln!("saving   {} ({})", entry.source, top.digest);
    }
    let index = serde_json::to_vec_pretty(
        &serde_json::json!({ "schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": tops }),
    )?;

    let partial = partial_path(&args.out);
    let result = write_archive(&registries, &collected, Bytes::from(index), &partial).await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("moving the archive to {}", args.out.display()))?;
    let total: u64 = collected.blobs.values().sum();
    println!(
        "saved {} images ({} manifests, {} blobs, {}) to {}",
        entries.len(),
        collected.manifests.len(),
        collected.blobs.len(),
        super::human_bytes(total),
        args.out.display()
    );
    Ok(())
}

pub(super) fn partial_path(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

fn collect<'a>(
    registry: &'a Arc<Registry>,
    repository: &'a str,
    digest: &'a str,
    into: &'a mut Collected,
) -> futures_util::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        if into.manifests.contains_key(digest) {
            return Ok(());
        }
        let (bytes, header_type) = registry.get_manifest(repository, digest).await?;
        let json: serde_json::Value = serde_json::from_slice(&bytes)?;
        let media_type = json["mediaType"]
            .as_str()
            .map(String::from)
            .unwrap_or(header_type);
        into.manifests
            .insert(digest.to_string(), (bytes, media_type));
        into.manifest_order.push(digest.to_string());
        for child in json["manifests"].as_array().into_iter().flatten() {
            let child = child["digest"]
                .as_str()
                .ok_or_else(|| anyhow!("an index entry of {digest} has no digest"))?;
            collect(registry, repository, child, into).await?;
        }
        for blob in referenced_blobs(&json) {
            into.blobs.insert(blob.0.clone(), blob.1);
            into.blob_sources
                .entry(blob.0)
                .or_insert_with(|| (registry.host.clone(), repository.to_string()));
        }
        Ok(())
    })
}

/// (digest, size) of the config and layers of an image manifest.
fn referenced_blobs(json: &serde_json::Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let config = json.get("config").into_iter();
    let layers = ["layers", "blobs"]
        .into_iter()
        .flat_map(|k| json[k].as_array().into_iter().flatten());
    for descriptor in config.chain(layers) {
        if let (Some(digest), Some(size)) =
            (descriptor["digest"].as_str(), descriptor["size"].as_u64())
        {
            out.push((digest.to_string(), size));
        }
    }
    out
}

enum Piece {
    Small(String, Bytes),
    Stream(
        String,
        u64,
        tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    ),
}

/// The tar is written on a blocking thread; blob bodies reach it through bounded
/// channels, so memory stays at a few chunks whatever the layer size.
async fn write_archive(
    registries: &Registries,
    collected: &Collected,
    index: Bytes,
    path: &Path,
) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let (pieces, mut receiver) = tokio::sync::mpsc::channel::<Piece>(1);
    let writer = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, file));
        while let Some(piece) = receiver.blocking_recv() {
            let (name, size, mut reader): (String, u64, Box<dyn Read>) = match piece {
                Piece::Small(name, bytes) => (
                    name,
                    bytes.len() as u64,
                    Box::new(std::io::Cursor::new(bytes)),
                ),
                Piece::Stream(name, size, chunks) => (
                    name,
                    size,
                    Box::new(ChannelReader {
                        chunks,
                        current: Bytes::new(),
                    }),
                ),
            };
            let mut header = tar::Header::new_gnu();
            header.set_size(size);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, &name, &mut reader)
                .with_context(|| format!("writing {name}"))?;
        }
        builder
            .into_inner()?
            .into_inner()
            .map_err(|e| anyhow!("flushing the archive: {}", e.error()))?
            .sync_all()?;
        Ok(())
    });
    let feed = async {
        send(
            &pieces,
            Piece::Small(
                "oci-layout".into(),
                Bytes::from_static(br#"{"imageLayoutVersion":"1.0.0"}"#),
            ),
        )
        .await?;
        send(&pieces, Piece::Small("index.json".into(), index)).await?;
        for digest in &collected.manifest_order {
            let (bytes, _) = &collected.manifests[digest];
            send(&pieces, Piece::Small(blob_path(digest)?, bytes.clone())).await?;
        }
        for (digest, size) in &collected.blobs {
            let (host, repository) = &collected.blob_sources[digest];
            let registry = registries.get(host).await?;
            let response = registry
                .get_blob(repository, digest)
                .await
                .map_err(|f| f.error)?;
            let (sender, chunks) = tokio::sync::mpsc::channel(4);
            send(&pieces, Piece::Stream(blob_path(digest)?, *size, chunks)).await?;
            let label = format!("blob {digest} of {host}/{repository}");
            let mut verified = Box::pin(verified_stream(
                response.bytes_stream(),
                digest.clone(),
                *size,
                registry.stats.clone(),
                label,
            ));
            while let Some(item) = verified.next().await {
                let failed = item.as_ref().err().map(|e| e.to_string());
                if sender.send(item).await.is_err() {
                    break;
                }
                if let Some(message) = failed {
                    bail!("{message}; the archive was not written");
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    let fed = feed.await;
    drop(pieces);
    let written = writer.await?;
    fed?;
    written
}

async fn send(pieces: &tokio::sync::mpsc::Sender<Piece>, piece: Piece) -> Result<()> {
    pieces
        .send(piece)
        .await
        .map_err(|_| anyhow!("the archive writer stopped"))
}

struct ChannelReader {
    chunks: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn blob_path(digest: &str) -> Result<String> {
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or_else(|| anyhow!("'{digest}' is not a digest"))?;
    Ok(format!("blobs/{algorithm}/{hex}"))
}

/// What `load` learns from `index.json` and the manifests before the blobs arrive.
#[derive(Default)]
struct LoadPlan {
    /// Top-level images: source reference and digest.
    tops: Vec<(ImageRef, String)>,
    /// Manifests still expected in the archive, with the repositories they go to.
    expected: BTreeMap<String, BTreeSet<String>>,
    manifests: BTreeMap<String, (Bytes, String)>,
    /// Non-manifest blobs and the repositories that need them.
    blobs: BTreeMap<String, BTreeSet<String>>,
}

pub async fn load(args: &MirrorLoadArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let registries = Registries::new(args.registry.insecure.clone());
    let destination_host = ImageRef::parse(&format!("{}/x", args.to.trim_end_matches('/')))
        .map_err(|e| anyhow!("--to {}: {e}", args.to))?
        .registry;
    let registry = registries.get(&destination_host).await?;
    let file =
        File::open(&args.bundle).with_context(|| format!("opening {}", args.bundle.display()))?;
    let handle = tokio::runtime::Handle::current();
    let to = args.to.clone();
    let keep_host = args.keep_host;
    let bundle = args.bundle.display().to_string();
    let reader_registry = registry.clone();
    // Reading the tar is blocking; each blob is handed to the runtime as it streams by.
    let plan = tokio::task::spawn_blocking(move || {
        read_and_push_blobs(file, &bundle, &to, keep_host, &reader_registry, &handle)
    })
    .await??;

    let mut loaded = 0;
    let mut current = 0;
    for (source, digest) in &plan.tops {
        let destination = lists::destination(source, &args.to, args.keep_host)?;
        let tag = destination
            .tag
            .clone()
            .or_else(|| destination.digest.clone())
            .unwrap_or_else(|| "latest".into());
        if registry
            .head_manifest(&destination.repository, &tag)
            .await?
            .map(|d| d.digest)
            .as_deref()
            == Some(digest.as_str())
        {
            current += 1;
            eprintln!("current  {source} (already at {destination})");
            continue;
        }
        push_tree(
            &registry,
            &destination.repository,
            digest,
            &plan.manifests,
            true,
        )
        .await?;
        let (bytes, media_type) = &plan.manifests[digest];
        registry
            .put_manifest(&destination.repository, &tag, bytes, media_type)
            .await?;
        loaded += 1;
        eprintln!(
            "loaded   {source} -> {}/{}:{tag}@{digest}",
            destination.registry, destination.repository
        );
    }
    println!(
        "{loaded} loaded, {current} already current, {} blobs verified, {} moved in {:.1}s",
        plan.blobs.len(),
        super::human_bytes(registry.stats.bytes_copied.load(Ordering::Relaxed)),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Pushes the children of `digest` by digest, deepest first; the top is left to the caller.
fn push_tree<'a>(
    registry: &'a Arc<Registry>,
    repository: &'a str,
    digest: &'a str,
    manifests: &'a BTreeMap<String, (Bytes, String)>,
    top: bool,
) -> futures_util::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let (bytes, media_type) = manifests
            .get(digest)
            .ok_or_else(|| anyhow!("manifest {digest} is missing from the archive"))?;
        let json: serde_json::Value = serde_json::from_slice(bytes)?;
        for child in json["manifests"].as_array().into_iter().flatten() {
            if let Some(child) = child["digest"].as_str() {
                push_tree(registry, repository, child, manifests, false).await?;
            }
        }
        if !top {
            registry
                .put_manifest(repository, digest, bytes, media_type)
                .await?;
        }
        Ok(())
    })
}

fn read_and_push_blobs(
    file: File,
    bundle: &str,
    to: &str,
    keep_host: bool,
    registry: &Arc<Registry>,
    handle: &tokio::runtime::Handle,
) -> Result<LoadPlan> {
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let mut plan = LoadPlan::default();
    let mut saw_layout = false;
    for entry in archive
        .entries()
        .with_context(|| format!("reading {bundle}: not a tar archive"))?
    {
        let mut entry = entry
            .with_context(|| format!("reading {bundle}: the archive is truncated or corrupt"))?;
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let size = entry.size();
        match name.as_str() {
            "oci-layout" => saw_layout = true,
            "index.json" => {
                let index: serde_json::Value = serde_json::from_reader(&mut entry)
                    .with_context(|| format!("{bundle}: index.json is not JSON"))?;
                for top in index["manifests"].as_array().into_iter().flatten() {
                    let name = top["annotations"][REF_NAME].as_str().ok_or_else(|| {
                        anyhow!("{bundle}: an index.json entry has no {REF_NAME}")
                    })?;
                    let digest = top["digest"]
                        .as_str()
                        .ok_or_else(|| anyhow!("{bundle}: an index.json entry has no digest"))?;
                    let source = ImageRef::parse(name).map_err(|e| anyhow!("{bundle}: {e}"))?;
                    let destination = lists::destination(&source, to, keep_host)?;
                    plan.expected
                        .entry(digest.to_string())
                        .or_default()
                        .insert(destination.repository);
                    plan.tops.push((source, digest.to_string()));
                }
            }
            _ => {
                let digest = name
                    .strip_prefix("blobs/")
                    .and_then(|rest| rest.split_once('/'))
                    .map(|(algorithm, hex)| format!("{algorithm}:{hex}"))
                    .ok_or_else(|| {
                        anyhow!("{bundle}: unexpected entry '{name}' in an OCI layout")
                    })?;
                if !saw_layout || (plan.tops.is_empty() && plan.expected.is_empty()) {
                    bail!("{bundle}: blobs come before oci-layout and index.json; write it with `cargo xtask images mirror save`");
                }
                if let Some(repositories) = plan.expected.remove(&digest) {
                    read_manifest(&mut entry, &digest, repositories, &mut plan)
                        .with_context(|| format!("{bundle}: manifest {digest}"))?;
                } else if let Some(repositories) = plan.blobs.get(&digest).cloned() {
                    handle.block_on(push_blob_from_tar(
                        registry,
                        &mut entry,
                        &digest,
                        size,
                        &repositories,
                        handle,
                    ))?;
                }
            }
        }
    }
    if !plan.expected.is_empty() {
        bail!(
            "{bundle}: manifests missing from the archive: {}",
            plan.expected.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(plan)
}

fn read_manifest(
    entry: &mut impl Read,
    digest: &str,
    repositories: BTreeSet<String>,
    plan: &mut LoadPlan,
) -> Result<()> {
    let mut bytes = Vec::new();
    entry.take(16 << 20).read_to_end(&mut bytes)?;
    let actual = sha256_digest(&bytes);
    if actual != digest {
        bail!("digest mismatch: the archive's content has digest {actual}; refusing it");
    }
    let json: serde_json::Value = serde_json::from_slice(&bytes)?;
    let media_type = json["mediaType"]
        .as_str()
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_string();
    for child in json["manifests"].as_array().into_iter().flatten() {
        if let Some(child) = child["digest"].as_str() {
            plan.expected
                .entry(child.to_string())
                .or_default()
                .extend(repositories.iter().cloned());
        }
    }
    for (blob, _) in referenced_blobs(&json) {
        plan.blobs
            .entry(blob)
            .or_default()
            .extend(repositories.iter().cloned());
    }
    plan.manifests
        .insert(digest.to_string(), (Bytes::from(bytes), media_type));
    Ok(())
}

/// Uploads one blob from the archive to the first repository that needs it (verified on
/// the fly), then mounts it into the others.
async fn push_blob_from_tar(
    registry: &Arc<Registry>,
    entry: &mut (impl Read + ?Sized),
    digest: &str,
    size: u64,
    repositories: &BTreeSet<String>,
    handle: &tokio::runtime::Handle,
) -> Result<()> {
    let mut targets = repositories.iter();
    let first = targets
        .next()
        .expect("a blob is only tracked with a repository");
    if !registry.has_blob(first, digest).await? {
        let (sender, receiver) = tokio::sync::mpsc::channel::<reqwest::Result<Bytes>>(4);
        let upload = {
            let registry = registry.clone();
            let first = first.clone();
            let digest = digest.to_string();
            let label = format!("blob {digest} in the archive");
            handle.spawn(async move {
                let chunks = Box::pin(receiver_stream(receiver));
                registry
                    .put_verified(&first, &digest, size, chunks, label)
                    .await
                    .map_err(|f| f.error)
            })
        };
        // This runs inside block_on on a blocking thread; reading the entry is blocking.
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            if sender
                .send(Ok(Bytes::copy_from_slice(&buffer[..n])))
                .await
                .is_err()
            {
                break;
            }
        }
        drop(sender);
        upload
            .await?
            .with_context(|| format!("loading blob {digest}"))?;
    }
    for repository in targets {
        if !registry.has_blob(repository, digest).await?
            && !registry.mount_blob(repository, digest, first).await?
        {
            bail!("the registry refused to mount {digest} into {repository}");
        }
    }
    Ok(())
}
