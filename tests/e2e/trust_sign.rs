//! `--sign` and `--sbom` on a throwaway catalog of one tiny two-platform image that
//! carries the host's busybox (a package syft recognises). Real dockerd, a real
//! registry, and cosign 2.5 as the independent judge of what we signed and attested.

use crate::support::fixture::raw_digest;
use crate::support::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PASSWORD_PREFIX: &str = "pw-e2e-";

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// A catalog of `base`, for linux/amd64 and linux/arm64, with /bin/busybox in it.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    write(
        &p.join("dockerfiles/base.Dockerfile.j2"),
        b"FROM scratch\nCOPY hello.txt /hello.txt\nCOPY busybox /bin/busybox\n",
    );
    write(
        &p.join("agents/base/image.toml"),
        b"description = \"test\"\ntemplate = \"base.Dockerfile.j2\"\n\
          platforms = [\"linux/amd64\", \"linux/arm64\"]\n",
    );
    write(
        &p.join("agents/base/hello.txt"),
        format!("{}\n", fastrand::u64(..)).as_bytes(),
    );
    write(
        &p.join("agents/base/busybox"),
        &fs::read("/bin/busybox").expect("/bin/busybox (busybox-static): run .ci/provision"),
    );
    // A lock entry for it, so `images sbom` has a tool to find; copied, not downloaded,
    // so there is no published digest to pin.
    write(
        &p.join("agents/base/tools.toml"),
        format!(
            "[tools.busybox]\nversion = \"{}\"\n\
             url = \"https://busybox.net/downloads/busybox-{{version}}.tar.bz2\"\n\
             sha256 = {{ amd64 = \"\", arm64 = \"\" }}\n\
             source = \"e2e fixture: the host's /bin/busybox, copied into the context\"\n",
            busybox_version()
        )
        .as_bytes(),
    );
    dir
}

/// The host busybox's version, from its banner (`BusyBox v1.35.0 (Debian ...)`).
fn busybox_version() -> String {
    let out = Command::new("/bin/busybox").output().unwrap();
    let banner = text(&out.stdout);
    let word = banner.split_whitespace().nth(1).unwrap_or_default();
    word.trim_start_matches('v').to_string()
}

/// A throwaway cosign key pair under a random password.
struct Keys {
    dir: tempfile::TempDir,
    password: String,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let password = format!("{PASSWORD_PREFIX}{}", fastrand::u64(..));
        let out = Command::new("cosign")
            .args(["generate-key-pair"])
            .current_dir(dir.path())
            .env("COSIGN_PASSWORD", &password)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        Keys { dir, password }
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("cosign.key")
    }

    fn public(&self) -> String {
        self.dir.path().join("cosign.pub").display().to_string()
    }

    /// What must never show: the password, and every line of the private key's body.
    fn secrets(&self) -> Vec<String> {
        let key = fs::read_to_string(self.key()).unwrap();
        let mut secrets: Vec<String> = key
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16)
            .map(String::from)
            .collect();
        assert!(!secrets.is_empty());
        secrets.push(self.password.clone());
        secrets
    }
}

struct Site {
    project: tempfile::TempDir,
    registry: Registry,
}

impl Site {
    fn new() -> Site {
        Site {
            project: project(),
            registry: Registry::start(),
        }
    }

    fn xtask(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--registry", &self.registry.addr, "--org", "e2e"]);
        all.extend(["--version", "v1.0.0"]);
        xtask_in(self.project.path(), &all, env)
    }

    fn repository(&self) -> String {
        format!("{}/e2e/kubeopencode-agent-base", self.registry.addr)
    }

    /// The index under v1.0.0 and its platform manifests, by digest.
    fn pushed(&self) -> (String, Vec<String>) {
        let tag = format!("{}:v1.0.0", self.repository());
        let (digest, index) = raw_digest(&tag);
        let platforms = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["platform"]["os"] == "linux")
            .map(|m| m["digest"].as_str().unwrap().to_string())
            .collect::<Vec<_>>();
        assert_eq!(platforms.len(), 2, "{index}");
        (digest, platforms)
    }

    fn at(&self, digest: &str) -> String {
        format!("{}@{digest}", self.repository())
    }
}

fn cosign(args: &[&str]) -> Output {
    Command::new("cosign").args(args).output().unwrap()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Asserts no secret is in `bytes`, gunzipping a gzip layer first.
fn assert_no_secret(what: &str, bytes: &[u8], secrets: &[String]) {
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut child = Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = bytes.to_vec();
        let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        out.stdout
    } else {
        bytes.to_vec()
    };
    let haystack = String::from_utf8_lossy(&bytes);
    for secret in secrets {
        assert!(
            !haystack.contains(secret.as_str()),
            "{what} carries a secret"
        );
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn key_signed_images_and_their_sboms_verify_with_cosign_and_leak_no_secret() {
    need!(Docker, Registry, Skopeo, Cosign, Syft);
    let site = Site::new();
    let keys = Keys::new();
    let key = keys.key().display().to_string();
    let env = [("COSIGN_PASSWORD", keys.password.as_str())];
    let secrets = keys.secrets();
    let sign = ["--sign", "--sbom", "--sign-key", &key];

    // --dry-run shows the cosign and syft commands, and no secret.
    for json in [false, true] {
        let mut args = vec!["images", "build", "--push", "--dry-run"];
        args.extend(sign);
        if json {
            args.push("--json");
        }
        let out = site.xtask(&args, &env);
        assert_ok(&out, "dry run");
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("cosign sign --recursive --yes --key"),
            "{stdout}"
        );
        assert!(stdout.contains("@<index digest>"), "{stdout}");
        assert!(stdout.contains("cosign attest --type spdxjson"), "{stdout}");
        assert_no_secret("the dry run's stdout", &out.stdout, &secrets);
        assert_no_secret("the dry run's stderr", &out.stderr, &secrets);
    }
    site.registry.assert_empty("a dry run pushes nothing");

    let mut args = vec!["images", "build", "--push", "--progress", "plain"];
    args.extend(sign);
    let out = site.xtask(&args, &env);
    assert_ok(&out, "build --push --sign --sbom");
    assert_no_secret("the build's stdout", &out.stdout, &secrets);
    assert_no_secret("the build's stderr", &out.stderr, &secrets);

    // cosign, independently: the index and each platform manifest carry our signature,
    // and each platform image an SPDX attestation by the same key.
    let (index, platforms) = site.pushed();
    let public = keys.public();
    let verify = |what: &str, digest: &str| {
        let reference = site.at(digest);
        let mut args = vec!["verify", "--key", &public, "--insecure-ignore-tlog"];
        args.extend(["--allow-insecure-registry", &reference]);
        assert_ok(&cosign(&args), &format!("cosign verify {what}"));
    };
    verify("the index", &index);
    for platform in &platforms {
        verify("a platform manifest", platform);
        let reference = site.at(platform);
        let args = [
            "verify-attestation",
            "--type",
            "spdxjson",
            "--key",
            &public,
            "--insecure-ignore-tlog",
            "--allow-insecure-registry",
            &reference,
        ];
        assert_ok(&cosign(&args), "cosign verify-attestation");
    }
    let tags = site.registry.tags();
    let sig = format!("{}.sig", index.replace(':', "-"));
    assert!(tags.iter().any(|t| t.ends_with(&sig)), "{tags:?}");

    // Another key is refused: the check above means something.
    let other = Keys::new();
    let reference = site.at(&index);
    let args = ["verify", "--key", &other.public(), "--insecure-ignore-tlog"];
    let mut args = args.to_vec();
    args.extend(["--allow-insecure-registry", &reference]);
    assert!(!cosign(&args).status.success(), "another key verified");

    // `images sbom` reads the attestation back and lists busybox, which is in the image.
    for platform in ["linux/amd64", "linux/arm64"] {
        let out = site.xtask(
            &["images", "sbom", "base", "--platform", platform, "--json"],
            &[],
        );
        assert_ok(&out, "images sbom --json");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let packages = report["packages"].as_array().unwrap();
        assert!(
            packages
                .iter()
                .any(|p| p["name"] == "busybox"
                    && p["version"].as_str().is_some_and(|v| !v.is_empty())),
            "{report}"
        );
        assert!(platforms.contains(&report["digest"].as_str().unwrap().to_string()));
        let tools = report["tools_lock"].as_array().unwrap();
        assert_eq!(tools[0]["tool"], "busybox", "{report}");
        assert_eq!(tools[0]["in_sbom"][0], busybox_version(), "{report}");
    }
    let out = site.xtask(
        &["images", "sbom", "base", "--platform", "linux/amd64"],
        &[],
    );
    assert_ok(&out, "images sbom");
    let table = text(&out.stdout);
    assert!(table.lines().any(|l| l.starts_with("busybox ")), "{table}");

    // No secret in the bake files, the SBOMs, or any blob of the image.
    let out_dir = site.project.path().join("target/images");
    let written = files_under(&out_dir);
    assert!(
        written.iter().any(|f| f.ends_with("bake.json")),
        "{written:?}"
    );
    for file in &written {
        let what = file.display().to_string();
        assert_no_secret(&what, &fs::read(file).unwrap(), &secrets);
    }
    let copy = tempfile::tempdir().unwrap();
    for digest in platforms.iter().chain([&index]) {
        let dest = copy.path().join(digest.replace(':', "-"));
        run(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{}", site.at(digest)),
                &format!("dir:{}", dest.display()),
            ],
        );
    }
    let blobs = files_under(copy.path());
    assert!(blobs.len() > 4, "{blobs:?}");
    for blob in blobs {
        assert_no_secret(
            &blob.display().to_string(),
            &fs::read(&blob).unwrap(),
            &secrets,
        );
    }
}

/// A throwaway site CA and a leaf certificate for `keys`' public key, with an email
/// identity and the OIDC-issuer extension cosign reads (1.3.6.1.4.1.57264.1.1).
fn site_ca(keys: &Keys) -> (String, String) {
    let dir = keys.dir.path();
    let path = |name: &str| dir.join(name).display().to_string();
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=e2e site CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &path("ca.key"),
            "-out",
            &path("ca.pem"),
        ],
    );
    // A throwaway request: -force_pubkey puts cosign's public key in the certificate.
    run(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=release",
            "-keyout",
            &path("csr.key"),
            "-out",
            &path("leaf.csr"),
        ],
    );
    let issuer: String = ISSUER
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    fs::write(
        dir.join("leaf.ext"),
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=codeSigning\nsubjectAltName=email:{IDENTITY}\n\
             1.3.6.1.4.1.57264.1.1=DER:{issuer}\n"
        ),
    )
    .unwrap();
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &path("leaf.csr"),
            "-force_pubkey",
            &keys.public(),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &path("leaf.ext"),
            "-out",
            &path("leaf.pem"),
        ],
    );
    (path("leaf.pem"), path("ca.pem"))
}

const IDENTITY: &str = "release@e2e.example";
const ISSUER: &str = "https://ci.e2e.example";

#[test]
fn merged_images_signed_with_a_site_ca_verify_with_cosign() {
    need!(Docker, Registry, Skopeo, Cosign, Syft);
    let site = Site::new();
    let keys = Keys::new();
    let (cert, chain) = site_ca(&keys);
    let key = keys.key().display().to_string();
    let env = [("COSIGN_PASSWORD", keys.password.as_str())];
    let runners = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for platform in ["linux/amd64", "linux/arm64"] {
        let dir = runners.path().join(platform.replace('/', "-"));
        let dir = dir.display().to_string();
        let args = [
            "images",
            "build",
            "--push",
            "--progress",
            "quiet",
            "--platform",
            platform,
            "--by-digest",
            &dir,
        ];
        assert_ok(&site.xtask(&args, &[]), "build --by-digest");
        dirs.push(dir);
    }
    let mut args = vec!["images", "merge"];
    args.extend(dirs.iter().map(String::as_str));
    args.extend(["--sign", "--sbom", "--sign-key", &key, "--sign-cert", &cert]);
    args.extend(["--sign-cert-chain", &chain]);
    let out = site.xtask(&args, &env);
    assert_ok(&out, "merge --sign");
    assert_no_secret(
        "merge's output",
        &[out.stdout, out.stderr].concat(),
        &keys.secrets(),
    );

    let (index, platforms) = site.pushed();
    let verify = |digest: &str, identity: &str, command: &[&str]| {
        let reference = site.at(digest);
        let mut args = command.to_vec();
        args.extend([
            "--certificate-chain",
            &chain,
            "--certificate-identity",
            identity,
            "--certificate-oidc-issuer",
            ISSUER,
            "--insecure-ignore-tlog",
            "--insecure-ignore-sct",
            "--allow-insecure-registry",
            &reference,
        ]);
        cosign(&args)
    };
    for digest in platforms.iter().chain([&index]) {
        assert_ok(
            &verify(digest, IDENTITY, &["verify"]),
            "cosign verify with the site CA",
        );
    }
    let attestation = ["verify-attestation", "--type", "spdxjson"];
    for digest in &platforms {
        assert_ok(
            &verify(digest, IDENTITY, &attestation),
            "cosign verify-attestation with the site CA",
        );
    }
    assert!(
        !verify(&index, "someone@e2e.example", &["verify"])
            .status
            .success(),
        "another identity verified"
    );
}

/// Lines of stderr, for the one-line checks.
fn one_line(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}

#[test]
fn bad_signing_input_is_one_line_and_pushes_nothing() {
    need!(Registry, Cosign);
    let site = Site::new();
    let keys = Keys::new();
    let key = keys.key().display().to_string();
    let env = [("COSIGN_PASSWORD", keys.password.as_str())];

    let line = one_line(&site.xtask(&["images", "build", "--sign", "--sign-key", &key], &env));
    assert_eq!(line, "error: --sign signs what is pushed: add --push");

    let by_digest = ["images", "build", "--push", "--by-digest", "d", "--sign"];
    let line = one_line(&site.xtask(&[&by_digest[..], &["--sign-key", &key]].concat(), &env));
    assert!(line.contains("pass --sign to `images merge`"), "{line}");

    let line = one_line(&site.xtask(&["images", "build", "--push", "--sign"], &env));
    assert!(line.contains("--sign needs a signer"), "{line}");

    let missing = keys.dir.path().join("missing.key").display().to_string();
    let args = [
        "images",
        "build",
        "--push",
        "--sign",
        "--sign-key",
        &missing,
    ];
    let line = one_line(&site.xtask(&args, &env));
    assert!(
        line.starts_with(&format!("error: --sign-key {missing}: cannot read it")),
        "{line}"
    );

    let wrong = format!("{PASSWORD_PREFIX}wrong-{}", fastrand::u64(..));
    let args = ["images", "build", "--push", "--sign", "--sign-key", &key];
    let out = site.xtask(&args, &[("COSIGN_PASSWORD", &wrong)]);
    let line = one_line(&out);
    assert!(
        line.contains("COSIGN_PASSWORD must hold its password"),
        "{line}"
    );
    assert!(!line.contains(&wrong), "{line}");
    assert_no_secret("the refusal", &out.stderr, &keys.secrets());

    site.registry
        .assert_empty("refused up front: nothing pushed");
}

#[test]
fn keyless_dry_run_shows_cosign_by_digest_with_no_key() {
    let project = project();
    let args = [
        "images",
        "build",
        "--push",
        "--sign",
        "--sbom",
        "--sign-keyless",
        "--dry-run",
        "--registry",
        "r.e2e.example",
        "--org",
        "e2e",
    ];
    let out = xtask_in(project.path(), &args, &[]);
    assert_ok(&out, "dry run");
    let stdout = text(&out.stdout);
    let repository = "r.e2e.example/e2e/kubeopencode-agent-base";
    assert!(
        stdout.contains(&format!(
            "cosign sign --recursive --yes '{repository}@<index digest>'"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("'registry:{repository}@<platform digest>'")),
        "{stdout}"
    );
    assert!(!stdout.contains("--key"), "{stdout}");
    assert!(!stdout.contains("--tlog-upload=false"), "{stdout}");
}

#[test]
fn an_image_pushed_unsigned_is_signed_by_a_rerun_once() {
    need!(Docker, Registry, Skopeo, Cosign);
    let site = Site::new();
    let keys = Keys::new();
    let key = keys.key().display().to_string();
    let env = [("COSIGN_PASSWORD", keys.password.as_str())];
    let build = ["images", "build", "--push", "--progress", "quiet", "--json"];
    assert_ok(&site.xtask(&build, &[]), "build --push");
    let (index, _) = site.pushed();
    let line = one_line(&site.xtask(&["images", "sbom", "base"], &[]));
    assert!(line.contains("no SBOM attestation"), "{line}");
    let signed = || {
        let mut args = build.to_vec();
        args.extend(["--sign", "--sign-key", &key]);
        let out = site.xtask(&args, &env);
        assert_ok(&out, "build --push --sign");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report[0]["status"], "up to date", "{report}");
        text(&out.stderr)
    };
    let first = signed();
    assert!(
        first.contains(&format!("==> signed {}", site.at(&index))),
        "{first}"
    );
    let public = keys.public();
    let reference = site.at(&index);
    let args = ["verify", "--key", &public, "--insecure-ignore-tlog"];
    let mut args = args.to_vec();
    args.extend(["--allow-insecure-registry", &reference]);
    assert_ok(&cosign(&args), "cosign verify after the re-run");
    let second = signed();
    assert!(!second.contains("==> signed"), "signed twice: {second}");
}
