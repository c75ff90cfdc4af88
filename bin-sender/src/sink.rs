//! The sources' sink: the link sender, with the present-state lane
//! switchable (`--no-present`).

use telemetry_link::Sender;
use telemetry_schema::ClusterRecord;
use telemetry_sources::{RecordSink, SinkError};
use tokio::sync::watch;

/// The link sender as a [`RecordSink`].
#[derive(Debug)]
pub struct LinkSink {
    link: Sender<ClusterRecord>,
    present: bool,
}

impl LinkSink {
    /// Records go to `link`; presents only when `present` is set.
    pub fn new(link: Sender<ClusterRecord>, present: bool) -> Self {
        Self { link, present }
    }
}

impl RecordSink for LinkSink {
    async fn send_batch(&self, records: Vec<ClusterRecord>) -> Result<(), SinkError> {
        RecordSink::send_batch(&self.link, records).await
    }

    fn connections(&self) -> watch::Receiver<u64> {
        RecordSink::connections(&self.link)
    }

    fn set_present(&self, records: &[ClusterRecord]) -> Result<(), SinkError> {
        if self.present {
            RecordSink::set_present(&self.link, records)
        } else {
            Ok(())
        }
    }
}
