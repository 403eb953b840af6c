//! Reading OCI indexes as JSON, as BuildKit writes them: platform children and the
//! attestation manifests that point at them.

use serde_json::Value;

/// `os/architecture[/variant]` of a descriptor's `platform`, or of an image config.
pub fn platform_name(platform: &Value) -> String {
    let mut name = format!(
        "{}/{}",
        platform["os"].as_str().unwrap_or("unknown"),
        platform["architecture"].as_str().unwrap_or("unknown")
    );
    if let Some(variant) = platform["variant"].as_str().filter(|v| !v.is_empty()) {
        name.push('/');
        name.push_str(variant);
    }
    name
}

/// An attestation manifest (BuildKit's provenance, SBOMs), not a runnable image.
pub fn is_attestation(descriptor: &Value) -> bool {
    descriptor["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"
        || descriptor["platform"]["os"] == "unknown"
}

/// The runnable child of `index` for `platform`.
pub fn child_for<'a>(index: &'a Value, platform: &str) -> Option<&'a Value> {
    children(index).find(|d| !is_attestation(d) && platform_name(&d["platform"]) == platform)
}

/// The attestation manifests of `index` that describe the child `digest`.
pub fn attestations_for(index: &Value, digest: &str) -> Vec<Value> {
    children(index)
        .filter(|d| is_attestation(d) && d["annotations"]["vnd.docker.reference.digest"] == digest)
        .cloned()
        .collect()
}

pub fn children(index: &Value) -> impl Iterator<Item = &Value> {
    index["manifests"].as_array().into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn children_and_their_attestations() {
        let index = json!({"manifests": [
            {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": "sha256:b", "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:c", "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                             "vnd.docker.reference.digest": "sha256:b"}},
        ]});
        assert_eq!(
            child_for(&index, "linux/arm64/v8").unwrap()["digest"],
            "sha256:a"
        );
        assert_eq!(
            child_for(&index, "linux/amd64").unwrap()["digest"],
            "sha256:b"
        );
        assert!(child_for(&index, "unknown/unknown").is_none());
        let attestations = attestations_for(&index, "sha256:b");
        assert_eq!(attestations.len(), 1);
        assert_eq!(attestations[0]["digest"], "sha256:c");
        assert!(attestations_for(&index, "sha256:a").is_empty());
    }
}
