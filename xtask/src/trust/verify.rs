//! Verifying cosign signatures before anything is written: the policy (who may sign),
//! and the check of one manifest's signature layers, offline. Fetching the layers is the
//! caller's (a registry in `mirror`, a bundle in `mirror load`).

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::keys::{self, PublicKey};
use super::root::{self, TrustedRoot};
use crate::naming::ImageRef;
use crate::oci::{Digest, Tag};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIGNATURE: &str = "dev.cosignproject.cosign/signature";
const CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
const BUNDLE: &str = "dev.sigstore.cosign/bundle";
const PAYLOAD_TYPE: &str = "cosign container image signature";
/// A simple-signing payload is a few hundred bytes; anything near this is not one.
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 10;
/// Signature layers read per manifest; cosign appends one per signing.
pub const MAX_LAYERS: usize = 64;

/// Who may sign, as a list's `[verify]` table, an image's `[image.verify]`, or the
/// command line's flags. Paths are relative to the list file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    pub identity: Option<String>,
    pub identity_regexp: Option<String>,
    pub issuer: Option<String>,
    pub issuer_regexp: Option<String>,
    pub certificate_chain: Option<PathBuf>,
    pub trusted_root: Option<PathBuf>,
    /// Which digests must carry a signature (default `either`).
    pub signed: Option<Shape>,
    /// Copy this image unverified, and say why (e.g. an upstream that does not sign).
    pub skip: Option<String>,
}

/// Which manifests of an image must carry a signature the policy accepts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// The copied digest, or else every platform manifest copied (cosign's default
    /// signs the index; containers/image checks each platform manifest).
    #[default]
    Either,
    /// The copied digest itself, as `cosign verify IMAGE` checks it.
    Index,
    /// Every platform manifest copied (attestation manifests need none).
    Platforms,
    /// The copied digest and every manifest below it.
    All,
}

/// What a policy asks of one image.
#[derive(Debug)]
pub enum Rule {
    /// Copied without a check, for the reason given.
    Unverified(String),
    Signed(Policy),
}

#[derive(Debug)]
pub struct Policy {
    pub shape: Shape,
    /// The key files, for messages.
    key_names: Vec<String>,
    keys: Vec<PublicKey>,
    identity: Option<Identity>,
}

#[derive(Debug)]
struct Identity {
    subject: Matcher,
    issuer: Matcher,
    anchors: Anchors,
}

/// What a signing certificate must chain to.
#[derive(Debug)]
enum Anchors {
    /// A site's own CA, checked now; and how the setting is spelled, for messages.
    Chain(Vec<x509_cert::Certificate>, &'static str),
    /// Fulcio CAs, checked at the time a Rekor log of the root recorded the signature.
    Root(TrustedRoot),
}

#[derive(Debug)]
enum Matcher {
    Exact(String),
    Regex(regex::Regex),
}

impl Matcher {
    fn new(
        what: &str,
        sep: &str,
        exact: &Option<String>,
        pattern: &Option<String>,
    ) -> Result<Matcher> {
        match (exact, pattern) {
            (Some(_), Some(_)) => bail!("{what} and {what}{sep}regexp exclude each other"),
            (Some(exact), None) => Ok(Matcher::Exact(exact.clone())),
            // Anchored as cosign anchors it: the whole value must match.
            (None, Some(pattern)) => regex::Regex::new(&format!("^(?:{pattern})$"))
                .map(Matcher::Regex)
                .map_err(|e| {
                    anyhow!(
                        "{what}{sep}regexp '{}' is not a valid regular expression: {}",
                        pattern.escape_debug(),
                        e.to_string().replace('\n', " ")
                    )
                }),
            (None, None) => bail!("a certificate identity needs {what} or {what}{sep}regexp too"),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(exact) => exact == value,
            Matcher::Regex(regex) => regex.is_match(value),
        }
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::Exact(s) => write!(f, "{s}"),
            Matcher::Regex(r) => write!(f, "/{}/", r.as_str()),
        }
    }
}

impl PolicySpec {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.identity.is_none()
            && self.identity_regexp.is_none()
            && self.issuer.is_none()
            && self.issuer_regexp.is_none()
            && self.certificate_chain.is_none()
            && self.trusted_root.is_none()
            && self.skip.is_none()
            && self.signed.is_none()
    }

    /// Reads every file the policy names, so bad input fails before anything is copied.
    /// `names` gives the spelling of each setting in messages (flags or TOML keys).
    pub fn build(&self, base: &Path, names: &Names) -> Result<Option<Arc<Rule>>> {
        if self.is_empty() {
            return Ok(None);
        }
        if let Some(reason) = &self.skip {
            if !(PolicySpec {
                skip: None,
                ..self.clone()
            })
            .is_empty()
            {
                bail!("{} excludes every other verification setting", names.skip);
            }
            return Ok(Some(Arc::new(Rule::Unverified(reason.clone()))));
        }
        if self.keys.is_empty() && !wants_identity(self) {
            bail!(
                "{} says which digests must be signed, but not by whom: add {} or a certificate identity",
                names.signed,
                names.keys
            );
        }
        let mut keys = Vec::new();
        let mut key_names = Vec::new();
        for path in &self.keys {
            let path = base.join(path);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow!("{} {}: cannot read it: {e}", names.keys, path.display()))?;
            keys.push(
                PublicKey::from_pem(&text)
                    .with_context(|| format!("{} {}", names.keys, path.display()))?,
            );
            key_names.push(path.display().to_string());
        }
        let identity = if wants_identity(self) {
            let subject = Matcher::new(
                names.identity,
                names.sep,
                &self.identity,
                &self.identity_regexp,
            )?;
            let issuer = Matcher::new(names.issuer, names.sep, &self.issuer, &self.issuer_regexp)?;
            let read = |name: &str, file: &Path| {
                let path = base.join(file);
                let bytes = read_limited(&path, root::MAX_TRUSTED_ROOT_BYTES)
                    .map_err(|e| anyhow!("{name} {}: {e}", path.display()))?;
                Ok::<_, anyhow::Error>((path, bytes))
            };
            let anchors = match (&self.certificate_chain, &self.trusted_root) {
                (Some(_), Some(_)) => bail!(
                    "{} and {} exclude each other: a site's CA is checked now, a trusted \
                     root's Fulcio CAs at the time of a Rekor entry",
                    names.certificate_chain,
                    names.trusted_root
                ),
                (None, None) => bail!(
                    "{} needs {} (the CA that issued the signing certificates) or {} \
                     (sigstore's trusted_root.json, for keyless Fulcio certificates)",
                    names.identity,
                    names.certificate_chain,
                    names.trusted_root
                ),
                (Some(chain), None) => {
                    let (path, bytes) = read(names.certificate_chain, chain)?;
                    let roots = keys::certificates(&String::from_utf8_lossy(&bytes)).with_context(
                        || format!("{} {}", names.certificate_chain, path.display()),
                    )?;
                    Anchors::Chain(roots, names.certificate_chain)
                }
                (None, Some(file)) => {
                    let (path, bytes) = read(names.trusted_root, file)?;
                    let root = TrustedRoot::parse(&bytes)
                        .with_context(|| format!("{} {}", names.trusted_root, path.display()))?;
                    Anchors::Root(root)
                }
            };
            Some(Identity {
                subject,
                issuer,
                anchors,
            })
        } else {
            None
        };
        Ok(Some(Arc::new(Rule::Signed(Policy {
            shape: self.signed.unwrap_or_default(),
            key_names,
            keys,
            identity,
        }))))
    }
}

fn wants_identity(spec: &PolicySpec) -> bool {
    spec.identity.is_some()
        || spec.identity_regexp.is_some()
        || spec.issuer.is_some()
        || spec.issuer_regexp.is_some()
        || spec.certificate_chain.is_some()
        || spec.trusted_root.is_some()
}

/// A file of at most `limit` bytes.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| anyhow!("cannot read it: {e}"))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow!("cannot read it: {e}"))?;
    if bytes.len() as u64 > limit {
        bail!("more than {limit} bytes; refusing it");
    }
    Ok(bytes)
}

/// How each setting is spelled where it came from.
pub struct Names {
    pub keys: &'static str,
    pub identity: &'static str,
    pub issuer: &'static str,
    pub certificate_chain: &'static str,
    pub trusted_root: &'static str,
    pub skip: &'static str,
    pub signed: &'static str,
    /// Between a name and `regexp`.
    pub sep: &'static str,
}

pub const FLAG_NAMES: Names = Names {
    keys: "--verify-key",
    identity: "--certificate-identity",
    issuer: "--certificate-oidc-issuer",
    certificate_chain: "--certificate-chain",
    trusted_root: "--trusted-root",
    skip: "skip",
    signed: "--signed",
    sep: "-",
};

pub const TOML_NAMES: Names = Names {
    keys: "keys",
    identity: "identity",
    issuer: "issuer",
    certificate_chain: "certificate_chain",
    trusted_root: "trusted_root",
    skip: "skip",
    signed: "signed",
    sep: "_",
};

impl Policy {
    /// Who the policy accepts, for messages.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.key_names.iter().map(|k| format!("key {k}")).collect();
        if let Some(identity) = &self.identity {
            parts.push(format!(
                "identity {} from issuer {}",
                identity.subject, identity.issuer
            ));
        }
        parts.join(" or ")
    }
}

/// The tag cosign keeps the signatures of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> Option<Tag> {
    Tag::parse(&format!("{}.sig", digest.as_str().replacen(':', "-", 1))).ok()
}

/// One layer of a signature manifest: the payload bytes and the layer's annotations.
pub struct Layer {
    pub payload: Vec<u8>,
    pub annotations: serde_json::Value,
}

/// The signature layers a `.sig` manifest lists: (digest, size, annotations).
pub fn signature_layers(manifest: &[u8]) -> Result<Vec<(Digest, u64, serde_json::Value)>> {
    let layers = crate::oci::image::layers_of_type(manifest, SIMPLE_SIGNING)
        .map_err(|e| anyhow!("the signature manifest: a signature layer: {e}"))?;
    if let Some((_, size, _)) = layers.iter().find(|(_, size, _)| *size > MAX_PAYLOAD_BYTES) {
        bail!("a signature payload of {size} bytes; refusing it");
    }
    if layers.len() > MAX_LAYERS {
        bail!("{} signature layers; refusing them", layers.len());
    }
    Ok(layers)
}

/// Whether one of `layers` is a signature the policy accepts over `digest`, claiming
/// `source` (registry and repository; the tag is not signed). The signer on success,
/// otherwise the most telling reason of all layers.
pub fn check(
    policy: &Policy,
    digest: &Digest,
    source: &ImageRef,
    layers: &[Layer],
) -> Result<String, String> {
    let mut reason = format!(
        "no signature verifies with {} (signed by another key or identity, or the payload was altered)",
        policy.describe()
    );
    for layer in layers {
        let signer = match signed_by(policy, layer) {
            Ok(signer) => signer,
            Err(Some(why)) => {
                reason = why;
                continue;
            }
            Err(None) => continue,
        };
        // A verified signature says what it is about: that must be this image.
        match claims(&layer.payload, digest, source) {
            Ok(()) => return Ok(signer),
            Err(why) => reason = why,
        }
    }
    if layers.is_empty() {
        reason = "its signature manifest holds no cosign signature".to_string();
    }
    Err(reason)
}

/// The signer, when the layer's signature over its payload verifies under the policy;
/// otherwise why, when a certificate for the identity failed a check (None: not a
/// signature of this policy's signers at all).
fn signed_by(policy: &Policy, layer: &Layer) -> Result<String, Option<String>> {
    use base64::Engine as _;
    let signature = layer.annotations[SIGNATURE].as_str().ok_or(None)?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| None)?;
    let certificate = layer.annotations[CERTIFICATE]
        .as_str()
        .and_then(|pem| keys::certificate(pem).ok());
    let rekor = |root: &TrustedRoot, cert: &x509_cert::Certificate| {
        let Some(bundle) = layer.annotations[BUNDLE].as_str() else {
            return Err(
                "no Rekor entry: keyless signatures need one, from a transparency log in the trusted root"
                    .to_string(),
            );
        };
        root::verify_entry(root, bundle, &layer.payload, &signature, cert)
    };
    signer(
        policy,
        &Signed {
            message: &layer.payload,
            signature: &signature,
            certificate: certificate.as_ref(),
        },
        &rekor,
    )
}

/// One signature, wherever it was stored: the exact bytes signed, the signature, and
/// the certificate that came with it.
pub(super) struct Signed<'a> {
    pub message: &'a [u8],
    pub signature: &'a [u8],
    pub certificate: Option<&'a x509_cert::Certificate>,
}

/// What vouches for a keyless signature's time: its Rekor entry, checked against the
/// trusted root and bound to this signature and certificate.
pub(super) type TlogCheck<'a> =
    dyn Fn(&TrustedRoot, &x509_cert::Certificate) -> Result<root::Entry, String> + 'a;

/// Who signed, when the policy accepts `signed`: one of its keys, or a certificate for
/// its identity chained to its anchors. Err(None): not by this policy's signers at all.
pub(super) fn signer(
    policy: &Policy,
    signed: &Signed,
    tlog: &TlogCheck,
) -> Result<String, Option<String>> {
    for (key, name) in policy.keys.iter().zip(&policy.key_names) {
        if key.verify_sha256(signed.message, signed.signature) {
            return Ok(format!("key {name}"));
        }
    }
    let identity = policy.identity.as_ref().ok_or(None)?;
    let cert = signed.certificate.ok_or(None)?;
    // Only a certificate for the identity is worth a reason of its own.
    let subject = keys::identities(cert)
        .into_iter()
        .find(|s| identity.subject.matches(s))
        .ok_or(None)?;
    let issuer = keys::oidc_issuer(cert)
        .filter(|i| identity.issuer.matches(i))
        .ok_or(None)?;
    let key = keys::public_key(cert).map_err(|_| None)?;
    if !key.verify_sha256(signed.message, signed.signature) {
        return Err(None);
    }
    let why = |e: anyhow::Error| Some(format!("{e:#}"));
    match &identity.anchors {
        Anchors::Chain(roots, name) => {
            keys::verify_chain_at(cert, roots, None, name).map_err(why)?
        }
        Anchors::Root(root) => {
            let entry = tlog(root, cert).map_err(Some)?;
            let authorities = root.authorities_at(entry.time);
            keys::verify_chain_at(cert, &authorities, Some(entry.time), "the trusted root")
                .map_err(why)?;
        }
    }
    Ok(format!("{subject} (issuer {issuer})"))
}

/// The payload is a cosign image signature for `digest` and `source`'s repository.
fn claims(payload: &[u8], digest: &Digest, source: &ImageRef) -> Result<(), String> {
    let json: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|_| "its signed payload is not JSON".to_string())?;
    let critical = &json["critical"];
    if critical["type"] != PAYLOAD_TYPE {
        return Err(format!("its signed payload is not a '{PAYLOAD_TYPE}'"));
    }
    let signed = critical["image"]["docker-manifest-digest"]
        .as_str()
        .unwrap_or_default();
    if signed != digest.as_str() {
        return Err(format!(
            "the signature is over another image ({}), not {digest}",
            crate::text::printable(signed)
        ));
    }
    let claimed = critical["identity"]["docker-reference"]
        .as_str()
        .unwrap_or_default();
    if !same_repository(claimed, source) {
        return Err(format!(
            "the signature claims {}, not {}/{}",
            crate::text::printable(claimed),
            source.registry,
            source.repository
        ));
    }
    Ok(())
}

/// cosign signs the repository, without tag: `host/path`. Docker Hub has two spellings.
fn same_repository(claimed: &str, source: &ImageRef) -> bool {
    let Ok(claimed) = ImageRef::parse(claimed) else {
        return false;
    };
    let hub = |r: &str| {
        if r == "index.docker.io" || r == "registry-1.docker.io" {
            "docker.io".to_string()
        } else {
            r.to_string()
        }
    };
    hub(claimed.registry.as_str()) == hub(source.registry.as_str())
        && claimed.repository == source.repository
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> ImageRef {
        ImageRef::parse("127.0.0.1:5000/org/app:v1").unwrap()
    }

    fn payload(digest: &str, reference: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "critical": {"identity": {"docker-reference": reference},
                         "image": {"docker-manifest-digest": digest},
                         "type": PAYLOAD_TYPE},
            "optional": null
        }))
        .unwrap()
    }

    #[test]
    fn the_claimed_repository_ignores_the_tag_and_docker_hub_spellings() {
        assert!(same_repository("127.0.0.1:5000/org/app", &source()));
        assert!(same_repository("127.0.0.1:5000/org/app:v2", &source()));
        assert!(!same_repository("127.0.0.1:5000/org/other", &source()));
        assert!(!same_repository("127.0.0.1:5001/org/app", &source()));
        let hub = ImageRef::parse("docker.io/library/debian:12").unwrap();
        assert!(same_repository("index.docker.io/library/debian", &hub));
        assert!(same_repository("debian", &hub));
    }

    #[test]
    fn a_payload_must_name_the_digest_and_repository() {
        let digest = Digest::of_sha256(b"x");
        assert!(claims(
            &payload(digest.as_str(), "127.0.0.1:5000/org/app"),
            &digest,
            &source()
        )
        .is_ok());
        let other = Digest::of_sha256(b"y");
        let err = claims(
            &payload(other.as_str(), "127.0.0.1:5000/org/app"),
            &digest,
            &source(),
        )
        .unwrap_err();
        assert!(err.contains("over another image"), "{err}");
        let err = claims(
            &payload(digest.as_str(), "evil.example/org/app"),
            &digest,
            &source(),
        )
        .unwrap_err();
        assert!(err.contains("claims evil.example/org/app"), "{err}");
        assert!(claims(b"{}", &digest, &source()).is_err());
    }

    #[test]
    fn bad_policies_fail_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("private.pem"),
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        for (spec, want) in [
            (
                PolicySpec {
                    keys: vec!["missing.pub".into()],
                    ..Default::default()
                },
                "cannot read it",
            ),
            (
                PolicySpec {
                    keys: vec!["private.pem".into()],
                    ..Default::default()
                },
                "not a 'PUBLIC KEY'",
            ),
            (
                PolicySpec {
                    identity_regexp: Some("(".into()),
                    issuer: Some("i".into()),
                    certificate_chain: Some("c".into()),
                    ..Default::default()
                },
                "not a valid regular expression",
            ),
            (
                PolicySpec {
                    identity: Some("a".into()),
                    ..Default::default()
                },
                "needs --certificate-oidc-issuer",
            ),
            (
                PolicySpec {
                    identity: Some("a".into()),
                    issuer: Some("i".into()),
                    ..Default::default()
                },
                "needs --certificate-chain",
            ),
            (
                PolicySpec {
                    trusted_root: Some("t.json".into()),
                    ..Default::default()
                },
                "needs --certificate-identity",
            ),
            (
                PolicySpec {
                    identity: Some("a".into()),
                    issuer: Some("i".into()),
                    certificate_chain: Some("c".into()),
                    trusted_root: Some("t.json".into()),
                    ..Default::default()
                },
                "exclude each other",
            ),
            (
                PolicySpec {
                    signed: Some(Shape::All),
                    ..Default::default()
                },
                "not by whom",
            ),
            (
                PolicySpec {
                    identity: Some("a".into()),
                    issuer: Some("i".into()),
                    trusted_root: Some("private.pem".into()),
                    ..Default::default()
                },
                "--trusted-root",
            ),
        ] {
            let err = format!("{:#}", spec.build(dir.path(), &FLAG_NAMES).unwrap_err());
            assert!(err.contains(want), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
