//! Tag sets: a list entry names a repository and which of its tags to mirror (a semver
//! range, the newest N, include/exclude patterns). They are resolved once, against the
//! registry's tag list, into ordinary tagged entries before anything is planned, so the
//! copy, `mirror save`, `--dry-run` and `--write-config` all see the same tags.

use anyhow::{anyhow, bail, Result};
use regex::Regex;
use semver::{Version, VersionReq};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use super::lists::{self, Entry};
use crate::oci::{Registries, Tag};

/// `tags = { semver = "…", newest = N, include = "…", exclude = "…" }` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagSetSpec {
    pub semver: Option<String>,
    pub newest: Option<usize>,
    pub include: Option<String>,
    pub exclude: Option<String>,
}

/// A checked tag set.
#[derive(Debug, Clone)]
pub struct TagSet {
    semver: Option<VersionReq>,
    newest: Option<usize>,
    include: Option<Regex>,
    exclude: Option<Regex>,
    /// As written, for people.
    spec: TagSetSpec,
}

impl TagSet {
    /// Checks a spec; the error says which key is wrong and how to write it.
    pub fn build(spec: &TagSetSpec) -> Result<TagSet, String> {
        if spec.semver.is_none()
            && spec.newest.is_none()
            && spec.include.is_none()
            && spec.exclude.is_none()
        {
            return Err("tags needs at least one of semver, newest, include, exclude".into());
        }
        let semver = match &spec.semver {
            Some(range) => Some(VersionReq::parse(range).map_err(|e| {
                format!(
                    "tags.semver '{}' is not a semver range ({e}); write e.g. \">=0.1.3, <0.2.0\"",
                    range.escape_debug()
                )
            })?),
            None => None,
        };
        if spec.newest == Some(0) {
            return Err("tags.newest must be at least 1".into());
        }
        let pattern = |what: &str, text: &Option<String>| -> Result<Option<Regex>, String> {
            text.as_ref()
                .map(|text| {
                    // Matched against the whole tag, as a tag list is read by people.
                    Regex::new(&format!("^(?:{text})$")).map_err(|e| {
                        let why = e.to_string().lines().last().unwrap_or("").to_string();
                        format!(
                            "tags.{what} '{}' is not a regular expression ({}); write e.g. \"v0\\\\.1\\\\..*\"",
                            text.escape_debug(),
                            why.trim()
                        )
                    })
                })
                .transpose()
        };
        Ok(TagSet {
            semver,
            newest: spec.newest,
            include: pattern("include", &spec.include)?,
            exclude: pattern("exclude", &spec.exclude)?,
            spec: spec.clone(),
        })
    }

    /// The tags of `listed` the set selects: by version when it has any (the highest
    /// last), otherwise by name.
    pub fn select<'a>(&self, listed: &'a [String]) -> Vec<&'a str> {
        let mut chosen: Vec<(Option<Version>, &str)> = listed
            .iter()
            .map(|tag| (version_of(tag), tag.as_str()))
            .filter(|(version, tag)| {
                let in_range = match (&self.semver, version) {
                    (None, _) => true,
                    (Some(range), Some(version)) => in_range(range, version),
                    (Some(_), None) => false,
                };
                in_range
                    && self.include.as_ref().is_none_or(|re| re.is_match(tag))
                    && !self.exclude.as_ref().is_some_and(|re| re.is_match(tag))
            })
            .collect();
        if let Some(newest) = self.newest {
            // Only versions can be newest; a tag without one has no place in the order.
            chosen.retain(|(version, _)| version.is_some());
            chosen.sort();
            let skip = chosen.len().saturating_sub(newest);
            chosen.drain(..skip);
        }
        chosen.sort();
        chosen.into_iter().map(|(_, tag)| tag).collect()
    }
}

impl fmt::Display for TagSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = &self.spec;
        let parts: Vec<String> = [
            spec.semver.as_ref().map(|s| format!("semver {s}")),
            spec.newest.map(|n| format!("newest {n}")),
            spec.include.as_ref().map(|s| format!("include {s}")),
            spec.exclude.as_ref().map(|s| format!("exclude {s}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// A tag's version: semver, with or without a leading `v`. Anything else has none.
pub fn version_of(tag: &str) -> Option<Version> {
    Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// In the range, with the pre-release rule made explicit: a pre-release matches only a
/// range that names a pre-release. (semver's own rule is narrower still: the named
/// pre-release must share the version's major.minor.patch; both must hold.)
fn in_range(range: &VersionReq, version: &Version) -> bool {
    let names_pre_release = range.comparators.iter().any(|c| !c.pre.is_empty());
    (version.pre.is_empty() || names_pre_release) && range.matches(version)
}

/// The entries of the lists and `--image`s, every tag set resolved into tagged entries:
/// the one place mirror, `mirror save`, `--dry-run` and `--write-config` get them from.
pub async fn load_resolved(
    registries: &Registries,
    root: &Path,
    selectors: &[String],
    images: &[String],
    tags_semver: Option<&str>,
) -> Result<Vec<Entry>> {
    let loaded = lists::load(root, selectors, images, tags_semver)?;
    // Before any request: the lists' budgets apply from the first one.
    registries.limits.set_list_limits(loaded.limits);
    resolve(registries, loaded.entries).await
}

/// Every entry with a tag set becomes one entry per selected tag.
pub async fn resolve(registries: &Registries, entries: Vec<Entry>) -> Result<Vec<Entry>> {
    let mut resolved = Vec::new();
    for entry in entries {
        let Some(set) = entry.tags.clone() else {
            resolved.push(entry);
            continue;
        };
        let repository = format!("{}/{}", entry.source.registry, entry.source.repository);
        let registry = registries.get(&entry.source.registry).await?;
        let listed: Vec<String> = registry
            .list_tags(&entry.source.repository)
            .await
            .map_err(|e| anyhow!("{}: {e}", entry.group))?
            .iter()
            .map(|t| t.to_string())
            .collect();
        let chosen = set.select(&listed);
        if chosen.is_empty() {
            bail!(
                "{}: tags {{{set}}} selects none of the {} tags of {repository}; widen the set or check the repository",
                entry.group,
                listed.len()
            );
        }
        eprintln!("tags     {repository} ({set}): {}", chosen.join(", "));
        resolved.extend(expand(&entry, &set, &chosen)?);
    }
    let mut seen = BTreeSet::new();
    resolved.retain(|e| seen.insert(e.source.to_string()));
    Ok(resolved)
}

/// One entry per selected tag (`chosen` in ascending order). What the cluster is
/// pointed at (Helm values, the chart's install, the Agent field, the override) goes
/// with the newest tag only; the older ones are mirrored beside it, for a rollback.
fn expand(entry: &Entry, set: &TagSet, chosen: &[&str]) -> Result<Vec<Entry>> {
    let newest = chosen.len().saturating_sub(1);
    chosen
        .iter()
        .enumerate()
        .map(|(i, tag)| {
            let mut tagged = entry.clone();
            tagged.source.tag = Some(Tag::parse(tag)?);
            tagged.tags = None;
            tagged.tag_set = Some(set.to_string());
            if i != newest {
                tagged.helm.clear();
                tagged.helm_image.clear();
                tagged.agent_field = None;
                tagged.helm_chart = None;
                tagged.override_var = None;
            }
            Ok(tagged)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn select(spec: TagSetSpec, listed: &[&str]) -> Vec<String> {
        let listed = tags(listed);
        let set = TagSet::build(&spec).unwrap();
        set.select(&listed).into_iter().map(String::from).collect()
    }

    fn semver(range: &str) -> TagSetSpec {
        TagSetSpec {
            semver: Some(range.into()),
            ..Default::default()
        }
    }

    const LISTED: [&str; 10] = [
        "latest",
        "v0.1.2",
        "v0.1.3",
        "0.1.4",
        "v0.1.7",
        "v0.1.8-rc.1",
        "v0.2.0",
        "sha256-0123456789abcdef.sig",
        "v0.1",
        "main-abc123",
    ];

    #[test]
    fn a_range_takes_versions_with_or_without_v_and_never_other_tags() {
        assert_eq!(
            select(semver(">=0.1.3, <0.2.0"), &LISTED),
            ["v0.1.3", "0.1.4", "v0.1.7"]
        );
        assert_eq!(select(semver("*"), &["latest", "v0.1", "main"]), [""; 0]);
        assert_eq!(version_of("v1.2.3"), version_of("1.2.3"));
        assert_eq!(version_of("vv1.2.3"), None);
    }

    #[test]
    fn pre_releases_match_only_a_range_that_names_one() {
        assert!(!select(semver(">=0.1.3, <0.2.0"), &LISTED).contains(&"v0.1.8-rc.1".into()));
        assert!(!select(semver("*"), &["v0.1.8-rc.1"]).contains(&"v0.1.8-rc.1".into()));
        assert_eq!(
            select(semver(">=0.1.8-rc.0, <0.2.0"), &LISTED),
            ["v0.1.8-rc.1"]
        );
        // The explicit rule holds where semver's own would too, and never more widely.
        let range = VersionReq::parse(">=0.1.8-rc.0, <0.2.0").unwrap();
        assert!(in_range(&range, &Version::parse("0.1.8-rc.1").unwrap()));
        assert!(!in_range(&range, &Version::parse("0.1.9-rc.1").unwrap()));
        let plain = VersionReq::parse(">=0.1.0").unwrap();
        assert!(!in_range(&plain, &Version::parse("0.1.9-rc.1").unwrap()));
    }

    #[test]
    fn newest_keeps_the_highest_versions_after_filtering() {
        let newest = |n| TagSetSpec {
            newest: Some(n),
            ..semver(">=0.1.0")
        };
        assert_eq!(select(newest(2), &LISTED), ["v0.1.7", "v0.2.0"]);
        assert_eq!(
            select(newest(9), &LISTED),
            ["v0.1.2", "v0.1.3", "0.1.4", "v0.1.7", "v0.2.0"]
        );
        let only_newest = TagSetSpec {
            newest: Some(1),
            ..Default::default()
        };
        assert_eq!(select(only_newest, &LISTED), ["v0.2.0"]);
    }

    #[test]
    fn include_and_exclude_match_whole_tags() {
        let include = TagSetSpec {
            include: Some(r"v0\.1\..*".into()),
            exclude: Some(r".*-rc\..*".into()),
            ..Default::default()
        };
        assert_eq!(select(include, &LISTED), ["v0.1.2", "v0.1.3", "v0.1.7"]);
        let partial = TagSetSpec {
            include: Some("0.1".into()),
            ..Default::default()
        };
        assert_eq!(select(partial, &LISTED), [""; 0]);
        let exclude = TagSetSpec {
            exclude: Some("v.*".into()),
            ..semver(">=0.1.0")
        };
        assert_eq!(select(exclude, &LISTED), ["0.1.4"]);
    }

    #[test]
    fn the_newest_selected_tag_carries_what_the_cluster_is_pointed_at() {
        let mut entry = Entry::plain(
            "kubeopencode",
            crate::naming::ImageRef::parse("ghcr.io/k/chart").unwrap(),
        );
        entry.helm = vec!["controller.image".into()];
        entry.agent_field = Some("spec.agentImage".into());
        entry.override_var = Some("X_IMAGE".into());
        entry.helm_chart = Some(super::super::lists::HelmChart {
            release: "r".into(),
            namespace: "n".into(),
        });
        let set = TagSet::build(&semver(">=0.1.3, <0.2.0")).unwrap();
        let listed = tags(&LISTED);
        let chosen = set.select(&listed);
        let expanded = expand(&entry, &set, &chosen).unwrap();
        let sources: Vec<String> = expanded.iter().map(|e| e.source.to_string()).collect();
        assert_eq!(
            sources,
            [
                "ghcr.io/k/chart:v0.1.3",
                "ghcr.io/k/chart:0.1.4",
                "ghcr.io/k/chart:v0.1.7"
            ]
        );
        let (older, newest) = expanded.split_at(2);
        assert!(older.iter().all(|e| e.helm.is_empty()
            && e.agent_field.is_none()
            && e.override_var.is_none()
            && e.helm_chart.is_none()));
        assert_eq!(newest[0].helm, ["controller.image"]);
        assert!(newest[0].helm_chart.is_some() && newest[0].override_var.is_some());
        assert!(expanded
            .iter()
            .all(|e| e.tags.is_none() && e.tag_set.as_deref() == Some("semver >=0.1.3, <0.2.0")));
    }

    #[test]
    fn bad_sets_are_one_line_naming_the_key() {
        for (spec, want) in [
            (semver(">=0.1.3 <<0.2"), "tags.semver '>=0.1.3 <<0.2'"),
            (
                TagSetSpec {
                    include: Some("v(".into()),
                    ..Default::default()
                },
                "tags.include 'v('",
            ),
            (
                TagSetSpec {
                    newest: Some(0),
                    ..Default::default()
                },
                "tags.newest must be at least 1",
            ),
            (TagSetSpec::default(), "at least one of"),
        ] {
            let err = TagSet::build(&spec).unwrap_err();
            assert!(err.contains(want), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
