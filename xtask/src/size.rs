//! `images size`: what each image weighs per platform, against its budget.
//!
//! Compressed is the config plus every layer as stored, which is what a registry keeps
//! and a node pulls. Uncompressed is every layer's tar stream after decompression, which
//! is what a node unpacks; measuring it costs a download of every layer, streamed
//! through a decoder that only counts, so memory stays at a few buffers.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::catalog::{Catalog, Limits};
use crate::cli::SizeArgs;
use crate::naming::ImageRef;
use crate::oci::blobs::Verifier;
use crate::oci::digest::Digest;
use crate::oci::image::{platform_images, ContentSource, PlatformImage, RegistrySource};
use crate::oci::registry::{Client, MAX_MANIFEST_BYTES};
use crate::oci::{Registries, Repository};
use crate::report::{mib, table};
use crate::text::printable;

/// One image to measure.
#[derive(Debug, Clone)]
pub struct Target {
    /// The catalog name, or the reference for `--ref`.
    pub name: String,
    pub reference: ImageRef,
    pub budget: Option<crate::catalog::SizeBudget>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Registry,
    /// The local Docker engine's image store, read through `docker save`.
    Engine,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub images: Vec<ImageReport>,
    pub over_budget: usize,
}

#[derive(Debug, Serialize)]
pub struct ImageReport {
    pub image: String,
    pub reference: String,
    pub digest: Digest,
    pub source: &'static str,
    pub platforms: Vec<PlatformReport>,
}

#[derive(Debug, Serialize)]
pub struct PlatformReport {
    pub platform: String,
    pub manifest: Digest,
    pub compressed_bytes: u64,
    /// None with `--compressed-only`.
    pub uncompressed_bytes: Option<u64>,
    pub budget: Option<Limits>,
    /// Budget minus size, in bytes; negative when over.
    pub headroom_compressed_bytes: Option<i64>,
    pub headroom_uncompressed_bytes: Option<i64>,
    pub verdict: Verdict,
    pub largest_layers: Vec<LayerReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Ok,
    Over,
    NoBudget,
}

#[derive(Debug, Serialize)]
pub struct LayerReport {
    pub digest: Digest,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: Option<u64>,
    pub created_by: Option<String>,
}

impl SizeArgs {
    pub fn run(self, ctx: &crate::context::Ctx) -> Result<()> {
        let root = ctx.root.as_path();
        let source = if self.local {
            Source::Engine
        } else {
            Source::Registry
        };
        let check = Check {
            targets: targets(root, &self)?,
            source,
            options: Options {
                uncompressed: !self.compressed_only,
                layers: self.layers,
            },
        };
        let report = check.run(ctx)?;
        report.print(&mut std::io::stdout(), self.json, self.layers)?;
        report.verdict()
    }
}

/// What to measure and how. `images size` builds it from its flags, `build --check`
/// from the images it built; both then print the report and take its verdict.
pub struct Check {
    pub targets: Vec<Target>,
    pub source: Source,
    pub options: Options,
}

impl Check {
    /// The catalog images named (all when none), as published under `publish`.
    pub fn for_catalog(
        catalog: &Catalog,
        names: &[String],
        publish: &crate::naming::Publish,
        source: Source,
        options: Options,
    ) -> Result<Check> {
        Ok(Check {
            targets: catalog_targets(catalog, names, publish)?,
            source,
            options,
        })
    }

    pub fn run(&self, ctx: &crate::context::Ctx) -> Result<Report> {
        measure(ctx, &self.targets, self.source, &self.options)
    }
}

impl Report {
    /// The table (or JSON) to `out`, and the Markdown table to `$GITHUB_STEP_SUMMARY`.
    pub fn print(&self, out: &mut dyn Write, json: bool, layers: usize) -> Result<()> {
        if json {
            writeln!(out, "{}", serde_json::to_string_pretty(self)?)?;
        } else {
            write!(out, "{}", text(self, layers))?;
        }
        step_summary(self)
    }

    /// The exit status: an error when any image is over its budget.
    pub fn verdict(&self) -> Result<()> {
        if self.over_budget == 0 {
            return Ok(());
        }
        let over: Vec<String> = self
            .images
            .iter()
            .flat_map(|i| {
                i.platforms
                    .iter()
                    .filter(|p| p.verdict == Verdict::Over)
                    .map(move |p| format!("{} ({})", i.image, p.platform))
            })
            .collect();
        bail!(
            "over budget: {}; the largest layers above show where the bytes are, or raise \
             [size] in the image's image.toml with a measured reason",
            over.join(", ")
        );
    }
}

fn targets(root: &Path, args: &SizeArgs) -> Result<Vec<Target>> {
    if !args.refs.is_empty() {
        if !args.images.is_empty() {
            bail!("name catalog images or pass --ref, not both");
        }
        return args
            .refs
            .iter()
            .map(|r| {
                Ok(Target {
                    name: r.clone(),
                    reference: ImageRef::parse(r).map_err(|e| anyhow!("--ref: {e}"))?,
                    budget: None,
                })
            })
            .collect();
    }
    let catalog = Catalog::load(root)?;
    catalog_targets(&catalog, &args.images, &args.publish.publish())
}

fn catalog_targets(
    catalog: &Catalog,
    names: &[String],
    publish: &crate::naming::Publish,
) -> Result<Vec<Target>> {
    let published = catalog.published(names, publish)?;
    Ok(published
        .into_iter()
        .map(|(image, reference)| Target {
            name: image.name.clone(),
            reference,
            budget: image.spec.size.clone(),
        })
        .collect())
}

pub struct Options {
    /// Also measure uncompressed sizes, which costs a download of every layer.
    pub uncompressed: bool,
    pub layers: usize,
}

/// The flags' defaults.
impl Default for Options {
    fn default() -> Options {
        Options {
            uncompressed: true,
            layers: 3,
        }
    }
}

fn measure(
    ctx: &crate::context::Ctx,
    targets: &[Target],
    source: Source,
    options: &Options,
) -> Result<Report> {
    let registries = &ctx.registries;
    ctx.block_on(async {
        let sizes = LayerSizes::default();
        let mut images = Vec::new();
        for target in targets {
            eprintln!("==> measuring {} ({})", target.name, target.reference);
            let measured = match source {
                Source::Registry => {
                    measure_in_registry(registries, target, &sizes, options).await?
                }
                Source::Engine => measure_in_engine(target, &sizes, options).await?,
            };
            images.push(measured);
        }
        Ok(Report::of(images))
    })
}

impl Report {
    fn of(images: Vec<ImageReport>) -> Report {
        let over_budget = images
            .iter()
            .flat_map(|i| &i.platforms)
            .filter(|p| p.verdict == Verdict::Over)
            .count();
        Report {
            images,
            over_budget,
        }
    }
}

/// Uncompressed sizes by layer digest, so a layer shared by several images (a parent's)
/// is downloaded once per run.
#[derive(Default)]
struct LayerSizes(Mutex<HashMap<Digest, u64>>);

impl LayerSizes {
    fn get(&self, digest: &Digest) -> Option<u64> {
        self.0.lock().unwrap().get(digest).copied()
    }
    fn insert(&self, digest: Digest, size: u64) {
        self.0.lock().unwrap().insert(digest, size);
    }
}

async fn measure_in_registry(
    registries: &Registries,
    target: &Target,
    sizes: &LayerSizes,
    options: &Options,
) -> Result<ImageReport> {
    let reference = &target.reference;
    let registry = registries.get(&reference.registry).await?;
    let (root, _, digest) = registry
        .resolve(&reference.repository, &reference.pointer())
        .await?;
    let source = RegistrySource {
        registry: &registry,
        repository: &reference.repository,
    };
    let images = platform_images(&source, &root, &digest).await?;
    if options.uncompressed {
        let layers: Vec<_> = images
            .iter()
            .flat_map(|i| &i.layers)
            .filter(|l| sizes.get(&l.digest).is_none())
            .collect();
        futures_util::stream::iter(layers)
            .map(|layer| async {
                let size =
                    uncompressed_in_registry(&registry, &reference.repository, layer).await?;
                sizes.insert(layer.digest.clone(), size);
                anyhow::Ok(())
            })
            .buffer_unordered(4)
            .try_collect::<Vec<()>>()
            .await?;
    }
    Ok(image_report(
        target, digest, "registry", images, sizes, options,
    ))
}

async fn uncompressed_in_registry(
    registry: &Arc<Client>,
    repository: &Repository,
    layer: &crate::oci::image::Layer,
) -> Result<u64> {
    let what = format!("layer {} of {}/{repository}", layer.digest, registry.host);
    // The reader checks size and digest; the meter only counts.
    let body =
        crate::oci::blobs::read_blob(registry.clone(), repository, &layer.digest, layer.size);
    let mut meter = LayerMeter::counting();
    let mut body = Box::pin(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("reading {what}"))?;
        meter.update(&chunk).with_context(|| what.clone())?;
    }
    let measured = meter.finish().with_context(|| what.clone())?;
    measured
        .uncompressed
        .ok_or_else(|| anyhow!("{what}: {}", measured.unsupported()))
}

/// Counts a layer's bytes as they pass, compressed and decompressed; from a source
/// nothing else checks, it verifies them too.
pub struct LayerMeter {
    verifier: Option<Verifier>,
    compressed: u64,
    kind: Option<Compression>,
    head: Vec<u8>,
    gunzip: Option<flate2::write::MultiGzDecoder<Counter>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
    None,
}

pub struct Measured {
    pub compressed: u64,
    /// None where the compression is one this tool cannot decode (zstd).
    pub uncompressed: Option<u64>,
}

impl Measured {
    fn unsupported(&self) -> &'static str {
        "zstd-compressed layer: its uncompressed size cannot be measured here; pass --compressed-only"
    }
}

#[derive(Default)]
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LayerMeter {
    /// A meter that checks the bytes against `expected` and `size`.
    pub fn verifying(expected: &Digest, size: u64) -> LayerMeter {
        LayerMeter {
            verifier: Some(Verifier::new(expected, size, format!("blob {expected}"))),
            ..LayerMeter::counting()
        }
    }

    /// A meter for bytes already verified by their reader.
    pub fn counting() -> LayerMeter {
        LayerMeter {
            verifier: None,
            compressed: 0,
            kind: None,
            head: Vec::new(),
            gunzip: None,
        }
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<()> {
        if let Some(verifier) = &mut self.verifier {
            verifier.take(self.compressed, chunk)?;
        }
        self.compressed += chunk.len() as u64;
        if self.kind.is_none() {
            // Sniff the format from the first bytes rather than trust the media type.
            self.head.extend_from_slice(chunk);
            if self.head.len() < 4 {
                return Ok(());
            }
            let head = std::mem::take(&mut self.head);
            return self.start(&head);
        }
        self.decode(chunk)
    }

    fn start(&mut self, head: &[u8]) -> Result<()> {
        let kind = if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        };
        self.kind = Some(kind);
        if kind == Compression::Gzip {
            self.gunzip = Some(flate2::write::MultiGzDecoder::new(Counter::default()));
        }
        self.decode(head)
    }

    fn decode(&mut self, chunk: &[u8]) -> Result<()> {
        if let Some(gunzip) = &mut self.gunzip {
            gunzip
                .write_all(chunk)
                .map_err(|e| anyhow!("not a valid gzip stream: {e}"))?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Measured> {
        if self.kind.is_none() {
            let head = std::mem::take(&mut self.head);
            self.start(&head)?;
        }
        if let Some(verifier) = &self.verifier {
            verifier.finish()?;
        }
        let uncompressed = match self.kind {
            Some(Compression::Gzip) => {
                let counter = self
                    .gunzip
                    .take()
                    .expect("set with Gzip")
                    .finish()
                    .map_err(|e| anyhow!("not a valid gzip stream: {e}"))?;
                Some(counter.0)
            }
            Some(Compression::None) => Some(self.compressed),
            _ => None,
        };
        Ok(Measured {
            compressed: self.compressed,
            uncompressed,
        })
    }
}

/// The local engine's copy, through `docker save`: an OCI layout read in one pass,
/// measuring every blob as it streams and keeping only the small JSON documents.
async fn measure_in_engine(
    target: &Target,
    sizes: &LayerSizes,
    options: &Options,
) -> Result<ImageReport> {
    let reference = target.reference.to_string();
    let layout = tokio::task::spawn_blocking(move || read_docker_save(&reference)).await??;
    measure_layout(target, &layout, sizes, options).await
}

/// An image from the OCI layout `docker save` wrote, every blob already measured.
async fn measure_layout(
    target: &Target,
    layout: &SavedLayout,
    sizes: &LayerSizes,
    options: &Options,
) -> Result<ImageReport> {
    for (digest, measured) in &layout.measured {
        if let Some(uncompressed) = measured.uncompressed {
            sizes.insert(digest.clone(), uncompressed);
        }
    }
    let root = layout.root()?;
    let images = platform_images(layout, &root.0, &root.1).await?;
    for image in &images {
        for layer in &image.layers {
            let measured = layout
                .measured
                .get(&layer.digest)
                .ok_or_else(|| anyhow!("docker save left out layer {}", layer.digest))?;
            if measured.compressed != layer.size {
                bail!(
                    "layer {}: {} bytes in the engine, the manifest declares {}",
                    layer.digest,
                    measured.compressed,
                    layer.size
                );
            }
            if options.uncompressed && measured.uncompressed.is_none() {
                bail!("layer {}: {}", layer.digest, measured.unsupported());
            }
        }
    }
    Ok(image_report(
        target, root.1, "engine", images, sizes, options,
    ))
}

struct SavedLayout {
    index: Bytes,
    documents: HashMap<Digest, Bytes>,
    measured: HashMap<Digest, Measured>,
}

impl SavedLayout {
    /// The image `docker save` was asked for: the only entry of its index.json.
    fn root(&self) -> Result<(Bytes, Digest)> {
        let index: crate::oci::image::ImageIndex = serde_json::from_slice(&self.index)
            .map_err(|e| anyhow!("docker save wrote an unreadable index.json: {e}"))?;
        let first = index
            .manifests()
            .first()
            .ok_or_else(|| anyhow!("docker save wrote an index.json without manifests"))?;
        let digest = crate::oci::image::descriptor_digest(first)?;
        let bytes = self
            .documents
            .get(&digest)
            .cloned()
            .ok_or_else(|| anyhow!("docker save left out manifest {digest}"))?;
        Ok((bytes, digest))
    }

    fn document(&self, digest: &Digest) -> crate::oci::error::Result<Bytes> {
        self.documents.get(digest).cloned().ok_or_else(|| {
            crate::oci::Error::Invalid(format!(
                "{digest} is not in the engine's copy of the image; pull or build it with --load"
            ))
        })
    }
}

impl ContentSource for SavedLayout {
    async fn manifest(&self, digest: &Digest) -> crate::oci::error::Result<Bytes> {
        self.document(digest)
    }
    async fn config(&self, digest: &Digest) -> crate::oci::error::Result<Bytes> {
        self.document(digest)
    }
    fn partial(&self) -> bool {
        true
    }
}

fn read_docker_save(reference: &str) -> Result<SavedLayout> {
    let mut child = std::process::Command::new("docker")
        .args(["save", reference])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow!("cannot run docker ({e}); install Docker or measure a registry"))?;
    let stdout = child.stdout.take().expect("piped");
    let layout = read_layout_tar(stdout);
    let output = child.wait_with_output()?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "{reference} is not in the local image store ({}); build it with --load, or \
             measure the registry without --local",
            printable(stderr.trim())
        );
    }
    layout
}

fn read_layout_tar(input: impl Read) -> Result<SavedLayout> {
    let mut archive = tar::Archive::new(input);
    let mut layout = SavedLayout {
        index: Bytes::new(),
        documents: HashMap::new(),
        measured: HashMap::new(),
    };
    let mut buffer = vec![0u8; 256 * 1024];
    for entry in archive.entries().context("reading docker save output")? {
        let mut entry = entry.context("reading docker save output")?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./");
        if path == "index.json" {
            let mut text = Vec::new();
            (&mut entry)
                .take(MAX_MANIFEST_BYTES + 1)
                .read_to_end(&mut text)?;
            if text.len() as u64 > MAX_MANIFEST_BYTES {
                bail!("docker save wrote an index.json over {MAX_MANIFEST_BYTES} bytes");
            }
            layout.index = text.into();
            continue;
        }
        let Some(name) = path.strip_prefix("blobs/") else {
            continue;
        };
        let Some((algorithm, hex)) = name.split_once('/') else {
            continue;
        };
        if hex.is_empty() {
            continue;
        }
        let digest = Digest::parse(&format!("{algorithm}:{hex}"))?;
        let size = entry.header().size()?;
        let mut meter = LayerMeter::verifying(&digest, size);
        let mut small = (size <= MAX_MANIFEST_BYTES).then(Vec::new);
        loop {
            let read = entry.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            meter.update(&buffer[..read])?;
            if let Some(small) = &mut small {
                small.extend_from_slice(&buffer[..read]);
            }
        }
        let measured = meter.finish()?;
        if let Some(small) = small.filter(|s| s.first() == Some(&b'{')) {
            layout.documents.insert(digest.clone(), small.into());
        }
        layout.measured.insert(digest, measured);
    }
    if layout.index.is_empty() {
        bail!("docker save wrote no index.json; this needs Docker 25 or later");
    }
    Ok(layout)
}

fn image_report(
    target: &Target,
    digest: Digest,
    source: &'static str,
    images: Vec<PlatformImage>,
    sizes: &LayerSizes,
    options: &Options,
) -> ImageReport {
    let platforms = images
        .into_iter()
        .map(|image| {
            let compressed = image.compressed_size();
            let uncompressed = if options.uncompressed {
                image
                    .layers
                    .iter()
                    .map(|l| sizes.get(&l.digest))
                    .sum::<Option<u64>>()
            } else {
                None
            };
            let budget = target
                .budget
                .as_ref()
                .map(|b| b.for_platform(&image.platform));
            let headroom =
                |limit: Option<u64>, size: Option<u64>| Some((limit? << 20) as i64 - size? as i64);
            let headroom_compressed =
                headroom(budget.and_then(|b| b.max_compressed_mib), Some(compressed));
            let headroom_uncompressed =
                headroom(budget.and_then(|b| b.max_uncompressed_mib), uncompressed);
            let verdict = match (headroom_compressed, headroom_uncompressed) {
                (None, None) => Verdict::NoBudget,
                (c, u) if c.unwrap_or(0) < 0 || u.unwrap_or(0) < 0 => Verdict::Over,
                _ => Verdict::Ok,
            };
            let mut layers: Vec<LayerReport> = image
                .layers
                .iter()
                .map(|l| LayerReport {
                    digest: l.digest.clone(),
                    compressed_bytes: l.size,
                    uncompressed_bytes: sizes.get(&l.digest).filter(|_| options.uncompressed),
                    created_by: l.created_by.clone(),
                })
                .collect();
            layers.sort_by_key(|l| {
                std::cmp::Reverse(l.uncompressed_bytes.unwrap_or(l.compressed_bytes))
            });
            layers.truncate(options.layers);
            PlatformReport {
                platform: image.platform,
                manifest: image.manifest,
                compressed_bytes: compressed,
                uncompressed_bytes: uncompressed,
                budget,
                headroom_compressed_bytes: headroom_compressed,
                headroom_uncompressed_bytes: headroom_uncompressed,
                verdict,
                largest_layers: layers,
            }
        })
        .collect();
    ImageReport {
        image: target.name.clone(),
        reference: target.reference.to_string(),
        digest,
        source,
        platforms,
    }
}

/// Appends the Markdown table to `$GITHUB_STEP_SUMMARY`, when a workflow set it.
fn step_summary(report: &Report) -> Result<()> {
    if let Some(summary) = std::env::var_os("GITHUB_STEP_SUMMARY") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&summary)
            .with_context(|| format!("opening $GITHUB_STEP_SUMMARY ({summary:?})"))?;
        file.write_all(markdown(report).as_bytes())?;
    }
    Ok(())
}

const HEADER: [&str; 7] = [
    "IMAGE",
    "PLATFORM",
    "COMPRESSED",
    "UNCOMPRESSED",
    "BUDGET",
    "HEADROOM",
    "VERDICT",
];

fn rows(report: &Report) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for image in &report.images {
        for p in &image.platforms {
            rows.push(vec![
                image.image.clone(),
                p.platform.clone(),
                mib(p.compressed_bytes),
                p.uncompressed_bytes.map_or("-".into(), mib),
                budget_text(p.budget),
                headroom_text(p),
                match p.verdict {
                    Verdict::Ok => "ok".into(),
                    Verdict::Over => "OVER".into(),
                    Verdict::NoBudget => "no budget".into(),
                },
            ]);
        }
    }
    rows
}

fn budget_text(budget: Option<Limits>) -> String {
    let Some(b) = budget else { return "-".into() };
    let part = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} MiB"));
    format!(
        "{} / {}",
        part(b.max_compressed_mib),
        part(b.max_uncompressed_mib)
    )
}

/// The tighter of the two headrooms, signed: `-3.1 MiB` means over by that much.
fn headroom_text(p: &PlatformReport) -> String {
    let signed = |bytes: i64| {
        let text = mib(bytes.unsigned_abs());
        if bytes < 0 {
            format!("-{text}")
        } else {
            format!("+{text}")
        }
    };
    match (p.headroom_compressed_bytes, p.headroom_uncompressed_bytes) {
        (Some(c), Some(u)) => format!("{} / {}", signed(c), signed(u)),
        (Some(c), None) => format!("{} / -", signed(c)),
        (None, Some(u)) => format!("- / {}", signed(u)),
        (None, None) => "-".into(),
    }
}

fn text(report: &Report, layers: usize) -> String {
    let mut out = table(&HEADER, &rows(report));
    out.push_str("(compressed / uncompressed; sizes in MiB = 2^20 bytes)\n");
    if layers == 0 {
        return out;
    }
    for image in &report.images {
        for p in &image.platforms {
            out.push_str(&format!(
                "\nlargest layers of {} ({}):\n",
                image.image, p.platform
            ));
            let rows: Vec<Vec<String>> = p
                .largest_layers
                .iter()
                .map(|l| {
                    vec![
                        mib(l.compressed_bytes),
                        l.uncompressed_bytes.map_or("-".into(), mib),
                        l.digest.short().to_string(),
                        truncate(l.created_by.as_deref().unwrap_or("(no history)"), 100),
                    ]
                })
                .collect();
            out.push_str(&indent(&table(
                &["COMPRESSED", "UNCOMPRESSED", "LAYER", "CREATED BY"],
                &rows,
            )));
        }
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

pub fn markdown(report: &Report) -> String {
    let mut out = String::from("### Image sizes\n\n");
    out.push_str(&format!("| {} |\n", HEADER.join(" | ")));
    out.push_str(&format!("|{}\n", " --- |".repeat(HEADER.len())));
    for row in rows(report) {
        let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SizeBudget;
    use flate2::write::GzEncoder;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn meter_counts_both_sizes_and_checks_the_digest() {
        let data = vec![7u8; 300_000];
        let blob = gzip(&data);
        let digest = Digest::of_sha256(&blob);
        let mut meter = LayerMeter::verifying(&digest, blob.len() as u64);
        for chunk in blob.chunks(1000) {
            meter.update(chunk).unwrap();
        }
        let measured = meter.finish().unwrap();
        assert_eq!(measured.compressed, blob.len() as u64);
        assert_eq!(measured.uncompressed, Some(300_000));

        // An uncompressed tar layer weighs the same both ways.
        let plain = b"plain tar bytes".to_vec();
        let mut meter = LayerMeter::verifying(&Digest::of_sha256(&plain), plain.len() as u64);
        meter.update(&plain).unwrap();
        assert_eq!(
            meter.finish().unwrap().uncompressed,
            Some(plain.len() as u64)
        );

        // Other bytes under the same digest are refused, as a typed error, at the chunk
        // that completes them.
        let mut other = blob.clone();
        other[10] ^= 1;
        let mut meter = LayerMeter::verifying(&digest, blob.len() as u64);
        let err = meter.update(&other).unwrap_err();
        assert!(err
            .downcast_ref::<crate::oci::Error>()
            .is_some_and(|e| e.is_digest_mismatch()));
    }

    fn sample_report() -> Report {
        let digest =
            |c: char| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap();
        let platform = |name: &str, compressed: u64, uncompressed: u64| {
            let budget = Limits {
                max_compressed_mib: Some(64),
                max_uncompressed_mib: Some(176),
            };
            let headroom_c = (64i64 << 20) - compressed as i64;
            let headroom_u = (176i64 << 20) - uncompressed as i64;
            PlatformReport {
                platform: name.into(),
                manifest: digest('b'),
                compressed_bytes: compressed,
                uncompressed_bytes: Some(uncompressed),
                budget: Some(budget),
                headroom_compressed_bytes: Some(headroom_c),
                headroom_uncompressed_bytes: Some(headroom_u),
                verdict: if headroom_c < 0 || headroom_u < 0 {
                    Verdict::Over
                } else {
                    Verdict::Ok
                },
                largest_layers: vec![LayerReport {
                    digest: digest('c'),
                    compressed_bytes: compressed - 1000,
                    uncompressed_bytes: Some(uncompressed - 4000),
                    created_by: Some("COPY /out/opencode /opencode".into()),
                }],
            }
        };
        Report {
            images: vec![ImageReport {
                image: "opencode".into(),
                reference: "registry.example.com/kubeopencode/kubeopencode-agent-opencode:v1.2.3"
                    .into(),
                digest: digest('a'),
                source: "registry",
                platforms: vec![
                    platform("linux/amd64", 63 << 20, 175 << 20),
                    platform("linux/arm64", 70 << 20, 170 << 20),
                ],
            }],
            over_budget: 1,
        }
    }

    /// Blobs of an OCI layout, each added by its real bytes.
    #[derive(Default)]
    struct Blobs(Vec<(Digest, Vec<u8>)>);

    impl Blobs {
        fn add(&mut self, media_type: &str, bytes: Vec<u8>) -> serde_json::Value {
            let digest = Digest::of_sha256(&bytes);
            let descriptor = serde_json::json!({
                "mediaType": media_type,
                "digest": digest.as_str(),
                "size": bytes.len(),
            });
            self.0.push((digest, bytes));
            descriptor
        }

        /// One platform's image: its layers with the history steps that made them, and
        /// an empty-layer step between, as BuildKit writes for ENV.
        fn image(&mut self, arch: &str, layers: Vec<(Vec<u8>, &str)>) -> serde_json::Value {
            let mut history =
                vec![serde_json::json!({ "created_by": "ENV HOME=/tmp", "empty_layer": true })];
            let mut descriptors = Vec::new();
            for (bytes, step) in layers {
                let gzip = bytes.starts_with(&[0x1f, 0x8b]);
                let media_type = if gzip {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                } else {
                    "application/vnd.oci.image.layer.v1.tar"
                };
                descriptors.push(self.add(media_type, bytes));
                history.push(serde_json::json!({ "created_by": step }));
            }
            let config = serde_json::json!({
                "architecture": arch,
                "os": "linux",
                "rootfs": { "type": "layers", "diff_ids": [] },
                "history": history,
            });
            let config = self.add(
                "application/vnd.oci.image.config.v1+json",
                config.to_string().into_bytes(),
            );
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": crate::oci::media::OCI_MANIFEST,
                "config": config,
                "layers": descriptors,
            });
            let mut descriptor = self.add(
                crate::oci::media::OCI_MANIFEST,
                manifest.to_string().into_bytes(),
            );
            descriptor["platform"] = serde_json::json!({ "architecture": arch, "os": "linux" });
            descriptor
        }
    }

    /// What `docker save` writes for a two-platform image with an attestation: gzip and
    /// plain layers, one shared by both platforms.
    fn saved_layout() -> Vec<u8> {
        let mut blobs = Blobs::default();
        let shared = b"a plain tar layer ".repeat(1000);
        let amd64 = blobs.image(
            "amd64",
            vec![
                (
                    gzip(&vec![0u8; 3 << 20]),
                    "RUN |1 A=1 /bin/sh -c apt-get install -y curl # buildkit",
                ),
                (
                    gzip(&b"config files ".repeat(500)),
                    "COPY /etc/app /etc/app # buildkit",
                ),
                (shared.clone(), "COPY /out/opencode /opencode # buildkit"),
            ],
        );
        let arm64 = blobs.image(
            "arm64",
            vec![
                (
                    gzip(&vec![1u8; 5 << 20]),
                    "RUN /bin/sh -c apt-get install -y curl",
                ),
                (shared, "COPY /out/opencode /opencode # buildkit"),
            ],
        );
        let attestation = serde_json::json!({
            "mediaType": crate::oci::media::OCI_MANIFEST,
            "digest": Digest::of_sha256(b"not in the layout").as_str(),
            "size": 17,
            "platform": { "architecture": "unknown", "os": "unknown" },
            "annotations": { "vnd.docker.reference.type": "attestation-manifest" },
        });
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::media::OCI_INDEX,
            "manifests": [amd64, arm64, attestation],
        });
        let index = blobs.add(crate::oci::media::OCI_INDEX, index.to_string().into_bytes());
        let top = serde_json::json!({ "schemaVersion": 2, "manifests": [index] });
        let mut tar = tar::Builder::new(Vec::new());
        let mut append = |path: String, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, path, bytes).unwrap();
        };
        append("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
        append("index.json".into(), top.to_string().as_bytes());
        for (digest, bytes) in &blobs.0 {
            append(format!("blobs/sha256/{}", digest.hex()), bytes);
        }
        tar.into_inner().unwrap()
    }

    #[test]
    fn json_report_shape() {
        let layout = read_layout_tar(&saved_layout()[..]).unwrap();
        let budget = SizeBudget {
            max_compressed_mib: Some(1),
            max_uncompressed_mib: Some(4),
            platforms: [(
                "linux/amd64".to_string(),
                Limits {
                    max_compressed_mib: Some(2),
                    max_uncompressed_mib: None,
                },
            )]
            .into(),
        };
        let target = Target {
            name: "opencode".into(),
            reference: ImageRef::parse(
                "registry.example.com/kubeopencode/kubeopencode-agent-opencode:v1.2.3",
            )
            .unwrap(),
            budget: Some(budget),
        };
        let options = Options {
            layers: 2,
            ..Options::default()
        };
        let sizes = LayerSizes::default();
        let image = crate::context::for_tests()
            .block_on(measure_layout(&target, &layout, &sizes, &options))
            .unwrap();
        let report = Report::of(vec![image]);
        // arm64 unpacks to over the 4 MiB image-wide limit; amd64 has its own compressed one.
        assert_eq!(report.over_budget, 1);
        insta::assert_json_snapshot!(report);
    }

    #[test]
    fn table_shows_by_how_much_and_the_largest_layer() {
        let text = text(&sample_report(), 3);
        insta::assert_snapshot!(text);
        assert!(text.contains("-6.0 MiB / +6.0 MiB"), "{text}");
        let markdown = markdown(&sample_report());
        assert!(
            markdown.contains("| opencode | linux/arm64 | 70.0 MiB |"),
            "{markdown}"
        );
        assert!(sample_report()
            .verdict()
            .unwrap_err()
            .to_string()
            .contains("opencode (linux/arm64)"));
    }
}
