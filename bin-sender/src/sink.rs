//! The sources' sink: the link sender, with the present-state lane
//! switchable (`--no-present`) and, for a leader-elected sender, the
//! leadership epoch stamped in front of every batch with object state and
//! every present (`telemetry_sources::sink::stamp_epoch`), so the receiver
//! can fence state from a replica that no longer leads.

use std::sync::Mutex;

use telemetry_link::Sender;
use telemetry_schema::ClusterRecord;
use telemetry_sources::{sink::stamp_epoch, RecordSink, SinkError};
use tokio::sync::watch;

/// The link sender as a [`RecordSink`].
#[derive(Debug)]
pub struct LinkSink {
    link: Sender<ClusterRecord>,
    present: bool,
    epoch: Mutex<Option<u64>>,
}

impl LinkSink {
    /// Records go to `link`; presents only when `present` is set.
    pub fn new(link: Sender<ClusterRecord>, present: bool) -> Self {
        Self {
            link,
            present,
            epoch: Mutex::new(None),
        }
    }

    fn epoch(&self) -> Option<u64> {
        *self.epoch.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RecordSink for LinkSink {
    async fn send_batch(&self, records: Vec<ClusterRecord>) -> Result<(), SinkError> {
        let records = stamp_epoch(records, self.epoch());
        RecordSink::send_batch(&self.link, records).await
    }

    fn connections(&self) -> watch::Receiver<u64> {
        RecordSink::connections(&self.link)
    }

    fn set_present(&self, records: &[ClusterRecord]) -> Result<(), SinkError> {
        if !self.present {
            return Ok(());
        }
        match self.epoch() {
            Some(epoch) => {
                let stamped = stamp_epoch(records.to_vec(), Some(epoch));
                RecordSink::set_present(&self.link, &stamped)
            }
            None => RecordSink::set_present(&self.link, records),
        }
    }

    fn set_leader_epoch(&self, epoch: Option<u64>) {
        *self.epoch.lock().unwrap_or_else(|p| p.into_inner()) = epoch;
    }
}
