//! Where sources put their records: the link sender in production, a
//! vector in tests.
//!
//! Stamps: object state carries no time and no leadership of its own, so
//! the production sink puts a [`ClusterRecord::ObservedAt`]
//! ([`stamp_observed`]) and, for a leader-elected sender, a
//! [`ClusterRecord::LeaderEpoch`] ([`stamp_epoch`]) in front of every batch
//! with object state, and the epoch in front of every present.

use std::{future::Future, sync::Mutex};

use tokio::sync::watch;

use telemetry_schema::ClusterRecord;

/// A sink refused records (the spool failed, or it is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("record sink failed: {0}")]
pub struct SinkError(pub String);

/// The destination of a source's records.
pub trait RecordSink: Send + Sync {
    /// Hands over records in order. Returns once they are durably queued;
    /// never waits for the network.
    fn send_batch(
        &self,
        records: Vec<ClusterRecord>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// A counter that increases every time the link to the receiver is
    /// (re)established; sources send a full snapshot when it changes, so a
    /// restarted receiver converges.
    fn connections(&self) -> watch::Receiver<u64>;

    /// Sets the source's present state (its current view), which travels to
    /// the receiver ahead of any backlog. Sources call it when
    /// [`RecordSink::connections`] changes, after every record that the
    /// view reflects was handed to [`RecordSink::send_batch`]. Default:
    /// ignored.
    fn set_present(&self, records: &[ClusterRecord]) -> Result<(), SinkError> {
        let _ = records;
        Ok(())
    }

    /// The leadership epoch stamped ([`stamp_epoch`]) on every later batch
    /// with object state and every later present; `None` stamps nothing (a
    /// sender without leader election). A source calls it when it starts
    /// leading, after every record of an earlier term went to
    /// [`RecordSink::send_batch`]. Default: ignored.
    fn set_leader_epoch(&self, epoch: Option<u64>) {
        let _ = epoch;
    }
}

/// An in-memory sink for tests: collects records, lets the test bump the
/// connection counter.
#[derive(Debug)]
pub struct VecSink {
    records: Mutex<Vec<ClusterRecord>>,
    presents: Mutex<Vec<Vec<ClusterRecord>>>,
    connections: watch::Sender<u64>,
    epoch: Mutex<Option<u64>>,
}

impl Default for VecSink {
    fn default() -> Self {
        Self {
            records: Mutex::new(Vec::new()),
            presents: Mutex::new(Vec::new()),
            connections: watch::channel(0).0,
            epoch: Mutex::new(None),
        }
    }
}

impl VecSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything received so far.
    pub fn records(&self) -> Vec<ClusterRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Takes and clears what was received.
    pub fn take(&self) -> Vec<ClusterRecord> {
        self.records
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    /// Every present set so far, oldest first.
    pub fn presents(&self) -> Vec<Vec<ClusterRecord>> {
        self.presents.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Simulates a (re)connection of the link.
    pub fn reconnect(&self) {
        self.connections.send_modify(|c| *c += 1);
    }

    /// The epoch set last ([`RecordSink::set_leader_epoch`]).
    pub fn leader_epoch(&self) -> Option<u64> {
        self.epoch.lock().map(|e| *e).unwrap_or_default()
    }
}

/// Records and presents are stamped with the epoch ([`stamp_epoch`]), as
/// the production sink does, so tests see which term shipped them.
impl RecordSink for VecSink {
    async fn send_batch(&self, records: Vec<ClusterRecord>) -> Result<(), SinkError> {
        let records = stamp_epoch(records, self.leader_epoch());
        self.records
            .lock()
            .map_err(|_| SinkError("poisoned".into()))?
            .extend(records);
        Ok(())
    }

    fn connections(&self) -> watch::Receiver<u64> {
        self.connections.subscribe()
    }

    fn set_present(&self, records: &[ClusterRecord]) -> Result<(), SinkError> {
        let records = stamp_epoch(records.to_vec(), self.leader_epoch());
        self.presents
            .lock()
            .map_err(|_| SinkError("poisoned".into()))?
            .push(records);
        Ok(())
    }

    fn set_leader_epoch(&self, epoch: Option<u64>) {
        if let Ok(mut e) = self.epoch.lock() {
            *e = epoch;
        }
    }
}

/// Puts a [`ClusterRecord::LeaderEpoch`] in front of `records` when an
/// epoch is given and they hold object state; anything else is left alone.
pub fn stamp_epoch(records: Vec<ClusterRecord>, epoch: Option<u64>) -> Vec<ClusterRecord> {
    let Some(epoch) = epoch else {
        return records;
    };
    if !records.iter().any(ClusterRecord::is_object_state) {
        return records;
    }
    let mut stamped = Vec::with_capacity(records.len() + 1);
    stamped.push(ClusterRecord::LeaderEpoch { epoch });
    stamped.extend(records);
    stamped
}

/// Puts a [`ClusterRecord::ObservedAt`] with the current time in front of
/// `records` when they hold object state (records without a time of their
/// own); batches of samples, usage and scale events are left alone.
pub fn stamp_observed(records: Vec<ClusterRecord>) -> Vec<ClusterRecord> {
    if records.iter().all(ClusterRecord::is_timestamped) {
        return records;
    }
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut stamped = Vec::with_capacity(records.len() + 1);
    stamped.push(ClusterRecord::ObservedAt { unix_ms });
    stamped.extend(records);
    stamped
}

/// The production sink: the link's sender (spool + QUIC). Batches with
/// object state get their observation time ([`stamp_observed`]).
impl RecordSink for telemetry_link::Sender<ClusterRecord> {
    async fn send_batch(&self, records: Vec<ClusterRecord>) -> Result<(), SinkError> {
        let records = stamp_observed(records);
        telemetry_link::Sender::send_batch(self, &records)
            .await
            .map(|_| ())
            .map_err(|e| SinkError(e.to_string()))
    }

    fn connections(&self) -> watch::Receiver<u64> {
        telemetry_link::Sender::connections(self)
    }

    fn set_present(&self, records: &[ClusterRecord]) -> Result<(), SinkError> {
        telemetry_link::Sender::set_present(self, records)
            .map(|_| ())
            .map_err(|e| SinkError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use telemetry_link::{Sample, SeriesKey};

    use super::*;
    use telemetry_schema::ObjectRef;

    #[test]
    fn only_batches_with_object_state_get_an_observation_time() {
        let key = std::sync::Arc::new(SeriesKey::new("m", [("a", "b")]).unwrap());
        let samples = vec![ClusterRecord::Sample(Sample::new(key, 5, 1.0))];
        assert_eq!(stamp_observed(samples.clone()), samples);
        let delete = ClusterRecord::PodDelete(ObjectRef {
            namespace: "n".into(),
            name: "p".into(),
        });
        let stamped = stamp_observed(vec![delete.clone()]);
        assert_eq!(stamped.len(), 2);
        assert!(
            matches!(stamped[0], ClusterRecord::ObservedAt { unix_ms } if unix_ms > 1_600_000_000_000)
        );
        assert_eq!(stamped[1], delete);
    }

    #[test]
    fn only_object_state_of_a_leader_gets_its_epoch() {
        let delete = ClusterRecord::PodDelete(ObjectRef {
            namespace: "n".into(),
            name: "p".into(),
        });
        assert_eq!(
            stamp_epoch(vec![delete.clone()], None),
            vec![delete.clone()]
        );
        assert_eq!(
            stamp_epoch(vec![delete.clone()], Some(4)),
            vec![ClusterRecord::LeaderEpoch { epoch: 4 }, delete.clone()]
        );
        let marker_only = vec![ClusterRecord::ObservedAt { unix_ms: 5 }];
        assert_eq!(stamp_epoch(marker_only.clone(), Some(4)), marker_only);
        // The observation time goes in front of the epoch, which counts as
        // needing none.
        let both = stamp_observed(stamp_epoch(vec![delete.clone()], Some(4)));
        assert!(matches!(both[0], ClusterRecord::ObservedAt { .. }));
        assert_eq!(both[1..], [ClusterRecord::LeaderEpoch { epoch: 4 }, delete]);
    }
}
