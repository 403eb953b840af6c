//! `images merge DIR...`: joins the per-platform records of `build --push --by-digest`
//! runs (one folder per runner) into each image's index, which points at exactly the
//! manifests and attestation manifests those runs pushed, then writes the tags under the
//! naming flags. Registry-side, through our client: no Docker daemon.
//!
//! An image is refused, with one line and nothing written for it, when two records give
//! one platform different digests, when a platform the catalog expects has no record,
//! when a manifest is missing from the registry, or when a platform of a child was built
//! from another parent than the one merged for that platform.

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::by_digest::Record;
use crate::catalog::Catalog;
use crate::cli::MergeArgs;
use crate::inputs;
use crate::naming::{ImageRef, Publish};
use crate::oci::image::descriptor_digest;
use crate::oci::{media, Digest, Reference, Registries};
use crate::sign::{Pushing, Subject};

impl MergeArgs {
    pub fn run(self, ctx: &crate::context::Ctx) -> Result<()> {
        let root = ctx.root.as_path();
        let catalog = Catalog::load(root)?;
        let publish = self.publish.publish();
        publish.tags()?;
        let trust = self.trust.trust(Pushing::Yes, &ctx.insecure)?;
        let (dirs, named) = dirs_and_images(&catalog, &self.paths)?;
        let records = read_records(&dirs)?;
        let selected = if named.is_empty() {
            with_records(&catalog, &records)
        } else {
            named
        };
        if selected.is_empty() {
            bail!(
                "no record in {} is for an image of this catalog",
                display_dirs(&dirs)
            );
        }
        let plans = plan(&catalog, &publish, &records, &selected)?;
        if let Some(trust) = &trust {
            trust.preflight()?;
        }
        let merged = ctx.block_on(write_all(&ctx.registries, plans))?;
        if let Some(trust) = &trust {
            let mut subjects = Vec::new();
            for m in &merged {
                if let (Some(digest), Some(tag), None) = (&m.digest, m.tags.first(), &m.refused) {
                    subjects.push(Subject::new(&m.image, tag, digest, true)?);
                }
            }
            trust.run(ctx, &subjects, &crate::project::images_out(root))?;
        }
        let refused: Vec<&Merged> = merged.iter().filter(|m| m.refused.is_some()).collect();
        for m in &refused {
            eprintln!(
                "refused: {}: {}",
                m.image,
                m.refused.as_deref().unwrap_or_default()
            );
        }
        crate::report::print_list(
            self.json,
            &merged,
            &["IMAGE", "STATUS", "INDEX", "PLATFORMS", "TAGS"],
            |m| {
                vec![
                    m.image.clone(),
                    if m.refused.is_some() {
                        "refused"
                    } else {
                        "merged"
                    }
                    .into(),
                    m.digest.clone().unwrap_or_else(|| "-".into()),
                    m.platforms.join(","),
                    m.tags.join(" "),
                ]
            },
        )?;
        if !refused.is_empty() {
            bail!(
                "{} image(s) refused, nothing written for them: {}",
                refused.len(),
                refused
                    .iter()
                    .map(|m| m.image.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(())
    }
}

/// The leading arguments that are folders, and the catalog images after them.
fn dirs_and_images(catalog: &Catalog, paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let split = paths
        .iter()
        .position(|p| !p.is_dir())
        .unwrap_or(paths.len());
    let (dirs, rest) = paths.split_at(split);
    if dirs.is_empty() {
        bail!(
            "{} is not a folder: name the `build --by-digest` folders first, then any images",
            paths[0].display()
        );
    }
    let images = rest
        .iter()
        .map(|p| {
            let name = p.to_string_lossy();
            match catalog.get(&name) {
                Ok(image) => Ok(image.name.clone()),
                Err(_) => Err(anyhow!(
                    "'{}' is neither a `build --by-digest` folder nor a catalog image \
                     (folders come first, then images)",
                    crate::text::printable(&name)
                )),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((dirs.to_vec(), images))
}

/// The catalog images some record is for, in catalog order.
fn with_records(catalog: &Catalog, records: &[Read]) -> Vec<String> {
    catalog
        .names()
        .into_iter()
        .filter(|name| records.iter().any(|r| &r.record.image == name))
        .collect()
}

/// A record and the file it came from, for messages.
struct Read {
    record: Record,
    file: PathBuf,
}

fn read_records(dirs: &[PathBuf]) -> Result<Vec<Read>> {
    let mut all = Vec::new();
    for dir in dirs {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading the --by-digest folder {}", dir.display()))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let record: Record = serde_json::from_str(&text).map_err(|e| {
                anyhow!(
                    "{} is not a `build --by-digest` record: {e}",
                    file.display()
                )
            })?;
            crate::catalog::validate_platform(&record.platform)
                .map_err(|e| anyhow!("{}: {e}", file.display()))?;
            if !media::IMAGE_MANIFEST_TYPES.contains(&record.media_type.as_str()) {
                bail!(
                    "{}: media type '{}' is not an image manifest",
                    file.display(),
                    crate::text::printable(&record.media_type)
                );
            }
            all.push(Read { record, file });
        }
    }
    if all.is_empty() {
        bail!("no `build --by-digest` records in {}", display_dirs(dirs));
    }
    Ok(all)
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One image's merge: the index to write, or why not.
struct Plan {
    image: String,
    tags: Vec<ImageRef>,
    /// Platform -> the one record for it, in index order.
    platforms: Vec<(String, Record)>,
    refused: Option<String>,
}

/// The `selected` catalog images and their parents, parents first, with their records
/// checked against each other, the catalog, and the parent's merge.
fn plan(
    catalog: &Catalog,
    publish: &Publish,
    records: &[Read],
    selected: &[String],
) -> Result<Vec<Plan>> {
    let mut plans: Vec<Plan> = Vec::new();
    for image in catalog.build_order(selected)? {
        let mut by_platform: BTreeMap<&str, Vec<&Read>> = BTreeMap::new();
        for read in records.iter().filter(|r| r.record.image == image.name) {
            by_platform
                .entry(read.record.platform.as_str())
                .or_default()
                .push(read);
        }
        let mut plan = Plan {
            image: image.name.clone(),
            tags: publish.refs(&image.name)?,
            platforms: Vec::new(),
            refused: None,
        };
        let expected = &image.spec.platforms;
        let mut order: Vec<&str> = expected.iter().map(String::as_str).collect();
        let extra: Vec<&str> = by_platform
            .keys()
            .copied()
            .filter(|p| !order.contains(p))
            .collect();
        order.extend(extra);
        for platform in order {
            let Some(reads) = by_platform.get(platform) else {
                plan.refused = Some(format!(
                    "no folder has {platform} (the catalog expects {})",
                    expected.join(", ")
                ));
                break;
            };
            let first = &reads[0];
            if let Some(other) = reads
                .iter()
                .find(|r| r.record.digest != first.record.digest)
            {
                plan.refused = Some(format!(
                    "two digests for {platform}: {} ({}) and {} ({})",
                    first.record.digest,
                    first.file.display(),
                    other.record.digest,
                    other.file.display()
                ));
                break;
            }
            plan.platforms
                .push((platform.to_string(), first.record.clone()));
        }
        if plan.refused.is_none() {
            if let Some(parent) = &image.spec.parent {
                plan.refused = parent_mismatch(&plan, parent, &plans);
            }
        }
        if plan.refused.is_some() {
            plan.platforms.clear();
        }
        plans.push(plan);
    }
    Ok(plans)
}

/// Why a child cannot be merged over its parent's merge, if it cannot.
fn parent_mismatch(plan: &Plan, parent: &str, plans: &[Plan]) -> Option<String> {
    let merged = plans.iter().find(|p| p.image == parent)?;
    if merged.refused.is_some() {
        return Some(format!("its parent {parent} was refused"));
    }
    for (platform, record) in &plan.platforms {
        let Some(used) = &record.parent else {
            continue;
        };
        let theirs = merged
            .platforms
            .iter()
            .find(|(p, _)| p == platform)
            .map(|(_, r)| &r.digest);
        if theirs != Some(used) {
            return Some(format!(
                "its {platform} image was built from {parent}@{used}, which is not the {platform} \
                 image merged for {parent}"
            ));
        }
    }
    None
}

#[derive(Serialize)]
struct Merged {
    image: String,
    digest: Option<String>,
    platforms: Vec<String>,
    tags: Vec<String>,
    refused: Option<String>,
}

async fn write_all(registries: &Registries, plans: Vec<Plan>) -> Result<Vec<Merged>> {
    let mut merged = Vec::new();
    for plan in plans {
        let mut result = Merged {
            image: plan.image.clone(),
            digest: None,
            platforms: plan.platforms.iter().map(|(p, _)| p.clone()).collect(),
            tags: plan.tags.iter().map(ToString::to_string).collect(),
            refused: plan.refused.clone(),
        };
        if plan.refused.is_none() {
            match write_one(registries, &plan).await? {
                Ok(digest) => result.digest = Some(digest.to_string()),
                Err(refusal) => result.refused = Some(refusal),
            }
        }
        merged.push(result);
    }
    Ok(merged)
}

/// Checks every manifest is in the registry as recorded, then writes the index by
/// digest and the tags. The inner `Err` is a refusal; the outer one a failure.
async fn write_one(registries: &Registries, plan: &Plan) -> Result<Result<Digest, String>> {
    let at = &plan.tags[0];
    let client = registries.get(&at.registry).await?;
    let mut manifests = Vec::new();
    let mut attestations = Vec::new();
    for (platform, record) in &plan.platforms {
        manifests.push(record.descriptor()?);
        let mut wanted = vec![(
            record.digest.clone(),
            record.size,
            record.media_type.clone(),
            format!("the {platform} image"),
        )];
        for attestation in &record.attestations {
            let digest = descriptor_digest(attestation)
                .map_err(|e| anyhow!("{}: {platform}: an attestation: {e}", plan.image))?;
            wanted.push((
                digest,
                attestation.size(),
                attestation.media_type().to_string(),
                format!("the {platform} attestation"),
            ));
            attestations.push(attestation.clone());
        }
        for (digest, size, media_type, what) in wanted {
            let described = client
                .head_manifest(&at.repository, &Reference::Digest(digest.clone()))
                .await?;
            match described {
                None => {
                    return Ok(Err(format!(
                        "{what} {digest} is not in {}/{}; run `images build --push \
                         --by-digest` for {platform} under the same naming flags",
                        at.registry, at.repository
                    )))
                }
                Some(d)
                    if d.digest != digest
                        || d.size != size
                        || (!d.media_type.is_empty() && d.media_type != media_type) =>
                {
                    return Ok(Err(format!(
                        "{}/{} answers {digest} ({what}) with {} of {} bytes ({}), not {size} \
                         bytes ({media_type})",
                        at.registry,
                        at.repository,
                        d.digest,
                        d.size,
                        crate::text::printable(&d.media_type)
                    )))
                }
                Some(_) => {}
            }
        }
    }
    let per_platform: BTreeMap<String, Digest> = plan
        .platforms
        .iter()
        .map(|(p, r)| (p.clone(), r.input_digest.clone()))
        .collect();
    manifests.extend(attestations);
    let annotations = [(
        inputs::KEY.to_string(),
        inputs::combine(&per_platform).to_string(),
    )];
    let bytes = crate::by_digest::new_index(manifests, annotations.into_iter().collect())?;
    let digest = Digest::of_sha256(&bytes);
    client
        .put_manifest(
            &at.repository,
            &Reference::Digest(digest.clone()),
            &bytes,
            media::OCI_INDEX,
        )
        .await?;
    for tag in &plan.tags {
        client
            .put_manifest(&tag.repository, &tag.pointer(), &bytes, media::OCI_INDEX)
            .await?;
    }
    Ok(Ok(digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::{project, spec};

    fn read(image: &str, digest: char, parent: Option<char>) -> Read {
        let digest_of = |c: char| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64)));
        Read {
            record: Record {
                image: image.into(),
                repository: format!("r.example/{image}"),
                platform: "linux/amd64".into(),
                digest: digest_of(digest).unwrap(),
                size: 1,
                media_type: media::OCI_MANIFEST.into(),
                input_digest: digest_of('f').unwrap(),
                attestations: vec![],
                parent: parent.map(|c| digest_of(c).unwrap()),
            },
            file: PathBuf::from(format!("{image}-{digest}.json")),
        }
    }

    fn refusals(records: &[Read]) -> BTreeMap<String, Option<String>> {
        merged(records, &["a".into(), "b".into()])
    }

    fn merged(records: &[Read], selected: &[String]) -> BTreeMap<String, Option<String>> {
        let dir = project(&[
            ("a", &spec(None)),
            ("b", &spec(Some("a"))),
            ("c", &spec(None)),
        ]);
        let catalog = Catalog::load(dir.path()).unwrap();
        let selected = match selected {
            [] => with_records(&catalog, records),
            named => named.to_vec(),
        };
        let publish = Publish {
            registry: "r.example".into(),
            org: "o".into(),
            version: "v1.0.0".into(),
            release_tags: false,
        };
        plan(&catalog, &publish, records, &selected)
            .unwrap()
            .into_iter()
            .map(|p| (p.image, p.refused))
            .collect()
    }

    #[test]
    fn a_child_merges_only_over_the_parent_it_was_built_from() {
        let good = refusals(&[read("a", 'a', None), read("b", 'b', Some('a'))]);
        assert_eq!(good["a"], None);
        assert_eq!(good["b"], None);
        let other = refusals(&[read("a", 'a', None), read("b", 'b', Some('c'))]);
        assert!(other["b"]
            .as_deref()
            .unwrap()
            .contains("built from a@sha256:ccc"));
        let twice = refusals(&[
            read("a", 'a', None),
            read("a", 'c', None),
            read("b", 'b', Some('a')),
        ]);
        assert!(twice["a"]
            .as_deref()
            .unwrap()
            .starts_with("two digests for linux/amd64"));
        assert_eq!(twice["b"].as_deref(), Some("its parent a was refused"));
        let none = refusals(&[read("a", 'a', None)]);
        assert!(none["b"]
            .as_deref()
            .unwrap()
            .starts_with("no folder has linux/amd64"));
    }

    #[test]
    fn what_was_built_is_merged_with_its_parents_and_nothing_else() {
        let child_only = merged(&[read("a", 'a', None), read("b", 'b', Some('a'))], &[]);
        assert_eq!(child_only.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(child_only.values().all(Option::is_none), "{child_only:?}");
        // Named: that image and its parents, whatever else has records.
        let named = merged(
            &[read("a", 'a', None), read("b", 'b', Some('a'))],
            &["c".into()],
        );
        assert_eq!(named.keys().collect::<Vec<_>>(), ["c"]);
        assert!(named["c"]
            .as_deref()
            .unwrap()
            .starts_with("no folder has linux/amd64"));
        let parent_too = merged(&[read("b", 'b', Some('a'))], &[]);
        assert_eq!(parent_too.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(parent_too["b"].as_deref(), Some("its parent a was refused"));
    }
}
