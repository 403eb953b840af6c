//! The few docker CLI calls that `build`, `size` and `verify` share.

use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::text::printable;

/// Fails with one line unless a daemon answers.
pub fn require_daemon() -> Result<()> {
    let answered = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !answered {
        bail!("the Docker daemon does not answer `docker info`: start dockerd (.ci/provision does on Debian)");
    }
    Ok(())
}

/// An image that a check pulled into the engine's store, removed again when dropped:
/// verifying a family on two platforms would otherwise leave every unpacked image behind.
/// An image that was there before the pull stays.
pub struct Pulled {
    reference: Option<String>,
}

impl Drop for Pulled {
    fn drop(&mut self) {
        let Some(reference) = self.reference.take() else {
            return;
        };
        let removed = Command::new("docker")
            .args(["image", "rm", &reference])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let why = match removed {
            Ok(out) if out.status.success() => return,
            Ok(out) => last_line(&out.stderr),
            Err(e) => e.to_string(),
        };
        eprintln!("warning: could not remove {reference}, pulled for the check: {why}");
    }
}

/// `docker image inspect` of the engine's copy, after pulling it from its registry first
/// unless `local` (so a tag rebuilt and pushed elsewhere is never checked stale). Keep
/// the guard while the image is in use.
pub fn inspect_image(
    reference: &str,
    platform: Option<&str>,
    local: bool,
) -> Result<(serde_json::Value, Pulled)> {
    let mut pulled_here = Pulled { reference: None };
    if !local {
        let was_here = image_inspect(reference)?.is_some();
        let mut pull = Command::new("docker");
        pull.args(["pull", "--quiet"]);
        if let Some(platform) = platform {
            pull.args(["--platform", platform]);
        }
        let pulled = pull.arg(reference).output()?;
        if !pulled.status.success() {
            bail!(
                "cannot pull {reference} ({}); push it under the same naming flags, or pass \
                 --local to check the engine's copy",
                last_line(&pulled.stderr)
            );
        }
        if !was_here {
            pulled_here.reference = Some(reference.to_string());
        }
    }
    match image_inspect(reference)? {
        Some(inspected) => Ok((inspected, pulled_here)),
        None => bail!(
            "{reference} is not in the local image store; build it with --load, or drop --local \
             to pull it from its registry"
        ),
    }
}

fn image_inspect(reference: &str) -> Result<Option<serde_json::Value>> {
    let output = Command::new("docker")
        .args(["image", "inspect", "--format", "{{json .}}", reference])
        .output()?;
    if !output.status.success() {
        return Ok(None);
    }
    serde_json::from_slice(&output.stdout)
        .map(Some)
        .with_context(|| format!("reading `docker image inspect {reference}`"))
}

/// What a container printed and how it ended.
pub struct Finished {
    /// None when it was killed at the deadline.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// `docker run --rm --name NAME ARGS...`, killed after `timeout`.
pub fn run_container(name: &str, args: &[String], timeout: Duration) -> Result<Finished> {
    let mut child = Command::new("docker")
        .args(["run", "--rm", "--name", name])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow!("cannot run docker: {e}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = Command::new("docker")
                .args(["rm", "-f", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Finished {
        exit_code: status.and_then(|s| s.code()),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(mut pipe) = pipe {
            // Bounded: a chatty container cannot exhaust memory.
            let _ = pipe.by_ref().take(1 << 20).read_to_end(&mut text);
            let _ = std::io::copy(&mut pipe, &mut std::io::sink());
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

/// Runs docker with `args`, returning stdout, or an error with its last stderr line.
pub fn docker(args: &[&str]) -> Result<String> {
    let output = Command::new("docker").args(args).output()?;
    if !output.status.success() {
        bail!(
            "docker {} failed: {}",
            args.first().unwrap_or(&""),
            last_line(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    printable(text.trim().lines().last().unwrap_or("no output"))
}
