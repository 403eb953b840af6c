//! `images bases`: each image's base images and the digest `image.toml` pins them to
//! (`name:tag@sha256:…`); `--update` resolves each tag again through our registry client
//! and writes the digests back, every file whole or not at all.

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::fs;
use std::path::PathBuf;

use crate::catalog::{Catalog, MANIFEST};
use crate::cli::BasesArgs;
use crate::naming::ImageRef;
use crate::oci::{Digest, Reference, Registries};

#[derive(Debug, Serialize)]
struct Base {
    image: String,
    role: String,
    /// As `image.toml` writes it, without the digest.
    reference: String,
    digest: Option<Digest>,
    /// With `--update`: whether the digest changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    updated: Option<bool>,
}

impl BasesArgs {
    pub fn run(self, ctx: &crate::context::Ctx) -> Result<()> {
        let root = ctx.root.as_path();
        let catalog = Catalog::load(root)?;
        let mut bases = Vec::new();
        for image in catalog.select(&self.images)? {
            for (role, written) in &image.spec.bases {
                let (reference, digest) = match written.split_once('@') {
                    Some((name, digest)) => (name.to_string(), Some(Digest::parse(digest)?)),
                    None => (written.clone(), None),
                };
                bases.push(Base {
                    image: image.name.clone(),
                    role: role.clone(),
                    reference,
                    digest,
                    updated: None,
                });
            }
        }
        if self.update {
            let registries = &ctx.registries;
            let prefix = self.base_registry.as_deref();
            ctx.block_on(async {
                for base in bases.iter_mut() {
                    let digest = resolve(registries, &base.reference, prefix)
                        .await
                        .with_context(|| format!("{} bases.{}", base.image, base.role))?;
                    base.updated = Some(base.digest.as_ref() != Some(&digest));
                    base.digest = Some(digest);
                }
                Ok(())
            })?;
            // Every tag resolved before any file is written.
            write_pins(&catalog, &bases)?;
        }
        let header = ["IMAGE", "ROLE", "BASE", "DIGEST", "STATE"];
        crate::report::print_list(self.json, &bases, &header, |base| {
            let state = match (base.updated, &base.digest) {
                (Some(true), _) => "updated",
                (Some(false), _) => "unchanged",
                (None, None) => "unpinned: run images bases --update",
                (None, Some(_)) => "pinned",
            };
            vec![
                base.image.clone(),
                base.role.clone(),
                base.reference.clone(),
                base.digest.as_ref().map_or("-".into(), ToString::to_string),
                state.to_string(),
            ]
        })
    }
}

/// The digest the tag points at now, read from `prefix` when given (a mirror holds the
/// same digests by construction).
async fn resolve(registries: &Registries, reference: &str, prefix: Option<&str>) -> Result<Digest> {
    let parsed = ImageRef::parse(reference)?;
    let source = match prefix {
        Some(prefix) => parsed.under_prefix(prefix)?,
        None => parsed,
    };
    let tag = source
        .tag
        .clone()
        .ok_or_else(|| anyhow!("'{reference}' has no tag to resolve; write it as name:tag"))?;
    let client = registries.get(&source.registry).await?;
    let (_, media_type, digest) = client
        .resolve(&source.repository, &Reference::Tag(tag))
        .await?;
    if !crate::oci::registry::MANIFEST_TYPES[..4].contains(&media_type.as_str()) {
        bail!("{source} is a '{media_type}', not an image or an index");
    }
    Ok(digest)
}

/// Rewrites the `[bases]` lines of each changed `image.toml` in place (comments and
/// layout kept), checks the result parses to exactly the pins, then renames it in.
fn write_pins(catalog: &Catalog, bases: &[Base]) -> Result<()> {
    for image in catalog.images.values() {
        let pins: Vec<&Base> = bases
            .iter()
            .filter(|b| b.image == image.name && b.updated == Some(true))
            .collect();
        if pins.is_empty() {
            continue;
        }
        let path: PathBuf = image.dir.join(MANIFEST);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut expected = image.spec.bases.clone();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        for pin in pins {
            let digest = pin.digest.as_ref().expect("resolved");
            let value = format!("{}@{digest}", pin.reference);
            let line = bases_line(&lines, &pin.role).ok_or_else(|| {
                anyhow!(
                    "{}: cannot find `{} = \"…\"` under [bases] to pin; write it on one line",
                    path.display(),
                    pin.role
                )
            })?;
            lines[line] = pinned_line(&lines[line], &value);
            expected.insert(pin.role.clone(), value);
        }
        let mut written = lines.join("\n");
        written.push('\n');
        let label = path.display().to_string();
        let parsed: toml::Table = written
            .parse()
            .map_err(|e| crate::text::toml_error(&label, &written, &e))?;
        let got: std::collections::BTreeMap<String, String> = parsed
            .get("bases")
            .and_then(|b| b.as_table())
            .map(|t| {
                t.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        if got != expected {
            bail!(
                "{}: pinning the bases would change more than [bases]; pin them by hand",
                path.display()
            );
        }
        let partial = path.with_extension("toml.partial");
        fs::write(&partial, &written).with_context(|| format!("writing {}", partial.display()))?;
        fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `line` (`role = "old"  # comment`) with `value` in place of the old string.
fn pinned_line(line: &str, value: &str) -> String {
    let (key, rest) = line.split_once('=').expect("found as key = \"…\"");
    let rest = rest.trim_start().strip_prefix('"').unwrap_or(rest);
    let after = rest.find('"').map_or("", |end| &rest[end + 1..]);
    format!("{}= \"{value}\"{after}", key.trim_end().to_string() + " ")
}

/// The index of the line that sets `role` in the `[bases]` table.
fn bases_line(lines: &[String], role: &str) -> Option<usize> {
    let mut in_bases = false;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_bases = trimmed == "[bases]";
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_matches('"');
        if in_bases && key == role && value.trim().starts_with('"') {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_role_only_under_bases() {
        let lines: Vec<String> = [
            "builder = \"not this\"",
            "# a comment",
            "[bases]",
            "debian = \"debian:bookworm-slim\"",
            "builder = \"debian:bookworm-slim\" # the builder",
            "[size]",
            "builder = 3",
        ]
        .map(String::from)
        .into();
        assert_eq!(bases_line(&lines, "builder"), Some(4));
        assert_eq!(bases_line(&lines, "debian"), Some(3));
        assert_eq!(bases_line(&lines, "alpine"), None);
        assert_eq!(
            pinned_line(&lines[4], "debian:bookworm-slim@sha256:ab"),
            "builder = \"debian:bookworm-slim@sha256:ab\" # the builder"
        );
    }
}
