//! A bundle file on disk, whole or split: `OUT.part-001`, `OUT.part-002`… whose bytes
//! concatenated are the tar, and a sidecar `OUT.parts.json` listing every part's name,
//! size and sha256 in order. Writing goes to `.partial` names, renamed at the end;
//! reading checks every part against the sidecar before a byte of the tar is used.

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The smallest `--max-part-size`: below it a bundle becomes thousands of files.
pub const MIN_PART_SIZE: u64 = 1 << 20;
/// A sidecar is a few hundred bytes a part; anything bigger is not ours.
const MAX_SIDECAR_BYTES: u64 = 16 << 20;

#[derive(serde::Serialize, serde::Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    parts: Vec<Part>,
}

pub fn sidecar_path(out: &Path) -> PathBuf {
    with_suffix(out, ".parts.json")
}

fn part_path(out: &Path, number: usize) -> PathBuf {
    with_suffix(out, &format!(".part-{number:03}"))
}

pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `1048576`, `1MiB`, `500M`, `2GiB`, `3GB`: K/M/G/T and KiB… are powers of 1024 (as
/// `split -b` reads them), KB/MB… powers of 1000.
pub fn parse_size(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => bail!(
            "'{text}' is not a size; write bytes or a number with K, M, G, KiB, MiB, GiB, MB or GB"
        ),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| anyhow!("'{text}' is not a size; write bytes or a number with K, M, G, KiB, MiB, GiB, MB or GB"))
}

// ---- Writing.

/// Where `save` writes: one `OUT.partial`, or parts of at most `limit` bytes, each
/// hashed as it is written.
pub struct BundleWriter {
    out: PathBuf,
    limit: Option<u64>,
    file: File,
    written: u64,
    hasher: Sha256,
    parts: Vec<Part>,
}

/// What `commit` put on disk: the files a reader is given, with their sizes.
pub struct Committed {
    pub files: Vec<(PathBuf, u64)>,
    /// The sidecar, for a split bundle.
    pub sidecar: Option<PathBuf>,
}

impl BundleWriter {
    /// Creates the first file now, so an unwritable OUT is named before any work.
    pub fn create(out: &Path, limit: Option<u64>) -> Result<BundleWriter> {
        let first = match limit {
            Some(_) => part_path(out, 1),
            None => out.to_path_buf(),
        };
        let file = File::create(partial(&first))
            .with_context(|| format!("cannot write the archive to {}", first.display()))?;
        Ok(BundleWriter {
            out: out.to_path_buf(),
            limit,
            file,
            written: 0,
            hasher: Sha256::new(),
            parts: Vec::new(),
        })
    }

    /// Closes the current part and records it.
    fn close_part(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        let hasher = std::mem::replace(&mut self.hasher, Sha256::new());
        self.parts.push(Part {
            name: file_name(&part_path(&self.out, self.parts.len() + 1)),
            size: std::mem::take(&mut self.written),
            sha256: hex::encode(hasher.finalize()),
        });
        Ok(())
    }

    /// Renames everything to its final name; a split bundle's sidecar goes last, as
    /// the sign that every part is there.
    pub fn commit(mut self) -> Result<Committed> {
        if self.limit.is_none() {
            self.file.sync_all()?;
            rename(&partial(&self.out), &self.out)?;
            remove_stale(&self.out, None)?;
            let size = std::fs::metadata(&self.out)?.len();
            return Ok(Committed {
                files: vec![(self.out.clone(), size)],
                sidecar: None,
            });
        }
        self.close_part()?;
        let sidecar = sidecar_path(&self.out);
        let json = serde_json::to_vec_pretty(&Sidecar {
            parts: self.parts.clone(),
        })?;
        let mut file = File::create(partial(&sidecar))
            .with_context(|| format!("writing {}", sidecar.display()))?;
        file.write_all(&json)
            .and_then(|_| file.sync_all())
            .with_context(|| format!("writing {}", sidecar.display()))?;
        let mut files = Vec::new();
        for (number, part) in self.parts.iter().enumerate() {
            let path = part_path(&self.out, number + 1);
            rename(&partial(&path), &path)?;
            files.push((path, part.size));
        }
        rename(&partial(&sidecar), &sidecar)?;
        remove_stale(&self.out, Some(self.parts.len()))?;
        Ok(Committed {
            files,
            sidecar: Some(sidecar),
        })
    }
}

/// An earlier save to the same OUT in the other form (whole or split), or with more
/// parts: what it left would otherwise be loaded, or diffed --since, in place of this one.
fn remove_stale(out: &Path, parts: Option<usize>) -> Result<()> {
    let mut stale = Vec::new();
    match parts {
        None => stale.push(sidecar_path(out)),
        Some(_) if out.is_file() => stale.push(out.to_path_buf()),
        Some(_) => {}
    }
    let first_stale_part = parts.unwrap_or(0) + 1;
    stale.extend(
        (first_stale_part..)
            .map(|number| part_path(out, number))
            .take_while(|path| path.is_file()),
    );
    for path in stale.iter().filter(|path| path.is_file()) {
        std::fs::remove_file(path)
            .with_context(|| format!("removing {}, left by an earlier save", path.display()))?;
    }
    Ok(())
}

impl Write for BundleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(limit) = self.limit {
            if self.written == limit {
                self.close_part()?;
                let next = part_path(&self.out, self.parts.len() + 1);
                self.file = File::create(partial(&next))?;
            }
        }
        let room = self.limit.map_or(buf.len() as u64, |l| l - self.written);
        let n = self.file.write(&buf[..buf.len().min(room as usize)])?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn partial(path: &Path) -> PathBuf {
    with_suffix(path, ".partial")
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).with_context(|| format!("moving the archive to {}", to.display()))
}

/// Removes what a failed save of OUT left: its partial file, parts and sidecar.
pub fn remove_partials(out: &Path) {
    let _ = std::fs::remove_file(partial(out));
    let _ = std::fs::remove_file(partial(&sidecar_path(out)));
    for number in 1.. {
        if std::fs::remove_file(partial(&part_path(out, number))).is_err() {
            break;
        }
    }
}

// ---- Reading.

/// A bundle found on disk.
pub enum Located {
    Folder(PathBuf),
    /// A tar, in one file or in parts, checked; `pin` is what identifies it: the
    /// file itself, or the sidecar of a split bundle.
    Tar {
        files: Vec<(PathBuf, u64)>,
        pin: PathBuf,
    },
}

/// Finds the bundle `path` names: a folder, a whole tar, or a split one by its
/// sidecar, its first part or the name it was saved as. A split bundle's parts are
/// all checked here (present, in order, size and sha256) before anything reads them.
pub fn locate(path: &Path) -> Result<Located> {
    if path.is_dir() {
        return Ok(Located::Folder(path.to_path_buf()));
    }
    let name = file_name(path);
    let base = if let Some(base) = name.strip_suffix(".parts.json") {
        Some(path.with_file_name(base))
    } else if let Some((base, _)) = name
        .rsplit_once(".part-")
        .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    {
        Some(path.with_file_name(base))
    } else if sidecar_path(path).exists() {
        if path.exists() {
            bail!(
                "{} and {} both exist, a whole bundle and a split one of the same name: name the part or sidecar to load, or remove the stale one",
                path.display(),
                sidecar_path(path).display()
            );
        }
        Some(path.to_path_buf())
    } else {
        None
    };
    let Some(base) = base else {
        let size = std::fs::metadata(path)
            .map_err(|e| anyhow!("{}: cannot open it: {e}", path.display()))?
            .len();
        return Ok(Located::Tar {
            files: vec![(path.to_path_buf(), size)],
            pin: path.to_path_buf(),
        });
    };
    let sidecar = sidecar_path(&base);
    let files = checked_parts(&base, &sidecar)?;
    Ok(Located::Tar {
        files,
        pin: sidecar,
    })
}

fn read_sidecar(sidecar: &Path) -> Result<Sidecar> {
    let shown = sidecar.display();
    let file = File::open(sidecar).map_err(|e| {
        anyhow!("{shown}: cannot open it ({e}); a split bundle needs its sidecar beside the parts")
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_SIDECAR_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SIDECAR_BYTES {
        bail!(
            "{shown} is over {} MiB; not a parts list",
            MAX_SIDECAR_BYTES >> 20
        );
    }
    let sidecar: Sidecar =
        serde_json::from_slice(&bytes).map_err(|e| anyhow!("{shown} is not a parts list: {e}"))?;
    if sidecar.parts.is_empty() {
        bail!("{shown} lists no parts");
    }
    Ok(sidecar)
}

/// Every part the sidecar lists, in order, as it says: refused in one line naming the
/// first part that is missing, out of place, or altered.
fn checked_parts(base: &Path, sidecar_file: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let sidecar = read_sidecar(sidecar_file)?;
    let shown = sidecar_file.display();
    let mut paths = Vec::new();
    for (index, part) in sidecar.parts.iter().enumerate() {
        // Names come from a file we did not write: only ours, beside the sidecar.
        let path = part_path(base, index + 1);
        if part.name != file_name(&path) {
            bail!(
                "{shown} names part {} '{}', expected '{}'; the parts list is not ours or was edited",
                index + 1,
                crate::text::printable(&part.name),
                file_name(&path)
            );
        }
        if !path.is_file() {
            bail!(
                "part {} is missing ({} of {} parts): copy every part beside {shown}",
                path.display(),
                index + 1,
                sidecar.parts.len()
            );
        }
        paths.push(path);
    }
    let actual = paths
        .iter()
        .map(|p| file_sha256(p).map(|sha| (sha, std::fs::metadata(p).map_or(0, |m| m.len()))))
        .collect::<Result<Vec<_>>>()?;
    for (index, ((sha256, size), part)) in actual.iter().zip(&sidecar.parts).enumerate() {
        if *sha256 == part.sha256 && *size == part.size {
            continue;
        }
        let path = paths[index].display();
        if let Some(other) = sidecar.parts.iter().position(|p| p.sha256 == *sha256) {
            bail!("part {path} holds what {shown} lists as part {}: the parts are out of order; name them as the parts list does", other + 1);
        }
        if *size != part.size {
            bail!("part {path} is {size} bytes, {shown} says {}: it was cut short or altered; copy it again", part.size);
        }
        bail!("part {path} does not match the sha256 {shown} gives for it: it was altered; copy it again");
    }
    Ok(paths
        .into_iter()
        .zip(sidecar.parts.iter().map(|p| p.size))
        .collect())
}

/// sha256 of a file's bytes, streamed.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
    }
}

/// The files of a tar bundle read as one: seekable, opening one part at a time.
pub struct Concat {
    files: Vec<(PathBuf, u64)>,
    /// Where each file starts in the whole.
    starts: Vec<u64>,
    total: u64,
    position: u64,
    /// The open file, its index, and where in it the next read lands.
    open: Option<(usize, File, u64)>,
}

impl Concat {
    pub fn new(files: &[(PathBuf, u64)]) -> Concat {
        let mut starts = Vec::with_capacity(files.len());
        let mut total = 0;
        for (_, size) in files {
            starts.push(total);
            total += size;
        }
        Concat {
            files: files.to_vec(),
            starts,
            total,
            position: 0,
            open: None,
        }
    }
}

impl Read for Concat {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.position >= self.total || buf.is_empty() {
            return Ok(0);
        }
        let index = self.starts.partition_point(|s| *s <= self.position) - 1;
        let offset = self.position - self.starts[index];
        match &mut self.open {
            Some((i, _, at)) if *i == index && *at == offset => {}
            // A seek within the open part: no need to open it again.
            Some((i, file, at)) if *i == index => {
                file.seek(SeekFrom::Start(offset))?;
                *at = offset;
            }
            _ => {
                let mut file = File::open(&self.files[index].0)?;
                file.seek(SeekFrom::Start(offset))?;
                self.open = Some((index, file, offset));
            }
        }
        let Some((_, file, at)) = &mut self.open else {
            unreachable!("opened above")
        };
        let room = (self.files[index].1 - offset).min(buf.len() as u64) as usize;
        let n = file.read(&mut buf[..room])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{} is shorter than when it was checked",
                    self.files[index].0.display()
                ),
            ));
        }
        *at += n as u64;
        self.position += n as u64;
        Ok(n)
    }
}

impl Seek for Concat {
    fn seek(&mut self, position: SeekFrom) -> std::io::Result<u64> {
        let target = match position {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.total.checked_add_signed(d),
            SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        self.position = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_split_does() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("3GB").unwrap(), 3_000_000_000);
        for bad in ["", "MiB", "1.5G", "-1", "1 parsec", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parts_concatenate_to_what_was_written_and_read_back_checked() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("b.tar");
        let data: Vec<u8> = (0..(5u32 << 18)).map(|i| (i % 251) as u8).collect();
        let mut writer = BundleWriter::create(&out, Some(MIN_PART_SIZE)).unwrap();
        writer.write_all(&data).unwrap();
        let committed = writer.commit().unwrap();
        assert_eq!(committed.files.len(), 2);
        let Located::Tar { files, pin } = locate(&part_path(&out, 1)).unwrap() else {
            panic!("a tar")
        };
        assert_eq!(pin, sidecar_path(&out));
        let mut whole = Concat::new(&files);
        whole.seek(SeekFrom::Start(10)).unwrap();
        let mut back = Vec::new();
        whole.read_to_end(&mut back).unwrap();
        assert_eq!(back, data[10..]);
        // Back into the first part, then forward within it.
        let mut four = [0u8; 4];
        for at in [5u64, 100_000, 6] {
            whole.seek(SeekFrom::Start(at)).unwrap();
            whole.read_exact(&mut four).unwrap();
            assert_eq!(four, data[at as usize..at as usize + 4]);
        }
    }

    #[test]
    fn a_save_replaces_the_other_form_of_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("b.tar");
        let save = |limit: Option<u64>, size: usize| {
            let mut writer = BundleWriter::create(&out, limit).unwrap();
            writer.write_all(&vec![1u8; size]).unwrap();
            writer.commit().unwrap()
        };
        save(None, 10);
        let split = save(Some(MIN_PART_SIZE), 3 << 20);
        assert!(!out.exists(), "the whole bundle of an earlier save is left");
        assert_eq!(split.files.len(), 3);
        save(Some(MIN_PART_SIZE), 1 << 20);
        assert!(
            !part_path(&out, 2).exists(),
            "a part of the larger save is left"
        );
        save(None, 10);
        assert!(!sidecar_path(&out).exists() && !part_path(&out, 1).exists());
        // Both there (an older tool, a copy): the base name is ambiguous, and refused.
        std::fs::write(sidecar_path(&out), b"{}").unwrap();
        assert!(refusal(&out).contains("both exist"));
    }

    fn refusal(path: &Path) -> String {
        match locate(path) {
            Ok(_) => panic!("accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_sidecar_names_only_our_parts_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("b.tar");
        let mut writer = BundleWriter::create(&out, Some(MIN_PART_SIZE)).unwrap();
        writer.write_all(&vec![7u8; 3 << 20]).unwrap();
        writer.commit().unwrap();
        let sidecar = sidecar_path(&out);
        let listed = std::fs::read_to_string(&sidecar).unwrap();
        std::fs::write(
            &sidecar,
            listed.replace("b.tar.part-002", "../b.tar.part-002"),
        )
        .unwrap();
        let why = refusal(&sidecar);
        assert!(why.contains("names part 2 '../b.tar.part-002'"), "{why}");
        std::fs::write(&sidecar, listed).unwrap();
        // Equal parts: a swap is indistinguishable and harmless; a cut one is named.
        let third = part_path(&out, 3);
        std::fs::write(&third, vec![7u8; 1000]).unwrap();
        let why = refusal(&out);
        assert!(why.contains("b.tar.part-003 is 1000 bytes"), "{why}");
    }
}
