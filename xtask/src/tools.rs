//! `images tools`: lists the pinned downloads of the tools locks (`catalog::lock`), or
//! fetches them all into an artifact-mirror layout for an air gap.

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::catalog::lock::{ARCHES, LOCK};
use crate::catalog::Catalog;
use crate::cli::ToolsArgs;
use crate::oci::digest::Digest;
use crate::report::print_list;
use crate::text::printable;

/// One row of `images tools`.
#[derive(Debug, Serialize)]
pub struct Artifact {
    pub image: String,
    pub tool: String,
    pub version: String,
    pub arch: String,
    pub url: String,
    /// Empty when no published digest was found: such a tool cannot be built.
    pub sha256: String,
    pub signature_url: Option<String>,
    pub source: String,
}

pub fn artifacts(catalog: &Catalog, names: &[String]) -> Result<Vec<Artifact>> {
    let mut out = Vec::new();
    for image in catalog.select(names)? {
        let Some(lock) = &image.tools else { continue };
        for (name, tool) in &lock.tools {
            for arch in ARCHES {
                out.push(Artifact {
                    image: image.name.clone(),
                    tool: name.clone(),
                    version: tool.version.clone(),
                    arch: arch.to_string(),
                    url: tool.url_for(arch),
                    sha256: tool.sha256.get(*arch).cloned().unwrap_or_default(),
                    signature_url: tool.signature_url_for(arch),
                    source: tool.source.clone(),
                });
            }
        }
    }
    Ok(out)
}

impl ToolsArgs {
    pub fn run(self, ctx: &crate::context::Ctx) -> Result<()> {
        let root = ctx.root.as_path();
        let catalog = Catalog::load(root)?;
        let artifacts = artifacts(&catalog, &self.images)?;
        for image in catalog.select(&self.images)? {
            if let Some(lock) = &image.tools {
                for warning in crate::catalog::lock::older_go_warnings(lock) {
                    eprintln!("warning: agents/{}/{LOCK}: {warning}", image.name);
                }
            }
        }
        if let Some(dir) = &self.fetch {
            return fetch(ctx, &artifacts, dir, self.from.as_deref());
        }
        print_list(
            self.json,
            &artifacts,
            &["IMAGE", "TOOL", "VERSION", "ARCH", "CHECK", "URL"],
            |a| {
                let check = match (&a.sha256, &a.signature_url) {
                    (sum, _) if !sum.is_empty() => format!("sha256:{}", &sum[..12]),
                    (_, Some(_)) => "signature".into(),
                    _ => "MISSING".into(),
                };
                vec![
                    a.image.clone(),
                    a.tool.clone(),
                    a.version.clone(),
                    a.arch.clone(),
                    check,
                    a.url.clone(),
                ]
            },
        )
    }
}

/// Where `url` lives under an artifact mirror: `<host>/<path>`, exactly what
/// `--artifact-mirror` reads.
pub fn mirror_path(url: &str) -> Result<PathBuf> {
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("'{}' is not a URL", printable(url)))?;
    let mut path = PathBuf::new();
    for part in rest.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            bail!("'{}' has an empty, . or .. path segment", printable(url));
        }
        path.push(part);
    }
    Ok(path)
}

/// Downloads every artifact (and signature), verifies each, and lays them out as
/// `dir/<host>/<path>`. A file is written under a temporary name and renamed only once
/// verified, so the tree never holds an unverified artifact.
fn fetch(
    ctx: &crate::context::Ctx,
    artifacts: &[Artifact],
    dir: &Path,
    from: Option<&str>,
) -> Result<()> {
    ctx.block_on(async {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(15))
            .read_timeout(std::time::Duration::from_secs(120))
            .user_agent(concat!("kubeopencode-xtask/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut fetched = 0;
        for artifact in artifacts {
            let what = format!("{} {} ({})", artifact.tool, artifact.version, artifact.arch);
            if artifact.sha256.is_empty() && artifact.signature_url.is_none() {
                bail!("{what}: no published sha256 in agents/{}/{LOCK}; refusing an unverified download", artifact.image);
            }
            let mut files = vec![(artifact.url.clone(), artifact.sha256.clone())];
            if let Some(signature) = &artifact.signature_url {
                files.push((signature.clone(), String::new()));
            }
            for (url, sum) in files {
                let target = dir.join(mirror_path(&url)?);
                if !sum.is_empty() && target.is_file() && file_sha256(&target)? == sum {
                    continue;
                }
                let source = match from {
                    Some(mirror) => format!(
                        "{}/{}",
                        mirror.trim_end_matches('/'),
                        mirror_path(&url)?.display()
                    ),
                    None => url.clone(),
                };
                download(&http, &source, &target, &sum)
                    .await
                    .with_context(|| what.clone())?;
                eprintln!("{what}: {}", target.display());
                fetched += 1;
            }
        }
        println!(
            "{fetched} file(s) fetched and verified into {}",
            dir.display()
        );
        Ok(())
    })
}

async fn download(http: &reqwest::Client, url: &str, target: &Path, sha256: &str) -> Result<()> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow!("GET {url}: {}", crate::oci::registry::describe_reqwest(&e)))?;
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    let parent = target.parent().expect("a mirror path has a host folder");
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(parent)?;
    let expected = (!sha256.is_empty())
        .then(|| Digest::parse(&format!("sha256:{sha256}")))
        .transpose()?;
    let mut hasher = expected.as_ref().map(Digest::hasher);
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            anyhow!(
                "reading {url}: {}",
                crate::oci::registry::describe_reqwest(&e)
            )
        })?;
        if let Some(hasher) = &mut hasher {
            hasher.update(&chunk);
        }
        file.write_all(&chunk)?;
    }
    if let (Some(expected), Some(hasher)) = (expected, hasher) {
        let actual = hasher.finish();
        if actual != expected {
            bail!(
                "sha256 mismatch for {url}: got {}, the lock says {}; nothing was written",
                actual.hex(),
                expected.hex()
            );
        }
    }
    file.persist(target)
        .map_err(|e| anyhow!("writing {}: {}", target.display(), e.error))?;
    Ok(())
}

fn file_sha256(path: &Path) -> Result<String> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut file = std::fs::File::open(path)?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_paths_stay_under_the_mirror() {
        assert_eq!(
            mirror_path("https://dl.k8s.io/release/v1/bin/kubectl").unwrap(),
            Path::new("dl.k8s.io/release/v1/bin/kubectl")
        );
        assert!(mirror_path("https://h.example/../../etc/passwd").is_err());
        assert!(mirror_path("https://h.example//x").is_err());
    }
}
