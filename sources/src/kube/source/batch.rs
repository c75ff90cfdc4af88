//! Records waiting for the sink: a batch goes to the sink after the flush
//! interval or at the maximum batch size, in order, split into batches of at
//! most that size.

use std::time::{Duration, Instant};

use telemetry_schema::ClusterRecord;

use crate::sink::{RecordSink, SinkError};

/// Records waiting for the sink.
#[derive(Debug)]
pub(super) struct Batcher {
    buf: Vec<ClusterRecord>,
    since: Option<Instant>,
    interval: Duration,
    max: usize,
}

impl Batcher {
    pub(super) fn new(interval: Duration, max: usize) -> Self {
        Self {
            buf: Vec::new(),
            since: None,
            interval,
            max: max.max(1),
        }
    }

    pub(super) fn push(&mut self, r: ClusterRecord) {
        if self.buf.is_empty() {
            self.since = Some(Instant::now());
        }
        self.buf.push(r);
    }

    pub(super) fn extend(&mut self, rs: Vec<ClusterRecord>) {
        for r in rs {
            self.push(r);
        }
    }

    /// Drops the object state waiting here (measurements stay); returns how
    /// many records were dropped.
    pub(super) fn drop_object_state(&mut self) -> usize {
        let before = self.buf.len();
        self.buf.retain(|r| !r.is_object_state());
        if self.buf.is_empty() {
            self.since = None;
        }
        before - self.buf.len()
    }

    pub(super) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.since
            .map(|s| tokio::time::Instant::from_std(s + self.interval))
    }

    pub(super) fn full(&self) -> bool {
        self.buf.len() >= self.max
    }

    pub(super) async fn flush(&mut self, sink: &impl RecordSink) -> Result<(), SinkError> {
        self.since = None;
        while !self.buf.is_empty() {
            let rest = self.buf.split_off(self.max.min(self.buf.len()));
            let head = std::mem::replace(&mut self.buf, rest);
            sink.send_batch(head).await?;
        }
        Ok(())
    }
}
