//! Real things for end-to-end tests: the xtask binary, a distribution registry on
//! loopback, a Debian base image made offline, and the machine's own package mirrors.
//!
//! The binary: `CARGO_BIN_EXE_xtask` exists only for xtask's own tests, so this crate
//! asks cargo for it, once per run: `$CARGO build -p xtask --bin xtask
//! --message-format=json` in the same target directory and dev profile that
//! `cargo xtask` uses, taking the path from the `compiler-artifact` message. Cargo holds
//! the target directory's lock while it compiles, not while the tests it built run, so
//! the nested build does not wait on the `cargo test` that started it, and a warm
//! `cargo xtask` build makes it a no-op.
//!
//! What else a test needs it names first: `need!(Registry, Skopeo);`.
//! Where something is missing the test is skipped with one line, except under
//! `CI=true`, where CI must run every test for real and a missing need fails it.

pub mod artifacts;
pub mod fixture;
pub mod proxy;
pub mod scripted;
pub mod upload;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A copy of the project's catalog and templates, to change without touching the real one.
pub fn project_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for folder in ["agents", "dockerfiles"] {
        run(
            "cp",
            &[
                "-a",
                project_root().join(folder).to_str().unwrap(),
                dir.path().to_str().unwrap(),
            ],
        );
    }
    dir
}

/// The commit time `commit_all` gives a project copy: 2026-01-02T03:04:05Z.
pub const COMMIT_TIME: u64 = 1_767_323_045;

/// Makes `dir` a git checkout with everything in one commit at `COMMIT_TIME`, as a
/// release pipeline's checkout is.
pub fn commit_all(dir: &Path) {
    let date = format!("@{COMMIT_TIME} +0000");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=e2e", "-c", "user.email=e2e@example.com"])
            .args(args)
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "e2e"]);
}

/// Pins every base of `images` in the project copy `dir` to what the mirror `prefix`
/// holds (the stand-ins, not the digests the real catalog pins).
pub fn pin_bases(dir: &Path, images: &[&str], prefix: &str) {
    let mut args = vec![
        "images",
        "bases",
        "--update",
        "--base-registry",
        prefix,
        "--json",
    ];
    args.extend(images);
    let out = xtask_in(dir, &args, &[]);
    assert!(
        out.status.success(),
        "images bases --update: {}",
        text(&out.stderr)
    );
    let bases: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!bases.is_empty());
    for base in &bases {
        let digest = base["digest"].as_str().unwrap_or_default();
        assert!(digest.starts_with("sha256:"), "{base}");
    }
}

/// Runs the xtask binary with `args`.
pub fn xtask(args: &[&str]) -> Output {
    xtask_in(&project_root(), args, &[])
}

pub fn xtask_in(project: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(xtask_binary());
    command.args(args).env("XTASK_PROJECT_DIR", project);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("running the xtask binary")
}

/// The xtask executable, built on first use (see the module comment).
pub fn xtask_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        // Not the variables cargo set for this test binary (CARGO_PKG_NAME=tests, ...):
        // build scripts that read them (ring's) would see them change and run again, and
        // rebuild reqwest and xtask, on every switch between this and a plain cargo build.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let set_by_cargo = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|prefix| key.starts_with(prefix))
                || [
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&key.as_ref());
            if set_by_cargo {
                command.env_remove(key.as_ref());
            }
        }
        let output = command
            .args([
                "build",
                "-p",
                "xtask",
                "--bin",
                "xtask",
                "--message-format=json",
            ])
            .arg("--manifest-path")
            .arg(project_root().join("Cargo.toml"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running cargo to build the xtask binary");
        assert!(output.status.success(), "cargo build -p xtask failed");
        text(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|message| {
                message["reason"] == "compiler-artifact" && message["target"]["name"] == "xtask"
            })
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no xtask executable")
    })
}

/// What a test needs besides the xtask binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A Docker daemon that answers `docker info`.
    Docker,
    /// The `docker-registry` binary (the CNCF distribution registry).
    Registry,
    Skopeo,
    /// `containerd` and `ctr`, and the root to run them.
    Containerd,
    Debootstrap,
    /// An address of this machine that is not loopback (see `other_host`).
    OtherAddress,
    /// cosign 2.x, the independent judge of signatures.
    Cosign,
    /// syft, which writes the SBOMs.
    Syft,
    /// The GitHub CLI (Debian's `gh`).
    Gh,
    /// strace, to see every command line a script runs.
    Strace,
}

impl Need {
    const ALL: [Need; 10] = [
        Need::Docker,
        Need::Registry,
        Need::Skopeo,
        Need::Containerd,
        Need::Debootstrap,
        Need::OtherAddress,
        Need::Cosign,
        Need::Syft,
        Need::Gh,
        Need::Strace,
    ];

    fn present(self) -> bool {
        static PRESENT: [OnceLock<bool>; Need::ALL.len()] =
            [const { OnceLock::new() }; Need::ALL.len()];
        *PRESENT[self as usize].get_or_init(|| match self {
            Need::Docker => succeeds("docker", &["info", "--format", "{{.ServerVersion}}"]),
            Need::Registry => succeeds("docker-registry", &["--version"]),
            Need::Skopeo => succeeds("skopeo", &["--version"]),
            Need::Containerd => {
                succeeds("containerd", &["--version"])
                    && succeeds("ctr", &["--version"])
                    && text(
                        &Command::new("id")
                            .arg("-u")
                            .output()
                            .map(|o| o.stdout)
                            .unwrap_or_default(),
                    )
                    .trim()
                        == "0"
            }
            Need::Debootstrap => succeeds("debootstrap", &["--version"]),
            Need::OtherAddress => non_loopback_address().is_some(),
            Need::Cosign => succeeds("cosign", &["version"]),
            Need::Syft => succeeds("syft", &["version"]),
            Need::Gh => succeeds("gh", &["--version"]),
            Need::Strace => succeeds("strace", &["-V"]),
        })
    }

    fn missing(self) -> &'static str {
        match self {
            Need::Docker => "no Docker daemon answers `docker info`",
            Need::Registry => "no `docker-registry` binary",
            Need::Skopeo => "no `skopeo` binary",
            Need::Containerd => "no `containerd` and `ctr`, or not root",
            Need::Debootstrap => "no `debootstrap` binary",
            Need::OtherAddress => "no address other than loopback (`hostname -I`)",
            Need::Cosign => "no `cosign` binary",
            Need::Syft => "no `syft` binary",
            Need::Gh => "no `gh` binary",
            Need::Strace => "no `strace` binary",
        }
    }
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Returns from the test unless everything named is here (see `require`):
/// `need!(Docker, Registry);` as a test's first line.
macro_rules! need {
    ($($need:ident),+ $(,)?) => {
        if !$crate::support::require(&[$($crate::support::Need::$need),+]) {
            return;
        }
    };
}
pub(crate) use need;

/// True when everything in `needs` is here. Otherwise the test is skipped with one line,
/// or, under CI=true, fails: CI must run the end-to-end path for real.
pub fn require(needs: &[Need]) -> bool {
    let missing: Vec<&str> = needs
        .iter()
        .filter(|need| !need.present())
        .map(|need| need.missing())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("test").to_string();
    let missing = missing.join(", ");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {test} cannot run: {missing} (run .ci/provision first)");
    }
    // Straight to stderr, past the test harness's capture, so the line is seen.
    let line = format!("SKIPPED {test}: {missing} (.ci/provision sets it up)\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    false
}

/// This machine's first address that is not loopback: neither relaxed as loopback is
/// nor the origin of a registry on 127.0.0.1.
pub fn other_host() -> String {
    non_loopback_address().expect("need!(OtherAddress) first")
}

fn non_loopback_address() -> Option<String> {
    let output = Command::new("hostname").arg("-I").output().ok()?;
    text(&output.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .find(|a| !a.is_loopback())
        .map(|a| a.to_string())
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command and returns stdout, failing the test with its stderr otherwise.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The stdout of an xtask run, failing the test with its output unless it succeeded.
pub fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "xtask failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The tags of a repository, per `skopeo list-tags`.
pub fn skopeo_tags(reference: &str) -> std::collections::BTreeSet<String> {
    let listed = run(
        "skopeo",
        &[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let tags = listed["Tags"].as_array().unwrap().iter();
    tags.map(|t| t.as_str().unwrap().to_string()).collect()
}

/// A self-signed certificate for the IP address `ip`, written to `cert` and `key`.
pub fn self_signed_cert(cert: &Path, key: &Path, ip: &str) {
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ip}"),
            "-addext",
            &format!("subjectAltName=IP:{ip}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The CNCF distribution registry on a free loopback port, removed when dropped.
///
/// It serves TLS with a throwaway self-signed certificate. Docker treats loopback
/// registries as insecure and skips verification, and with TLS it never takes its
/// plain-HTTP fallback, which in Docker 26.1 races under parallel pushes and can crash
/// dockerd (moby/moby#48818).
pub struct Registry {
    pub addr: String,
    _daemon: Daemon,
    tls: bool,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// A registry with TLS, for Docker to push to.
    pub fn start() -> Registry {
        Registry::spawn(true, None)
    }

    /// A registry with TLS on another of this machine's addresses, `ip`: its self-signed
    /// certificate is verified, as for any host off loopback.
    pub fn tls_on(ip: &str) -> Registry {
        Registry::spawn_on(ip, true, None, true)
    }

    /// A plain-HTTP registry, for the mirror tests' proxies to sit in front of.
    pub fn plain() -> Registry {
        Registry::spawn(false, None)
    }

    /// A plain-HTTP registry that wants `user`/`password` (htpasswd, basic auth).
    pub fn with_login(user: &str, password: &str) -> Registry {
        Registry::spawn(false, Some((user, password)))
    }

    /// A plain-HTTP registry with deletes turned off, as distribution ships.
    pub fn without_deletes() -> Registry {
        Registry::spawn_on("127.0.0.1", false, None, false)
    }

    fn spawn(tls: bool, login: Option<(&str, &str)>) -> Registry {
        Registry::spawn_on("127.0.0.1", tls, login, true)
    }

    fn spawn_on(ip: &str, tls: bool, login: Option<(&str, &str)>, deletes: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("{ip}:{port}");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let tls_config = if !tls {
            String::new()
        } else {
            self_signed_cert(&cert, &key, ip);
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            )
        };
        let auth_config = match login {
            None => String::new(),
            Some((user, password)) => {
                let htpasswd = dir.path().join("htpasswd");
                fs::write(
                    &htpasswd,
                    format!("{user}:{}\n", bcrypt::hash(password, 4).unwrap()),
                )
                .unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    htpasswd.display()
                )
            }
        };
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: {deletes}\nhttp:\n  addr: {addr}\n{tls_config}{auth_config}",
                dir.path().join("data").display(),
            ),
        )
        .unwrap();
        let daemon = Daemon::spawn(
            &format!("registry {addr}"),
            Command::new("docker-registry").arg("serve").arg(&config),
            dir.path().join("registry.log"),
        );
        let registry = Registry {
            addr,
            _daemon: daemon,
            tls,
            _dir: dir,
        };
        wait_for(&format!("registry on {}", registry.addr), || {
            matches!(http_status(&registry.url("/v2/")), Some(200 | 401))
        });
        registry
    }

    /// The self-signed certificate a TLS registry serves, which is also its CA.
    pub fn cert(&self) -> PathBuf {
        assert!(self.tls, "a plain-HTTP registry has no certificate");
        self._dir.path().join("cert.pem")
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// Every repository with its tags, walked through `/v2/_catalog` and each
    /// `/v2/<repository>/tags/list` (one page of up to 1000: the most distribution
    /// allows): all that a client can see was written. The registry
    /// lists a repository once it holds a blob, tagged or not, and answers its tag list
    /// with 404 (NAME_UNKNOWN) while it has no tag.
    pub fn catalog(&self) -> Vec<(String, Vec<String>)> {
        let get = |path: &str| -> serde_json::Value {
            let body = run("curl", &["-sk", &self.url(path)]);
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
        };
        let strings = |value: &serde_json::Value| -> Vec<String> {
            let items = value.as_array().into_iter().flatten();
            items.map(|v| v.as_str().unwrap().to_string()).collect()
        };
        let catalog = get("/v2/_catalog?n=1000");
        assert!(catalog["repositories"].is_array(), "{catalog}");
        strings(&catalog["repositories"])
            .into_iter()
            .map(|repository| {
                let tags = strings(&get(&format!("/v2/{repository}/tags/list"))["tags"]);
                (repository, tags)
            })
            .collect()
    }

    /// Every `repository:tag`.
    pub fn tags(&self) -> Vec<String> {
        let catalog = self.catalog().into_iter();
        catalog
            .flat_map(|(repository, tags)| {
                tags.into_iter().map(move |t| format!("{repository}:{t}"))
            })
            .collect()
    }

    /// Asserts that nothing at all was written: no repository, so no blob and no tag.
    pub fn assert_empty(&self, what: &str) {
        assert_eq!(self.catalog(), Vec::new(), "{what}");
    }
}

/// A background process, killed when dropped; a failing test shows its log's last lines.
struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &str, command: &mut Command, log: PathBuf) -> Daemon {
        let child = command
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({e}): run .ci/provision"));
        Daemon {
            name: name.to_string(),
            child,
            log,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            // A server error is what explains a failure, and it is rarely in the tail.
            let failed = log.lines().filter(|l| l.contains("http.response.status=5"));
            for line in failed.take(5) {
                eprintln!("{} answered 5xx:\n  {line}", self.name);
            }
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("{} log, last lines:", self.name);
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `ready` for up to 20 s.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A throwaway containerd with its own root, state and sockets, killed when dropped.
pub struct Containerd {
    pub socket: PathBuf,
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Containerd {
        // Under /tmp: a unix socket path must stay short.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}/root\"\nstate = \"{root}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{socket}\"\n[ttrpc]\n  address = \"{root}/ttrpc.sock\"\n\
                 [debug]\n  address = \"{root}/debug.sock\"\n",
                root = dir.path().display(),
                socket = socket.display()
            ),
        )
        .unwrap();
        let daemon = Daemon::spawn(
            "containerd",
            Command::new("containerd").arg("--config").arg(&config),
            dir.path().join("containerd.log"),
        );
        let containerd = Containerd {
            socket,
            _daemon: daemon,
            _dir: dir,
        };
        wait_for("containerd", || {
            containerd.ctr(&["version"]).status.success()
        });
        containerd
    }

    /// Runs `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("ctr is not installed: run .ci/provision")
    }
}

/// The status code of a GET, or None when nothing answers. Loopback only: no TLS check.
pub fn http_status(url: &str) -> Option<u16> {
    curl_status(&[url])
}

fn curl_status(args: &[&str]) -> Option<u16> {
    let output = Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(args)
        .output()
        .ok()?;
    text(&output.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|code| *code != 0)
}

/// The URI of the Debian mirror this machine's apt uses, or `$DEBIAN_MIRROR` (a runner
/// that is not Debian, like GitHub's Ubuntu, has none).
pub fn debian_mirror() -> String {
    if let Some(uri) = std::env::var("DEBIAN_MIRROR")
        .ok()
        .filter(|u| !u.is_empty())
    {
        return uri;
    }
    let sources = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    if let Some(uri) = sources.lines().find_map(|l| l.strip_prefix("URIs:")) {
        return uri.split_whitespace().next().unwrap().to_string();
    }
    let list = fs::read_to_string("/etc/apt/sources.list").expect("no apt sources on this machine");
    list.lines()
        .find_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words.first() == Some(&"deb")).then(|| words[1].to_string())
        })
        .expect("no deb line in /etc/apt/sources.list")
}

/// The npm registry this machine uses.
pub fn npm_registry() -> String {
    run("npm", &["config", "get", "registry"])
        .trim()
        .to_string()
}

pub const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A Debian bookworm minbase rootfs for this machine's architecture, made with
/// debootstrap from the machine's mirror, as a tarball cached under target/.
pub fn debian_rootfs_tarball() -> PathBuf {
    debian_rootfs_tarball_for(None)
}

/// The same for a foreign `arch` (Debian's name): debootstrap's second stage runs under
/// qemu, which takes minutes, so the tarball is cached per architecture.
pub fn debian_rootfs_tarball_for(arch: Option<&str>) -> PathBuf {
    let cache = project_root().join("target/e2e-cache");
    fs::create_dir_all(&cache).unwrap();
    let name = match arch {
        None => "debian-bookworm-minbase".to_string(),
        Some(arch) => format!("debian-bookworm-minbase-{arch}"),
    };
    let tarball = cache.join(format!("{name}.tar"));
    let lock = fs::File::create(cache.join(format!("{name}.lock"))).unwrap();
    lock.lock().unwrap();
    if !tarball.exists() {
        let rootfs = tempfile::tempdir_in(&cache).unwrap();
        let target = rootfs.path().join("root");
        let arch_flag = arch.map(|a| format!("--arch={a}"));
        let mut args: Vec<&str> = arch_flag.iter().map(String::as_str).collect();
        let mirror = debian_mirror();
        args.extend([
            "--variant=minbase",
            "bookworm",
            target.to_str().unwrap(),
            &mirror,
        ]);
        run("debootstrap", &args);
        for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
            for entry in fs::read_dir(target.join(dir)).unwrap().flatten() {
                if entry.path().is_file() {
                    fs::remove_file(entry.path()).unwrap();
                }
            }
        }
        let partial = cache.join(format!("{name}.tar.partial"));
        run(
            "tar",
            &[
                "-C",
                target.to_str().unwrap(),
                "-cf",
                partial.to_str().unwrap(),
                ".",
            ],
        );
        fs::rename(&partial, &tarball).unwrap();
    }
    tarball
}

/// Imports the cached rootfs and pushes it as `<registry>/<path>`.
pub fn push_base_image(reference: &str) {
    let tarball = debian_rootfs_tarball();
    run("docker", &["import", tarball.to_str().unwrap(), reference]);
    run("docker", &["push", "--quiet", reference]);
}

/// Pushes a real two-platform base (linux/amd64 and linux/arm64, each its own
/// debootstrap) as an index, so an arm64 build runs arm64 binaries, not amd64 ones
/// under an arm64 label as a single-arch `docker import` would.
pub fn push_two_platform_base_image(reference: &str) {
    let native = run("dpkg", &["--print-architecture"]);
    let cache = project_root().join("target/e2e-cache");
    fs::create_dir_all(&cache).unwrap();
    // Hard links need the context on the cache's file system.
    let context = tempfile::tempdir_in(&cache).unwrap();
    for arch in ["amd64", "arm64"] {
        let tarball = debian_rootfs_tarball_for((arch != native.trim()).then_some(arch));
        fs::hard_link(&tarball, context.path().join(format!("rootfs-{arch}.tar"))).unwrap();
    }
    fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nARG TARGETARCH\nADD rootfs-${TARGETARCH}.tar /\nCMD [\"bash\"]\n",
    )
    .unwrap();
    run(
        "docker",
        &[
            "buildx",
            "build",
            "--quiet",
            "--platform",
            "linux/amd64,linux/arm64",
            "--provenance=false",
            "--tag",
            reference,
            "--push",
            context.path().to_str().unwrap(),
        ],
    );
}

/// `skopeo inspect <flag>` of a reference in a loopback registry: the exact text.
pub fn skopeo_inspect(flag: &str, reference: &str) -> String {
    run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            flag,
            &format!("docker://{reference}"),
        ],
    )
}

/// `skopeo inspect --raw`, parsed.
pub fn skopeo_raw(reference: &str) -> serde_json::Value {
    serde_json::from_str(&skopeo_inspect("--raw", reference)).expect("skopeo printed JSON")
}

pub fn skopeo_config(reference: &str) -> serde_json::Value {
    serde_json::from_str(&skopeo_inspect("--config", reference)).expect("skopeo printed JSON")
}

/// The status of a manifest HEAD that accepts every manifest type, so an OCI index is
/// not reported missing for want of an Accept header.
pub fn manifest_status(url: &str) -> Option<u16> {
    let accept = "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
    curl_status(&["-I", "-H", accept, url])
}

/// `images verify --json`'s outcomes; panics with verify's stderr when it printed none.
pub fn verify_outcomes(verify: &Output) -> serde_json::Value {
    serde_json::from_slice(&verify.stdout)
        .unwrap_or_else(|_| panic!("verify printed no JSON: {}", text(&verify.stderr)))
}

/// The outcomes of a verify that must pass: every check, for the failure message.
pub fn passing_outcomes(verify: &Output) -> serde_json::Value {
    let outcomes = verify_outcomes(verify);
    assert!(
        verify.status.success(),
        "verify: {}\n{outcomes:#}",
        text(&verify.stderr)
    );
    outcomes
}

/// The flags that name a test build's images: `--registry R --org e2e --version V`.
pub fn e2e_naming<'a>(registry: &'a str, version: &'a str) -> [&'a str; 6] {
    ["--registry", registry, "--org", "e2e", "--version", version]
}
