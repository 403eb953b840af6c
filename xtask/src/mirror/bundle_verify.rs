//! `mirror load --verify-key ...`: the signatures inside a bundle are checked before
//! anything is pushed, with no network. One pass notes where every member is and reads
//! `index.json`; manifests and signature payloads are then read by seeking.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::since::Since;
use crate::naming::{has_host, ImageRef};
use crate::oci::layout::{read_checked, scan, Members, CONTAINERD_NAME, REF_NAME};
use crate::oci::parts::Located;
use crate::oci::registry::Client;
use crate::oci::{Digest, Repository, Tag};
use crate::text::printable;
use crate::trust::image::{Remote, SignatureSource};
use crate::trust::{self, Rule};
use bytes::Bytes;
use std::cell::RefCell;
use std::sync::Arc;

/// index.json entries (name, digest) that must not be loaded, and one line per refusal.
#[derive(Default)]
pub(super) struct Refused {
    pub entries: BTreeSet<(Option<String>, Digest)>,
    pub lines: Vec<String>,
}

/// The name `load` gives an index.json entry: a full reference when one is there.
pub(super) fn entry_name(annotations: Option<&HashMap<String, String>>) -> Option<String> {
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    [annotation(REF_NAME), annotation(CONTAINERD_NAME)]
        .into_iter()
        .flatten()
        .find(|n| has_host(n))
        .or(annotation(REF_NAME))
        .map(String::from)
}

/// A cosign attachment tag (`sha256-<hex>.sig/.att/.sbom`, or the referrers fallback
/// `sha256-<hex>`): not an image of its own. The hex, when it is one.
fn attachment_of(name: &str) -> Option<&str> {
    crate::oci::name::attachment_hex(name.rsplit_once(':').map_or("", |(_, t)| t))
}

fn is_attachment(name: &str) -> bool {
    attachment_of(name).is_some()
}

/// Where a load puts each image: what an incremental bundle leaves out of its manifest
/// tree is read there (checked against its digest), since loading PREVIOUS put it there.
pub(super) struct AtDestination {
    pub registry: Arc<Client>,
    pub place: Box<Placement>,
}

/// The destination repository of an index.json entry (its name and digest).
pub(super) type Placement = dyn Fn(Option<&str>, &Digest) -> Result<Repository> + Send + Sync;

pub(super) fn check_bundle(
    located: &Located,
    rule: &Rule,
    destination: &AtDestination,
    handle: &tokio::runtime::Handle,
) -> Result<Refused> {
    let Rule::Signed(policy) = rule else {
        return Ok(Refused::default());
    };
    let (members, index) = scan(located)?;
    let index: oci_spec::image::ImageIndex = serde_json::from_slice(&index)
        .map_err(|e| anyhow!("index.json is not an OCI image index: {e}"))?;
    let mut entries = Vec::new();
    for entry in index.manifests() {
        let digest = Digest::parse(entry.digest().as_ref()).context("index.json")?;
        entries.push((entry_name(entry.annotations().as_ref()), digest));
    }
    let by_name: BTreeMap<&str, &Digest> = entries
        .iter()
        .filter_map(|(n, d)| n.as_deref().map(|n| (n, d)))
        .collect();
    let since = Since::from_annotations(index.annotations().as_ref());
    let members = RefCell::new(members);
    let mut refused = Refused::default();
    for (name, digest) in &entries {
        // Referrers (`REPO@digest`) and signatures go with the image they belong to.
        if name
            .as_deref()
            .is_some_and(|n| is_attachment(n) || n.contains('@'))
        {
            continue;
        }
        let shown = name
            .as_deref()
            .map_or_else(|| digest.to_string(), printable);
        let Some(source) = name.as_deref().filter(|n| has_host(n)) else {
            refused.refuse(&entries, name, digest, &[], format!("REFUSED  {shown}: it is named without a registry host, so the repository its signature claims cannot be checked"));
            continue;
        };
        let source =
            ImageRef::parse(source).map_err(|e| anyhow!("{}", printable(&e.to_string())))?;
        let placed = match since {
            Some(_) => Some((destination.place)(name.as_deref(), digest)?),
            None => None,
        };
        let store = Archived {
            members: &members,
            by_name: &by_name,
            repository: format!("{}/{}", source.registry, source.repository),
            since: since
                .as_ref()
                .zip(placed.as_ref())
                .map(|(since, repository)| {
                    (
                        since,
                        Remote {
                            registry: &destination.registry,
                            repository,
                        },
                    )
                }),
        };
        match handle.block_on(trust::image::check(&store, &source, digest, None, policy))? {
            Ok(verdict) => eprintln!("verified {shown} ({})", verdict.note),
            Err(why) => {
                let tree = handle.block_on(trust::image::manifests(&store, digest))?;
                refused.refuse(
                    &entries,
                    name,
                    digest,
                    &tree,
                    format!("REFUSED  {shown}: {why}"),
                );
            }
        }
    }
    Ok(refused)
}

impl Refused {
    /// Leaves out the image and its signatures (of any manifest of its tree); only
    /// this repository's, since another image may share the same manifests.
    fn refuse(
        &mut self,
        entries: &[(Option<String>, Digest)],
        name: &Option<String>,
        digest: &Digest,
        tree: &[Digest],
        line: String,
    ) {
        self.lines.push(line);
        self.entries.insert((name.clone(), digest.clone()));
        let hexes: BTreeSet<&str> = tree.iter().chain([digest]).map(|d| d.hex()).collect();
        let repository = name
            .as_deref()
            .and_then(|n| n.rsplit_once(':'))
            .map(|(r, _)| r);
        for (other, d) in entries {
            let Some(other_name) = other.as_deref() else {
                continue;
            };
            let same_repository = other_name.rsplit_once(':').map(|(r, _)| r) == repository;
            if same_repository && attachment_of(other_name).is_some_and(|h| hexes.contains(h)) {
                self.entries.insert((other.clone(), d.clone()));
            }
        }
    }
}

/// A bundle file, as the signature check reads it: tags are its index.json names.
struct Archived<'a> {
    members: &'a RefCell<Members>,
    by_name: &'a BTreeMap<&'a str, &'a Digest>,
    /// `registry/repository` of the image checked.
    repository: String,
    /// An incremental bundle's PREVIOUS, and the destination repository its load filled,
    /// where what this bundle leaves out is read.
    since: Option<(&'a Since, Remote<'a>)>,
}

impl Archived<'_> {
    async fn read(&self, digest: &Digest, limit: u64, manifest: bool) -> Result<Bytes> {
        let carried = read_checked(&mut self.members.borrow_mut(), digest, limit)?;
        if let Some(bytes) = carried {
            return Ok(Bytes::from(bytes));
        }
        let Some((since, previous)) = &self.since else {
            bail!("{digest} is not in the bundle; it is incomplete: write it again");
        };
        let read = match manifest {
            true => previous.manifest(digest).await,
            false => previous.small_blob(digest, limit).await,
        };
        read.map_err(|e| {
            anyhow!(
                "{digest} is left out of this bundle, saved --since {} (sha256:{}), and cannot be read at {}/{}: load {} there first ({e})",
                since.name,
                since.sha256,
                previous.registry.host,
                previous.repository,
                since.name
            )
        })
    }
}

impl trust::image::SignatureSource for Archived<'_> {
    async fn manifest(&self, digest: &Digest) -> Result<Bytes> {
        self.read(digest, crate::oci::registry::MAX_MANIFEST_BYTES, true)
            .await
    }

    async fn tag(&self, tag: &Tag) -> Result<Option<Digest>> {
        let name = format!("{}:{tag}", self.repository);
        Ok(self.by_name.get(name.as_str()).map(|d| (*d).clone()))
    }

    async fn referrers(&self, _digest: &Digest) -> Result<Option<Vec<Digest>>> {
        // A bundle keeps referrers as the fallback index tag, as on a registry without the API.
        Ok(None)
    }

    async fn small_blob(&self, digest: &Digest, limit: u64) -> Result<Bytes> {
        self.read(digest, limit, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_are_cosign_tags_only() {
        let hex = "a".repeat(64);
        assert!(is_attachment(&format!("r.example/a:sha256-{hex}.sig")));
        assert!(is_attachment(&format!("r.example:5000/a:sha256-{hex}.att")));
        assert!(!is_attachment("r.example/a:v1"));
        assert!(!is_attachment("r.example/a:sha256-abc.sig"));
        assert_eq!(
            attachment_of(&format!("r.example/a:sha256-{hex}")),
            Some(hex.as_str())
        );
        assert!(!is_attachment("r.example/a:sha256-abc"));
    }
}
