//! `images size` and `images verify` can fail: small images built for the purpose, in a
//! throwaway project, each broken in one way, then fixed. Real dockerd, real registry.

use crate::support::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "cat", "cp", "chmod", "mv", "mkdir", "rm", "ls", "find", "wc", "head",
];

/// A root file system of a static busybox and a few applets, with the executor layout:
/// `/workspace` and `/tools` writable by any UID, `/tmp` sticky.
fn rootfs(dir: &Path, workspace_mode: u32) {
    let bin = dir.join("rootfs/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    for applet in APPLETS {
        symlink("busybox", bin.join(applet)).unwrap();
    }
    for (path, mode) in [
        ("workspace", workspace_mode),
        ("tools", 0o777),
        ("tmp", 0o1777),
        ("etc", 0o755),
        ("var/cache/tool", 0o777),
    ] {
        let path = dir.join("rootfs").join(path);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::write(
        dir.join("rootfs/etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nagent:x:1000:0:agent:/tmp:/bin/sh\n",
    )
    .unwrap();
}

fn script(path: &Path, body: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

const EXECUTOR_DOCKERFILE: &str = "FROM scratch\nCOPY rootfs/ /\n\
    ENV PATH=/bin HOME=/tmp\nWORKDIR /workspace\nUSER 1000:0\nCMD [\"sh\", \"-c\", \"echo ready\"]\n";

fn image(project: &Path, name: &str, toml: &str, dockerfile: &str) -> std::path::PathBuf {
    let dir = project.join("agents").join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("image.toml"), toml).unwrap();
    fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    dir
}

/// The catalog: an init image that fills /tools with a stand-in opencode, a plain
/// executor with no checks configured, and three executors each broken in one way.
fn project(broken: bool) -> tempfile::TempDir {
    let project = tempfile::tempdir().unwrap();
    fs::create_dir_all(project.path().join("dockerfiles")).unwrap();

    let init = image(
        project.path(),
        "fake-init",
        "description = \"stand-in init\"\ndockerfile = \"Dockerfile\"\nrole = \"init\"\n",
        "FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin TOOLS_DIR=/tools\nUSER 1000:0\nENTRYPOINT [\"/bin/install\"]\n",
    );
    rootfs(&init, 0o777);
    script(&init.join("rootfs/opencode"), "echo 0.0.0-stand-in");
    script(
        &init.join("rootfs/bin/install"),
        "set -eu\ncp /opencode \"$TOOLS_DIR/.opencode.$$\"\nchmod 0755 \"$TOOLS_DIR/.opencode.$$\"\n\
         mv -f \"$TOOLS_DIR/.opencode.$$\" \"$TOOLS_DIR/opencode\"\necho installed",
    );

    // No [verify] at all: the executor role alone brings the conventions.
    let plain = image(
        project.path(),
        "plain",
        "description = \"custom executor\"\ndockerfile = \"Dockerfile\"\nrole = \"executor\"\n",
        EXECUTOR_DOCKERFILE,
    );
    rootfs(&plain, 0o777);

    let budget = if broken { 2 } else { 8 };
    let heavy = image(
        project.path(),
        "heavy",
        &format!(
            "description = \"over budget\"\ndockerfile = \"Dockerfile\"\nrole = \"executor\"\n\
             [size]\nmax_compressed_mib = {budget}\nmax_uncompressed_mib = {budget}\n"
        ),
        &format!("{EXECUTOR_DOCKERFILE}COPY payload /opt/payload\n"),
    );
    rootfs(&heavy, 0o777);
    // Random bytes do not compress: 3 MiB either way.
    let payload: Vec<u8> = (0..3 << 20).map(|_| fastrand::u8(..)).collect();
    fs::write(heavy.join("payload"), payload).unwrap();

    let locked = image(
        project.path(),
        "locked-workspace",
        "description = \"workspace only root can write\"\ndockerfile = \"Dockerfile\"\nrole = \"executor\"\n",
        EXECUTOR_DOCKERFILE,
    );
    rootfs(&locked, if broken { 0o755 } else { 0o777 });
    // BuildKit's COPY cache does not always see a folder's mode change alone (seen with
    // Docker 26.1): the fix also changes a file, as a real one usually does.
    fs::write(locked.join("rootfs/etc/fixed"), format!("{}\n", !broken)).unwrap();

    // A tool unpacked with its archive's owner: /opt/tool belongs to UID 1001. Fixed,
    // the image says why (the check is skipped with that reason).
    let skip = if broken {
        ""
    } else {
        "[verify.skip]\nroot-owned = \"the tool updates itself in place as UID 1001\"\n"
    };
    let foreign = image(
        project.path(),
        "foreign-owner",
        &format!(
            "description = \"files owned by the archive's UID\"\ndockerfile = \"Dockerfile\"\nrole = \"executor\"\n{skip}"
        ),
        &format!("{EXECUTOR_DOCKERFILE}COPY --chown=1001:1001 tool /opt/tool\n"),
    );
    rootfs(&foreign, 0o777);
    script(&foreign.join("tool/run"), "echo tool");

    let writes_root = image(
        project.path(),
        "writes-root",
        "description = \"a tool that writes its state\"\ndockerfile = \"Dockerfile\"\nrole = \"executor\"\n\
         [[verify.commands]]\nname = \"tool starts\"\ncommand = \"/bin/start-tool\"\nexpected_output = [\"^started\"]\n",
        EXECUTOR_DOCKERFILE,
    );
    rootfs(&writes_root, 0o777);
    let state = if broken {
        "/var/cache/tool/state"
    } else {
        "$HOME/.tool-state"
    };
    script(
        &writes_root.join("rootfs/bin/start-tool"),
        &format!("set -e\necho state > \"{state}\"\necho started"),
    );
    // A setuid program beside a /etc/passwd that group 0 (every UID of the image) may
    // write: what devbox-dind-rootless once shipped with newuidmap and /etc/subuid.
    let setuid = image(
        project.path(),
        "setuid-passwd",
        "description = \"a setuid program trusting a writable file\"\ndockerfile = \"Dockerfile\"\nrole = \"executor\"\n",
        &format!("{EXECUTOR_DOCKERFILE}COPY --chmod=4755 rootfs/bin/busybox /bin/su\n"),
    );
    rootfs(&setuid, 0o777);
    let passwd = if broken { 0o664 } else { 0o644 };
    fs::set_permissions(
        setuid.join("rootfs/etc/passwd"),
        fs::Permissions::from_mode(passwd),
    )
    .unwrap();
    fs::write(setuid.join("rootfs/etc/fixed"), format!("{}\n", !broken)).unwrap();
    project
}

struct Checks<'a> {
    project: &'a Path,
    naming: Vec<String>,
}

impl Checks<'_> {
    fn xtask(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(self.naming.iter().map(String::as_str));
        xtask_in(self.project, &all, &[])
    }

    fn build(&self, extra: &[&str]) {
        let mut args = vec!["images", "build", "--push", "--progress", "plain"];
        args.extend(extra);
        let out = self.xtask(&args);
        assert!(out.status.success(), "build: {}", text(&out.stderr));
    }

    fn verify(&self, image: &str) -> (bool, String, serde_json::Value) {
        let out = self.xtask(&["images", "verify", image, "--json"]);
        let outcomes = verify_outcomes(&out);
        (out.status.success(), text(&out.stderr), outcomes)
    }
}

fn failed<'a>(outcomes: &'a serde_json::Value, check: &str) -> Vec<&'a serde_json::Value> {
    outcomes
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["check"] == check && o["passed"] == false)
        .collect()
}

#[test]
fn checks_fail_on_broken_images_and_pass_once_fixed() {
    need!(Docker, Registry);
    let registry = Registry::start();
    let broken = project(true);
    let version = format!("checks-{}", std::process::id());
    let naming = [
        "--registry",
        &registry.addr,
        "--org",
        "checks",
        "--version",
        &version,
    ]
    .map(String::from)
    .to_vec();
    let checks = Checks {
        project: broken.path(),
        naming: naming.clone(),
    };
    checks.build(&[]);

    // Over budget: the table says by how much, and which layer is the largest.
    let size = checks.xtask(&["images", "size", "heavy"]);
    let table = text(&size.stdout);
    eprintln!("{table}");
    assert!(
        !size.status.success(),
        "an image over budget passed:\n{table}"
    );
    let line = table.lines().find(|l| l.starts_with("heavy")).unwrap();
    assert!(line.contains("OVER"), "{line}");
    assert!(line.contains("2 MiB / 2 MiB"), "{line}");
    let over = regex::Regex::new(r"-\d+\.\d MiB / -\d+\.\d MiB").unwrap();
    assert!(
        over.is_match(line),
        "headroom should show by how much: {line}"
    );
    let layers = table
        .split("largest layers of heavy (linux/amd64):")
        .nth(1)
        .unwrap();
    let largest = layers.lines().nth(2).unwrap();
    assert!(largest.contains("COPY payload /opt/payload"), "{largest}");
    let stderr = text(&size.stderr);
    assert!(
        stderr.contains("over budget: heavy (linux/amd64)"),
        "{stderr}"
    );

    // A custom executor with nothing configured gets every convention, and passes.
    let (ok, stderr, outcomes) = checks.verify("plain");
    assert!(ok, "{stderr}\n{outcomes:#}");
    let names: Vec<&str> = outcomes
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["check"].as_str().unwrap())
        .collect();
    for convention in [
        "user",
        "home",
        "workdir",
        "home-writable",
        "workspace-writable",
        "tools-mountable",
        "opencode-from-tools",
        "default-command",
        "root-owned",
        "setuid-trust",
    ] {
        assert!(
            names.contains(&convention),
            "{convention} did not run: {names:?}"
        );
    }
    let from_tools = outcomes
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["check"] == "opencode-from-tools" && o["user"] == "1000620000:0")
        .unwrap();
    assert!(
        from_tools["detail"]
            .as_str()
            .unwrap()
            .contains("0.0.0-stand-in"),
        "{from_tools}"
    );

    // /workspace only root can write: named check, user, and what was seen.
    let (ok, stderr, outcomes) = checks.verify("locked-workspace");
    assert!(!ok, "a locked /workspace passed: {outcomes:#}");
    let failures = failed(&outcomes, "workspace-writable");
    assert!(
        failures.iter().any(|f| f["user"] == "1000620000:0"
            && f["detail"].as_str().unwrap().contains("Permission denied")),
        "{outcomes:#}"
    );
    assert!(
        stderr.contains("locked-workspace: workspace-writable as"),
        "{stderr}"
    );

    // Something under /opt that root does not own: named, with its owner.
    let (ok, stderr, outcomes) = checks.verify("foreign-owner");
    assert!(!ok, "a foreign owner under /opt passed: {outcomes:#}");
    let failures = failed(&outcomes, "root-owned");
    assert_eq!(failures.len(), 1, "{outcomes:#}");
    let detail = failures[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("belong to a UID other than root") && detail.contains("uid 1001"),
        "{detail}"
    );
    assert!(stderr.contains("foreign-owner: root-owned as"), "{stderr}");

    // A setuid program that trusts a file group 0 may write: named, with who may write it.
    let (ok, stderr, outcomes) = checks.verify("setuid-passwd");
    assert!(
        !ok,
        "a group-writable /etc/passwd beside a setuid su passed: {outcomes:#}"
    );
    let failures = failed(&outcomes, "setuid-trust");
    assert_eq!(failures.len(), 1, "{outcomes:#}");
    let detail = failures[0]["detail"].as_str().unwrap();
    assert!(
        detail
            .contains("/etc/passwd (-rw-rw-r-- 0:0) is writable by group 0, and /bin/su trusts it"),
        "{detail}"
    );
    assert!(stderr.contains("setuid-passwd: setuid-trust"), "{stderr}");

    // A tool that writes to the root file system fails under the restricted profile.
    let (ok, stderr, outcomes) = checks.verify("writes-root");
    assert!(!ok, "a read-only root passed: {outcomes:#}");
    let failures = failed(&outcomes, "tool starts");
    assert_eq!(failures.len(), 2, "{outcomes:#}");
    for failure in failures {
        assert_eq!(failure["restricted"], true);
        assert!(
            failure["detail"]
                .as_str()
                .unwrap()
                .contains("Read-only file system"),
            "{failure}"
        );
    }
    assert!(stderr.contains("writes-root: tool starts as"), "{stderr}");

    // Fixed, the same images pass, checked by the build itself.
    let fixed = project(false);
    let checks = Checks {
        project: fixed.path(),
        naming,
    };
    checks.build(&[
        "heavy",
        "locked-workspace",
        "writes-root",
        "foreign-owner",
        "setuid-passwd",
        "fake-init",
        "--check",
    ]);
    for image in ["locked-workspace", "writes-root", "setuid-passwd"] {
        let (ok, stderr, outcomes) = checks.verify(image);
        assert!(ok, "{image}: {stderr}\n{outcomes:#}");
    }
    let (ok, stderr, outcomes) = checks.verify("foreign-owner");
    assert!(ok, "foreign-owner: {stderr}\n{outcomes:#}");
    let skipped = outcomes
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["check"] == "root-owned")
        .unwrap();
    assert!(
        skipped["detail"]
            .as_str()
            .unwrap()
            .starts_with("skipped: the tool updates itself"),
        "{skipped}"
    );
}

#[test]
fn size_of_a_multi_platform_index_needs_no_daemon() {
    need!(Docker, Registry, Skopeo);
    let registry = Registry::start();
    let project = tempfile::tempdir().unwrap();
    fs::create_dir_all(project.path().join("dockerfiles")).unwrap();
    let dir = image(
        project.path(),
        "multi",
        "description = \"two platforms\"\ndockerfile = \"Dockerfile\"\n\
         platforms = [\"linux/amd64\", \"linux/arm64\"]\n",
        "FROM scratch\nARG TARGETARCH\nCOPY payload-${TARGETARCH} /payload\n",
    );
    for (arch, size) in [("amd64", 300_000), ("arm64", 500_000)] {
        fs::write(dir.join(format!("payload-{arch}")), vec![b'x'; size]).unwrap();
    }
    let out = xtask_in(
        project.path(),
        &[
            "images",
            "build",
            "--push",
            "--registry",
            &registry.addr,
            "--org",
            "m",
            "--version",
            "v1",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let reference = format!("{}/m/kubeopencode-agent-multi:v1", registry.addr);
    let out = xtask_in(
        project.path(),
        &["images", "size", "--ref", &reference, "--json"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let platforms = report["images"][0]["platforms"].as_array().unwrap();
    let by_platform: Vec<(&str, u64)> = platforms
        .iter()
        .map(|p| {
            (
                p["platform"].as_str().unwrap(),
                p["uncompressed_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(by_platform.len(), 2, "{report:#}");
    assert_eq!(by_platform[0].0, "linux/amd64");
    assert_eq!(by_platform[1].0, "linux/arm64");
    // The tar stream holds the payload plus headers: at least the payload, not much more.
    for ((_, measured), payload) in by_platform.iter().zip([300_000u64, 500_000]) {
        assert!(
            (payload..payload + 16_384).contains(measured),
            "{measured} for a {payload}-byte payload"
        );
    }
    // skopeo agrees on the index digest.
    let digest = skopeo_inspect("--format={{.Digest}}", &reference);
    assert_eq!(report["images"][0]["digest"], digest.trim());
    assert_eq!(report["images"][0]["platforms"][0]["verdict"], "no-budget");

    // The same image through the engine's store.
    let pulled = run("docker", &["pull", "--quiet", &reference]);
    assert!(!pulled.is_empty());
    let out = xtask_in(
        project.path(),
        &["images", "size", "--ref", &reference, "--local", "--json"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let local: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let local_amd64 = local["images"][0]["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["platform"] == "linux/amd64")
        .unwrap();
    assert_eq!(
        local_amd64["compressed_bytes"],
        platforms[0]["compressed_bytes"]
    );
    assert_eq!(
        local_amd64["uncompressed_bytes"],
        platforms[0]["uncompressed_bytes"]
    );
}
