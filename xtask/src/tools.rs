//! Tools locks (`agents/<image>/tools.toml`): every artifact a template downloads, with
//! its version, URL pattern and digest per architecture, and `images tools`, which lists
//! them or fetches them all into an artifact-mirror layout for an air gap.

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::cli::ToolsArgs;
use crate::oci::digest::{printable, Digest};
use crate::report::table;

pub const LOCK: &str = "tools.toml";
pub const ARCHES: &[&str] = &["amd64", "arm64"];

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsLock {
    #[serde(default)]
    pub tools: BTreeMap<String, Tool>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    pub version: String,
    /// `https://host/path`, with `{version}` and `{arch}` placeholders.
    pub url: String,
    /// How the URL names each Docker architecture, when not `amd64`/`arm64`.
    #[serde(default)]
    pub arch_names: BTreeMap<String, String>,
    /// Published sha256 per architecture. An empty value means none could be found:
    /// the build then fails naming the tool, and never downloads unverified.
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
    /// For artifacts published with a signature and no checksum.
    pub signature: Option<Signature>,
    /// Where the digests were read, for the next person who updates them.
    pub source: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The detached signature, same placeholders as `url`.
    pub url: String,
    /// An ASCII-armoured public key file in the image folder.
    pub key: String,
    /// The key's full fingerprint, checked before the key is trusted.
    pub fingerprint: String,
}

impl Tool {
    /// The URL for `arch`, placeholders filled.
    pub fn url_for(&self, arch: &str) -> String {
        fill(&self.url, &self.version, self.arch_name(arch))
    }

    pub fn signature_url_for(&self, arch: &str) -> Option<String> {
        self.signature
            .as_ref()
            .map(|s| fill(&s.url, &self.version, self.arch_name(arch)))
    }

    fn arch_name<'a>(&'a self, arch: &'a str) -> &'a str {
        self.arch_names.get(arch).map_or(arch, String::as_str)
    }
}

fn fill(pattern: &str, version: &str, arch: &str) -> String {
    pattern
        .replace("{version}", version)
        .replace("{arch}", arch)
}

/// Loads and checks `dir/tools.toml` when there is one. Every value ends up in a
/// Dockerfile, so each is held to a strict alphabet.
pub fn load_lock(dir: &Path, label: &str) -> Result<Option<ToolsLock>> {
    let path = dir.join(LOCK);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {label}"))?;
    let lock: ToolsLock =
        toml::from_str(&text).map_err(|e| crate::catalog::toml_error(label, &text, &e))?;
    for (name, tool) in &lock.tools {
        validate_tool(dir, name, tool).map_err(|e| anyhow!("{label}: tools.{name}: {e}"))?;
    }
    Ok(Some(lock))
}

fn validate_tool(dir: &Path, name: &str, tool: &Tool) -> Result<()> {
    let word = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if !name.chars().all(word) {
        bail!("the name may hold letters, digits, '.', '_' and '-' only");
    }
    if tool.version.is_empty() || !tool.version.chars().all(|c| word(c) || c == '+') {
        bail!(
            "version '{}' may hold letters, digits and . _ - + only",
            printable(&tool.version)
        );
    }
    validate_url("url", &tool.url)?;
    for (arch, sum) in &tool.sha256 {
        if !ARCHES.contains(&arch.as_str()) {
            bail!(
                "sha256.{arch}: architecture must be one of {}",
                ARCHES.join(", ")
            );
        }
        if !sum.is_empty() && Digest::parse(&format!("sha256:{sum}")).is_err() {
            bail!(
                "sha256.{arch} '{}' is not 64 lower-case hex digits; copy the published value",
                printable(sum)
            );
        }
    }
    for (arch, alias) in &tool.arch_names {
        if !ARCHES.contains(&arch.as_str()) || !alias.chars().all(word) {
            bail!(
                "arch_names.{arch} = '{}' is not a plain architecture name",
                printable(alias)
            );
        }
    }
    match &tool.signature {
        Some(signature) => {
            validate_url("signature.url", &signature.url)?;
            let key = dir.join(&signature.key);
            if signature.key.contains('/') || !key.is_file() {
                bail!(
                    "signature.key '{}' is not a file in the image folder",
                    printable(&signature.key)
                );
            }
            let fingerprint = &signature.fingerprint;
            if fingerprint.len() != 40 || !fingerprint.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("signature.fingerprint must be the key's 40 hex digits");
            }
        }
        None if tool.sha256.is_empty() => {
            bail!("give sha256 per architecture, or a signature to verify");
        }
        None => {}
    }
    if tool.source.trim().is_empty() {
        bail!("source: say where the digests were read");
    }
    Ok(())
}

/// An `https://host/path` with nothing a shell or a Dockerfile would read specially.
fn validate_url(field: &str, url: &str) -> Result<()> {
    let Some(rest) = url.strip_prefix("https://") else {
        bail!("{field} '{}' must start with https://", printable(url));
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~/:%+,=@{}".contains(c);
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || !rest.contains('/') || !url.chars().all(allowed) || host.contains('@') {
        bail!(
            "{field} '{}' is not a plain https://host/path URL (quotes, spaces, $, ` and \\ are refused)",
            printable(url)
        );
    }
    let placeholders = url.replace("{version}", "").replace("{arch}", "");
    if placeholders.contains('{') || placeholders.contains('}') {
        bail!("{field}: the only placeholders are {{version}} and {{arch}}");
    }
    Ok(())
}

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

pub fn run(root: &Path, args: &ToolsArgs) -> Result<()> {
    let catalog = Catalog::load(root)?;
    let artifacts = artifacts(&catalog, &args.images)?;
    if let Some(dir) = &args.fetch {
        return fetch(&artifacts, dir, args.from.as_deref());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&artifacts)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = artifacts
        .iter()
        .map(|a| {
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
        })
        .collect();
    print!(
        "{}",
        table(&["IMAGE", "TOOL", "VERSION", "ARCH", "CHECK", "URL"], &rows)
    );
    Ok(())
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
fn fetch(artifacts: &[Artifact], dir: &Path, from: Option<&str>) -> Result<()> {
    crate::oci::block_on(async {
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
    })?
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

    fn tool(url: &str, version: &str) -> Tool {
        Tool {
            version: version.into(),
            url: url.into(),
            arch_names: BTreeMap::new(),
            sha256: [("amd64".to_string(), "a".repeat(64))].into(),
            signature: None,
            source: "test".into(),
        }
    }

    #[test]
    fn hostile_values_never_reach_a_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        for (url, version) in [
            ("http://plain.example/x", "1"),
            ("https://h.example/x\nRUN curl evil", "1"),
            ("https://h.example/x\"; rm -rf /", "1"),
            ("https://h.example/$(id)", "1"),
            ("https://user@h.example/x", "1"),
            ("https://h.example/{nope}", "1"),
            ("https://h.example/x", "1\nRUN x"),
            ("https://h.example/x", "${HOME}"),
        ] {
            assert!(
                validate_tool(dir.path(), "t", &tool(url, version)).is_err(),
                "accepted {url:?} {version:?}"
            );
        }
        let mut bad_sum = tool("https://h.example/x", "1");
        bad_sum.sha256.insert("arm64".into(), "NOT-HEX".into());
        assert!(validate_tool(dir.path(), "t", &bad_sum).is_err());
        let good = tool("https://h.example/v{version}/t-{arch}.tgz", "1.2.3");
        validate_tool(dir.path(), "t", &good).unwrap();
        assert_eq!(
            good.url_for("amd64"),
            "https://h.example/v1.2.3/t-amd64.tgz"
        );
    }

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
