//! What `images build` checks before buildx prints anything: the engine answers, the
//! builder has every platform asked for, every base image is reachable, and the npm
//! registry answers where a template downloads from it. Each problem is one line that
//! says what to do; all problems are reported at once, since they are independent.

use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::catalog::Image;
use crate::naming::ImageRef;
use crate::oci::Registries;
use crate::plan::BuildPlan;
use crate::render::Rendered;

/// A check that does not answer within this long fails: buildx would hang there too.
const LIMIT: Duration = Duration::from_secs(6);

/// What the build will reach, as the plan and the rendered Dockerfiles say.
pub struct Needs {
    builder: Option<String>,
    platforms: BTreeSet<String>,
    /// Each base, with the target platforms a stage runs it at (none when every stage
    /// that uses it runs on the build platform).
    bases: BTreeMap<String, BTreeSet<String>>,
    /// `Some(None)`: a template needs npm and no registry is known.
    npm: Option<Option<String>>,
}

impl Needs {
    pub fn of(
        plan: &BuildPlan,
        images: &[&Image],
        rendered: &[Rendered],
        base_registry: Option<&str>,
    ) -> Result<Needs> {
        let mut bases: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (image, rendered) in images.iter().zip(rendered) {
            let platforms = plan
                .target(&image.name)
                .map(|t| t.platforms.clone())
                .unwrap_or_default();
            for (role, reference) in &image.bases {
                let reference = match base_registry {
                    Some(prefix) => reference.under_prefix(prefix)?,
                    None => reference.clone(),
                };
                let text = reference.to_string();
                // A template may use only some of its bases (the sandboxes' flavours).
                let used = rendered.dockerfile.contains(&text)
                    || rendered.base_args.values().any(|v| *v == text);
                if used {
                    let arg = crate::render::base_arg_name(role);
                    let at_target = runs_at_target(&rendered.dockerfile, &[&text, &arg]);
                    let entry = bases.entry(text).or_default();
                    if at_target {
                        entry.extend(platforms.iter().cloned());
                    }
                }
            }
        }
        let npm = rendered
            .iter()
            .any(|r| r.dockerfile.contains("${NPM_REGISTRY"))
            .then(|| {
                plan.targets
                    .iter()
                    .find_map(|t| t.args.get("NPM_REGISTRY").cloned())
            });
        Ok(Needs {
            builder: plan.builder.clone(),
            platforms: plan
                .targets
                .iter()
                .flat_map(|t| t.platforms.iter().cloned())
                .collect(),
            bases,
            npm,
        })
    }

    /// Runs every check; Ok when all pass, else each problem on its own `error:` line.
    pub fn check(&self, ctx: &crate::context::Ctx) -> Result<()> {
        let started = Instant::now();
        if let Some(problem) = engine() {
            bail!("{problem}");
        }
        let engine_done = started.elapsed();
        // The builder's platforms come from a subprocess; the network checks run meanwhile.
        let mut inspect = Command::new("docker");
        inspect.args(["buildx", "inspect"]);
        inspect.args(self.builder.iter());
        let inspect = inspect
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut problems = ctx.block_on(async { Ok(self.network(&ctx.registries).await) })?;
        let network_done = started.elapsed();
        let output = inspect.wait_with_output()?;
        // Asked only now, off the path of a healthy run: is the plugin there at all?
        if !output.status.success() && !answers(&["buildx", "version"]) {
            bail!(
                "docker buildx is not installed: run .ci/provision (Debian, as root) or \
                 install the docker-buildx plugin"
            );
        }
        problems.splice(0..0, self.platforms_problem(&output));
        if std::env::var_os("XTASK_PREFLIGHT_TIMING").is_some() {
            eprintln!(
                "preflight: {:?} (engine {engine_done:?}, then the network checks {:?} \
                 beside the builder's platforms)",
                started.elapsed(),
                network_done - engine_done
            );
        }
        let Some(last) = problems.pop() else {
            return Ok(());
        };
        for problem in problems {
            eprintln!("error: {problem}");
        }
        bail!("{last}")
    }

    fn platforms_problem(&self, inspect: &std::process::Output) -> Option<String> {
        let builder = match &self.builder {
            Some(name) => format!("buildx builder '{name}'"),
            None => "the current buildx builder".to_string(),
        };
        if !inspect.status.success() {
            return Some(format!(
                "{builder} does not exist: create it or pick one from `docker buildx ls`"
            ));
        }
        let listed: BTreeSet<String> = String::from_utf8_lossy(&inspect.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Platforms:"))
            .flat_map(|l| l.split(','))
            .map(|p| p.trim().trim_end_matches('*').to_string())
            .filter(|p| !p.is_empty())
            .collect();
        // A builder that is not running yet lists nothing; buildx starts it and says more.
        let missing: Vec<&str> = self
            .platforms
            .iter()
            .filter(|p| !listed.is_empty() && !listed.contains(*p))
            .map(String::as_str)
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "{builder} cannot build {}: register QEMU with binfmt \
                 (`.ci/provision` on Debian, or `docker run --privileged --rm tonistiigi/binfmt --install all`), \
                 or build that platform on a native runner with --platform",
                missing.join(", ")
            )
        })
    }

    async fn network(&self, registries: &Registries) -> Vec<String> {
        let late = format!("gave no answer within {} s", LIMIT.as_secs());
        let bases = self.bases.iter().map(|(b, platforms)| {
            let late = format!("base image {b} {late}: {BASE_FIX}");
            within(base(registries, b, platforms), late)
        });
        let npm = async {
            match &self.npm {
                None => None,
                Some(url) => {
                    let url = url.as_deref();
                    let late = format!(
                        "npm registry {} {late}: pass --npm-registry URL naming one that answers",
                        url.unwrap_or("-")
                    );
                    within(npm(url), late).await
                }
            }
        };
        let (mut problems, npm) = futures_util::join!(futures_util::future::join_all(bases), npm);
        problems.push(npm);
        problems.into_iter().flatten().collect()
    }
}

/// The engine answers.
fn engine() -> Option<String> {
    if answers(&["version", "--format", "{{.Server.Version}}"]) {
        return None;
    }
    let host = std::env::var("DOCKER_HOST").map_or(String::new(), |h| format!(" at {h}"));
    Some(format!(
        "no Docker engine answers{host}: run .ci/provision (Debian, as root) or install \
         Docker with buildx and start it; --dry-run shows the plan without one"
    ))
}

fn answers(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The registry client retries for a long while; a preflight gives up at `LIMIT`.
async fn within(
    check: impl std::future::Future<Output = Option<String>>,
    late: String,
) -> Option<String> {
    tokio::time::timeout(LIMIT, check)
        .await
        .unwrap_or(Some(late))
}

const BASE_FIX: &str = "pass --base-registry PREFIX naming a mirror that has it \
     (fill one with `cargo xtask images mirror base --to PREFIX`, or across an air gap \
     `images mirror save` then `images mirror load BUNDLE --to PREFIX`)";

async fn base(registries: &Registries, text: &str, platforms: &BTreeSet<String>) -> Option<String> {
    let reference = match ImageRef::parse(text) {
        Ok(reference) => reference,
        Err(e) => return Some(format!("base image {text}: {e}")),
    };
    let fail = |why: String| Some(format!("base image {text} {why}: {BASE_FIX}"));
    // The client retries a host that does not resolve or refuses for a long while; a
    // plain connect says which at once.
    let host = reference.registry.api_host().to_string();
    if let Ok(Err(why)) = tokio::task::spawn_blocking(move || reach(&host)).await {
        return fail(format!("is unreachable ({why})"));
    }
    let client = match registries.get(&reference.registry).await {
        Ok(client) => client,
        Err(e) => return fail(format!("is unreachable ({})", short(&e.to_string()))),
    };
    match client
        .head_manifest(&reference.repository, &reference.pointer())
        .await
    {
        Ok(Some(_)) if platforms.is_empty() => None,
        Ok(Some(_)) => missing_platforms(&client, &reference, platforms)
            .await
            .map(|missing| {
                format!(
                    "base image {text} has no {missing}: BuildKit would run another \
                     platform's binaries under that label (a single-platform base works \
                     only for its own platform); mirror a base that lists it, or drop it \
                     from --platform"
                )
            }),
        Ok(None) => fail(format!("is not in {}", reference.registry)),
        Err(e) => fail(format!("cannot be read ({})", short(&e.to_string()))),
    }
}

/// Whether a `FROM` line names one of `names` at the target platform (no `--platform`,
/// or `$TARGETPLATFORM`): that stage runs the base at each platform built.
fn runs_at_target(dockerfile: &str, names: &[&str]) -> bool {
    dockerfile.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
            && !words.iter().any(|w| {
                w.strip_prefix("--platform=")
                    .is_some_and(|p| p.trim_matches(['$', '{', '}']) != "TARGETPLATFORM")
            })
            && words[1..].iter().any(|w| {
                !w.starts_with("--")
                    && names
                        .iter()
                        .any(|n| *w == *n || w.trim_matches(['$', '{', '}']) == *n)
            })
    })
}

/// The asked-for platforms the base does not list, as one phrase; None when it has all.
/// A platform without a variant matches any variant of it (`linux/arm64/v8`).
async fn missing_platforms(
    client: &crate::oci::registry::Client,
    reference: &ImageRef,
    platforms: &BTreeSet<String>,
) -> Option<String> {
    let read = async {
        let (bytes, _, digest) = client
            .resolve(&reference.repository, &reference.pointer())
            .await?;
        let source = crate::oci::image::RegistrySource {
            registry: client,
            repository: &reference.repository,
        };
        crate::oci::image::platform_images(&source, &bytes, &digest).await
    };
    let has: Vec<String> = match read.await {
        Ok(images) => images.into_iter().map(|i| i.platform).collect(),
        Err(e) => {
            return Some(format!(
                "readable platform list ({})",
                short(&e.to_string())
            ))
        }
    };
    let missing: Vec<&str> = platforms
        .iter()
        .filter(|want| {
            !has.iter().any(|p| {
                p == *want
                    || p.strip_prefix(want.as_str())
                        .is_some_and(|v| v.starts_with('/'))
            })
        })
        .map(String::as_str)
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} (it lists {})",
            missing.join(", "),
            if has.is_empty() {
                "nothing".to_string()
            } else {
                has.join(", ")
            }
        )
    })
}

/// Resolves `host[:port]` (443 by default) and opens a TCP connection to it.
fn reach(host: &str) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(h, p)| p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')));
    let address = if has_port {
        host.to_string()
    } else {
        format!("{host}:443")
    };
    let first = address
        .to_socket_addrs()
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} does not resolve"))?;
    TcpStream::connect_timeout(&first, LIMIT / 2)
        .map(drop)
        .map_err(|e| format!("cannot connect to {address}: {e}"))
}

/// The cause without the client's own advice, which is about other commands' flags.
fn short(error: &str) -> String {
    let first = error.split("; ").next().unwrap_or(error);
    crate::text::printable(first)
}

async fn npm(url: Option<&str>) -> Option<String> {
    let Some(url) = url else {
        return Some(
            "a template downloads from npm and no npm registry is known: pass --npm-registry URL \
             (or configure `npm config get registry`)"
                .into(),
        );
    };
    let client = reqwest::Client::builder().timeout(LIMIT).build().ok()?;
    match client.get(format!("{url}/-/ping")).send().await {
        // Any answer short of a server error means the registry is there.
        Ok(response) if !response.status().is_server_error() => None,
        Ok(response) => Some(format!(
            "npm registry {url} answered {}: pass --npm-registry URL naming one that works",
            response.status()
        )),
        Err(e) => Some(format!(
            "npm registry {url} does not answer ({}): pass --npm-registry URL naming one that does",
            short(&without_url(&e))
        )),
    }
}

/// reqwest's error text, without the URL it carries.
fn without_url(error: &reqwest::Error) -> String {
    let mut cause = String::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    while let Some(e) = source {
        cause = e.to_string();
        source = e.source();
    }
    if cause.is_empty() {
        "no answer".into()
    } else {
        cause
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn needs(platforms: &[&str]) -> Needs {
        Needs {
            builder: None,
            platforms: platforms.iter().map(|p| p.to_string()).collect(),
            bases: BTreeMap::new(),
            npm: None,
        }
    }

    fn inspect(code: i32, stdout: &str) -> std::process::Output {
        std::process::Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.as_bytes().to_vec(),
            stderr: vec![],
        }
    }

    #[test]
    fn platforms_are_read_from_every_node_of_buildx_inspect() {
        let listed = "Nodes:\nName: a\nPlatforms: linux/amd64*, linux/amd64/v2\n\
                      Name: b\nPlatforms:        linux/arm64\n";
        let ok = needs(&["linux/amd64", "linux/arm64"]);
        assert_eq!(ok.platforms_problem(&inspect(0, listed)), None);
        let line = needs(&["linux/amd64", "linux/s390x"])
            .platforms_problem(&inspect(0, listed))
            .unwrap();
        assert!(line.starts_with("the current buildx builder cannot build linux/s390x: "));
        assert!(line.contains("binfmt"), "{line}");
        // Not started yet: nothing listed, nothing to say.
        assert_eq!(
            needs(&["linux/s390x"]).platforms_problem(&inspect(0, "Name: x\n")),
            None
        );
        let mut named = needs(&["linux/amd64"]);
        named.builder = Some("release".into());
        let line = named.platforms_problem(&inspect(1, "")).unwrap();
        assert!(
            line.starts_with("buildx builder 'release' does not exist"),
            "{line}"
        );
    }

    #[test]
    fn only_stages_at_the_target_platform_need_every_platform_built() {
        let base = "mirror/debian:12@sha256:ab";
        let fetch_only = format!("FROM --platform=$BUILDPLATFORM {base} AS fetch\nFROM scratch\n");
        assert!(!runs_at_target(&fetch_only, &[base]));
        let braced = format!("from --platform=${{BUILDPLATFORM}} {base}\n");
        assert!(!runs_at_target(&braced, &[base]));
        let both = format!("{fetch_only}FROM {base}\nRUN true\n");
        assert!(runs_at_target(&both, &[base]));
        let target = format!("FROM --platform=$TARGETPLATFORM {base} AS x\n");
        assert!(runs_at_target(&target, &[base]));
        // A stage pinned to one platform is that platform's business, not --platform's.
        let pinned = format!("FROM --platform=linux/arm64 {base} AS x\n");
        assert!(!runs_at_target(&pinned, &[base]));
        // Plain Dockerfiles name the base through its build arg.
        assert!(runs_at_target(
            "ARG BASE_DEBIAN\nFROM ${BASE_DEBIAN}\n",
            &[base, "BASE_DEBIAN"]
        ));
        assert!(!runs_at_target(
            "FROM $BASE_DEBIAN_SLIM\n",
            &[base, "BASE_DEBIAN"]
        ));
        // A mention outside FROM is not a stage.
        assert!(!runs_at_target(
            &format!("# {base}\nLABEL b={base}\n"),
            &[base]
        ));
    }

    #[test]
    fn reach_names_what_failed() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = reach(&format!("127.0.0.1:{port}")).unwrap_err();
        assert!(
            err.starts_with(&format!("cannot connect to 127.0.0.1:{port}")),
            "{err}"
        );
        let err = reach("host.invalid").unwrap_err();
        assert!(err.starts_with("host.invalid does not resolve"), "{err}");
        let listener = std::net::TcpListener::bind("[::1]:0");
        if let Ok(listener) = listener {
            let port = listener.local_addr().unwrap().port();
            assert_eq!(reach(&format!("[::1]:{port}")), Ok(()));
        }
    }
}
