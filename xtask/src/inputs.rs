//! Input digests: a sha256 over everything an image is built from, so that an image
//! whose inputs did not change is never built again.
//!
//! Per platform, the digest covers the rendered Dockerfile (with the parent's reference,
//! which carries `--registry/--org/--version`, replaced by a placeholder), the build
//! context (paths, kinds, modes, contents, sorted), the build arguments, the platform,
//! the base references as the catalog gives them (a pinned `@sha256:` is part of the
//! reference, so pinned bases fold in as they come), and the parent's input digest for
//! the same platform. The image's digest for a set of platforms is a sha256 over the
//! per-platform ones. Labels that name the release (`version`, `created`, `revision`)
//! are outputs, not inputs: a new release tag of an unchanged image is a retag.

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

use crate::catalog::Image;
use crate::oci::parts::file_sha256;
use crate::oci::Digest;
use crate::render::{ContextEntry, Rendered};

/// The label on the image config, and the annotation on the index and each manifest.
pub const KEY: &str = "io.kubeopencode.input-digest";

/// Bumped whenever what is hashed changes, so old digests never match by accident.
const SCHEME: u32 = 1;

/// One image's input digests: per platform, and for the set of platforms of this build.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Inputs {
    pub digest: Digest,
    pub platforms: BTreeMap<String, Digest>,
}

impl Inputs {
    pub fn of_platform(&self, platform: &str) -> Option<&Digest> {
        self.platforms.get(platform)
    }
}

fn sha256_json(value: &serde_json::Value) -> Digest {
    Digest::of_sha256(value.to_string().as_bytes())
}

/// The digest of a set of per-platform digests: what a build of those platforms, or a
/// merge of them, records on its index.
pub fn combine(platforms: &BTreeMap<String, Digest>) -> Digest {
    sha256_json(&json!({ "scheme": SCHEME, "platforms": platforms }))
}

/// `image`'s inputs for `platforms`, given its parent's.
pub fn compute(
    image: &Image,
    rendered: &Rendered,
    args: &BTreeMap<String, String>,
    platforms: &[String],
    parent: Option<&Inputs>,
) -> Result<Inputs> {
    let dockerfile = match &rendered.parent_context {
        Some(key) => rendered.dockerfile.replace(key.as_str(), "{{parent}}"),
        None => rendered.dockerfile.clone(),
    };
    let context = context_digest(rendered)?;
    let bases: BTreeMap<&String, String> = image
        .bases
        .iter()
        .map(|(role, reference)| (role, reference.to_string()))
        .collect();
    let per_platform: BTreeMap<String, Digest> = platforms
        .iter()
        .map(|platform| {
            let document = json!({
                "scheme": SCHEME,
                "platform": platform,
                "dockerfile": dockerfile,
                "context": context,
                "args": args,
                "bases": bases,
                "parent": parent.and_then(|p| p.of_platform(platform)),
            });
            (platform.clone(), sha256_json(&document))
        })
        .collect();
    Ok(Inputs {
        digest: combine(&per_platform),
        platforms: per_platform,
    })
}

/// Every context entry, sorted by path (a `BTreeMap` already is): kind, mode, and the
/// sha256 of a file's bytes or a link's target.
fn context_digest(rendered: &Rendered) -> Result<Digest> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries = Vec::new();
    for (path, entry) in &rendered.context_files {
        let path = path.to_string_lossy();
        entries.push(match entry {
            ContextEntry::File(source) => {
                let mode = std::fs::metadata(source)
                    .with_context(|| format!("reading {}", source.display()))?
                    .permissions()
                    .mode();
                json!(["file", path, mode & 0o7777, file_sha256(source)?])
            }
            ContextEntry::Dir(mode) => json!(["dir", path, mode & 0o7777]),
            ContextEntry::Symlink(target) => json!(["link", path, target.to_string_lossy()]),
        });
    }
    Ok(sha256_json(&json!(entries)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::{project, spec};
    use crate::catalog::Catalog;
    use crate::naming::Publish;
    use crate::render::{render_all, RenderOptions};
    use std::path::Path;

    fn inputs_of(dir: &Path, version: &str) -> BTreeMap<String, Inputs> {
        let catalog = Catalog::load(dir).unwrap();
        let images = catalog.build_order(&[]).unwrap();
        let options = RenderOptions {
            base_registry: None,
            publish: Publish {
                registry: "127.0.0.1:5000".into(),
                org: "e2e".into(),
                version: version.into(),
                release_tags: false,
            },
        };
        let rendered = render_all(&catalog, &images, &options).unwrap();
        let platforms = ["linux/amd64".to_string(), "linux/arm64".to_string()];
        let mut all: BTreeMap<String, Inputs> = BTreeMap::new();
        for (image, rendered) in images.iter().zip(&rendered) {
            let parent = image.spec.parent.as_ref().map(|p| all[p].clone());
            let inputs = compute(
                image,
                rendered,
                &BTreeMap::new(),
                &platforms,
                parent.as_ref(),
            )
            .unwrap();
            all.insert(image.name.clone(), inputs);
        }
        all
    }

    #[test]
    fn a_change_reaches_the_image_and_its_children_only() {
        let dir = project(&[
            ("a", &spec(None)),
            ("b", &spec(Some("a"))),
            ("c", &spec(None)),
        ]);
        let before = inputs_of(dir.path(), "v1.0.0");
        // The release's name is not an input.
        assert_eq!(before, inputs_of(dir.path(), "v1.0.1"));
        assert_ne!(
            before["a"].platforms["linux/amd64"],
            before["a"].platforms["linux/arm64"]
        );
        assert_eq!(
            before["a"].digest,
            combine(&before["a"].platforms),
            "the set's digest is the combination of the platforms'"
        );
        std::fs::write(dir.path().join("agents/a/extra.txt"), "new").unwrap();
        let after = inputs_of(dir.path(), "v1.0.0");
        assert_ne!(before["a"], after["a"]);
        assert_ne!(before["b"], after["b"]);
        assert_eq!(before["c"], after["c"]);
    }
}
