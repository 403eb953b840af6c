//! `images mirror prune`: mirror a tag set, narrow the list, and prune what it no longer
//! selects, against the real distribution registry, with skopeo judging what is left.

use crate::support::upload::{self, push_tagged, put, IMAGE_CONFIG};
use crate::support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn prune(args: &[&str]) -> std::process::Output {
    let mut all = vec!["images", "mirror", "prune"];
    all.extend_from_slice(args);
    xtask(&all)
}

/// Every tag of the registry with skopeo's digest of it.
fn digests(registry: &Registry) -> BTreeMap<String, String> {
    registry
        .tags()
        .into_iter()
        .map(|tag| {
            let raw = skopeo_inspect("--raw", &format!("{}/{tag}", registry.addr));
            (tag, upload::sha256(raw.as_bytes()))
        })
        .collect()
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

fn sig(digest: &str, suffix: &str) -> String {
    format!("{}{suffix}", digest.replace(':', "-"))
}

/// The source: releases of k/app (v1.3.0 an index over v1.1.0's manifest), a signature
/// and a fallback referrers tag beside v1.0.0, a signature beside v2.0.0, and k/tool:v1.
/// Returns the digests by tag.
fn source(src: &Registry) -> BTreeMap<String, String> {
    let mut digests = BTreeMap::new();
    for tag in ["v1.0.0", "v1.1.0", "v1.2.0", "v2.0.0"] {
        digests.insert(
            tag.to_string(),
            push_tagged(src, "k/app", tag, IMAGE_CONFIG),
        );
    }
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": INDEX,
        "manifests": [{"mediaType": upload::MANIFEST, "digest": digests["v1.1.0"], "size": 0,
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    });
    // The size must be the child's: read it back.
    let child = skopeo_inspect("--raw", &format!("{}/k/app:v1.1.0", src.addr));
    let mut index = index;
    index["manifests"][0]["size"] = child.len().into();
    let index = index.to_string();
    put(
        &src.url("/v2/k/app/manifests/v1.3.0"),
        INDEX,
        index.as_bytes(),
    );
    digests.insert("v1.3.0".into(), upload::sha256(index.as_bytes()));
    for (subject, suffix) in [("v1.0.0", ".sig"), ("v1.0.0", ""), ("v2.0.0", ".sig")] {
        let tag = sig(&digests[subject], suffix);
        push_tagged(src, "k/app", &tag, IMAGE_CONFIG);
    }
    push_tagged(src, "k/tool", "v1", IMAGE_CONFIG);
    digests
}

fn write_list(path: &Path, src: &str, range: &str) -> String {
    fs::write(
        path,
        format!(
            "description = \"prune\"\n\
             [[image]]\nsource = \"{src}/k/app\"\ntags = {{ semver = \"{range}\" }}\n\
             [[image]]\nsource = \"{src}/k/tool:v1\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// A list of one pinned image, `{src}/k/tool:v1`, in `dir`: no source is asked for it.
fn tool_list(dir: &Path, src: &str) -> String {
    let path = dir.join("tool.toml");
    fs::write(
        &path,
        format!("description = \"x\"\n[[image]]\nsource = \"{src}/k/tool:v1\"\n"),
    )
    .unwrap();
    path.display().to_string()
}

/// The one line a refused run prints, checked to be one line and a failure.
fn refused(out: &std::process::Output) -> String {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn prune_deletes_what_the_lists_no_longer_select_and_nothing_else() {
    need!(Registry, Skopeo);
    let (src, dst) = (Registry::plain(), Registry::plain());
    let released = source(&src);
    let work = tempfile::tempdir().unwrap();
    let list_path = work.path().join("apps.toml");
    let prefix = format!("{}/m", dst.addr);

    // Mirror every release, signatures with them.
    let list = write_list(&list_path, &src.addr, ">=1.0.0");
    succeeded(&xtask(&["images", "mirror", &list, "--to", &prefix]));
    // A tag only the mirror has, on a kept manifest; and repositories outside PREFIX,
    // one whose name merely starts with it, with the same tags.
    let alias = format!("{prefix}/k/app:old-alias");
    fixture::skopeo_copy(
        &format!("docker://{prefix}/k/app:v1.2.0"),
        &format!("docker://{alias}"),
    );
    for outside in ["other/k/app", "m-old/k/app", "k/app"] {
        for tag in ["v1.0.0", "v1.1.0"] {
            fixture::skopeo_copy(
                &format!("docker://{prefix}/k/app:{tag}"),
                &format!("docker://{}/{outside}:{tag}", dst.addr),
            );
        }
    }
    let before = digests(&dst);
    let (v1, v2) = (&released["v1.0.0"], &released["v2.0.0"]);
    assert!(
        before.contains_key(&format!("m/k/app:{}", sig(v1, ".sig"))),
        "{before:?}"
    );

    // The list moves on: 1.2.0 and up.
    let list = write_list(&list_path, &src.addr, ">=1.2.0");
    let expected: BTreeSet<String> = [
        format!("delete   {prefix}/k/app:v1.0.0 -> {v1}"),
        format!(
            "leave    {prefix}/k/app:v1.1.0 -> {} (a kept image references the manifest)",
            released["v1.1.0"]
        ),
        format!(
            "leave    {prefix}/k/app:old-alias -> {} (kept tag v1.2.0 has the same manifest)",
            released["v1.2.0"]
        ),
    ]
    .into_iter()
    .collect();
    let dry = succeeded(&prune(&[&list, "--to", &prefix]));
    let lines: Vec<&str> = dry.lines().collect();
    let (rows, summary) = lines.split_at(lines.len() - 1);
    let rows: BTreeSet<String> = rows.iter().map(|l| l.to_string()).collect();
    let signature_rows: BTreeSet<String> = [sig(v1, ".sig"), sig(v1, "")]
        .iter()
        .map(|tag| format!("{prefix}/k/app:{tag} -> "))
        .collect();
    assert_eq!(rows.len(), expected.len() + signature_rows.len(), "{dry}");
    assert!(expected.is_subset(&rows), "{dry}");
    for row in &signature_rows {
        assert!(
            rows.iter()
                .any(|r| r.starts_with(&format!("delete   {row}"))),
            "{row}: {dry}"
        );
    }
    assert!(
        summary[0].starts_with("dry run: 3 tags would be pruned in 2 repositories")
            && summary[0].contains("(5 kept, 2 left on manifests kept tags have)"),
        "{dry}"
    );
    assert_eq!(digests(&dst), before, "the dry run deleted something");

    // --yes deletes them; skopeo sees the rest exactly as it was.
    let out = succeeded(&prune(&[&list, "--to", &prefix, "--yes"]));
    let after = digests(&dst);
    let gone: BTreeSet<String> = ["v1.0.0".to_string(), sig(v1, ".sig"), sig(v1, "")]
        .iter()
        .map(|tag| format!("m/k/app:{tag}"))
        .collect();
    // A tag sharing a kept manifest stays unless --untag-shared (below).
    let mut expected_after = before.clone();
    expected_after.retain(|tag, _| !gone.contains(tag));
    assert_eq!(after, expected_after, "{out}");
    assert_eq!(
        skopeo_tags(&format!("{prefix}/k/app")),
        set(&[
            "v1.1.0".into(),
            "v1.2.0".into(),
            "v1.3.0".into(),
            "v2.0.0".into(),
            "old-alias".into(),
            sig(v2, ".sig")
        ])
    );
    assert!(skopeo_tags(&format!("{prefix}/k/tool")).contains("v1"));
    // ...and says so, one line each.
    for tag in ["old-alias", "v1.1.0"] {
        assert!(
            out.contains(&format!("left     {prefix}/k/app:{tag} -> "))
                && out.contains("--untag-shared deletes the tag alone"),
            "{out}"
        );
    }
    // Asked to, it tries the tag alone; distribution 2.8 cannot, so they stay.
    let out = succeeded(&prune(&[&list, "--to", &prefix, "--yes", "--untag-shared"]));
    assert_eq!(digests(&dst), expected_after, "{out}");
    assert!(
        out.contains("the registry cannot delete a tag alone"),
        "{out}"
    );
    // The pruned manifest is gone by digest too; the one v1.3.0 points at is not.
    let by_digest = |digest: &str| {
        std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{prefix}/k/app@{digest}"))
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!by_digest(v1), "{v1} is still there");
    assert!(by_digest(&released["v1.1.0"]), "v1.3.0's child was deleted");

    // Run again: nothing left to prune but what the registry cannot untag.
    let again = succeeded(&prune(&[&list, "--to", &prefix, "--json"]));
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["dry_run"], true, "{again}");
    let actions: BTreeSet<&str> = again["prunes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, BTreeSet::from(["leave"]), "{again}");
}

#[test]
fn prune_refuses_an_empty_list_a_bad_prefix_and_an_unreachable_registry() {
    need!(Registry, Skopeo);
    let dst = Registry::plain();
    push_tagged(&dst, "m/k/app", "v1", IMAGE_CONFIG);
    let before = digests(&dst);
    let work = tempfile::tempdir().unwrap();
    let empty = work.path().join("empty.toml");
    fs::write(&empty, "description = \"nothing yet\"\n").unwrap();
    let empty = empty.display().to_string();
    let prefix = format!("{}/m", dst.addr);
    let tool = tool_list(work.path(), &dst.addr);
    for (args, want) in [
        (
            vec![empty.as_str(), "--to", &prefix, "--yes"],
            "empty.toml selects no image, and prune deletes whatever the lists do not select; add [[image]] entries",
        ),
        (
            vec![tool.as_str(), "--to", "Not A Prefix", "--yes"],
            "--to: registry prefix 'Not A Prefix' does not start with a registry host",
        ),
        (
            vec![tool.as_str(), "--to", "127.0.0.1:1/m", "--yes"],
            "registry 127.0.0.1:1 is unreachable",
        ),
    ] {
        let stderr = refused(&prune(&args));
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    assert_eq!(digests(&dst), before, "a refused run deleted something");
}

#[test]
fn a_registry_with_deletes_off_is_one_line_saying_how_to_enable_them() {
    need!(Registry, Skopeo);
    let dst = Registry::without_deletes();
    push_tagged(&dst, "m/k/tool", "v1", IMAGE_CONFIG);
    push_tagged(&dst, "m/k/tool", "v0", IMAGE_CONFIG);
    let before = digests(&dst);
    let work = tempfile::tempdir().unwrap();
    let list = tool_list(work.path(), &dst.addr);
    let prefix = format!("{}/m", dst.addr);
    let stderr = refused(&prune(&[&list, "--to", &prefix, "--yes"]));
    assert!(
        stderr.contains(&format!(
            "{prefix}/k/tool:v0: {} answered DELETE with 405",
            dst.addr
        )) && stderr.contains("storage.delete.enabled: true"),
        "{stderr}"
    );
    assert_eq!(digests(&dst), before);
}

#[test]
fn a_registry_that_takes_the_manifest_with_a_tag_is_named_at_once() {
    need!(Registry, Skopeo);
    let dst = Registry::plain();
    let kept = push_tagged(&dst, "m/k/tool", "v1", IMAGE_CONFIG);
    let raw = skopeo_inspect("--raw", &format!("{}/m/k/tool:v1", dst.addr));
    put(
        &dst.url("/v2/m/k/tool/manifests/old"),
        upload::MANIFEST,
        raw.as_bytes(),
    );
    // As early zot did: a DELETE by tag deletes the manifest, every tag on it with it.
    let by_digest = dst.url(&format!("/v2/m/k/tool/manifests/{kept}"));
    let registry = proxy::Proxy::start(
        &dst.addr,
        Box::new(move |method, path, _| {
            if method == "DELETE" && path == "/v2/m/k/tool/manifests/old" {
                run("curl", &["-sf", "-X", "DELETE", &by_digest]);
                return proxy::Action::Respond(202, Vec::new());
            }
            proxy::Action::Forward
        }),
    );
    let work = tempfile::tempdir().unwrap();
    let list = tool_list(work.path(), &dst.addr);
    let prefix = format!("{}/m", registry.addr);
    // Unasked, prune sends no tag DELETE, so such a registry keeps the manifest.
    let out = succeeded(&prune(&[&list, "--to", &prefix, "--yes"]));
    assert!(
        out.contains(&format!("left     {prefix}/k/tool:old -> ")),
        "{out}"
    );
    let (still, _) = crate::support::fixture::raw_digest(&format!("{}/m/k/tool:v1", dst.addr));
    assert_eq!(still, kept);
    let stderr = refused(&prune(&[&list, "--to", &prefix, "--yes", "--untag-shared"]));
    assert!(
        stderr.contains(&format!(
            "{prefix}/k/tool:old: {} deleted the manifest {kept} with the tag, and kept tags need it; run the mirror again",
            registry.addr
        )),
        "{stderr}"
    );
}

/// `REPO:TAG` of every row a dry run prints (the summary line left out).
fn planned(dry: &str, prefix: &str) -> BTreeSet<String> {
    dry.lines()
        .filter_map(|line| line.strip_prefix("delete   "))
        .filter_map(|row| row.split(" -> ").next())
        .map(|reference| {
            reference
                .trim_start_matches(&format!("{prefix}/"))
                .to_string()
        })
        .collect()
}

#[test]
fn unmapped_prunes_what_no_list_maps_under_prefix_and_nothing_beside_it() {
    need!(Registry, Skopeo);
    let dst = Registry::plain();
    for (repository, tag) in [
        ("m/k/tool", "v1"),
        ("m/k/tool", "v0"),
        ("m/old/app", "v1"),
        ("m/old/app", "v2"),
        // Outside PREFIX, in the catalog all the same; one only starts with its text.
        ("other/k/app", "v1"),
        ("m-old/k/app", "v1"),
        ("k/app", "v1"),
    ] {
        push_tagged(&dst, repository, tag, IMAGE_CONFIG);
    }
    let before = digests(&dst);
    let work = tempfile::tempdir().unwrap();
    let list = tool_list(work.path(), &dst.addr);
    let prefix = format!("{}/m", dst.addr);

    // By default only the repositories the lists map are looked at.
    let mapped = succeeded(&prune(&[&list, "--to", &prefix]));
    assert_eq!(
        planned(&mapped, &prefix),
        set(&["k/tool:v0".into()]),
        "{mapped}"
    );
    let dry = succeeded(&prune(&[&list, "--to", &prefix, "--unmapped"]));
    let expected = set(&["k/tool:v0".into(), "old/app:v1".into(), "old/app:v2".into()]);
    assert_eq!(planned(&dry, &prefix), expected, "{dry}");
    assert_eq!(digests(&dst), before, "the dry run deleted something");

    let out = succeeded(&prune(&[&list, "--to", &prefix, "--unmapped", "--yes"]));
    let mut expected_after = before.clone();
    expected_after.retain(|tag, _| !expected.contains(tag.trim_start_matches("m/")));
    assert_eq!(digests(&dst), expected_after, "{out}");
    assert_eq!(
        skopeo_tags(&format!("{prefix}/k/tool")),
        set(&["v1".into()])
    );

    // A registry that keeps its catalog to itself: one line, nothing deleted.
    let closed = proxy::Proxy::start(
        &dst.addr,
        Box::new(|_, path, _| match path.starts_with("/v2/_catalog") {
            true => proxy::Action::Respond(404, Vec::new()),
            false => proxy::Action::Forward,
        }),
    );
    let closed_prefix = format!("{}/m", closed.addr);
    let stderr = refused(&prune(&[
        &list,
        "--to",
        &closed_prefix,
        "--unmapped",
        "--yes",
    ]));
    assert!(
        stderr.contains(&format!(
            "--unmapped: {} does not serve /v2/_catalog to these credentials",
            closed.addr
        )),
        "{stderr}"
    );
    assert_eq!(digests(&dst), expected_after);
}
