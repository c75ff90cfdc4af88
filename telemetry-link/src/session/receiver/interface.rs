//! What goes into and out of the receiver's session machine: the
//! [`Event`]s the async layer reports, what the machine [`Wants`] to wait
//! for next, and the [`Action`]s it asks for, in order. Each is an enum so
//! that a new input or output is one more variant.

use std::{sync::Arc, time::Duration};

use crate::{
    proto::{
        batch::InternLimits,
        frame::FrameError,
        message::{Ack, ErrorCode, Refusal, Refused, Welcome},
        refused::RefusedCounts,
    },
    receiver_state::StateError,
    session::dedup::StreamCursor,
};

/// An application handler's error.
pub(crate) type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Limits and timers of a session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// Largest frame this receiver accepts (announced in the welcome).
    pub(crate) max_frame: usize,
    /// What a connection may intern (`max_series` is announced in the
    /// welcome).
    pub(crate) intern: InternLimits,
    /// Time allowed for the stream to open, and again for the hello.
    pub(crate) hello_timeout: Duration,
    /// Frames applied before one persist wait and one ack.
    pub(crate) max_frames_per_commit: usize,
    /// Newest protocol version spoken.
    pub(crate) max_protocol_version: u16,
}

/// What happened, as the async layer tells it.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// The sender opened its backlog stream.
    StreamOpened,
    /// A frame arrived on the backlog stream.
    Frame(&'a [u8]),
    /// Asked for a frame only if one is waiting ([`Wants::FrameIfReady`]),
    /// and none is.
    NoFrameWaiting,
    /// The sender finished the backlog stream between frames.
    StreamFinished,
    /// The stream's bytes do not cut into frames.
    BadFraming(FrameError),
    /// The stream or the connection failed.
    StreamFailed,
    /// The sender's stored position (`None`: never seen).
    StateLoaded(Option<StreamCursor>),
    /// The sender's stored position cannot be read.
    StateUnreadable,
    /// The handler finished the last [`Action::Deliver`]: the records it
    /// refused (the others it applied), or its error.
    Handled(Result<RefusedCounts, HandlerError>),
    /// The last [`Action::Welcome`] or [`Action::Ack`] was written.
    Sent,
    /// The last [`Action::Welcome`] or [`Action::Ack`] could not be written.
    SendFailed,
    /// Everything up to this sequence is durable.
    Durable(u64),
    /// Persisting the position failed.
    PersistFailed(Arc<StateError>),
    /// The state writer is gone.
    PersisterStopped,
    /// The receiver is shutting down.
    Shutdown,
    /// The deadline of [`super::ReceiverSession::poll_timeout`] may have passed.
    Timeout,
}

/// What the machine waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wants {
    /// The sender's backlog stream (until [`super::ReceiverSession::poll_timeout`]).
    Stream,
    /// The next frame, however long it takes (until the deadline, if any).
    Frame,
    /// A frame only if one is already buffered, else [`Event::NoFrameWaiting`].
    FrameIfReady,
    /// The sender's stored position.
    State,
    /// The handler's result for the [`Action::Deliver`] handed out.
    Handled,
    /// The outcome of writing the [`Action::Welcome`] or [`Action::Ack`].
    Sent,
    /// The durable position to reach at least this sequence.
    Durable(u64),
    /// Nothing: the session is over ([`super::ReceiverSession::end`]).
    Nothing,
}

/// What to do, in order.
#[derive(Debug)]
pub(crate) enum Action<T> {
    /// Write the welcome, then report [`Event::Sent`] or [`Event::SendFailed`].
    Welcome(Accepted),
    /// Write this refusal on the backlog stream (no report).
    Refuse(Refusal),
    /// Hand these records to the handler, then report [`Event::Handled`].
    Deliver(Deliver<T>),
    /// Queue this position for persisting, now.
    Persist(StreamCursor),
    /// Write this refusal report (no report back; the [`Action::Ack`] that
    /// follows reports for both).
    Report(Refused),
    /// Write this ack, then report [`Event::Sent`] or [`Event::SendFailed`].
    Ack(Ack),
    /// Count this in the metrics.
    Count(Count),
    /// Finish the backlog stream and give the sender up to `grace` to read
    /// what was written.
    Finish {
        /// The longest wait.
        grace: Duration,
    },
    /// Close the connection.
    Close {
        /// The QUIC application close code.
        code: ErrorCode,
        /// The close reason (see [`super::ReceiverSession::end`] for its cause).
        reason: String,
    },
}

/// An accepted hello: what to answer and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// The welcome to send.
    pub(crate) welcome: Welcome,
    /// Largest frame to write to this sender (its announced maximum, within
    /// the protocol's bounds).
    pub(crate) reply_max_frame: usize,
    /// The sender's last assigned sequence, as it announced it.
    pub(crate) sender_last_seq: u64,
    /// The sender's stream.
    pub(crate) stream_id: u128,
    /// The sender's replica (empty: the default one).
    pub(crate) replica: Arc<str>,
}

/// Records for the handler.
#[derive(Debug)]
pub(crate) struct Deliver<T> {
    /// The sender's stream.
    pub(crate) stream_id: u128,
    /// Sequence of `records[0]`.
    pub(crate) first_seq: u64,
    /// The records, in sequence order.
    pub(crate) records: Vec<T>,
}

/// Something to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    /// A connection refused before the session, by reason.
    HandshakeFailure(&'static str),
    /// The sender started a new stream.
    StreamReset,
    /// Records dropped as already applied.
    Duplicates(u64),
    /// Records refused (by the link or the handler), by reason; settled.
    Refused(RefusedCounts),
    /// Records the handler applied.
    Received(u64),
    /// Records the sender announced as lost.
    Lost(u64),
    /// The applied position, now durable and acknowledged.
    AppliedSeq(u64),
    /// A session closed for this protocol error.
    ProtocolError(ErrorCode),
}
