//! The command line as a user meets it, without a Docker daemon: plans, listings, and
//! one clear line for every kind of bad input.

use crate::support::*;
use std::fs;
use std::path::Path;

fn catalog_names() -> Vec<String> {
    let out = xtask(&["images", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

/// Asserts a failure with exactly one line on stderr that starts with `prefix`.
fn assert_one_line_error(output: &std::process::Output, prefix: &str) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with(&format!("error: {prefix}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn list_shows_every_image_as_table_and_json() {
    let names = catalog_names();
    assert!(
        names.contains(&"opencode".to_string()) && names.contains(&"attach".to_string()),
        "{names:?}"
    );
    // Parents come first.
    let opencode = names.iter().position(|n| n == "opencode").unwrap();
    let attach = names.iter().position(|n| n == "attach").unwrap();
    assert!(opencode < attach);
    let table = xtask(&["images", "list"]);
    let table = text(&table.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    for name in &names {
        assert!(
            table.lines().any(|l| l.starts_with(name.as_str())),
            "{name} missing: {table}"
        );
    }
}

#[test]
fn dry_run_prints_the_plan_for_every_image_without_touching_docker() {
    let dir = tempfile::tempdir().unwrap();
    // A `docker` that records being called: the dry run must never call it.
    let bin = dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let called = dir.path().join("docker-was-called");
    let fake = bin.join("docker");
    fs::write(
        &fake,
        format!("#!/bin/sh\ntouch '{}'\nexit 1\n", called.display()),
    )
    .unwrap();
    run("chmod", &["+x", fake.to_str().unwrap()]);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    let secret = "xtask-dry-run-secret-marker";
    let ca = dir.path().join("ca.pem");
    fs::write(
        &ca,
        format!("-----BEGIN CERTIFICATE-----\n{secret}\n-----END CERTIFICATE-----\n"),
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let output = xtask_in(
        &project_root(),
        &[
            "images",
            "build",
            "--dry-run",
            "--push",
            "--version",
            "v1.2.3",
            "--release-tags",
            "--ca-bundle",
            ca.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--npm-registry",
            "https://npm.example.invalid/",
        ],
        &[("PATH", &path), ("DOCKER_HOST", "unix:///nonexistent.sock")],
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!called.exists(), "--dry-run ran docker");
    assert!(stdout.contains("docker buildx bake --file"), "{stdout}");
    for name in catalog_names() {
        assert!(
            stdout.contains(&format!(
                "ghcr.io/kubeopencode/kubeopencode-agent-{name}:1.2"
            )),
            "{name}: {stdout}"
        );
        let dockerfile = fs::read_to_string(out_dir.join(&name).join("Dockerfile")).unwrap();
        assert!(!dockerfile.contains(secret));
    }
    assert!(
        stdout.contains(&format!("id=ca-bundle,src={}", ca.display())),
        "{stdout}"
    );
    assert!(!stdout.contains(secret), "CA contents leaked into the plan");
    let bake = fs::read_to_string(out_dir.join("bake.json")).unwrap();
    assert!(!bake.contains(secret));

    // The same plan as one JSON document for pipelines.
    let json = xtask(&[
        "images",
        "build",
        "--dry-run",
        "--json",
        "attach",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let plan: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        plan["bake"]["group"]["default"]["targets"],
        serde_json::json!(["attach"])
    );
    assert_eq!(
        plan["bake"]["target"]["opencode"]["output"],
        serde_json::json!(["type=cacheonly"])
    );
    assert_eq!(
        plan["bake"]["target"]["attach"]["contexts"]
            ["ghcr.io/kubeopencode/kubeopencode-agent-opencode"],
        "target:opencode"
    );
}

#[test]
fn version_in_the_environment_is_not_the_tag() {
    // VERSION is a common CI variable: only --version (or make's VERSION=) sets the tag.
    let dir = tempfile::tempdir().unwrap();
    let output = xtask_in(
        &project_root(),
        &[
            "images",
            "build",
            "attach",
            "--dry-run",
            "--json",
            "--out",
            dir.path().to_str().unwrap(),
        ],
        &[("VERSION", "v9.9.9")],
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!stdout.contains("v9.9.9"), "{stdout}");
    let document: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let attach = document["plan"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "attach")
        .unwrap();
    assert!(
        attach["tags"][0].as_str().unwrap().ends_with(":latest"),
        "{attach}"
    );
}

#[test]
fn malformed_image_toml_is_one_line() {
    let dir = project_copy();
    let manifest = dir.path().join("agents/attach/image.toml");
    let original = fs::read_to_string(&manifest).unwrap();
    fs::write(&manifest, original.replace("parent = ", "parrent = ")).unwrap();
    let output = xtask_in(dir.path(), &["images", "list"], &[]);
    let err = assert_one_line_error(&output, "agents/attach/image.toml:");
    assert!(err.contains("unknown field `parrent`"), "{err}");
    assert_exactly_one_line(&err);

    fs::write(&manifest, "description = [\n").unwrap();
    let output = xtask_in(dir.path(), &["images", "build", "--dry-run"], &[]);
    let err = assert_one_line_error(&output, "agents/attach/image.toml:");
    assert_exactly_one_line(&err);
}

/// The whole of `stderr` is one line and its newline: toml's multi-line parse errors
/// (a caret under the source line) are flattened, with no carriage return or blank line.
fn assert_exactly_one_line(stderr: &str) {
    assert!(
        stderr.ends_with('\n') && stderr.matches('\n').count() == 1 && !stderr.contains('\r'),
        "not exactly one line: {stderr:?}"
    );
}

#[test]
fn unknown_image_is_one_line() {
    let output = xtask(&["images", "build", "--dry-run", "no-such-image"]);
    let err = assert_one_line_error(&output, "unknown image 'no-such-image'");
    assert!(
        err.contains("opencode"),
        "the error lists what exists: {err}"
    );
}

#[test]
fn template_error_is_one_line_and_keeps_the_last_good_render() {
    let dir = project_copy();
    let out = dir.path().join("out");
    let render = |args: &[&str]| {
        let mut all = vec!["images", "render", "--out", out.to_str().unwrap()];
        all.extend_from_slice(args);
        xtask_in(dir.path(), &all, &[])
    };
    assert!(render(&[]).status.success());
    let good = fs::read_to_string(out.join("opencode/Dockerfile")).unwrap();
    assert!(
        good.starts_with("# Generated from dockerfiles/opencode.Dockerfile.j2"),
        "{good}"
    );
    assert!(!good.contains("# syntax="));

    let template = dir.path().join("dockerfiles/opencode.Dockerfile.j2");
    let text_before = fs::read_to_string(&template).unwrap();
    fs::write(
        &template,
        text_before.replace("{{ version }}", "{{ vars.no_such_var }}"),
    )
    .unwrap();
    let err = assert_one_line_error(&render(&[]), "dockerfiles/opencode.Dockerfile.j2:");
    assert!(err.contains("undefined value"), "{err}");
    assert_eq!(
        fs::read_to_string(out.join("opencode/Dockerfile")).unwrap(),
        good,
        "a failed render touched the output"
    );

    fs::write(&template, text_before).unwrap();
    let manifest = dir.path().join("agents/opencode/image.toml");
    let spec = fs::read_to_string(&manifest).unwrap();
    fs::write(
        &manifest,
        spec.replace("opencode_source = \"npm\"", "opencode_source = \"ftp\""),
    )
    .unwrap();
    let err = assert_one_line_error(
        &render(&["opencode"]),
        "dockerfiles/opencode.Dockerfile.j2:",
    );
    assert!(err.contains("must be \"npm\" or \"github\""), "{err}");
}

#[test]
fn bad_references_and_flags_are_one_line() {
    for (args, prefix) in [
        (vec!["--registry", "Bad Registry"], "image reference"),
        (
            vec!["--base-registry", "mirror-without-host"],
            "registry prefix 'mirror-without-host'",
        ),
        (vec!["--version", "v1 beta"], "image reference"),
        (
            vec!["--platform", "windows/amd64"],
            "platform 'windows/amd64'",
        ),
        (
            vec!["--ca-bundle", "/no/such/ca.pem"],
            "--ca-bundle /no/such/ca.pem",
        ),
        (
            vec!["--artifact-mirror", "mirror.local"],
            "--artifact-mirror 'mirror.local'",
        ),
        (vec!["--secret", "token"], "--secret 'token'"),
        (
            vec!["--release-tags", "--version", "nightly"],
            "--release-tags needs a semantic version",
        ),
    ] {
        let mut all = vec!["images", "build", "--dry-run"];
        all.extend(args);
        assert_one_line_error(&xtask(&all), prefix);
    }
}

#[test]
fn bad_request_limits_are_one_line_before_any_request() {
    let down = format!("127.0.0.1:{}", free_port());
    let image = format!("{down}/org/app:v1");
    let to = format!("{down}/m");
    for (flag, value, want) in [
        (
            "--max-concurrent",
            "docker.io=0",
            "--max-concurrent 'docker.io=0': N must be a whole number from 1",
        ),
        (
            "--max-concurrent",
            "docker.io=abc",
            "--max-concurrent 'docker.io=abc': 'abc' is not a whole number",
        ),
        (
            "--max-requests-per-second",
            "docker.io",
            "--max-requests-per-second 'docker.io': write HOST=N",
        ),
        (
            "--max-requests-per-second",
            "docker.io=-2",
            "--max-requests-per-second 'docker.io=-2': N must be a number of requests per second of at least 0.01",
        ),
    ] {
        let output = xtask(&[
            "images", "mirror", "--image", &image, "--to", &to, flag, value,
        ]);
        assert_one_line_error(&output, want);
    }
    // Where a registry command takes --insecure, it takes the limits too.
    let output = xtask(&["images", "retag", &image, "v2", "--max-concurrent", "x=1=2"]);
    assert_one_line_error(
        &output,
        "--max-concurrent 'x=1=2': '1=2' is not a whole number",
    );
}

/// With no registry listening, each command still names the local problem first.
#[test]
fn local_inputs_are_checked_before_any_registry_is_asked() {
    let down = format!("127.0.0.1:{}", free_port());
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("no-such-bundle.tar");
    let unwritable = work.path().join("no-such-dir/bundle.tar");
    let image = format!("{down}/org/app:v1");
    let to = format!("{down}/m");
    for (args, prefix) in [
        (
            vec![
                "images",
                "mirror",
                "load",
                missing.to_str().unwrap(),
                "--to",
                &to,
            ],
            format!("{}: cannot open it", missing.display()),
        ),
        (
            vec!["images", "retag", &image, ":-bad"],
            format!("image reference '{down}/org/app:-bad': tag '-bad' is invalid"),
        ),
        (
            vec![
                "images",
                "mirror",
                "save",
                "--image",
                &image,
                "--out",
                unwritable.to_str().unwrap(),
            ],
            format!("cannot write the archive to {}", unwritable.display()),
        ),
    ] {
        let err = assert_one_line_error(&xtask(&args), &prefix);
        assert!(!err.contains("unreachable"), "{err}");
    }
    // With good local inputs the same command does reach for the registry.
    let out = xtask(&["images", "retag", &image, "v2"]);
    assert_one_line_error(&out, &format!("registry {down} is unreachable"));
}

#[test]
fn hostile_registry_hosts_and_list_values_are_one_line_and_write_nothing() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("cluster");
    let list = |name: &str, body: &str| {
        let path = work.path().join(name);
        fs::write(&path, format!("description = \"x\"\n[[image]]\n{body}\n")).unwrap();
        path.display().to_string()
    };
    let dotdot = list("dotdot.toml", "source = \"..:5000/x:1\"");
    let newline_key = list(
        "key.toml",
        "source = \"ghcr.io/a/b:1\"\nhelm = [\"controller.image\\nevil: true\"]",
    );
    let not_pem = work.path().join("ca.pem");
    fs::write(&not_pem, "hello").unwrap();
    let image = ["--image", "ghcr.io/a/b:1"];
    for (args, prefix) in [
        (
            vec!["--to", "../../etc/m", image[0], image[1]],
            "registry prefix '../../etc/m': registry host '..' is invalid",
        ),
        (
            vec!["--to", "reg.example:99999/m", image[0], image[1]],
            "registry prefix 'reg.example:99999/m': registry host",
        ),
        (
            vec!["--to", "127.0.0.1:1/m", "--image", "evil..example/x:1"],
            "--image evil..example/x:1: image reference 'evil..example/x:1': registry host 'evil..example' is invalid",
        ),
        (
            vec!["--to", "127.0.0.1:1/m", "--image", "a\"b.example/x:1"],
            "--image a\"b.example/x:1: image reference",
        ),
        (
            vec!["--to", "127.0.0.1:1/m", "--image", "a.example/x:1\nevil: true"],
            "--image a.example/x:1",
        ),
        (
            vec!["--to", "127.0.0.1:1/m", &dotdot],
            &format!("{dotdot}: image reference '..:5000/x:1': registry host '..:5000' is invalid"),
        ),
        (
            vec!["--to", "127.0.0.1:1/m", &newline_key],
            &format!("{newline_key}: helm 'controller.image\\nevil: true' is not a dotted path"),
        ),
        (
            vec!["--to", "127.0.0.1:1/m", image[0], image[1], "--mirror-ca", not_pem.to_str().unwrap()],
            "--mirror-ca",
        ),
    ] {
        let mut all = vec!["images", "mirror", "--write-config", config.to_str().unwrap()];
        all.extend(args);
        let err = assert_one_line_error(&xtask(&all), prefix);
        assert!(!config.exists(), "{err}");
    }
}

#[test]
fn a_custom_executor_is_one_folder() {
    let dir = project_copy();
    let custom = dir.path().join("agents/my-tools");
    fs::create_dir_all(&custom).unwrap();
    fs::write(
        custom.join("Dockerfile"),
        "FROM ghcr.io/kubeopencode/kubeopencode-agent-attach\nCOPY hello.txt /hello.txt\n",
    )
    .unwrap();
    fs::write(custom.join("hello.txt"), "hi\n").unwrap();
    fs::write(
        custom.join("image.toml"),
        "description = \"My tools\"\ndockerfile = \"Dockerfile\"\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let output = xtask_in(
        dir.path(),
        &[
            "images",
            "build",
            "--dry-run",
            "my-tools",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("kubeopencode-agent-my-tools:latest"));
    assert!(Path::new(&out.join("my-tools/hello.txt")).is_file());
    assert!(!out.join("my-tools/image.toml").exists());
}

#[test]
fn size_and_verify_refuse_bad_input_in_one_line() {
    for (args, prefix) in [
        (vec!["images", "size", "nope"], "unknown image 'nope'"),
        (vec!["images", "verify", "nope"], "unknown image 'nope'"),
        (
            vec!["images", "size", "--ref", "Bad Ref"],
            "--ref: image reference",
        ),
        (vec!["images", "verify", "--ref", "x@sha256:zz"], "--ref: "),
        (
            vec!["images", "size", "attach", "--ref", "a.example/b:c"],
            "name catalog images or pass --ref, not both",
        ),
        (
            vec!["images", "build", "attach", "--check"],
            "--check measures and runs what was built",
        ),
    ] {
        assert_one_line_error(&xtask(&args), prefix);
    }
    // A registry nobody listens on: one line naming it.
    let port = free_port();
    let reference = format!("127.0.0.1:{port}/x/y:z");
    let out = xtask(&["images", "size", "--ref", &reference]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Progress lines come first; the error is the one last line.
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with(&format!("error: registry 127.0.0.1:{port} is unreachable")),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "a report was printed for nothing");
}

#[test]
fn verify_and_size_tables_in_image_toml_are_checked() {
    for (addition, why) in [
        ("[verify]\ncolour = 1\n", "unknown field `colour`"),
        (
            "[verify.skip]\nnot-a-check = \"x\"\n",
            "no such convention or [[verify.commands]] check",
        ),
        ("[verify.skip]\nuser = \" \"\n", "say why"),
        (
            "[[verify.commands]]\nname = \"x\"\ncommand = \"true\"\nexpected_output = [\"(\"]\n",
            "bad pattern",
        ),
        ("[[verify.files]]\npath = \"tmp\"\n", "must be absolute"),
        (
            "[[verify.files]]\npath = \"/tmp\"\npermissions = \"777\"\n",
            "not of the form drwxr-xr-x",
        ),
        (
            "[size.platforms.\"linux/s390x\"]\nmax_compressed_mib = 3\n",
            "not one of this image's platforms",
        ),
        ("role = \"boss\"\n", "unknown variant `boss`"),
    ] {
        let dir = project_copy();
        let manifest = dir.path().join("agents/attach/image.toml");
        let spec = fs::read_to_string(&manifest).unwrap();
        // Top-level keys must come before the first table.
        let spec = if addition.starts_with('[') {
            format!("{spec}\n{addition}")
        } else {
            format!("{addition}{}", spec.replace("role = \"executor\"\n", ""))
        };
        fs::write(&manifest, spec).unwrap();
        let err = assert_one_line_error(
            &xtask_in(dir.path(), &["images", "list"], &[]),
            "agents/attach/image.toml",
        );
        assert!(err.contains(why), "expected {why:?} in {err}");
    }
}

#[test]
fn images_new_scaffolds_a_buildable_executor_and_refuses_bad_names() {
    let dir = project_copy();
    for from in ["devbox", "attach", "scratch"] {
        let name = format!("my-{from}");
        let out = xtask_in(dir.path(), &["images", "new", &name, "--from", from], &[]);
        assert!(out.status.success(), "{from}: {}", text(&out.stderr));
        let plan = xtask_in(
            dir.path(),
            &["images", "build", &name, "--dry-run", "--json"],
            &[],
        );
        assert!(plan.status.success(), "{from}: {}", text(&plan.stderr));
        let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
        let target = &plan["bake"]["target"][name.as_str()];
        if from == "scratch" {
            // A plain Dockerfile gets its bases as build args.
            assert_eq!(
                target["args"]["BASE_BUILDER"],
                "docker.io/library/debian:bookworm-slim"
            );
        } else {
            // `FROM parent` reaches the catalog parent built in the same run.
            assert_eq!(
                target["contexts"]["parent"],
                format!("target:{from}"),
                "{plan:#}"
            );
        }
        let listed = xtask_in(dir.path(), &["images", "list", "--json"], &[]);
        assert!(text(&listed.stdout).contains(&format!("\"{name}\"")));
    }

    // An existing name is refused and left as it was.
    let manifest = dir.path().join("agents/my-devbox/image.toml");
    let before = fs::read_to_string(&manifest).unwrap();
    assert_one_line_error(
        &xtask_in(dir.path(), &["images", "new", "my-devbox"], &[]),
        "agents/my-devbox/ already exists",
    );
    assert_eq!(fs::read_to_string(&manifest).unwrap(), before);
    for bad in ["My-Tools", "9tools", "tools-", "a_b", "../escape"] {
        let err = assert_one_line_error(
            &xtask_in(dir.path(), &["images", "new", bad], &[]),
            &format!("'{bad}' is not a valid image name"),
        );
        assert!(err.contains("lower-case letters, digits and '-'"), "{err}");
    }
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("agents"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn makefile_commands_are_one_xtask_call_each() {
    let root = project_root();
    let make = |dir: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new("make")
            .arg("-n")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .expect("make is installed");
        assert!(out.status.success(), "make {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("cargo xtask"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let native = match std::env::consts::ARCH {
        "aarch64" => "linux/arm64",
        _ => "linux/amd64",
    };
    let agents = root.join("agents");
    let docs = ["IMG_REGISTRY=docker.io", "IMG_ORG=myorg", "VERSION=v1.0.0"];
    let naming = "--registry docker.io --org myorg --version v1.0.0";
    for (target, expected) in [
        (
            "build",
            format!("cargo xtask images build devbox {naming} --platform {native} --load"),
        ),
        (
            "push",
            format!("cargo xtask images build devbox {naming} --platform {native} --push"),
        ),
        (
            "buildx",
            format!("cargo xtask images build devbox {naming} --push"),
        ),
    ] {
        let mut args = vec!["AGENT=devbox", target];
        args.extend(docs);
        assert_eq!(
            make(&agents, &args),
            std::slice::from_ref(&expected),
            "make {target}"
        );
        // The same from the project root.
        let mut args = vec![format!("agent-{target}"), "AGENT=devbox".to_string()];
        args.extend(docs.iter().map(|d| d.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(make(&root, &args), [expected], "make agent-{target}");
    }
    assert_eq!(
        make(&agents, &["AGENT=devbox", "build"]),
        [format!("cargo xtask images build devbox --registry ghcr.io --org kubeopencode --version latest --platform {native} --load")]
    );
    let missing = std::process::Command::new("make")
        .args(["-s", "-C", agents.to_str().unwrap(), "build"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("AGENT is not set"),
        "{}",
        text(&missing.stderr)
    );
    let help = std::process::Command::new("make")
        .args(["-s", "-C", agents.to_str().unwrap(), "help"])
        .output()
        .unwrap();
    let help = text(&help.stdout);
    for target in ["build", "push", "buildx"] {
        assert!(help.contains(&format!("  {target}\t")), "{help}");
    }
}
