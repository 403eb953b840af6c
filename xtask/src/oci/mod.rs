//! The one registry client: every command that talks the OCI distribution API (mirror,
//! retag, size) goes through here. Its layers, each importing only those above it in
//! this list: `media`, `error`, `name` (with `digest`), `transport` (with `limits`), `auth`, `registry`,
//! `blobs`, `image`, `layout`.

pub mod auth;
pub mod blobs;
pub mod digest;
pub mod error;
pub mod image;
pub mod layout;
pub mod limits;
pub mod media;
pub mod name;
pub mod parts;
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
    /// Every host's request budget, shared by all clients of the run.
    pub limits: Arc<limits::HostLimits>,
    pub stats: Arc<Stats>,
    connected: Mutex<HashMap<Registry, Arc<OnceCell<Arc<Client>>>>>,
}

impl Registries {
    pub fn new(insecure: Vec<String>, limits: limits::HostLimits) -> Registries {
        Registries {
            insecure,
            limits: Arc::new(limits),
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
        cell.get_or_try_init(|| {
            Client::connect(host, &self.insecure, &self.limits, self.stats.clone())
        })
        .await
        .cloned()
    }
}
