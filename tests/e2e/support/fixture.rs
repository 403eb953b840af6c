//! The fixture the mirror and archive tests share: a buildx-built two-platform index
//! with provenance attestations, seeded into loopback registries with skopeo, and
//! digest checks with `skopeo inspect --raw`.

use super::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Bytes that do not compress away (xorshift), the same for the same seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A two-platform image with provenance, built once per test run as an OCI archive.
pub fn fixture_archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let dir = project_root().join(format!("target/e2e-cache/mirror-fixture-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("Dockerfile"), "FROM scratch\nARG TARGETARCH\nCOPY shared.bin /shared.bin\nCOPY arch-${TARGETARCH}.txt /arch.txt\n").unwrap();
        // 3 MiB that does not compress away, identical for both platforms.
        let shared = noise(0x2545f4914f6cdd1d, 3 << 20);
        fs::write(dir.join("shared.bin"), shared).unwrap();
        fs::write(dir.join("arch-amd64.txt"), "amd64\n").unwrap();
        fs::write(dir.join("arch-arm64.txt"), "arm64\n").unwrap();
        let archive = dir.join("fixture.tar");
        run(
            "docker",
            &[
                "buildx", "build", "--quiet", "--platform", "linux/amd64,linux/arm64", "--provenance=mode=min",
                "--output", &format!("type=oci,dest={}", archive.display()), dir.to_str().unwrap(),
            ],
        );
        archive
    })
}

/// `skopeo copy --all --preserve-digests` between two references, TLS unverified.
pub fn skopeo_copy(from: &str, to: &str) {
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            from,
            to,
        ],
    );
}

/// Puts the fixture into `registry` as each of `repositories` (tag v1).
pub fn seed(registry: &str, repositories: &[&str]) {
    let archive = fixture_archive();
    for repository in repositories {
        skopeo_copy(
            &format!("oci-archive:{}", archive.display()),
            &format!("docker://{registry}/{repository}:v1"),
        );
    }
}

/// A cosign-style signature tag beside `fixture/app:v1` (any manifest will do as
/// content); the tag.
pub fn sign_with_a_tag(registry: &str) -> String {
    let (digest, _) = raw_digest(&format!("{registry}/fixture/app:v1"));
    let signature_tag = format!("{}.sig", digest.replace(':', "-"));
    skopeo_copy(
        &format!("docker://{registry}/fixture/app:v1"),
        &format!("docker://{registry}/fixture/app:{signature_tag}"),
    );
    signature_tag
}

/// A source registry seeded with the fixture as `repositories`, and an empty destination.
/// Needs Docker (the fixture is built with buildx), the registry and skopeo.
pub fn source_and_destination(repositories: &[&str]) -> (Registry, Registry) {
    let (src, dst) = (Registry::plain(), Registry::plain());
    seed(&src.addr, repositories);
    (src, dst)
}

/// sha256 of what a reference points at, per skopeo.
pub fn raw_digest(reference: &str) -> (String, serde_json::Value) {
    let raw = skopeo_inspect("--raw", reference);
    use sha2::Digest as _;
    let digest = format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(raw.as_bytes()))
    );
    (digest, serde_json::from_str(&raw).unwrap())
}

/// The index and every child are byte-identical at `copy`.
pub fn assert_same_tree(original: &str, copy: &str) {
    let (digest, index) = raw_digest(original);
    let (copied_digest, _) = raw_digest(copy);
    assert_eq!(digest, copied_digest, "index digest of {copy}");
    let children = index["manifests"]
        .as_array()
        .expect("the fixture is an index");
    assert!(
        children
            .iter()
            .any(|c| c["platform"]["architecture"] == "unknown"),
        "the fixture carries attestations: {index}"
    );
    let (original_repo, copy_repo) = (
        original.rsplit_once(':').unwrap().0,
        copy.rsplit_once(':').unwrap().0,
    );
    for child in children {
        let child_digest = child["digest"].as_str().unwrap();
        let (a, _) = raw_digest(&format!("{original_repo}@{child_digest}"));
        let (b, _) = raw_digest(&format!("{copy_repo}@{child_digest}"));
        assert_eq!(a, b);
        assert_eq!(a, child_digest);
    }
}

/// The largest layer of the fixture's amd64 image.
pub fn big_layer(registry: &str, repository: &str) -> String {
    let (_, index) = raw_digest(&format!("{registry}/{repository}:v1"));
    let amd64 = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap();
    let (_, manifest) = raw_digest(&format!(
        "{registry}/{repository}@{}",
        amd64["digest"].as_str().unwrap()
    ));
    let layers = manifest["layers"].as_array().unwrap();
    let big = layers
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap();
    big["digest"].as_str().unwrap().to_string()
}
