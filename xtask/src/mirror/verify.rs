//! Signature checks against a source registry, before `mirror` or `save` writes
//! anything: the mirrored digest and every manifest below it must carry a signature
//! the policy accepts.

use anyhow::{anyhow, Result};
use std::sync::Arc;

use crate::naming::ImageRef;
use crate::oci::image::{descriptor_digest, subset, Document};
use crate::oci::registry::Client;
use crate::oci::{Digest, Reference, Tag};
use crate::trust::{self, Layer, Policy, Rule};

/// Manifests checked below one image; far beyond any real index.
const MAX_MANIFESTS: usize = 1000;

/// What the check found, for a copy to carry along and the summary to show.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// The verified `.sig` tags and the manifests they held when checked.
    pub signatures: Vec<(Tag, Digest)>,
    /// Shown per image: who signed, or why it was not checked.
    pub note: String,
}

/// Ok(Err(reason)) when the image is refused; Err when it could not be checked.
pub async fn check(
    registry: &Client,
    source: &ImageRef,
    digest: &Digest,
    platforms: Option<&[String]>,
    rule: Option<&Arc<Rule>>,
) -> Result<Result<Verdict, String>> {
    let policy = match rule.map(|r| r.as_ref()) {
        None => {
            return Ok(Ok(Verdict {
                note: "not verified (no policy)".into(),
                ..Verdict::default()
            }))
        }
        Some(Rule::Unverified(reason)) => {
            return Ok(Ok(Verdict {
                note: format!("not verified ({})", crate::text::printable(reason)),
                ..Verdict::default()
            }))
        }
        Some(Rule::Signed(policy)) => policy,
    };
    let mut verdict = Verdict::default();
    let mut signers = Vec::new();
    for (what, manifest) in tree(registry, source, digest, platforms).await? {
        match signature(registry, source, &manifest, policy).await? {
            Ok((tag, sig_digest, signer)) => {
                verdict.signatures.push((tag, sig_digest));
                if !signers.contains(&signer) {
                    signers.push(signer);
                }
            }
            Err(why) => return Ok(Err(format!("{what} {manifest}: {why}"))),
        }
    }
    verdict.note = format!(
        "verified: {} manifests signed by {}",
        verdict.signatures.len(),
        signers.join(", ")
    );
    Ok(Ok(verdict))
}

/// The mirrored digest and every manifest below it (only the kept platforms of a
/// subset), each with what it is, for messages.
async fn tree(
    registry: &Client,
    source: &ImageRef,
    top: &Digest,
    platforms: Option<&[String]>,
) -> Result<Vec<(String, Digest)>> {
    let mut found = Vec::new();
    let mut stack = vec![("image".to_string(), top.clone())];
    while let Some((what, digest)) = stack.pop() {
        if found.iter().any(|(_, d)| *d == digest) {
            continue;
        }
        if found.len() >= MAX_MANIFESTS {
            anyhow::bail!("{source} has more than {MAX_MANIFESTS} manifests; refusing it");
        }
        let (bytes, _) = registry
            .get_manifest(&source.repository, &Reference::Digest(digest.clone()))
            .await?;
        let document = Document::parse(&bytes, &format!("manifest {digest} of {source}"))?;
        let is_index = matches!(document, Document::Index(_));
        if is_index {
            let children = document.children();
            let kept = match platforms.filter(|_| digest == *top) {
                Some(platforms) => subset(children, platforms),
                None => children.to_vec(),
            };
            for child in kept {
                let child_digest = descriptor_digest(&child)
                    .map_err(|e| anyhow!("an index entry of {digest}: {e}"))?;
                stack.push(("its manifest".to_string(), child_digest));
            }
        }
        let what = match (what.as_str(), is_index) {
            ("image", true) => "the index".to_string(),
            _ => what,
        };
        found.push((what, digest));
    }
    Ok(found)
}

/// The `.sig` tag of `digest`, read and checked: (tag, its manifest, the signer).
async fn signature(
    registry: &Client,
    source: &ImageRef,
    digest: &Digest,
    policy: &Policy,
) -> Result<Result<(Tag, Digest, String), String>> {
    let Some(tag) = trust::signature_tag(digest) else {
        return Ok(Err("cosign has no signature tag for a sha512 digest".into()));
    };
    let Some(described) = registry
        .head_manifest(&source.repository, &Reference::Tag(tag.clone()))
        .await?
    else {
        return Ok(Err(format!("unsigned (no {tag})")));
    };
    let (bytes, _) = registry
        .get_manifest(
            &source.repository,
            &Reference::Digest(described.digest.clone()),
        )
        .await?;
    let layers = match trust::signature_layers(&bytes) {
        Ok(layers) => layers,
        Err(e) => return Ok(Err(format!("{tag}: {e:#}"))),
    };
    let mut read = Vec::new();
    for (layer, _, annotations) in layers {
        let payload = registry
            .get_small_blob(&source.repository, &layer, trust::MAX_PAYLOAD_BYTES)
            .await?;
        read.push(Layer {
            payload: payload.to_vec(),
            annotations,
        });
    }
    Ok(trust::check(policy, digest, source, &read).map(|signer| (tag, described.digest, signer)))
}

/// The `.sig` tags that exist for the image and every manifest below it, unchecked.
pub async fn signatures(
    registry: &Client,
    source: &ImageRef,
    digest: &Digest,
) -> Result<Vec<(Tag, Digest)>> {
    let mut found = Vec::new();
    for (_, manifest) in tree(registry, source, digest, None).await? {
        let Some(tag) = trust::signature_tag(&manifest) else {
            continue;
        };
        if let Some(described) = registry
            .head_manifest(&source.repository, &Reference::Tag(tag.clone()))
            .await?
        {
            found.push((tag, described.digest));
        }
    }
    Ok(found)
}
