//! Signatures in the shapes publishers write them: index only (cosign's default), the
//! platform manifests only (containers/image's per-instance check), both, and cosign 3's
//! Sigstore bundles stored as OCI 1.1 referrers (under the `sha256-<hex>` fallback tag,
//! since the distribution registry has no referrers API). Each case prints our verdict
//! beside the expected one and, where cosign 2.5 can judge, cosign's.

use crate::support::fixture::{raw_digest, seed};
use crate::support::upload::{push_blob, push_manifest, put};
use crate::support::*;
use crate::trust_verify::{
    base64, cosign, key_pair, local_ca, rekor_key, sign, trusted_root, IDENTITY, ISSUER,
};
use sha2::Digest as _;
use std::fs;
use std::path::Path;
use std::process::Command;

const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
const BUNDLE_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const IN_TOTO: &str = "application/vnd.in-toto+json";

/// The platform manifests of the fixture's index (attestation manifests left out).
fn platform_digests(index: &serde_json::Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["platform"]["architecture"] != "unknown")
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The in-toto statement cosign 3 signs for `digest`.
fn statement(repository: &str, digest: &str, predicate: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": predicate,
        "subject": [{"name": repository,
                     "digest": {"sha256": digest.trim_start_matches("sha256:")}}],
        "predicate": {}
    }))
    .unwrap()
}

fn pae(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {IN_TOTO} {} ", IN_TOTO.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// cosign 3's storage shape, made by cosign 2.5: a bundle referrer of `pinned` with key
/// `a`, of `predicate_type` (`SIGN_PREDICATE` for a signature) over `dir/PREDICATE`.
fn attest_bundle(dir: &Path, pinned: &str, predicate_type: &str, predicate: &str) {
    cosign(
        dir,
        &[
            "attest",
            "--yes",
            "--new-bundle-format",
            "--key",
            "a.key",
            "--tlog-upload=false",
            "--allow-insecure-registry",
            "--type",
            predicate_type,
            "--predicate",
            predicate,
            pinned,
        ],
    );
}

/// `cosign sign` of a reference by digest, as a publisher signs one platform manifest.
fn sign_digest(dir: &Path, pinned: &str, key: &str) {
    let key = format!("{key}.key");
    cosign(
        dir,
        &[
            "sign",
            "--yes",
            "--tlog-upload=false",
            "--allow-insecure-registry",
            "--key",
            &key,
            pinned,
        ],
    );
}

/// cosign's signature (base64 DER) over `bytes` with `dir/KEY.key`.
fn sign_blob(dir: &Path, key: &str, bytes: &[u8]) -> String {
    let file = dir.join("to-sign");
    fs::write(&file, bytes).unwrap();
    cosign(
        dir,
        &[
            "sign-blob",
            "--yes",
            "--tlog-upload=false",
            "--key",
            &format!("{key}.key"),
            file.to_str().unwrap(),
        ],
    )
    .trim()
    .to_string()
}

/// A v0.3 bundle by key `key` over `payload`, as cosign writes one for a key.
fn key_bundle(dir: &Path, key: &str, payload: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "mediaType": BUNDLE_TYPE,
        "verificationMaterial": {"publicKey": {"hint": "test"}},
        "dsseEnvelope": {"payload": base64(payload), "payloadType": IN_TOTO,
                         "signatures": [{"sig": sign_blob(dir, key, &pae(payload))}]}
    })
}

/// A keyless v0.3 bundle: key `c`'s certificate from the local CA, and a `dsse` Rekor
/// entry at `time` with its SET by `dir/rekor.key` (the test's Rekor).
fn keyless_bundle(dir: &Path, payload: &[u8], time: i64) -> serde_json::Value {
    let signature = sign_blob(dir, "c", &pae(payload));
    let leaf = fs::read_to_string(dir.join("leaf.pem")).unwrap();
    let der = crate::trust_verify::pem_ders(&leaf).remove(0);
    let body = serde_json::json!({"apiVersion": "0.0.1", "kind": "dsse", "spec": {
        "payloadHash": {"algorithm": "sha256", "value": hex::encode(sha2::Sha256::digest(payload))},
        "signatures": [{"signature": signature, "verifier": base64(leaf.as_bytes())}]}});
    let body = base64(body.to_string().as_bytes());
    let (log_id, set) = crate::trust_verify::rekor_set(dir, &body, time, 7);
    serde_json::json!({
        "mediaType": BUNDLE_TYPE,
        "verificationMaterial": {
            "certificate": {"rawBytes": base64(&der)},
            "tlogEntries": [{"logIndex": "7", "logId": {"keyId": base64(&log_id)},
                "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                "integratedTime": time.to_string(),
                "inclusionPromise": {"signedEntryTimestamp": base64(&set)},
                "canonicalizedBody": body}]},
        "dsseEnvelope": {"payload": base64(payload), "payloadType": IN_TOTO,
                         "signatures": [{"sig": signature}]}
    })
}

/// Stores `bundle` as cosign 3 does on a registry without the referrers API: a referrer
/// manifest of `subject`, listed in the index tagged `sha256-<hex>`.
fn attach_bundle(
    registry: &Registry,
    repository: &str,
    subject: &str,
    bundle: &serde_json::Value,
    predicate: &str,
) {
    let bytes = bundle.to_string().into_bytes();
    let config = push_blob(registry, repository, b"{}");
    let layer = push_blob(registry, repository, &bytes);
    let (subject_bytes, subject_type) = manifest(registry, repository, subject);
    let referrer = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": BUNDLE_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": BUNDLE_TYPE, "digest": layer, "size": bytes.len()}],
        "annotations": {"dev.sigstore.bundle.content": "dsse-envelope",
                        "dev.sigstore.bundle.predicateType": predicate},
        "subject": {"mediaType": subject_type, "digest": subject, "size": subject_bytes.len()}
    })
    .to_string();
    let referrer_digest = push_manifest(registry, repository, None, &referrer);
    let tag = subject.replace(':', "-");
    let mut index = match http_status(&registry.url(&format!("/v2/{repository}/manifests/{tag}"))) {
        Some(200) => serde_json::from_slice(&manifest(registry, repository, &tag).0).unwrap(),
        _ => serde_json::json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": []}),
    };
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": referrer_digest, "size": referrer.len(), "artifactType": BUNDLE_TYPE}));
    let url = registry.url(&format!("/v2/{repository}/manifests/{tag}"));
    put(&url, INDEX_TYPE, index.to_string().as_bytes());
}

/// A manifest's exact bytes and media type.
fn manifest(registry: &Registry, repository: &str, reference: &str) -> (Vec<u8>, String) {
    let out = Command::new("curl")
        .args([
            "-sf",
            "-H",
            &format!("Accept: {INDEX_TYPE}, application/vnd.oci.image.manifest.v1+json"),
            &registry.url(&format!("/v2/{repository}/manifests/{reference}")),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {repository} {reference}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let media_type = json["mediaType"].as_str().unwrap_or(INDEX_TYPE).to_string();
    (out.stdout, media_type)
}

/// Keys `a` (trusted), `b` (another), `c` with the local CA's certificate, a Rekor key
/// and the trusted root naming both.
fn keys() -> tempfile::TempDir {
    let keys = tempfile::tempdir().unwrap();
    let dir = keys.path();
    for name in ["a", "b", "c"] {
        key_pair(dir, name);
    }
    local_ca(dir, "c");
    rekor_key(dir);
    let ca = fs::read_to_string(dir.join("ca.pem")).unwrap();
    let rekor = fs::read(dir.join("rekor.der")).unwrap();
    fs::write(dir.join("root.json"), trusted_root(&ca, &rekor)).unwrap();
    keys
}

/// cosign's verdict on `reference`: `verify` for legacy signatures, and
/// `verify-attestation --new-bundle-format --type sign/v1` for bundles (cosign 2.5's
/// `verify` does not read bundles). True when it accepts.
fn cosign_accepts(dir: &Path, reference: &str, bundle: bool) -> bool {
    let mut command = Command::new("cosign");
    if bundle {
        command.args([
            "verify-attestation",
            "--new-bundle-format",
            "--trusted-root",
            "root.json",
            "--type",
            SIGN_PREDICATE,
        ]);
    } else {
        command.arg("verify");
    }
    command
        .args([
            "--key",
            "a.pub",
            "--insecure-ignore-tlog",
            "--allow-insecure-registry",
            reference,
        ])
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success()
}

struct Case {
    name: &'static str,
    /// Extra mirror flags (the policy is key `a` unless the case says otherwise).
    flags: Vec<String>,
    /// None: accepted; Some(reason): one REFUSED line holding it.
    expected: Option<&'static str>,
    /// cosign's verdicts that stand for ours: (what it checked, accepted).
    cosign: Vec<(String, bool)>,
    /// Said in the output when accepted.
    note: Option<&'static str>,
}

#[test]
fn each_signature_shape_gets_the_verdict_cosign_and_containers_image_give() {
    need!(Docker, Registry, Skopeo, Cosign);
    let (src, dst) = (Registry::plain(), Registry::plain());
    let keys = keys();
    let dir = keys.path();
    let r = src.addr.clone();
    let names = [
        "s/index",
        "s/children",
        "s/both",
        "s/bundle",
        "s/bundle-legacy",
        "s/keyless",
        "s/unsigned",
        "s/other-key",
        "s/bundle-other-digest",
        "s/bundle-spdx",
        "s/bundle-tampered",
        "s/children-one-unsigned",
        "s/index-under-all",
    ];
    seed(&r, &names);
    let image = |name: &str| format!("{r}/{name}:v1");
    let (index_digest, index) = raw_digest(&image("s/index"));
    let platforms = platform_digests(&index);
    let by_digest = |name: &str, digest: &str| format!("{r}/{name}@{digest}");
    let key_a = ["--key", "a.key"];
    let attest = |name: &str, predicate_type: &str, predicate: &str| {
        fs::write(dir.join("predicate.json"), predicate).unwrap();
        let pinned = by_digest(name, &index_digest);
        attest_bundle(dir, &pinned, predicate_type, "predicate.json");
    };

    sign(dir, &image("s/index"), &key_a);
    for digest in &platforms {
        sign_digest(dir, &by_digest("s/children", digest), "a");
    }
    // Here the last platform is signed by another key only.
    let (last, rest) = platforms.split_last().unwrap();
    for digest in rest {
        sign_digest(dir, &by_digest("s/children-one-unsigned", digest), "a");
    }
    sign_digest(dir, &by_digest("s/children-one-unsigned", last), "b");
    sign(dir, &image("s/both"), &["--key", "a.key", "--recursive"]);
    attest("s/bundle", SIGN_PREDICATE, "{}");
    attest("s/bundle-legacy", SIGN_PREDICATE, "{}");
    sign(dir, &image("s/bundle-legacy"), &key_a);
    sign(dir, &image("s/other-key"), &["--key", "b.key"]);
    sign(dir, &image("s/index-under-all"), &key_a);
    attest("s/bundle-spdx", "spdxjson", r#"{"spdxVersion":"SPDX-2.3"}"#);
    let repository = |name: &str| format!("{r}/{name}");
    let other = format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(b"another image"))
    );
    attach_bundle(
        &src,
        "s/bundle-other-digest",
        &index_digest,
        &key_bundle(
            dir,
            "a",
            &statement(&repository("s/bundle-other-digest"), &other, SIGN_PREDICATE),
        ),
        SIGN_PREDICATE,
    );
    let mut tampered = key_bundle(
        dir,
        "a",
        &statement(
            &repository("s/bundle-tampered"),
            &index_digest,
            SIGN_PREDICATE,
        ),
    );
    // Signed over one statement, carrying another (a different predicate, same subject).
    tampered["dsseEnvelope"]["payload"] = base64(&statement(
        &repository("s/bundle-tampered"),
        &index_digest,
        "https://sigstore.dev/cosign/sign/v1?",
    ))
    .into();
    attach_bundle(
        &src,
        "s/bundle-tampered",
        &index_digest,
        &tampered,
        SIGN_PREDICATE,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    attach_bundle(
        &src,
        "s/keyless",
        &index_digest,
        &keyless_bundle(
            dir,
            &statement(&repository("s/keyless"), &index_digest, SIGN_PREDICATE),
            now + 60,
        ),
        SIGN_PREDICATE,
    );

    let judge = |name: &str, bundle: bool| (image(name), cosign_accepts(dir, &image(name), bundle));
    let per_platform = |name: &str| -> Vec<(String, bool)> {
        platforms
            .iter()
            .map(|d| {
                (
                    by_digest(name, d),
                    cosign_accepts(dir, &by_digest(name, d), false),
                )
            })
            .collect()
    };
    let flags = |extra: &[&str]| extra.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let root = dir.join("root.json").display().to_string();
    let cases = vec![
        Case {
            name: "s/index",
            flags: vec![],
            expected: None,
            cosign: vec![judge("s/index", false)],
            note: None,
        },
        Case {
            name: "s/children",
            flags: vec![],
            expected: None,
            cosign: per_platform("s/children"),
            note: Some("the index itself is unsigned"),
        },
        Case {
            name: "s/both",
            flags: vec![],
            expected: None,
            cosign: vec![judge("s/both", false)],
            note: None,
        },
        Case {
            name: "s/bundle",
            flags: vec![],
            expected: None,
            cosign: vec![judge("s/bundle", true)],
            note: None,
        },
        Case {
            name: "s/bundle-legacy",
            flags: vec![],
            expected: None,
            cosign: vec![
                judge("s/bundle-legacy", true),
                judge("s/bundle-legacy", false),
            ],
            note: None,
        },
        Case {
            name: "s/keyless",
            flags: flags(&[
                "--trusted-root",
                &root,
                "--certificate-identity",
                IDENTITY,
                "--certificate-oidc-issuer",
                ISSUER,
            ]),
            expected: None,
            cosign: vec![],
            note: None,
        },
        Case {
            name: "s/unsigned",
            flags: vec![],
            expected: Some("unsigned"),
            cosign: vec![judge("s/unsigned", false), judge("s/unsigned", true)],
            note: None,
        },
        Case {
            name: "s/other-key",
            flags: vec![],
            expected: Some("no signature verifies with key"),
            cosign: vec![judge("s/other-key", false)],
            note: None,
        },
        Case {
            name: "s/bundle-other-digest",
            flags: vec![],
            expected: Some("its bundle signs another image"),
            cosign: vec![judge("s/bundle-other-digest", true)],
            note: None,
        },
        Case {
            name: "s/bundle-spdx",
            flags: vec![],
            expected: Some("an attestation of https://spdx.dev/Document"),
            cosign: vec![judge("s/bundle-spdx", true)],
            note: None,
        },
        Case {
            name: "s/bundle-tampered",
            flags: vec![],
            expected: Some("does not verify with key"),
            cosign: vec![judge("s/bundle-tampered", true)],
            note: None,
        },
        Case {
            name: "s/children-one-unsigned",
            flags: vec![],
            expected: Some("no signature verifies with key"),
            cosign: per_platform("s/children-one-unsigned"),
            note: None,
        },
        Case {
            name: "s/index-under-all",
            flags: flags(&["--signed", "all"]),
            expected: Some("unsigned (no sha256-"),
            cosign: vec![],
            note: None,
        },
    ];
    assert!(cases.len() >= 12);
    let key = dir.join("a.pub").display().to_string();
    let mut table = vec![format!(
        "{:<26} {:<9} {:<9} cosign",
        "case", "ours", "expected"
    )];
    let mut failures = Vec::new();
    for case in &cases {
        let to = format!("{}/{}", dst.addr, case.name.replace('/', "-"));
        let source = image(case.name);
        let mut args = vec!["images", "mirror", "--image", &source, "--to", &to];
        let keyed = !case.flags.iter().any(|f| f == "--trusted-root");
        if keyed {
            args.extend(["--verify-key", &key]);
        }
        let extra: Vec<&str> = case.flags.iter().map(String::as_str).collect();
        args.extend(extra);
        let output = xtask_in(&project_root(), &args, &[]);
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        let refused: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("REFUSED  "))
            .collect();
        let ours = if output.status.success() {
            "accepted"
        } else {
            "refused"
        };
        let expected = if case.expected.is_none() {
            "accepted"
        } else {
            "refused"
        };
        let cosign_says: Vec<String> = case
            .cosign
            .iter()
            .map(|(what, ok)| {
                format!(
                    "{}: {}",
                    what.rsplit('/').next().unwrap(),
                    if *ok { "accepts" } else { "refuses" }
                )
            })
            .collect();
        table.push(format!(
            "{:<26} {ours:<9} {expected:<9} {}",
            case.name,
            cosign_says.join("; ")
        ));
        if ours != expected {
            failures.push(format!(
                "{}: ours {ours}, expected {expected}: {stdout}{stderr}",
                case.name
            ));
            continue;
        }
        // cosign judges what it can: every digest the rule asks for verifies, or not.
        if !case.cosign.is_empty() {
            let cosign_accepts = case.cosign.iter().all(|(_, ok)| *ok);
            if cosign_accepts != case.expected.is_none() {
                failures.push(format!("{}: cosign disagrees: {cosign_says:?}", case.name));
            }
        }
        match case.expected {
            None => {
                let (digest, _) = raw_digest(&format!("{to}/{}:v1", case.name));
                assert_eq!(
                    digest, index_digest,
                    "{}: the copy keeps the digest",
                    case.name
                );
                if let Some(note) = case.note {
                    assert!(
                        stdout.contains(note) || stderr.contains(note),
                        "{}: {stdout}{stderr}",
                        case.name
                    );
                }
            }
            Some(reason) => {
                assert_eq!(refused.len(), 1, "{}: {stderr}", case.name);
                assert!(refused[0].contains(reason), "{}: {}", case.name, refused[0]);
                let prefix = format!("{}/", to.rsplit('/').next().unwrap());
                assert!(
                    !dst.tags().iter().any(|t| t.starts_with(&prefix)),
                    "{}: a refused image writes nothing: {:?}",
                    case.name,
                    dst.tags()
                );
            }
        }
    }
    println!("{}", table.join("\n"));
    assert!(
        failures.is_empty(),
        "{}\n{}",
        table.join("\n"),
        failures.join("\n")
    );

    // What proved trust came along: cosign verifies the copies at the destination.
    let copy = |name: &str| format!("{}/{}/{name}", dst.addr, name.replace('/', "-"));
    for (name, bundle) in [
        ("s/index", false),
        ("s/bundle", true),
        ("s/bundle-legacy", true),
    ] {
        let reference = format!("{}:v1", copy(name));
        assert!(
            cosign_accepts(dir, &reference, bundle),
            "cosign refuses the copy {reference}"
        );
    }
    for digest in &platforms {
        let reference = format!("{}@{digest}", copy("s/children"));
        assert!(
            cosign_accepts(dir, &reference, false),
            "cosign refuses the copy {reference}"
        );
    }
}

/// What proves trust travels with the image: through save and load, with the source
/// gone, cosign verifies the copy at the destination (legacy and bundle).
#[test]
fn signatures_and_bundles_travel_through_save_and_load() {
    need!(Docker, Registry, Skopeo, Cosign);
    let (src, dst) = (Registry::plain(), Registry::plain());
    let keys = keys();
    let dir = keys.path();
    let r = src.addr.clone();
    seed(&r, &["t/legacy", "t/bundle"]);
    let (digest, _) = raw_digest(&format!("{r}/t/legacy:v1"));
    sign(dir, &format!("{r}/t/legacy:v1"), &["--key", "a.key"]);
    fs::write(dir.join("empty.json"), "{}").unwrap();
    let pinned = format!("{r}/t/bundle@{digest}");
    attest_bundle(dir, &pinned, SIGN_PREDICATE, "empty.json");
    let key = dir.join("a.pub").display().to_string();
    let out = dir.join("signed.tar").display().to_string();
    let save = xtask(&[
        "images",
        "mirror",
        "save",
        "--image",
        &format!("{r}/t/legacy:v1"),
        "--image",
        &format!("{r}/t/bundle:v1"),
        "--out",
        &out,
        "--verify-key",
        &key,
    ]);
    assert!(save.status.success(), "{}", text(&save.stderr));
    drop(src);
    let to = format!("{}/air", dst.addr);
    let load = xtask(&[
        "images",
        "mirror",
        "load",
        &out,
        "--to",
        &to,
        "--verify-key",
        &key,
    ]);
    assert!(load.status.success(), "{}", text(&load.stderr));
    for (name, bundle) in [("t/legacy", false), ("t/bundle", true)] {
        let reference = format!("{to}/{name}:v1");
        assert_eq!(raw_digest(&reference).0, digest, "{reference}");
        assert!(
            cosign_accepts(dir, &reference, bundle),
            "cosign verifies the loaded copy {reference}"
        );
    }
}

/// cosign 3 attests as it signs, with a bundle referrer: `images sbom` reads an SPDX
/// attestation stored that way (cosign 2.5 writes the shape with --new-bundle-format).
#[test]
fn sbom_reads_an_spdx_attestation_stored_as_a_bundle() {
    need!(Docker, Registry, Skopeo, Cosign);
    let src = Registry::plain();
    let keys = tempfile::tempdir().unwrap();
    let dir = keys.path();
    key_pair(dir, "a");
    seed(&src.addr, &["sbom/app"]);
    let image = format!("{}/sbom/app:v1", src.addr);
    let (_, index) = raw_digest(&image);
    let amd64 = &platform_digests(&index)[0];
    let document = serde_json::json!({"spdxVersion": "SPDX-2.3", "SPDXID": "SPDXRef-DOCUMENT",
        "name": "app", "dataLicense": "CC0-1.0",
        "packages": [{"name": "bundled-tool", "SPDXID": "SPDXRef-1", "versionInfo": "4.2.0"}]});
    fs::write(dir.join("sbom.json"), document.to_string()).unwrap();
    let missing = xtask(&["images", "sbom", &image, "--platform", "linux/amd64"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("no SPDX bundle referrer"),
        "{}",
        text(&missing.stderr)
    );
    let pinned = format!("{}/sbom/app@{amd64}", src.addr);
    attest_bundle(dir, &pinned, "spdxjson", "sbom.json");
    let tags = src.tags();
    assert!(
        !tags.iter().any(|t| t.ends_with(".att")),
        "the attestation is a bundle referrer, not a .att tag: {tags:?}"
    );
    let out = xtask(&[
        "images",
        "sbom",
        &image,
        "--platform",
        "linux/amd64",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "bundled-tool" && p["version"] == "4.2.0"),
        "{report}"
    );
}
