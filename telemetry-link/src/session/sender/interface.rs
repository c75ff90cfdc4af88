//! What goes into and out of the sender's session machine: its
//! [`SessionConfig`], the [`Input`]s the async layer reports, the [`Step`]
//! it asks for next, how a session [`End`]s and why it failed, and the
//! [`Event`]s to count or log.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::{
    proto::{
        frame::FrameError,
        message::{MessageError, MessageType, Skip},
        record::RecordError,
        refused::RefusedCounts,
    },
    session::{
        refusals::ReportError,
        window::{AckError, WindowLimits},
    },
    spool::SpoolError,
};

/// The sender's settings a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionConfig {
    /// Largest frame this sender accepts.
    pub(crate) max_frame: usize,
    /// Most records per batch.
    pub(crate) batch_max_records: usize,
    /// In-flight limits.
    pub(crate) window: WindowLimits,
    /// While on a non-preferred receiver, how often to probe the preferred
    /// one; `None` stays until the session fails.
    pub(crate) failback_after: Option<Duration>,
    /// How long a batch that is not full waits for more records after its
    /// first one.
    pub(crate) linger: Duration,
}

/// Something that happened to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input<'a> {
    /// A frame body from the receiver on the session's stream.
    Frame(&'a [u8]),
    /// The application asked the link to stop; the session drains until
    /// `deadline`.
    Stop {
        /// When to give up draining.
        deadline: Instant,
    },
    /// The probe asked for by [`Step::Probe`] reached the preferred receiver.
    ProbeSucceeded,
    /// The probe failed; the next one is due after `failback_after`.
    ProbeFailed,
    /// The application asked for everything up to `upto` to be sent now,
    /// without lingering.
    Flush {
        /// The last sequence to send at once.
        upto: u64,
    },
}

/// What the caller should do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Write the frame that is in the caller's buffer.
    Transmit(Transmit),
    /// Try to connect to the preferred receiver in the background and report
    /// the outcome ([`Input::ProbeSucceeded`] or [`Input::ProbeFailed`]).
    Probe,
    /// Nothing to do until an input arrives, [`SenderSession::poll_timeout`]
    /// passes or — when `wants_records` — the spool grows as
    /// [`SenderSession::wake_on`] says.
    Wait {
        /// Whether new spooled records would be sent (at once, or when
        /// their batch is full or has lingered long enough).
        wants_records: bool,
    },
    /// The session is over; the machine must not be used any more.
    End(End),
}

/// A frame the machine put in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transmit {
    /// Highest sequence the frame covers.
    pub(crate) last_seq: u64,
    /// The frame's size in bytes.
    pub(crate) bytes: usize,
    /// What it carries.
    pub(crate) carries: Carries,
}

/// What a transmitted frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carries {
    /// Records `first_seq..first_seq + count`.
    Batch {
        /// First record's sequence.
        first_seq: u64,
        /// How many records.
        count: usize,
    },
    /// Sequences the spool no longer holds.
    Skip(Skip),
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Stopping: everything was acknowledged, or the deadline passed.
    Stopped,
    /// The preferred receiver is reachable and nothing is in flight: switch
    /// to the probed connection.
    FailBack,
    /// The session cannot go on.
    Failed(SessionError),
}

/// Why a session failed, as far as the session itself can tell.
#[derive(Debug, Error)]
pub(crate) enum SessionError {
    /// The welcome's applied position is beyond any sequence a spool assigns.
    #[error("receiver reported an impossible applied position {0}")]
    ImpossibleApplied(u64),
    /// An ack going backwards or beyond what was sent.
    #[error("receiver sent a bad ack: {0}")]
    BadAck(AckError),
    /// A refusal report that does not fit what was sent and acknowledged.
    #[error("receiver sent a bad refusal report: {0}")]
    BadReport(ReportError),
    /// A frame from the receiver that does not decode.
    #[error("malformed message from receiver: {0}")]
    Malformed(MessageError),
    /// A message the receiver must not send during a session.
    #[error("unexpected {0:?} from receiver")]
    Unexpected(MessageType),
    /// The spool failed to resume, acknowledge or settle.
    #[error("spool: {0}")]
    Spool(SpoolError),
    /// The spool failed to read.
    #[error("spool read: {0}")]
    SpoolRead(SpoolError),
    /// A spooled record does not parse.
    #[error("spooled record unreadable: {0}")]
    UnreadableRecord(RecordError),
    /// A batch does not fit a frame.
    #[error("batch framing: {0}")]
    BatchFraming(FrameError),
    /// A skip does not fit a frame.
    #[error("skip framing: {0}")]
    SkipFraming(FrameError),
}

// Errors compare by kind and text: enough for tests and for telling ends
// apart, and the spool's I/O errors are not comparable otherwise.
impl PartialEq for SessionError {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for SessionError {}

/// Something the caller should count or log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// `records` more records are acknowledged (and gone from the spool).
    Acked {
        /// How many.
        records: u64,
    },
    /// An ack settled records the receiver refused (they left the spool
    /// with it and are among [`Event::Acked`]'s).
    Refused(RefusedCounts),
    /// The receiver has applied more than the spool holds; numbering goes
    /// on after `applied`.
    ReceiverAhead {
        /// The receiver's applied position.
        applied: u64,
        /// The spool's last sequence.
        last_seq: u64,
    },
}
