//! Keyless signatures, offline: sigstore's `trusted_root.json` (the Fulcio CAs and the
//! Rekor keys, each with the time it was valid) and the Rekor entry cosign attaches to a
//! signature (`dev.sigstore.cosign/bundle`), checked against it.

use anyhow::{anyhow, bail, Result};
use base64::Engine as _;
use serde::Deserialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_cert::der::{Decode, Encode};
use x509_cert::Certificate;

use super::keys::{self, PublicKey};

/// sigstore's public trusted root is about 10 KiB.
pub const MAX_TRUSTED_ROOT_BYTES: u64 = 1 << 20;
/// A Rekor bundle annotation holds one entry: a few KiB.
const MAX_BUNDLE_BYTES: usize = 64 << 10;

/// The parts of a `dev.sigstore.trustedroot.v1.TrustedRoot` the check uses.
#[derive(Debug)]
pub struct TrustedRoot {
    pub authorities: Vec<Authority>,
    pub tlogs: Vec<Tlog>,
}

/// A Fulcio CA: its chain (leaf-most first, as sigstore writes it) and when it issued.
#[derive(Debug)]
pub struct Authority {
    pub certificates: Vec<Certificate>,
    pub valid: Validity,
}

/// A Rekor log: its key, and the key's ID (SHA-256 of its DER SubjectPublicKeyInfo).
#[derive(Debug)]
pub struct Tlog {
    pub key: PublicKey,
    pub key_id: Vec<u8>,
    pub valid: Validity,
}

#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
}

impl Validity {
    pub fn contains(&self, t: SystemTime) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t <= e)
    }
}

// The protobuf-JSON form, camelCase; unknown fields (ctlogs' details, future ones) ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRoot {
    media_type: Option<String>,
    #[serde(default)]
    tlogs: Vec<RawLog>,
    #[serde(default)]
    certificate_authorities: Vec<RawAuthority>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLog {
    public_key: RawKey,
    log_id: RawLogId,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawKey {
    raw_bytes: String,
    valid_for: Option<RawValidity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogId {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAuthority {
    cert_chain: RawChain,
    valid_for: Option<RawValidity>,
}

#[derive(Deserialize)]
struct RawChain {
    certificates: Vec<RawCertificate>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCertificate {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct RawValidity {
    start: Option<String>,
    end: Option<String>,
}

fn base64(what: &str, value: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|e| anyhow!("{what} is not base64: {e}"))
}

fn validity(what: &str, raw: &Option<RawValidity>) -> Result<Validity> {
    let time = |field: &str, value: &Option<String>| -> Result<Option<SystemTime>> {
        value
            .as_deref()
            .map(|v| {
                humantime::parse_rfc3339_weak(v.trim_end_matches('Z')).map_err(|e| {
                    anyhow!(
                        "{what}.validFor.{field} '{}' is not a time: {e}",
                        crate::text::printable(v)
                    )
                })
            })
            .transpose()
    };
    let Some(raw) = raw else {
        return Ok(Validity {
            start: None,
            end: None,
        });
    };
    Ok(Validity {
        start: time("start", &raw.start)?,
        end: time("end", &raw.end)?,
    })
}

impl TrustedRoot {
    /// Errors name the field; the caller names the file.
    pub fn parse(bytes: &[u8]) -> Result<TrustedRoot> {
        let raw: RawRoot = serde_json::from_slice(bytes)
            .map_err(|e| anyhow!("not a sigstore trusted root (JSON): {e}"))?;
        if let Some(media_type) = &raw.media_type {
            if !media_type.starts_with("application/vnd.dev.sigstore.trustedroot") {
                bail!(
                    "mediaType '{}' is not a sigstore trusted root",
                    crate::text::printable(media_type)
                );
            }
        }
        let mut tlogs = Vec::new();
        for (i, log) in raw.tlogs.iter().enumerate() {
            let what = format!("tlogs[{i}].publicKey");
            let der = base64(&format!("{what}.rawBytes"), &log.public_key.raw_bytes)?;
            // sigstore's roots also list Rekor v2 logs with ed25519 keys: not ours to use.
            let Ok(key) = PublicKey::from_spki_der(&der) else {
                continue;
            };
            tlogs.push(Tlog {
                key,
                key_id: base64(&format!("tlogs[{i}].logId.keyId"), &log.log_id.key_id)?,
                valid: validity(&what, &log.public_key.valid_for)?,
            });
        }
        let mut authorities = Vec::new();
        for (i, ca) in raw.certificate_authorities.iter().enumerate() {
            let what = format!("certificateAuthorities[{i}]");
            let mut certificates = Vec::new();
            for (j, cert) in ca.cert_chain.certificates.iter().enumerate() {
                let field = format!("{what}.certChain.certificates[{j}].rawBytes");
                let der = base64(&field, &cert.raw_bytes)?;
                certificates.push(
                    Certificate::from_der(&der)
                        .map_err(|e| anyhow!("{field} is not a DER certificate: {e}"))?,
                );
            }
            if certificates.is_empty() {
                bail!("{what}.certChain has no certificates");
            }
            authorities.push(Authority {
                certificates,
                valid: validity(&what, &ca.valid_for)?,
            });
        }
        if authorities.is_empty() {
            bail!("no certificateAuthorities: nothing could issue a signing certificate");
        }
        if tlogs.is_empty() {
            bail!("no tlogs with an ECDSA key: no transparency log could vouch for a signature");
        }
        Ok(TrustedRoot { authorities, tlogs })
    }

    /// The CA certificates that may have issued a certificate at `t`.
    pub fn authorities_at(&self, t: SystemTime) -> Vec<Certificate> {
        self.authorities
            .iter()
            .filter(|a| a.valid.contains(t))
            .flat_map(|a| a.certificates.iter().cloned())
            .collect()
    }
}

/// cosign's `dev.sigstore.cosign/bundle` annotation: a Rekor entry and its SET.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Bundle {
    pub signed_entry_timestamp: String,
    pub payload: BundlePayload,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundlePayload {
    pub body: String,
    pub integrated_time: i64,
    pub log_index: i64,
    #[serde(rename = "logID")]
    pub log_id: String,
}

impl BundlePayload {
    /// What Rekor signs: the entry as canonical JSON (RFC 8785: keys sorted, no spaces).
    pub fn canonical(&self) -> Vec<u8> {
        let s = |v: &str| serde_json::to_string(v).unwrap_or_default();
        format!(
            r#"{{"body":{},"integratedTime":{},"logID":{},"logIndex":{}}}"#,
            s(&self.body),
            self.integrated_time,
            s(&self.log_id),
            self.log_index
        )
        .into_bytes()
    }

    pub fn time(&self) -> Option<SystemTime> {
        let secs = u64::try_from(self.integrated_time).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_secs(secs))
    }
}

/// What a verified Rekor entry vouches for.
#[derive(Debug)]
pub struct Entry {
    pub time: SystemTime,
}

/// The SET verifies under a log of `root` valid at the entry's time, and the entry is
/// for this signature, this certificate and this payload.
pub fn verify_entry(
    root: &TrustedRoot,
    bundle: &str,
    payload: &[u8],
    signature: &[u8],
    leaf: &Certificate,
) -> Result<Entry, String> {
    if bundle.len() > MAX_BUNDLE_BYTES {
        return Err(format!(
            "its Rekor bundle is {} bytes; refusing it",
            bundle.len()
        ));
    }
    let bundle: Bundle = serde_json::from_str(bundle)
        .map_err(|e| format!("its Rekor bundle does not parse: {e}"))?;
    let entry = verify_set(root, &bundle.payload, &bundle.signed_entry_timestamp)?;
    body_matches(&decode_body(&bundle.payload)?, payload, signature, leaf)?;
    Ok(entry)
}

/// The SET of `entry` verifies under a log of `root` valid at the entry's time. Says
/// nothing yet of what the entry is for: the caller checks its body.
pub fn verify_set(
    root: &TrustedRoot,
    entry: &BundlePayload,
    signed_entry_timestamp: &str,
) -> Result<Entry, String> {
    let time = entry.time().ok_or_else(|| {
        format!(
            "its Rekor entry has integratedTime {}",
            entry.integrated_time
        )
    })?;
    let log_id =
        hex::decode(&entry.log_id).map_err(|_| "its Rekor entry's logID is not hex".to_string())?;
    let Some(log) = root.tlogs.iter().find(|l| l.key_id == log_id) else {
        return Err(format!(
            "its Rekor entry is from log {}, which the trusted root does not name",
            crate::text::printable(&entry.log_id)
        ));
    };
    if !log.valid.contains(time) {
        return Err(format!(
            "its Rekor entry's time ({}) is outside the validity of log {} in the trusted root",
            humantime::format_rfc3339(time),
            crate::text::printable(&entry.log_id)
        ));
    }
    let set = base64::engine::general_purpose::STANDARD
        .decode(signed_entry_timestamp.trim())
        .map_err(|_| "its Rekor SignedEntryTimestamp is not base64".to_string())?;
    if !log.key.verify_sha256(&entry.canonical(), &set) {
        return Err(
            "its Rekor SignedEntryTimestamp does not verify with the log's key (the entry or its time was altered)"
                .to_string(),
        );
    }
    Ok(Entry { time })
}

pub fn decode_body(entry: &BundlePayload) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(entry.body.trim())
        .map_err(|_| "its Rekor entry's body is not base64".to_string())
}

/// A `dsse` v0.0.1 entry for this envelope's payload and signature, by `leaf`'s key.
pub fn dsse_body_matches(
    body: &[u8],
    payload: &[u8],
    signature: &[u8],
    leaf: &Certificate,
) -> Result<(), String> {
    let bad = |why: &str| Err(format!("its Rekor entry {why}"));
    let json = entry_of_kind(body, &["dsse"])?;
    let spec = &json["spec"];
    if !is_sha256_of(&spec["payloadHash"], payload) {
        return bad("is for other data (its payloadHash is not the envelope payload's SHA-256)");
    }
    let recorded = spec["signatures"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| {
            decode(&s["signature"]).as_deref() == Some(signature)
                && decode(&s["verifier"]).is_some_and(|pem| same_signer(&pem, leaf))
        });
    if !recorded {
        return bad("is for another signature, certificate or key");
    }
    Ok(())
}

/// A Rekor entry's `{"algorithm": "sha256", "value": HEX}` is `data`'s SHA-256.
fn is_sha256_of(hash: &serde_json::Value, data: &[u8]) -> bool {
    use sha2::Digest as _;
    let want = hex::encode(sha2::Sha256::digest(data));
    hash["algorithm"] == "sha256" && hash["value"].as_str() == Some(want.as_str())
}

/// A base64 string field's bytes; None when it is missing or not base64.
fn decode(value: &serde_json::Value) -> Option<Vec<u8>> {
    value
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
}

/// `pem` (a certificate or a public key) is `leaf` or its key.
fn same_signer(pem: &[u8], leaf: &Certificate) -> bool {
    let recorded = keys::pem_blocks(&String::from_utf8_lossy(pem));
    match recorded.first() {
        Some((label, der)) if label == "CERTIFICATE" => leaf.to_der().ok().as_ref() == Some(der),
        Some((label, der)) if label == "PUBLIC KEY" => {
            leaf.tbs_certificate()
                .subject_public_key_info()
                .to_der()
                .ok()
                .as_ref()
                == Some(der)
        }
        _ => false,
    }
}

/// A Rekor entry body of one of `kinds`, at apiVersion 0.0.1.
fn entry_of_kind(body: &[u8], kinds: &[&str]) -> Result<serde_json::Value, String> {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Err("its Rekor entry is not JSON".to_string());
    };
    let kind = json["kind"].as_str().unwrap_or_default();
    if !kinds.contains(&kind) || json["apiVersion"] != "0.0.1" {
        return Err(format!(
            "its Rekor entry is a '{}' {}, not a {} 0.0.1",
            crate::text::printable(kind),
            crate::text::printable(json["apiVersion"].as_str().unwrap_or_default()),
            kinds[0]
        ));
    }
    Ok(json)
}

/// A `hashedrekord` (or `rekord`) v0.0.1 entry for this signature, key and payload hash.
fn body_matches(
    body: &[u8],
    payload: &[u8],
    signature: &[u8],
    leaf: &Certificate,
) -> Result<(), String> {
    let bad = |why: &str| Err(format!("its Rekor entry {why}"));
    let json = entry_of_kind(body, &["hashedrekord", "rekord"])?;
    let spec = &json["spec"];
    if !is_sha256_of(&spec["data"]["hash"], payload) {
        return bad("is for other data (its hash is not the payload's SHA-256)");
    }
    if decode(&spec["signature"]["content"]).as_deref() != Some(signature) {
        return bad("is for another signature");
    }
    let same = decode(&spec["signature"]["publicKey"]["content"])
        .is_some_and(|pem| same_signer(&pem, leaf));
    if !same {
        return bad("is for another certificate or key");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;

    const CA: &str = include_str!("testdata/ca.pem");
    const LEAF: &str = include_str!("testdata/leaf.pem");
    const OTHER_CA: &str = include_str!("testdata/other-ca.pem");
    /// The leaf's validity, as testdata/README.md says it was made.
    const LEAF_NOT_BEFORE: u64 = include!("testdata/leaf-not-before");

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn rekor_key() -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap()
    }

    fn spki(key: &p256::ecdsa::SigningKey) -> Vec<u8> {
        key.verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    fn log_id(key: &p256::ecdsa::SigningKey) -> Vec<u8> {
        use sha2::Digest as _;
        sha2::Sha256::digest(spki(key)).to_vec()
    }

    fn root_json(ca: &str, ca_start: &str, log_start: &str) -> String {
        let certs: Vec<serde_json::Value> = keys::pem_blocks(ca)
            .into_iter()
            .map(|(_, der)| serde_json::json!({"rawBytes": b64(&der)}))
            .collect();
        let key = rekor_key();
        serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{"baseUrl": "https://rekor.example",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {"rawBytes": b64(&spki(&key)), "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                              "validFor": {"start": log_start}},
                "logId": {"keyId": b64(&log_id(&key))}}],
            "certificateAuthorities": [{"subject": {"organization": "test", "commonName": "test"},
                "uri": "https://fulcio.example",
                "certChain": {"certificates": certs},
                "validFor": {"start": ca_start}}],
            "ctlogs": [],
            "timestampAuthorities": []
        })
        .to_string()
    }

    fn root() -> TrustedRoot {
        TrustedRoot::parse(root_json(CA, "2000-01-01T00:00:00Z", "2000-01-01T00:00:00Z").as_bytes())
            .unwrap()
    }

    const PAYLOAD: &[u8] = b"{\"critical\":{}}";
    const SIGNATURE: &[u8] = b"a signature";

    fn body(payload: &[u8], signature: &[u8], cert_pem: &str) -> String {
        use sha2::Digest as _;
        b64(serde_json::json!({
            "apiVersion": "0.0.1", "kind": "hashedrekord",
            "spec": {"data": {"hash": {"algorithm": "sha256",
                                        "value": hex::encode(sha2::Sha256::digest(payload))}},
                     "signature": {"content": b64(signature),
                                   "publicKey": {"content": b64(cert_pem.as_bytes())}}}
        })
        .to_string()
        .as_bytes())
    }

    /// A Rekor entry for `body` at `time`, from the root's log.
    fn bundle(body: String, time: i64) -> BundlePayload {
        BundlePayload {
            body,
            integrated_time: time,
            log_index: 42,
            log_id: hex::encode(log_id(&rekor_key())),
        }
    }

    fn sign(payload: &BundlePayload, key: &p256::ecdsa::SigningKey) -> String {
        let signature: p256::ecdsa::Signature = key.sign(&payload.canonical());
        let annotation = serde_json::json!({
            "SignedEntryTimestamp": b64(signature.to_der().as_bytes()),
            "Payload": {"body": payload.body, "integratedTime": payload.integrated_time,
                        "logIndex": payload.log_index, "logID": payload.log_id}
        });
        annotation.to_string()
    }

    fn chain(root: &TrustedRoot, t: SystemTime) -> Result<()> {
        keys::verify_chain_at(
            &leaf(),
            &root.authorities_at(t),
            Some(t),
            "the trusted root",
        )
    }

    fn good_time() -> i64 {
        LEAF_NOT_BEFORE as i64 + 60
    }

    fn leaf() -> Certificate {
        keys::certificate(LEAF).unwrap()
    }

    #[test]
    fn the_canonical_form_sorts_keys_and_has_no_spaces() {
        let p = BundlePayload {
            body: "Ym9keQ==".into(),
            integrated_time: 1700000000,
            log_index: 7,
            log_id: "c0ffee".into(),
        };
        assert_eq!(
            String::from_utf8(p.canonical()).unwrap(),
            r#"{"body":"Ym9keQ==","integratedTime":1700000000,"logID":"c0ffee","logIndex":7}"#
        );
    }

    #[test]
    fn a_trusted_root_parses_and_bad_ones_name_the_field() {
        let root = root();
        assert_eq!(root.authorities.len(), 1);
        assert_eq!(root.tlogs[0].key_id, log_id(&rekor_key()));
        let good = root_json(CA, "2000-01-01T00:00:00Z", "2000-01-01T00:00:00.5Z");
        assert!(
            TrustedRoot::parse(good.as_bytes()).is_ok(),
            "fractional seconds"
        );
        for (edit, want) in [
            (
                ("\"rawBytes\":\"MI", "\"rawBytes\":\"!!"),
                "certChain.certificates[0].rawBytes is not base64",
            ),
            (
                ("2000-01-01T00:00:00Z", "yesterday"),
                "validFor.start 'yesterday' is not a time",
            ),
            (
                ("\"keyId\":\"", "\"keyId\":\"#"),
                "tlogs[0].logId.keyId is not base64",
            ),
            (("trustedroot", "bundle"), "is not a sigstore trusted root"),
            (("\"tlogs\"", "\"tlogz\""), "no tlogs"),
        ] {
            let json = good.replacen(edit.0, edit.1, 1);
            assert_ne!(json, good, "{want}");
            let err = format!("{:#}", TrustedRoot::parse(json.as_bytes()).unwrap_err());
            assert!(err.contains(want), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(TrustedRoot::parse(b"[]").is_err());
        // A log with an ed25519 key (Rekor v2) is left out, not fatal.
        let ed25519 = b64(&[
            &hex::decode("302a300506032b6570032100").unwrap()[..],
            &[1u8; 32],
        ]
        .concat());
        let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
        let mut log = json["tlogs"][0].clone();
        log["publicKey"]["rawBytes"] = ed25519.into();
        json["tlogs"].as_array_mut().unwrap().insert(0, log);
        let both = TrustedRoot::parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(both.tlogs.len(), 1);
    }

    #[test]
    fn a_good_entry_verifies() {
        let payload = bundle(body(PAYLOAD, SIGNATURE, LEAF), good_time());
        let entry = verify_entry(
            &root(),
            &sign(&payload, &rekor_key()),
            PAYLOAD,
            SIGNATURE,
            &leaf(),
        )
        .unwrap();
        assert_eq!(entry.time, payload.time().unwrap());
        // The leaf chains to the CA at the entry's time, long after the leaf expired.
        chain(&root(), entry.time).unwrap();
    }

    #[test]
    fn hostile_entries_are_refused() {
        let good = bundle(body(PAYLOAD, SIGNATURE, LEAF), good_time());
        let check = |annotation: &str| {
            verify_entry(&root(), annotation, PAYLOAD, SIGNATURE, &leaf()).unwrap_err()
        };
        // The SET is over the entry: a later time, or another body, breaks it.
        let signed = sign(&good, &rekor_key());
        let moved = signed.replace(
            &format!("\"integratedTime\":{}", good.integrated_time),
            &format!("\"integratedTime\":{}", good.integrated_time + 1),
        );
        assert_ne!(moved, signed);
        assert!(check(&moved).contains("SignedEntryTimestamp does not verify"));
        // Signed by a log the root does not name.
        let other = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let mut foreign = bundle(body(PAYLOAD, SIGNATURE, LEAF), good_time());
        foreign.log_id = hex::encode(log_id(&other));
        assert!(check(&sign(&foreign, &other)).contains("which the trusted root does not name"));
        // The root's key, but a SET from another key.
        assert!(check(&sign(&good, &other)).contains("does not verify"));
        // Before the log was valid.
        let late = TrustedRoot::parse(
            root_json(CA, "2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z").as_bytes(),
        )
        .unwrap();
        let err = verify_entry(&late, &signed, PAYLOAD, SIGNATURE, &leaf()).unwrap_err();
        assert!(err.contains("outside the validity of log"), "{err}");
        // Entries for something else, correctly signed.
        for (body, want) in [
            (body(b"other", SIGNATURE, LEAF), "for other data"),
            (body(PAYLOAD, b"other", LEAF), "for another signature"),
            (
                body(PAYLOAD, SIGNATURE, OTHER_CA),
                "for another certificate",
            ),
            (
                b64(b"{\"kind\":\"intoto\",\"apiVersion\":\"0.0.1\"}"),
                "not a hashedrekord",
            ),
            ("!!".to_string(), "body is not base64"),
        ] {
            let err = check(&sign(&bundle(body, good_time()), &rekor_key()));
            assert!(err.contains(want), "{want}: {err}");
        }
        assert!(check("{}").contains("does not parse"));
        assert!(check(&sign(
            &bundle(body(PAYLOAD, SIGNATURE, LEAF), -1),
            &rekor_key()
        ))
        .contains("integratedTime -1"));
    }

    #[test]
    fn the_chain_is_checked_at_the_entry_time() {
        let root = root();
        let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs as u64);
        let t = at(good_time());
        assert!(chain(&root, t).is_ok());
        // Before the leaf was issued (and after: it lives a day).
        for when in [
            at(LEAF_NOT_BEFORE as i64 - 3600),
            at(LEAF_NOT_BEFORE as i64 + 2 * 86400),
        ] {
            let err = chain(&root, when).unwrap_err().to_string();
            assert!(err.contains("was not valid at"), "{err}");
        }
        // A root without that CA.
        let other = TrustedRoot::parse(
            root_json(OTHER_CA, "2000-01-01T00:00:00Z", "2000-01-01T00:00:00Z").as_bytes(),
        )
        .unwrap();
        let err = chain(&other, t).unwrap_err().to_string();
        assert!(err.contains("does not chain to the trusted root"), "{err}");
        // The CA, but its validFor begins after the entry.
        let later = TrustedRoot::parse(
            root_json(CA, "2100-01-01T00:00:00Z", "2000-01-01T00:00:00Z").as_bytes(),
        )
        .unwrap();
        assert!(later.authorities_at(t).is_empty());
        let err = chain(&later, t).unwrap_err().to_string();
        assert!(err.contains("does not chain to the trusted root"), "{err}");
    }
}
