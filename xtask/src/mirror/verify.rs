//! Signature checks against a source registry, before `mirror` or `save` writes
//! anything: the policy's shape says which manifests must carry a signature it accepts.

use anyhow::Result;
use std::sync::Arc;

use crate::naming::ImageRef;
use crate::oci::registry::Client;
use crate::oci::{Digest, Tag};
use crate::trust::{self, Rule};

/// What the check found, for a copy to carry along and the summary to show.
pub use crate::trust::image::Verdict;

/// Ok(Err(reason)) when the image is refused; Err when it could not be checked.
pub async fn check(
    registry: &Client,
    source: &ImageRef,
    digest: &Digest,
    platforms: Option<&[String]>,
    rule: Option<&Arc<Rule>>,
) -> Result<Result<Verdict, String>> {
    let policy = match rule.map(|r| r.as_ref()) {
        None => {
            return Ok(Ok(Verdict {
                note: "not verified (no policy)".into(),
                ..Verdict::default()
            }))
        }
        Some(Rule::Unverified(reason)) => {
            return Ok(Ok(Verdict {
                note: format!("not verified ({})", crate::text::printable(reason)),
                ..Verdict::default()
            }))
        }
        Some(Rule::Signed(policy)) => policy,
    };
    let store = trust::image::Remote {
        registry,
        repository: &source.repository,
    };
    trust::image::check(&store, source, digest, platforms, policy).await
}

/// The signature tags of the image and every manifest below it, unchecked.
pub async fn signatures(
    registry: &Client,
    source: &ImageRef,
    digest: &Digest,
) -> Result<Vec<(Tag, Digest)>> {
    let store = trust::image::Remote {
        registry,
        repository: &source.repository,
    };
    trust::image::signature_tags(&store, digest).await
}
