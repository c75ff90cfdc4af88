//! One session per sender identity. A newer connection from the same
//! identity takes the slot and closes the older one with `Superseded` (the
//! sender reconnected while the old path was still half-open), then waits
//! until the older session has finished applying its batch.

use std::{collections::HashMap, sync::Arc};

use tokio::sync::OwnedMutexGuard;

use super::super::close_code;
use crate::proto::message::ErrorCode;

struct Slot {
    lock: Arc<tokio::sync::Mutex<()>>,
    current: Option<quinn::Connection>,
}

/// The sessions' slots, by identity.
#[derive(Default)]
pub(super) struct Slots {
    slots: std::sync::Mutex<HashMap<String, Slot>>,
}

impl Slots {
    /// Makes `conn` the identity's connection, superseding an older one,
    /// and waits for exclusive use of the slot. `None` when the slot cannot
    /// be taken (a poisoned lock).
    pub(super) async fn claim(
        &self,
        identity: &str,
        conn: &quinn::Connection,
    ) -> Option<OwnedMutexGuard<()>> {
        let lock = {
            let mut slots = self.slots.lock().ok()?;
            let slot = slots.entry(identity.to_owned()).or_insert_with(|| Slot {
                lock: Arc::new(tokio::sync::Mutex::new(())),
                current: None,
            });
            if let Some(old) = slot.current.replace(conn.clone()) {
                old.close(
                    close_code(ErrorCode::Superseded),
                    b"replaced by a newer connection from the same sender",
                );
            }
            slot.lock.clone()
        };
        Some(lock.lock_owned().await)
    }

    /// Forgets `conn` as the identity's connection, unless a newer one
    /// took its place.
    pub(super) fn release(&self, identity: &str, conn: &quinn::Connection) {
        if let Ok(mut slots) = self.slots.lock() {
            if let Some(slot) = slots.get_mut(identity) {
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
