//! `images mirror prune --to PREFIX [LISTS…]`: the tags under PREFIX that the lists no
//! longer select, printed (a dry run) or, with `--yes`, deleted. Manifests only: blobs
//! are left to the registry's garbage collection.
//!
//! The repositories looked at are the ones the lists map into PREFIX. `_catalog` is read
//! only with `--unmapped`: many registries turn it off, and by default `prune
//! kubeopencode` must not empty every other list's repositories. Without it, a
//! repository no list maps any more is not seen.

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::{lists, tagset};
use crate::cli::{MirrorPruneArgs, MirrorSelection};
use crate::context::Ctx;
use crate::naming::split_prefix;
use crate::oci::error::Error;
use crate::oci::image::{descriptor_digest, referrer_digests, Document};
use crate::oci::registry::{Client, Deletion};
use crate::oci::{Digest, Reference, Registry, Repository, Tag};

pub async fn run(ctx: &Ctx, args: &MirrorPruneArgs) -> Result<()> {
    let scope = Scope::parse(&args.to)?;
    refuse_empty_lists(&ctx.root, &args.select)?;
    // An unreachable destination is one line before anything else is asked.
    let registry = ctx.registries.get(&scope.registry).await?;
    let entries = tagset::load_resolved(
        &ctx.registries,
        &ctx.root,
        &args.select.lists,
        &args.select.images,
        args.select.tags_semver.as_deref(),
    )
    .await?;
    if entries.is_empty() {
        bail!("the selection resolves to no image, so every tag under {} would go; name the lists the mirror copies", args.to);
    }
    let mut wanted: BTreeMap<Repository, Wanted> = BTreeMap::new();
    for entry in &entries {
        let placed = lists::destination(&entry.source, &args.to, args.keep_host)?;
        scope.check(&placed.registry, &placed.repository)?;
        // What the copy writes: the tag, else the digest, else `latest`.
        let tag = match (&placed.tag, &placed.digest) {
            (None, None) => Some(Tag::latest()),
            (tag, _) => tag.clone(),
        };
        let want = wanted.entry(placed.repository).or_default();
        want.tags.extend(tag);
        want.digests.extend(placed.digest);
    }
    if args.unmapped {
        for repository in unmapped(&registry, &scope, &wanted).await? {
            wanted.entry(repository).or_default();
        }
    }
    let mut plan = Plan {
        untag_shared: args.untag_shared,
        ..Plan::default()
    };
    for (repository, want) in &wanted {
        plan_repository(&registry, repository, want, &mut plan).await?;
    }
    if !args.yes {
        return report(&scope, &plan, None, args.json);
    }
    let results = delete(&registry, &scope, &plan, args.json).await?;
    report(&scope, &plan, Some(&results), args.json)
}

/// PREFIX as a registry and a repository path: the only place prune may delete in.
struct Scope {
    registry: Registry,
    path: Option<Repository>,
}

impl Scope {
    fn parse(prefix: &str) -> Result<Scope> {
        let (registry, path) = split_prefix(prefix).map_err(|e| anyhow!("--to: {e}"))?;
        Ok(Scope { registry, path })
    }

    /// The guard every computed repository and every DELETE passes: the same host, and
    /// a path below PREFIX's at a component boundary (`m2/x` is not under `m`).
    fn check(&self, registry: &Registry, repository: &Repository) -> Result<()> {
        let below = match &self.path {
            None => true,
            Some(path) => repository
                .strip_prefix(path.as_str())
                .is_some_and(|rest| rest.starts_with('/')),
        };
        if registry != &self.registry || !below {
            bail!(
                "{registry}/{repository} is not under {}; prune never touches it",
                self.display()
            );
        }
        Ok(())
    }

    fn display(&self) -> String {
        match &self.path {
            Some(path) => format!("{}/{path}", self.registry),
            None => self.registry.to_string(),
        }
    }
}

/// The repositories under PREFIX that the registry's catalog lists and no list maps.
/// The catalog is hostile: only names that pass the scope guard are taken.
async fn unmapped(
    registry: &Client,
    scope: &Scope,
    wanted: &BTreeMap<Repository, Wanted>,
) -> Result<Vec<Repository>> {
    let Some(catalog) = registry.catalog().await? else {
        bail!(
            "--unmapped: {} does not serve /v2/_catalog to these credentials; prune without --unmapped, and delete repositories no list maps by hand",
            registry.host
        );
    };
    Ok(catalog
        .into_iter()
        .filter(|repository| scope.check(&registry.host, repository).is_ok())
        .filter(|repository| !wanted.contains_key(repository))
        .collect())
}

/// Lists that select nothing would keep nothing: refused before anything is asked.
fn refuse_empty_lists(root: &std::path::Path, select: &MirrorSelection) -> Result<()> {
    let selectors = if select.lists.is_empty() && select.images.is_empty() {
        lists::group_names(root)
    } else {
        select.lists.clone()
    };
    let mut empty = Vec::new();
    for selector in &selectors {
        if lists::load(root, std::slice::from_ref(selector), &[], None)?
            .entries
            .is_empty()
        {
            empty.push(selector.as_str());
        }
    }
    let (what, verb) = match empty.len() {
        0 => return Ok(()),
        1 => ("mirror list", "selects"),
        _ => ("mirror lists", "select"),
    };
    bail!(
        "{what} {} {verb} no image, and prune deletes whatever the lists do not select; add [[image]] entries, or name only the lists the mirror copies",
        empty.join(", ")
    )
}

/// What the lists select in one repository.
#[derive(Default)]
struct Wanted {
    tags: BTreeSet<Tag>,
    digests: BTreeSet<Digest>,
}

#[derive(Default)]
struct Plan {
    prunes: Vec<Prune>,
    kept: usize,
    repositories: usize,
    /// `--untag-shared`: a tag whose manifest is kept goes alone; else it stays.
    untag_shared: bool,
}

/// One tag to prune.
#[derive(Debug, Clone, Serialize)]
struct Prune {
    repository: Repository,
    tag: Tag,
    digest: Digest,
    /// Set when something kept shares the manifest: only the tag may go, never the
    /// manifest (in distribution, a DELETE by digest takes every tag on it).
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_with: Option<String>,
}

impl Prune {
    fn is_attachment(&self) -> bool {
        self.tag.attached_to().is_some()
    }
}

/// Adds what `repository` holds beyond `want` to `plan`.
async fn plan_repository(
    registry: &Client,
    repository: &Repository,
    want: &Wanted,
    plan: &mut Plan,
) -> Result<()> {
    let listed = match registry.list_tags(repository).await {
        Ok(listed) => listed,
        // Never mirrored (or emptied): nothing to prune.
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut tagged = Vec::new();
    for tag in listed {
        let reference = Reference::Tag(tag.clone());
        if let Some(described) = registry.head_manifest(repository, &reference).await? {
            tagged.push((tag, described.digest));
        }
    }
    let kept = kept_digests(registry, repository, want, &tagged).await?;
    plan.repositories += 1;
    for (tag, digest) in &tagged {
        let keep = want.tags.contains(tag)
            || tag
                .attached_to()
                .is_some_and(|subject| kept.contains(&subject));
        if keep {
            plan.kept += 1;
            continue;
        }
        let shared_with = kept.contains(digest).then(|| {
            tagged
                .iter()
                .find(|(other, d)| d == digest && want.tags.contains(other))
                .map(|(other, _)| format!("kept tag {other} has the same manifest"))
                .unwrap_or_else(|| "a kept image references the manifest".to_string())
        });
        plan.prunes.push(Prune {
            repository: repository.clone(),
            tag: tag.clone(),
            digest: digest.clone(),
            shared_with,
        });
    }
    Ok(())
}

/// More than any real repository's kept images, signatures and referrers.
const MAX_KEPT_MANIFESTS: usize = 100_000;

/// Every digest a kept tag needs: its own, its children (recursively), its referrers,
/// and its signature and attestation tags (cosign's `sha256-<hex>.sig/.att/.sbom` and
/// the referrers fallback `sha256-<hex>`), with what those need in turn.
async fn kept_digests(
    registry: &Client,
    repository: &Repository,
    want: &Wanted,
    tagged: &[(Tag, Digest)],
) -> Result<HashSet<Digest>> {
    let mut kept: HashSet<Digest> = want.digests.iter().cloned().collect();
    kept.extend(
        tagged
            .iter()
            .filter(|(tag, _)| want.tags.contains(tag))
            .map(|(_, digest)| digest.clone()),
    );
    let mut queue: Vec<Digest> = kept.iter().cloned().collect();
    while let Some(digest) = queue.pop() {
        // A registry that keeps inventing referrers would keep this walk going.
        if kept.len() > MAX_KEPT_MANIFESTS {
            bail!(
                "{}/{repository}: kept tags reference more than {MAX_KEPT_MANIFESTS} manifests; refusing to prune a repository this large or this odd",
                registry.host
            );
        }
        let mut next = children(registry, repository, &digest).await?;
        next.extend(
            tagged
                .iter()
                .filter(|(tag, _)| tag.attached_to().as_ref() == Some(&digest))
                .map(|(_, d)| d.clone()),
        );
        if let Some(index) = registry.referrers(repository, &digest).await? {
            next.extend(
                referrer_digests(&index)
                    .map_err(|e| anyhow!("a referrer of {repository}@{digest}: {e}"))?,
            );
        }
        for digest in next {
            if kept.insert(digest.clone()) {
                queue.push(digest);
            }
        }
    }
    Ok(kept)
}

/// The manifests an index lists; none for an image, or for a manifest not there.
async fn children(
    registry: &Client,
    repository: &Repository,
    digest: &Digest,
) -> Result<Vec<Digest>> {
    let reference = Reference::Digest(digest.clone());
    let bytes = match registry.get_manifest(repository, &reference).await {
        Ok((bytes, _)) => bytes,
        Err(e) if is_not_found(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let document = Document::parse(&bytes, &format!("{repository}@{digest}"))?;
    Ok(document
        .children()
        .iter()
        .map(descriptor_digest)
        .collect::<Result<_, _>>()?)
}

fn is_not_found(error: &Error) -> bool {
    error.has_status(&[404])
}

/// What happened to one planned prune.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Done {
    Deleted,
    Untagged,
    /// The registry cannot delete a tag alone, and its manifest is kept: left as it is.
    Left,
    /// Its manifest is kept and `--untag-shared` was not given: no DELETE was sent.
    Shared,
}

/// Deletes the plan, images before their signatures: a run cut short leaves at worst
/// signatures of deleted images, which the next run finds. Each line is printed as it
/// is done, so a run that stops says how far it got.
async fn delete(registry: &Client, scope: &Scope, plan: &Plan, json: bool) -> Result<Vec<Done>> {
    let mut order: Vec<usize> = (0..plan.prunes.len()).collect();
    order.sort_by_key(|&i| plan.prunes[i].is_attachment());
    let mut results = vec![Done::Left; plan.prunes.len()];
    let mut gone: HashSet<(Repository, Digest)> = HashSet::new();
    for i in order {
        let prune = &plan.prunes[i];
        scope.check(&registry.host, &prune.repository)?;
        results[i] = delete_one(registry, prune, plan.untag_shared, &mut gone).await?;
        if !json {
            println!(
                "{}",
                row_line(&registry.host, &row(plan, prune, Some(&results[i])))
            );
        }
    }
    Ok(results)
}

async fn delete_one(
    registry: &Client,
    prune: &Prune,
    untag_shared: bool,
    gone: &mut HashSet<(Repository, Digest)>,
) -> Result<Done> {
    let line = format!("{}/{}:{}", registry.host, prune.repository, prune.tag);
    let by_digest = Reference::Digest(prune.digest.clone());
    if prune.shared_with.is_some() {
        // A tag delete takes the manifest on some registries: never unasked.
        if !untag_shared {
            return Ok(Done::Shared);
        }
        let by_tag = Reference::Tag(prune.tag.clone());
        return match registry.delete_manifest(&prune.repository, &by_tag).await? {
            Deletion::Declined { .. } => Ok(Done::Left),
            Deletion::Deleted | Deletion::Absent => {
                // Some registries have taken the manifest along with the tag: say so.
                if registry
                    .head_manifest(&prune.repository, &by_digest)
                    .await?
                    .is_none()
                {
                    bail!("{line}: {} deleted the manifest {} with the tag, and kept tags need it; run the mirror again to restore them", registry.host, prune.digest);
                }
                Ok(Done::Untagged)
            }
        };
    }
    // Several pruned tags on one manifest: it is deleted once.
    if gone.insert((prune.repository.clone(), prune.digest.clone())) {
        match registry
            .delete_manifest(&prune.repository, &by_digest)
            .await?
        {
            Deletion::Deleted | Deletion::Absent => {}
            Deletion::Declined { status, detail } => bail!(
                "{line}: {} answered DELETE with {status}{detail}; {}",
                registry.host,
                enable_deletes_hint(status, &detail)
            ),
        }
    }
    Ok(Done::Deleted)
}

/// How to let a registry that declined a DELETE by digest accept it.
fn enable_deletes_hint(status: reqwest::StatusCode, detail: &str) -> &'static str {
    if status == reqwest::StatusCode::METHOD_NOT_ALLOWED || detail.contains("UNSUPPORTED") {
        "deletes are turned off there: enable them (distribution: `storage.delete.enabled: true` in its config; Harbor and Quay: a robot or user with delete permission)"
    } else {
        "the registry refused the delete; nothing after it was deleted"
    }
}

#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    prune: &'a Prune,
    /// `delete` (the manifest), `untag` (the tag alone) or `leave` (its manifest is kept).
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Done>,
}

fn row<'a>(plan: &Plan, prune: &'a Prune, result: Option<&'a Done>) -> Row<'a> {
    let action = match (&prune.shared_with, plan.untag_shared) {
        (Some(_), true) => "untag",
        (Some(_), false) => "leave",
        (None, _) => "delete",
    };
    Row {
        prune,
        action,
        result,
    }
}

fn report(scope: &Scope, plan: &Plan, results: Option<&[Done]>, json: bool) -> Result<()> {
    let rows: Vec<Row> = plan
        .prunes
        .iter()
        .enumerate()
        .map(|(i, prune)| row(plan, prune, results.map(|r| &r[i])))
        .collect();
    let count = |done: Done| results.map_or(0, |r| r.iter().filter(|d| **d == done).count());
    let left = count(Done::Left) + count(Done::Shared);
    if json {
        let document = serde_json::json!({
            "prefix": scope.display(),
            "dry_run": results.is_none(),
            "prunes": rows,
            "kept": plan.kept,
            "repositories": plan.repositories,
            "left": left,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    // After --yes, each line was printed as it was done.
    for row in rows.iter().filter(|_| results.is_none()) {
        println!("{}", row_line(&scope.registry, row));
    }
    let (n, m) = (plan.prunes.len(), plan.repositories);
    match results {
        None if n == 0 => println!("nothing to prune under {}: {m} repositories, {} tags, all selected", scope.display(), plan.kept),
        None => {
            let leave = rows.iter().filter(|r| r.action == "leave").count();
            let left = match leave { 0 => String::new(), l => format!(", {l} left on manifests kept tags have") };
            println!("dry run: {} tags would be pruned in {m} repositories under {} ({} kept{left}); nothing was deleted, run again with --yes to delete them", n - leave, scope.display(), plan.kept)
        }
        Some(_) => println!(
            "pruned {} of {n} tags in {m} repositories under {} ({} kept{}); blobs stay until the registry's garbage collection runs",
            n - left,
            scope.display(),
            plan.kept,
            match left { 0 => String::new(), l => format!(", {l} left on manifests kept tags have") }
        ),
    }
    Ok(())
}

fn row_line(host: &Registry, row: &Row) -> String {
    let prune = row.prune;
    let what = format!(
        "{host}/{}:{} -> {}",
        prune.repository, prune.tag, prune.digest
    );
    let why = prune
        .shared_with
        .as_ref()
        .map(|with| format!(" ({with})"))
        .unwrap_or_default();
    let verb = match row.result {
        None => row.action,
        Some(Done::Deleted) => "deleted",
        Some(Done::Untagged) => "untagged",
        Some(Done::Left) => {
            let with = prune.shared_with.as_deref().unwrap_or_default();
            return format!("left     {what}: the registry cannot delete a tag alone, and {with}");
        }
        Some(Done::Shared) => {
            let with = prune.shared_with.as_deref().unwrap_or_default();
            return format!("left     {what}: {with}; --untag-shared deletes the tag alone where the registry keeps the manifest");
        }
    };
    format!("{verb:<8} {what}{why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_repositories_below_the_prefix_on_its_host_are_in_scope() {
        let scope = Scope::parse("r.example:5000/m").unwrap();
        let host = Registry::parse("r.example:5000").unwrap();
        let repo = |path: &str| Repository::parse(path).unwrap();
        assert!(scope.check(&host, &repo("m/k/app")).is_ok());
        for outside in ["m", "m2/k/app", "mm/app", "other/m/app", "k/app"] {
            let err = scope.check(&host, &repo(outside)).unwrap_err().to_string();
            assert!(err.contains("is not under r.example:5000/m"), "{err}");
        }
        let other_host = Registry::parse("r.example:5001").unwrap();
        assert!(scope.check(&other_host, &repo("m/k/app")).is_err());
        let bare = Scope::parse("r.example:5000").unwrap();
        assert!(bare.check(&host, &repo("k/app")).is_ok());
        for bad in ["../m", "r.example/M", "nohost"] {
            let err = Scope::parse(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.starts_with("--to: ") && !err.contains('\n'),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn attachment_tags_name_their_subject() {
        let hex = "ab".repeat(32);
        let subject = Digest::parse(&format!("sha256:{hex}")).unwrap();
        for suffix in [".sig", ".att", ".sbom", ""] {
            let tag = Tag::parse(&format!("sha256-{hex}{suffix}")).unwrap();
            assert_eq!(tag.attached_to(), Some(subject.clone()), "{tag}");
        }
        for other in ["v1", "sha256-abc.sig", "latest"] {
            assert_eq!(Tag::parse(other).unwrap().attached_to(), None, "{other}");
        }
    }
}
