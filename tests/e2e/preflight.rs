//! What `images build` says before buildx prints anything: one line per problem, each
//! naming what to do, and no build started.

use crate::support::*;

/// `images build ARGS` into a throwaway output folder, with `env`.
fn images_build(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let out = tempfile::tempdir().unwrap();
    let mut all = vec!["images", "build", "--out", out.path().to_str().unwrap()];
    all.extend(args);
    xtask_in(&project_root(), &all, env)
}

/// `images build ARGS`, which must fail in preflight: its lines, each checked to be ours.
fn build(args: &[&str], env: &[(&str, &str)]) -> (std::process::Output, Vec<String>) {
    let output = images_build(args, env);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Nothing from buildx: every line is one of ours.
    let lines: Vec<String> = stderr.lines().map(String::from).collect();
    for line in &lines {
        assert!(
            line.starts_with("error: "),
            "not a preflight line: {stderr}"
        );
    }
    (output, lines)
}

/// The digest attach's base is pinned to in the real catalog.
fn base_digest() -> String {
    let spec = std::fs::read_to_string(project_root().join("agents/attach/image.toml")).unwrap();
    let spec: toml::Table = spec.parse().unwrap();
    let base = spec["bases"]["builder"].as_str().unwrap();
    base.split_once('@')
        .expect("attach's base is pinned")
        .1
        .to_string()
}

fn closed_port() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn no_engine_is_one_line_naming_provision() {
    let (_, lines) = build(&["attach"], &[("DOCKER_HOST", "unix:///nonexistent")]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("no Docker engine answers at unix:///nonexistent"));
    assert!(lines[0].contains(".ci/provision"), "{lines:?}");
}

#[test]
fn unreachable_base_names_base_registry_and_the_mirror_commands() {
    need!(Docker);
    let prefix = format!("{}/mirror", closed_port());
    let (_, lines) = build(&["attach", "--base-registry", &prefix], &[]);
    // attach and its parent opencode use one base between them.
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(
        line.starts_with(&format!(
            "error: base image {prefix}/library/debian:bookworm-slim@sha256:"
        )) && line.contains(" is unreachable"),
        "{line}"
    );
    for fix in ["--base-registry", "mirror base --to", "mirror load"] {
        assert!(line.contains(fix), "{fix}: {line}");
    }
}

#[test]
fn a_base_missing_from_the_mirror_is_named() {
    need!(Docker, Registry);
    let registry = Registry::plain();
    let prefix = format!("{}/mirror", registry.addr);
    let (_, lines) = build(&["attach", "--base-registry", &prefix], &[]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(&format!(
            "base image {prefix}/library/debian:bookworm-slim@{} is not in {}",
            base_digest(),
            registry.addr
        )),
        "{lines:?}"
    );
    assert!(lines[0].contains("--base-registry"), "{lines:?}");
}

#[test]
fn a_platform_the_builder_lacks_names_binfmt() {
    need!(Docker);
    if run("docker", &["buildx", "inspect"]).contains("linux/s390x") {
        eprintln!("SKIPPED: this builder can build linux/s390x");
        return;
    }
    let prefix = format!("{}/mirror", closed_port());
    let (_, lines) = build(
        &[
            "attach",
            "--platform",
            "linux/s390x",
            "--base-registry",
            &prefix,
        ],
        &[],
    );
    let platform = lines
        .iter()
        .find(|l| l.contains("cannot build linux/s390x"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(platform.contains("binfmt"), "{platform}");
}

#[test]
fn an_unreachable_npm_registry_names_npm_registry() {
    need!(Docker);
    let npm = format!("http://{}", closed_port());
    let prefix = format!("{}/mirror", closed_port());
    let (_, lines) = build(
        &[
            "opencode",
            "--npm-registry",
            &npm,
            "--base-registry",
            &prefix,
        ],
        &[],
    );
    // Independent problems are all reported, each on its own line.
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("base image"), "{lines:?}");
    assert!(
        lines[1].starts_with(&format!("error: npm registry {npm} does not answer")),
        "{lines:?}"
    );
    assert!(lines[1].contains("pass --npm-registry URL"), "{lines:?}");
}

#[test]
fn dry_run_shows_cache_and_provenance_without_an_engine() {
    let output = images_build(
        &[
            "attach",
            "--dry-run",
            "--json",
            "--cache-from",
            "type=registry,ref={image}:buildcache",
            "--cache-to",
            "type=registry,ref={image}:buildcache,mode=max",
            "--provenance",
            "max",
        ],
        &[("DOCKER_HOST", "unix:///nonexistent")],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let repository = "ghcr.io/kubeopencode/kubeopencode-agent-attach";
    let target = &plan["bake"]["target"]["attach"];
    assert_eq!(
        target["cache-from"],
        serde_json::json!([format!("type=registry,ref={repository}:buildcache")])
    );
    assert_eq!(
        target["cache-to"],
        serde_json::json!([format!(
            "type=registry,ref={repository}:buildcache,mode=max"
        )])
    );
    assert_eq!(
        target["attest"],
        serde_json::json!(["type=provenance,mode=max"])
    );

    let bad = xtask(&["images", "build", "--dry-run", "--cache-to", "ref=x"]);
    let stderr = text(&bad.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: --cache-to 'ref=x' must look like type=registry"));
}

#[test]
fn a_base_without_a_target_platform_is_refused_before_buildx() {
    need!(Docker, Registry, Debootstrap);
    let registry = Registry::start();
    let prefix = format!("{}/mirror", registry.addr);
    // `docker import` makes a single-platform image: this machine's alone.
    push_base_image(&format!("{prefix}/library/debian:bookworm-slim"));
    let project = project_copy();
    pin_bases(project.path(), &["devbox"], &prefix);
    let out = tempfile::tempdir().unwrap();
    let npm = npm_registry();
    let native = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let other = if native == "amd64" { "arm64" } else { "amd64" };
    let platforms = format!("linux/{native},linux/{other}");
    let output = xtask_in(
        project.path(),
        &[
            "images",
            "build",
            "devbox",
            "--out",
            out.path().to_str().unwrap(),
            "--platform",
            &platforms,
            "--base-registry",
            &prefix,
            "--npm-registry",
            &npm,
        ],
        &[],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line, or buildx ran: {stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "error: base image {prefix}/library/debian:bookworm-slim@sha256:"
        )) && lines[0].contains(&format!("has no linux/{other} (it lists linux/{native})"))
            && lines[0].contains("drop it from --platform"),
        "{stderr}"
    );
}

#[test]
fn preflight_honours_insecure() {
    need!(Docker, OtherAddress);
    // TLS off loopback with a self-signed certificate: verified unless named --insecure,
    // so preflight cannot read the mirror without it.
    let registry = Registry::tls_on(&other_host());
    let prefix = format!("{}/mirror", registry.addr);
    let (_, lines) = build(&["attach", "--base-registry", &prefix], &[]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    // The client retries a failed handshake until preflight's limit.
    assert!(
        lines[0].starts_with(&format!("error: base image {prefix}/"))
            && !lines[0].contains(" is not in "),
        "{lines:?}"
    );
    // Named, the certificate is let through: preflight reaches the registry and finds
    // the base missing from it, one line as for any mirror without it.
    let (_, lines) = build(
        &[
            "attach",
            "--base-registry",
            &prefix,
            "--insecure",
            &registry.addr,
        ],
        &[],
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(&format!(" is not in {}", registry.addr)),
        "{lines:?}"
    );
}

#[test]
fn the_timeout_bounds_the_whole_build_not_each_phase() {
    use crate::support::scripted::{Reply, Scripted};
    use std::time::{Duration, Instant};
    need!(Docker);
    // Every answer takes 1.5 s. Build avoidance (the ping, then a HEAD per tag) and
    // preflight (a ping and a HEAD per base) each fit in the 4 s alone; not together.
    let slow = Scripted::start(
        "127.0.0.1",
        Box::new(|request| {
            std::thread::sleep(Duration::from_millis(1500));
            match request.path.as_str() {
                "/v2/" => Reply::new(200),
                _ => Reply::new(404),
            }
        }),
    );
    let prefix = format!("{}/mirror", slow.addr);
    let started = Instant::now();
    let output = images_build(
        &[
            "attach",
            "--push",
            "--registry",
            &slow.addr,
            "--base-registry",
            &prefix,
            "--timeout",
            "4s",
        ],
        &[],
    );
    let elapsed = started.elapsed();
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("stopped at the --timeout of 4s"),
        "{elapsed:?}: {stderr}"
    );
    assert!(elapsed < Duration::from_secs(7), "{elapsed:?}: {stderr}");
    // Both phases ran: avoidance asked for the tags, preflight for a base.
    let paths: Vec<String> = slow.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths.iter().any(|p| p.contains("/kubeopencode/")),
        "{paths:?}"
    );
    assert!(paths.iter().any(|p| p.contains("/mirror/")), "{paths:?}");
}
