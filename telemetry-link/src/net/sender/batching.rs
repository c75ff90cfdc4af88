//! When spooled records leave: the default linger ([`DEFAULT_LINGER`]) and
//! [`Sender::flush`], which sends what is spooled at once and waits for its
//! acknowledgement. The decisions themselves are the session machine's
//! (`session::sender`); this module only asks for them.

use std::time::Duration;

use super::Sender;
use crate::proto::record::Payload;

/// The default [`SenderConfig::linger`](super::SenderConfig::linger): 1 s.
///
/// The costs of a link are per batch (datagrams, acks, the receiver's
/// state fsync), so a steady trickle of records should not travel one by
/// one. A second is far below what the consumers of the data notice —
/// Prometheus scrapes every 15 s, remote_write batches up to 5 s — and
/// batches 100 records/s into one batch a second (measured: 2 datagrams/s
/// instead of 114 without a linger, and the receiver's CPU from 6 % of a
/// core to 0.1 %). Fast producers fill
/// batches ([`batch_max_records`](super::SenderConfig::batch_max_records))
/// long before it passes (4096 records take 0.4 s at 10,000 records/s), so
/// a record never waits longer than the linger for its batch to leave, and
/// usually much less.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(1);

/// What [`Sender::flush`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// A receiver acknowledged every record spooled when the flush began.
    Acknowledged,
    /// No session was established, or the session ended, before that: the
    /// records stay spooled and the next session sends them at once.
    LinkDown,
}

impl<T: Payload> Sender<T> {
    /// Sends every record spooled so far at once, without waiting for its
    /// batch to fill or [linger](super::SenderConfig::linger), and waits
    /// until a receiver acknowledged them ([`Flushed::Acknowledged`]) or the
    /// link is down ([`Flushed::LinkDown`]: at once when no session is
    /// established, or when the session ends first; the records then go
    /// out, without lingering, with the next session). A slow receiver makes
    /// it wait; bound it with a timeout if needed.
    pub async fn flush(&self) -> Flushed {
        let target = self.inner.spool().last_seq();
        let mut acked = self.inner.acked.subscribe();
        let mut status = self.inner.status.subscribe();
        self.inner.flush.send_modify(|f| *f = (*f).max(target));
        loop {
            if *acked.borrow_and_update() >= target {
                return Flushed::Acknowledged;
            }
            if !status.borrow_and_update().connected {
                return Flushed::LinkDown;
            }
            tokio::select! {
                r = acked.changed() => if r.is_err() { return Flushed::LinkDown },
                r = status.changed() => if r.is_err() { return Flushed::LinkDown },
            }
        }
    }
}
