//! OCI image layouts: read one (a directory, or a tar in any member order), write one
//! as a streamed tar, and push one to a registry through the verifying blob path.
//! BuildKit's `--by-digest` output, `mirror save` and `mirror load` go through here.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::blobs::upload_verified;
use super::image::{descriptor_digest, Document};
use super::name::{Digest, Reference, Repository};
use super::parts::{Concat, Located};
use super::registry::{Client, MAX_MANIFEST_BYTES};
use crate::text::printable;

/// The name an index.json entry gives its image (OCI's annotation).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Set by containerd, nerdctl and `docker save` to the full reference.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
const LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Whether an `oci-layout` file declares `imageLayoutVersion` 1.x.
pub fn declares_version_1(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct LayoutFile {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    serde_json::from_slice::<LayoutFile>(bytes).is_ok_and(|f| f.version.starts_with("1."))
}

/// Where a blob is inside a layout: `blobs/<algorithm>/<hex>`.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}", digest.as_str().replacen(':', "/", 1))
}

// ---- Reading: members of a tar or a folder.

/// What a tar member is, once its name and type are checked.
pub enum Member {
    Layout,
    Index,
    Blob(Digest),
    Other,
}

pub fn classify(header: &tar::Header, path: &[u8]) -> Result<Member> {
    let name = String::from_utf8_lossy(path);
    let shown = printable(&name);
    if name.starts_with('/') {
        bail!("member '{shown}' has an absolute path; a layout's members are relative");
    }
    let parts: Vec<&str> = name
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        bail!("member '{shown}' climbs out of the layout with '..'");
    }
    use tar::EntryType as T;
    match header.entry_type() {
        T::Regular | T::Continuous => {}
        T::Directory | T::XGlobalHeader => return Ok(Member::Other),
        T::Symlink => {
            bail!("member '{shown}' is a symbolic link; a layout holds only files and folders")
        }
        T::Link => bail!("member '{shown}' is a hard link; a layout holds only files and folders"),
        other => bail!("member '{shown}' is a {other:?} entry, not a file"),
    }
    Ok(match parts.as_slice() {
        ["oci-layout"] => Member::Layout,
        ["index.json"] => Member::Index,
        ["blobs", algorithm, hex] => {
            Member::Blob(Digest::parse(&format!("{algorithm}:{hex}")).map_err(|e| {
                anyhow!("member '{shown}' is not blobs/<algorithm>/<hex> of a valid digest: {e}")
            })?)
        }
        ["blobs", ..] => {
            bail!("member '{shown}' is not blobs/<algorithm>/<hex> of a valid digest")
        }
        // Others (docker save's manifest.json, repositories) are not part of the layout.
        _ => Member::Other,
    })
}

/// A small JSON document of the bundle, refused unread when over the manifest limit.
pub fn read_document(reader: &mut dyn Read, size: u64, what: &str) -> Result<Vec<u8>> {
    if size > MAX_MANIFEST_BYTES {
        bail!(
            "{what} is {size} bytes, more than the {} MiB limit for a manifest; refusing it",
            MAX_MANIFEST_BYTES >> 20
        );
    }
    let mut bytes = Vec::with_capacity(size as usize);
    reader
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {what}"))?;
    if bytes.len() as u64 != size {
        bail!("{what} is cut short: {} of {size} bytes", bytes.len());
    }
    Ok(bytes)
}

/// Skips forward inside the read buffer instead of dropping it, so passing over many
/// small members does not re-read a buffer each time.
pub struct Skipping(pub BufReader<Concat>);

impl Read for Skipping {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for Skipping {
    fn seek(&mut self, position: SeekFrom) -> std::io::Result<u64> {
        match position {
            SeekFrom::Current(offset) => {
                self.0.seek_relative(offset)?;
                self.0.stream_position()
            }
            other => self.0.seek(other),
        }
    }
}

/// Members read after the first pass: by offset in a tar, or by path in a folder.
pub enum Members {
    Tar {
        file: BufReader<Concat>,
        /// Data offset and size of each blob member.
        toc: HashMap<Digest, (u64, u64)>,
    },
    Folder(PathBuf),
}

impl Members {
    /// Where the blob is, to read blobs in file order; None when it is not there.
    pub fn position(&self, digest: &Digest) -> Option<u64> {
        match self {
            Members::Tar { toc, .. } => toc.get(digest).map(|(offset, _)| *offset),
            Members::Folder(root) => root.join(blob_path(digest)).exists().then_some(0),
        }
    }

    pub fn open(&mut self, digest: &Digest) -> Result<Option<(Box<dyn Read + '_>, u64)>> {
        match self {
            Members::Tar { file, toc } => {
                let Some(&(offset, size)) = toc.get(digest) else {
                    return Ok(None);
                };
                file.seek(SeekFrom::Start(offset))?;
                Ok(Some((Box::new(file.take(size)), size)))
            }
            Members::Folder(root) => {
                Ok(folder_file(root, &blob_path(digest))?.map(|(file, size)| {
                    (
                        Box::new(BufReader::with_capacity(1 << 20, file)) as Box<dyn Read>,
                        size,
                    )
                }))
            }
        }
    }
}

/// Members of a tar noted for a second read; far beyond any real bundle.
pub const MAX_MEMBERS: usize = 200_000;

/// The members of a located bundle (a tar by offset, or a folder) and index.json's
/// bytes, from one pass that seeks past blob bodies.
pub fn scan(located: &Located) -> Result<(Members, Vec<u8>)> {
    let no_index = || anyhow!("no index.json, so nothing says which images it holds");
    let files = match located {
        Located::Folder(path) => {
            let (mut file, size) = folder_file(path, "index.json")?.ok_or_else(no_index)?;
            let index = read_document(&mut file, size, "index.json")?;
            return Ok((Members::Folder(path.to_path_buf()), index));
        }
        Located::Tar { files, .. } => files,
    };
    let reader = BufReader::with_capacity(1 << 20, Concat::new(files));
    let mut archive = tar::Archive::new(Skipping(reader));
    let mut toc = HashMap::new();
    let mut index = None;
    for entry in archive.entries_with_seek().context("not a tar archive")? {
        let mut entry = entry.context("not a tar archive, or one cut short or damaged")?;
        let size = entry.size();
        match classify(entry.header(), &entry.path_bytes())? {
            Member::Index => index = Some(read_document(&mut entry, size, "index.json")?),
            Member::Blob(digest) => {
                if toc.len() >= MAX_MEMBERS {
                    bail!("more than {MAX_MEMBERS} blobs; refusing it");
                }
                if toc
                    .insert(digest.clone(), (entry.raw_file_position(), size))
                    .is_some()
                {
                    bail!("blob {digest} appears twice");
                }
            }
            Member::Layout | Member::Other => {}
        }
    }
    let index = index.ok_or_else(no_index)?;
    let file = archive.into_inner().0;
    Ok((Members::Tar { file, toc }, index))
}

/// A member by digest, whole, checked against its digest; None when it is not there.
pub fn read_checked(members: &mut Members, digest: &Digest, limit: u64) -> Result<Option<Vec<u8>>> {
    let Some((mut reader, size)) = members.open(digest)? else {
        return Ok(None);
    };
    if size > limit {
        bail!("{digest} is {size} bytes, more than a manifest or signature may be");
    }
    let bytes = read_document(&mut reader, size, &format!("blob {digest}"))?;
    if !digest.matches(&bytes) {
        bail!(super::Error::DigestMismatch {
            what: format!("blob {digest} in the bundle")
        });
    }
    Ok(Some(bytes))
}

/// A file of a layout folder, refusing symbolic links on the way.
pub fn folder_file(root: &Path, relative: &str) -> Result<Option<(File, u64)>> {
    let mut path = root.to_path_buf();
    for part in relative.split('/') {
        path.push(part);
        let metadata = match std::fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if metadata.file_type().is_symlink() {
            bail!("{relative} is a symbolic link; a layout holds only files and folders");
        }
    }
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        bail!("{relative} is not a file");
    }
    Ok(Some((file, metadata.len())))
}

// ---- Writing: one tar, streamed.

enum Piece {
    Small(String, Bytes),
    Stream(
        String,
        u64,
        tokio::sync::mpsc::Receiver<super::error::Result<Bytes>>,
    ),
}

/// A layout written as one tar on a blocking thread: `oci-layout` and `index.json`
/// first, then what the caller sends. Blob bodies reach it through bounded channels, so
/// memory stays at a few chunks whatever the layer size.
pub struct TarWriter<W> {
    pieces: tokio::sync::mpsc::Sender<Piece>,
    writer: tokio::task::JoinHandle<Result<W>>,
}

impl<W: Write + Send + 'static> TarWriter<W> {
    pub async fn start(file: W, index: Bytes) -> Result<TarWriter<W>> {
        let (pieces, receiver) = tokio::sync::mpsc::channel::<Piece>(1);
        let writer = tokio::task::spawn_blocking(move || write_tar(file, receiver));
        let tar = TarWriter { pieces, writer };
        tar.send(Piece::Small(
            "oci-layout".into(),
            Bytes::from_static(LAYOUT_FILE),
        ))
        .await?;
        tar.send(Piece::Small("index.json".into(), index)).await?;
        Ok(tar)
    }

    pub async fn manifest(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        self.send(Piece::Small(blob_path(digest), bytes)).await
    }

    /// A blob member of `size` bytes: its chunks go to the returned sender; an error
    /// sent there stops the writer.
    pub async fn blob(
        &self,
        digest: &Digest,
        size: u64,
    ) -> Result<tokio::sync::mpsc::Sender<super::error::Result<Bytes>>> {
        let (sender, chunks) = tokio::sync::mpsc::channel(4);
        self.send(Piece::Stream(blob_path(digest), size, chunks))
            .await?;
        Ok(sender)
    }

    /// Waits for the writer; `fed` is how feeding it went, reported first. Returns
    /// the sink, flushed, for the caller to commit.
    pub async fn finish(self, fed: Result<()>) -> Result<W> {
        drop(self.pieces);
        let written = self.writer.await?;
        fed?;
        written
    }

    async fn send(&self, piece: Piece) -> Result<()> {
        self.pieces
            .send(piece)
            .await
            .map_err(|_| anyhow!("the archive writer stopped"))
    }
}

fn write_tar<W: Write>(file: W, mut receiver: tokio::sync::mpsc::Receiver<Piece>) -> Result<W> {
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
        .map_err(|e| anyhow!("flushing the archive: {}", e.error()))
}

struct ChannelReader {
    chunks: tokio::sync::mpsc::Receiver<super::error::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

// ---- Pushing a layout folder (BuildKit's `type=oci,tar=false` output).

/// Pushes the first image of the layout folder `dir` to `repository`, by digest:
/// children before parents, every manifest checked against its digest, every blob
/// through the verifying upload. Returns the top manifest's exact bytes.
pub async fn push(client: &Client, repository: &Repository, dir: &Path) -> Result<Bytes> {
    let (mut file, size) = folder_file(dir, "index.json")?
        .ok_or_else(|| anyhow!("{}: no index.json; not an OCI layout", dir.display()))?;
    let index = read_document(&mut file, size, "index.json")
        .with_context(|| format!("the OCI layout {}", dir.display()))?;
    let index: oci_spec::image::ImageIndex = serde_json::from_slice(&index).map_err(|e| {
        anyhow!(
            "{}/index.json is not an OCI image index: {e}",
            dir.display()
        )
    })?;
    let Some(top) = index.manifests().first() else {
        bail!("{}/index.json lists no image", dir.display());
    };
    let top = descriptor_digest(top)?;
    // Depth first, a loop rather than recursion; each manifest is pushed after all
    // below it.
    let mut stack = vec![(top.clone(), false)];
    let mut read: HashMap<Digest, (Bytes, Document)> = HashMap::new();
    while let Some((digest, expanded)) = stack.pop() {
        if !expanded {
            if read.contains_key(&digest) {
                continue;
            }
            let bytes = read_manifest(dir, &digest)?;
            let document = Document::parse(&bytes, &format!("manifest {digest}"))?;
            stack.push((digest.clone(), true));
            for child in document.children() {
                stack.push((descriptor_digest(child)?, false));
            }
            read.insert(digest, (bytes, document));
            continue;
        }
        let (bytes, document) = &read[&digest];
        for blob in document.blobs() {
            push_blob(client, repository, dir, &descriptor_digest(blob)?).await?;
        }
        client
            .put_manifest(
                repository,
                &Reference::Digest(digest.clone()),
                bytes,
                &document.media_type(bytes),
            )
            .await?;
    }
    Ok(read.remove(&top).expect("read above").0)
}

fn read_manifest(dir: &Path, digest: &Digest) -> Result<Bytes> {
    let path = blob_path(digest);
    let (mut file, size) = folder_file(dir, &path)?
        .ok_or_else(|| anyhow!("{}: manifest {digest} is missing", dir.display()))?;
    let bytes = read_document(&mut file, size, &format!("manifest {digest}"))?;
    if !digest.matches(&bytes) {
        bail!("{}/{path} does not hash to its name", dir.display());
    }
    Ok(Bytes::from(bytes))
}

async fn push_blob(
    client: &Client,
    repository: &Repository,
    dir: &Path,
    digest: &Digest,
) -> Result<()> {
    if client.has_blob(repository, digest).await? {
        return Ok(());
    }
    let path = blob_path(digest);
    let (file, size) = folder_file(dir, &path)?
        .ok_or_else(|| anyhow!("{}: blob {digest} is missing", dir.display()))?;
    let what = format!("{}/{path}", dir.display());
    upload_verified(
        client,
        repository,
        digest,
        size,
        Box::pin(file_chunks(file)),
        what,
    )
    .await?;
    Ok(())
}

/// A file as a stream of 1 MiB chunks: never held whole.
fn file_chunks(
    mut file: File,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
    let mut done = false;
    futures_util::stream::iter(std::iter::from_fn(move || {
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
    }))
}
