//! The link handler of the receiver: applies each sender's records to the
//! shared [`ClusterStore`] under the sender's certificate identity (the
//! `cluster` label), and tracks connects/disconnects for the sender TTL.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use telemetry_link::{Delivery, Handler, HandlerError};
use telemetry_model::ClusterRecord;

use crate::store::ClusterStore;

/// Shared store handle.
pub type SharedStore = Arc<Mutex<ClusterStore>>;

/// Locks the store; a panic elsewhere while holding it leaves consistent
/// data (every mutation completes before returning), so poisoning is ignored.
pub fn lock(store: &SharedStore) -> MutexGuard<'_, ClusterStore> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies deliveries to the store.
#[derive(Clone)]
pub struct StoreHandler {
    store: SharedStore,
}

impl StoreHandler {
    /// A handler writing into `store`.
    pub fn new(store: SharedStore) -> Self {
        Self { store }
    }
}

impl Handler<ClusterRecord> for StoreHandler {
    async fn handle(&self, delivery: Delivery<ClusterRecord>) -> Result<(), HandlerError> {
        lock(&self.store).apply(&delivery.sender, delivery.records);
        Ok(())
    }

    fn sender_connected(&self, sender: &str) {
        lock(&self.store).sender_connected(sender, Instant::now());
    }

    fn sender_disconnected(&self, sender: &str) {
        lock(&self.store).sender_disconnected(sender, Instant::now());
    }
}
