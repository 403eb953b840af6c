//! `mirror load --verify-key ...`: the signatures inside a bundle are checked before
//! anything is pushed, with no network. One pass notes where every member is and reads
//! `index.json`; manifests and signature payloads are then read by seeking.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use crate::naming::{has_host, ImageRef};
use crate::oci::image::{descriptor_digest, Document};
use crate::oci::layout::{
    classify, folder_file, read_document, Member, Members, Skipping, CONTAINERD_NAME, REF_NAME,
};
use crate::oci::Digest;
use crate::text::printable;
use crate::trust::{self, Layer, Policy, Rule};

/// Manifests checked below one image; far beyond any real index.
const MAX_MANIFESTS: usize = 1000;

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

/// A cosign attachment tag (`sha256-<hex>.sig/.att/.sbom`): not an image of its own.
fn is_attachment(name: &str) -> bool {
    let tag = name.rsplit_once(':').map_or("", |(_, t)| t);
    ["sig", "att", "sbom"].iter().any(|suffix| {
        tag.strip_suffix(suffix)
            .and_then(|t| t.strip_suffix('.'))
            .and_then(|t| t.strip_prefix("sha256-"))
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

pub(super) fn check_bundle(path: &Path, rule: &Rule) -> Result<Refused> {
    let Rule::Signed(policy) = rule else {
        return Ok(Refused::default());
    };
    let (mut members, index) = open(path)?;
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
    let mut refused = Refused::default();
    for (name, digest) in &entries {
        // Referrers (`REPO@digest`) and signatures go with the image they belong to.
        if name
            .as_deref()
            .is_some_and(|n| is_attachment(n) || n.contains('@'))
        {
            continue;
        }
        let mut tree = BTreeSet::new();
        let verdict = match name.as_deref().filter(|n| has_host(n)) {
            None => Err("it is named without a registry host, so the repository its signature claims cannot be checked".to_string()),
            Some(n) => {
                let source = ImageRef::parse(n).map_err(|e| anyhow!("{}", printable(&e.to_string())))?;
                check_image(&mut members, &by_name, &source, digest, policy, &mut tree)?
            }
        };
        let shown = name
            .as_deref()
            .map_or_else(|| digest.to_string(), printable);
        match verdict {
            Ok(note) => eprintln!("verified {shown} ({note})"),
            Err(why) => {
                refused.lines.push(format!("REFUSED  {shown}: {why}"));
                refused.entries.insert((name.clone(), digest.clone()));
                // Its signatures (of any manifest of its tree) stay behind with it.
                tree.insert(digest.clone());
                let tags: BTreeSet<String> = tree
                    .iter()
                    .map(|d| d.as_str().replacen(':', "-", 1))
                    .collect();
                // Only this repository's: another image may share the same manifests.
                let repository = name
                    .as_deref()
                    .and_then(|n| n.rsplit_once(':'))
                    .map(|(r, _)| r);
                for (other, d) in &entries {
                    let tag = other
                        .as_deref()
                        .filter(|o| is_attachment(o))
                        .and_then(|o| o.rsplit_once(':'));
                    if tag.is_some_and(|(r, t)| {
                        Some(r) == repository
                            && t.rsplit_once('.')
                                .is_some_and(|(hex, _)| tags.contains(hex))
                    }) {
                        refused.entries.insert((other.clone(), d.clone()));
                    }
                }
            }
        }
    }
    Ok(refused)
}

/// The members of a tar (by offset) or a folder, and index.json's bytes.
fn open(path: &Path) -> Result<(Members, Vec<u8>)> {
    if path.is_dir() {
        let Some((mut file, size)) = folder_file(path, "index.json")? else {
            bail!("no index.json, so nothing says which images it holds");
        };
        let index = read_document(&mut file, size, "index.json")?;
        return Ok((Members::Folder(path.to_path_buf()), index));
    }
    let file = File::open(path).map_err(|e| anyhow!("cannot open it: {e}"))?;
    let mut archive = tar::Archive::new(Skipping(BufReader::with_capacity(1 << 20, file)));
    let mut toc = HashMap::new();
    let mut index = None;
    for entry in archive.entries_with_seek().context("not a tar archive")? {
        let mut entry = entry.context("not a tar archive, or one cut short or damaged")?;
        let size = entry.size();
        match classify(entry.header(), &entry.path_bytes())? {
            Member::Index => index = Some(read_document(&mut entry, size, "index.json")?),
            Member::Blob(digest) => {
                toc.insert(digest, (entry.raw_file_position(), size));
            }
            Member::Layout | Member::Other => {}
        }
    }
    let Some(index) = index else {
        bail!("no index.json, so nothing says which images it holds");
    };
    let file = archive.into_inner().0;
    Ok((Members::Tar { file, toc }, index))
}

/// A member by digest, whole, checked against its digest.
fn read(members: &mut Members, digest: &Digest, limit: u64) -> Result<Option<Vec<u8>>> {
    let Some((mut reader, size)) = members.open(digest)? else {
        return Ok(None);
    };
    if size > limit {
        bail!("{digest} is {size} bytes, more than a manifest or signature may be");
    }
    let bytes = read_document(&mut reader, size, &format!("blob {digest}"))?;
    if !digest.matches(&bytes) {
        bail!(crate::oci::Error::DigestMismatch {
            what: format!("blob {digest} in the bundle")
        });
    }
    Ok(Some(bytes))
}

/// Ok(Ok(note)) when the image and every manifest below it carry a signature the policy
/// accepts; Ok(Err(why)) when refused.
fn check_image(
    members: &mut Members,
    by_name: &BTreeMap<&str, &Digest>,
    source: &ImageRef,
    top: &Digest,
    policy: &Policy,
    seen: &mut BTreeSet<Digest>,
) -> Result<Result<String, String>> {
    let repository = format!("{}/{}", source.registry, source.repository);
    let mut signers = Vec::new();
    let mut stack = vec![("image", top.clone())];
    while let Some((what, digest)) = stack.pop() {
        if !seen.insert(digest.clone()) {
            continue;
        }
        if seen.len() > MAX_MANIFESTS {
            bail!("{repository} has more than {MAX_MANIFESTS} manifests; refusing it");
        }
        let Some(bytes) = read(members, &digest, crate::oci::registry::MAX_MANIFEST_BYTES)? else {
            bail!("manifest {digest} is not in the bundle; it is incomplete: write it again");
        };
        let document = Document::parse(&bytes, &format!("manifest {digest}"))?;
        let what = if what == "image" && matches!(document, Document::Index(_)) {
            "the index"
        } else {
            what
        };
        for child in document.children() {
            let child =
                descriptor_digest(child).with_context(|| format!("an entry of index {digest}"))?;
            stack.push(("its manifest", child));
        }
        let refuse = |why: String| Ok(Err(format!("{what} {digest}: {why}")));
        let Some(tag) = trust::signature_tag(&digest) else {
            return refuse("cosign has no signature tag for a sha512 digest".into());
        };
        let Some(signature) = by_name.get(format!("{repository}:{tag}").as_str()) else {
            return refuse(format!("unsigned (no {tag} in the bundle)"));
        };
        let Some(manifest) = read(members, signature, crate::oci::registry::MAX_MANIFEST_BYTES)?
        else {
            bail!("manifest {signature} is not in the bundle; it is incomplete: write it again");
        };
        let layers = match trust::signature_layers(&manifest) {
            Ok(layers) => layers,
            Err(e) => return refuse(format!("{tag}: {e:#}")),
        };
        let mut read_layers = Vec::new();
        for (layer, _, annotations) in layers {
            let Some(payload) = read(members, &layer, trust::MAX_PAYLOAD_BYTES)? else {
                return refuse(format!("{tag}: its payload {layer} is not in the bundle"));
            };
            read_layers.push(Layer {
                payload,
                annotations,
            });
        }
        match trust::check(policy, &digest, source, &read_layers) {
            Ok(signer) if !signers.contains(&signer) => signers.push(signer),
            Ok(_) => {}
            Err(why) => return refuse(why),
        }
    }
    Ok(Ok(format!(
        "{} manifests signed by {}",
        seen.len(),
        signers.join(", ")
    )))
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
    }
}
