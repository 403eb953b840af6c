//! `images list`: what the catalog holds.

use anyhow::Result;
use serde::Serialize;

use crate::catalog::{Catalog, SizeBudget};
use crate::cli::ListArgs;
use crate::report::print_list;

#[derive(Serialize)]
struct Entry<'a> {
    name: &'a str,
    description: &'a str,
    source: String,
    parent: Option<&'a str>,
    platforms: &'a [String],
    bases: Vec<String>,
    size: Option<&'a SizeBudget>,
}

impl ListArgs {
    pub fn run(self, ctx: &crate::context::Ctx) -> Result<()> {
        let root = ctx.root.as_path();
        let catalog = Catalog::load(root)?;
        let entries: Vec<Entry> = catalog
            .build_order(&[])?
            .into_iter()
            .map(|image| Entry {
                name: &image.name,
                description: &image.spec.description,
                source: image.source_label(),
                parent: image.spec.parent.as_deref(),
                platforms: &image.spec.platforms,
                bases: image.bases.values().map(ToString::to_string).collect(),
                size: image.spec.size.as_ref(),
            })
            .collect();
        print_list(
            self.json,
            &entries,
            &["NAME", "PARENT", "PLATFORMS", "BUDGET", "DESCRIPTION"],
            |e| {
                vec![
                    e.name.to_string(),
                    e.parent.unwrap_or("-").to_string(),
                    e.platforms.join(","),
                    budget(e.size),
                    e.description.to_string(),
                ]
            },
        )
    }
}

fn budget(size: Option<&SizeBudget>) -> String {
    let Some(size) = size else { return "-".into() };
    match (size.max_uncompressed_mib, size.max_compressed_mib) {
        (Some(u), Some(c)) => format!("{u} MiB ({c} MiB gz)"),
        (Some(u), None) => format!("{u} MiB"),
        (None, Some(c)) => format!("{c} MiB gz"),
        (None, None) => "-".into(),
    }
}
