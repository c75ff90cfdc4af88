//! The link handler of the receiver: applies each sender's records to the
//! shared [`ClusterStore`] under the sender's certificate identity (the
//! `cluster` label), tracks connects/disconnects for the sender TTL, and
//! optionally queues every delivery's samples for remote write before the
//! link may acknowledge it, and optionally appends every delivery to an
//! audit log
//! (`<unix-ms> <sender> <first-seq> <count>` per line) so that delivery can
//! be verified across receiver restarts.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use telemetry_link::{Applied, Delivery, Handler, HandlerError, PresentDelivery};
use telemetry_schema::ClusterRecord;

use crate::{remote_write::RemoteWrite, store::ClusterStore};

/// Shared store handle.
pub type SharedStore = Arc<Mutex<ClusterStore>>;

/// Locks the store; a panic elsewhere while holding it leaves consistent
/// data (every mutation completes before returning), so poisoning is ignored.
pub fn lock(store: &SharedStore) -> MutexGuard<'_, ClusterStore> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies deliveries to the store.
#[derive(Debug, Clone)]
pub struct StoreHandler {
    store: SharedStore,
    audit: Option<Arc<Mutex<File>>>,
    remote_write: Option<Arc<RemoteWrite>>,
}

impl StoreHandler {
    /// A handler writing into `store`.
    pub fn new(store: SharedStore) -> Self {
        Self {
            store,
            audit: None,
            remote_write: None,
        }
    }

    /// Also queues every delivery's samples for remote write; a batch is
    /// acknowledged only once they are durably queued.
    pub fn with_remote_write(mut self, remote_write: Arc<RemoteWrite>) -> Self {
        self.remote_write = Some(remote_write);
        self
    }

    /// Also appends every delivery to `path` (created if missing).
    pub fn with_audit_log(mut self, path: &Path) -> std::io::Result<Self> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        self.audit = Some(Arc::new(Mutex::new(f)));
        Ok(self)
    }
}

impl Handler<ClusterRecord> for StoreHandler {
    async fn handle(&self, delivery: Delivery<ClusterRecord>) -> Result<Applied, HandlerError> {
        let (sender, first, count) = (
            delivery.sender.clone(),
            delivery.first_seq,
            delivery.records.len(),
        );
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if let Some(rw) = &self.remote_write {
            rw.forward(
                &delivery.sender,
                delivery.stream_id,
                delivery.first_seq,
                &delivery.records,
                i64::try_from(ms).unwrap_or(i64::MAX),
            )
            .await?;
        }
        lock(&self.store).apply_delivery_at(
            &delivery.sender,
            delivery.stream_id,
            delivery.first_seq,
            delivery.records,
            Instant::now(),
        );
        if let Some(audit) = &self.audit {
            let line = format!("{ms} {sender} {first} {count}\n");
            let mut f = audit.lock().unwrap_or_else(|p| p.into_inner());
            // One write per line: a crash leaves whole lines (or a torn last one).
            f.write_all(line.as_bytes())?;
        }
        Ok(Applied::all())
    }

    async fn present(&self, present: PresentDelivery<ClusterRecord>) -> Result<(), HandlerError> {
        let records = present.records.len();
        let applied = lock(&self.store).apply_present_at(
            &present.sender,
            present.stream_id,
            present.covers_seq,
            present.records,
            Instant::now(),
        );
        tracing::info!(
            sender = %present.sender,
            covers_seq = present.covers_seq,
            records,
            applied,
            "present state received ahead of the backlog"
        );
        Ok(())
    }

    fn sender_connected(&self, sender: &str, _replica: &str) {
        lock(&self.store).sender_connected(sender, Instant::now());
    }

    fn sender_disconnected(&self, sender: &str, _replica: &str) {
        lock(&self.store).sender_disconnected(sender, Instant::now());
    }
}
