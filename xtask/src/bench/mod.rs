//! `bench mirror`: the mirror against skopeo over the same corpus in the same run, and a
//! 1 GiB layer against the machine's raw GET→PUT limit, and an incremental bundle's size
//! beside the whole one's. Everything runs on loopback
//! registries this command starts and removes.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::BenchMirrorArgs;

mod build;
mod bundles;
use crate::oci::image::{descriptor_digest, Document};
use crate::oci::media;
use crate::oci::registry::Client;
use crate::oci::{Digest, Reference, Registry, Repository};

const MIB: u64 = 1 << 20;

/// A distribution registry on a free loopback port, removed when dropped.
struct LocalRegistry {
    addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl LocalRegistry {
    fn start(under: &Path) -> Result<LocalRegistry> {
        LocalRegistry::spawn(under, false)
    }

    /// With a throwaway self-signed certificate: Docker skips verifying loopback, and
    /// never takes the plain-HTTP fallback that races under parallel pushes in Docker
    /// 26.1 (moby/moby#48818).
    fn start_tls(under: &Path) -> Result<LocalRegistry> {
        LocalRegistry::spawn(under, true)
    }

    fn spawn(under: &Path, tls: bool) -> Result<LocalRegistry> {
        let dir = tempfile::tempdir_in(under)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let tls_config = if tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let made = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running openssl for the benchmark registry's certificate")?;
            if !made.success() {
                bail!("openssl could not make a certificate for the benchmark registry");
            }
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            )
        } else {
            String::new()
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{tls_config}",
                dir.path().join("data").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry (install it with .ci/provision)")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            if Instant::now() > deadline {
                bail!("the benchmark registry on {addr} did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(LocalRegistry { addr, child, dir })
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.dir.path());
    }
}

/// Deterministic incompressible bytes, so a layer can be hashed and then sent without
/// ever being held whole.
fn pseudo_random(seed: u64, size: u64) -> impl Iterator<Item = Bytes> {
    let mut state = seed | 1;
    let mut left = size;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(MIB) as usize;
        let mut chunk = Vec::with_capacity(n + 8);
        while chunk.len() < n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.extend_from_slice(&state.to_le_bytes());
        }
        chunk.truncate(n);
        left -= n as u64;
        Some(Bytes::from(chunk))
    })
}

struct Layer {
    seed: u64,
    size: u64,
    digest: Digest,
}

fn layer(seed: u64, size: u64) -> Layer {
    let mut hasher = Digest::of_sha256(b"").hasher();
    for chunk in pseudo_random(seed, size) {
        hasher.update(&chunk);
    }
    Layer {
        seed,
        size,
        digest: hasher.finish(),
    }
}

async fn push_layer(registry: &Client, repository: &Repository, layer: &Layer) -> Result<()> {
    if registry.has_blob(repository, &layer.digest).await? {
        return Ok(());
    }
    let stream = futures_util::stream::iter(
        pseudo_random(layer.seed, layer.size).map(Ok::<_, std::io::Error>),
    );
    registry
        .put_blob_stream(repository, &layer.digest, layer.size, stream)
        .await?;
    Ok(())
}

async fn push_json(
    registry: &Client,
    repository: &Repository,
    value: &serde_json::Value,
) -> Result<(Digest, u64)> {
    let bytes = Bytes::from(serde_json::to_vec(value)?);
    let digest = Digest::of_sha256(&bytes);
    registry
        .put_blob_stream(
            repository,
            &digest,
            bytes.len() as u64,
            futures_util::stream::iter([Ok::<_, std::io::Error>(bytes.clone())]),
        )
        .await?;
    Ok((digest, bytes.len() as u64))
}

/// A two-platform image: per platform a config and the given layers, then an index.
async fn push_image(
    registry: &Client,
    repository: &str,
    layers_by_platform: &[(&str, Vec<&Layer>)],
) -> Result<()> {
    let repository = &Repository::parse(repository)?;
    let mut children = Vec::new();
    for (arch, layers) in layers_by_platform {
        for l in layers {
            push_layer(registry, repository, l).await?;
        }
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>() },
        });
        let (config_digest, config_size) = push_json(registry, repository, &config).await?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l.digest, "size": l.size
            })).collect::<Vec<_>>(),
        });
        let bytes = Bytes::from(serde_json::to_vec(&manifest)?);
        let digest = Digest::of_sha256(&bytes);
        registry
            .put_manifest(
                repository,
                &Reference::Digest(digest.clone()),
                &bytes,
                media::OCI_MANIFEST,
            )
            .await?;
        children.push(serde_json::json!({
            "mediaType": media::OCI_MANIFEST, "digest": digest, "size": bytes.len(),
            "platform": { "architecture": arch, "os": "linux" },
        }));
    }
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": children });
    let bytes = Bytes::from(serde_json::to_vec(&index)?);
    registry
        .put_manifest(
            repository,
            &Reference::parse("v1")?,
            &bytes,
            media::OCI_INDEX,
        )
        .await?;
    Ok(())
}

/// The runtime-catalog-like corpus: images sharing base layers, each with its own.
async fn build_corpus(
    registry: &Client,
    images: usize,
    big_mib: u64,
) -> Result<(Vec<String>, u64)> {
    let base: Vec<Layer> = (0..3)
        .map(|i| layer(1000 + i, (24 + 8 * i) * MIB))
        .collect();
    let mut names = Vec::new();
    let mut total = base.iter().map(|l| l.size * 2).sum::<u64>();
    for i in 0..images as u64 {
        let own: Vec<(Layer, Layer)> = (0..3)
            .map(|j| {
                (
                    layer(10 * i + j, (2 + 3 * j) * MIB),
                    layer(500 + 10 * i + j, (2 + 3 * j) * MIB),
                )
            })
            .collect();
        let shared: Vec<&Layer> = base.iter().take(1 + (i as usize % 3)).collect();
        let amd: Vec<&Layer> = shared
            .iter()
            .copied()
            .chain(own.iter().map(|(a, _)| a))
            .collect();
        let arm: Vec<&Layer> = shared
            .iter()
            .copied()
            .chain(own.iter().map(|(_, b)| b))
            .collect();
        total += own.iter().map(|(a, b)| a.size + b.size).sum::<u64>();
        let repository = format!("corpus/runtime-{i:02}");
        push_image(registry, &repository, &[("amd64", amd), ("arm64", arm)]).await?;
        names.push(repository);
    }
    let big = layer(424242, big_mib * MIB);
    push_image(registry, "corpus/big", &[("amd64", vec![&big])]).await?;
    eprintln!(
        "corpus: {images} multi-arch images ({} of unique layers) and a {big_mib} MiB layer",
        crate::mirror::human_bytes(total)
    );
    Ok((names, big_mib * MIB))
}

/// Wall time and peak RSS (KiB) of a command, via GNU time.
fn measure(program: &str, args: &[String], cwd: &Path) -> Result<(Duration, u64)> {
    let rss_file = tempfile::NamedTempFile::new()?;
    let mut command = Command::new("/usr/bin/time");
    // What `cargo run` set for us would look like a new build environment to the inner
    // cargo and make it rebuild, inside the timing.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTUP_TOOLCHAIN")
            || key == "RUST_RECURSION_COUNT"
            || key == "LD_LIBRARY_PATH"
        {
            command.env_remove(key.as_ref());
        }
    }
    let started = Instant::now();
    let status = command
        .current_dir(cwd)
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(rss_file.path())
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(
            std::env::temp_dir().join("xtask-bench-last.log"),
        )?)
        .status()
        .context("running /usr/bin/time (apt-get install time)")?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!("{program} {} failed", args.join(" "));
    }
    let rss = std::fs::read_to_string(rss_file.path())?
        .trim()
        .lines()
        .last()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    Ok((elapsed, rss))
}

/// How the mirror is started: the way people run it, or the built binary alone (to
/// separate cargo's own start-up from the tool's work, and for the tool's own RSS).
#[derive(Clone, Copy)]
enum Launch {
    Cargo,
    Binary,
}

fn ours(
    root: &Path,
    launch: Launch,
    source: &str,
    destination: &str,
    images: &[String],
    jobs: usize,
) -> Result<(Duration, u64)> {
    let mut args = vec![
        "images".into(),
        "mirror".into(),
        "--to".into(),
        format!("{destination}/bench"),
        "--jobs".into(),
        jobs.to_string(),
    ];
    for image in images {
        args.extend(["--image".into(), format!("{source}/{image}:v1")]);
    }
    match launch {
        Launch::Cargo => {
            let mut cargo = vec!["xtask".to_string()];
            cargo.extend(args);
            measure("cargo", &cargo, root)
        }
        Launch::Binary => {
            let binary = std::env::current_exe()?;
            measure(&binary.to_string_lossy(), &args, root)
        }
    }
}

/// skopeo the way `skopeo sync` works: one image after another.
fn skopeo(source: &str, destination: &str, images: &[String]) -> Result<(Duration, u64)> {
    let mut total = Duration::ZERO;
    let mut peak = 0;
    for image in images {
        let args: Vec<String> = [
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("docker://{source}/{image}:v1"),
            format!("docker://{destination}/bench/{image}:v1"),
        ])
        .collect();
        let (time, rss) = measure("skopeo", &args, Path::new("/"))?;
        total += time;
        peak = peak.max(rss);
    }
    Ok((total, peak))
}

/// The machine's limit for one blob: a plain GET piped into one monolithic PUT.
fn raw_copy(source: &str, destination: &str, digest: &str, size: u64) -> Result<Duration> {
    let script = format!(
        "set -e; \
         loc=$(curl -sf -X POST -o /dev/null -D - 'http://{destination}/v2/raw/big/blobs/uploads/' | tr -d '\\r' | awk 'tolower($1)==\"location:\" {{print $2}}'); \
         case \"$loc\" in http*) ;; *) loc=\"http://{destination}$loc\";; esac; \
         case \"$loc\" in *\\?*) sep='&';; *) sep='?';; esac; \
         curl -sf 'http://{source}/v2/corpus/big/blobs/{digest}' \
           | curl -sf -X PUT -H 'Content-Type: application/octet-stream' -H 'Content-Length: {size}' -H 'Transfer-Encoding:' -T - \"$loc${{sep}}digest={digest}\" -o /dev/null"
    );
    let started = Instant::now();
    let status = Command::new("sh").arg("-c").arg(&script).status()?;
    if !status.success() {
        bail!("the raw GET→PUT copy failed");
    }
    Ok(started.elapsed())
}

struct Row {
    what: String,
    ours: Duration,
    baseline: Duration,
    baseline_name: &'static str,
}

impl BenchMirrorArgs {
    pub fn run(self, ctx: &crate::context::Ctx) -> Result<()> {
        let root = ctx.root.as_path();
        require_tools()?;
        let work: PathBuf = root.join("target/bench");
        std::fs::create_dir_all(&work)?;
        let source = LocalRegistry::start(&work)?;
        let source_host = Registry::parse(&source.addr)?;
        let (images, big_size, big_digest) = ctx.block_on(async {
            let registry = ctx.registries.get(&source_host).await?;
            corpus(&registry, self.images, self.big_layer_mib).await
        })?;

        if let Ok(seconds) = std::env::var("XTASK_BENCH_HOLD") {
            eprintln!(
                "source registry with the corpus at {} for {seconds}s",
                source.addr
            );
            std::thread::sleep(Duration::from_secs(seconds.parse().unwrap_or(60)));
        }
        let mut rows = Vec::new();
        let mut rss = (0u64, 0u64);
        let all: Vec<String> = images
            .iter()
            .cloned()
            .chain(["corpus/big".to_string()])
            .collect();
        for round in 0..self.rounds {
            eprintln!("round {} of {}", round + 1, self.rounds);
            // Fresh destinations every time: mounts from an earlier copy would flatter us.
            let full_then_noop = |launch: Launch| -> Result<(Duration, Duration)> {
                let dst = LocalRegistry::start(&work)?;
                let (full, _) = ours(root, launch, &source.addr, &dst.addr, &images, self.jobs)?;
                let (noop, _) = ours(root, launch, &source.addr, &dst.addr, &images, self.jobs)?;
                Ok((full, noop))
            };
            let (full, noop) = full_then_noop(Launch::Cargo)?;
            let (full_binary, noop_binary) = full_then_noop(Launch::Binary)?;
            let skopeo_dst = LocalRegistry::start(&work)?;
            let (skopeo_full, skopeo_rss) = skopeo(&source.addr, &skopeo_dst.addr, &images)?;
            let (skopeo_noop, _) = skopeo(&source.addr, &skopeo_dst.addr, &images)?;
            drop(skopeo_dst);
            let big_dst = LocalRegistry::start(&work)?;
            let (big, _) = ours(
                root,
                Launch::Cargo,
                &source.addr,
                &big_dst.addr,
                &["corpus/big".to_string()],
                self.jobs,
            )?;
            drop(big_dst);
            let raw_dst = LocalRegistry::start(&work)?;
            let raw = raw_copy(&source.addr, &raw_dst.addr, &big_digest, big_size)?;
            drop(raw_dst);
            // The tool's own peak memory, over everything at once including the big layer.
            let rss_dst = LocalRegistry::start(&work)?;
            let (_, our_rss) = ours(
                root,
                Launch::Binary,
                &source.addr,
                &rss_dst.addr,
                &all,
                self.jobs,
            )?;
            drop(rss_dst);
            rss = (rss.0.max(our_rss), rss.1.max(skopeo_rss));
            let n = images.len();
            let runs = [
                ("cargo xtask", full, noop),
                ("binary", full_binary, noop_binary),
            ];
            for (launch, full, _) in runs {
                rows.push(Row {
                    what: format!("full mirror, {n} images ({launch})"),
                    ours: full,
                    baseline: skopeo_full,
                    baseline_name: "skopeo",
                });
            }
            for (launch, _, noop) in runs {
                rows.push(Row {
                    what: format!("no-op re-mirror ({launch})"),
                    ours: noop,
                    baseline: skopeo_noop,
                    baseline_name: "skopeo",
                });
            }
            rows.push(Row {
                what: format!(
                    "{} layer alone (cargo xtask)",
                    crate::mirror::human_bytes(big_size)
                ),
                ours: big,
                baseline: raw,
                baseline_name: "curl GET|PUT",
            });
        }
        let bundles = bundles::incremental_save(ctx, &work, &source.addr, &images)?;
        println!("{}\n{bundles}", render(&rows, rss));
        Ok(())
    }
}

fn require_tools() -> Result<()> {
    for tool in ["docker-registry", "skopeo", "curl", "/usr/bin/time"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            bail!("the benchmark needs {tool}; run .ci/provision (Debian) to install it");
        }
    }
    Ok(())
}

/// Builds the corpus in `registry`: its image names, the big layer's size and digest.
async fn corpus(
    registry: &Client,
    images: usize,
    big_mib: u64,
) -> Result<(Vec<String>, u64, String)> {
    let (images, big_size) = build_corpus(registry, images, big_mib).await?;
    let big = Repository::parse("corpus/big")?;
    let (index, _) = registry
        .get_manifest(&big, &Reference::parse("v1")?)
        .await?;
    let index = Document::parse(&index, "corpus/big")?;
    let child = index
        .children()
        .first()
        .ok_or_else(|| anyhow!("corpus/big has no child"))?;
    let (manifest, _) = registry
        .get_manifest(&big, &Reference::Digest(descriptor_digest(child)?))
        .await?;
    let manifest = Document::parse(&manifest, "corpus/big's image")?;
    let big_digest = manifest
        .blobs()
        .get(1)
        .ok_or_else(|| anyhow!("corpus/big has no layer"))?
        .digest()
        .to_string();
    Ok((images, big_size, big_digest))
}

fn render(rows: &[Row], rss: (u64, u64)) -> String {
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.what.clone(),
                format!("{:.2}s", r.ours.as_secs_f64()),
                format!("{:.2}s ({})", r.baseline.as_secs_f64(), r.baseline_name),
                format!(
                    "{:.2}",
                    r.ours.as_secs_f64() / r.baseline.as_secs_f64().max(1e-9)
                ),
            ]
        })
        .collect();
    let mut out = crate::report::table(&["MEASURE", "OURS", "BASELINE", "RATIO"], &table_rows);
    let _ = write!(out, "peak RSS: xtask {} MiB (whole corpus and the big layer in one run), skopeo {} MiB (largest single copy)", rss.0 / 1024, rss.1 / 1024);
    out
}
