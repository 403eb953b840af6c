//! `bench build`: a cold `images build --push`, a warm no-op of the same catalog, and
//! bare `docker buildx bake` on the same warm bake file, side by side. The catalog is a
//! small one this command writes (the real one needs base images from Docker Hub, which
//! an air-gapped machine does not have): `base` (one file per platform), its child
//! `child`, and `other`, for linux/amd64 and linux/arm64, with no RUN step. Everything
//! goes to a loopback registry this command starts and removes.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::LocalRegistry;
use crate::cli::BenchBuildArgs;

const PLATFORMS: &str = "platforms = [\"linux/amd64\", \"linux/arm64\"]\n";

/// The small catalog; `nonce` makes every run's first build cold for BuildKit too.
fn write_catalog(dir: &Path, nonce: u64) -> Result<()> {
    let files: [(&str, String); 10] = [
        (
            "dockerfiles/base.Dockerfile.j2",
            "FROM scratch\nARG TARGETARCH\nCOPY hello.txt /hello.txt\nCOPY arch-${TARGETARCH} /arch\n".into(),
        ),
        (
            "dockerfiles/child.Dockerfile.j2",
            "FROM {{ parent }}\nCOPY child.txt /child.txt\n".into(),
        ),
        (
            "dockerfiles/other.Dockerfile.j2",
            "FROM scratch\nCOPY other.txt /other.txt\n".into(),
        ),
        ("agents/base/image.toml", manifest("base", None)),
        ("agents/base/hello.txt", format!("{nonce}\n")),
        ("agents/base/arch-amd64", "amd64\n".into()),
        ("agents/base/arch-arm64", "arm64\n".into()),
        ("agents/child/image.toml", manifest("child", Some("base"))),
        ("agents/child/child.txt", format!("{nonce}\n")),
        ("agents/other/image.toml", manifest("other", None)),
    ];
    for (path, text) in files
        .iter()
        .chain([&("agents/other/other.txt", format!("{nonce}\n"))])
    {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a relative path with a folder"))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn manifest(template: &str, parent: Option<&str>) -> String {
    let parent = parent
        .map(|p| format!("parent = \"{p}\"\n"))
        .unwrap_or_default();
    format!("description = \"bench\"\ntemplate = \"{template}.Dockerfile.j2\"\n{parent}{PLATFORMS}")
}

/// Runs `program args`, quietly; how long it took.
fn timed(what: &str, command: &mut Command) -> Result<Duration> {
    let started = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    let took = started.elapsed();
    if !output.status.success() {
        // The build log's end names the failing step.
        let log = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = log.lines().collect();
        for line in &lines[lines.len().saturating_sub(15)..] {
            eprintln!("  {}", crate::text::printable(line));
        }
        bail!(
            "{what} failed: {}",
            crate::docker::last_line(&output.stderr)
        );
    }
    Ok(took)
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

impl BenchBuildArgs {
    pub fn run(self, ctx: &crate::context::Ctx) -> Result<()> {
        let root = ctx.root.as_path();
        crate::docker::require_daemon()?;
        let work: PathBuf = root.join("target/bench");
        std::fs::create_dir_all(&work)?;
        let registry = LocalRegistry::start_tls(&work)?;
        let project = tempfile::tempdir_in(&work)?;
        write_catalog(project.path(), fastrand::u64(..))?;
        let exe = std::env::current_exe().context("finding the xtask executable")?;
        let build = || {
            let mut command = Command::new(&exe);
            command.env_remove("NPM_REGISTRY");
            command
                .args(["images", "build", "--push", "--progress", "quiet"])
                .args(["--registry", &registry.addr, "--org", "bench"])
                .args(["--version", "v1.0.0", "--release-tags"])
                .env("XTASK_PROJECT_DIR", project.path());
            command
        };
        eprintln!("==> cold build of the small catalog (3 images, 2 platforms)");
        let cold = timed("the cold build", &mut build())?;
        let bake_file = project.path().join("target/images/bake.json");
        let rounds = self.rounds.max(1);
        let mut warm = Vec::new();
        let mut bare = Vec::new();
        // `npm config get registry` (a build argument, so an input) starts node: most
        // of a no-op. Given as a flag with the same value, the inputs are the same.
        let npm = Command::new("npm")
            .args(["config", "get", "registry"])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|url| url.starts_with("http"));
        let mut warm_npm = Vec::new();
        for round in 0..rounds {
            eprintln!(
                "==> round {} of {rounds}: warm no-op, then bare bake",
                round + 1
            );
            warm.push(timed("the warm no-op", &mut build())?);
            if let Some(npm) = &npm {
                let mut given = build();
                given.args(["--npm-registry", npm]);
                warm_npm.push(timed("the warm no-op with --npm-registry", &mut given)?);
            }
            let mut bake = Command::new("docker");
            bake.args(["buildx", "bake", "--progress", "quiet", "--file"])
                .arg(&bake_file);
            bare.push(timed("docker buildx bake", &mut bake)?);
        }
        let mut rows = vec![
            vec![
                "cold build (images build --push)".to_string(),
                seconds(cold),
                "3 bake targets".into(),
            ],
            vec![
                "warm no-op (images build --push)".into(),
                seconds(median(warm)),
                "0 (bake not run)".into(),
            ],
            vec![
                "warm: bare docker buildx bake, same bake file".into(),
                seconds(median(bare)),
                "3 bake targets".into(),
            ],
        ];
        if !warm_npm.is_empty() {
            rows.insert(
                2,
                vec![
                    "warm no-op, --npm-registry given (no `npm config get`)".into(),
                    seconds(median(warm_npm)),
                    "0 (bake not run)".into(),
                ],
            );
        }
        println!(
            "{}",
            crate::report::table(&["MEASURE", "TIME", "BUILDKIT SOLVES"], &rows).trim_end()
        );
        println!(
            "(small test catalog: base, child, other on linux/amd64+linux/arm64; median of \
             {rounds} warm round(s); registry on loopback)"
        );
        drop(registry);
        Ok(())
    }
}
