//! `images mirror`: copy every runtime image under a registry prefix, registry to
//! registry or through an OCI-layout archive, and emit what the cluster consumes.

pub mod archive;
mod bundle_verify;
pub mod config;
pub mod engine;
pub mod lists;
mod prune;
pub mod retag;
mod since;
pub mod tagset;
pub mod verify;

use anyhow::{bail, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::cli::{MirrorAction, MirrorArgs, MirrorCopyArgs, MirrorSelection};
use crate::context::Ctx;
use crate::oci::Registries;
use engine::{CopyJob, Engine, Outcome};
use lists::Entry;

impl MirrorArgs {
    pub fn run(self, ctx: &crate::context::Ctx) -> Result<()> {
        ctx.block_on(async {
            match &self.action {
                Some(MirrorAction::Save(save)) => archive::save(ctx, save).await,
                Some(MirrorAction::Load(load)) => archive::load(ctx, load).await,
                Some(MirrorAction::Prune(args)) => prune::run(ctx, args).await,
                None => copy(ctx, &self.copy).await,
            }
        })
    }
}

/// One planned copy, as printed by --dry-run and written to the mapping file.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub entry: Entry,
    pub source: String,
    pub destination: String,
}

pub fn plan(
    entries: Vec<Entry>,
    prefix: &str,
    keep_host: bool,
    platforms: &[String],
) -> Result<Vec<(Planned, CopyJob)>> {
    for platform in platforms {
        crate::catalog::validate_platform(platform)?;
    }
    entries
        .into_iter()
        .map(|entry| {
            let destination = lists::destination(&entry.source, prefix, keep_host)?;
            let platforms = if platforms.is_empty() {
                entry.platforms.clone()
            } else {
                Some(platforms.to_vec())
            };
            let job = CopyJob {
                source: entry.source.clone(),
                destination: destination.clone(),
                platforms,
                rule: entry.verify.clone(),
                signatures: Vec::new(),
            };
            let planned = Planned {
                source: entry.source.to_string(),
                destination: destination.to_string(),
                entry,
            };
            Ok((planned, job))
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct ImageResult {
    pub source: String,
    pub destination: String,
    #[serde(flatten)]
    pub outcome: Option<Outcome>,
    pub error: Option<String>,
    /// Who signed it, or why it was not checked; on refusal, why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
    /// The signature policy refused it: nothing was written for it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub images: Vec<ImageResult>,
    pub copied: usize,
    pub skipped: usize,
    /// Includes the refused.
    pub failed: usize,
    pub refused: usize,
    pub blobs_copied: u64,
    pub blobs_mounted: u64,
    pub blobs_present: u64,
    pub bytes: u64,
    pub requests: u64,
    pub retries: u64,
    /// Source bodies resumed with a Range GET after breaking off.
    pub resumed_reads: u64,
    /// Uploads continued from the offset the registry held.
    pub resumed_uploads: u64,
    /// Blobs started over (Range ignored, or the upload session lost).
    pub restarts: u64,
    pub seconds: f64,
    /// The destination answered on plain HTTP, which containerd must be told.
    #[serde(skip)]
    pub destination_plain_http: bool,
}

async fn copy(ctx: &Ctx, args: &MirrorCopyArgs) -> Result<()> {
    let Some(prefix) = &args.to else {
        bail!(
            "--to PREFIX is required: where the images go, e.g. --to registry.example.com/mirror"
        );
    };
    let entries = selected_entries(ctx, &args.select).await?;
    let mut planned = plan(entries, prefix, args.keep_host, &args.platform)?;
    // The command line's policy is for images whose list names none.
    let cli_rule = args
        .trust
        .spec()
        .build(Path::new(""), &crate::trust::FLAG_NAMES)?;
    for (_, job) in &mut planned {
        if job.rule.is_none() {
            job.rule = cli_rule.clone();
        }
    }
    // Checked before anything is copied.
    let mirror_ca = match &args.mirror_ca {
        Some(path) => Some(crate::text::read_ca_pem("--mirror-ca", path)?),
        None => None,
    };
    warn_about_subsets(&planned);
    if args.dry_run {
        return dry_run(ctx, &planned, args).await;
    }
    let summary = copy_all(&ctx.registries, &planned, args.jobs).await?;
    if let Some(dir) = &args.write_config {
        write_config(dir, args, &planned, &summary, mirror_ca)?;
    }
    report(&summary, args.json)?;
    if summary.refused > 0 {
        bail!(
            "{} of {} images failed, {} of them refused by the signature policy (nothing was written for those)",
            summary.failed,
            summary.images.len(),
            summary.refused
        );
    }
    if summary.failed > 0 {
        bail!(
            "{} of {} images failed; re-run to copy only what is missing",
            summary.failed,
            summary.images.len()
        );
    }
    Ok(())
}

/// The entries a run names, every tag set resolved: what the copy, `--dry-run`,
/// `--write-config` and `mirror save` all start from.
async fn selected_entries(ctx: &Ctx, select: &MirrorSelection) -> Result<Vec<Entry>> {
    tagset::load_resolved(
        &ctx.registries,
        &ctx.root,
        &select.lists,
        &select.images,
        select.tags_semver.as_deref(),
    )
    .await
}

/// The cluster configuration, only for a complete mirror: one without the failed images
/// would send the cluster to images the mirror does not have, so the last complete one stays.
fn write_config(
    dir: &Path,
    args: &MirrorCopyArgs,
    planned: &[(Planned, CopyJob)],
    summary: &Summary,
    mirror_ca: Option<String>,
) -> Result<()> {
    if summary.failed > 0 {
        eprintln!(
            "{} was left as it was: {} of {} images failed, and the cluster configuration is written only for a complete mirror",
            dir.display(),
            summary.failed,
            summary.images.len()
        );
        return Ok(());
    }
    let relaxed = planned.first().is_some_and(|(_, job)| {
        let host = &job.destination.registry;
        host.is_loopback() || args.registry.insecure.iter().any(|h| h == host.as_str())
    });
    let options = config::Options {
        access: config::MirrorAccess::new(summary.destination_plain_http, relaxed, mirror_ca),
        never_contact_source: args.never_contact_source,
    };
    let mirrored: Vec<(&Planned, &str)> = planned
        .iter()
        .zip(&summary.images)
        .filter_map(|((p, _), r)| r.outcome.as_ref().map(|o| (p, o.digest().as_str())))
        .collect();
    config::write(dir, &options, &mirrored)?;
    eprintln!("wrote cluster configuration to {}", dir.display());
    Ok(())
}

fn warn_about_subsets(planned: &[(Planned, CopyJob)]) {
    for (p, job) in planned {
        if let Some(platforms) = &job.platforms {
            eprintln!(
                "WARNING: {} is mirrored for {} only. The index is rewritten, so its digest at {} \
                 will differ from the source's and digest-pinned references to it will not resolve.",
                p.source,
                platforms.join(", "),
                p.destination
            );
        }
    }
}

/// Copies every planned image with `jobs` images (and 2×`jobs` blobs) in flight.
pub async fn copy_all(
    registries: &Arc<Registries>,
    planned: &[(Planned, CopyJob)],
    jobs: usize,
) -> Result<Summary> {
    let started = Instant::now();
    let bars = Bars::new(planned.len());
    let bytes_bar = bars.bytes.clone();
    let engine = Arc::new(Engine::new(
        registries.clone(),
        jobs * 2,
        Arc::new(move |n| bytes_bar.inc(n)),
    ));
    // An unreachable destination fails once, up front, instead of once per image.
    let mut destination_plain_http = false;
    if let Some((_, job)) = planned.first() {
        match engine.registries.get(&job.destination.registry).await {
            Ok(registry) => destination_plain_http = registry.plain_http(),
            Err(e) => {
                bars.finish();
                return Err(e.into());
            }
        }
    }
    let semaphore = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut tasks = Vec::new();
    for (planned, mut job) in planned.iter().cloned() {
        let engine = engine.clone();
        let semaphore = semaphore.clone();
        let images_bar = bars.images.clone();
        tasks.push(tokio::spawn(async move {
            let _slot = semaphore
                .acquire()
                .await
                .expect("the semaphore is never closed");
            // Checked before anything is written for it; the copy then takes exactly
            // the digest and the signatures that were checked.
            let checked = verify_first(&engine, &mut job).await;
            let (outcome, verification, refused) = match checked {
                Ok(Ok(note)) => (engine.copy(&job).await, note, false),
                Ok(Err(why)) => (Err(anyhow::anyhow!("{why}")), Some(why), true),
                Err(e) => (Err(e), None, false),
            };
            images_bar.inc(1);
            let line = progress_line(&planned, &outcome, verification.as_deref(), refused);
            if images_bar.is_hidden() {
                eprintln!("{line}");
            } else {
                images_bar.println(line);
            }
            ImageResult {
                source: planned.source,
                destination: planned.destination,
                error: outcome
                    .as_ref()
                    .err()
                    .map(|e| format!("{e:#}").replace('\n', " ")),
                outcome: outcome.ok(),
                verification,
                refused,
            }
        }));
    }
    let mut images = Vec::new();
    for task in tasks {
        images.push(task.await.expect("a copy task panicked"));
    }
    bars.finish();
    Ok(summary(&engine, images, started, destination_plain_http))
}

/// One image's line as it finishes.
fn progress_line(
    planned: &Planned,
    outcome: &Result<Outcome>,
    verification: Option<&str>,
    refused: bool,
) -> String {
    match outcome {
        Err(e) if refused => format!("REFUSED  {}: {e}", planned.source),
        Ok(Outcome::Copied { digest }) => format!(
            "copied   {} -> {}@{digest}{}",
            planned.source,
            planned.destination,
            verification.map(|v| format!(" ({v})")).unwrap_or_default()
        ),
        Ok(Outcome::Skipped { .. }) => format!(
            "current  {} (already at {})",
            planned.source, planned.destination
        ),
        Err(e) => format!(
            "FAILED   {}: {}",
            planned.source,
            format!("{e:#}").replace('\n', " ")
        ),
    }
}

fn summary(
    engine: &Engine,
    images: Vec<ImageResult>,
    started: Instant,
    destination_plain_http: bool,
) -> Summary {
    let stats = &engine.registries.stats;
    Summary {
        copied: images
            .iter()
            .filter(|r| matches!(r.outcome, Some(Outcome::Copied { .. })))
            .count(),
        skipped: images
            .iter()
            .filter(|r| matches!(r.outcome, Some(Outcome::Skipped { .. })))
            .count(),
        failed: images.iter().filter(|r| r.error.is_some()).count(),
        refused: images.iter().filter(|r| r.refused).count(),
        images,
        blobs_copied: engine.blobs.copied.load(Ordering::Relaxed),
        blobs_mounted: engine.blobs.mounted.load(Ordering::Relaxed),
        blobs_present: engine.blobs.present.load(Ordering::Relaxed),
        bytes: stats.bytes_copied.load(Ordering::Relaxed),
        requests: stats.requests.load(Ordering::Relaxed),
        retries: stats.retries.load(Ordering::Relaxed),
        resumed_reads: stats.resumed_reads.load(Ordering::Relaxed),
        resumed_uploads: stats.resumed_uploads.load(Ordering::Relaxed),
        restarts: stats.restarts.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        destination_plain_http,
    }
}

/// The signature check of one job, when it has a policy: Ok(Ok(note)) pins the job to
/// the checked digest and signatures; Ok(Err(why)) is a refusal.
async fn verify_first(
    engine: &Engine,
    job: &mut CopyJob,
) -> Result<Result<Option<String>, String>> {
    if job.rule.is_none() {
        return Ok(Ok(None));
    }
    let digest = engine.source_digest(job).await?;
    let registry = engine.registries.get(&job.source.registry).await?;
    let checked = verify::check(
        &registry,
        &job.source,
        &digest,
        job.platforms.as_deref(),
        job.rule.as_ref(),
    )
    .await?;
    Ok(checked.map(|verdict| {
        job.source.digest = Some(digest);
        job.signatures = verdict.signatures;
        Some(verdict.note)
    }))
}

/// Progress on a terminal; silent (but for the per-image lines) in pipelines.
struct Bars {
    _multi: MultiProgress,
    images: ProgressBar,
    bytes: ProgressBar,
}

impl Bars {
    fn new(images: usize) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let images_bar = multi.add(ProgressBar::new(images as u64));
        images_bar.set_style(
            ProgressStyle::with_template("images {pos}/{len} {wide_bar} {elapsed}")
                .expect("a valid template"),
        );
        let bytes = multi.add(ProgressBar::new_spinner());
        bytes.set_style(
            ProgressStyle::with_template("copied {bytes} ({bytes_per_sec})")
                .expect("a valid template"),
        );
        Bars {
            _multi: multi,
            images: images_bar,
            bytes,
        }
    }

    fn finish(&self) {
        self.images.finish_and_clear();
        self.bytes.finish_and_clear();
    }
}

fn report(summary: &Summary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    println!(
        "{} copied, {} already current, {} failed{}; blobs: {} copied, {} mounted, {} already there; \
         {} moved in {:.1}s ({} requests, {} retries, {} resumed reads, {} resumed uploads, {} restarts)",
        summary.copied,
        summary.skipped,
        summary.failed,
        match summary.refused {
            0 => String::new(),
            n => format!(" ({n} refused by the signature policy)"),
        },
        summary.blobs_copied,
        summary.blobs_mounted,
        summary.blobs_present,
        human_bytes(summary.bytes),
        summary.seconds,
        summary.requests,
        summary.retries,
        summary.resumed_reads,
        summary.resumed_uploads,
        summary.restarts
    );
    Ok(())
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// What would happen, from HEAD requests only; nothing is written.
async fn dry_run(ctx: &Ctx, planned: &[(Planned, CopyJob)], args: &MirrorCopyArgs) -> Result<()> {
    let engine = Engine::new(ctx.registries.clone(), 1, Arc::new(|_| {}));
    let mut rows = Vec::new();
    let mut documents = Vec::new();
    for (p, job) in planned {
        let source = engine.source_digest(job).await;
        let destination = engine.destination_digest(job).await;
        let action = match (&source, &destination) {
            (Err(e), _) => format!(
                "cannot read source: {}",
                format!("{e:#}").replace('\n', " ")
            ),
            (Ok(_), Err(e)) => format!(
                "cannot read destination: {}",
                format!("{e:#}").replace('\n', " ")
            ),
            (Ok(s), Ok(Some(d))) if s == d && job.platforms.is_none() => "up to date".to_string(),
            (Ok(_), Ok(Some(_))) => "copy (replaces the destination tag)".to_string(),
            (Ok(_), Ok(None)) => "copy".to_string(),
        };
        let verdict = match (&source, &job.rule) {
            (_, None) => "not verified (no policy)".to_string(),
            (Err(_), Some(_)) => "cannot check".to_string(),
            (Ok(digest), Some(rule)) => {
                let checked = match engine.registries.get(&job.source.registry).await {
                    Ok(registry) => {
                        let platforms = job.platforms.as_deref();
                        verify::check(&registry, &job.source, digest, platforms, Some(rule)).await
                    }
                    Err(e) => Err(e.into()),
                };
                match checked {
                    Ok(Ok(verdict)) => verdict.note,
                    Ok(Err(why)) => format!("REFUSED: {why}"),
                    Err(e) => format!("cannot check: {}", format!("{e:#}").replace('\n', " ")),
                }
            }
        };
        rows.push(vec![
            p.source.clone(),
            p.destination.clone(),
            action.clone(),
            verdict.clone(),
        ]);
        documents.push(serde_json::json!({
            "source": p.source, "destination": p.destination, "group": p.entry.group,
            "source_digest": source.ok(), "action": action, "verification": verdict,
            "tag_set": p.entry.tag_set,
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&documents)?);
    } else {
        println!("# Mirror plan (dry run: nothing is written)");
        for line in tag_set_lines(planned) {
            println!("# {line}");
        }
        print!(
            "{}",
            crate::report::table(&["SOURCE", "DESTINATION", "ACTION", "SIGNATURE"], &rows)
        );
    }
    Ok(())
}

/// What each tag set resolved to: `REPOSITORY (SET): TAG, TAG`, in plan order.
fn tag_set_lines(planned: &[(Planned, CopyJob)]) -> Vec<String> {
    let mut lines: Vec<(String, Vec<String>)> = Vec::new();
    for (p, _) in planned {
        let (Some(set), Some(tag)) = (&p.entry.tag_set, &p.entry.source.tag) else {
            continue;
        };
        let head = format!(
            "tags of {}/{} ({set})",
            p.entry.source.registry, p.entry.source.repository
        );
        match lines.iter_mut().find(|(h, _)| *h == head) {
            Some((_, tags)) => tags.push(tag.to_string()),
            None => lines.push((head, vec![tag.to_string()])),
        }
    }
    lines
        .into_iter()
        .map(|(head, tags)| format!("{head}: {}", tags.join(", ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
