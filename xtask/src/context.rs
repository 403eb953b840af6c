//! The run context, made once in `main` and passed to every command's `run`: the
//! project root, the one tokio runtime, the one `Registries` (every `--insecure` host,
//! every host's request budget), the CA bundle, and the one deadline of `--timeout`,
//! which bounds the whole run whatever phase it is in.

use anyhow::{bail, Context as _, Result};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::oci::limits::HostLimits;
use crate::oci::Registries;

/// What `main` collects from whichever subcommand's flags.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    pub insecure: Vec<String>,
    pub timeout: Option<Duration>,
    pub ca_bundle: Option<PathBuf>,
    /// `--max-requests-per-second HOST=N` values, checked when the context is made.
    pub max_requests_per_second: Vec<String>,
    /// `--max-concurrent HOST=N` values.
    pub max_concurrent: Vec<String>,
}

pub struct Ctx {
    pub root: PathBuf,
    pub registries: Arc<Registries>,
    /// The `--insecure` hosts, for tools we run (cosign) and the cluster configuration.
    pub insecure: Vec<String>,
    /// `--ca-bundle`: passed to builds as a BuildKit secret.
    pub ca_bundle: Option<PathBuf>,
    /// `Some` until dropped: dropping shuts it down without waiting for blocking readers.
    runtime: Option<tokio::runtime::Runtime>,
    deadline: Option<(Instant, Duration)>,
}

impl Ctx {
    pub fn new(root: PathBuf, options: RunOptions) -> Result<Ctx> {
        let limits =
            HostLimits::from_flags(&options.max_requests_per_second, &options.max_concurrent)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(Ctx {
            root,
            registries: Arc::new(Registries::new(options.insecure.clone(), limits)),
            insecure: options.insecure,
            ca_bundle: options.ca_bundle,
            runtime: Some(runtime),
            deadline: options.timeout.map(|limit| (Instant::now() + limit, limit)),
        })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the context")
    }

    /// Runs `future` on the one runtime, stopped at the run's deadline. Tags are written
    /// last, so what was cut short is never tagged; a re-run continues.
    pub fn block_on<T>(&self, future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let Some(left) = self.time_left()? else {
            return self.runtime().block_on(future);
        };
        match self
            .runtime()
            .block_on(async { tokio::time::timeout(left, future).await })
        {
            Ok(result) => result,
            Err(_) => Err(self.stopped()),
        }
    }

    /// The time before the deadline (None without `--timeout`); an error once it passed.
    pub fn time_left(&self) -> Result<Option<Duration>> {
        match self.deadline {
            None => Ok(None),
            Some((at, _)) => match at.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(self.stopped()),
            },
        }
    }

    /// Runs a child process to its end, killed at the run's deadline.
    pub fn run_command(&self, command: &mut Command, what: &str) -> Result<ExitStatus> {
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if self.time_left().is_err() {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{what}: {:#}", self.stopped());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stopped(&self) -> anyhow::Error {
        let limit = self.deadline.map(|(_, limit)| limit).unwrap_or_default();
        anyhow::anyhow!(
            "stopped at the --timeout of {}; nothing cut short was tagged, so a re-run \
             continues from what is in place",
            humantime::format_duration(limit)
        )
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // Blocking readers may still hold a file after a deadline; do not wait for them.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
pub fn for_tests() -> Ctx {
    Ctx::new(std::env::temp_dir(), RunOptions::default()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_spans_every_phase() {
        let ctx = Ctx::new(
            std::env::temp_dir(),
            RunOptions {
                timeout: Some(Duration::from_millis(600)),
                ..RunOptions::default()
            },
        )
        .unwrap();
        let nap = || async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok(())
        };
        // Each phase alone fits in the limit; the second crosses the run's deadline.
        ctx.block_on(nap()).unwrap();
        let started = Instant::now();
        let error = ctx.block_on(nap()).unwrap_err().to_string();
        assert!(
            error.contains("stopped at the --timeout of 600ms"),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_millis(350));
        assert!(ctx.block_on(async { Ok(()) }).is_err());
        let mut sleep = Command::new("sleep");
        sleep.arg("5");
        assert!(ctx.run_command(&mut sleep, "sleep").is_err());
    }
}
