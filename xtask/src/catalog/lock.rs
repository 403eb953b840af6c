//! Tools locks (`agents/<image>/tools.toml`): every artifact a template downloads, with
//! its version, URL pattern and digest per architecture. Loaded with the catalog.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

use crate::text::{printable, toml_error};

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
    /// For a Go-built tool: the Go release its published binaries were built with, as a
    /// public record shows it (cite it in `source`). `images tools` warns when it is
    /// older than the lock's `go`.
    #[serde(default)]
    pub built_with_go: Option<String>,
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
    let lock: ToolsLock = toml::from_str(&text).map_err(|e| toml_error(label, &text, &e))?;
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
    if let Some(go) = &tool.built_with_go {
        if go_release(go).is_none() {
            bail!(
                "built_with_go '{}' must be a Go release such as 1.25.5",
                printable(go)
            );
        }
    }
    for (arch, sum) in &tool.sha256 {
        if !ARCHES.contains(&arch.as_str()) {
            bail!(
                "sha256.{arch}: architecture must be one of {}",
                ARCHES.join(", ")
            );
        }
        if !sum.is_empty() && !is_sha256_hex(sum) {
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

/// A Go release ("1.25.5", "1.25") as numbers to compare.
pub fn go_release(text: &str) -> Option<Vec<u32>> {
    let parts: Option<Vec<u32>> = text.split('.').map(|p| p.parse().ok()).collect();
    parts.filter(|p| (2..=3).contains(&p.len()))
}

/// Warnings for Go-built tools whose binaries were built with an older Go than the
/// lock's own `go`: such a tool may refuse the modules that Go writes (golangci-lint
/// stops on a module whose `go` line is newer than its own Go).
pub fn older_go_warnings(lock: &ToolsLock) -> Vec<String> {
    let Some(go) = lock.tools.get("go") else {
        return Vec::new();
    };
    let Some(lock_go) = go_release(&go.version) else {
        return Vec::new();
    };
    lock.tools
        .iter()
        .filter_map(|(name, tool)| {
            let built = tool.built_with_go.as_deref()?;
            (go_release(built)? < lock_go).then(|| {
                format!(
                    "{name} {} was built with go{built}, older than the lock's go {}: it may refuse modules for go {}",
                    tool.version, go.version, go.version
                )
            })
        })
        .collect()
}

/// 64 lower-case hex digits, as a published sha256 is written: the digest rule itself.
fn is_sha256_hex(sum: &str) -> bool {
    crate::oci::Digest::parse(&format!("sha256:{sum}")).is_ok()
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
            built_with_go: None,
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
        let mut bad_go = good.clone();
        bad_go.built_with_go = Some("go1.25; x".into());
        assert!(validate_tool(dir.path(), "t", &bad_go).is_err());
    }

    #[test]
    fn a_tool_built_with_an_older_go_is_named() {
        let mut lock = ToolsLock::default();
        lock.tools
            .insert("go".into(), tool("https://h.example/go", "1.25.5"));
        let mut lint = tool("https://h.example/lint", "2.1.6");
        lint.built_with_go = Some("1.24.2".into());
        lock.tools.insert("golangci-lint".into(), lint.clone());
        let warnings = older_go_warnings(&lock);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("golangci-lint 2.1.6 was built with go1.24.2"));
        lint.built_with_go = Some("1.25.5".into());
        lock.tools.insert("golangci-lint".into(), lint);
        assert!(older_go_warnings(&lock).is_empty());
    }
}
