//! The devbox family, built for real with nothing from the internet: Debian packages from
//! the machine's mirror through a locally made base image, npm packages from the
//! machine's npm registry, and every tool of the lock from an artifact mirror this test
//! serves. The artifacts are stand-ins (real builds where this machine's package
//! registries have one: Go 1.24, gh and kubectl from Debian, Node.js, npm and corepack
//! from npm),
//! with their checksums put into a copy of the project; the production lock is untouched.
//! The rest are scripts (SCRIPT_STAND_INS): their functional checks are skipped in the
//! copy as not provable offline, never faked.

use crate::support::artifacts::ArtifactServer;
use crate::support::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// Tools with no real build on this machine: a script stands in for each.
const SCRIPT_STAND_INS: &[&str] = &["golangci-lint", "helm", "yq", "docker", "gcloud", "awscli"];

/// The devbox checks a script stand-in cannot pass: skipped in the project copy.
const NOT_PROVABLE_OFFLINE: &[(&str, &str)] = &[
    (
        "golangci-lint lints a Go 1.25 module and reports a seeded issue",
        "golangci-lint",
    ),
    ("helm creates and renders a chart", "helm"),
    ("yq reads YAML", "yq"),
    ("aws starts and prints its version", "awscli"),
    ("gcloud starts and prints its version", "gcloud"),
    ("docker starts and prints its version", "docker"),
];

const IMAGES: [&str; 7] = [
    "devbox",
    "devbox-dind",
    "devbox-dind-rootless",
    "my-tools",
    "tiny",
    "sandbox-base",
    "sandbox-developer",
];

/// Scaffolded by `images new` in the copy, and built for amd64 only: on arm64 they would
/// rerun devbox's checks under QEMU and prove nothing the family's arm64 run does not.
const CUSTOM_EXECUTORS: [&str; 2] = ["my-tools", "tiny"];

/// What is built and verified for `platform`.
fn images_for(platform: &str) -> Vec<&'static str> {
    IMAGES
        .into_iter()
        .filter(|i| platform == "linux/amd64" || !CUSTOM_EXECUTORS.contains(i))
        .collect()
}

fn sh(script: &str) -> String {
    run("sh", &["-euc", script])
}

fn sha256(path: &Path) -> String {
    sh(&format!("sha256sum '{}'", path.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn script(path: &Path, body: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Real binaries from Debian packages, unpacked once per run.
struct Debian {
    dir: tempfile::TempDir,
}

impl Debian {
    fn unpack(packages: &[&str]) -> Debian {
        Debian::try_unpack(packages).unwrap_or_else(|| {
            panic!(
                "apt-get download {packages:?} failed (.ci/provision adds the other architecture)"
            )
        })
    }
    /// `None` where the machine's apt sources lack a package (trixie on Ubuntu).
    fn try_unpack(packages: &[&str]) -> Option<Debian> {
        let dir = tempfile::tempdir().unwrap();
        let list = packages.join(" ");
        let script = format!(
            "cd '{}' && apt-get download -qq {list} 2>/dev/null && for d in ./*.deb; do dpkg-deb -x \"$d\" root; done",
            dir.path().display()
        );
        let done = std::process::Command::new("sh")
            .args(["-euc", &script])
            .status();
        done.is_ok_and(|s| s.success()).then_some(Debian { dir })
    }
    /// The upstream version of a downloaded package: `1.32.3` for `1.32.3+ds-2`.
    fn version(&self, package: &str) -> String {
        let dir = self.dir.path().display();
        let full = sh(&format!("dpkg-deb -f '{dir}'/{package}_*.deb Version"));
        let upstream = full.trim().rsplit_once('-').map_or(full.trim(), |(u, _)| u);
        upstream.split(['+', '~']).next().unwrap().to_string()
    }
    fn path(&self, inside: &str) -> PathBuf {
        self.dir
            .path()
            .join("root")
            .join(inside.trim_start_matches('/'))
    }
}

/// One architecture's real builds: Go and gh from Debian, kubectl from trixie
/// (.ci/provision adds it, and the other architecture, on Debian 12), Node.js from npm.
struct Real {
    arch: &'static str,
    debian: Debian,
    /// `None` where apt has no trixie: a script stands in and its check is skipped.
    kubectl: Option<Debian>,
    node: tempfile::TempDir,
}

impl Real {
    fn fetch(arch: &'static str, node_arch: &str) -> Real {
        let (go, gh) = (format!("golang-1.24-go:{arch}"), format!("gh:{arch}"));
        let debian = Debian::unpack(&[&go, "golang-1.24-src", &gh]);
        let kubectl = Debian::try_unpack(&[&format!("kubectl:{arch}/trixie")]);
        let node = tempfile::tempdir().unwrap();
        node_tree(node.path(), node_arch);
        Real {
            arch,
            debian,
            kubectl,
            node,
        }
    }
}

/// The official Node.js layout from npm packages: node itself, npm and corepack.
fn node_tree(dest: &Path, node_arch: &str) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path().display();
    let npm_registry = npm_registry();
    sh(&format!(
        "cd '{w}' && npm pack --silent --registry '{npm_registry}' node-linux-{node_arch}@22.23.2 npm@10 corepack@0.34 >/dev/null"
    ));
    let d = dest.display();
    sh(&format!(
        "mkdir -p '{d}/bin' '{d}/lib/node_modules/npm' '{d}/lib/node_modules/corepack'
         tar -xzf '{w}'/node-linux-{node_arch}-*.tgz -C '{w}' package/bin/node && mv '{w}/package/bin/node' '{d}/bin/node'
         tar -xzf '{w}'/npm-*.tgz -C '{d}/lib/node_modules/npm' --strip-components=1
         tar -xzf '{w}'/corepack-*.tgz -C '{d}/lib/node_modules/corepack' --strip-components=1"
    ));
    symlink(
        "../lib/node_modules/npm/bin/npm-cli.js",
        dest.join("bin/npm"),
    )
    .unwrap();
    symlink(
        "../lib/node_modules/npm/bin/npx-cli.js",
        dest.join("bin/npx"),
    )
    .unwrap();
    symlink(
        "../lib/node_modules/corepack/dist/corepack.js",
        dest.join("bin/corepack"),
    )
    .unwrap();
}

/// A throwaway OpenPGP key for the signed artifact (the AWS CLI).
struct Signer {
    home: tempfile::TempDir,
    fingerprint: String,
}

impl Signer {
    fn new() -> Signer {
        Signer::generate("", "'xtask e2e <e2e@example.invalid>' ed25519 sign never")
    }
    /// A key that expired on 2020-01-02, signing as of 2020-01-01: gpg still reports
    /// VALIDSIG for it.
    fn expired() -> Signer {
        Signer::generate(
            "--faked-system-time 20200101T000000",
            "'expired <expired@example.invalid>' ed25519 sign 1d",
        )
    }
    fn generate(options: &str, key: &str) -> Signer {
        let home = tempfile::tempdir().unwrap();
        fs::set_permissions(home.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let h = home.path().display();
        sh(&format!(
            "GNUPGHOME='{h}' gpg --batch --quiet {options} --passphrase '' --quick-gen-key {key} 2>/dev/null"
        ));
        let fingerprint = sh(&format!(
            "GNUPGHOME='{h}' gpg --batch --with-colons --fingerprint | awk -F: '/^fpr/ {{print $10; exit}}'"
        ))
        .trim()
        .to_string();
        Signer { home, fingerprint }
    }
    fn sign_in_2020(&self, file: &Path, signature: &Path) {
        self.sign_with("--faked-system-time 20200101T000100", file, signature);
    }
    /// Another key in the same keyring, exported with the pinned one.
    fn other_key(&self) -> String {
        let h = self.home.path().display();
        sh(&format!(
            "GNUPGHOME='{h}' gpg --batch --quiet --passphrase '' --quick-gen-key 'other <other@example.invalid>' ed25519 sign never"
        ));
        sh(&format!(
            "GNUPGHOME='{h}' gpg --batch --with-colons --fingerprint other@example.invalid | awk -F: '/^fpr/ {{print $10; exit}}'"
        ))
        .trim()
        .to_string()
    }
    fn export(&self, to: &Path) {
        let h = self.home.path().display();
        sh(&format!(
            "GNUPGHOME='{h}' gpg --batch --armor --export > '{}'",
            to.display()
        ));
    }
    fn sign(&self, file: &Path, signature: &Path) {
        self.sign_as(&self.fingerprint, file, signature);
    }
    fn sign_as(&self, key: &str, file: &Path, signature: &Path) {
        self.sign_with(&format!("-u '{key}'"), file, signature);
    }
    fn sign_with(&self, options: &str, file: &Path, signature: &Path) {
        let h = self.home.path().display();
        sh(&format!(
            "GNUPGHOME='{h}' gpg --batch --yes {options} --detach-sign -o '{}' '{}' 2>/dev/null",
            signature.display(),
            file.display()
        ));
    }
}

fn mirror_path(url: &str) -> PathBuf {
    PathBuf::from(url.split_once("://").unwrap().1)
}

/// Builds a stand-in for every tool and architecture of `lock` under `mirror`, and
/// rewrites the lock with their digests (and the test key for signed artifacts).
/// Returns the signer, to sign with another key later.
fn stand_ins(project: &Path, mirror: &Path) -> Signer {
    let lock_path = project.join("agents/devbox/tools.toml");
    let mut lock: toml::Table = fs::read_to_string(&lock_path).unwrap().parse().unwrap();
    let real = [Real::fetch("amd64", "x64"), Real::fetch("arm64", "arm64")];
    let mut not_provable: Vec<(&str, &str)> = NOT_PROVABLE_OFFLINE.to_vec();
    // The copy's lock says the Go it really carries (the first line of VERSION: go1.24.x).
    let go_version = fs::read_to_string(real[0].debian.path("/usr/lib/go-1.24/VERSION")).unwrap();
    let go_version = go_version.lines().next().unwrap().trim_start_matches("go");
    let signer = Signer::new();
    let tools = lock["tools"].as_table_mut().unwrap();
    tools["go"]
        .as_table_mut()
        .unwrap()
        .insert("version".into(), go_version.into());
    match &real[0].kubectl {
        Some(kubectl) => {
            let version = kubectl.version("kubectl");
            let tool = tools["kubectl"].as_table_mut().unwrap();
            tool.insert("version".into(), version.into());
        }
        None => not_provable.push(("kubectl renders a manifest", "kubectl")),
    }
    for (name, tool) in tools.iter_mut() {
        let tool = tool.as_table_mut().unwrap();
        let version = tool["version"].as_str().unwrap().to_string();
        let mut sums = toml::Table::new();
        for (arch, real) in ["amd64", "arm64"].into_iter().zip(&real) {
            assert_eq!(arch, real.arch);
            let (debian, kubectl, node) = (&real.debian, &real.kubectl, &real.node);
            let arch_name = tool
                .get("arch_names")
                .and_then(|a| a.get(arch))
                .and_then(|a| a.as_str())
                .unwrap_or(arch)
                .to_string();
            let fill = |pattern: &str| {
                pattern
                    .replace("{version}", &version)
                    .replace("{arch}", &arch_name)
            };
            let url = fill(tool["url"].as_str().unwrap());
            let target = mirror.join(mirror_path(&url));
            fs::create_dir_all(target.parent().unwrap()).unwrap();
            let tree = tempfile::tempdir().unwrap();
            let t = tree.path();
            let fake = format!("echo '{name} {version} (stand-in)'");
            let archive = |format: &str, top: &str| {
                // xz's fastest preset: the default spends minutes on Node.js per arch.
                sh(&format!(
                    "XZ_OPT=-0 tar -C '{}' -c{format}f '{}' {top}",
                    t.display(),
                    target.display()
                ));
            };
            match name.as_str() {
                "go" => {
                    // Debian's GOROOT, its relative links resolved, is the official
                    // archive's tree under `go/`; go finds GOROOT from its own path.
                    sh(&format!(
                        "cp -rL '{}' '{}/go'",
                        debian.path("/usr/lib/go-1.24").display(),
                        t.display()
                    ));
                    archive("z", "go");
                }
                "node" => {
                    let top = format!("node-v{version}-linux-{arch_name}");
                    sh(&format!(
                        "cp -a '{}' '{}/{top}'",
                        node.path().display(),
                        t.display()
                    ));
                    archive("J", &top);
                }
                "gh" => {
                    let top = format!("gh_{version}_linux_{arch_name}");
                    fs::create_dir_all(t.join(&top).join("bin")).unwrap();
                    fs::copy(debian.path("/usr/bin/gh"), t.join(&top).join("bin/gh")).unwrap();
                    archive("z", &top);
                }
                "golangci-lint" => {
                    let top = format!("golangci-lint-{version}-linux-{arch_name}");
                    script(&t.join(&top).join("golangci-lint"), &fake);
                    archive("z", &top);
                }
                "helm" => {
                    let top = format!("linux-{arch_name}");
                    script(&t.join(&top).join("helm"), &fake);
                    archive("z", &top);
                }
                "docker" => {
                    script(&t.join("docker/docker"), &fake);
                    archive("z", "docker");
                }
                "gcloud" => {
                    script(&t.join("google-cloud-sdk/bin/gcloud"), &fake);
                    archive("z", "google-cloud-sdk");
                }
                "kubectl" => match kubectl {
                    Some(kubectl) => {
                        fs::copy(kubectl.path("/usr/bin/kubectl"), &target).unwrap();
                    }
                    None => script(&target, &fake),
                },
                "yq" => script(&target, &fake),
                "awscli" => {
                    script(&t.join("aws/dist/aws"), &fake);
                    script(&t.join("aws/dist/aws_completer"), "exit 0");
                    sh(&format!(
                        "cd '{}' && python3 -c 'import shutil,sys; shutil.make_archive(sys.argv[1], \"zip\", \".\", \"aws\")' '{}'",
                        t.display(),
                        target.with_extension("").display()
                    ));
                    let signature_url = fill(tool["signature"]["url"].as_str().unwrap());
                    signer.sign(&target, &mirror.join(mirror_path(&signature_url)));
                }
                other => panic!("no stand-in for tool '{other}': add one to this test"),
            }
            assert!(
                target.is_file(),
                "{name} {arch}: no stand-in at {}",
                target.display()
            );
            sums.insert(arch.into(), sha256(&target).into());
        }
        if let Some(signature) = tool.get_mut("signature").and_then(|s| s.as_table_mut()) {
            signature.insert("fingerprint".into(), signer.fingerprint.clone().into());
            signer.export(
                &project
                    .join("agents/devbox")
                    .join(signature["key"].as_str().unwrap()),
            );
        } else {
            tool.insert("sha256".into(), sums.into());
        }
    }
    fs::write(&lock_path, toml::to_string(&lock).unwrap()).unwrap();
    // A script stand-in cannot prove a functional check: skip it, saying so.
    let spec_path = project.join("agents/devbox/image.toml");
    let mut spec: toml::Table = fs::read_to_string(&spec_path).unwrap().parse().unwrap();
    let verify = spec["verify"].as_table_mut().unwrap();
    let skip = verify
        .entry("skip")
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .unwrap();
    for (check, tool) in not_provable {
        skip.insert(
            check.to_string(),
            format!(
                "not provable offline: {tool} is a script stand-in (no real build on this machine)"
            )
            .into(),
        );
    }
    fs::write(&spec_path, toml::to_string(&spec).unwrap()).unwrap();
    // Every other lock pins a subset of devbox's tools: give them the same stand-ins.
    for entry in fs::read_dir(project.join("agents")).unwrap().flatten() {
        let other = entry.path().join("tools.toml");
        if other == lock_path || !other.is_file() {
            continue;
        }
        let mut other_lock: toml::Table = fs::read_to_string(&other).unwrap().parse().unwrap();
        for (name, tool) in other_lock["tools"].as_table_mut().unwrap().iter_mut() {
            let stand_in = lock["tools"][name.as_str()]["sha256"].clone();
            tool.as_table_mut()
                .unwrap()
                .insert("sha256".into(), stand_in);
        }
        fs::write(&other, toml::to_string(&other_lock).unwrap()).unwrap();
    }
    signer
}

fn set_sha256(project: &Path, tool: &str, arch: &str, sum: &str) -> String {
    let lock_path = project.join("agents/devbox/tools.toml");
    let mut lock: toml::Table = fs::read_to_string(&lock_path).unwrap().parse().unwrap();
    let sums = lock["tools"][tool]["sha256"].as_table_mut().unwrap();
    let old = sums[arch].as_str().unwrap().to_string();
    sums.insert(arch.into(), sum.into());
    fs::write(&lock_path, toml::to_string(&lock).unwrap()).unwrap();
    old
}

fn set_fingerprint(project: &Path, fingerprint: &str) {
    let lock_path = project.join("agents/devbox/tools.toml");
    let mut lock: toml::Table = fs::read_to_string(&lock_path).unwrap().parse().unwrap();
    lock["tools"]["awscli"]["signature"]
        .as_table_mut()
        .unwrap()
        .insert("fingerprint".into(), fingerprint.into());
    fs::write(&lock_path, toml::to_string(&lock).unwrap()).unwrap();
}

#[test]
fn devbox_family_builds_offline_and_works() {
    need!(Docker, Registry, Debootstrap);
    let test_started = std::time::Instant::now();
    let production_lock =
        fs::read_to_string(project_root().join("agents/devbox/tools.toml")).unwrap();
    let registry = Registry::start();
    let prefix = format!("{}/mirror", registry.addr);
    // Two real platforms, so the arm64 build runs arm64 binaries under emulation.
    push_two_platform_base_image(&format!("{prefix}/library/debian:bookworm-slim"));
    let project = project_copy();
    // The copy's bases pinned to the stand-in the mirror holds. sandbox-base's debian
    // flavour takes the same pin; its alpine base is unused and keeps the real one.
    pin_bases(project.path(), &["opencode", "devbox"], &prefix);
    let debian_base = |root: &Path| -> String {
        let spec = fs::read_to_string(root.join("agents/devbox/image.toml")).unwrap();
        let spec: toml::Table = spec.parse().unwrap();
        spec["bases"]["debian"].as_str().unwrap().to_string()
    };
    let sandbox = project.path().join("agents/sandbox-base/image.toml");
    let spec = fs::read_to_string(&sandbox).unwrap();
    let (real, pinned) = (debian_base(&project_root()), debian_base(project.path()));
    assert!(spec.contains(&real), "{spec}");
    fs::write(&sandbox, spec.replace(&real, &pinned)).unwrap();

    let mirror = tempfile::tempdir().unwrap();
    let signer = stand_ins(project.path(), mirror.path());
    eprintln!(
        "script stand-ins (their functional checks are not provable offline): {}",
        SCRIPT_STAND_INS.join(", ")
    );
    let server = ArtifactServer::start(mirror.path());

    // `images tools --fetch` lays out exactly what --artifact-mirror reads, verified.
    let fetch_into = |dir: &Path| {
        let args = [
            "images",
            "tools",
            "devbox",
            "--fetch",
            dir.to_str().unwrap(),
            "--from",
            &server.url,
        ];
        xtask_in(project.path(), &args, &[])
    };
    let fetched = tempfile::tempdir().unwrap();
    let fetch = fetch_into(fetched.path());
    assert!(fetch.status.success(), "fetch: {}", text(&fetch.stderr));
    let diff = std::process::Command::new("diff")
        .args([
            "-r",
            mirror.path().to_str().unwrap(),
            fetched.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "fetched tree differs: {}",
        text(&diff.stdout)
    );

    // A download that does not match its pin fails the fetch and the build, naming it.
    let lock = fs::read_to_string(project.path().join("agents/devbox/tools.toml")).unwrap();
    let lock: toml::Table = lock.parse().unwrap();
    let kubectl_version = lock["tools"]["kubectl"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    let good = set_sha256(project.path(), "kubectl", "amd64", &"0".repeat(64));
    let refetch = tempfile::tempdir().unwrap();
    let fetch = fetch_into(refetch.path());
    let stderr = text(&fetch.stderr);
    assert!(!fetch.status.success());
    assert!(
        stderr.contains(&format!("kubectl {kubectl_version} (amd64)"))
            && stderr.contains("sha256 mismatch"),
        "{stderr}"
    );
    let leftovers = sh(&format!(
        "find '{}' -path '*kubectl*' -type f",
        refetch.path().display()
    ));
    assert!(
        leftovers.trim().is_empty(),
        "an unverified file was kept: {leftovers}"
    );

    let version = format!("e2e-{}", std::process::id());
    let npm = npm_registry();
    let ca_bundle = tempfile::NamedTempFile::new().unwrap();
    fs::copy(HOST_CA_BUNDLE, ca_bundle.path()).unwrap();
    let naming = e2e_naming(&registry.addr, &version);
    let build_with = |platform: &str, images: &[&str], extra: &[&str]| {
        let mut args = vec![
            "images",
            "build",
            "--push",
            "--platform",
            platform,
            "--progress",
            "plain",
        ];
        args.extend(naming);
        args.extend(extra);
        args.extend([
            "--base-registry",
            &prefix,
            "--artifact-mirror",
            &server.url,
            "--npm-registry",
            &npm,
            "--ca-bundle",
            ca_bundle.path().to_str().unwrap(),
        ]);
        args.extend(images);
        xtask_in(project.path(), &args, &[])
    };
    let build = |platform: &str, images: &[&str]| build_with(platform, images, &[]);
    // Refusals fail in the fetch stage, on the build platform: amd64 alone shows them.
    let failed = build("linux/amd64", &["devbox"]);
    let log = text(&failed.stderr);
    assert!(!failed.status.success(), "a tampered kubectl was accepted");
    assert!(
        log.contains(&format!("kubectl {kubectl_version}: sha256 mismatch")),
        "{}",
        &log[log.len().saturating_sub(3000)..]
    );
    set_sha256(project.path(), "kubectl", "amd64", &good);

    // A signature by another key of the keyring (aws-cli.asc holds both) is refused.
    let lock: toml::Table = fs::read_to_string(project.path().join("agents/devbox/tools.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let aws = &lock["tools"]["awscli"];
    let fill = |pattern: &str| {
        pattern
            .replace("{version}", aws["version"].as_str().unwrap())
            .replace("{arch}", "x86_64")
    };
    let zip = mirror
        .path()
        .join(mirror_path(&fill(aws["url"].as_str().unwrap())));
    let sig = mirror.path().join(mirror_path(&fill(
        aws["signature"]["url"].as_str().unwrap(),
    )));
    let other = signer.other_key();
    signer.sign_as(&other, &zip, &sig);
    signer.export(&project.path().join("agents/devbox/aws-cli.asc"));
    let refused = build("linux/amd64", &["devbox"]);
    let log = text(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a signature by another key was accepted"
    );
    assert!(
        log.contains(&format!(
            "no valid signature by the pinned key {}",
            signer.fingerprint
        )),
        "{}",
        &log[log.len().saturating_sub(3000)..]
    );

    // An expired pinned key fails the build, naming it, though gpg says VALIDSIG.
    let expired = Signer::expired();
    expired.sign_in_2020(&zip, &sig);
    expired.export(&project.path().join("agents/devbox/aws-cli.asc"));
    set_fingerprint(project.path(), &expired.fingerprint);
    let refused = build("linux/amd64", &["devbox"]);
    let log = text(&refused.stderr);
    assert!(!refused.status.success(), "an expired key was accepted");
    assert!(
        log.contains(&format!(
            "the pinned key {} (aws-cli.asc) expired on 2020-01-02",
            expired.fingerprint
        )),
        "{}",
        &log[log.len().saturating_sub(3000)..]
    );
    set_fingerprint(project.path(), &signer.fingerprint);
    signer.export(&project.path().join("agents/devbox/aws-cli.asc"));
    signer.sign(&zip, &sig);

    // The sandboxes in their Debian flavour: this machine reaches no Alpine mirror.
    let sandbox = project.path().join("agents/sandbox-base/image.toml");
    let spec = fs::read_to_string(&sandbox).unwrap();
    fs::write(
        &sandbox,
        spec.replace("flavour = \"alpine\"", "flavour = \"debian\""),
    )
    .unwrap();

    // Custom executors scaffolded by `images new` build and verify as they are.
    for (name, from) in CUSTOM_EXECUTORS.into_iter().zip(["devbox", "scratch"]) {
        let out = xtask_in(
            project.path(),
            &["images", "new", name, "--from", from],
            &[],
        );
        assert!(
            out.status.success(),
            "images new {name}: {}",
            text(&out.stderr)
        );
        let spec_path = project.path().join(format!("agents/{name}/image.toml"));
        let spec = fs::read_to_string(&spec_path).unwrap();
        let two = "platforms = [\"linux/amd64\", \"linux/arm64\"]";
        assert!(spec.contains(two), "{name}: {spec}");
        fs::write(
            &spec_path,
            spec.replace(two, "platforms = [\"linux/amd64\"]"),
        )
        .unwrap();
    }

    pin_bases(project.path(), &["tiny"], &prefix);

    // One platform at a time, by digest, then merged into one index per image, as
    // release runners do (opencode is the tools image verify mounts). The build cache
    // goes between the two: both platforms' cache at once is most of the disk.
    let served_before = server.served.load(std::sync::atomic::Ordering::Relaxed);
    let records = tempfile::tempdir().unwrap();
    let mut record_dirs = Vec::new();
    for platform in ["linux/amd64", "linux/arm64"] {
        let dir = records.path().join(platform.replace('/', "-"));
        let dir = dir.to_str().unwrap().to_string();
        let started = std::time::Instant::now();
        let built = build_with(
            platform,
            &[&["opencode"][..], &images_for(platform)[..]].concat(),
            &["--by-digest", &dir],
        );
        let log = text(&built.stderr);
        assert!(
            built.status.success(),
            "build {platform}: {}",
            &log[log.len().saturating_sub(6000)..]
        );
        eprintln!("build {platform}: {:.0?}", started.elapsed());
        sh("docker buildx prune --all --force >/dev/null");
        record_dirs.push(dir);
    }
    let merge = xtask_in(
        project.path(),
        &[
            &["images", "merge"][..],
            &record_dirs.iter().map(String::as_str).collect::<Vec<_>>()[..],
            &naming[..],
        ]
        .concat(),
        &[],
    );
    assert!(merge.status.success(), "merge: {}", text(&merge.stderr));
    let served = server.served.load(std::sync::atomic::Ordering::Relaxed) - served_before;
    eprintln!("artifact mirror served {served} files during the build");
    assert_eq!(
        fs::read_to_string(project_root().join("agents/devbox/tools.toml")).unwrap(),
        production_lock,
        "the production lock changed"
    );

    let size = xtask_in(
        project.path(),
        &[
            &["images", "size", "--layers", "5"][..],
            &IMAGES[..],
            &naming[..],
        ]
        .concat(),
        &[],
    );
    eprintln!("{}", text(&size.stdout));
    assert!(size.status.success(), "size: {}", text(&size.stderr));

    // Conventions and each image's checks, as its own user and as an arbitrary UID.
    // arm64 runs under QEMU: each check proves the arm64 build, not the host.
    for platform in ["linux/amd64", "linux/arm64"] {
        let images = &images_for(platform)[..];
        // amd64 runs natively and waits on `docker run` more than on the CPUs.
        let jobs = if platform == "linux/amd64" { "4" } else { "2" };
        let started = std::time::Instant::now();
        let verify = xtask_in(
            project.path(),
            &[
                &[
                    "images",
                    "verify",
                    "--json",
                    "--platform",
                    platform,
                    "--jobs",
                    jobs,
                ][..],
                images,
                &naming[..],
            ]
            .concat(),
            &[],
        );
        eprintln!("verify --platform {platform}: {:.0?}", started.elapsed());
        let outcomes = passing_outcomes(&verify);
        // Images are checked --jobs at a time, and reported in the order named.
        let mut reported: Vec<&str> = Vec::new();
        for o in outcomes.as_array().unwrap() {
            let image = o["image"].as_str().unwrap();
            if reported.last() != Some(&image) {
                reported.push(image);
            }
        }
        assert_eq!(reported, images, "{platform}: report order");
        // What the copy skips as not provable here (script stand-ins) says so in the report.
        let spec = fs::read_to_string(project.path().join("agents/devbox/image.toml")).unwrap();
        let spec: toml::Table = spec.parse().unwrap();
        let skipped = spec["verify"]["skip"].as_table().unwrap().clone();
        for check in [
            "go runs",
            "go builds and runs a module in /tmp",
            "node runs",
            "node runs a program",
            "tsc compiles TypeScript that node runs",
            "tsc reports a seeded type error",
            "pyright reports a seeded type error",
            "gcc and make build a C program",
            "python runs",
            "a venv's pip installs a wheel that its python imports",
            "git commits and reads its log",
            "jq filters JSON",
            "kubectl renders a manifest",
            "zsh is the shell",
            "ripgrep runs",
            "pnpm runs (corepack, pinned)",
            "tools are on PATH",
            "pnpm and corepack work offline",
            "gh with no GitHub App mounted is the real gh, untouched",
            "git's system config sends github.com credentials to the GitHub App helper",
            "with no GitHub App mounted, the credential helper says nothing and git falls through",
            "the binaries are built for the image's architecture",
        ] {
            if skipped.contains_key(check) {
                continue;
            }
            let ran = outcomes.as_array().unwrap().iter().any(|o| {
                o["image"] == "devbox"
                    && o["check"] == check
                    && o["user"] == "1000620000:0"
                    && o["passed"] == true
            });
            assert!(ran, "{platform}: {check} as an arbitrary UID: {outcomes:#}");
        }
        // The family inherits devbox's checks; dind's docker client is real (Debian's).
        for (image, check) in [
            ("devbox-dind", "go builds and runs a module in /tmp"),
            ("devbox-dind", "docker starts and prints its version"),
            ("devbox-dind-rootless", "tsc reports a seeded type error"),
            (
                "devbox-dind-rootless",
                "docker starts and prints its version",
            ),
        ] {
            let ran = outcomes
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["image"] == image && o["check"] == check && o["passed"] == true);
            assert!(ran, "{platform}: {image}: {check}: {outcomes:#}");
        }
        // A Docker daemon does not run under QEMU's user emulation (iptables, netlink):
        // the native run proves the container inside, the emulated one says it skipped.
        let inside = if platform == "linux/amd64" {
            "hello from a container inside"
        } else {
            "skipped: it starts a Docker daemon, which does not run under emulation (arm64 on amd64)"
        };
        for image in ["devbox-dind", "devbox-dind-rootless"] {
            let ran = outcomes.as_array().unwrap().iter().any(|o| {
                o["image"] == image
                    && o["check"] == "a container runs inside"
                    && o["passed"] == true
                    && o["detail"].as_str().unwrap().contains(inside)
            });
            assert!(
                ran,
                "{platform}: {image}: a container runs inside: {outcomes:#}"
            );
        }
        for (image, check) in [
            ("sandbox-base", "node is v20 or later"),
            ("sandbox-base", "the user is opencode"),
            ("sandbox-developer", "tsc runs"),
            ("sandbox-developer", "tsx runs"),
            (
                "sandbox-developer",
                "the Anthropic SDK is installed globally",
            ),
        ] {
            let ran = outcomes.as_array().unwrap().iter().any(|o| {
                o["image"] == image
                    && o["check"] == check
                    && o["restricted"] == true
                    && o["passed"] == true
            });
            assert!(ran, "{image}: {check}: {outcomes:#}");
        }
        for (check, _) in NOT_PROVABLE_OFFLINE {
            let skipped = outcomes
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["image"] == "devbox" && o["check"] == *check);
            let skipped = skipped.unwrap_or_else(|| panic!("{check}: {outcomes:#}"));
            let detail = skipped["detail"].as_str().unwrap();
            assert!(detail.contains("not provable offline"), "{skipped}");
            eprintln!("devbox: {check}: {detail}");
        }
        for image in images {
            for check in ["root-owned", "setuid-trust"] {
                let ran =
                    outcomes.as_array().unwrap().iter().any(|o| {
                        o["image"] == *image && o["check"] == check && o["passed"] == true
                    });
                assert!(ran, "{image}: {check}: {outcomes:#}");
            }
        }
        let executors = images.iter().filter(|i| IMAGES[..5].contains(i));
        for convention in ["home-writable", "workspace-writable", "opencode-from-tools"] {
            for image in executors.clone() {
                let ran = outcomes.as_array().unwrap().iter().any(|o| {
                    o["image"] == *image && o["check"] == convention && o["passed"] == true
                });
                assert!(ran, "{image}: {convention}: {outcomes:#}");
            }
        }
    }
    let image = |name: &str| format!("{}/e2e/kubeopencode-agent-{name}:{version}", registry.addr);

    // The CLI is laid out as its installer does; the links resolve into v2/<version>.
    let aws = docker_run(&[
        &image("devbox"),
        "sh",
        "-c",
        "readlink -f /usr/local/bin/aws /usr/local/bin/aws_completer && aws --version",
    ]);
    let aws = text(&aws.stdout);
    let v2 = format!(
        "/usr/local/aws-cli/v2/{}/dist",
        lock["tools"]["awscli"]["version"].as_str().unwrap()
    );
    assert!(
        aws.contains(&format!("{v2}/aws\n{v2}/aws_completer\n")),
        "{aws}"
    );

    // A go that cannot compile (its GOROOT's sources gone) fails `verify`, and so does
    // a golangci-lint that cannot lint: the script stand-in, its skip lifted here.
    let spec_path = project.path().join("agents/devbox/image.toml");
    let spec_with_skips = fs::read_to_string(&spec_path).unwrap();
    let lint_check = NOT_PROVABLE_OFFLINE[0].0;
    let mut spec: toml::Table = spec_with_skips.parse().unwrap();
    let skip = spec["verify"]["skip"].as_table_mut().unwrap();
    assert!(
        skip.remove(lint_check).is_some(),
        "{lint_check} was not skipped"
    );
    fs::write(&spec_path, toml::to_string(&spec).unwrap()).unwrap();
    let broken_version = format!("{version}-broken-go");
    let broken = format!(
        "{}/e2e/kubeopencode-agent-devbox:{broken_version}",
        registry.addr
    );
    let dockerfile = format!(
        "FROM {}\nUSER 0\nRUN rm -rf /usr/local/go/src\nUSER 1000:0\n",
        image("devbox")
    );
    let built = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("printf '%s' \"$1\" | docker build -q -t '{broken}' -"),
            "sh",
            &dockerfile,
        ])
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built.stderr));
    // `--local` never pulls, and the verify runs above removed what they pulled.
    let pulled = std::process::Command::new("docker")
        .args(["pull", "--quiet", &image("opencode")])
        .output()
        .unwrap();
    assert!(pulled.status.success(), "{}", text(&pulled.stderr));
    let verify = xtask_in(
        project.path(),
        &[
            "images",
            "verify",
            "devbox",
            "--json",
            "--local",
            "--tools-image",
            &image("opencode"),
            "--registry",
            &registry.addr,
            "--org",
            "e2e",
            "--version",
            &broken_version,
        ],
        &[],
    );
    let outcomes = verify_outcomes(&verify);
    assert!(
        !verify.status.success(),
        "a go that cannot compile passed: {outcomes:#}"
    );
    let failed: Vec<&serde_json::Value> = outcomes
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["passed"] == false)
        .collect();
    for check in ["go builds and runs a module in /tmp", lint_check] {
        assert!(
            failed.iter().any(|o| o["check"] == check),
            "{check} passed on a broken tool: {failed:#?}"
        );
    }
    fs::write(&spec_path, spec_with_skips).unwrap();
    eprintln!(
        "broken go and golangci-lint fail: {}",
        failed
            .iter()
            .map(|o| format!("{} as {}: {}", o["check"], o["user"], o["detail"]))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = std::process::Command::new("docker")
        .args(["image", "rm", &broken, &image("opencode")])
        .output();
    let dind = image("devbox-dind");
    dind_daemon(&dind);
    rootless(&image("devbox-dind-rootless"));
    // `docker run` pulled these (verify removes only what it pulled): some 6 GB unpacked.
    let _ = std::process::Command::new("docker")
        .args(["image", "rm", &image("devbox"), &dind])
        .arg(image("devbox-dind-rootless"))
        .output();
    eprintln!("devbox e2e: {:.0?}", test_started.elapsed());
}

/// Makes `tiny:inside` offline in the inner daemon: the image's own dash and the libraries
/// ldd names, imported. Then `docker run` of it prints the hello line.
const TINY_IMAGE: &str =
    "cd /tmp && tar -chf tiny.tar /bin/dash $(ldd /bin/dash | grep -o '/[^ ]*') 2>/dev/null \
     && docker import tiny.tar tiny:inside >/dev/null";
const HELLO: &str = "/bin/dash -c 'echo hello from a container inside'";

/// The DinD guide's grants for rootless Docker: SYS_ADMIN, NET_ADMIN, seccomp unconfined.
const ROOTLESS_GRANTS: [&str; 6] = [
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "NET_ADMIN",
    "--security-opt",
    "seccomp=unconfined",
];

/// What running a container inside rootless Docker needs besides: /proc unmasked, or the
/// kernel refuses the inner procfs in the nested user namespace.
const UNMASKED: [&str; 2] = ["--security-opt", "systempaths=unconfined"];

fn output(out: &std::process::Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// A named volume, removed when dropped.
struct NamedVolume(String);

impl NamedVolume {
    fn new(what: &str) -> NamedVolume {
        NamedVolume(
            sh(&format!(
                "docker volume create e2e-{what}-{}",
                std::process::id()
            ))
            .trim()
            .to_string(),
        )
    }
}

impl Drop for NamedVolume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["volume", "rm", "-f", &self.0])
            .output();
    }
}

/// devbox-dind as root: the wrapper at /usr/bin/docker starts the daemon (pid in
/// /tmp/dockerd.pid), builds and runs a container inside; a data root on the root file
/// system gets a tmpfs, one on a volume (a subdirectory of /workspace) outlives the
/// container; one daemon for concurrent first calls; without privileges a clear error.
fn dind_daemon(dind: &str) {
    let script = format!(
        "command -v docker; /usr/bin/docker info --format 'server {{{{.ServerVersion}}}}' \
         && [ \"$(cat /tmp/dockerd.pid)\" = \"$(pgrep -x dockerd)\" ] && echo 'pid in /tmp/dockerd.pid' \
         && stat -f -c 'data root on %T' /var/tmp/docker-data \
         && mkdir /tmp/ctx && cd /tmp/ctx && echo hi > f && printf 'FROM scratch\\nCOPY f /f\\n' > Dockerfile \
         && docker build -q -t inner . >/dev/null && docker image inspect inner --format 'built {{{{.Id}}}}' \
         && {TINY_IMAGE} && docker run --rm tiny:inside {HELLO}"
    );
    let first = docker_run(&[
        "--privileged",
        "-e",
        "DOCKER_DATA_ROOT=/var/tmp/docker-data",
        dind,
        "sh",
        "-c",
        &script,
    ]);
    let first = output(&first);
    for line in [
        "/usr/bin/docker\n",
        "server ",
        "pid in /tmp/dockerd.pid\n",
        "data root on tmpfs\n",
        "built sha256:",
        "hello from a container inside\n",
    ] {
        assert!(first.contains(line), "{line}: {first}");
    }
    // A data root in a subdirectory of the /workspace volume is used as is, and what was
    // loaded into it is still there for the next container on that volume.
    let volume = NamedVolume::new("dind-data");
    let mount = format!("{}:/workspace", volume.0);
    let on_volume = |script: &str| {
        output(&docker_run(&[
            "--privileged",
            "-v",
            &mount,
            "-e",
            "DOCKER_DATA_ROOT=/workspace/.docker-data",
            dind,
            "sh",
            "-c",
            script,
        ]))
    };
    let loaded = on_volume(&format!(
        "{TINY_IMAGE} && stat -f -c 'data root on %T' /workspace/.docker-data && docker image ls --format 'listed {{{{.Repository}}}}:{{{{.Tag}}}}'"
    ));
    assert!(loaded.contains("listed tiny:inside"), "{loaded}");
    assert!(!loaded.contains("data root on tmpfs"), "{loaded}");
    let kept = on_volume(&format!(
        "docker image ls --format 'listed {{{{.Repository}}}}:{{{{.Tag}}}}' && docker run --rm tiny:inside {HELLO}"
    ));
    assert!(
        kept.contains("listed tiny:inside\n") && kept.contains("hello from a container inside"),
        "the image did not outlive its container on the volume: {kept}"
    );
    // Two first calls at once start exactly one daemon.
    let concurrent = docker_run(&["--privileged", dind, "sh", "-c",
        "docker info >/tmp/a 2>&1 & docker info >/tmp/b 2>&1 & wait; grep -c 'Server Version' /tmp/a /tmp/b; pgrep -c -x dockerd"]);
    let concurrent = text(&concurrent.stdout);
    let lines: Vec<&str> = concurrent.lines().collect();
    assert_eq!(lines, ["/tmp/a:1", "/tmp/b:1", "1"], "{concurrent}");
    // Without the privileges it needs, the wrapper fails with a pointer to what to do.
    let refused = docker_run(&[dind, "docker", "info"]);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains(
            "the daemon exited while starting (it needs --privileged or the Sysbox runtime"
        ),
        "{stderr}"
    );
}

/// Rootless Docker with exactly the DinD guide's grants (SYS_ADMIN, NET_ADMIN, seccomp
/// unconfined; not privileged): as UID 1000 it builds and loads images and keeps a data
/// root on a volume, and with /proc unmasked too it runs a container (no network without
/// /dev/net/tun); an arbitrary UID is refused in one line; and no user can map root through
/// newuidmap (the attack, run for real, also against the old file modes to show that it
/// would catch them).
fn rootless(image: &str) {
    let run_as = |user: &str, extra: &[&str], script: &str| {
        let mut args = vec!["--user", user];
        args.extend(ROOTLESS_GRANTS);
        args.extend(extra);
        args.extend([image, "sh", "-c", script]);
        docker_run(&args)
    };
    let script = format!(
        "docker info --format '{{{{.SecurityOptions}}}}' || {{ tail -n 15 /tmp/dockerd-rootless.log; exit 3; }}; \
         mkdir /tmp/ctx && cd /tmp/ctx && echo hi > f && printf 'FROM scratch\\nCOPY f /f\\n' > Dockerfile \
         && docker build -q -t inner . >/dev/null && docker image inspect inner --format 'built {{{{.Id}}}}' \
         && kill -0 \"$(cat /tmp/dockerd.pid)\" && echo 'pid in /tmp/dockerd.pid' \
         && {TINY_IMAGE} && docker image ls --format 'listed {{{{.Repository}}}}:{{{{.Tag}}}}'"
    );
    let out = run_as("1000:0", &[], &script);
    let stdout = text(&out.stdout);
    eprintln!(
        "rootless as 1000:0: exit {:?}\n{stdout}{}",
        out.status.code(),
        text(&out.stderr)
    );
    assert!(
        out.status.success(),
        "rootless docker as 1000:0: {}",
        output(&out)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("name=rootless"), "{stdout}");
    assert!(lines[1].starts_with("built sha256:"), "{stdout}");
    assert_eq!(lines[2], "pid in /tmp/dockerd.pid", "{stdout}");
    // Both the image built inside and the one loaded are listed, in whichever order.
    let mut listed = lines[3..].to_vec();
    listed.sort();
    assert_eq!(
        listed,
        ["listed inner:latest", "listed tiny:inside"],
        "{stdout}"
    );

    // An arbitrary UID has no subordinate IDs it could be given safely: one line, what to set.
    let refused = run_as("1000620000:0", &[], "docker info");
    let stderr = text(&refused.stderr);
    assert!(!refused.status.success(), "{}", output(&refused));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("UID 1000620000 has none; run as UID 1000 (runAsUser: 1000), or give the pod its own user namespace (hostUsers: false)"),
        "{stderr}"
    );

    // A data root on the /workspace volume keeps what was loaded for the next container,
    // which runs it: with /proc unmasked, which running a container inside needs.
    let volume = NamedVolume::new("rootless-data");
    let mount = format!("{}:/workspace", volume.0);
    let on_volume = [
        "-v",
        &mount,
        "-e",
        "DOCKER_DATA_ROOT=/workspace/.docker-data",
    ];
    let loaded = run_as(
        "1000:0",
        &on_volume,
        &format!(
            "{TINY_IMAGE} && docker image ls --format 'listed {{{{.Repository}}}}:{{{{.Tag}}}}'"
        ),
    );
    assert!(
        text(&loaded.stdout).contains("listed tiny:inside"),
        "{}",
        output(&loaded)
    );
    let unmasked = [&UNMASKED[..], &on_volume[..]].concat();
    let kept = run_as("1000:0", &unmasked, &format!("docker image ls --format 'listed {{{{.Repository}}}}:{{{{.Tag}}}}' && docker run --rm --network none tiny:inside {HELLO}"));
    let kept = output(&kept);
    assert!(
        kept.contains("listed tiny:inside\n") && kept.contains("hello from a container inside"),
        "the image did not outlive its rootless container on the volume: {kept}"
    );

    subid_attack(image);
}

/// The attack of issue 24 (tests/e2e/fixtures/subid_attack.py), as UID 1000 and as an
/// arbitrary UID, with the guide's grants: it must fail on the image, and succeed on the
/// same image with the old modes of /etc/passwd, /etc/subuid and /etc/subgid (group 0
/// writable), so the probe is known to catch the hole.
fn subid_attack(image: &str) {
    const PROBE: &str = include_str!("fixtures/subid_attack.py");
    let probe = |image: &str, user: &str, map: &str| {
        let mut args = vec!["--user", user];
        args.extend(ROOTLESS_GRANTS);
        args.extend([image, "python3", "-c", PROBE, map]);
        let out = docker_run(&args);
        let seen = output(&out);
        eprintln!("subid attack on {image} as {user}, map {map}:\n{seen}");
        assert!(out.status.success(), "{seen}");
        seen
    };
    for user in ["1000:0", "1000620000:0"] {
        // Root, and a real UID outside the range the image assigns (1: daemon).
        for map in ["0 0 1", "0 1 1"] {
            let seen = probe(image, user, map);
            assert!(
                seen.contains("/etc/subuid: not writable: Permission denied"),
                "{seen}"
            );
            assert!(seen.contains(&format!("{}: refused", map)), "{seen}");
            assert!(seen.trim_end().ends_with("\nHELD"), "{seen}");
        }
    }
    // The gate, not the probe, is what holds: the range the image assigns is granted, and
    // setuid(0) inside it works, yet root's files stay closed.
    let own = probe(image, "1000:0", "0 1000 1 1 100000 65536");
    assert!(own.contains("0 1000 1 1 100000 65536: accepted"), "{own}");
    assert!(own.contains("setuid(0) inside: ok"), "{own}");
    assert!(
        own.contains("open /etc/shadow for writing: Permission denied"),
        "{own}"
    );

    let old = format!("{image}-old-modes");
    let dockerfile = format!(
        "FROM {image}\nUSER 0:0\nRUN chgrp 0 /etc/passwd /etc/subuid /etc/subgid && chmod 0664 /etc/passwd /etc/subuid /etc/subgid\nUSER 1000:0\n"
    );
    let built = std::process::Command::new("sh")
        .args([
            "-c",
            "printf '%s' \"$1\" | docker build -q -t \"$2\" -",
            "sh",
            &dockerfile,
            &old,
        ])
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", output(&built));
    for user in ["1000:0", "1000620000:0"] {
        let seen = probe(&old, user, "0 0 1");
        assert!(seen.contains("0 0 1: accepted"), "{seen}");
        assert!(
            seen.contains("ESCALATED: opened root-owned /etc/shadow for writing"),
            "the probe did not catch the old modes as {user}: {seen}"
        );
    }
    let _ = std::process::Command::new("docker")
        .args(["image", "rm", &old])
        .output();
}

/// `docker run --rm ARGS`, killed after five minutes so a hang fails the test.
fn docker_run(args: &[&str]) -> std::process::Output {
    std::process::Command::new("timeout")
        .args(["300", "docker", "run", "--rm"])
        .args(args)
        .output()
        .unwrap()
}
