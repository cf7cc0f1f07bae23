//! [`BlockingFleet`]: the [`Fleet`] for hosts without an async runtime.

use std::time::Duration;

use super::{Fleet, FleetError, FleetHealth, FleetShutdown};
use crate::settings::Settings;
use crate::storage::StorageError;

/// A [`Fleet`] for hosts without an async runtime: it owns a small multi-threaded tokio
/// runtime and blocks on the same async methods.
pub struct BlockingFleet {
    runtime: tokio::runtime::Runtime,
    fleet: Fleet,
}

impl std::fmt::Debug for BlockingFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingFleet")
            .field("fleet", &self.fleet)
            .finish()
    }
}

impl BlockingFleet {
    /// Starts a fleet on a runtime of its own. Must not be called from inside a tokio runtime.
    pub fn start(settings: Settings) -> Result<BlockingFleet, FleetError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("botfleet-host")
            .enable_all()
            .build()
            .map_err(|e| FleetError::Storage(StorageError::Runtime(e.to_string())))?;
        let fleet = runtime.block_on(Fleet::start(settings))?;
        Ok(BlockingFleet { runtime, fleet })
    }

    /// The async handle, for calls this facade does not wrap.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Runs any future on the fleet's runtime and blocks until it is done, e.g.
    /// `blocking.block_on(blocking.fleet().storage().get("key"))`.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// `GET` through the storage handle.
    pub fn get(&self, key: &str) -> Result<Option<String>, StorageError> {
        self.block_on(self.fleet.storage().get(key))
    }

    /// `SET` through the storage handle.
    pub fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), StorageError> {
        self.block_on(self.fleet.storage().set(key, value, ttl))
    }

    /// Storage and actor health.
    pub fn health(&self) -> FleetHealth {
        self.fleet.health()
    }

    /// Stops the fleet and its runtime.
    pub fn shutdown(self) -> Result<FleetShutdown, FleetError> {
        let report = self.runtime.block_on(self.fleet.shutdown());
        self.runtime.shutdown_timeout(Duration::from_secs(5));
        report
    }
}
