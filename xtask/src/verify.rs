//! `images verify`: the operator's conventions and each image's declared checks, run in
//! containers against the built image, as the image's own user and again as an
//! OpenShift-style arbitrary UID in group 0, under the restricted pod-security profile.

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::catalog::{Catalog, CommandCheck, FileCheck, MetadataCheck, Role, VerifySpec};
use crate::cli::{RoleArg, VerifyArgs};
use crate::docker::{self, Finished};
use crate::report::table;
use crate::text::printable;

mod setuid;

/// The UID OpenShift's restricted SCC picks from a namespace range, always in group 0.
pub const ARBITRARY_UID: &str = "1000620000:0";

/// The restricted profile: what `restricted` pod security and OpenShift's restricted SCC
/// leave a container, with an `emptyDir` at /tmp.
const RESTRICTED: &[&str] = &[
    "--read-only",
    "--tmpfs",
    "/tmp:rw,exec,nosuid,nodev,mode=1777",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
];

/// Nothing under these may belong to a UID other than root (an archive unpacked as root
/// keeps its builder's UID unless told not to).
const ROOT_OWNED: &[&str] = &["/usr/local", "/opt"];

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// One image to check.
pub struct Subject {
    pub name: String,
    pub reference: String,
    pub role: Role,
    pub spec: VerifySpec,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub image: String,
    pub check: String,
    /// The user the container ran as; None for metadata checks.
    pub user: Option<String>,
    pub restricted: bool,
    pub passed: bool,
    pub detail: String,
}

impl VerifyArgs {
    pub fn run(self, ctx: &crate::context::Ctx) -> Result<()> {
        let root = ctx.root.as_path();
        // One catalog load serves the subjects and the init image of the two-container check.
        let catalog = Catalog::load(root)?;
        let publish = self.publish.publish();
        let subjects = match &self.reference {
            Some(reference) => {
                crate::naming::ImageRef::parse(reference).map_err(|e| anyhow!("--ref: {e}"))?;
                let role = match self.role {
                    RoleArg::Executor => Role::Executor,
                    RoleArg::Init => Role::Init,
                    RoleArg::Other => Role::Other,
                };
                vec![Subject {
                    name: reference.clone(),
                    reference: reference.clone(),
                    role,
                    spec: VerifySpec::default(),
                }]
            }
            None => catalog_subjects(&catalog, &self.images, &publish)?,
        };
        let tools_image = match &self.tools_image {
            Some(reference) => Some(reference.clone()),
            None => catalog_init_image(&catalog, &publish)?,
        };
        let check = Check {
            subjects,
            tools_image,
            engine: Engine {
                platform: self.platform.clone(),
                local: self.local,
                jobs: self.jobs.map(usize::from),
            },
        };
        let report = check.run()?;
        report.print(&mut std::io::stdout(), self.json)?;
        report.verdict()
    }
}

/// What to check and where. `images verify` builds it from its flags, `build --check`
/// from the images it built; both then print the report and take its verdict.
pub struct Check {
    pub subjects: Vec<Subject>,
    /// The init image for the two-container check.
    pub tools_image: Option<String>,
    pub engine: Engine,
}

impl Check {
    /// The catalog images named (all when none) and the catalog's init image, as
    /// published under `publish`.
    pub fn for_catalog(
        catalog: &Catalog,
        names: &[String],
        publish: &crate::naming::Publish,
        engine: Engine,
    ) -> Result<Check> {
        Ok(Check {
            subjects: catalog_subjects(catalog, names, publish)?,
            tools_image: catalog_init_image(catalog, publish)?,
            engine,
        })
    }

    pub fn run(&self) -> Result<Report> {
        let outcomes = verify(&self.subjects, self.tools_image.as_deref(), &self.engine)?;
        Ok(Report { outcomes })
    }
}

/// Every check's outcome; as JSON, the list itself.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
}

impl Report {
    pub fn print(&self, out: &mut dyn std::io::Write, json: bool) -> Result<()> {
        if json {
            writeln!(out, "{}", serde_json::to_string_pretty(&self.outcomes)?)?;
        } else {
            write!(out, "{}", text(&self.outcomes))?;
        }
        Ok(())
    }

    /// The exit status: an error naming the first failed check, when any failed.
    pub fn verdict(&self) -> Result<()> {
        let outcomes = &self.outcomes;
        let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.passed).collect();
        if failed.is_empty() {
            return Ok(());
        }
        let first = failed[0];
        bail!(
            "{} of {} checks failed; first: {}: {} as {}: {}",
            failed.len(),
            outcomes.len(),
            first.image,
            first.check,
            first.user.as_deref().unwrap_or("-"),
            first.detail
        );
    }
}

fn catalog_subjects(
    catalog: &Catalog,
    names: &[String],
    publish: &crate::naming::Publish,
) -> Result<Vec<Subject>> {
    let published = catalog.published(names, publish)?;
    Ok(published
        .into_iter()
        .map(|(image, reference)| Subject {
            name: image.name.clone(),
            reference: reference.to_string(),
            role: image.spec.role,
            spec: image.spec.verify.clone(),
        })
        .collect())
}

/// The catalog's init image under the naming flags, for the two-container check.
fn catalog_init_image(
    catalog: &Catalog,
    publish: &crate::naming::Publish,
) -> Result<Option<String>> {
    let init = catalog
        .images
        .values()
        .find(|image| image.spec.role == Role::Init);
    init.map(|image| Ok(publish.reference(&image.name)?.to_string()))
        .transpose()
}

/// Where the containers run: the platform, and whether to use the engine's copies as
/// they are rather than pull them first.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub platform: Option<String>,
    pub local: bool,
    /// Images checked at once (default: the CPUs): an emulated platform is CPU-bound.
    pub jobs: Option<usize>,
}

fn verify(
    subjects: &[Subject],
    tools_image: Option<&str>,
    engine: &Engine,
) -> Result<Vec<Outcome>> {
    docker::require_daemon()?;
    let mut outcomes = Vec::new();
    // Pulled first, even when it is a subject too: every image's checks run it, so it
    // stays until the last of them.
    let _tools_pulled = tools_image
        .map(|tools_image| {
            docker::inspect_image(tools_image, engine.platform.as_deref(), engine.local)
        })
        .transpose()?;
    let jobs = engine
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, subjects.len().max(1));
    // Each image's checks stay in order; images run `jobs` at a time, reported in order.
    let results: Vec<std::sync::Mutex<Option<Result<Vec<Outcome>>>>> =
        subjects.iter().map(|_| Default::default()).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(subject) = subjects.get(index) else {
                    break;
                };
                eprintln!("==> verifying {} ({})", subject.name, subject.reference);
                let result = Checker::new(subject, tools_image, engine).map(Checker::run_all);
                *results[index].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
            });
        }
    });
    for result in results {
        let result = result.into_inner().unwrap_or_else(|e| e.into_inner());
        outcomes.extend(result.expect("every image was taken by a worker")?);
    }
    Ok(outcomes)
}

fn text(outcomes: &[Outcome]) -> String {
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let user = match (&o.user, o.restricted) {
                (Some(user), true) => format!("{user} (restricted)"),
                (Some(user), false) => user.clone(),
                (None, _) => "-".into(),
            };
            vec![
                o.image.clone(),
                o.check.clone(),
                user,
                if o.passed { "ok" } else { "FAIL" }.into(),
                o.detail.clone(),
            ]
        })
        .collect();
    table(&["IMAGE", "CHECK", "USER", "RESULT", "DETAIL"], &rows)
}

struct Checker<'a> {
    subject: &'a Subject,
    config: serde_json::Value,
    /// The image's architecture (`amd64`), to tell an emulated run.
    architecture: String,
    tools_image: Option<&'a str>,
    platform: Option<&'a str>,
    restricted: bool,
    users: Vec<Option<String>>,
    outcomes: std::cell::RefCell<Vec<Outcome>>,
    /// Removes the image once its checks are done, if they pulled it.
    _pulled: docker::Pulled,
}

static CONTAINERS: AtomicUsize = AtomicUsize::new(0);

fn container_name() -> String {
    format!(
        "xtask-verify-{}-{}",
        std::process::id(),
        CONTAINERS.fetch_add(1, Ordering::Relaxed)
    )
}

impl<'a> Checker<'a> {
    fn new(
        subject: &'a Subject,
        tools_image: Option<&'a str>,
        engine: &'a Engine,
    ) -> Result<Checker<'a>> {
        let platform = engine.platform.as_deref();
        let (inspected, pulled) =
            docker::inspect_image(&subject.reference, platform, engine.local)?;
        let config = inspected["Config"].clone();
        let architecture = inspected["Architecture"].as_str().unwrap_or("").to_string();
        let conventions = subject.role != Role::Other;
        let skipped = |name: &str| subject.spec.skip.contains_key(name);
        let restricted =
            subject.spec.restricted.unwrap_or(conventions) && !skipped("restricted-profile");
        // None: the image's own user, as `docker run` and a pod without runAsUser use it.
        let mut users = vec![None];
        if !skipped("arbitrary-uid") {
            users.push(Some(ARBITRARY_UID.to_string()));
        }
        Ok(Checker {
            subject,
            config,
            architecture,
            tools_image,
            platform,
            restricted,
            users,
            outcomes: Default::default(),
            _pulled: pulled,
        })
    }

    fn run_all(self) -> Vec<Outcome> {
        let spec = &self.subject.spec;
        for (check, reason) in &spec.skip {
            self.record(check, None, true, format!("skipped: {reason}"));
        }
        match self.subject.role {
            Role::Executor => self.executor_conventions(),
            Role::Init => self.init_conventions(),
            Role::Other => {}
        }
        // Every role: an unpacked archive's owner must not own what the image installs.
        if self.wanted("root-owned") {
            self.root_owned();
        }
        if self.wanted("setuid-trust") {
            self.setuid_trust();
        }
        if let Some(metadata) = &spec.metadata {
            self.metadata(metadata);
        }
        for file in &spec.files {
            self.file(file);
        }
        for command in &spec.commands {
            self.command(command);
        }
        self.outcomes.into_inner()
    }

    fn wanted(&self, check: &str) -> bool {
        !self.subject.spec.skip.contains_key(check)
    }

    fn record(&self, check: &str, user: Option<&str>, passed: bool, detail: String) {
        self.outcomes.borrow_mut().push(Outcome {
            image: self.subject.name.clone(),
            check: check.to_string(),
            user: user.map(String::from),
            restricted: user.is_some() && self.restricted,
            passed,
            detail,
        });
    }

    /// The label for a run as `user`: the image's own user shows what it is.
    fn user_label(&self, user: &Option<String>) -> String {
        match user {
            Some(user) => user.clone(),
            None => match self.config["User"].as_str().filter(|u| !u.is_empty()) {
                Some(own) => format!("{own} (image user)"),
                None => "root (image user)".into(),
            },
        }
    }

    fn executor_conventions(&self) {
        self.expect_user();
        if self.wanted("home") {
            let home = self.env("HOME");
            self.record(
                "home",
                None,
                home.as_deref() == Some("/tmp"),
                format!("HOME={}", home.unwrap_or_else(|| "(unset)".into())),
            );
        }
        if self.wanted("workdir") {
            let workdir = self.config["WorkingDir"].as_str().unwrap_or("");
            self.record(
                "workdir",
                None,
                workdir == "/workspace",
                format!(
                    "WORKDIR {}",
                    if workdir.is_empty() {
                        "(unset)"
                    } else {
                        workdir
                    }
                ),
            );
        }
        for user in &self.users {
            self.shell_check(
                "home-writable",
                user,
                &[],
                r#"[ "$HOME" = /tmp ] || { echo "HOME is $HOME, not /tmp"; exit 1; }; : > "$HOME/.verify-probe" && echo "wrote $HOME/.verify-probe""#,
            );
            // A fresh volume takes the image's /workspace owner and mode, as a plain
            // `docker run -v` does.
            self.shell_check(
                "workspace-writable",
                user,
                &["-v", "/workspace"],
                r#": > /workspace/.verify-probe && echo "wrote /workspace/.verify-probe""#,
            );
            self.shell_check(
                "tools-mountable",
                user,
                &["-v", "/tools"],
                r#"[ -d /tools ] && echo "/tools is a directory" || { echo "/tools is missing"; exit 1; }"#,
            );
            self.default_command(user);
            self.opencode_from_tools(user);
        }
    }

    fn init_conventions(&self) {
        self.expect_user();
        for user in &self.users {
            if !self.wanted("copies-to-tools") {
                break;
            }
            let volume = Volume::create();
            let mount = ["-v".to_string(), format!("{}:/tools", volume.0)];
            let copied = self.container(user, &mount, None, &[]);
            let result = copied.and_then(|copy| {
                if copy.exit_code != Some(0) {
                    bail!("{}", exit_detail(&copy));
                }
                let probe = self.container(
                    user,
                    &mount,
                    Some("/bin/sh"),
                    &[
                        "-c".into(),
                        "[ -x /tools/opencode ] && echo '/tools/opencode is executable'".into(),
                    ],
                )?;
                if probe.exit_code != Some(0) {
                    bail!("the init container exited 0 but left no executable /tools/opencode");
                }
                Ok(one_line(&copy.output()))
            });
            self.conclude("copies-to-tools", user, result);
        }
    }

    fn expect_user(&self) {
        if !self.wanted("user") {
            return;
        }
        let user = self.config["User"].as_str().unwrap_or("");
        self.record(
            "user",
            None,
            user == "1000:0",
            format!(
                "USER {}; want 1000:0 (non-root, group 0)",
                if user.is_empty() {
                    "(unset: root)"
                } else {
                    user
                }
            ),
        );
    }

    fn env(&self, key: &str) -> Option<String> {
        self.config["Env"].as_array()?.iter().find_map(|e| {
            e.as_str()?
                .strip_prefix(key)?
                .strip_prefix('=')
                .map(String::from)
        })
    }

    fn default_command(&self, user: &Option<String>) {
        if !self.wanted("default-command") {
            return;
        }
        let result = self
            .container(user, &["-v".into(), "/workspace".into()], None, &[])
            .and_then(|run| match run.exit_code {
                Some(0) => Ok(format!("exit 0: {}", one_line(&run.output()))),
                _ => bail!("started with no command: {}", exit_detail(&run)),
            });
        self.conclude("default-command", user, result);
    }

    /// The operator's pattern: the init image copies opencode into a shared volume, and
    /// the executor, with that volume at /tools and a task in /workspace, runs it.
    fn opencode_from_tools(&self, user: &Option<String>) {
        if !self.wanted("opencode-from-tools") {
            return;
        }
        let Some(tools_image) = self.tools_image else {
            self.record(
                "opencode-from-tools",
                Some(&self.user_label(user)),
                false,
                "no init image to fill /tools: the catalog has none with role = \"init\"; pass --tools-image".into(),
            );
            return;
        };
        let volume = Volume::create();
        let task = match TaskFile::create() {
            Ok(task) => task,
            Err(e) => return self.conclude("opencode-from-tools", user, Err(e)),
        };
        let tools = format!("{}:/tools", volume.0);
        let result = (|| {
            // Both containers of a pod run as the same arbitrary UID; otherwise each as its own user.
            let mut init = self.user_args(user);
            init.extend(self.profile());
            init.extend(self.platform_args());
            init.extend(["-v".into(), tools.clone(), tools_image.to_string()]);
            let copied = docker::run_container(&container_name(), &init, DEFAULT_TIMEOUT)?;
            if copied.exit_code != Some(0) {
                bail!(
                    "the init image {tools_image} failed to fill /tools: {}",
                    exit_detail(&copied)
                );
            }
            let mounts = [
                "-v".to_string(),
                tools.clone(),
                "-v".into(),
                "/workspace".into(),
                "-v".into(),
                format!("{}:/workspace/task.md:ro", task.path.display()),
            ];
            let run = self.container(
                user,
                &mounts,
                Some("/bin/sh"),
                &[
                    "-c".into(),
                    "cat /workspace/task.md >/dev/null && /tools/opencode --version".into(),
                ],
            )?;
            if run.exit_code != Some(0) {
                bail!("/tools/opencode --version: {}", exit_detail(&run));
            }
            Ok(format!(
                "/tools/opencode --version: {}",
                one_line(&run.stdout)
            ))
        })();
        self.conclude("opencode-from-tools", user, result);
    }

    fn metadata(&self, expected: &MetadataCheck) {
        let mut problems = Vec::new();
        let text = |key: &str| self.config[key].as_str().unwrap_or("").to_string();
        if let Some(user) = &expected.user {
            if text("User") != *user {
                problems.push(format!("user is '{}', want '{user}'", text("User")));
            }
        }
        if let Some(workdir) = &expected.workdir {
            if text("WorkingDir") != *workdir {
                problems.push(format!(
                    "workdir is '{}', want '{workdir}'",
                    text("WorkingDir")
                ));
            }
        }
        for env in &expected.env_vars {
            let actual = self.env(&env.key);
            let ok = match (&actual, env.is_regex) {
                (Some(value), true) => {
                    regex::Regex::new(&env.value).is_ok_and(|r| r.is_match(value))
                }
                (Some(value), false) => *value == env.value,
                (None, _) => false,
            };
            if !ok {
                problems.push(format!(
                    "{}={}, want {}",
                    env.key,
                    actual.unwrap_or_else(|| "(unset)".into()),
                    env.value
                ));
            }
        }
        for (key, want) in [("Entrypoint", &expected.entrypoint), ("Cmd", &expected.cmd)] {
            if let Some(want) = want {
                let actual: Vec<String> = self.config[key]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                if actual != *want {
                    problems.push(format!(
                        "{} is {actual:?}, want {want:?}",
                        key.to_lowercase()
                    ));
                }
            }
        }
        let passed = problems.is_empty();
        let detail = if passed {
            "as declared".to_string()
        } else {
            problems.join("; ")
        };
        self.record("metadata", None, passed, detail);
    }

    fn file(&self, check: &FileCheck) {
        let name = check
            .name
            .clone()
            .unwrap_or_else(|| format!("file {}", check.path));
        let result = file_stat(&self.subject.reference, &check.path).map(|stat| {
            let mut problems = Vec::new();
            match (&stat, check.should_exist) {
                (None, true) => problems.push(format!("{} does not exist", check.path)),
                (Some(_), false) => problems.push(format!("{} exists", check.path)),
                _ => {}
            }
            if let Some(stat) = &stat {
                if let Some(want) = &check.permissions {
                    if stat.permissions != *want {
                        problems.push(format!("permissions {}, want {want}", stat.permissions));
                    }
                }
                if check.uid.is_some_and(|uid| uid != stat.uid) {
                    problems.push(format!("uid {}, want {}", stat.uid, check.uid.unwrap_or(0)));
                }
                if check.gid.is_some_and(|gid| gid != stat.gid) {
                    problems.push(format!("gid {}, want {}", stat.gid, check.gid.unwrap_or(0)));
                }
            }
            (problems, stat)
        });
        match result {
            Ok((problems, stat)) if problems.is_empty() => {
                let detail = stat.map_or(format!("{} absent", check.path), |s| {
                    format!("{} {} {}:{}", check.path, s.permissions, s.uid, s.gid)
                });
                self.record(&name, None, true, detail)
            }
            Ok((problems, _)) => self.record(&name, None, false, problems.join("; ")),
            Err(e) => self.record(&name, None, false, format!("{e:#}")),
        }
    }

    fn root_owned(&self) {
        let dirs = ROOT_OWNED.join(" and ");
        match foreign_owned(&self.subject.reference, ROOT_OWNED) {
            Ok((0, _)) => self.record(
                "root-owned",
                None,
                true,
                format!("everything under {dirs} belongs to root"),
            ),
            Ok((count, first)) => {
                let (path, uid) = first.unwrap_or_default();
                let detail = format!("{count} path(s) under {dirs} belong to a UID other than root, first: {path} (uid {uid})");
                self.record("root-owned", None, false, detail)
            }
            Err(e) => self.record("root-owned", None, false, format!("{e:#}")),
        }
    }

    fn setuid_trust(&self) {
        let result = in_container(&self.subject.reference, |name| {
            let mut nodes = std::collections::BTreeMap::new();
            copied_tar(name, "/", |header, path| {
                let node = setuid::Node {
                    kind: kind(header),
                    mode: header.mode()?,
                    uid: header.uid()?,
                    gid: header.gid()?,
                };
                nodes.insert(setuid::absolute(&path.to_string_lossy()), node);
                Ok(true)
            })?;
            Ok(setuid::exposures(&nodes))
        });
        let (passed, detail) = match result {
            Ok((privileged, _)) if privileged.is_empty() => {
                (true, "no setuid or setgid file".to_string())
            }
            Ok((privileged, problems)) if problems.is_empty() => (
                true,
                format!(
                    "only root may write what {} setuid or setgid file(s) run from or trust: {}",
                    privileged.len(),
                    privileged.join(", ")
                ),
            ),
            Ok((_, problems)) => (
                false,
                format!("{} path(s), first: {}", problems.len(), problems[0]),
            ),
            Err(e) => (false, format!("{e:#}")),
        };
        self.record("setuid-trust", None, passed, detail);
    }

    fn command(&self, check: &CommandCheck) {
        if !self.wanted(&check.name) {
            return;
        }
        if let (Some(_), Some(emulated)) = (check.grants, self.emulated()) {
            let detail = format!("skipped: it starts a Docker daemon, which does not run under emulation ({emulated}); a run on an engine of the image's architecture checks it");
            self.record(&check.name, None, true, detail);
            return;
        }
        let timeout = check
            .timeout_seconds
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        // A check with grants runs a daemon as the image's user; never restricted.
        let users = match check.grants {
            Some(_) => &self.users[..1],
            None => &self.users[..],
        };
        for user in users {
            let result = (|| {
                let mut args = self.user_args(user);
                match check.grants {
                    Some(grants) => args.extend(grants.docker_args().iter().map(|a| a.to_string())),
                    None => args.extend(self.profile()),
                }
                args.extend(self.platform_args());
                args.extend(["-v".into(), "/workspace".into()]);
                args.extend(["--entrypoint".into(), check.command.clone()]);
                args.push(self.subject.reference.clone());
                args.extend(check.args.iter().cloned());
                let run = docker::run_container(&container_name(), &args, timeout)?;
                let full = run.output();
                // Patterns see the output without its trailing newline, so `$` ends it.
                let output = full.trim_end();
                if run.exit_code != Some(check.exit_code) {
                    bail!("want exit {}, {}", check.exit_code, exit_detail(&run));
                }
                for pattern in &check.expected_output {
                    let regex = regex::Regex::new(pattern)?;
                    if !regex.is_match(output) {
                        bail!("output does not match '{pattern}': {}", one_line(output));
                    }
                }
                for pattern in &check.excluded_output {
                    let regex = regex::Regex::new(pattern)?;
                    if regex.is_match(output) {
                        bail!("output matches excluded '{pattern}': {}", one_line(output));
                    }
                }
                Ok(one_line(output))
            })();
            self.conclude(&check.name, user, result);
        }
    }

    /// `arm64 on amd64` when the image's architecture is not the engine's: QEMU runs it.
    fn emulated(&self) -> Option<String> {
        let engine = docker::docker(&["version", "--format", "{{.Server.Arch}}"]).ok()?;
        let engine = engine.trim();
        (!self.architecture.is_empty() && self.architecture != engine)
            .then(|| format!("{} on {engine}", self.architecture))
    }

    fn conclude(&self, check: &str, user: &Option<String>, result: Result<String>) {
        let label = self.user_label(user);
        match result {
            Ok(detail) => self.record(check, Some(&label), true, detail),
            Err(e) => self.record(check, Some(&label), false, format!("{e:#}")),
        }
    }

    fn user_args(&self, user: &Option<String>) -> Vec<String> {
        user.iter()
            .flat_map(|u| ["--user".to_string(), u.clone()])
            .collect()
    }

    fn profile(&self) -> Vec<String> {
        if self.restricted {
            RESTRICTED.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        }
    }

    fn platform_args(&self) -> Vec<String> {
        self.platform
            .iter()
            .flat_map(|p| ["--platform".to_string(), p.to_string()])
            .collect()
    }

    /// Runs the image as `user` under the profile, with `mounts`, and optionally another
    /// entrypoint and arguments.
    fn container(
        &self,
        user: &Option<String>,
        mounts: &[String],
        entrypoint: Option<&str>,
        args: &[String],
    ) -> Result<Finished> {
        let mut all = self.user_args(user);
        all.extend(self.profile());
        all.extend(self.platform_args());
        all.extend(mounts.iter().cloned());
        if let Some(entrypoint) = entrypoint {
            all.extend(["--entrypoint".into(), entrypoint.into()]);
        }
        all.push(self.subject.reference.clone());
        all.extend(args.iter().cloned());
        docker::run_container(&container_name(), &all, DEFAULT_TIMEOUT)
    }

    fn shell_check(&self, check: &str, user: &Option<String>, mounts: &[&str], script: &str) {
        if !self.wanted(check) {
            return;
        }
        let mounts: Vec<String> = mounts.iter().map(|m| m.to_string()).collect();
        let result = self
            .container(
                user,
                &mounts,
                Some("/bin/sh"),
                &["-c".into(), script.into()],
            )
            .and_then(|run| match run.exit_code {
                Some(0) => Ok(one_line(&run.output())),
                _ => bail!("{}", exit_detail(&run)),
            });
        self.conclude(check, user, result);
    }
}

fn exit_detail(run: &Finished) -> String {
    match run.exit_code {
        Some(code) => format!("exit {code}: {}", one_line(&run.output())),
        None => format!("timed out: {}", one_line(&run.output())),
    }
}

/// The last meaningful line of a container's output, safe to print.
fn one_line(output: &str) -> String {
    let line = output
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("(no output)");
    printable(line)
}

/// A named volume, removed when dropped.
struct Volume(String);

impl Volume {
    fn create() -> Volume {
        let name = container_name();
        let _ = docker::docker(&["volume", "create", &name]);
        Volume(name)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = docker::docker(&["volume", "rm", "-f", &self.0]);
    }
}

/// The task file the operator mounts into /workspace, readable by any UID.
struct TaskFile {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl TaskFile {
    fn create() -> Result<TaskFile> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("task.md");
        std::fs::write(&path, "Say hello.\n")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(TaskFile { _dir: dir, path })
    }
}

pub struct Stat {
    pub permissions: String,
    pub uid: u32,
    pub gid: u32,
}

/// Runs `f` with a created (never started) container of `reference`, removed after.
fn in_container<T>(reference: &str, f: impl FnOnce(&str) -> Result<T>) -> Result<T> {
    let name = container_name();
    docker::docker(&[
        "create",
        "--name",
        &name,
        "--entrypoint",
        "/verify-never-runs",
        reference,
    ])?;
    let result = f(&name);
    let _ = docker::docker(&["rm", "-f", &name]);
    result
}

/// The tar `docker cp` streams of `path` in `container`; None when the path is absent.
/// `visit` sees each entry's header until it returns false.
fn copied_tar(
    container: &str,
    path: &str,
    mut visit: impl FnMut(&tar::Header, &Path) -> Result<bool>,
) -> Result<bool> {
    let mut child = std::process::Command::new("docker")
        .args(["cp", &format!("{container}:{path}"), "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut archive = tar::Archive::new(stdout);
    let mut seen = false;
    for entry in archive.entries()? {
        let entry = entry?;
        seen = true;
        if !visit(entry.header(), &entry.path()?)? {
            break;
        }
    }
    drop(archive);
    let _ = child.kill();
    let output = child.wait_with_output()?;
    if !seen && !String::from_utf8_lossy(&output.stderr).contains("Could not find") {
        bail!("docker cp {path}: {}", docker::last_line(&output.stderr));
    }
    Ok(seen)
}

/// A path's mode and owner as the image has it, read from the tar header `docker cp`
/// streams, so it works on images without a shell or `stat`.
fn file_stat(reference: &str, path: &str) -> Result<Option<Stat>> {
    in_container(reference, |name| {
        let mut stat = None;
        copied_tar(name, path, |header, _| {
            stat = Some(Stat {
                permissions: permissions_text(kind(header), header.mode()?),
                uid: header.uid()? as u32,
                gid: header.gid()? as u32,
            });
            Ok(false)
        })?;
        Ok(stat)
    })
}

/// `ls -l`'s first letter for a tar entry: d, l, or - for the rest.
fn kind(header: &tar::Header) -> char {
    match header.entry_type() {
        tar::EntryType::Directory => 'd',
        tar::EntryType::Symlink => 'l',
        _ => '-',
    }
}

/// How many paths under `dirs` belong to a UID other than root, and the first, from the
/// tar headers `docker cp` streams: no shell or `find` needed in the image.
fn foreign_owned(reference: &str, dirs: &[&str]) -> Result<(usize, Option<(String, u64)>)> {
    in_container(reference, |name| {
        let (mut count, mut first) = (0, None);
        for dir in dirs {
            let parent = Path::new(dir).parent().unwrap_or(Path::new("/"));
            copied_tar(name, dir, |header, path| {
                let uid = header.uid()?;
                if uid != 0 {
                    count += 1;
                    first.get_or_insert_with(|| (parent.join(path).display().to_string(), uid));
                }
                Ok(true)
            })?;
        }
        Ok((count, first))
    })
}

/// `ls -l` style: `drwxrwxrwt`.
fn permissions_text(kind: char, mode: u32) -> String {
    let mut out = String::from(kind);
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, (bit, on, off)) in special.iter().enumerate() {
        let shift = 6 - 3 * i;
        let bits = (mode >> shift) & 0o7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        let exec = bits & 1 != 0;
        out.push(match (mode & bit != 0, exec) {
            (true, true) => *on,
            (true, false) => *off,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_like_ls() {
        assert_eq!(permissions_text('d', 0o1777), "drwxrwxrwt");
        assert_eq!(permissions_text('-', 0o755), "-rwxr-xr-x");
        assert_eq!(permissions_text('-', 0o4644), "-rwSr--r--");
    }

    #[test]
    fn output_lines_are_safe_to_print() {
        assert_eq!(one_line("a\nlast \x1b[2J\n\n"), "last \\u{1b}[2J");
        assert_eq!(one_line(""), "(no output)");
    }
}
