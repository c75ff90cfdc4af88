//! One session per sender stream: an identity and a replica. A newer
//! connection of the same replica takes the slot and closes the older one
//! with `Superseded` (the sender reconnected while the old path was still
//! half-open), then waits until the older session has finished applying its
//! batch. Another replica of the same identity has a slot of its own and
//! runs beside it.

use std::{collections::HashMap, sync::Arc};

use tokio::sync::OwnedMutexGuard;

use super::super::close_code;
use crate::{proto::message::ErrorCode, receiver_state::StreamKey};

struct Slot {
    lock: Arc<tokio::sync::Mutex<()>>,
    current: Option<quinn::Connection>,
}

/// The sessions' slots, by stream.
#[derive(Default)]
pub(super) struct Slots {
    slots: std::sync::Mutex<HashMap<StreamKey, Slot>>,
}

impl Slots {
    /// Makes `conn` the stream's connection, superseding an older one,
    /// and waits for exclusive use of the slot. `None` when the slot cannot
    /// be taken (a poisoned lock).
    pub(super) async fn claim(
        &self,
        stream: &StreamKey,
        conn: &quinn::Connection,
    ) -> Option<OwnedMutexGuard<()>> {
        let lock = {
            let mut slots = self.slots.lock().ok()?;
            let slot = slots.entry(stream.clone()).or_insert_with(|| Slot {
                lock: Arc::new(tokio::sync::Mutex::new(())),
                current: None,
            });
            if let Some(old) = slot.current.replace(conn.clone()) {
                old.close(
                    close_code(ErrorCode::Superseded),
                    b"replaced by a newer connection from the same sender replica",
                );
            }
            slot.lock.clone()
        };
        Some(lock.lock_owned().await)
    }

    /// Forgets `conn` as the stream's connection, unless a newer one
    /// took its place.
    pub(super) fn release(&self, stream: &StreamKey, conn: &quinn::Connection) {
        if let Ok(mut slots) = self.slots.lock() {
            if let Some(slot) = slots.get_mut(stream) {
                if slot
                    .current
                    .as_ref()
                    .is_some_and(|c| c.stable_id() == conn.stable_id())
                {
                    slot.current = None;
                }
            }
        }
    }
}
