//! The link handler of the receiver: applies each sender's records to the
//! shared [`ClusterStore`] under the sender's certificate identity (the
//! `cluster` label), tracks connects/disconnects for the sender TTL,
//! optionally queues every delivery's samples for remote write before the
//! link may acknowledge it, and optionally appends every delivery to an
//! audit log (`<unix-ms> <sender> <first-seq> <count>` per line) so that
//! delivery can be verified across receiver restarts.
//!
//! Each delivery is interpreted once ([`crate::interpret`]): the store
//! applies it and, when remote write is on, returns the samples its
//! timeline produced, which are queued before the handler returns. If
//! queueing fails the handler fails, the link does not acknowledge, and
//! the delivery comes again: applying it twice leaves `/metrics` as once
//! (upserts and measurements replace, scale events count once per key).
//! Applying it twice would not produce its samples twice, though (what did
//! not change produces none), so the samples that could not be queued are
//! held, one delivery per stream, and queued first when the delivery
//! comes again; the queues' idempotent producer marks then skip what the
//! held samples covered.
//!
//! Refusals: records the store does not apply — over the sender's budget
//! (`budget`), invalid (`invalid`, `label_limit`), object state of an
//! older leadership epoch than the cluster's (`fenced`) — are refused
//! through [`Applied`], so both ends count them by reason and the sender
//! deletes them from its spool (refused, not lost); the link logs them at a
//! bounded rate. A present's refused records are answered the same way and
//! counted on the receiver only (a present is not sequenced); a present of
//! an older epoch is refused whole, as `fenced`.
//!
//! The audit line of a delivery with refusals carries a fifth field, the
//! number of its records refused: `<unix-ms> <sender> <first-seq> <count>
//! <refused>`.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::Write,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use telemetry_link::{Applied, Delivery, Handler, HandlerError, PresentDelivery, RefusedReason};
use telemetry_schema::ClusterRecord;

use crate::{
    remote_write::{convert::Converted, RemoteWrite, RemoteWriteError},
    store::{ClusterStore, PresentOutcome},
};

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
    /// Samples of a delivery that could not be queued, per (sender, stream).
    unqueued: Arc<Mutex<UnqueuedByStream>>,
}

/// Held samples per (sender, stream).
type UnqueuedByStream = HashMap<(Arc<str>, u128), Unqueued>;

/// The samples of records `first_seq..first_seq + records` that remote
/// write could not queue.
#[derive(Debug)]
struct Unqueued {
    first_seq: u64,
    records: u64,
    converted: Arc<Converted>,
}

impl StoreHandler {
    /// A handler writing into `store`.
    pub fn new(store: SharedStore) -> Self {
        Self {
            store,
            audit: None,
            remote_write: None,
            unqueued: Arc::default(),
        }
    }

    /// Also queues every delivery's samples for remote write; a batch is
    /// acknowledged only once they are durably queued. The store keeps its
    /// clusters' timelines from now on.
    pub fn with_remote_write(mut self, remote_write: Arc<RemoteWrite>) -> Self {
        lock(&self.store).keep_timeline();
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

impl StoreHandler {
    /// Queues a delivery's samples for remote write, after the held samples
    /// of an earlier attempt at the same records (see the module docs).
    async fn queue(
        &self,
        rw: &RemoteWrite,
        sender: &Arc<str>,
        stream_id: u128,
        first_seq: u64,
        records: u64,
        converted: Arc<Converted>,
    ) -> Result<(), RemoteWriteError> {
        let key = (sender.clone(), stream_id);
        let held = self.unqueued().remove(&key);
        if let Some(held) = held {
            if held.first_seq <= first_seq && first_seq <= held.first_seq + held.records {
                let again = rw
                    .forward_converted(
                        sender,
                        stream_id,
                        held.first_seq,
                        held.records,
                        held.converted.clone(),
                    )
                    .await;
                if let Err(e) = again {
                    self.unqueued().insert(key, held);
                    return Err(e);
                }
            } else {
                tracing::warn!(%sender, first_seq, held_from = held.first_seq, "the sender resumed elsewhere than the delivery whose samples could not be queued; they are dropped");
            }
        }
        let result = rw
            .forward_converted(sender, stream_id, first_seq, records, converted.clone())
            .await;
        if result.is_err() {
            let held = Unqueued {
                first_seq,
                records,
                converted,
            };
            self.unqueued().insert(key, held);
        }
        result
    }

    fn unqueued(&self) -> MutexGuard<'_, UnqueuedByStream> {
        self.unqueued.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Handler<ClusterRecord> for StoreHandler {
    async fn handle(&self, delivery: Delivery<ClusterRecord>) -> Result<Applied, HandlerError> {
        let (sender, first, count) = (
            delivery.sender.clone(),
            delivery.first_seq,
            delivery.records.len(),
        );
        let ms = telemetry_link::unix_ms();
        let delivered = lock(&self.store).deliver_at(
            &delivery.sender,
            delivery.stream_id,
            delivery.first_seq,
            delivery.records,
            Instant::now(),
        );
        let refused = delivered.refused;
        if !refused.is_empty() {
            tracing::debug!(%sender, replica = %delivery.replica, first, refused = refused.total(), "records refused");
        }
        if let Some(rw) = &self.remote_write {
            let converted = Arc::new(delivered.converted);
            self.queue(
                rw,
                &sender,
                delivery.stream_id,
                first,
                count as u64,
                converted,
            )
            .await?;
        }
        if let Some(audit) = &self.audit {
            let line = match refused.total() {
                0 => format!("{ms} {sender} {first} {count}\n"),
                n => format!("{ms} {sender} {first} {count} {n}\n"),
            };
            let mut f = audit.lock().unwrap_or_else(|p| p.into_inner());
            // One write per line: a crash leaves whole lines (or a torn last one).
            f.write_all(line.as_bytes())?;
        }
        let mut applied = Applied::all();
        for (reason, n) in refused.iter() {
            applied.refuse(reason, n);
        }
        Ok(applied)
    }

    async fn present(
        &self,
        present: PresentDelivery<ClusterRecord>,
    ) -> Result<Applied, HandlerError> {
        let records = present.records.len();
        let outcome = lock(&self.store).present_at(
            &present.sender,
            present.stream_id,
            present.covers_seq,
            present.records,
            Instant::now(),
        );
        let (sender, replica) = (&present.sender, &present.replica);
        let mut applied = Applied::all();
        match outcome {
            PresentOutcome::Fenced { epoch } => {
                tracing::info!(
                    %sender,
                    %replica,
                    epoch,
                    records,
                    "present of an older leadership epoch refused (fenced)"
                );
                applied.refuse(RefusedReason::Fenced, records as u64);
            }
            PresentOutcome::Stale => tracing::info!(
                %sender,
                %replica,
                covers_seq = present.covers_seq,
                records,
                "present older than what is applied; ignored"
            ),
            PresentOutcome::Applied(refused) => {
                tracing::info!(
                    %sender,
                    %replica,
                    covers_seq = present.covers_seq,
                    records,
                    refused = refused.total(),
                    "present state received ahead of the backlog"
                );
                for (reason, n) in refused.iter() {
                    applied.refuse(reason, n);
                }
            }
        }
        Ok(applied)
    }

    fn sender_connected(&self, sender: &str, _replica: &str) {
        lock(&self.store).sender_connected(sender, Instant::now());
    }

    fn sender_disconnected(&self, sender: &str, _replica: &str) {
        lock(&self.store).sender_disconnected(sender, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use telemetry_schema::{HpaInfo, ScaleEvent};

    use super::*;
    use crate::{remote_write::RemoteWriteConfig, store::StoreConfig};

    fn records() -> Vec<ClusterRecord> {
        let hpa = HpaInfo {
            namespace: "ns".into(),
            name: "web".into(),
            min_replicas: 1,
            max_replicas: 5,
            current_replicas: 2,
            desired_replicas: 3,
            targets: Vec::new(),
        };
        let event = ScaleEvent {
            namespace: "ns".into(),
            hpa: "web".into(),
            old_replicas: 2,
            new_replicas: 3,
            reason: "cpu above target".into(),
            timestamp_ms: 1_700_000_000_000,
            key: "uid-1/1".into(),
        };
        vec![
            ClusterRecord::ObservedAt {
                unix_ms: 1_700_000_000_000,
            },
            ClusterRecord::HpaUpsert(hpa),
            ClusterRecord::ScaleEvent(event),
        ]
    }

    /// A handler forwarding to an endpoint nobody listens on, so every
    /// queued sample stays pending.
    fn forwarding_handler(dir: &Path) -> (StoreHandler, Arc<RemoteWrite>) {
        let store = Arc::new(Mutex::new(ClusterStore::new(StoreConfig::default())));
        let cfg = RemoteWriteConfig::new(
            vec!["http://127.0.0.1:9/api/v1/write".into()],
            dir.to_path_buf(),
        );
        let rw = RemoteWrite::start(cfg, &prometheus::Registry::new()).unwrap();
        (StoreHandler::new(store).with_remote_write(rw.clone()), rw)
    }

    fn delivery() -> Delivery<ClusterRecord> {
        Delivery {
            sender: Arc::from("cluster-a"),
            replica: Arc::from(""),
            stream_id: 7,
            first_seq: 1,
            records: records(),
        }
    }

    #[tokio::test]
    async fn object_state_of_an_older_epoch_is_refused_as_fenced() {
        let store = Arc::new(Mutex::new(ClusterStore::new(StoreConfig::default())));
        let handler = StoreHandler::new(store);
        let from = |replica: &str, stream_id, epoch| Delivery {
            replica: Arc::from(replica),
            stream_id,
            records: std::iter::once(ClusterRecord::LeaderEpoch { epoch })
                .chain(records())
                .collect(),
            ..delivery()
        };
        let applied = handler.handle(from("b", 2, 5)).await.unwrap();
        assert!(applied.refused().is_empty());
        let applied = handler.handle(from("a", 1, 4)).await.unwrap();
        // The HPA upsert is refused; the marker, the observation time and
        // the scale event (history, counted once) are not.
        assert_eq!(applied.refused().get(RefusedReason::Fenced), 1);
        assert_eq!(applied.refused().total(), 1);
    }

    #[tokio::test]
    async fn samples_that_could_not_be_queued_are_queued_when_the_delivery_comes_again() {
        let once = tempfile::tempdir().unwrap();
        let (handler, rw) = forwarding_handler(once.path());
        handler.handle(delivery()).await.unwrap();
        let expected = rw.pending_samples();
        assert!(expected > 0);

        let twice = tempfile::tempdir().unwrap();
        let (handler, rw) = forwarding_handler(twice.path());
        rw.failing_pushes.store(1, Ordering::SeqCst);
        assert!(handler.handle(delivery()).await.is_err());
        assert_eq!(rw.pending_samples(), 0);
        // The link redelivers the same records: the store has applied them
        // already (the scale event's key is known), yet every sample arrives.
        handler.handle(delivery()).await.unwrap();
        assert_eq!(rw.pending_samples(), expected);
        // And a third delivery of the same records queues nothing more.
        handler.handle(delivery()).await.unwrap();
        assert_eq!(rw.pending_samples(), expected);
    }
}
