//! The present lane: the application's newest present state, sent to each
//! session on its own unidirectional stream beside the backlog. Best
//! effort: only the newest present is kept, a newer one abandons one still
//! being sent, nothing is retransmitted.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::{sync::watch, task::JoinHandle};
use tracing::debug;

use super::{Inner, TARGET};
use crate::{
    net::stream::write_message,
    proto::{
        message::{Message, Present, Welcome, PRESENT_VERSION},
        present,
    },
};

/// A present state, encoded once, sent to every session after it was set.
#[derive(Debug)]
pub(super) struct PresentState {
    pub(super) id: u64,
    pub(super) covers_seq: u64,
    pub(super) body: Vec<u8>,
}

/// Aborts a task when dropped.
#[derive(Debug)]
pub(super) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Room for a [`Present`]'s header fields inside a frame.
const PRESENT_OVERHEAD: usize = 64;

/// Starts pushing presents to a new session, if its protocol version has
/// the present lane: every present set from now on (sources react to the
/// connection counter), and one left unsent before the session. The pusher
/// stops when the returned guard is dropped.
pub(super) fn start_pusher(
    inner: &Inner,
    conn: &quinn::Connection,
    welcome: &Welcome,
    sender_max_frame: usize,
) -> Option<AbortOnDrop> {
    if welcome.version < PRESENT_VERSION {
        return None;
    }
    let mut presents = inner.present.subscribe();
    let unsent = presents
        .borrow_and_update()
        .as_ref()
        .is_some_and(|p| p.id > inner.present_sent.load(Ordering::Acquire));
    if unsent {
        presents.mark_changed();
    }
    let max_frame = (welcome.max_frame as usize).min(sender_max_frame);
    Some(AbortOnDrop(tokio::spawn(push_presents(
        conn.clone(),
        presents,
        max_frame,
        inner.metrics.presents_sent.clone(),
        inner.present_sent.clone(),
    ))))
}

/// Sends every present set during a session (and one left unsent before
/// it) on a new unidirectional stream; a newer present abandons (resets) an
/// older one still being sent.
async fn push_presents(
    conn: quinn::Connection,
    mut presents: watch::Receiver<Option<Arc<PresentState>>>,
    max_frame: usize,
    sent: prometheus::IntCounter,
    sent_id: Arc<AtomicU64>,
) {
    let mut buf = Vec::new();
    while presents.changed().await.is_ok() {
        let Some(state) = presents.borrow_and_update().clone() else {
            continue;
        };
        let Ok(mut stream) = conn.open_uni().await else {
            return;
        };
        // Ahead of the backlog's queued packets.
        let _ = stream.set_priority(1);
        let parts = present::split_parts(
            &state.body,
            max_frame.saturating_sub(PRESENT_OVERHEAD).max(1),
        );
        let n = parts.len();
        let mut complete = true;
        for (i, (count, range)) in parts.into_iter().enumerate() {
            if presents.has_changed().unwrap_or(true) {
                let _ = stream.reset(0u32.into());
                complete = false;
                break;
            }
            let part = Message::Present(Present {
                id: state.id,
                covers_seq: state.covers_seq,
                part: i as u32,
                last: i + 1 == n,
                count,
                body: &state.body[range],
            });
            if write_message(&mut stream, &part, max_frame, &mut buf)
                .await
                .is_err()
            {
                return;
            }
        }
        if complete {
            let _ = stream.finish();
            sent.inc();
            sent_id.fetch_max(state.id, Ordering::AcqRel);
            debug!(
                target: TARGET,
                id = state.id,
                covers_seq = state.covers_seq,
                bytes = state.body.len(),
                "present sent"
            );
        }
    }
}
