//! Mirror lists (`mirrors/<group>.toml`) and the plan they turn into.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::tagset::{TagSet, TagSetSpec};
use crate::catalog::Catalog;
use crate::naming::ImageRef;
use crate::oci::limits::{checked_host, Limit};
use crate::text::printable;
use crate::trust::{PolicySpec, Rule, TOML_NAMES};
use std::sync::Arc;

pub const MIRRORS_DIR: &str = "mirrors";
/// Computed from the catalog: every base image a template builds FROM.
pub const BASE_GROUP: &str = "base";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFile {
    #[allow(dead_code)]
    description: String,
    #[serde(default, rename = "image")]
    images: Vec<EntrySpec>,
    /// Who must have signed every image of the list, unless an image says otherwise.
    verify: Option<PolicySpec>,
    /// Request budgets by registry host, e.g. `[limits."docker.io"]`: for the whole run,
    /// not only this list's images, since the budget is the host's.
    #[serde(default)]
    limits: BTreeMap<String, LimitSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    max_requests_per_second: Option<f64>,
    max_concurrent: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntrySpec {
    source: String,
    platforms: Option<Vec<String>>,
    #[serde(rename = "override")]
    override_var: Option<String>,
    #[serde(default)]
    helm: Vec<String>,
    #[serde(default)]
    helm_image: Vec<String>,
    agent_field: Option<String>,
    helm_chart: Option<HelmChart>,
    verify: Option<PolicySpec>,
    /// Which of the repository's tags to mirror; the source then names no tag.
    tags: Option<TagSetSpec>,
}

/// A Helm chart (an OCI artifact, not an image): how `--write-config` installs it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HelmChart {
    pub release: String,
    pub namespace: String,
}

/// One image to mirror, with what the cluster-side outputs need to know about it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub group: String,
    pub source: ImageRef,
    pub platforms: Option<Vec<String>>,
    pub override_var: Option<String>,
    /// Helm values keys that take `{repository, tag}`.
    pub helm: Vec<String>,
    /// Helm values keys that take a full reference.
    pub helm_image: Vec<String>,
    /// The Agent CRD field this image goes in.
    pub agent_field: Option<String>,
    /// The entry is a Helm chart, installed as this release.
    pub helm_chart: Option<HelmChart>,
    /// Its signature policy, from the image or its list; none: the command line's.
    #[serde(skip)]
    pub verify: Option<Arc<Rule>>,
    /// A tag set still to resolve against the registry (`tagset::resolve`).
    #[serde(skip)]
    pub tags: Option<TagSet>,
    /// The tag set this entry's tag was selected by, for people.
    #[serde(skip)]
    pub tag_set: Option<String>,
}

impl Entry {
    pub fn plain(group: &str, source: ImageRef) -> Entry {
        Entry {
            group: group.to_string(),
            source,
            platforms: None,
            override_var: None,
            helm: vec![],
            helm_image: vec![],
            agent_field: None,
            helm_chart: None,
            verify: None,
            tags: None,
            tag_set: None,
        }
    }
}

/// The groups under `mirrors/` plus the computed `base` group.
pub fn group_names(root: &Path) -> Vec<String> {
    let mut names: BTreeSet<String> = fs::read_dir(root.join(MIRRORS_DIR))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".toml")
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    names.insert(BASE_GROUP.to_string());
    names.into_iter().collect()
}

/// What the selected lists say: their entries, and the request budgets of their
/// `[limits]` tables, merged.
#[derive(Debug)]
pub struct Loaded {
    pub entries: Vec<Entry>,
    pub limits: BTreeMap<String, Limit>,
}

/// Entries for `selectors` (group names or TOML files; all groups when empty) plus
/// `--image` references (repositories with `--tags-semver`), de-duplicated by source.
/// Tag sets are left for `tagset::resolve`.
pub fn load(
    root: &Path,
    selectors: &[String],
    extra_images: &[String],
    tags_semver: Option<&str>,
) -> Result<Loaded> {
    let cli_set = match tags_semver {
        Some(range) if extra_images.is_empty() => bail!(
            "--tags-semver '{}' selects tags of an --image REPO; name the repository with --image",
            range.escape_debug()
        ),
        Some(range) => Some(
            TagSet::build(&TagSetSpec {
                semver: Some(range.to_string()),
                ..Default::default()
            })
            .map_err(|e| anyhow!("--tags-semver: {}", e.replace("tags.semver ", "")))?,
        ),
        None => None,
    };
    let selectors: Vec<String> = if selectors.is_empty() && extra_images.is_empty() {
        group_names(root)
    } else {
        selectors.to_vec()
    };
    let mut entries = Vec::new();
    let mut limits = BTreeMap::new();
    for selector in &selectors {
        let (listed, list_limits) = load_selector(root, selector)?;
        entries.extend(listed);
        merge_limits(&mut limits, list_limits);
    }
    for image in extra_images {
        let source = ImageRef::parse(image).map_err(|e| anyhow!("--image {image}: {e}"))?;
        if cli_set.is_some() && (source.tag.is_some() || source.digest.is_some()) {
            bail!("--image {image} names a tag or digest, and --tags-semver selects the tags: pass the repository alone, e.g. --image {}/{}", source.registry, source.repository);
        }
        let mut entry = Entry::plain("cli", source);
        entry.tags = cli_set.clone();
        entries.push(entry);
    }
    let mut seen = BTreeSet::new();
    entries.retain(|e| seen.insert(e.source.to_string()));
    let limits = limits
        .into_iter()
        .map(|(host, (limit, _))| (host, limit))
        .collect();
    Ok(Loaded { entries, limits })
}

/// A host's limits by list label, so a disagreement can name both lists.
type ListLimits = BTreeMap<String, (Limit, String)>;

/// Adds one list's limits; where two lists set a value for the same host differently,
/// the stricter holds, and a note says so.
fn merge_limits(into: &mut ListLimits, from: ListLimits) {
    for (host, (limit, label)) in from {
        let Some((held, first)) = into.get_mut(&host) else {
            into.insert(host, (limit, label));
            continue;
        };
        let merged = held.stricter(limit);
        let clash = matches!((held.per_second, limit.per_second), (Some(a), Some(b)) if a != b)
            || matches!((held.concurrent, limit.concurrent), (Some(a), Some(b)) if a != b);
        if clash {
            eprintln!(
                "note: {first} and {label} set different limits for {host}; taking the stricter of each: {}",
                describe(&merged)
            );
        }
        *held = merged;
    }
}

/// A budget as list keys write it.
fn describe(limit: &Limit) -> String {
    let mut parts = Vec::new();
    if let Some(rate) = limit.per_second {
        parts.push(format!("max_requests_per_second = {rate}"));
    }
    if let Some(concurrent) = limit.concurrent {
        parts.push(format!("max_concurrent = {concurrent}"));
    }
    parts.join(", ")
}

/// A list's `[limits]`, each host and value checked; two names of one host refused.
fn limits_of(label: &str, specs: BTreeMap<String, LimitSpec>) -> Result<ListLimits> {
    let mut limits = ListLimits::new();
    let mut written_as: BTreeMap<String, String> = BTreeMap::new();
    for (host, spec) in specs {
        let key = checked_host(&host).map_err(|e| anyhow!("{label}: [limits]: {e}"))?;
        if let Some(first) = written_as.insert(key.clone(), host.clone()) {
            bail!(
                "{label}: [limits] names the host {key} twice (as \"{}\" and \"{}\"); keep one",
                printable(&first),
                printable(&host)
            );
        }
        let limit = Limit {
            per_second: spec.max_requests_per_second,
            concurrent: spec.max_concurrent,
        };
        limit
            .check(["max_requests_per_second", "max_concurrent"])
            .map_err(|e| anyhow!("{label}: [limits.\"{key}\"]: {e}"))?;
        limits.insert(key, (limit, label.to_string()));
    }
    Ok(limits)
}

fn load_selector(root: &Path, selector: &str) -> Result<(Vec<Entry>, ListLimits)> {
    if selector == BASE_GROUP && !root.join(MIRRORS_DIR).join("base.toml").exists() {
        return Ok((base_group(root)?, ListLimits::new()));
    }
    let path = if selector.ends_with(".toml") || selector.contains('/') {
        PathBuf::from(selector)
    } else {
        root.join(MIRRORS_DIR).join(format!("{selector}.toml"))
    };
    if !path.is_file() {
        bail!(
            "unknown mirror group or file '{selector}': groups are {} (files under {MIRRORS_DIR}/), or pass a path to a .toml list",
            group_names(root).join(", ")
        );
    }
    let group = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(selector)
        .to_string();
    let label = path.display().to_string();
    let text = fs::read_to_string(&path).with_context(|| format!("reading {label}"))?;
    let file: ListFile = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(line) => anyhow!("{label}:{line}: {}", e.message().replace('\n', " ")),
            None => anyhow!("{label}: {}", e.message().replace('\n', " ")),
        }
    })?;
    // Key and CA paths are relative to the list file.
    let base = path.parent().unwrap_or(Path::new("."));
    let list_rule = match &file.verify {
        Some(spec) => spec
            .build(base, &TOML_NAMES)
            .map_err(|e| anyhow!("{label}: [verify]: {e:#}"))?,
        None => None,
    };
    let limits = limits_of(&label, file.limits)?;
    let entries = file
        .images
        .into_iter()
        .map(|spec| {
            let source = ImageRef::parse(&spec.source).map_err(|e| anyhow!("{label}: {e}"))?;
            let tags = tag_set_of(&label, &spec, &source)?;
            for platform in spec.platforms.iter().flatten() {
                crate::catalog::validate_platform(platform).map_err(|e| anyhow!("{label}: {e}"))?;
            }
            check_cluster_values(&label, &spec, &source, &tags)?;
            let verify = match &spec.verify {
                Some(policy) => policy
                    .build(base, &TOML_NAMES)
                    .map_err(|e| anyhow!("{label}: [image.verify] of {}: {e:#}", spec.source))?,
                None => list_rule.clone(),
            };
            Ok(Entry {
                verify,
                group: group.clone(),
                source,
                platforms: spec.platforms,
                override_var: spec.override_var,
                helm: spec.helm,
                helm_image: spec.helm_image,
                agent_field: spec.agent_field,
                helm_chart: spec.helm_chart,
                tags,
                tag_set: None,
            })
        })
        .collect::<Result<_>>()?;
    Ok((entries, limits))
}

/// The values that end up as YAML keys, environment names, shell words and Kubernetes
/// names, checked before anything is copied.
fn check_cluster_values(
    label: &str,
    spec: &EntrySpec,
    source: &ImageRef,
    tags: &Option<TagSet>,
) -> Result<()> {
    for (what, key) in spec
        .helm
        .iter()
        .map(|k| ("helm", k))
        .chain(spec.helm_image.iter().map(|k| ("helm_image", k)))
        .chain(spec.agent_field.iter().map(|k| ("agent_field", k)))
    {
        if !is_dotted_path(key) {
            bail!(
                "{label}: {what} '{}' is not a dotted path of names (letters, digits, '_', '-'), e.g. controller.image",
                key.escape_debug()
            );
        }
    }
    if let Some(var) = &spec.override_var {
        let name_ok = var.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
            && var
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !name_ok {
            bail!("{label}: override '{}' is not an environment variable name (A-Z, 0-9, _; not starting with a digit)", var.escape_debug());
        }
    }
    if let Some(chart) = &spec.helm_chart {
        // Both end up in a shell script and in Kubernetes names.
        for (what, name, max) in [
            ("release", &chart.release, 53),
            ("namespace", &chart.namespace, 63),
        ] {
            if !is_dns_label(name, max) {
                bail!("{label}: helm_chart.{what} '{}' is not a DNS label (a-z, 0-9, '-', at most {max})", name.escape_debug());
            }
        }
        if source.tag.is_none() && tags.is_none() {
            bail!("{label}: the chart '{}' needs a tag or a tag set: helm installs a chart by its version", spec.source);
        }
    }
    Ok(())
}

/// An entry's tag set, checked: a source names a tag (or digest), or carries `tags`.
fn tag_set_of(label: &str, spec: &EntrySpec, source: &ImageRef) -> Result<Option<TagSet>> {
    let pinned = source.tag.is_some() || source.digest.is_some();
    match &spec.tags {
        None if !pinned => bail!(
            "{label}: '{}' needs a tag, a digest or a tag set (tags = {{ semver = \"…\" }}), so the mirror knows what to copy",
            spec.source
        ),
        None => Ok(None),
        Some(_) if pinned => bail!(
            "{label}: '{}' names a tag or digest and a tag set; drop the ':TAG' to follow the set, or drop `tags` to pin the tag",
            spec.source
        ),
        Some(tags) => TagSet::build(tags)
            .map(Some)
            .map_err(|e| anyhow!("{label}: {}: {e}", spec.source)),
    }
}

/// A Kubernetes name: lower-case letters, digits and '-', not at either end.
fn is_dns_label(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A Helm values key or CRD field path: it is written into YAML as keys, so names only.
fn is_dotted_path(key: &str) -> bool {
    key.split('.').all(|part| {
        part.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// Every base image of the catalog, so the list never drifts from the templates.
fn base_group(root: &Path) -> Result<Vec<Entry>> {
    let catalog = Catalog::load(root)?;
    let mut seen = BTreeSet::new();
    Ok(catalog
        .images
        .values()
        .flat_map(|image| image.bases.values().cloned())
        .filter(|reference| seen.insert(reference.to_string()))
        .map(|reference| Entry::plain(BASE_GROUP, reference))
        .collect())
}

/// Where an image lands under `prefix`: `PREFIX/<repository>` by default, or
/// `PREFIX/<source host>/<repository>` to keep registries apart.
pub fn destination(source: &ImageRef, prefix: &str, keep_host: bool) -> Result<ImageRef> {
    let mut placed = if keep_host {
        let host = source.registry.replace(':', "_");
        let scoped = ImageRef {
            repository: source.repository.under(&host)?,
            ..source.clone()
        };
        scoped.under_prefix(prefix)?
    } else {
        source.under_prefix(prefix)?
    };
    // A digest-only source is tagged by digest at the destination too.
    placed.digest = source.digest.clone();
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_keep_the_repository_path() {
        let source = ImageRef::parse("docker.io/adaptivelive/agentkube-manager:v1").unwrap();
        assert_eq!(
            destination(&source, "registry.example.com/exo-mirror", false)
                .unwrap()
                .to_string(),
            "registry.example.com/exo-mirror/adaptivelive/agentkube-manager:v1"
        );
        assert_eq!(
            destination(&source, "registry.example.com/exo-mirror", true)
                .unwrap()
                .to_string(),
            "registry.example.com/exo-mirror/docker.io/adaptivelive/agentkube-manager:v1"
        );
        let local = ImageRef::parse("127.0.0.1:5000/a/b:1").unwrap();
        assert_eq!(
            destination(&local, "m.example/p", true)
                .unwrap()
                .to_string(),
            "m.example/p/127.0.0.1_5000/a/b:1"
        );
    }

    #[test]
    fn list_values_that_become_yaml_keys_or_env_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("hostile.toml");
        for (entry, why) in [
            (
                r#"helm = ["controller.image\nevil: x"]"#,
                "helm 'controller.image\\nevil: x'",
            ),
            (r#"helm_image = ["a..b"]"#, "helm_image 'a..b'"),
            (r#"helm = ["\"quoted\""]"#, "helm '\\\"quoted\\\"'"),
            (r#"agent_field = "spec.agentImage\n# x""#, "agent_field"),
            (r#"override = "A=B""#, "override 'A=B'"),
            (r#"override = """#, "override ''"),
            (r#"override = "1X""#, "override '1X'"),
            (
                r#"helm_chart = { release = "x'; rm -rf /", namespace = "n" }"#,
                "helm_chart.release 'x\\'; rm -rf /'",
            ),
            (
                r#"helm_chart = { release = "x", namespace = "N" }"#,
                "helm_chart.namespace 'N'",
            ),
            (
                r#"helm_chart = { release = "x" }"#,
                "missing field `namespace`",
            ),
        ] {
            std::fs::write(
                &list,
                format!("description = \"x\"\n[[image]]\nsource = \"r.example/a:1\"\n{entry}\n"),
            )
            .unwrap();
            let err = load(dir.path(), &[list.display().to_string()], &[], None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{entry}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        std::fs::write(
            &list,
            "description = \"x\"\n[[image]]\nsource = \"r.example/a:1\"\nhelm = [\"server.image\", \"a_b.c-d\"]\noverride = \"_X1\"\n",
        )
        .unwrap();
        assert_eq!(
            load(dir.path(), &[list.display().to_string()], &[], None)
                .unwrap()
                .entries
                .len(),
            1
        );
    }

    #[test]
    fn a_list_policy_is_overridden_per_image_and_unknown_keys_are_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("signed.toml");
        let key = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEXBxi50INfE0VHdsYtvtjs4xH1Wz6\nYs7sfOhdQLeHPdTZOjgZJ/ZaXu8LweRMOztfYC0eNY4xoscVDZGXcKd6KA==\n-----END PUBLIC KEY-----\n";
        std::fs::write(dir.path().join("k.pub"), key).unwrap();
        let load_list = |text: &str| {
            std::fs::write(&list, text).unwrap();
            load(dir.path(), &[list.display().to_string()], &[], None).map(|l| l.entries)
        };
        let entries = load_list(
            "description = \"x\"\n[verify]\nkeys = [\"k.pub\"]\n\
             [[image]]\nsource = \"r.example/a:1\"\n\
             [[image]]\nsource = \"r.example/b:1\"\n[image.verify]\nskip = \"unsigned upstream\"\n",
        )
        .unwrap();
        assert!(matches!(
            entries[0].verify.as_deref(),
            Some(Rule::Signed(_))
        ));
        assert!(
            matches!(entries[1].verify.as_deref(), Some(Rule::Unverified(r)) if r == "unsigned upstream")
        );
        for (text, want) in [
            (
                "[verify]\nkeyz = [\"k.pub\"]\n",
                "signed.toml:3: unknown field `keyz`",
            ),
            ("[verify]\nkeys = [\"missing.pub\"]\n", "[verify]: keys"),
            (
                "[verify]\nskip = \"x\"\nkeys = [\"k.pub\"]\n",
                "skip excludes every other",
            ),
        ] {
            let err = load_list(&format!(
                "description = \"x\"\n{text}[[image]]\nsource = \"r.example/a:1\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(want), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn tag_sets_are_checked_where_the_list_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("sets.toml");
        let load_entry = |entry: &str| {
            std::fs::write(&list, format!("description = \"x\"\n[[image]]\n{entry}\n")).unwrap();
            load(dir.path(), &[list.display().to_string()], &[], None).map(|l| l.entries)
        };
        for (entry, want) in [
            (
                "source = \"r.example/a:1\"\ntags = { semver = \">=1\" }",
                "sets.toml: 'r.example/a:1' names a tag or digest and a tag set; drop the ':TAG'",
            ),
            (
                "source = \"r.example/a\"\ntags = { semver = \"~>1\" }",
                "sets.toml: r.example/a: tags.semver '~>1' is not a semver range",
            ),
            (
                "source = \"r.example/a\"\ntags = { exclude = \"[\" }",
                "sets.toml: r.example/a: tags.exclude '[' is not a regular expression",
            ),
            (
                "source = \"r.example/a\"\ntags = { newest = 2, latest = true }",
                "unknown field `latest`",
            ),
            (
                "source = \"r.example/a\"",
                "needs a tag, a digest or a tag set",
            ),
        ] {
            let err = load_entry(entry).unwrap_err().to_string();
            assert!(err.contains(want), "{entry}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let entries = load_entry(
            "source = \"r.example/chart\"\ntags = { semver = \">=0.1.3, <0.2.0\", newest = 1 }\n\
             helm_chart = { release = \"x\", namespace = \"n\" }",
        )
        .unwrap();
        assert!(entries[0].tags.is_some() && entries[0].source.tag.is_none());
        for (images, range, want) in [
            (
                vec!["r.example/a:1".to_string()],
                ">=1",
                "--image r.example/a:1 names a tag",
            ),
            (
                vec![],
                ">=1",
                "--tags-semver '>=1' selects tags of an --image REPO",
            ),
            (
                vec!["r.example/a".to_string()],
                "=>1",
                "--tags-semver: '=>1' is not a semver range",
            ),
        ] {
            let err = load(dir.path(), &[], &images, Some(range))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn list_limits_are_checked_and_the_stricter_of_two_lists_holds() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, limits: &str| {
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!("description = \"x\"\n{limits}\n[[image]]\nsource = \"r.example/a:1\"\n"),
            )
            .unwrap();
            path.display().to_string()
        };
        let a = write(
            "a.toml",
            "[limits.\"registry-1.docker.io\"]\nmax_requests_per_second = 2\nmax_concurrent = 3\n",
        );
        let b = write(
            "b.toml",
            "[limits.\"docker.io\"]\nmax_requests_per_second = 0.5\n[limits.\"r.example\"]\nmax_concurrent = 1\n",
        );
        let loaded = load(dir.path(), &[a, b], &[], None).unwrap();
        let limit = |per_second, concurrent| Limit {
            per_second,
            concurrent,
        };
        assert_eq!(
            loaded.limits,
            BTreeMap::from([
                ("docker.io".to_string(), limit(Some(0.5), Some(3))),
                ("r.example".to_string(), limit(None, Some(1))),
            ])
        );
        for (limits, want) in [
            (
                "[limits.\"docker.io\"]\nmax_concurrent = 0",
                "c.toml: [limits.\"docker.io\"]: max_concurrent must be a whole number from 1",
            ),
            (
                "[limits.\"docker.io\"]\nmax_requests_per_second = 0",
                "max_requests_per_second must be a number of requests per second of at least 0.01",
            ),
            (
                "[limits.\"docker.io\"]\nmax_concurrent = -1",
                "c.toml:3: invalid value",
            ),
            (
                "[limits.\"docker.io\"]\nmax_concurent = 1",
                "unknown field `max_concurent`",
            ),
            (
                "[limits.\"bad host\"]\nmax_concurrent = 1",
                "c.toml: [limits]: registry host 'bad host' is invalid",
            ),
            (
                "[limits.\"docker.io\"]\nmax_concurrent = 1\n[limits.\"index.docker.io\"]\nmax_concurrent = 9",
                "c.toml: [limits] names the host docker.io twice (as \"docker.io\" and \"index.docker.io\"); keep one",
            ),
        ] {
            let err = load(dir.path(), &[write("c.toml", limits)], &[], None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{limits}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn the_repository_lists_load() {
        let root = crate::project::project_root();
        let entries = load(&root, &[], &[], None).unwrap().entries;
        let groups: BTreeSet<&str> = entries.iter().map(|e| e.group.as_str()).collect();
        assert_eq!(
            groups,
            BTreeSet::from(["agentkube", "base", "build-time", "kubeopencode"])
        );
        let overrides: Vec<&str> = entries
            .iter()
            .filter_map(|e| e.override_var.as_deref())
            .collect();
        assert!(
            overrides.contains(&"AGENTKUBE_IMAGE_MANAGER")
                && overrides.contains(&"AGENTKUBE_IMAGE_CURSOR")
        );
        assert!(entries.iter().any(|e| e
            .source
            .to_string()
            .starts_with("docker.io/library/debian:bookworm-slim@sha256:")));
        let err = load(&root, &["nope".into()], &[], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown mirror group or file 'nope'"), "{err}");
    }
}
