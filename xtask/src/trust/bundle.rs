//! Sigstore bundles (v0.1 to v0.3) as cosign 3 stores its signatures: a DSSE envelope
//! over an in-toto statement whose subject is the signed digest, kept as an OCI 1.1
//! referrer of that digest. Checked offline, like the legacy `.sig` layers.

use base64::Engine as _;
use serde::Deserialize;
use x509_cert::der::Decode;
use x509_cert::Certificate;

use super::root::{self, BundlePayload, TrustedRoot};
use super::verify::{signer, Policy, Signed};
use crate::oci::Digest;

/// The predicate of a cosign 3 image signature; anything else is an attestation.
pub const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
/// A bundle with a certificate and a Rekor entry is a few KiB.
pub const MAX_BUNDLE_BYTES: u64 = 256 << 10;
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// Signatures tried per envelope; cosign writes one.
const MAX_SIGNATURES: usize = 16;

/// Whether an artifact or layer media type is a Sigstore bundle of a version we read.
pub fn is_bundle(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.dev.sigstore.bundle.v0.3+json"
            | "application/vnd.dev.sigstore.bundle+json;version=0.3"
            | "application/vnd.dev.sigstore.bundle+json;version=0.2"
            | "application/vnd.dev.sigstore.bundle+json;version=0.1"
    )
}

// The protobuf-JSON form, camelCase; unknown fields ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBundle {
    media_type: String,
    verification_material: Material,
    dsse_envelope: Option<Envelope>,
    message_signature: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Material {
    certificate: Option<RawCertificate>,
    x509_certificate_chain: Option<RawChain>,
    #[serde(default)]
    tlog_entries: Vec<TlogEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCertificate {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct RawChain {
    certificates: Vec<RawCertificate>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlogEntry {
    log_index: Int,
    log_id: LogId,
    integrated_time: Int,
    inclusion_promise: Option<Promise>,
    canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogId {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Promise {
    signed_entry_timestamp: String,
}

/// protobuf-JSON writes int64 as a string; some writers use a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Int {
    Text(String),
    Number(i64),
}

impl Int {
    fn value(&self) -> Option<i64> {
        match self {
            Int::Text(text) => text.parse().ok(),
            Int::Number(n) => Some(*n),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    predicate_type: String,
    subject: Vec<Subject>,
}

#[derive(Deserialize)]
struct Subject {
    digest: std::collections::BTreeMap<String, String>,
}

/// DSSE's pre-authentication encoding: what the signature is over.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

fn base64(what: &str, value: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| format!("its bundle's {what} is not base64"))
}

/// The DSSE envelope of a bundle, as JSON bytes (an SBOM attestation's, for reading).
pub fn envelope(bytes: &[u8]) -> Result<Vec<u8>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Outer {
        dsse_envelope: Option<serde_json::Value>,
    }
    let outer: Outer = serde_json::from_slice(bytes)
        .map_err(|e| format!("a Sigstore bundle does not parse: {e}"))?;
    let envelope = outer
        .dsse_envelope
        .ok_or_else(|| "a Sigstore bundle holds no DSSE envelope".to_string())?;
    serde_json::to_vec(&envelope).map_err(|e| e.to_string())
}

/// The signer, when `bytes` is a bundle the policy accepts as a cosign signature of
/// `digest`; otherwise the most telling reason.
pub fn check(policy: &Policy, digest: &Digest, bytes: &[u8]) -> Result<String, String> {
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(format!(
            "a Sigstore bundle of {} bytes; refusing it",
            bytes.len()
        ));
    }
    let bundle: RawBundle = serde_json::from_slice(bytes)
        .map_err(|e| format!("its Sigstore bundle does not parse: {e}"))?;
    if !is_bundle(&bundle.media_type) {
        return Err(format!(
            "its bundle's mediaType '{}' is not a Sigstore bundle v0.1 to v0.3",
            crate::text::printable(&bundle.media_type)
        ));
    }
    let Some(envelope) = &bundle.dsse_envelope else {
        return Err(match bundle.message_signature {
            Some(_) => "its bundle holds a message signature, not a DSSE envelope over an image"
                .to_string(),
            None => "its bundle holds no DSSE envelope".to_string(),
        });
    };
    if envelope.payload_type != IN_TOTO {
        return Err(format!(
            "its bundle's payloadType is '{}', not {IN_TOTO}",
            crate::text::printable(&envelope.payload_type)
        ));
    }
    let payload = base64("payload", &envelope.payload)?;
    let certificate = leaf(&bundle.verification_material)?;
    let message = pae(&envelope.payload_type, &payload);
    let mut reason = format!(
        "its Sigstore bundle does not verify with {} (signed by another key or identity, or the payload was altered)",
        policy.describe()
    );
    for signature in envelope.signatures.iter().take(MAX_SIGNATURES) {
        let signature = base64("signature", &signature.sig)?;
        let tlog = |root: &TrustedRoot, cert: &Certificate| {
            entry(
                root,
                &bundle.verification_material,
                &payload,
                &signature,
                cert,
            )
        };
        let signed = Signed {
            message: &message,
            signature: &signature,
            certificate: certificate.as_ref(),
        };
        match signer(policy, &signed, &tlog) {
            Ok(signer) => return statement(&payload, digest).map(|()| signer),
            Err(Some(why)) => reason = why,
            Err(None) => {}
        }
    }
    Err(reason)
}

/// The signing certificate: v0.3's `certificate`, or the first of v0.1/v0.2's chain.
fn leaf(material: &Material) -> Result<Option<Certificate>, String> {
    let raw = match (&material.certificate, &material.x509_certificate_chain) {
        (Some(cert), _) => cert,
        (None, Some(chain)) => match chain.certificates.first() {
            Some(cert) => cert,
            None => return Ok(None),
        },
        (None, None) => return Ok(None),
    };
    let der = base64("certificate", &raw.raw_bytes)?;
    Certificate::from_der(&der)
        .map(Some)
        .map_err(|e| format!("its bundle's certificate is not DER: {e}"))
}

/// The first tlog entry whose SET verifies under the root and whose body records this
/// envelope's payload and signature by `cert`.
fn entry(
    root: &TrustedRoot,
    material: &Material,
    payload: &[u8],
    signature: &[u8],
    cert: &Certificate,
) -> Result<root::Entry, String> {
    let mut reason =
        "no Rekor entry: keyless signatures need one, from a transparency log in the trusted root"
            .to_string();
    for raw in material.tlog_entries.iter().take(MAX_SIGNATURES) {
        let Some(promise) = &raw.inclusion_promise else {
            reason = "its Rekor entry has no signed entry timestamp (an inclusion proof alone is not checked yet)".to_string();
            continue;
        };
        let (Some(integrated_time), Some(log_index)) =
            (raw.integrated_time.value(), raw.log_index.value())
        else {
            reason = "its Rekor entry's integratedTime or logIndex is not a number".to_string();
            continue;
        };
        let entry = BundlePayload {
            body: raw.canonicalized_body.clone(),
            integrated_time,
            log_index,
            log_id: hex::encode(base64("logId", &raw.log_id.key_id)?),
        };
        let checked =
            root::verify_set(root, &entry, &promise.signed_entry_timestamp).and_then(|verified| {
                let body = root::decode_body(&entry)?;
                root::dsse_body_matches(&body, payload, signature, cert)?;
                Ok(verified)
            });
        match checked {
            Ok(verified) => return Ok(verified),
            Err(why) => reason = why,
        }
    }
    Err(reason)
}

/// The verified statement is a cosign signature (not an attestation) of `digest`.
fn statement(payload: &[u8], digest: &Digest) -> Result<(), String> {
    let statement: Statement = serde_json::from_slice(payload)
        .map_err(|_| "its signed payload is not an in-toto statement".to_string())?;
    if !statement.kind.starts_with("https://in-toto.io/Statement/") {
        return Err(format!(
            "its signed payload is a '{}', not an in-toto statement",
            crate::text::printable(&statement.kind)
        ));
    }
    if statement.predicate_type != SIGN_PREDICATE {
        return Err(format!(
            "its bundle is an attestation of {}, not a signature ({SIGN_PREDICATE})",
            crate::text::printable(&statement.predicate_type)
        ));
    }
    let algorithm = digest.as_str().split(':').next().unwrap_or_default();
    let covers = statement
        .subject
        .iter()
        .any(|s| s.digest.get(algorithm).map(String::as_str) == Some(digest.hex()));
    if !covers {
        let named: Vec<String> = statement
            .subject
            .iter()
            .flat_map(|s| s.digest.iter().map(|(a, h)| format!("{a}:{h}")))
            .take(3)
            .collect();
        return Err(format!(
            "its bundle signs another image ({}), not {digest}",
            crate::text::printable(&named.join(", "))
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{PolicySpec, Rule, FLAG_NAMES};
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn key(seed: u8) -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    fn policy(dir: &std::path::Path, seed: u8) -> std::sync::Arc<Rule> {
        let pem = key(seed)
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        std::fs::write(dir.join("k.pub"), pem).unwrap();
        PolicySpec {
            keys: vec!["k.pub".into()],
            ..Default::default()
        }
        .build(dir, &FLAG_NAMES)
        .unwrap()
        .unwrap()
    }

    fn statement(digest: &Digest, predicate: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": predicate,
            "subject": [{"name": "127.0.0.1:5000/t/app",
                         "digest": {"sha256": digest.hex()}}],
            "predicate": {}
        }))
        .unwrap()
    }

    /// A bundle as cosign writes it with a key: no certificate, no tlog entry.
    fn bundle(payload: &[u8], signer: &p256::ecdsa::SigningKey) -> Vec<u8> {
        let signature: p256::ecdsa::Signature = signer.sign(&pae(IN_TOTO, payload));
        serde_json::to_vec(&serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {"publicKey": {"hint": "x"}},
            "dsseEnvelope": {"payload": b64(payload), "payloadType": IN_TOTO,
                             "signatures": [{"sig": b64(signature.to_der().as_bytes())}]}
        }))
        .unwrap()
    }

    fn verdict(rule: &Rule, digest: &Digest, bytes: &[u8]) -> Result<String, String> {
        let Rule::Signed(policy) = rule else {
            panic!("a signed rule")
        };
        check(policy, digest, bytes)
    }

    #[test]
    fn the_pae_is_dsse_v1() {
        assert_eq!(pae("t", b"ab"), b"DSSEv1 1 t 2 ab".to_vec());
    }

    #[test]
    fn a_bundle_by_the_key_over_the_digest_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let rule = policy(dir.path(), 3);
        let digest = Digest::of_sha256(b"index");
        let good = bundle(&statement(&digest, SIGN_PREDICATE), &key(3));
        assert!(verdict(&rule, &digest, &good).unwrap().starts_with("key "));
    }

    #[test]
    fn forged_or_foreign_bundles_are_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let rule = policy(dir.path(), 3);
        let digest = Digest::of_sha256(b"index");
        let other = Digest::of_sha256(b"other");
        let mut tampered: serde_json::Value =
            serde_json::from_slice(&bundle(&statement(&digest, SIGN_PREDICATE), &key(3))).unwrap();
        tampered["dsseEnvelope"]["payload"] = b64(&statement(&other, SIGN_PREDICATE)).into();
        for (bytes, want) in [
            (
                bundle(&statement(&digest, SIGN_PREDICATE), &key(4)),
                "does not verify with key",
            ),
            (
                bundle(&statement(&other, SIGN_PREDICATE), &key(3)),
                "signs another image",
            ),
            (
                bundle(&statement(&digest, "https://spdx.dev/Document"), &key(3)),
                "an attestation of https://spdx.dev/Document",
            ),
            (
                serde_json::to_vec(&tampered).unwrap(),
                "does not verify with key",
            ),
            (b"{}".to_vec(), "does not parse"),
            (vec![b' '; MAX_BUNDLE_BYTES as usize + 1], "refusing it"),
        ] {
            let err = verdict(&rule, &digest, &bytes).unwrap_err();
            assert!(err.contains(want), "{err} (wanted {want})");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
