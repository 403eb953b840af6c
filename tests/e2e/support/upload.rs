//! Writing to a registry by hand through the distribution API, with curl: blobs and
//! manifests exactly as given, to craft what no client would push.

use super::{run, Registry};
use sha2::{Digest as _, Sha256};
use std::fs;

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A monolithic blob upload with curl; returns the digest.
pub fn push_blob(registry: &Registry, repository: &str, data: &[u8]) -> String {
    push_blob_as(registry, repository, data, sha256(data))
}

/// The same, naming the blob by `digest` (sha256 or sha512).
pub fn push_blob_as(registry: &Registry, repository: &str, data: &[u8], digest: String) -> String {
    let headers = run(
        "curl",
        &[
            "-sf",
            "-X",
            "POST",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &registry.url(&format!("/v2/{repository}/blobs/uploads/")),
        ],
    );
    let location = headers
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.eq_ignore_ascii_case("location")
                .then(|| value.trim().to_string())
        })
        .expect("the registry opened an upload");
    let location = if location.starts_with("http") {
        location
    } else {
        registry.url(&location)
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{separator}digest={digest}");
    put(&url, "application/octet-stream", data);
    digest
}

/// A PUT of `body` as `content_type`, failing the test unless it succeeds.
pub fn put(url: &str, content_type: &str, body: &[u8]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), body).unwrap();
    let header = format!("Content-Type: {content_type}");
    let data = format!("@{}", file.path().display());
    run(
        "curl",
        &[
            "-sf",
            "-X",
            "PUT",
            "-H",
            &header,
            "--data-binary",
            &data,
            url,
        ],
    );
}

/// An OCI manifest PUT by tag or digest; returns its digest.
pub fn push_manifest(
    registry: &Registry,
    repository: &str,
    reference: Option<&str>,
    body: &str,
) -> String {
    let digest = sha256(body.as_bytes());
    let url = registry.url(&format!(
        "/v2/{repository}/manifests/{}",
        reference.unwrap_or(&digest)
    ));
    put(&url, MANIFEST, body.as_bytes());
    digest
}

pub const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A small image under `tag` whose config names the tag, so every tag has its own digest.
pub fn push_tagged(registry: &Registry, repository: &str, tag: &str, config_type: &str) -> String {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","tag":"{tag}","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
    );
    let config_digest = push_blob(registry, repository, config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
        "layers": [],
    });
    push_manifest(registry, repository, Some(tag), &manifest.to_string())
}
