//! An image's signatures, wherever a publisher put them: cosign's legacy
//! `sha256-<hex>.sig` tag, or Sigstore bundles stored as OCI 1.1 referrers (found through
//! the referrers API or its `sha256-<hex>` fallback index). The policy's shape says which
//! manifests of the image must carry one. The same check reads a registry or a bundle
//! file, through `SignatureSource`.

use anyhow::{bail, Result};
use bytes::Bytes;
use std::future::Future;

use super::bundle;
use super::verify::{self as legacy, Layer, Policy, Shape};
use crate::naming::ImageRef;
use crate::oci::image::{self, Document};
use crate::oci::registry::Client;
use crate::oci::{Digest, Reference, Repository, Tag};

/// Manifests checked below one image; far beyond any real index.
const MAX_MANIFESTS: usize = 1000;
/// Referrers read per manifest.
const MAX_REFERRERS: usize = 64;

/// Where an image's manifests and signatures are read from: a registry, or a bundle.
pub trait SignatureSource {
    /// A manifest by digest, bounded and checked against its digest; Err when missing.
    fn manifest(&self, digest: &Digest) -> impl Future<Output = Result<Bytes>>;
    /// What a tag of the image's repository points at, if it exists.
    fn tag(&self, tag: &Tag) -> impl Future<Output = Result<Option<Digest>>>;
    /// The referrers of `digest` from the referrers API; None when there is no API, and
    /// the fallback tag is read instead.
    fn referrers(&self, digest: &Digest) -> impl Future<Output = Result<Option<Vec<Digest>>>>;
    /// A blob of at most `limit` bytes, checked against its digest.
    fn small_blob(&self, digest: &Digest, limit: u64) -> impl Future<Output = Result<Bytes>>;
}

/// A repository of a registry, as the signature check reads it.
pub struct Remote<'a> {
    pub registry: &'a Client,
    pub repository: &'a Repository,
}

impl SignatureSource for Remote<'_> {
    async fn manifest(&self, digest: &Digest) -> Result<Bytes> {
        let reference = Reference::Digest(digest.clone());
        Ok(self
            .registry
            .get_manifest(self.repository, &reference)
            .await?
            .0)
    }

    async fn tag(&self, tag: &Tag) -> Result<Option<Digest>> {
        let reference = Reference::Tag(tag.clone());
        let described = self
            .registry
            .head_manifest(self.repository, &reference)
            .await?;
        Ok(described.map(|d| d.digest))
    }

    async fn referrers(&self, digest: &Digest) -> Result<Option<Vec<Digest>>> {
        let Some(index) = self.registry.referrers(self.repository, digest).await? else {
            return Ok(None);
        };
        Ok(Some(image::referrer_digests(&index).map_err(|e| {
            anyhow::anyhow!("the referrers of {digest}: {e}")
        })?))
    }

    async fn small_blob(&self, digest: &Digest, limit: u64) -> Result<Bytes> {
        Ok(self
            .registry
            .get_small_blob(self.repository, digest, limit)
            .await?)
    }
}

/// Whether `digest` carries anything that looks like a signature (a `.sig` tag, or a
/// bundle referrer announcing cosign's sign predicate), unchecked: whether a signer
/// has been here, so a rerun does not sign again.
pub async fn looks_signed(source: &impl SignatureSource, digest: &Digest) -> Result<bool> {
    if let Some(tag) = legacy::signature_tag(digest) {
        if source.tag(&tag).await?.is_some() {
            return Ok(true);
        }
    }
    Ok(!announced(source, digest, bundle::SIGN_PREDICATE)
        .await?
        .is_empty())
}

/// The DSSE envelopes of the bundle referrers of `digest` that announce `predicate`,
/// newest last, unverified (what an SBOM reader shows, as it shows `.att` layers).
pub async fn bundle_envelopes(
    source: &impl SignatureSource,
    digest: &Digest,
    predicate: &str,
) -> Result<Vec<Vec<u8>>> {
    let limit = bundle::MAX_BUNDLE_BYTES * 64;
    let mut found = Vec::new();
    for layer in announced(source, digest, predicate).await? {
        if layer.size() > limit {
            bail!("a Sigstore bundle of {} bytes; refusing it", layer.size());
        }
        let bytes = source
            .small_blob(&image::descriptor_digest(&layer)?, limit)
            .await?;
        found.push(bundle::envelope(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    Ok(found)
}

/// The bundle layers of the referrers of `digest` whose manifest announces `predicate`
/// (cosign's `dev.sigstore.bundle.predicateType` annotation, which is not signed).
async fn announced(
    source: &impl SignatureSource,
    digest: &Digest,
    predicate: &str,
) -> Result<Vec<oci_spec::image::Descriptor>> {
    let mut found = Vec::new();
    for referrer in referrers(source, digest).await?.0 {
        let bytes = source.manifest(&referrer).await?;
        let Ok(Document::Image(manifest)) = Document::parse(&bytes, "a referrer") else {
            continue;
        };
        let announces = manifest.annotations().as_ref().is_some_and(|a| {
            a.get("dev.sigstore.bundle.predicateType")
                .is_some_and(|p| p == predicate)
        });
        let layer = manifest
            .layers()
            .first()
            .filter(|l| bundle::is_bundle(l.media_type().as_ref()));
        if let (true, Some(layer)) = (announces, layer) {
            found.push(layer.clone());
        }
    }
    Ok(found)
}

/// What the check found: the tags that carry verified signatures (to copy as they were
/// when checked) and a line for the summary.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub signatures: Vec<(Tag, Digest)>,
    pub note: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Top,
    Platform,
    Attestation,
}

struct Node {
    what: &'static str,
    digest: Digest,
    role: Role,
}

/// Ok(Err(reason)) when the policy refuses the image; Err when it could not be checked.
pub async fn check(
    source: &impl SignatureSource,
    image: &ImageRef,
    top: &Digest,
    platforms: Option<&[String]>,
    policy: &Policy,
) -> Result<Result<Verdict, String>> {
    let nodes = tree(source, top, platforms).await?;
    let is_index = nodes.len() > 1;
    let platform_nodes: Vec<&Node> = if is_index {
        nodes.iter().filter(|n| n.role == Role::Platform).collect()
    } else {
        nodes.iter().collect()
    };
    let mut found = Found::default();
    let top = &nodes[..1];
    let outcome = match policy.shape {
        Shape::Index => found.all(source, image, policy, top).await?,
        Shape::Platforms => found.all(source, image, policy, &platform_nodes).await?,
        Shape::All => found.all(source, image, policy, &nodes).await?,
        Shape::Either => match found.all(source, image, policy, top).await? {
            Err(top_reason) if is_index => {
                match found.all(source, image, policy, &platform_nodes).await? {
                    Ok(()) => {
                        found.unsigned_index = true;
                        Ok(())
                    }
                    Err(why) => Err(format!(
                        "{top_reason}; nor is every platform manifest signed: {why}"
                    )),
                }
            }
            other => other,
        },
    };
    if let Err(why) = outcome {
        return Ok(Err(why));
    }
    // What proves trust travels with the image: every signature of its manifests,
    // those checked pinned to what was checked.
    let mut signatures = found.signatures.clone();
    for (tag, digest) in signature_tags(source, &nodes[0].digest).await? {
        if !signatures.iter().any(|(t, _)| *t == tag) {
            signatures.push((tag, digest));
        }
    }
    let signers = found.signers.join(", ");
    let mut note = if found.unsigned_index || policy.shape == Shape::Platforms {
        format!(
            "verified: {} platform manifests signed by {signers}",
            found.manifests
        )
    } else if policy.shape == Shape::All && nodes.len() > 1 {
        format!(
            "verified: {} manifests signed by {signers}",
            found.manifests
        )
    } else {
        format!("verified: {} signed by {signers}", nodes[0].what)
    };
    if found.unsigned_index {
        note.push_str("; the index itself is unsigned");
    }
    Ok(Ok(Verdict { signatures, note }))
}

#[derive(Default)]
struct Found {
    signatures: Vec<(Tag, Digest)>,
    signers: Vec<String>,
    manifests: usize,
    unsigned_index: bool,
}

impl Found {
    /// Every node carries a signature the policy accepts; else the first one's reason.
    async fn all(
        &mut self,
        source: &impl SignatureSource,
        image: &ImageRef,
        policy: &Policy,
        nodes: &[impl std::borrow::Borrow<Node>],
    ) -> Result<Result<(), String>> {
        for node in nodes {
            let node = node.borrow();
            match signature(source, image, &node.digest, policy).await? {
                Ok((tags, signer)) => {
                    self.signatures.extend(tags);
                    self.manifests += 1;
                    if !self.signers.contains(&signer) {
                        self.signers.push(signer);
                    }
                }
                Err(why) => return Ok(Err(format!("{} {}: {why}", node.what, node.digest))),
            }
        }
        Ok(Ok(()))
    }
}

/// The signature tags (cosign's `.sig`, the referrers fallback index) of the image and
/// every manifest below it, unchecked: what a copy carries along without a policy.
pub async fn signature_tags(
    source: &impl SignatureSource,
    top: &Digest,
) -> Result<Vec<(Tag, Digest)>> {
    let mut found = Vec::new();
    for node in tree(source, top, None).await? {
        let tags = [
            legacy::signature_tag(&node.digest),
            fallback_tag(&node.digest),
        ];
        for tag in tags.into_iter().flatten() {
            if let Some(digest) = source.tag(&tag).await? {
                found.push((tag, digest));
            }
        }
    }
    Ok(found)
}

/// The image's manifest digests: the top, then an index's children.
pub async fn manifests(source: &impl SignatureSource, top: &Digest) -> Result<Vec<Digest>> {
    Ok(tree(source, top, None)
        .await?
        .into_iter()
        .map(|n| n.digest)
        .collect())
}

/// The tag of the index that lists `digest`'s referrers where there is no referrers API.
pub fn fallback_tag(digest: &Digest) -> Option<Tag> {
    Tag::parse(&digest.as_str().replacen(':', "-", 1)).ok()
}

/// The image's top manifest, then the children of an index (the kept platforms of a
/// subset and their attestations), each with its role.
async fn tree(
    source: &impl SignatureSource,
    top: &Digest,
    platforms: Option<&[String]>,
) -> Result<Vec<Node>> {
    let bytes = source.manifest(top).await?;
    let document = Document::parse(&bytes, &format!("manifest {top}"))?;
    let is_index = matches!(document, Document::Index(_));
    let mut nodes = vec![Node {
        what: if is_index { "the index" } else { "the image" },
        digest: top.clone(),
        role: Role::Top,
    }];
    let children = document.children();
    if children.len() > MAX_MANIFESTS {
        bail!("index {top} lists more than {MAX_MANIFESTS} manifests; refusing it");
    }
    let kept = match platforms {
        Some(platforms) => image::subset(children, platforms),
        None => children.to_vec(),
    };
    for child in &kept {
        nodes.push(Node {
            what: "its manifest",
            digest: image::descriptor_digest(child)?,
            role: if image::is_attestation(child) {
                Role::Attestation
            } else {
                Role::Platform
            },
        });
    }
    Ok(nodes)
}

/// A signature of `digest` the policy accepts: the tags to carry and the signer; or why
/// there is none.
async fn signature(
    source: &impl SignatureSource,
    image: &ImageRef,
    digest: &Digest,
    policy: &Policy,
) -> Result<Result<(Vec<(Tag, Digest)>, String), String>> {
    let mut tags = Vec::new();
    let mut reason = None;
    let sig_tag = legacy::signature_tag(digest);
    if let Some(tag) = &sig_tag {
        if let Some(manifest) = source.tag(tag).await? {
            tags.push((tag.clone(), manifest.clone()));
            match legacy_signer(source, image, digest, policy, tag, &manifest).await? {
                Ok(signer) => return Ok(Ok((tags, signer))),
                Err(why) => reason = Some(why),
            }
        }
    }
    let (referrers, fallback) = referrers(source, digest).await?;
    if let Some(fallback) = fallback {
        tags.push(fallback);
    }
    for referrer in referrers {
        match bundle_signer(source, digest, policy, &referrer).await? {
            Some(Ok(signer)) => return Ok(Ok((tags, signer))),
            Some(Err(why)) => reason = Some(why),
            None => {}
        }
    }
    Ok(Err(reason.unwrap_or_else(|| match &sig_tag {
        Some(tag) => format!("unsigned (no {tag} and no Sigstore bundle referrer)"),
        None => "unsigned (no Sigstore bundle referrer; cosign has no signature tag for a sha512 digest)".to_string(),
    })))
}

async fn legacy_signer(
    source: &impl SignatureSource,
    image: &ImageRef,
    digest: &Digest,
    policy: &Policy,
    tag: &Tag,
    manifest: &Digest,
) -> Result<Result<String, String>> {
    let bytes = source.manifest(manifest).await?;
    let layers = match legacy::signature_layers(&bytes) {
        Ok(layers) => layers,
        Err(e) => return Ok(Err(format!("{tag}: {e:#}"))),
    };
    let mut read = Vec::new();
    for (layer, _, annotations) in layers {
        let payload = source.small_blob(&layer, legacy::MAX_PAYLOAD_BYTES).await?;
        read.push(Layer {
            payload: payload.to_vec(),
            annotations,
        });
    }
    Ok(legacy::check(policy, digest, image, &read))
}

/// The referrers of `digest`, and the fallback tag that listed them when the source has
/// no referrers API.
async fn referrers(
    source: &impl SignatureSource,
    digest: &Digest,
) -> Result<(Vec<Digest>, Option<(Tag, Digest)>)> {
    if let Some(listed) = source.referrers(digest).await? {
        return Ok((listed.into_iter().take(MAX_REFERRERS).collect(), None));
    }
    let Some(tag) = fallback_tag(digest) else {
        return Ok((Vec::new(), None));
    };
    let Some(index_digest) = source.tag(&tag).await? else {
        return Ok((Vec::new(), None));
    };
    let bytes = source.manifest(&index_digest).await?;
    let index = Document::parse(&bytes, &format!("the referrers index {tag}"))?;
    let mut listed = Vec::new();
    for descriptor in index.children().iter().take(MAX_REFERRERS) {
        listed.push(image::descriptor_digest(descriptor)?);
    }
    Ok((listed, Some((tag, index_digest))))
}

/// None when `referrer` is not a Sigstore bundle for `digest` (an SBOM in another
/// format, say); else whether the policy accepts it.
async fn bundle_signer(
    source: &impl SignatureSource,
    digest: &Digest,
    policy: &Policy,
    referrer: &Digest,
) -> Result<Option<Result<String, String>>> {
    let bytes = source.manifest(referrer).await?;
    let Ok(Document::Image(manifest)) = Document::parse(&bytes, "a referrer") else {
        return Ok(None);
    };
    let Some(layer) = manifest
        .layers()
        .first()
        .filter(|l| bundle::is_bundle(l.media_type().as_ref()))
    else {
        return Ok(None);
    };
    if manifest.subject().as_ref().map(|s| s.digest().to_string()) != Some(digest.to_string()) {
        return Ok(Some(Err(format!(
            "a bundle referrer {referrer} is listed for {digest} but names another subject"
        ))));
    }
    if layer.size() > bundle::MAX_BUNDLE_BYTES {
        return Ok(Some(Err(format!(
            "a Sigstore bundle of {} bytes; refusing it",
            layer.size()
        ))));
    }
    let layer_digest = Digest::parse(layer.digest().as_ref())?;
    let bytes = source
        .small_blob(&layer_digest, bundle::MAX_BUNDLE_BYTES)
        .await?;
    Ok(Some(bundle::check(policy, digest, &bytes)))
}
