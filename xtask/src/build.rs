//! `images render` and `images build`: render, plan, and run docker buildx bake.

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::avoid;
use crate::by_digest;
use crate::catalog::{Catalog, Image};
use crate::cli::{BuildArgs, RenderArgs};
use crate::context::Ctx;
use crate::naming::ImageRef;
use crate::oci::{Digest, Registries};
use crate::plan::{
    validate_cache, validate_secret, BuildPlan, Output, PlanInputs, CA_BUNDLE_SECRET,
};
use crate::project;
use crate::render::{render_all, RenderOptions, Rendered};
use crate::sign::{Pushing, Subject};
use crate::text::{read_ca_pem, shell_words};
use crate::{size, verify};

const DEFAULT_SOURCE_URL: &str = "https://github.com/kubeopencode/kubeopencode";

/// The catalog images a command works on, parents first, rendered and written to disk.
struct Prepared<'a> {
    images: Vec<&'a Image>,
    rendered: Vec<Rendered>,
    out: PathBuf,
}

fn prepare<'a>(catalog: &'a Catalog, args: &RenderArgs) -> Result<Prepared<'a>> {
    let images = catalog.build_order(&args.images)?;
    let options = RenderOptions {
        base_registry: args.base_registry.clone(),
        publish: args.publish.publish(),
    };
    // Validate naming before anything is written.
    options.publish.tags()?;
    let rendered = render_all(catalog, &images, &options)?;
    let out = match &args.out {
        Some(out) => absolute(out)?,
        None => project::images_out(&catalog.root),
    };
    for r in &rendered {
        r.write(&out)?;
    }
    Ok(Prepared {
        images,
        rendered,
        out,
    })
}

impl RenderArgs {
    pub fn run(self, ctx: &Ctx) -> Result<()> {
        let root = ctx.root.as_path();
        let catalog = Catalog::load(root)?;
        let prepared = prepare(&catalog, &self)?;
        for r in &prepared.rendered {
            println!(
                "{}",
                prepared.out.join(&r.name).join("Dockerfile").display()
            );
        }
        Ok(())
    }
}

impl BuildArgs {
    pub fn run(self, ctx: &Ctx) -> Result<()> {
        let catalog = Catalog::load(&ctx.root)?;
        let inputs = plan_inputs(ctx, &self)?;
        let pushing = match inputs.output {
            Output::Push => Pushing::Yes,
            Output::ByDigest => Pushing::ByDigest,
            Output::Load | Output::Cache => Pushing::No,
        };
        let trust = self.trust.trust(pushing, &ctx.insecure)?;
        let prepared = prepare(&catalog, &self.render)?;
        let mut plan = BuildPlan::new(
            &prepared.images,
            &prepared.rendered,
            &self.render.images,
            &prepared.out,
            &inputs,
        )?;
        // The whole plan, as --dry-run prints it and as `docker buildx bake` would run it
        // without avoidance.
        let bake_path = prepared.out.join("bake.json");
        write_bake(&plan, &bake_path)?;
        if self.dry_run {
            return self.print_dry_run(&plan, &prepared.out, &bake_path, trust.as_ref());
        }
        if let Some(trust) = &trust {
            trust.preflight()?;
        }
        self.refuse_unusable_outputs(inputs.output)?;
        let found = self.find_in_place(ctx, &plan, inputs.output)?;
        let full = plan.clone();
        keep_only_what_to_build(&mut plan, &found);
        retag_in_place(ctx, &full, &found, inputs.output)?;
        let metadata_path = prepared.out.join("metadata.json");
        if plan.requested().next().is_some() {
            let needs = crate::preflight::Needs::of(
                &plan,
                &prepared.images,
                &prepared.rendered,
                self.render.base_registry.as_deref(),
            )?;
            needs.check(ctx)?;
            bake(ctx, &plan, &prepared.out, &metadata_path)?;
        }
        let mut digests = built_digests(&plan, &metadata_path);
        if inputs.output == Output::Push {
            push_built(ctx, &plan, &mut digests)?;
        }
        if let Some(trust) = &trust {
            trust.run(ctx, &subjects(&full, &found, &digests)?, &prepared.out)?;
        }
        if let Some(dir) = &self.by_digest {
            let pushed = ctx.block_on(publish_by_digest(
                &ctx.registries,
                &full,
                &plan,
                &found,
                dir,
            ))?;
            digests.extend(pushed);
        }
        let outcomes = outcomes(&full, &found, &digests, inputs.output);
        report(&outcomes, self.json)?;
        if self.check {
            check_built(ctx, &catalog, &full, &inputs, &outcomes)?;
        }
        Ok(())
    }

    /// `--dry-run`: the plan, the bake command and what signing would run.
    fn print_dry_run(
        &self,
        plan: &BuildPlan,
        out: &Path,
        bake_path: &Path,
        trust: Option<&crate::sign::Trust>,
    ) -> Result<()> {
        let docker_args = plan.bake_args(bake_path, &out.join("metadata.json"));
        let after_push = match trust {
            Some(trust) => {
                let images: Vec<(String, String)> = plan
                    .requested()
                    .filter_map(|t| Some((t.name.clone(), t.tags.first()?.clone())))
                    .collect();
                trust.planned(&images, out)?
            }
            None => Vec::new(),
        };
        print_plan(plan, &docker_args, self.json, &after_push)
    }

    fn refuse_unusable_outputs(&self, output: Output) -> Result<()> {
        if self.check && output == Output::Cache {
            bail!("--check measures and runs what was built: add --push or --load");
        }
        if let Some(dir) = self
            .by_digest
            .as_ref()
            .filter(|d| d.exists() && !d.is_dir())
        {
            bail!(
                "--by-digest {} is a file; name a folder for the records",
                dir.display()
            );
        }
        Ok(())
    }

    /// The images already in place with this build's input digests (build avoidance).
    fn find_in_place(
        &self,
        ctx: &Ctx,
        plan: &BuildPlan,
        output: Output,
    ) -> Result<BTreeMap<String, avoid::Found>> {
        if self.force || self.no_cache || output == Output::Cache {
            Ok(BTreeMap::new())
        } else if output.is_registry() {
            ctx.block_on(avoid::in_registry(plan, &ctx.registries))
        } else {
            avoid::in_engine(plan)
        }
    }
}

/// Drops from `plan` what is already in place; children build FROM those by digest.
fn keep_only_what_to_build(plan: &mut BuildPlan, found: &BTreeMap<String, avoid::Found>) {
    let build: BTreeSet<String> = plan
        .requested()
        .filter(|t| !found.contains_key(&t.name))
        .map(|t| t.name.clone())
        .collect();
    let available: BTreeMap<String, String> = found
        .iter()
        .filter_map(|(name, f)| Some((name.clone(), f.by_digest.clone()?)))
        .collect();
    plan.keep_only(&build, &available);
}

/// Tags missing from images already in place: written where they live, no build.
fn retag_in_place(
    ctx: &Ctx,
    full: &BuildPlan,
    found: &BTreeMap<String, avoid::Found>,
    output: Output,
) -> Result<()> {
    let retag: Vec<&avoid::Found> = full
        .requested()
        .filter_map(|t| found.get(&t.name))
        .filter(|f| !f.missing.is_empty())
        .collect();
    match output {
        Output::Push => ctx.block_on(async {
            for f in &retag {
                avoid::retag_in_registry(&ctx.registries, f).await?;
            }
            Ok(())
        }),
        Output::Load => retag.iter().try_for_each(|f| avoid::retag_in_engine(f)),
        // By digest, nothing is tagged; merge writes the tags.
        Output::ByDigest | Output::Cache => Ok(()),
    }
}

/// Runs `docker buildx bake` on what is left to build, within the run's deadline.
fn bake(ctx: &Ctx, plan: &BuildPlan, out: &Path, metadata_path: &Path) -> Result<()> {
    let build_bake = out.join("bake.build.json");
    write_bake(plan, &build_bake)?;
    let docker_args = plan.bake_args(&build_bake, metadata_path);
    let _ = fs::remove_file(metadata_path);
    for t in plan.requested() {
        if t.output.is_registry() {
            let _ = fs::remove_dir_all(&t.layout);
        }
    }
    eprintln!(
        "==> building {} ({} target(s) in the bake file {})",
        plan.requested()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        plan.targets.len(),
        build_bake.display()
    );
    let mut command = vec!["docker".to_string()];
    command.extend(docker_args.iter().cloned());
    eprintln!("$ {}", shell_words(&command));
    let mut docker = Command::new("docker");
    docker.args(&docker_args);
    let status = ctx.run_command(&mut docker, "docker buildx bake")?;
    if !status.success() {
        bail!(
            "docker buildx bake failed; the build log above names the failing step \
             (re-run with --progress plain for the full log)"
        );
    }
    Ok(())
}

/// The digests bake recorded in its metadata file, by image.
fn built_digests(plan: &BuildPlan, metadata_path: &Path) -> BTreeMap<String, String> {
    if plan.requested().next().is_none() {
        return BTreeMap::new();
    }
    let metadata: serde_json::Value = fs::read_to_string(metadata_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    plan.requested()
        .filter_map(|t| {
            let digest = metadata[&t.name]["containerimage.digest"].as_str()?;
            Some((t.name.clone(), digest.to_string()))
        })
        .collect()
}

/// `--push`: each layout BuildKit wrote goes to the registry, then its tags.
fn push_built(ctx: &Ctx, plan: &BuildPlan, digests: &mut BTreeMap<String, String>) -> Result<()> {
    ctx.block_on(async {
        for t in plan.requested() {
            let digest = by_digest::push_tagged(&ctx.registries, t)
                .await
                .with_context(|| format!("pushing {}", t.name))?;
            digests.insert(t.name.clone(), digest.to_string());
            let _ = fs::remove_dir_all(&t.layout);
        }
        Ok(())
    })
}

fn outcomes(
    full: &BuildPlan,
    found: &BTreeMap<String, avoid::Found>,
    digests: &BTreeMap<String, String>,
    output: Output,
) -> Vec<Outcome> {
    full.requested()
        .map(|t| {
            let (status, digest) = match found.get(&t.name) {
                Some(f) => (f.status(), Some(f.digest.to_string())),
                None => (avoid::Status::Built, digests.get(&t.name).cloned()),
            };
            let status = match (status, output) {
                (avoid::Status::Retagged, Output::ByDigest) => avoid::Status::UpToDate,
                (status, _) => status,
            };
            Outcome {
                image: t.name.clone(),
                status,
                digest,
                input_digest: t.inputs.digest.to_string(),
                tags: t.tags.clone(),
                platforms: t.platforms.clone(),
                output: t.output,
            }
        })
        .collect()
}

/// `--check`: size and verify on what was built; by digest, each image is read by its
/// digest since nothing is tagged.
fn check_built(
    ctx: &Ctx,
    catalog: &Catalog,
    full: &BuildPlan,
    inputs: &PlanInputs,
    outcomes: &[Outcome],
) -> Result<()> {
    let pinned: BTreeMap<String, String> = outcomes
        .iter()
        .filter(|_| inputs.output == Output::ByDigest)
        .filter_map(|o| {
            let repository = inputs.publish.repository(&o.image);
            Some((
                o.image.clone(),
                format!("{repository}@{}", o.digest.as_ref()?),
            ))
        })
        .collect();
    let platform = match inputs.platforms.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    check(
        ctx,
        catalog,
        full,
        inputs.output,
        &inputs.publish,
        &pinned,
        platform,
    )
}

/// What `--sign`/`--sbom` cover: the images just pushed, and those already in place
/// (signed or attested only where that is missing).
fn subjects(
    full: &BuildPlan,
    found: &BTreeMap<String, avoid::Found>,
    pushed: &BTreeMap<String, String>,
) -> Result<Vec<Subject>> {
    let mut subjects = Vec::new();
    for t in full.requested() {
        let Some(tag) = t.tags.first() else { continue };
        match (pushed.get(&t.name), found.get(&t.name)) {
            (Some(digest), None) => subjects.push(Subject::new(&t.name, tag, digest, true)?),
            (_, Some(f)) => subjects.push(Subject::new(&t.name, tag, f.digest.as_str(), false)?),
            (None, None) => {}
        }
    }
    Ok(subjects)
}

fn write_bake(plan: &BuildPlan, path: &Path) -> Result<()> {
    let bake = serde_json::to_string_pretty(&plan.bake_file())?;
    fs::write(path, format!("{bake}\n")).with_context(|| format!("writing {}", path.display()))
}

/// `--by-digest`: pushes each layout just built by digest, and writes every requested
/// image's records, built or found up to date. The pushed index digests, by image.
async fn publish_by_digest(
    registries: &Registries,
    full: &BuildPlan,
    built: &BuildPlan,
    found: &BTreeMap<String, avoid::Found>,
    dir: &Path,
) -> Result<BTreeMap<String, String>> {
    let mut pushed = BTreeMap::new();
    let mut records = Vec::new();
    for t in full.requested() {
        let to = ImageRef::parse(t.tags.first().context("an image with no tag")?)?;
        let repository = format!("{}/{}", to.registry, to.repository);
        let index = match (found.get(&t.name), built.target(&t.name)) {
            (Some(f), _) => match &f.manifest {
                Some((bytes, _)) => bytes.clone(),
                None => continue,
            },
            (None, Some(b)) if b.requested => {
                let bytes = by_digest::push_layout(registries, &to, &b.layout)
                    .await
                    .with_context(|| format!("pushing {} by digest", t.name))?;
                pushed.insert(t.name.clone(), Digest::of_sha256(&bytes).to_string());
                let _ = fs::remove_dir_all(&b.layout);
                bytes
            }
            _ => continue,
        };
        records.extend(by_digest::records(t, &repository, &index)?);
    }
    let parents: BTreeMap<String, String> = full
        .targets
        .iter()
        .filter_map(|t| Some((t.name.clone(), t.parent.clone()?)))
        .collect();
    by_digest::link_parents(&mut records, &parents);
    by_digest::write_records(dir, &records)?;
    Ok(pushed)
}

/// `images size` and `images verify` on the images just built, from where they went,
/// through the same checks those commands run.
fn check(
    ctx: &Ctx,
    catalog: &Catalog,
    plan: &BuildPlan,
    output: Output,
    publish: &crate::naming::Publish,
    pinned: &BTreeMap<String, String>,
    platform: Option<String>,
) -> Result<()> {
    let names: Vec<String> = plan.requested().map(|t| t.name.clone()).collect();
    let source = match output {
        Output::Push | Output::ByDigest => size::Source::Registry,
        _ => size::Source::Engine,
    };
    let options = size::Options::default();
    let layers = options.layers;
    let mut sizes = size::Check::for_catalog(catalog, &names, publish, source, options)?;
    for target in &mut sizes.targets {
        if let Some(reference) = pinned.get(&target.name) {
            target.reference = ImageRef::parse(reference)?;
        }
    }
    let sizes = sizes.run(ctx)?;
    // Tables to stderr: stdout stays the build's own result (`--json` included).
    sizes.print(&mut std::io::stderr(), false, layers)?;
    let engine = verify::Engine {
        platform,
        local: !output.is_registry(),
        jobs: None,
    };
    let mut verify = verify::Check::for_catalog(catalog, &names, publish, engine)?;
    for (name, reference) in pinned {
        if verify.tools_image == Some(publish.reference(name)?.to_string()) {
            verify.tools_image = Some(reference.clone());
        }
    }
    for subject in &mut verify.subjects {
        if let Some(reference) = pinned.get(&subject.name) {
            subject.reference = reference.clone();
        }
    }
    let outcomes = verify.run()?;
    outcomes.print(&mut std::io::stderr(), false)?;
    sizes.verdict()?;
    outcomes.verdict()
}

fn absolute(path: &Path) -> Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

fn plan_inputs(ctx: &Ctx, args: &BuildArgs) -> Result<PlanInputs> {
    let root = ctx.root.as_path();
    let mut build_args = BTreeMap::new();
    let mut secrets = Vec::new();
    if let Some(ca) = &ctx.ca_bundle {
        secrets.push(format!(
            "id={CA_BUNDLE_SECRET},src={}",
            check_ca_bundle(ca)?.display()
        ));
    }
    for secret in &args.secrets {
        validate_secret(secret)?;
        secrets.push(secret.clone());
    }
    if let Some(mirror) = &args.artifact_mirror {
        build_args.insert(
            "ARTIFACT_MIRROR".into(),
            check_url("--artifact-mirror", mirror)?,
        );
    }
    if let Some(mirror) = &args.apk_mirror {
        build_args.insert("APK_MIRROR".into(), check_url("--apk-mirror", mirror)?);
    }
    let npm_registry = match &args.npm_registry {
        Some(url) => Some(check_url("--npm-registry", url)?),
        None => npm_config_registry(),
    };
    if let Some(url) = npm_registry {
        build_args.insert("NPM_REGISTRY".into(), url);
    }
    let output = match (args.push, args.load) {
        (true, _) if args.by_digest.is_some() => Output::ByDigest,
        (true, _) => Output::Push,
        (false, true) => Output::Load,
        (false, false) => Output::Cache,
    };
    Ok(PlanInputs {
        publish: args.render.publish.publish(),
        platforms: args.platform.clone(),
        output,
        builder: args.builder.clone(),
        progress: args.progress.clone(),
        no_cache: args.no_cache,
        build_args,
        secrets,
        source_url: args
            .source_url
            .clone()
            .or_else(|| project::source_url(root))
            .unwrap_or_else(|| DEFAULT_SOURCE_URL.to_string()),
        revision: project::revision(root),
        source_date_epoch: source_date_epoch(root)?,
        cache_from: checked_caches("--cache-from", &args.cache_from)?,
        cache_to: checked_caches("--cache-to", &args.cache_to)?,
        provenance: args.provenance.clone(),
    })
}

fn checked_caches(flag: &str, specs: &[String]) -> Result<Vec<String>> {
    for spec in specs {
        validate_cache(flag, spec)?;
    }
    Ok(specs.to_vec())
}

/// A readable PEM file; the path goes into the plan, the contents only into BuildKit.
fn check_ca_bundle(path: &Path) -> Result<PathBuf> {
    read_ca_pem("--ca-bundle", path)?;
    absolute(path)
}

fn check_url(flag: &str, url: &str) -> Result<String> {
    let trimmed = url.trim().trim_end_matches('/');
    let valid = (trimmed.starts_with("https://") || trimmed.starts_with("http://"))
        && trimmed
            .split("://")
            .nth(1)
            .is_some_and(|rest| !rest.is_empty());
    if !valid {
        bail!("{flag} '{url}' is not an http(s) URL; write it like https://mirror.example.com/artifacts");
    }
    if trimmed
        .split("://")
        .nth(1)
        .is_some_and(|rest| rest.split('/').next().unwrap_or("").contains('@'))
    {
        bail!(
            "{flag} must not carry credentials in the URL; they would end up in the image history"
        );
    }
    Ok(trimmed.to_string())
}

/// The machine's npm registry, so npm-sourced downloads follow the local configuration.
fn npm_config_registry() -> Option<String> {
    let output = std::process::Command::new("npm")
        .args(["config", "get", "registry"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let url = String::from_utf8_lossy(&output.stdout).trim().to_string();
    check_url("npm registry", &url).ok()
}

/// `SOURCE_DATE_EPOCH` from the environment, else the commit time of `HEAD`, so one
/// commit always gives the same timestamps; outside a git checkout, now.
fn source_date_epoch(root: &Path) -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => epoch.trim().parse().map_err(|_| {
            anyhow!("SOURCE_DATE_EPOCH '{epoch}' is not a number of seconds since 1970")
        }),
        Err(_) => Ok(project::commit_time(root).unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })),
    }
}

#[derive(Serialize)]
struct PlanDocument<'a> {
    command: Vec<String>,
    plan: &'a BuildPlan,
    bake: serde_json::Value,
    /// `--sign`/`--sbom`: what runs after the push, secrets left out.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    after_push: &'a [String],
}

fn print_plan(
    plan: &BuildPlan,
    docker_args: &[String],
    json: bool,
    after_push: &[String],
) -> Result<()> {
    let mut command = vec!["docker".to_string()];
    command.extend(docker_args.iter().cloned());
    if json {
        let document = PlanDocument {
            command,
            plan,
            bake: plan.bake_file(),
            after_push,
        };
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    println!("# Build plan (dry run: no daemon was contacted)");
    for t in &plan.targets {
        let role = if t.requested {
            ""
        } else {
            " (dependency, kept in build cache)"
        };
        println!(
            "# {}{role}: {} for {}",
            t.name,
            t.tags.join(", "),
            t.platforms.join(",")
        );
    }
    println!("{}", shell_words(&command));
    println!("# bake file:");
    println!("{}", serde_json::to_string_pretty(&plan.bake_file())?);
    if !after_push.is_empty() {
        println!("# after the push (--sign/--sbom):");
        for line in after_push {
            println!("{line}");
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct Outcome {
    image: String,
    status: avoid::Status,
    digest: Option<String>,
    input_digest: String,
    tags: Vec<String>,
    platforms: Vec<String>,
    output: Output,
}

fn report(outcomes: &[Outcome], json: bool) -> Result<()> {
    crate::report::print_list(
        json,
        outcomes,
        &["IMAGE", "STATUS", "DIGEST", "PLATFORMS", "TAGS"],
        |o| {
            vec![
                o.image.clone(),
                o.status.as_str().to_string(),
                o.digest.clone().unwrap_or_else(|| "-".into()),
                o.platforms.join(","),
                o.tags.join(" "),
            ]
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            check_url("--x", "https://m.example/a/").unwrap(),
            "https://m.example/a"
        );
        assert!(check_url("--x", "ftp://m").is_err());
        assert!(check_url("--x", "https://").is_err());
        let err = check_url("--x", "https://u:p@m.example")
            .unwrap_err()
            .to_string();
        assert!(err.contains("credentials"), "{err}");
    }

    #[test]
    fn ca_bundle_must_be_pem() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        fs::write(&not_pem, "hello").unwrap();
        assert!(check_ca_bundle(&not_pem)
            .unwrap_err()
            .to_string()
            .contains("no PEM"));
        assert!(check_ca_bundle(&dir.path().join("missing")).is_err());
        let pem = dir.path().join("ca.pem");
        fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_eq!(check_ca_bundle(&pem).unwrap(), pem);
    }
}
