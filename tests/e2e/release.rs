//! Build avoidance, per-platform builds by digest, and `images merge`, on a throwaway
//! catalog of three tiny images (no RUN step, so arm64 needs no emulation): `base`,
//! whose content differs per platform, its child `child`, and an unrelated `other`.
//! Real dockerd, a real registry, skopeo as the independent reader.

use crate::support::fixture::raw_digest;
use crate::support::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

const PLATFORMS: &str = "platforms = [\"linux/amd64\", \"linux/arm64\"]\n";

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let nonce = format!("{}\n", fastrand::u64(..));
    write(
        &p.join("dockerfiles/base.Dockerfile.j2"),
        "FROM scratch\nARG TARGETARCH\nCOPY hello.txt /hello.txt\nCOPY arch-${TARGETARCH} /arch\n",
    );
    write(
        &p.join("dockerfiles/child.Dockerfile.j2"),
        "FROM {{ parent }}\nCOPY child.txt /child.txt\n",
    );
    write(
        &p.join("dockerfiles/other.Dockerfile.j2"),
        "FROM scratch\nCOPY other.txt /other.txt\n",
    );
    let toml = |template: &str, parent: &str| {
        format!(
            "description = \"test\"\ntemplate = \"{template}.Dockerfile.j2\"\n{parent}{PLATFORMS}"
        )
    };
    write(&p.join("agents/base/image.toml"), &toml("base", ""));
    write(&p.join("agents/base/hello.txt"), &nonce);
    write(&p.join("agents/base/arch-amd64"), "amd64\n");
    write(&p.join("agents/base/arch-arm64"), "arm64\n");
    write(
        &p.join("agents/child/image.toml"),
        &toml("child", "parent = \"base\"\n"),
    );
    write(&p.join("agents/child/child.txt"), &nonce);
    write(&p.join("agents/other/image.toml"), &toml("other", ""));
    write(&p.join("agents/other/other.txt"), &nonce);
    dir
}

/// The throwaway catalog and a registry to publish it to.
struct Release {
    project: tempfile::TempDir,
    registry: Registry,
}

/// `images build ... --json`: the status of each image.
fn built(out: &std::process::Output) -> BTreeMap<String, String> {
    assert!(out.status.success(), "build: {}", text(&out.stderr));
    let report: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    report
        .iter()
        .map(|o| {
            let image = o["image"].as_str().unwrap().to_string();
            (image, o["status"].as_str().unwrap().to_string())
        })
        .collect()
}

impl Release {
    fn start() -> Release {
        Release {
            project: project(),
            registry: Registry::start(),
        }
    }

    fn naming(&self, version: &str) -> Vec<String> {
        let mut naming = vec!["--registry", &self.registry.addr, "--org", "e2e"];
        naming.extend(["--version", version, "--release-tags"]);
        naming.into_iter().map(String::from).collect()
    }

    fn run(&self, args: &[&str], version: &str) -> std::process::Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(self.naming(version));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        xtask_in(self.project.path(), &all, &[])
    }

    fn build(&self, extra: &[&str], version: &str) -> BTreeMap<String, String> {
        let mut args = vec!["images", "build", "--push", "--progress", "quiet", "--json"];
        args.extend(extra);
        built(&self.run(&args, version))
    }

    fn reference(&self, image: &str, tag: &str) -> String {
        format!(
            "{}/e2e/kubeopencode-agent-{image}:{tag}",
            self.registry.addr
        )
    }

    /// Every tag's digest, per skopeo.
    fn digests(&self) -> BTreeMap<String, String> {
        self.registry
            .tags()
            .into_iter()
            .map(|tag| {
                let reference = format!("{}/{tag}", self.registry.addr);
                (tag, raw_digest(&reference).0)
            })
            .collect()
    }
}

fn statuses(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn unchanged_images_are_not_built_and_new_tags_are_written_registry_side() {
    need!(Docker, Registry, Skopeo);
    let release = Release::start();
    let project = &release.project;
    let all = |status: &str| statuses(&[("base", status), ("child", status), ("other", status)]);

    assert_eq!(release.build(&[], "v1.0.0"), all("built"));
    let first = release.digests();
    assert_eq!(first.len(), 3 * 5, "{first:?}");

    // Nothing changed: nothing built, no tag moved.
    let started = std::time::Instant::now();
    assert_eq!(release.build(&[], "v1.0.0"), all("up to date"));
    eprintln!("warm no-op: {:?}", started.elapsed());
    assert_eq!(release.digests(), first);

    // One template changes: that image and its child, nothing else.
    let template = project.path().join("dockerfiles/base.Dockerfile.j2");
    let body = fs::read_to_string(&template).unwrap();
    fs::write(&template, format!("{body}LABEL changed=yes\n")).unwrap();
    assert_eq!(
        release.build(&[], "v1.0.0"),
        statuses(&[
            ("base", "built"),
            ("child", "built"),
            ("other", "up to date")
        ])
    );
    let second = release.digests();
    for (tag, digest) in &second {
        let other = tag.contains("-other:");
        assert_eq!(first[tag] == *digest, other, "{tag}");
    }

    // A child alone changes: it builds on its parent as pushed (by digest).
    let template = project.path().join("dockerfiles/child.Dockerfile.j2");
    let body = fs::read_to_string(&template).unwrap();
    fs::write(&template, format!("{body}LABEL changed=yes\n")).unwrap();
    assert_eq!(
        release.build(&[], "v1.0.0"),
        statuses(&[
            ("base", "up to date"),
            ("child", "built"),
            ("other", "up to date")
        ])
    );
    let second = release.digests();
    for platform in ["amd64", "arm64"] {
        let manifest = |image: &str| {
            let index = skopeo_raw(&release.reference(image, "v1.0.0"));
            let child = index["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["platform"]["architecture"] == platform)
                .unwrap()
                .clone();
            let at = format!(
                "{}/e2e/kubeopencode-agent-{image}@{}",
                release.registry.addr,
                child["digest"].as_str().unwrap()
            );
            layers(&skopeo_raw(&at))
        };
        let (parent, child) = (manifest("base"), manifest("child"));
        assert_eq!(&child[..parent.len()], &parent[..], "{platform}");
    }

    // A new release: its tags are written from what is there, with no build.
    assert_eq!(release.build(&[], "v1.0.1"), all("retagged"));
    let third = release.digests();
    for image in ["base", "child", "other"] {
        let latest = &second[&format!("e2e/kubeopencode-agent-{image}:latest")];
        for tag in ["v1.0.1", "1.0.1", "1.0", "1", "latest"] {
            assert_eq!(
                &third[&format!("e2e/kubeopencode-agent-{image}:{tag}")],
                latest,
                "{image}:{tag}"
            );
        }
        let old = format!("e2e/kubeopencode-agent-{image}:v1.0.0");
        assert_eq!(third[&old], second[&old]);
    }

    // --force builds anyway.
    assert_eq!(release.build(&["--force"], "v1.0.1"), all("built"));
    assert_eq!(
        skopeo_raw(&release.reference("base", "v1.0.1"))["annotations"]
            ["io.kubeopencode.input-digest"]
            .as_str()
            .map(|d| d.starts_with("sha256:")),
        Some(true)
    );
}

fn records(dir: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut all = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let record: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let key = format!(
            "{}@{}",
            record["image"].as_str().unwrap(),
            record["platform"].as_str().unwrap()
        );
        all.insert(key, record);
    }
    all
}

fn layers(manifest: &serde_json::Value) -> Vec<String> {
    let layers = manifest["layers"].as_array().unwrap();
    layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn platforms_built_apart_are_merged_into_one_index() {
    need!(Docker, Registry, Skopeo);
    let release = Release::start();
    let registry = &release.registry;
    let runners = tempfile::tempdir().unwrap();
    let (amd, arm) = (runners.path().join("amd64"), runners.path().join("arm64"));
    for (platform, dir, check) in [
        ("linux/amd64", &amd, "--check"),
        ("linux/arm64", &arm, "--force"),
    ] {
        let dir = dir.to_str().unwrap();
        let args = ["--platform", platform, "--by-digest", dir, check];
        let built = release.build(&args, "v1.0.0");
        assert!(built.values().all(|s| s == "built"), "{built:?}");
    }
    // By digest: no tag at all.
    assert_eq!(registry.tags(), Vec::<String>::new());
    let (amd_records, arm_records) = (records(&amd), records(&arm));
    assert_eq!(amd_records.len(), 3);
    assert_eq!(arm_records.len(), 3);

    let merge = |dirs: &[&Path], version: &str| {
        let mut args = vec!["images", "merge"];
        args.extend(dirs.iter().map(|d| d.to_str().unwrap()));
        release.run(&args, version)
    };
    let out = merge(&[&amd, &arm], "v1.0.0");
    assert!(out.status.success(), "merge: {}", text(&out.stderr));
    assert_eq!(registry.tags().len(), 3 * 5);

    let mut platform_layers = BTreeMap::new();
    for image in ["base", "child", "other"] {
        let index = skopeo_raw(&release.reference(image, "v1.0.0"));
        let children = index["manifests"].as_array().unwrap();
        for (platform, records) in [("linux/amd64", &amd_records), ("linux/arm64", &arm_records)] {
            let record = &records[&format!("{image}@{platform}")];
            let arch = platform.split('/').nth(1).unwrap();
            let child = children
                .iter()
                .find(|c| c["platform"]["architecture"] == arch)
                .unwrap();
            assert_eq!(child["digest"], record["digest"], "{image} {platform}");
            assert_eq!(child["size"], record["size"]);
            // What the runner pushed, byte for byte: skopeo's bytes hash to that digest.
            let by_digest = format!(
                "{}/e2e/kubeopencode-agent-{image}@{}",
                registry.addr,
                record["digest"].as_str().unwrap()
            );
            let (digest, manifest) = raw_digest(&by_digest);
            assert_eq!(digest, record["digest"].as_str().unwrap());
            let attestations = record["attestations"].as_array().unwrap();
            assert!(
                !attestations.is_empty(),
                "{image} {platform}: no attestation"
            );
            for attestation in attestations {
                assert!(children.contains(attestation), "{image} {platform}");
            }
            platform_layers.insert(format!("{image}@{platform}"), layers(&manifest));
        }
    }
    // Each platform of the child is built on its own platform's parent.
    for platform in ["linux/amd64", "linux/arm64"] {
        let parent = &platform_layers[&format!("base@{platform}")];
        let child = &platform_layers[&format!("child@{platform}")];
        assert_eq!(&child[..parent.len()], &parent[..], "{platform}");
    }
    assert_ne!(
        platform_layers["base@linux/amd64"],
        platform_layers["base@linux/arm64"]
    );

    // Avoidance per platform: a runner with nothing new builds nothing, and records
    // exactly what is merged.
    let again = runners.path().join("again");
    let statuses = release.build(
        &[
            "--platform",
            "linux/arm64",
            "--by-digest",
            again.to_str().unwrap(),
        ],
        "v1.0.0",
    );
    assert!(statuses.values().all(|s| s == "up to date"), "{statuses:?}");
    assert_eq!(records(&again), arm_records);

    // Refusals: one line each, nothing written for that image.
    let refused = |out: &std::process::Output| -> Vec<String> {
        assert!(!out.status.success());
        text(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("refused: "))
            .map(String::from)
            .collect()
    };
    let before = registry.tags();

    // A platform the catalog expects that no folder has.
    let lines = refused(&merge(&[&amd], "v2.0.0"));
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("no folder has linux/arm64")),
        "{lines:?}"
    );
    assert_eq!(registry.tags(), before);

    // Two digests for one platform.
    let twice = runners.path().join("twice");
    fs::create_dir_all(&twice).unwrap();
    let mut other = amd_records["other@linux/amd64"].clone();
    other["digest"] = arm_records["other@linux/arm64"]["digest"].clone();
    fs::write(twice.join("other.json"), other.to_string()).unwrap();
    let lines = refused(&merge(&[&amd, &arm, &twice], "v3.0.0"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("refused: other: two digests for linux/amd64"),
        "{lines:?}"
    );
    let tags = registry.tags();
    assert!(tags.iter().all(|t| !t.contains("other:v3.0.0")), "{tags:?}");
    assert!(tags.iter().any(|t| t.ends_with("base:v3.0.0")), "{tags:?}");

    // A digest the registry does not have.
    let missing = runners.path().join("missing");
    fs::create_dir_all(&missing).unwrap();
    for (key, record) in &arm_records {
        let mut record = record.clone();
        if key.starts_with("other@") {
            record["digest"] = format!("sha256:{}", "0".repeat(64)).into();
        }
        fs::write(
            missing.join(format!("{}.json", key.replace(['/', '@'], "-"))),
            record.to_string(),
        )
        .unwrap();
    }
    let lines = refused(&merge(&[&amd, &missing], "v4.0.0"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("refused: other: the linux/arm64 image sha256:000"),
        "{lines:?}"
    );
    assert!(lines[0].contains("is not in"), "{lines:?}");
    let tags = registry.tags();
    assert!(tags.iter().all(|t| !t.contains("other:v4.0.0")), "{tags:?}");
    assert!(tags.iter().any(|t| t.ends_with("child:v4.0.0")), "{tags:?}");
}

#[test]
fn a_runner_set_that_built_a_subset_merges_that_subset() {
    need!(Docker, Registry, Skopeo);
    let release = Release::start();
    let registry = &release.registry;
    let runners = tempfile::tempdir().unwrap();
    let (amd, arm) = (runners.path().join("amd64"), runners.path().join("arm64"));
    // Only the child and its parent, one platform per runner; `other` is never built.
    for (platform, dir) in [("linux/amd64", &amd), ("linux/arm64", &arm)] {
        let args = ["base", "child", "--platform", platform];
        let built = release.build(
            &[&args[..], &["--by-digest", dir.to_str().unwrap()]].concat(),
            "v1.0.0",
        );
        assert_eq!(built.keys().collect::<Vec<_>>(), ["base", "child"]);
    }
    let merge = |extra: &[&str]| {
        let mut args = vec![
            "images",
            "merge",
            amd.to_str().unwrap(),
            arm.to_str().unwrap(),
        ];
        args.extend(extra);
        release.run(&args, "v1.0.0")
    };
    let out = merge(&[]);
    assert!(out.status.success(), "merge: {}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("refused"),
        "{}",
        text(&out.stderr)
    );
    for image in ["base", "child"] {
        let index = skopeo_raw(&release.reference(image, "v1.0.0"));
        let mut architectures: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["platform"]["architecture"].as_str())
            .filter(|a| *a != "unknown")
            .collect();
        architectures.sort();
        assert_eq!(architectures, ["amd64", "arm64"], "{image}: {index}");
    }
    let tags = registry.tags();
    assert!(tags.iter().all(|t| !t.contains("-other:")), "{tags:?}");

    // Named, an image with no records is refused in one line, and nothing else is merged.
    let before = registry.tags();
    let out = merge(&["other"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    let refused: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("refused: "))
        .collect();
    assert_eq!(refused.len(), 1, "{stderr}");
    assert!(
        refused[0].starts_with("refused: other: no folder has linux/amd64"),
        "{stderr}"
    );
    assert_eq!(registry.tags(), before);
    // Named, a child comes with its parent.
    let out = merge(&["child"]);
    assert!(out.status.success(), "merge child: {}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.contains("base") && report.contains("child"),
        "{report}"
    );
    assert!(!report.contains("other"), "{report}");
}

#[test]
fn load_skips_what_the_engine_already_has() {
    need!(Docker);
    let project = project();
    let org = format!("e2e-load-{}", fastrand::u32(..));
    let build = |version: &str| -> BTreeMap<String, String> {
        let args = [
            "images",
            "build",
            "--load",
            "--platform",
            "linux/amd64",
            "--progress",
            "quiet",
            "--json",
            "--registry",
            "e2e.invalid",
            "--org",
            &org,
            "--version",
            version,
            "--release-tags",
        ];
        built(&xtask_in(project.path(), &args, &[]))
    };
    let all = |status: &str| statuses(&[("base", status), ("child", status), ("other", status)]);
    assert_eq!(build("v1.0.0"), all("built"));
    assert_eq!(build("v1.0.0"), all("up to date"));
    assert_eq!(build("v1.0.1"), all("retagged"));
    let prefix = format!("e2e.invalid/{org}/kubeopencode-agent-");
    for image in ["base", "child", "other"] {
        let id = |tag: &str| {
            let reference = format!("{prefix}{image}:{tag}");
            run(
                "docker",
                &["image", "inspect", "--format", "{{.Id}}", &reference],
            )
        };
        assert_eq!(id("latest"), id("v1.0.1"), "{image}");
        assert_eq!(id("v1.0.0"), id("1.0.1"), "{image}");
    }
    let listed = run(
        "docker",
        &["images", "--format", "{{.Repository}}:{{.Tag}}"],
    );
    let ours: Vec<&str> = listed.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(ours.len(), 3 * 7, "{ours:?}");
    let mut rm = vec!["image", "rm"];
    rm.extend(ours);
    run("docker", &rm);
}
