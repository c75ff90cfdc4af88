//! Where each sender stream of one cluster stands, and the cluster's
//! leadership epoch.
//!
//! What it owns, per stream (a sender replica's spool, named by its stream
//! id): the `covers_seq` of the last present applied, the highest sequence
//! applied, the epoch of its last [`ClusterRecord::LeaderEpoch`] marker and
//! its last [`ClusterRecord::ObservedAt`]; per cluster ([`Epochs`]) the
//! highest epoch any stream announced.
//!
//! What it guarantees:
//! - Streams do not disturb each other: a present covers records of its own
//!   stream only, and a stream's marker and observation time apply to the
//!   records that follow on that stream, whatever another replica sends
//!   in between.
//! - **Fencing.** Object state (snapshots, upserts, deletes) that follows a
//!   marker older than the cluster's highest epoch is refused, and so is a
//!   present whose marker is older; both are counted. Measurements (usage,
//!   scale events, samples) of an older epoch are history: they carry
//!   their own time, only move a series forward and count once. A stream
//!   that never sent a marker (a sender without leader election) is never
//!   fenced.
//! - Memory is bounded: at most [`MAX_STREAMS`] streams per cluster are
//!   remembered, the least recently used forgotten first (a forgotten
//!   stream's backlog then counts as news, and its state as unfenced until
//!   its next marker — its next batch with object state).
//!
//! Limit: markers are not persisted. After a receiver restart a stream's
//! records up to its next marker (at most one sender batch, 500 records by
//! default) are applied as unfenced.

use std::collections::HashMap;

#[cfg(doc)]
use telemetry_schema::ClusterRecord;

/// Streams remembered per cluster.
pub(crate) const MAX_STREAMS: usize = 64;

/// Where one stream stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StreamState {
    /// `covers_seq` of the last present applied.
    pub(crate) present: Option<u64>,
    /// The highest sequence applied from deliveries.
    pub(crate) applied: Option<u64>,
    /// The epoch of the stream's last marker.
    pub(crate) epoch: Option<u64>,
    /// The stream's last observation time (ms since the epoch).
    pub(crate) observed_ms: Option<i64>,
}

/// The streams of one cluster, least recently used forgotten first.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    by_id: HashMap<u128, (StreamState, u64)>,
    uses: u64,
}

impl Streams {
    /// The state of `stream` (all unknown for a new one).
    pub(crate) fn get(&self, stream: u128) -> StreamState {
        self.by_id.get(&stream).map(|(s, _)| *s).unwrap_or_default()
    }

    /// Stores the state of `stream`, forgetting the least recently used
    /// beyond [`MAX_STREAMS`].
    pub(crate) fn put(&mut self, stream: u128, state: StreamState) {
        self.uses += 1;
        self.by_id.insert(stream, (state, self.uses));
        if self.by_id.len() > MAX_STREAMS {
            let oldest = self
                .by_id
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.by_id.remove(&oldest);
            }
        }
    }
}

/// The highest leadership epoch of a cluster.
#[derive(Debug, Default)]
pub(crate) struct Epochs {
    highest: Option<u64>,
}

impl Epochs {
    /// Whether state stamped `epoch` is fenced: older than the highest.
    pub(crate) fn fences(&self, epoch: Option<u64>) -> bool {
        matches!((self.highest, epoch), (Some(h), Some(e)) if e < h)
    }

    /// Takes in a marker of `epoch`; logs when the highest rises.
    pub(crate) fn see(&mut self, cluster: &str, epoch: u64) {
        if self.highest.is_some_and(|h| h >= epoch) {
            return;
        }
        tracing::info!(
            cluster,
            epoch,
            previous = ?self.highest,
            "leadership epoch advanced; object state of older epochs is refused (fenced)"
        );
        self.highest = Some(epoch);
    }

    /// The highest epoch seen.
    #[cfg(test)]
    pub(crate) fn highest(&self) -> Option<u64> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_state_of_an_older_epoch_is_fenced() {
        let mut epochs = Epochs::default();
        assert!(!epochs.fences(Some(1)) && !epochs.fences(None));
        epochs.see("c", 5);
        epochs.see("c", 3);
        assert_eq!(epochs.highest(), Some(5));
        assert!(epochs.fences(Some(4)));
        assert!(!epochs.fences(Some(5)) && !epochs.fences(Some(6)));
        assert!(!epochs.fences(None), "no marker: never fenced");
    }

    #[test]
    fn streams_are_apart_and_bounded() {
        let mut streams = Streams::default();
        let a = StreamState {
            present: Some(9),
            ..StreamState::default()
        };
        streams.put(1, a);
        assert_eq!(streams.get(1), a);
        assert_eq!(streams.get(2), StreamState::default());
        for id in 2..=MAX_STREAMS as u128 {
            streams.put(id, StreamState::default());
        }
        streams.put(1, a); // used again: now the most recent
        streams.put(1000, StreamState::default());
        assert_eq!(streams.get(1), a, "recently used streams stay");
        assert_eq!(streams.by_id.len(), MAX_STREAMS);
        assert!(
            !streams.by_id.contains_key(&2),
            "the least recently used goes"
        );
    }
}
