//! Where sources put their records: the link sender in production, a
//! vector in tests; and [`InFlight`], for a source that keeps producing
//! while earlier batches are made durable.
//!
//! Stamps: object state carries no time and no leadership of its own, so
//! the production sink puts a [`ClusterRecord::ObservedAt`]
//! ([`stamp_observed`]) and, for a leader-elected sender, a
//! [`ClusterRecord::LeaderEpoch`] ([`stamp_epoch`]) in front of every batch
//! with object state, and the epoch in front of every present.

use std::{collections::VecDeque, future::Future, pin::Pin, sync::Mutex, task::Poll};

use tokio::sync::watch;

use telemetry_schema::ClusterRecord;

/// A sink refused records (the spool failed, or it is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("record sink failed: {0}")]
pub struct SinkError(pub String);

/// The destination of a source's records.
pub trait RecordSink: Send + Sync {
    /// Hands over records in order. Returns once they are durably queued;
    /// never waits for the network. The batch takes its place in the order
    /// when the future is first polled; sends in flight together may share
    /// the sink's fsync ([`InFlight`]).
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
    /// [`RecordSink::connections`] changes, after the sends of every record
    /// that the view reflects returned. Default: ignored.
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

/// Sends handed to a sink and not yet done, oldest first, at most `max`.
///
/// A source that awaits each send before producing the next batch can
/// never share an fsync, and falls behind its schedule whenever a send
/// takes longer than its tick. With `InFlight` it keeps producing: each
/// send is polled once as it is handed over ([`InFlight::push`]), so it
/// takes its place in the sink's order at once, and its completion is
/// collected later, in order ([`InFlight::next`]). When `max` sends are
/// pending, `push` waits for the oldest: back-pressure when the sink (the
/// disk) cannot keep up. Cancel-safe: a cancelled `next` leaves the send
/// in place.
pub struct InFlight<F> {
    sends: VecDeque<Pin<Box<F>>>,
    max: usize,
}

impl<F> std::fmt::Debug for InFlight<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("pending", &self.sends.len())
            .field("max", &self.max)
            .finish()
    }
}

impl<F: Future<Output = Result<(), SinkError>>> InFlight<F> {
    /// At most `max` (at least 1) sends pending at once.
    pub fn new(max: usize) -> Self {
        Self {
            sends: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Sends pending.
    pub fn len(&self) -> usize {
        self.sends.len()
    }

    /// Whether no send is pending.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    /// Hands a send over: waits for the oldest while `max` are pending,
    /// then polls `send` once and keeps it if it is not done. Fails with
    /// the first failed send.
    pub async fn push(&mut self, send: F) -> Result<(), SinkError> {
        while self.sends.len() >= self.max {
            self.next().await?;
        }
        let mut send = Box::pin(send);
        match std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await {
            Poll::Ready(result) => result,
            Poll::Pending => {
                self.sends.push_back(send);
                Ok(())
            }
        }
    }

    /// Waits for the oldest pending send (forever when there is none, so
    /// it can sit in a `select!`).
    pub async fn next(&mut self) -> Result<(), SinkError> {
        let Some(oldest) = self.sends.front_mut() else {
            return std::future::pending().await;
        };
        let result = oldest.as_mut().await;
        self.sends.pop_front();
        result
    }

    /// Waits for every pending send; fails with the first failure.
    pub async fn drain(&mut self) -> Result<(), SinkError> {
        while !self.sends.is_empty() {
            self.next().await?;
        }
        Ok(())
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
    use std::{sync::Arc, time::Duration};

    use telemetry_link::{Sample, SeriesKey};

    use super::*;
    use telemetry_schema::ObjectRef;

    /// A send that finishes after `delay`, noting its order when first
    /// polled and when done.
    async fn slow_send(
        id: u32,
        delay: Duration,
        log: Arc<Mutex<Vec<String>>>,
    ) -> Result<(), SinkError> {
        log.lock().unwrap().push(format!("start {id}"));
        tokio::time::sleep(delay).await;
        log.lock().unwrap().push(format!("done {id}"));
        if id == 99 {
            return Err(SinkError("refused".into()));
        }
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_sends_start_in_order_overlap_and_push_back_at_the_limit() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut in_flight = InFlight::new(2);
        let t0 = tokio::time::Instant::now();
        // Each takes 10 ms; 1 and 2 overlap, 3 waits for 1.
        for id in 1..=3 {
            in_flight
                .push(slow_send(id, Duration::from_millis(10), log.clone()))
                .await
                .unwrap();
        }
        assert_eq!(t0.elapsed(), Duration::from_millis(10), "3 waited for 1");
        assert_eq!(in_flight.len(), 2);
        in_flight.drain().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(20));
        // A send is seen done when it is the oldest: 2 (done at 10 ms) is
        // collected after 3 was handed over.
        assert_eq!(
            *log.lock().unwrap(),
            ["start 1", "start 2", "done 1", "start 3", "done 2", "done 3"]
        );
        assert!(in_flight.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_reports_a_failed_send() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut in_flight = InFlight::new(4);
        in_flight
            .push(slow_send(99, Duration::from_millis(5), log.clone()))
            .await
            .unwrap();
        in_flight
            .push(slow_send(1, Duration::from_millis(5), log.clone()))
            .await
            .unwrap();
        let err = in_flight.drain().await.unwrap_err();
        assert!(err.to_string().contains("refused"));
    }

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
