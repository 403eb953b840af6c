//! Incremental bundles: `save --since PREVIOUS` leaves out each manifest and blob that
//! PREVIOUS carries for the same source repository, and names PREVIOUS in index.json's
//! annotations; `load` then requires what is left out to be at the destination.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::bundle_verify::entry_name;
use crate::naming::{has_host, ImageRef};
use crate::oci::image::{descriptor_digest, Document};
use crate::oci::layout::{read_checked, scan, Members};
use crate::oci::parts::{file_sha256, locate, Located};
use crate::oci::registry::MAX_MANIFEST_BYTES;
use crate::oci::Digest;
use crate::text::printable;

/// index.json annotations of an incremental bundle: PREVIOUS's sha256 (of the file,
/// or of the sidecar of a split bundle) and its file name.
pub const SINCE_SHA256: &str = "dev.kubeopencode.bundle.since.sha256";
pub const SINCE_NAME: &str = "dev.kubeopencode.bundle.since.name";

/// `registry/repository` of a source image: where a bundle's content is used.
pub type SourceRepository = String;

/// The bundle an incremental one builds on.
#[derive(Clone)]
pub struct Since {
    pub name: String,
    pub sha256: String,
}

impl Since {
    pub fn annotations(&self) -> serde_json::Value {
        serde_json::json!({ SINCE_SHA256: format!("sha256:{}", self.sha256), SINCE_NAME: self.name })
    }

    /// From index.json's annotations; None for a whole bundle.
    pub fn from_annotations(annotations: Option<&HashMap<String, String>>) -> Option<Since> {
        let annotations = annotations?;
        let sha256 = annotations.get(SINCE_SHA256)?;
        Some(Since {
            sha256: printable(sha256.strip_prefix("sha256:").unwrap_or(sha256)),
            name: annotations
                .get(SINCE_NAME)
                .map_or_else(|| "the previous bundle".into(), |n| printable(n)),
        })
    }

    /// The one line `load` refuses with when what is left out is not at the destination.
    pub fn refusal(&self, blobs: usize, manifests: usize, to: &str) -> String {
        let manifests = match manifests {
            0 => String::new(),
            n => format!(" and {n} manifests"),
        };
        format!(
            "this bundle was saved --since {} (sha256:{}), and {blobs} blobs{manifests} it leaves out are not at {to}: load {} there first, then this one; nothing was tagged",
            self.name, self.sha256, self.name
        )
    }
}

/// What PREVIOUS carries, and for which source repositories.
pub struct Previous {
    pub since: Since,
    pub carried: HashMap<Digest, BTreeSet<SourceRepository>>,
}

impl Previous {
    /// Reads PREVIOUS (a whole or split tar we wrote, itself perhaps incremental).
    pub fn read(path: &Path) -> Result<Previous> {
        let located = locate(path)?;
        let Located::Tar { pin, .. } = &located else {
            bail!(
                "{} is a folder; --since takes a bundle file written by `mirror save`",
                path.display()
            );
        };
        let since = Since {
            name: pin
                .file_name()
                .map(|n| printable(&n.to_string_lossy()))
                .unwrap_or_default(),
            sha256: file_sha256(pin)?,
        };
        let (mut members, index) = scan(&located)?;
        let index: oci_spec::image::ImageIndex = serde_json::from_slice(&index)
            .map_err(|e| anyhow::anyhow!("index.json is not an OCI image index: {e}"))?;
        let mut carried = HashMap::new();
        for entry in index.manifests() {
            let Some(name) = entry_name(entry.annotations().as_ref()).filter(|n| has_host(n))
            else {
                continue;
            };
            let Ok(image) = ImageRef::parse(&name) else {
                continue;
            };
            let top = Digest::parse(entry.digest().as_ref()).context("index.json")?;
            let repository = format!("{}/{}", image.registry, image.repository);
            walk(&mut members, top, &repository, &mut carried)?;
        }
        Ok(Previous { since, carried })
    }

    /// What NEW leaves out: each digest PREVIOUS carries for every repository that
    /// needs it (a blob PREVIOUS put in repository A is not in B at the destination).
    pub fn left_out(
        &self,
        needed: &HashMap<Digest, BTreeSet<SourceRepository>>,
    ) -> BTreeSet<Digest> {
        needed
            .iter()
            .filter(|(digest, repositories)| {
                self.carried
                    .get(*digest)
                    .is_some_and(|carried| repositories.is_subset(carried))
            })
            .map(|(digest, _)| digest.clone())
            .collect()
    }
}

/// Notes every manifest and blob under `top` that the bundle carries, for `repository`.
/// What a bundle leaves out is below nothing it carries, as `load` sees it.
fn walk(
    members: &mut Members,
    top: Digest,
    repository: &str,
    carried: &mut HashMap<Digest, BTreeSet<SourceRepository>>,
) -> Result<()> {
    let mut stack = vec![top];
    while let Some(digest) = stack.pop() {
        if members.position(&digest).is_none()
            || !carried
                .entry(digest.clone())
                .or_default()
                .insert(repository.to_string())
        {
            continue;
        }
        let Some(bytes) = read_checked(members, &digest, MAX_MANIFEST_BYTES)? else {
            continue;
        };
        let document = Document::parse(&bytes, &format!("manifest {digest}"))?;
        for child in document.children() {
            stack.push(descriptor_digest(child)?);
        }
        for blob in document.blobs() {
            let blob = descriptor_digest(blob)?;
            if members.position(&blob).is_some() {
                carried
                    .entry(blob)
                    .or_default()
                    .insert(repository.to_string());
            }
        }
    }
    Ok(())
}
