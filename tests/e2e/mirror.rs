//! The mirror against real distribution registries on loopback, with a buildx-built
//! multi-arch index that carries provenance attestations, checked with skopeo.

use crate::support::fixture::*;
use crate::support::proxy::{Action, Proxy};
use crate::support::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn list_file(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("list.toml");
    fs::write(&path, format!("description = \"test\"\n{body}")).unwrap();
    path
}

fn mirror(args: &[&str]) -> std::process::Output {
    let mut all = vec!["images", "mirror"];
    all.extend_from_slice(args);
    xtask(&all)
}

fn summary(output: &std::process::Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "mirror failed: {}",
        text(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", text(&output.stdout)))
}

/// Replaces every sha256 digest, so golden files do not depend on build timestamps.
fn normalise(text: &str, replacements: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in replacements {
        out = out.replace(from, to);
    }
    let mut result = String::new();
    let mut rest = out.as_str();
    while let Some(at) = rest.find("sha256:") {
        let (before, after) = rest.split_at(at);
        result.push_str(before);
        let hex_len = after[7..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        result.push_str(if hex_len == 64 {
            "sha256:<digest>"
        } else {
            "sha256:"
        });
        rest = &after[7 + if hex_len == 64 { 64 } else { 0 }..];
    }
    result.push_str(rest);
    result
}

#[test]
fn mirror_preserves_digests_and_a_rerun_is_a_no_op() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app", "fixture/tools"]);
    let (src_proxy, dst_proxy) = (Proxy::counting(&src.addr), Proxy::counting(&dst.addr));
    let work = tempfile::tempdir().unwrap();
    let list = list_file(
        work.path(),
        &format!(
            "[[image]]\nsource = \"{s}/fixture/app:v1\"\noverride = \"AGENTKUBE_IMAGE_MANAGER\"\nhelm = [\"controller.image\", \"server.image\"]\n\
             helm_image = [\"kubeopencodeConfig.systemImage.image\"]\n\n[[image]]\nsource = \"{s}/fixture/tools:v1\"\n\
             agent_field = \"spec.executorImage\"\n",
            s = src_proxy.addr
        ),
    );
    let config = work.path().join("cluster");
    let prefix = format!("{}/exo-mirror", dst_proxy.addr);
    let args = [
        "--to",
        &prefix,
        list.to_str().unwrap(),
        "--json",
        "--write-config",
        config.to_str().unwrap(),
    ];
    let first = summary(&mirror(&args));
    assert_eq!(first["copied"], 2, "{first}");
    assert!(
        first["blobs_mounted"].as_u64().unwrap() > 0,
        "the second image's blobs are mounted, not copied: {first}"
    );
    for repository in ["fixture/app", "fixture/tools"] {
        assert_same_tree(
            &format!("{}/{repository}:v1", src.addr),
            &format!("{}/exo-mirror/{repository}:v1", dst.addr),
        );
    }

    // A re-run: HEADs only, no manifest GET, no blob traffic.
    src_proxy.clear();
    dst_proxy.clear();
    let again = summary(&mirror(&args));
    assert_eq!(again["skipped"], 2, "{again}");
    for (side, proxy) in [("source", &src_proxy), ("destination", &dst_proxy)] {
        for request in proxy.log() {
            let ping = request.path == "/v2/";
            assert!(
                ping || (request.method == "HEAD" && request.path.contains("/manifests/")),
                "{side} saw {request:?} on a no-op"
            );
        }
        let heads = proxy.log().iter().filter(|r| r.method == "HEAD").count();
        assert_eq!(heads, 2, "{side}: one HEAD per image");
    }

    // What the cluster consumes, against golden files.
    let replacements = [
        (src_proxy.addr.as_str(), "source.test"),
        (dst_proxy.addr.as_str(), "mirror.test"),
    ];
    let mut files: Vec<PathBuf> = walk(&config);
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&config).unwrap().display().to_string())
        .collect();
    insta::assert_snapshot!(
        "cluster_config_files",
        normalise(&names.join("\n"), &replacements)
    );
    for (file, name) in files.iter().zip(&names) {
        let content = fs::read_to_string(file).unwrap();
        let snapshot = format!(
            "cluster_config__{}",
            normalise(name, &replacements).replace(['/', '.'], "_")
        );
        insta::assert_snapshot!(snapshot, normalise(&content, &replacements));
        if name.ends_with(".toml") {
            let hosts: toml::Value =
                toml::from_str(&content).unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
            assert!(
                hosts["server"].as_str().unwrap().starts_with("http"),
                "{name}"
            );
            let mirror_host = hosts["host"].as_table().unwrap().values().next().unwrap();
            assert_eq!(mirror_host["override_path"].as_bool(), Some(true), "{name}");
        }
        if name.ends_with(".yaml") {
            let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&content)
                .map(|d| {
                    serde::Deserialize::deserialize(d)
                        .unwrap_or_else(|e| panic!("{name} does not parse: {e}"))
                })
                .collect();
            if name.contains("digest") {
                let [yaml] = &docs[..] else {
                    panic!("one group, one object: {content}")
                };
                assert_eq!(yaml["kind"], "ImageDigestMirrorSet");
                assert_eq!(yaml["metadata"]["name"], "kubeopencode-list-digest-mirrors");
                let mirrors = &yaml["spec"]["imageDigestMirrors"];
                assert_eq!(
                    mirrors[0]["source"].as_str().unwrap(),
                    format!("{}/fixture/app", src_proxy.addr)
                );
                assert_eq!(
                    mirrors[0]["mirrors"][0].as_str().unwrap(),
                    format!("{prefix}/fixture/app")
                );
            }
            if name.contains("helm") {
                let app = format!("{prefix}/fixture/app");
                for key in ["controller", "server"] {
                    let image = &docs[0][key]["image"];
                    assert_eq!(image["repository"].as_str(), Some(app.as_str()), "{key}");
                    let tag = image["tag"].as_str().unwrap();
                    assert!(
                        tag.starts_with("v1@sha256:") && tag.len() == 74,
                        "{key}: {tag}"
                    );
                }
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_dir() {
            files.extend(walk(&entry.path()));
        } else {
            files.push(entry.path());
        }
    }
    files
}

#[test]
fn faults_are_retried_and_a_tag_only_ever_points_at_a_complete_image() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    // First try of every blob GET drops mid-body; of every manifest GET, a 500; of the
    // tag HEAD, a 429 that asks for a one-second pause.
    let src_proxy = Proxy::start(
        &src.addr,
        Box::new(|method, path, n| match (method, n) {
            ("GET", 0) if path.contains("/blobs/") => Action::CutAfter(100),
            ("GET", 0) if path.contains("/manifests/") => Action::Respond(500, vec![]),
            ("HEAD", 0) if path.ends_with("/manifests/v1") => {
                Action::Respond(429, vec![("Retry-After".into(), "1".into())])
            }
            _ => Action::Forward,
        }),
    );
    let dst_proxy = Proxy::counting(&dst.addr);
    let started = Instant::now();
    let result = summary(&mirror(&[
        "--to",
        &format!("{}/m", dst_proxy.addr),
        "--image",
        &format!("{}/fixture/app:v1", src_proxy.addr),
        "--json",
    ]));
    assert_eq!(result["copied"], 1, "{result}");
    assert!(result["retries"].as_u64().unwrap() >= 3, "{result}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert!(src_proxy.log().iter().any(|r| r.status == 429));
    assert_same_tree(
        &format!("{}/fixture/app:v1", src.addr),
        &format!("{}/m/fixture/app:v1", dst.addr),
    );

    // Ordering at the destination: the tag is written last, after every blob and child.
    let log = dst_proxy.log();
    let tag_put = log
        .iter()
        .position(|r| r.method == "PUT" && r.path.ends_with("/manifests/v1"))
        .expect("the tag was pushed");
    assert_eq!(
        log.iter()
            .filter(|r| r.method == "PUT" && r.path.ends_with("/manifests/v1"))
            .count(),
        1
    );
    for (i, request) in log.iter().enumerate() {
        if request.method == "PUT"
            && (request.path.contains("/blobs/uploads/")
                || request.path.contains("/manifests/sha256:"))
        {
            assert!(i < tag_put, "{request:?} came after the tag");
        }
    }
}

#[test]
fn a_corrupt_source_blob_is_refused_and_named() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    let bad = big_layer(&src.addr, "fixture/app");
    let needle = bad.clone();
    let src_proxy = Proxy::start(
        &src.addr,
        Box::new(move |method, path, _| {
            if method == "GET" && path.ends_with(&needle) {
                Action::Corrupt(1_000_000)
            } else {
                Action::Forward
            }
        }),
    );
    let output = mirror(&[
        "--to",
        &format!("{}/m", dst.addr),
        "--image",
        &format!("{}/fixture/app:v1", src_proxy.addr),
    ]);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("digest mismatch") && stderr.contains(&bad),
        "the failure names the blob: {stderr}"
    );
    assert!(
        stderr.contains("fixture/app:v1"),
        "the failure names the image: {stderr}"
    );
    assert_eq!(
        manifest_status(&dst.url("/v2/m/fixture/app/manifests/v1")),
        Some(404),
        "the tag must not exist"
    );
    assert_eq!(
        http_status(&dst.url(&format!("/v2/m/fixture/app/blobs/{bad}"))),
        Some(404),
        "the corrupt blob must not land"
    );
}

#[test]
fn a_killed_run_resumes_without_recopying_finished_blobs() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    let slow = Proxy::start(
        &src.addr,
        Box::new(|method, path, _| {
            if method == "GET" && path.contains("/blobs/") {
                Action::Slow(Duration::from_millis(150))
            } else {
                Action::Forward
            }
        }),
    );
    let dst_proxy = Proxy::counting(&dst.addr);
    let prefix = format!("{}/m", dst_proxy.addr);
    let source = format!("{}/fixture/app:v1", slow.addr);
    let mut child = Command::new(xtask_binary())
        .args(["images", "mirror", "--to", &prefix, "--image", &source])
        .env("XTASK_PROJECT_DIR", project_root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let finished_upload = |r: &crate::support::proxy::Logged| {
        r.method == "PUT" && r.path.contains("digest=") && r.status == 201
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dst_proxy.log().iter().any(finished_upload) {
        assert!(
            Instant::now() < deadline,
            "no blob finished within a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done: BTreeSet<String> = dst_proxy
        .log()
        .iter()
        .filter(|r| finished_upload(r))
        .map(|r| {
            r.path
                .split("digest=")
                .nth(1)
                .unwrap()
                .split('&')
                .next()
                .unwrap()
                .replace("%3A", ":")
        })
        .collect();
    assert_eq!(
        manifest_status(&dst.url("/v2/m/fixture/app/manifests/v1")),
        Some(404),
        "killed before the tag"
    );

    dst_proxy.clear();
    let resumed = summary(&mirror(&[
        "--to",
        &prefix,
        "--image",
        &format!("{}/fixture/app:v1", src.addr),
        "--json",
    ]));
    assert_eq!(resumed["copied"], 1, "{resumed}");
    for request in dst_proxy.log() {
        if request.method == "PUT" && request.path.contains("digest=") {
            let digest = request
                .path
                .split("digest=")
                .nth(1)
                .unwrap()
                .replace("%3A", ":");
            assert!(
                !done.iter().any(|d| digest.starts_with(d.as_str())),
                "{digest} was copied twice"
            );
        }
    }
    assert!(
        resumed["blobs_present"].as_u64().unwrap() >= done.len() as u64,
        "{resumed}"
    );
    assert_eq!(
        manifest_status(&dst.url("/v2/m/fixture/app/manifests/v1")),
        Some(200),
        "the resumed run wrote the tag"
    );
    assert_same_tree(
        &format!("{}/fixture/app:v1", src.addr),
        &format!("{}/m/fixture/app:v1", dst.addr),
    );
}

#[test]
fn retag_adds_tags_without_moving_layers() {
    need!(Docker, Registry, Skopeo);
    let registry = Registry::plain();
    seed(&registry.addr, &["fixture/app"]);
    let proxy = Proxy::counting(&registry.addr);
    let output = xtask(&[
        "images",
        "retag",
        &format!("{}/fixture/app:v1", proxy.addr),
        "v1.2",
        "latest",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        proxy.log().iter().all(|r| !r.path.contains("/blobs/")),
        "retag moved blobs: {:?}",
        proxy.log()
    );
    let (v1, _) = raw_digest(&format!("{}/fixture/app:v1", registry.addr));
    for tag in ["v1.2", "latest"] {
        let (digest, _) = raw_digest(&format!("{}/fixture/app:{tag}", registry.addr));
        assert_eq!(digest, v1, "{tag}");
    }
    let other_registry = xtask(&[
        "images",
        "retag",
        &format!("{}/fixture/app:v1", registry.addr),
        "ghcr.io/x/y:z",
    ]);
    assert!(text(&other_registry.stderr).contains("retag stays inside"));
}

#[test]
fn signatures_beside_an_image_come_along_and_a_platform_subset_is_loud() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    let signature_tag = sign_with_a_tag(&src.addr);
    let (digest, _) = raw_digest(&format!("{}/fixture/app:v1", src.addr));
    let copied = summary(&mirror(&[
        "--to",
        &format!("{}/m", dst.addr),
        "--image",
        &format!("{}/fixture/app:v1", src.addr),
        "--json",
    ]));
    assert_eq!(copied["copied"], 1, "{copied}");
    assert_eq!(
        manifest_status(&dst.url(&format!("/v2/m/fixture/app/manifests/{signature_tag}"))),
        Some(200),
        "the signature tag was mirrored"
    );

    // Only amd64: a warning, an index with amd64 and its attestation, and a new digest.
    let output = mirror(&[
        "--to",
        &format!("{}/subset", dst.addr),
        "--image",
        &format!("{}/fixture/app:v1", src.addr),
        "--platform",
        "linux/amd64",
    ]);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARNING") && stderr.contains("digest"),
        "{stderr}"
    );
    let (subset_digest, index) = raw_digest(&format!("{}/subset/fixture/app:v1", dst.addr));
    assert_ne!(subset_digest, digest);
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(platforms, ["amd64", "unknown"], "{index}");
}

#[test]
fn dry_run_writes_nothing_and_bad_input_is_one_line() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    let proxy = Proxy::counting(&dst.addr);
    let plan = mirror(&[
        "--to",
        &format!("{}/m", proxy.addr),
        "--image",
        &format!("{}/fixture/app:v1", src.addr),
        "--dry-run",
    ]);
    let stdout = text(&plan.stdout);
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    assert!(
        stdout.contains(&format!("{}/fixture/app:v1", src.addr)) && stdout.contains("copy"),
        "{stdout}"
    );
    assert!(
        proxy
            .log()
            .iter()
            .all(|r| r.method == "HEAD" || r.path == "/v2/"),
        "a dry run wrote: {:?}",
        proxy.log()
    );

    for (args, expected) in [
        (
            vec!["--to", "127.0.0.1:1/m", "--image", "127.0.0.1:1/a:b"],
            "registry 127.0.0.1:1 is unreachable",
        ),
        (
            vec!["--to", "127.0.0.1:1/m", "--image", "Not A Ref"],
            "--image Not A Ref",
        ),
        (
            vec!["--image", "127.0.0.1:1/a:b"],
            "--to PREFIX is required",
        ),
        (
            vec!["--to", "127.0.0.1:1/m", "no-such-group"],
            "unknown mirror group or file 'no-such-group'",
        ),
    ] {
        let output = mirror(&args);
        let stderr = text(&output.stderr);
        assert!(!output.status.success());
        let last = stderr.lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: ") && last.contains(expected),
            "{args:?}: {stderr}"
        );
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{stderr}"
        );
    }
}

#[test]
fn credentials_come_from_the_docker_config_and_never_show() {
    need!(Docker, Registry, Skopeo);
    let (user, password) = ("mirror-bot", "s3cret-never-printed-42");
    let src = Registry::with_login(user, password);
    let dst = Registry::plain();
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{user}:{password}"),
            &format!("oci-archive:{}", fixture_archive().display()),
            &format!("docker://{}/fixture/app:v1", src.addr),
        ],
    );
    let home = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let auth = run(
        "sh",
        &[
            "-c",
            &format!("printf '%s' '{user}:{password}' | base64 -w0"),
        ],
    );
    fs::write(
        home.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, src.addr),
    )
    .unwrap();
    let args = [
        "images",
        "mirror",
        "--to",
        &format!("{}/m", dst.addr),
        "--image",
        &format!("{}/fixture/app:v1", src.addr),
    ];

    let anonymous = xtask_in(
        &project_root(),
        &args,
        &[("DOCKER_CONFIG", empty.path().to_str().unwrap())],
    );
    let stderr = text(&anonymous.stderr);
    assert!(!anonymous.status.success(), "{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("docker login"),
        "{stderr}"
    );

    let logged_in = xtask_in(
        &project_root(),
        &args,
        &[("DOCKER_CONFIG", home.path().to_str().unwrap())],
    );
    let output = format!("{}{}", text(&logged_in.stdout), text(&logged_in.stderr));
    assert!(logged_in.status.success(), "{output}");
    assert!(
        !output.contains(password) && !stderr.contains(password),
        "the password reached the output"
    );
    let source_raw = run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--raw",
            "--creds",
            &format!("{user}:{password}"),
            &format!("docker://{}/fixture/app:v1", src.addr),
        ],
    );
    assert_eq!(
        skopeo_inspect("--raw", &format!("{}/m/fixture/app:v1", dst.addr)),
        source_raw,
        "byte-identical index"
    );
}

/// Fails `share` (a multiple of 5) in 100 of the non-HEAD requests it sees (500s, 503s and 429s, some
/// with Retry-After), in a fixed rotation so the share is exact however requests
/// interleave; with `cut_blobs`, also cuts every third blob body part-way.
fn bad_network(upstream: &str, share: usize, cut_blobs: bool) -> Proxy {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (requests, blobs) = (AtomicUsize::new(0), AtomicUsize::new(0));
    Proxy::start(
        upstream,
        Box::new(move |method, path, _| {
            if method == "HEAD" {
                return Action::Forward;
            }
            let n = requests.fetch_add(1, Ordering::Relaxed);
            // Spread out (7 is coprime with 20), so failures never come in long runs.
            if (n * 7) % 20 < share / 5 {
                return match n % 3 {
                    0 => Action::Respond(500, vec![]),
                    1 => Action::Respond(503, vec![]),
                    _ => Action::Respond(429, vec![("Retry-After".into(), "0".into())]),
                };
            }
            if cut_blobs && method == "GET" && path.contains("/blobs/sha256:") {
                let b = blobs.fetch_add(1, Ordering::Relaxed);
                if b % 3 == 0 {
                    return Action::CutPart(10 + (b * 37) % 80);
                }
            }
            Action::Forward
        }),
    )
}

#[test]
fn a_bad_network_on_both_sides_still_gives_identical_digests() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    let src_proxy = bad_network(&src.addr, 35, true);
    let dst_proxy = bad_network(&dst.addr, 35, false);
    let result = summary(&mirror(&[
        "--to",
        &format!("{}/m", dst_proxy.addr),
        "--image",
        &format!("{}/fixture/app:v1", src_proxy.addr),
        "--json",
    ]));
    assert_eq!(result["copied"], 1, "{result}");
    assert_same_tree(
        &format!("{}/fixture/app:v1", src.addr),
        &format!("{}/m/fixture/app:v1", dst.addr),
    );

    let failed_share = |proxy: &Proxy| {
        let log = proxy.log();
        let non_head: Vec<_> = log.iter().filter(|r| r.method != "HEAD").collect();
        let failed = non_head
            .iter()
            .filter(|r| matches!(r.status, 429 | 500 | 503))
            .count();
        (failed, non_head.len())
    };
    let (src_failed, src_total) = failed_share(&src_proxy);
    let (dst_failed, dst_total) = failed_share(&dst_proxy);
    let src_log = src_proxy.log();
    let blob_bodies: Vec<_> = src_log
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/") && r.status < 300)
        .collect();
    let cut = blob_bodies.iter().filter(|r| r.cut).count();
    // What the corpus holds: every blob of every manifest, counted once.
    let (_, index) = raw_digest(&format!("{}/fixture/app:v1", src.addr));
    let mut blobs = BTreeSet::new();
    for child in index["manifests"].as_array().unwrap() {
        let reference = format!(
            "{}/fixture/app@{}",
            src.addr,
            child["digest"].as_str().unwrap()
        );
        let (_, manifest) = raw_digest(&reference);
        for blob in
            std::iter::once(&manifest["config"]).chain(manifest["layers"].as_array().unwrap())
        {
            blobs.insert((blob["digest"].to_string(), blob["size"].as_u64().unwrap()));
        }
    }
    let corpus: u64 = blobs.iter().map(|(_, size)| size).sum();
    eprintln!(
        "bad network: source failed {src_failed}/{src_total} non-HEAD requests, destination \
         {dst_failed}/{dst_total}; {cut}/{} blob bodies cut; retries {}, resumed reads {}, \
         resumed uploads {}, restarts {}; {} bytes moved for a corpus of {corpus} bytes",
        blob_bodies.len(),
        result["retries"],
        result["resumed_reads"],
        result["resumed_uploads"],
        result["restarts"],
        result["bytes"],
    );
    assert!(
        src_failed * 100 >= src_total * 30,
        "source: {src_failed}/{src_total}"
    );
    assert!(
        dst_failed * 100 >= dst_total * 30,
        "destination: {dst_failed}/{dst_total}"
    );
    assert!(
        cut * 100 >= blob_bodies.len() * 20,
        "{cut}/{}",
        blob_bodies.len()
    );
    assert!(result["resumed_reads"].as_u64().unwrap() > 0, "{result}");
    assert!(result["resumed_uploads"].as_u64().unwrap() > 0, "{result}");
    // A cut source body costs nothing again (Range picks up where it broke); a failed
    // upload request costs at most one blob again (the proxy reads the body first).
    let failed_uploads = dst_proxy
        .log()
        .iter()
        .filter(|r| r.path.contains("/blobs/uploads/") && r.method != "POST" && r.status >= 429)
        .count() as u64;
    assert!(
        result["bytes"].as_u64().unwrap() <= corpus * (1 + failed_uploads),
        "{failed_uploads} failed upload requests: {result}"
    );
}

#[test]
fn a_signature_that_failed_to_copy_is_copied_by_the_next_run() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    let signature_tag = sign_with_a_tag(&src.addr);
    // Every push of the signature tag fails, as a flaky network would for a while.
    let tag = signature_tag.clone();
    let flaky = Proxy::start(
        &dst.addr,
        Box::new(move |method, path, _| {
            if method == "PUT" && path.ends_with(&format!("/manifests/{tag}")) {
                Action::Respond(500, vec![])
            } else {
                Action::Forward
            }
        }),
    );
    let args = |to: &str| {
        vec![
            "--to".to_string(),
            format!("{to}/m"),
            "--image".to_string(),
            format!("{}/fixture/app:v1", src.addr),
        ]
    };
    let first = xtask(
        &["images", "mirror"]
            .into_iter()
            .chain(args(&flaky.addr).iter().map(String::as_str))
            .collect::<Vec<_>>(),
    );
    assert!(!first.status.success(), "{}", text(&first.stderr));
    assert_eq!(
        manifest_status(&dst.url("/v2/m/fixture/app/manifests/v1")),
        Some(404),
        "the tag was written before its signature"
    );
    let second = summary(&mirror(
        &args(&dst.addr)
            .iter()
            .map(String::as_str)
            .chain(["--json"])
            .collect::<Vec<_>>(),
    ));
    assert_eq!(
        second["copied"], 1,
        "the second run trusted an incomplete mirror: {second}"
    );
    assert_eq!(
        manifest_status(&dst.url(&format!("/v2/m/fixture/app/manifests/{signature_tag}"))),
        Some(200),
        "the signature never arrived"
    );
}

/// Every file under `dir`, relative path to bytes.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = walk(dir)
        .into_iter()
        .map(|f| {
            (
                f.strip_prefix(dir).unwrap().to_path_buf(),
                fs::read(&f).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_failed_image_leaves_the_cluster_configuration_as_it_was() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app", "fixture/tools"]);
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("cluster");
    let list = list_file(
        work.path(),
        &format!(
            "[[image]]\nsource = \"{s}/fixture/app:v1\"\nhelm = [\"controller.image\"]\n\n\
             [[image]]\nsource = \"{s}/fixture/tools:v1\"\nhelm = [\"server.image\"]\n",
            s = src.addr
        ),
    );
    let run_mirror = |dir: &Path| {
        mirror(&[
            "--to",
            &format!("{}/m", dst.addr),
            list.to_str().unwrap(),
            "--write-config",
            dir.to_str().unwrap(),
        ])
    };
    let complete = run_mirror(&config);
    assert!(complete.status.success(), "{}", text(&complete.stderr));
    let before = contents(&config);
    assert!(before.len() >= 7, "{before:?}");

    // The source loses one image, so the re-run fails for it.
    let (tools, _) = raw_digest(&format!("{}/fixture/tools:v1", src.addr));
    run(
        "curl",
        &[
            "-sf",
            "-X",
            "DELETE",
            &src.url(&format!("/v2/fixture/tools/manifests/{tools}")),
        ],
    );
    let partial = run_mirror(&config);
    let stderr = text(&partial.stderr);
    assert!(!partial.status.success(), "{stderr}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("was left as it was"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].starts_with(&config.display().to_string())
            && said[0].contains("1 of 2 images failed"),
        "{stderr}"
    );
    assert_eq!(contents(&config), before, "the configuration changed");

    // No configuration yet and a failure: none is made.
    let fresh = work.path().join("fresh");
    assert!(!run_mirror(&fresh).status.success());
    assert!(!fresh.exists());
}

/// `ctr images pull --all-platforms` of `reference` with `extra` flags; the digest it got.
fn ctr_pull(containerd: &Containerd, extra: &[&str], reference: &str) -> Result<String, String> {
    let mut args = vec!["images", "pull", "--all-platforms"];
    args.extend_from_slice(extra);
    args.push(reference);
    let output = containerd.ctr(&args);
    if !output.status.success() {
        return Err(format!("{}{}", text(&output.stdout), text(&output.stderr)));
    }
    let listing = containerd.ctr(&["images", "ls"]);
    let line = text(&listing.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .unwrap_or_else(|| panic!("{reference} is not in: {}", text(&listing.stdout)))
        .to_string();
    assert!(line.contains("linux/amd64,linux/arm64"), "{line}");
    Ok(line.split_whitespace().nth(2).unwrap().to_string())
}

#[test]
fn containerd_pulls_by_source_reference_through_the_generated_hosts_toml() {
    need!(Docker, Registry, Skopeo, Containerd);
    let (src, _) = source_and_destination(&["fixture/app", "fixture/tools"]);
    let tls = Registry::start();
    let (app_digest, _) = raw_digest(&format!("{}/fixture/app:v1", src.addr));
    let (tools_digest, _) = raw_digest(&format!("{}/fixture/tools:v1", src.addr));
    let work = tempfile::tempdir().unwrap();
    let list = list_file(
        work.path(),
        &format!(
            "[[image]]\nsource = \"{s}/fixture/app:v1\"\nhelm = [\"controller.image\"]\n\n\
             [[image]]\nsource = \"{s}/fixture/tools@{tools_digest}\"\nhelm = [\"server.image\"]\n",
            s = src.addr
        ),
    );
    let config = work.path().join("cluster");
    let result = summary(&mirror(&[
        "--to",
        &format!("{}/m", tls.addr),
        list.to_str().unwrap(),
        "--write-config",
        config.to_str().unwrap(),
        "--mirror-ca",
        tls.cert().to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(result["copied"], 2, "{result}");
    let certs = config.join("containerd/certs.d");
    let host_dir = certs.join(&src.addr);
    let hosts: toml::Value =
        toml::from_str(&fs::read_to_string(host_dir.join("hosts.toml")).unwrap()).unwrap();
    let mirror_host = &hosts["host"][format!("https://{}/v2/m", tls.addr).as_str()];
    assert_eq!(mirror_host["ca"].as_str(), Some("mirror-ca.pem"), "{hosts}");
    assert_eq!(mirror_host.get("skip_verify"), None, "{hosts}");
    assert_eq!(
        fs::read(host_dir.join("mirror-ca.pem")).unwrap(),
        fs::read(tls.cert()).unwrap()
    );

    // The source is gone: whatever containerd gets, it gets from the mirror.
    let source_url = src.url("/v2/");
    drop(src);
    assert_eq!(http_status(&source_url), None);
    let containerd = Containerd::start();
    let hosts_dir = ["--hosts-dir", certs.to_str().unwrap()];
    let source_host = source_url
        .trim_start_matches("http://")
        .trim_end_matches("/v2/");
    for (reference, digest) in [
        (format!("{source_host}/fixture/app:v1"), &app_digest),
        (
            format!("{source_host}/fixture/tools@{tools_digest}"),
            &tools_digest,
        ),
    ] {
        let pulled = ctr_pull(&containerd, &hosts_dir, &reference)
            .unwrap_or_else(|e| panic!("{reference}: {e}"));
        assert_eq!(&pulled, digest, "{reference}");
    }

    // Without the CA line, the same hosts.toml fails TLS: the CA is what made it work.
    let no_ca = work.path().join("no-ca");
    fs::create_dir_all(no_ca.join(source_host)).unwrap();
    let stripped: String = fs::read_to_string(host_dir.join("hosts.toml"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("ca ="))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(no_ca.join(source_host).join("hosts.toml"), stripped).unwrap();
    let err = ctr_pull(
        &containerd,
        &["--hosts-dir", no_ca.to_str().unwrap()],
        &format!("{source_host}/fixture/app:v1"),
    )
    .unwrap_err();
    assert!(err.contains("x509") || err.contains("certificate"), "{err}");

    // The Helm values as the chart renders them (`repository:tag`) pull the mirrored digests.
    let values: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &fs::read_to_string(config.join("helm/kubeopencode-values.yaml")).unwrap(),
    )
    .unwrap();
    for (key, digest) in [("controller", &app_digest), ("server", &tools_digest)] {
        let image = &values[key]["image"];
        let rendered = format!(
            "{}:{}",
            image["repository"].as_str().unwrap(),
            image["tag"].as_str().unwrap()
        );
        assert!(rendered.ends_with(&format!("@{digest}")), "{rendered}");
        let pulled = ctr_pull(
            &containerd,
            &["--tlscacert", tls.cert().to_str().unwrap()],
            &rendered,
        )
        .unwrap_or_else(|e| panic!("{rendered}: {e}"));
        assert_eq!(&pulled, digest, "{rendered}");
    }
}

#[test]
fn a_plain_http_mirror_with_keep_host_is_written_as_such() {
    need!(Docker, Registry, Skopeo, Containerd);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    let work = tempfile::tempdir().unwrap();
    let list = list_file(
        work.path(),
        &format!(
            "[[image]]\nsource = \"{}/fixture/app:v1\"\noverride = \"AGENTKUBE_IMAGE_MANAGER\"\n",
            src.addr
        ),
    );
    let config = work.path().join("cluster");
    let prefix = format!("{}/m", dst.addr);
    let result = summary(&mirror(&[
        "--to",
        &prefix,
        list.to_str().unwrap(),
        "--keep-host",
        "--never-contact-source",
        "--write-config",
        config.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(result["copied"], 1, "{result}");
    let under = format!("{prefix}/{}", src.addr.replace(':', "_"));
    let env = fs::read_to_string(config.join("agentkube.env")).unwrap();
    assert!(
        env.contains(&format!("\nAGENTKUBE_IMAGE_REGISTRY={under}\n")),
        "{env}"
    );
    assert!(
        env.contains(&format!(
            "\nAGENTKUBE_IMAGE_MANAGER={under}/fixture/app@sha256:"
        )),
        "{env}"
    );
    let hosts_file = config
        .join("containerd/certs.d")
        .join(&src.addr)
        .join("hosts.toml");
    let hosts: toml::Value = toml::from_str(&fs::read_to_string(&hosts_file).unwrap()).unwrap();
    let (url, mirror_host) = hosts["host"].as_table().unwrap().iter().next().unwrap();
    assert_eq!(
        url,
        &format!("http://{}/v2/m/{}", dst.addr, src.addr.replace(':', "_"))
    );
    assert_eq!(
        (mirror_host.get("ca"), mirror_host.get("skip_verify")),
        (None, None)
    );
    for file in ["image-digest-mirror-set.yaml", "image-tag-mirror-set.yaml"] {
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            &fs::read_to_string(config.join("openshift").join(file)).unwrap(),
        )
        .unwrap();
        let list = yaml["spec"].as_mapping().unwrap().values().next().unwrap();
        assert_eq!(
            list[0]["mirrorSourcePolicy"], "NeverContactSource",
            "{file}"
        );
        assert_eq!(
            list[0]["mirrors"][0].as_str(),
            Some(format!("{under}/fixture/app").as_str())
        );
    }

    // containerd follows the http:// host to the mirror, with the source gone.
    let (app_digest, _) = raw_digest(&format!("{}/fixture/app:v1", src.addr));
    let source = format!("{}/fixture/app:v1", src.addr);
    drop(src);
    let containerd = Containerd::start();
    let certs = config.join("containerd/certs.d");
    let pulled = ctr_pull(
        &containerd,
        &["--hosts-dir", certs.to_str().unwrap()],
        &source,
    )
    .unwrap_or_else(|e| panic!("{source}: {e}"));
    assert_eq!(pulled, app_digest);
}

#[test]
fn a_helm_chart_is_copied_byte_for_byte_and_the_config_installs_it_from_the_mirror() {
    use crate::support::upload::{push_blob, push_manifest};
    need!(Registry, Skopeo);
    let (src, dst) = (Registry::plain(), Registry::plain());
    let work = tempfile::tempdir().unwrap();
    // A chart as `helm package` and `helm push` lay it out: a gzipped tar of demo/, and
    // Chart.yaml's fields as the config, under Helm's media types.
    let chart_dir = work.path().join("demo");
    fs::create_dir_all(&chart_dir).unwrap();
    fs::write(
        chart_dir.join("Chart.yaml"),
        "apiVersion: v2\nname: demo\nversion: 0.1.0\nappVersion: v0.1.0\n",
    )
    .unwrap();
    let tgz = work.path().join("demo-0.1.0.tgz");
    let dir = work.path().to_str().unwrap();
    run("tar", &["-C", dir, "-czf", tgz.to_str().unwrap(), "demo"]);
    let chart = fs::read(&tgz).unwrap();
    let config = br#"{"apiVersion":"v2","name":"demo","version":"0.1.0","appVersion":"v0.1.0"}"#;
    let repository = "charts/demo";
    let config_digest = push_blob(&src, repository, config);
    let chart_digest = push_blob(&src, repository, &chart);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.cncf.helm.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            "digest": chart_digest,
            "size": chart.len(),
        }],
        "annotations": {"org.opencontainers.image.title": "demo"},
    });
    push_manifest(&src, repository, Some("0.1.0"), &manifest.to_string());

    let list = list_file(
        work.path(),
        &format!(
            "[[image]]\nsource = \"{}/{repository}:0.1.0\"\n\
             helm_chart = {{ release = \"demo\", namespace = \"demo-system\" }}\n",
            src.addr
        ),
    );
    let config_dir = work.path().join("cluster");
    let prefix = format!("{}/m", dst.addr);
    let args = ["--to", &prefix, list.to_str().unwrap(), "--json"];
    let result = summary(&mirror(
        &[&args[..], &["--write-config", config_dir.to_str().unwrap()]].concat(),
    ));
    assert_eq!(result["copied"], 1, "{result}");

    // The same bytes: the manifest's digest, and each blob fetched back.
    let (from, to) = (
        format!("{}/{repository}:0.1.0", src.addr),
        format!("{prefix}/{repository}:0.1.0"),
    );
    let (digest, _) = raw_digest(&from);
    let (copied, copy) = raw_digest(&to);
    assert_eq!(digest, copied);
    assert_eq!(
        copy["config"]["mediaType"],
        "application/vnd.cncf.helm.config.v1+json"
    );
    for (blob, bytes) in [(&config_digest, &config[..]), (&chart_digest, &chart[..])] {
        let url = dst.url(&format!("/v2/m/{repository}/blobs/{blob}"));
        let out = Command::new("curl").args(["-sf", &url]).output().unwrap();
        assert!(out.status.success(), "{url}");
        assert_eq!(out.stdout, bytes, "{blob}");
    }

    // How to install it, from the mirror, with the mirrored images' values.
    let script = fs::read_to_string(config_dir.join("helm/install.sh")).unwrap();
    let expected = format!(
        "helm install 'demo' 'oci://{prefix}/{repository}' --version '0.1.0' \
         --namespace 'demo-system' --create-namespace"
    );
    assert!(script.contains(&expected), "{script}");
    assert!(script.contains("--plain-http"), "{script}");
    let syntax = Command::new("sh")
        .arg("-n")
        .arg(config_dir.join("helm/install.sh"))
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{}", text(&syntax.stderr));
}
