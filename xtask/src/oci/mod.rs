//! The one registry client: every command that talks the OCI distribution API (mirror,
//! retag, size) goes through here.

pub mod digest;
pub mod image;
pub mod registry;

use anyhow::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

pub use digest::Digest;
use registry::{Registry, Stats};

/// Registries by host, connected once and shared by every task.
pub struct Registries {
    insecure: Vec<String>,
    pub stats: Arc<Stats>,
    connected: Mutex<HashMap<String, Arc<OnceCell<Arc<Registry>>>>>,
}

impl Registries {
    pub fn new(insecure: Vec<String>) -> Registries {
        Registries {
            insecure,
            stats: Arc::new(Stats::default()),
            connected: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(&self, host: &str) -> Result<Arc<Registry>> {
        let cell = self
            .connected
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(|| Registry::connect(host, &self.insecure, self.stats.clone()))
            .await
            .cloned()
    }
}

/// The one tokio runtime shape every async command runs on.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}
