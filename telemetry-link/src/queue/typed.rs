//! [`DurableQueue<T>`]: the typed face of [`ByteQueue`], one
//! postcard-encoded value per entry, each of weight 1.

use std::{fmt, marker::PhantomData, path::Path};

use serde::{de::DeserializeOwned, Serialize};

use super::{
    ByteQueue, Entry, Producer, ProducerMark, Pushed, QueueError, QueueRecovery, QueueStats,
};
use crate::spool::SpoolConfig;

/// A durable FIFO of `T`s; see the [module documentation](super).
pub struct DurableQueue<T> {
    bytes: ByteQueue,
    _values: PhantomData<fn(T) -> T>,
}

impl<T> fmt::Debug for DurableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableQueue")
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> DurableQueue<T> {
    /// Opens (or creates) the queue in `dir`; see [`ByteQueue::open`].
    pub fn open(
        dir: impl AsRef<Path>,
        cfg: SpoolConfig,
    ) -> Result<(Self, QueueRecovery), QueueError> {
        let (bytes, recovery) = ByteQueue::open(dir, cfg)?;
        Ok((
            Self {
                bytes,
                _values: PhantomData,
            },
            recovery,
        ))
    }

    /// Queues `values` in order; see [`ByteQueue::push`].
    pub fn push(&mut self, values: &[T]) -> Result<Pushed, QueueError> {
        let entries = encode(values)?;
        self.bytes.push(&entries)
    }

    /// Queues `values` for `producer` unless it queued this far already;
    /// see [`ByteQueue::push_from`].
    pub fn push_from(
        &mut self,
        producer: Producer<'_>,
        values: &[T],
    ) -> Result<Pushed, QueueError> {
        let entries = encode(values)?;
        self.bytes.push_from(producer, &entries)
    }

    /// The next unread value and its position, moving past it. A value that
    /// does not decode as `T` is an error ([`QueueError::Decode`]) and the
    /// read moves past it too.
    pub fn read_next(&mut self) -> Result<Option<(u64, T)>, QueueError> {
        let Some(entry) = self.bytes.peek()? else {
            return Ok(None);
        };
        let position = entry.position;
        let value = postcard::from_bytes(entry.bytes);
        self.bytes.advance();
        value
            .map(|v| Some((position, v)))
            .map_err(|source| QueueError::Decode { position, source })
    }

    /// Moves the read position back to the oldest unacknowledged value.
    pub fn rewind(&mut self) {
        self.bytes.rewind();
    }

    /// Acknowledges every value up to `position`; see [`ByteQueue::ack`].
    pub fn ack(&mut self, position: u64) -> Result<u64, QueueError> {
        self.bytes.ack(position)
    }

    /// Fsyncs pushed values; see [`ByteQueue::sync`].
    pub fn sync(&mut self) -> Result<(), QueueError> {
        self.bytes.sync()
    }

    /// Syncs pushed values and writes changed marks; see
    /// [`ByteQueue::checkpoint`].
    pub fn checkpoint(&mut self) -> Result<(), QueueError> {
        self.bytes.checkpoint()
    }

    /// The mark of producer `key`.
    pub fn mark(&self, key: &str) -> Option<ProducerMark> {
        self.bytes.mark(key)
    }

    /// How many source sequences from `first_seq` on producer `key` has
    /// queued on `stream_id`.
    pub fn already_queued(&self, key: &str, stream_id: u128, first_seq: u64) -> u64 {
        self.bytes.already_queued(key, stream_id, first_seq)
    }

    /// Counters (each value weighs 1).
    pub fn stats(&self) -> QueueStats {
        self.bytes.stats()
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        self.bytes.dir()
    }
}

fn encode<T: Serialize>(values: &[T]) -> Result<Vec<Entry<Vec<u8>>>, QueueError> {
    values
        .iter()
        .map(|v| {
            postcard::to_stdvec(v)
                .map(Entry::new)
                .map_err(QueueError::Encode)
        })
        .collect()
}
