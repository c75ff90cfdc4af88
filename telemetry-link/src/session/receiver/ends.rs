//! How a receiving session ends: refused before the welcome
//! ([`HelloError`], counted as a handshake failure), closed for an error
//! ([`SessionError`], counted as a protocol error unless the application or
//! the state directory failed), lost, by bye, or by shutdown. Each cause
//! knows its close code; the close reason is its text.

use std::sync::Arc;

use thiserror::Error;

use super::HandlerError;
use crate::{
    proto::{
        batch::BatchError,
        frame::FrameError,
        message::{ErrorCode, MessageError, MessageType, MIN_PROTOCOL_VERSION},
        replica::ReplicaError,
    },
    receiver_state::StateError,
    session::dedup::SeqError,
};

/// Why a connection was refused before its session started.
#[derive(Debug, Error)]
pub(crate) enum HelloError {
    /// The stream never opened or ended before a frame.
    #[error("connection ended before hello")]
    NoHello,
    /// No hello in time.
    #[error("no hello within the time limit")]
    Timeout,
    /// The first message was something else.
    #[error("first message must be a hello")]
    NotHello,
    /// A version this receiver does not speak.
    #[error("protocol version {version} is not supported; this receiver speaks {MIN_PROTOCOL_VERSION}..={max}")]
    UnsupportedVersion {
        /// The hello's version.
        version: u16,
        /// The newest version spoken here.
        max: u16,
    },
    /// The first frame is not a valid message.
    #[error("bad hello: {0}")]
    Malformed(MessageError),
    /// The hello names a replica that breaks the naming rules.
    #[error("bad hello: {0}")]
    BadReplica(ReplicaError),
    /// The first frame is above the maximum.
    #[error("hello frame above the maximum size")]
    TooLarge,
    /// The first frame could not be read.
    #[error("bad hello")]
    Unreadable,
    /// The sender's stored position cannot be read.
    #[error("receiver state for this sender is unreadable")]
    StateUnreadable,
}

impl HelloError {
    /// The close code (`None`: nothing to close, the peer is gone).
    pub(crate) fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            HelloError::NoHello => return None,
            HelloError::Timeout => ErrorCode::HelloTimeout,
            HelloError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            HelloError::TooLarge => ErrorCode::FrameTooLarge,
            HelloError::StateUnreadable => ErrorCode::StateError,
            HelloError::NotHello
            | HelloError::Malformed(_)
            | HelloError::BadReplica(_)
            | HelloError::Unreadable => ErrorCode::ProtocolViolation,
        })
    }

    /// The `handshake_failures` label (`None`: not counted there).
    pub(crate) fn label(&self) -> Option<&'static str> {
        Some(match self {
            HelloError::NoHello => "no_hello",
            HelloError::Timeout => "hello_timeout",
            HelloError::UnsupportedVersion { .. } => "unsupported_version",
            HelloError::TooLarge => "frame_too_large",
            HelloError::NotHello | HelloError::Malformed(_) | HelloError::Unreadable => "bad_hello",
            HelloError::BadReplica(_) => "bad_replica",
            HelloError::StateUnreadable => return None,
        })
    }
}

/// Why the receiver closes an established session.
#[derive(Debug, Error)]
pub(crate) enum SessionError {
    /// A frame that is not a message.
    #[error("malformed message: {0}")]
    Malformed(MessageError),
    /// A message the sender must not send on this stream.
    #[error("unexpected {0:?} message")]
    Unexpected(MessageType),
    /// A batch body that does not decode.
    #[error("bad batch at {first_seq}: {source}")]
    BadBatch {
        /// The batch's first sequence.
        first_seq: u64,
        /// What is wrong with it.
        source: BatchError,
    },
    /// A batch or skip that breaks the sequence rules.
    #[error(transparent)]
    Sequence(#[from] SeqError),
    /// A frame above the maximum.
    #[error("frame of {announced} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The announced length.
        announced: u64,
        /// The maximum.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes)")]
    Truncated {
        /// Bytes of the unfinished frame.
        buffered: usize,
    },
    /// The handler refused a batch.
    #[error("handler failed: {0}")]
    Handler(HandlerError),
    /// The position could not be persisted.
    #[error("receiver cannot persist its state: {0}")]
    Persist(Arc<StateError>),
    /// The state writer is gone.
    #[error("state writer stopped")]
    PersisterStopped,
}

impl SessionError {
    /// The close code.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            SessionError::Sequence(SeqError::Gap { .. }) => ErrorCode::SequenceGap,
            SessionError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            SessionError::Handler(_) => ErrorCode::HandlerFailed,
            SessionError::Persist(_) => ErrorCode::StateError,
            SessionError::PersisterStopped => ErrorCode::Internal,
            SessionError::Malformed(_)
            | SessionError::Unexpected(_)
            | SessionError::BadBatch { .. }
            | SessionError::Sequence(_)
            | SessionError::Truncated { .. } => ErrorCode::ProtocolViolation,
        }
    }

    pub(super) fn from_framing(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge { announced, max } => {
                SessionError::FrameTooLarge { announced, max }
            }
            FrameError::Truncated { buffered } => SessionError::Truncated { buffered },
        }
    }
}

/// Why a session was lost (the peer or the path went away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub(crate) enum Lost {
    /// The sender finished its stream without a bye.
    #[error("stream finished without bye")]
    StreamFinished,
    /// The stream or connection failed.
    #[error("stream failed")]
    StreamFailed,
    /// The welcome could not be written.
    #[error("writing welcome failed")]
    WelcomeNotSent,
    /// An ack could not be written.
    #[error("writing ack failed")]
    AckNotSent,
}

/// How a session ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Refused before the welcome.
    Refused(HelloError),
    /// The sender said bye; everything applied is acknowledged.
    Bye,
    /// The receiver is shutting down; everything applied is acknowledged.
    Shutdown,
    /// Closed for an error.
    Closed(SessionError),
    /// The sender or the path went away.
    Lost(Lost),
}
