//! The one registry client: every command that talks the OCI distribution API (mirror,
//! retag, size) goes through here. Its layers, each importing only those above it in
//! this list: `error`, `name` (with `digest`), `transport`, `auth`, `registry`, `blobs`,
//! `image`.

pub mod auth;
pub mod blobs;
pub mod digest;
pub mod error;
pub mod image;
pub mod name;
pub mod registry;
pub mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

pub use error::Error;
pub use name::{Digest, Reference, Registry, Repository, Tag};
use registry::{Client, Stats};

/// Registries by host, connected once and shared by every task.
pub struct Registries {
    insecure: Vec<String>,
    pub stats: Arc<Stats>,
    connected: Mutex<HashMap<Registry, Arc<OnceCell<Arc<Client>>>>>,
}

impl Registries {
    pub fn new(insecure: Vec<String>) -> Registries {
        Registries {
            insecure,
            stats: Arc::new(Stats::default()),
            connected: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(&self, host: &Registry) -> error::Result<Arc<Client>> {
        let cell = self
            .connected
            .lock()
            .unwrap()
            .entry(host.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| Client::connect(host, &self.insecure, self.stats.clone()))
            .await
            .cloned()
    }
}

/// The one tokio runtime shape every async command runs on.
pub fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}

/// `block_on` with the run's `--timeout`: past it, the run stops where it is. Tags are
/// written last, so what was cut short is never tagged; a re-run continues.
pub fn block_on_within<T, F>(timeout: Option<std::time::Duration>, future: F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let Some(limit) = timeout else {
        return runtime.block_on(future);
    };
    match runtime.block_on(async { tokio::time::timeout(limit, future).await }) {
        Ok(result) => result,
        Err(_) => {
            // Blocking readers may still hold a file; do not wait for them.
            runtime.shutdown_background();
            anyhow::bail!(
                "stopped at the --timeout of {}; nothing cut short was tagged, so a re-run \
                 continues from what is in place",
                humantime::format_duration(limit)
            )
        }
    }
}
