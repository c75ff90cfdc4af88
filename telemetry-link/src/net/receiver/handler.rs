//! The application's side of a receiver: the [`Handler`] trait, what it is
//! given ([`Delivery`], [`PresentDelivery`]) and what it answers
//! ([`Applied`], or a [`HandlerError`]).
//!
//! A handler's answer to a delivery is one of three things:
//! * `Ok(Applied::default())`: every record is applied;
//! * `Ok(applied)` with refusals ([`Applied::refuse`]): the handler
//!   processed the delivery and refuses some records for good (over a
//!   budget, invalid, ...). Refused records are settled like applied ones:
//!   acknowledged, counted by reason on both ends, never delivered again;
//!   the stream goes on;
//! * `Err(_)`: the handler could not process the delivery (a full disk, an
//!   unreachable downstream). Nothing is acknowledged, the connection
//!   closes, and the sender delivers the same records again later.
//!
//! A present ([`Handler::present`]) is answered the same way, without the
//! settling: its refused records are counted by reason
//! (`telemetry_link_records_rejected_total` and
//! `telemetry_link_present_records_rejected_total`) and logged, and the
//! present's result (`telemetry_link_presents_total{result}`) says whether
//! all, some or none of it was applied. Presents are not sequenced, so the
//! sender is not told.

use std::{future::Future, sync::Arc};

use crate::proto::refused::{RefusedCounts, RefusedReason};

/// Error type handlers return.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A run of consecutive, never-before-applied records from one sender
/// stream (an identity and a replica).
#[derive(Debug)]
pub struct Delivery<T> {
    /// The sender's identity (from its certificate).
    pub sender: Arc<str>,
    /// The sender's replica (empty: the default one). Each replica of an
    /// identity is its own stream, with its own sequence numbers.
    pub replica: Arc<str>,
    /// The replica's stream (its spool's id): sequence numbers restart at 1
    /// when a replica starts a new stream, so `(replica, stream_id, seq)`
    /// names a record of a sender.
    pub stream_id: u128,
    /// Sequence number of `records[0]`.
    pub first_seq: u64,
    /// The records, in sequence order.
    pub records: Vec<T>,
}

/// A sender's present state: its current view, sent on its own stream
/// ahead of or beside its backlog (see [`crate::Sender::set_present`]).
/// Not sequenced and not acknowledged; a handler applies it to show the
/// present at once, and treats records of the same stream up to
/// `covers_seq` that arrive afterwards as history (older than the present).
#[derive(Debug)]
pub struct PresentDelivery<T> {
    /// The sender's identity (from its certificate).
    pub sender: Arc<str>,
    /// The sender's replica (empty: the default one).
    pub replica: Arc<str>,
    /// The replica's stream.
    pub stream_id: u128,
    /// The sender's last sequence number when it took the present.
    pub covers_seq: u64,
    /// The present's records.
    pub records: Vec<T>,
}

/// What a handler did with a delivery: the records it refused, by reason
/// (the default: none — everything applied).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    refused: RefusedCounts,
}

impl Applied {
    /// Every record applied.
    pub fn all() -> Self {
        Self::default()
    }

    /// Counts `n` records as refused for `reason`. Refusals beyond the
    /// delivery's record count are ignored (and logged).
    pub fn refuse(&mut self, reason: RefusedReason, n: u64) -> &mut Self {
        self.refused.add(reason, n);
        self
    }

    /// [`Applied::refuse`] by value.
    pub fn with_refused(mut self, reason: RefusedReason, n: u64) -> Self {
        self.refused.add(reason, n);
        self
    }

    /// The refused records, by reason.
    pub fn refused(&self) -> &RefusedCounts {
        &self.refused
    }
}

/// The application's side of the receiver.
pub trait Handler<T>: Send + Sync + 'static {
    /// Processes a batch: applies its records, or refuses some of them
    /// ([`Applied::refuse`]). Returning an error closes the sender's
    /// connection without acknowledging the batch; the sender retries it
    /// later.
    fn handle(
        &self,
        delivery: Delivery<T>,
    ) -> impl Future<Output = Result<Applied, HandlerError>> + Send;

    /// A sender's present state arrived (default: ignored, counted as
    /// applied). It may arrive while [`Handler::handle`] runs for the same
    /// stream's backlog. The answer counts like a delivery's: records
    /// refused by reason ([`Applied::refuse`]: over a budget, from a fenced
    /// epoch, ...), the rest applied; refusals beyond the present's record
    /// count are ignored. An error is logged and counted; the session goes
    /// on either way, and nothing is reported to the sender (a present is
    /// not sequenced).
    fn present(
        &self,
        present: PresentDelivery<T>,
    ) -> impl Future<Output = Result<Applied, HandlerError>> + Send {
        let _ = present;
        async { Ok(Applied::all()) }
    }

    /// A session with replica `replica` (empty: the default one) of
    /// `sender` was established. Replicas of one identity connect and
    /// disconnect independently.
    fn sender_connected(&self, sender: &str, replica: &str) {
        let _ = (sender, replica);
    }

    /// The session with replica `replica` of `sender` ended.
    fn sender_disconnected(&self, sender: &str, replica: &str) {
        let _ = (sender, replica);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_counts_refusals_by_reason() {
        assert!(Applied::all().refused().is_empty());
        let mut a = Applied::default();
        a.refuse(RefusedReason::Budget, 2)
            .refuse(RefusedReason::Invalid, 1);
        let b = Applied::all()
            .with_refused(RefusedReason::Budget, 2)
            .with_refused(RefusedReason::Invalid, 1);
        assert_eq!(a, b);
        assert_eq!(a.refused().get(RefusedReason::Budget), 2);
        assert_eq!(a.refused().total(), 3);
    }
}
