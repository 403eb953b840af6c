//! `bench mirror`, bundles: a whole `mirror save` of the corpus, then one image changed
//! and `save --since` the whole one, side by side in bytes.

use anyhow::Result;
use std::path::Path;

use super::{layer, measure, push_image, MIB};
use crate::context::Ctx;
use crate::oci::Registry;

/// One line: the whole bundle's size and time, and the incremental one's after one
/// image changed. Run last, since it changes the corpus.
pub(super) fn incremental_save(
    ctx: &Ctx,
    work: &Path,
    source: &str,
    images: &[String],
) -> Result<String> {
    let Some(changed) = images.first() else {
        return Ok("bundle: no images in the corpus, no bundle measured".into());
    };
    let full = work.join("bench-full.tar");
    let since = work.join("bench-since.tar");
    let save = |out: &Path, extra: &[String]| -> Result<(std::time::Duration, u64)> {
        let mut args: Vec<String> = ["images", "mirror", "save", "--out"]
            .iter()
            .map(|s| s.to_string())
            .chain([out.display().to_string()])
            .chain(extra.iter().cloned())
            .collect();
        for image in images {
            args.extend(["--image".into(), format!("{source}/{image}:v1")]);
        }
        let (time, _) = measure(
            &std::env::current_exe()?.to_string_lossy(),
            &args,
            &ctx.root,
        )?;
        Ok((time, std::fs::metadata(out)?.len()))
    };
    let (full_time, full_size) = save(&full, &[])?;
    // One image of a release changes: the same base layer, a new layer of its own.
    let (base, own) = (layer(1000, 24 * MIB), layer(77_777, 4 * MIB));
    ctx.block_on(async {
        let registry = ctx.registries.get(&Registry::parse(source)?).await?;
        let layers = vec![&base, &own];
        push_image(
            &registry,
            changed,
            &[("amd64", layers.clone()), ("arm64", layers)],
        )
        .await
    })?;
    let (since_time, since_size) = save(&since, &["--since".into(), full.display().to_string()])?;
    let _ = (std::fs::remove_file(&full), std::fs::remove_file(&since));
    Ok(format!(
        "bundle: whole save of {} images {} in {:.2}s; after one image changed, --since it {} in {:.2}s ({:.3} of the whole)",
        images.len(),
        crate::mirror::human_bytes(full_size),
        full_time.as_secs_f64(),
        crate::mirror::human_bytes(since_size),
        since_time.as_secs_f64(),
        since_size as f64 / full_size.max(1) as f64
    ))
}
