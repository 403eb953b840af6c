//! Public keys and certificates, offline, with the RustCrypto crates: ECDSA P-256 and
//! P-384 (what cosign and Fulcio use), X.509 chains to a site's own CA.

use anyhow::{anyhow, bail, Result};
use p256::pkcs8::DecodePublicKey;
use std::time::SystemTime;
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, SubjectAltName};
use x509_cert::Certificate;

const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const CODE_SIGNING: &str = "1.3.6.1.5.5.7.3.3";
/// Fulcio's OIDC issuer extensions: the raw string (deprecated), and the DER UTF8String.
const ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
const ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";

/// A signer's public key. cosign hashes the payload with SHA-256 for every ECDSA curve.
#[derive(Clone, Debug)]
pub enum PublicKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl PublicKey {
    /// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as `cosign generate-key-pair` writes it.
    pub fn from_pem(text: &str) -> Result<PublicKey> {
        let Some(block) = pem_blocks(text).into_iter().next() else {
            bail!("no PEM block in it");
        };
        if block.0 != "PUBLIC KEY" {
            bail!(
                "it holds a PEM '{}', not a 'PUBLIC KEY' (pass cosign.pub, never the private key)",
                block.0
            );
        }
        PublicKey::from_spki_der(&block.1)
    }

    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey> {
        if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::P256(key));
        }
        if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::P384(key));
        }
        bail!("not an ECDSA P-256 or P-384 public key (RSA and ed25519 keys are not supported yet)")
    }

    /// An ASN.1 DER ECDSA signature over SHA-256(`message`).
    pub fn verify_sha256(&self, message: &[u8], signature: &[u8]) -> bool {
        use sha2::Digest as _;
        self.verify_prehash(&sha2::Sha256::digest(message), signature)
    }

    fn verify_prehash(&self, prehash: &[u8], signature: &[u8]) -> bool {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        match self {
            PublicKey::P256(key) => p256::ecdsa::DerSignature::from_bytes(signature)
                .is_ok_and(|s| key.verify_prehash(prehash, &s).is_ok()),
            PublicKey::P384(key) => p384::ecdsa::DerSignature::from_bytes(signature)
                .is_ok_and(|s| key.verify_prehash(prehash, &s).is_ok()),
        }
    }
}

/// (label, DER bytes) of every PEM block in `text`.
pub fn pem_blocks(text: &str) -> Vec<(String, Vec<u8>)> {
    use base64::Engine as _;
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let body: String = lines.by_ref().take_while(|l| *l != end).collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body) {
            blocks.push((label.to_string(), der));
        }
    }
    blocks
}

/// Every certificate of a PEM file; at least one.
pub fn certificates(text: &str) -> Result<Vec<Certificate>> {
    let certs: Vec<Certificate> = pem_blocks(text)
        .into_iter()
        .filter(|(label, _)| label == "CERTIFICATE")
        .map(|(_, der)| Certificate::from_der(&der))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("a certificate does not parse: {e}"))?;
    if certs.is_empty() {
        bail!("no PEM CERTIFICATE in it");
    }
    Ok(certs)
}

pub fn certificate(pem: &str) -> Result<Certificate> {
    Certificate::from_pem(pem.as_bytes()).map_err(|e| anyhow!("not a PEM certificate: {e}"))
}

pub fn public_key(cert: &Certificate) -> Result<PublicKey> {
    let der = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| anyhow!("{e}"))?;
    PublicKey::from_spki_der(&der)
}

/// `cert` is signed by `issuer`'s key (ECDSA with SHA-256 or SHA-384).
fn signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    use sha2::Digest as _;
    let Ok(key) = public_key(issuer) else {
        return false;
    };
    let Ok(tbs) = cert.tbs_certificate().to_der() else {
        return false;
    };
    let signature = cert.signature().raw_bytes();
    match cert.signature_algorithm().oid.to_string().as_str() {
        ECDSA_SHA256 => key.verify_prehash(&sha2::Sha256::digest(&tbs), signature),
        ECDSA_SHA384 => key.verify_prehash(&sha2::Sha384::digest(&tbs), signature),
        _ => false,
    }
}

fn valid_at(cert: &Certificate, at: SystemTime) -> bool {
    let validity = cert.tbs_certificate().validity();
    validity.not_before.to_system_time() <= at && at <= validity.not_after.to_system_time()
}

fn is_ca(cert: &Certificate) -> bool {
    matches!(
        cert.tbs_certificate().get_extension::<BasicConstraints>(),
        Ok(Some((_, BasicConstraints { ca: true, .. })))
    )
}

/// The leaf chains to a certificate of `trusted` (a site's CA file, or a trusted root's
/// Fulcio CAs: roots and intermediates), each link signed, valid at `at` (a transparency
/// log's time: Fulcio certificates live minutes) or, for None, now, and above the leaf
/// a CA. The chain the signature carries is not trusted: it is the signer's own claim.
/// `anchor` names `trusted` in messages.
pub fn verify_chain_at(
    leaf: &Certificate,
    trusted: &[Certificate],
    at: Option<SystemTime>,
    anchor: &str,
) -> Result<()> {
    let (when, shown) = match at {
        Some(t) => (
            t,
            format!(
                "at {} (when Rekor recorded it)",
                humantime::format_rfc3339(t)
            ),
        ),
        None => (SystemTime::now(), "now".to_string()),
    };
    if !valid_at(leaf, when) {
        let validity = leaf.tbs_certificate().validity();
        bail!(
            "the signing certificate was not valid {shown}: it is valid from {} to {}",
            validity.not_before,
            validity.not_after
        );
    }
    let eku = leaf.tbs_certificate().get_extension::<ExtendedKeyUsage>();
    let code_signing =
        matches!(&eku, Ok(Some((_, e))) if e.0.iter().any(|o| o.to_string() == CODE_SIGNING));
    if !code_signing {
        bail!(
            "the signing certificate is not for code signing (no extended key usage codeSigning)"
        );
    }
    let mut current = leaf.clone();
    for _ in 0..8 {
        let Some(issuer) = trusted.iter().find(|c| {
            c.tbs_certificate().subject() == current.tbs_certificate().issuer()
                && signed_by(&current, c)
        }) else {
            bail!("the signing certificate does not chain to {anchor}");
        };
        if !valid_at(issuer, when) || !is_ca(issuer) {
            bail!("a certificate of {anchor} is not a CA valid {shown}");
        }
        if issuer.tbs_certificate().subject() == issuer.tbs_certificate().issuer() {
            return Ok(());
        }
        current = issuer.clone();
    }
    bail!("the certificate chain is too long")
}

/// The identities a certificate names: email, URI and DNS subject alternative names.
pub fn identities(cert: &Certificate) -> Vec<String> {
    let Ok(Some((_, SubjectAltName(names)))) =
        cert.tbs_certificate().get_extension::<SubjectAltName>()
    else {
        return Vec::new();
    };
    names
        .into_iter()
        .filter_map(|name| match name {
            GeneralName::Rfc822Name(s)
            | GeneralName::DnsName(s)
            | GeneralName::UniformResourceIdentifier(s) => Some(s.to_string()),
            _ => None,
        })
        .collect()
}

/// The OIDC issuer Fulcio wrote into the certificate.
pub fn oidc_issuer(cert: &Certificate) -> Option<String> {
    let extensions = cert.tbs_certificate().extensions()?;
    let value = |oid: &str| {
        extensions
            .iter()
            .find(|e| e.extn_id.to_string() == oid)
            .map(|e| e.extn_value.as_bytes().to_vec())
    };
    if let Some(der) = value(ISSUER_V2) {
        if let Ok(s) = x509_cert::der::asn1::Utf8StringRef::from_der(&der) {
            return Some(s.as_str().to_string());
        }
    }
    value(ISSUER_V1).and_then(|raw| String::from_utf8(raw).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signature cosign 2.5 made (`cosign sign --key`), with the key's public half.
    const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEXBxi50INfE0VHdsYtvtjs4xH1Wz6\nYs7sfOhdQLeHPdTZOjgZJ/ZaXu8LweRMOztfYC0eNY4xoscVDZGXcKd6KA==\n-----END PUBLIC KEY-----\n";
    const PAYLOAD: &str = r#"{"critical":{"identity":{"docker-reference":"127.0.0.1:54677/app"},"image":{"docker-manifest-digest":"sha256:a9c5f2b13c368e954e45ea47ba671acdcbe31fd48ac5a5bc4328aeb4ccdf31c7"},"type":"cosign container image signature"},"optional":null}"#;
    const SIGNATURE: &str = "MEYCIQDwfddjavVcbhJwcxmt4hAk5jRnW4Wa08AVU/FaQ4dxAgIhAJC+XEC5pSvSY2vnl8SsYsT3vadTjQxgLg+yt7+JYCaR";

    #[test]
    fn a_cosign_signature_verifies_and_an_altered_payload_does_not() {
        use base64::Engine as _;
        let key = PublicKey::from_pem(PUBLIC).unwrap();
        let signature = base64::engine::general_purpose::STANDARD
            .decode(SIGNATURE)
            .unwrap();
        assert!(key.verify_sha256(PAYLOAD.as_bytes(), &signature));
        let altered = PAYLOAD.replace("null", "{}");
        assert!(!key.verify_sha256(altered.as_bytes(), &signature));
        assert!(!key.verify_sha256(PAYLOAD.as_bytes(), b"not DER"));
    }

    #[test]
    fn only_public_keys_are_keys() {
        let private = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let err = PublicKey::from_pem(private).unwrap_err().to_string();
        assert!(err.contains("not a 'PUBLIC KEY'"), "{err}");
        assert!(PublicKey::from_pem("hello").is_err());
    }
}
