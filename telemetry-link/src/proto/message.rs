//! The link's messages and their byte encoding (no IO).
//!
//! A frame body is one message: a one-byte [`MessageType`] followed by the
//! message's postcard encoding. The type codes and the layouts of [`Hello`]'s
//! leading `version` field and of [`Refusal`] are frozen across protocol
//! versions, so that any two versions can at least tell each other that they
//! do not match. A [`Hello`]'s layout after its version depends on that
//! version (version 3 appends the replica name). Everything is decoded from
//! borrowed bytes; nothing is allocated from a length read off the wire
//! except strings bounded by the frame.
//!
//! See `PROTOCOL.md` at the crate root for the state machine these messages
//! drive.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    frame::{FrameError, HEADER_LEN},
    refused::RefusedCounts,
};

/// The protocol version this crate speaks. Version 2 added [`Present`]
/// (the present-state lane); version 3 added the replica name in
/// [`Hello`] and the [`Refused`] report. Older peers are still served,
/// without what their version lacks.
pub const PROTOCOL_VERSION: u16 = 3;

/// First protocol version with [`Present`].
pub const PRESENT_VERSION: u16 = 2;

/// First protocol version with [`Hello::replica`] and [`Refused`].
pub const REPLICA_VERSION: u16 = 3;

/// Oldest protocol version this crate accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// ALPN identifier negotiated in the TLS handshake. Unversioned on purpose:
/// the version travels in [`Hello`] so a mismatch gets a readable refusal
/// instead of a bare TLS alert.
pub const ALPN: &[u8] = b"telemetry-link";

/// Longest refusal reason we send or accept, in bytes.
pub const MAX_REASON_LEN: usize = 512;

/// One-byte tag in front of every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// Sender → receiver, first message on the stream.
    Hello = 1,
    /// Receiver → sender, accepts the hello and says where to resume.
    Welcome = 2,
    /// Receiver → sender, refuses the hello; the connection closes.
    Refuse = 3,
    /// Sender → receiver, a run of consecutive records.
    Batch = 4,
    /// Sender → receiver, sequence numbers the sender no longer has.
    Skip = 5,
    /// Receiver → sender, everything up to a sequence number is applied.
    Ack = 6,
    /// Sender → receiver, the sender is closing after its last ack.
    Bye = 7,
    /// Sender → receiver, on its own unidirectional stream: part of the
    /// sender's present state (protocol version 2).
    Present = 8,
    /// Receiver → sender, records refused up to a sequence, sent before the
    /// ack that covers them (protocol version 3).
    Refused = 9,
}

impl MessageType {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Hello,
            2 => Self::Welcome,
            3 => Self::Refuse,
            4 => Self::Batch,
            5 => Self::Skip,
            6 => Self::Ack,
            7 => Self::Bye,
            8 => Self::Present,
            9 => Self::Refused,
            _ => return None,
        })
    }
}

/// Error codes: used both in [`Refusal`] and as QUIC application close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u16)]
pub enum ErrorCode {
    /// Clean close.
    NoError = 0,
    /// A malformed or unexpected message.
    ProtocolViolation = 1,
    /// A frame above the negotiated maximum.
    FrameTooLarge = 2,
    /// The hello carried a version this side does not speak.
    UnsupportedVersion = 3,
    /// The peer's certificate identity is not allowed here.
    NotAllowed = 4,
    /// A newer connection from the same sender identity replaced this one.
    Superseded = 5,
    /// The application handler refused a batch; the sender retries later.
    HandlerFailed = 6,
    /// The receiver is shutting down.
    ShuttingDown = 7,
    /// The receiver could not persist its state; the sender retries later.
    StateError = 8,
    /// No hello arrived in time.
    HelloTimeout = 9,
    /// A batch started after the next expected sequence without a skip.
    SequenceGap = 10,
    /// The sender defined more interned series than the receiver allows
    /// (receivers before version 3; version 3 refuses the records instead).
    TooManySeries = 11,
    /// The receiver has too many connections.
    Busy = 12,
    /// Any other internal failure.
    Internal = 13,
}

impl ErrorCode {
    /// The numeric value used on the wire.
    pub fn as_u32(self) -> u32 {
        self as u16 as u32
    }

    /// Parses a numeric code; unknown values map to `None`.
    pub fn from_u32(v: u32) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            0 => NoError,
            1 => ProtocolViolation,
            2 => FrameTooLarge,
            3 => UnsupportedVersion,
            4 => NotAllowed,
            5 => Superseded,
            6 => HandlerFailed,
            7 => ShuttingDown,
            8 => StateError,
            9 => HelloTimeout,
            10 => SequenceGap,
            11 => TooManySeries,
            12 => Busy,
            13 => Internal,
            _ => return None,
        })
    }

    /// A stable lowercase name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            NoError => "no_error",
            ProtocolViolation => "protocol_violation",
            FrameTooLarge => "frame_too_large",
            UnsupportedVersion => "unsupported_version",
            NotAllowed => "not_allowed",
            Superseded => "superseded",
            HandlerFailed => "handler_failed",
            ShuttingDown => "shutting_down",
            StateError => "state_error",
            HelloTimeout => "hello_timeout",
            SequenceGap => "sequence_gap",
            TooManySeries => "too_many_series",
            Busy => "busy",
            Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// First message of a connection, sender → receiver.
///
/// Its encoding depends on `version`: versions 1 and 2 end after
/// `max_frame`; version 3 appends `replica`. A hello below version 3 is
/// always for the default replica (an empty `replica`; a non-empty one is
/// not encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version; always the first field, in every version.
    pub version: u16,
    /// Random id of the replica's spool. A new id means a new sequence space
    /// (the spool was recreated), so the receiver starts that replica's
    /// stream afresh.
    pub stream_id: u128,
    /// Highest sequence number the sender has assigned so far (0: none).
    pub last_seq: u64,
    /// Largest frame body the sender accepts.
    pub max_frame: u32,
    /// The replica's name (version 3; empty: the default replica); see
    /// [`super::replica`]. Checked by the receiver's session, not by the
    /// decoder, so that a bad name gets a refusal naming it.
    pub replica: String,
}

/// [`Hello`] as versions 1 and 2 encode it.
#[derive(Serialize, Deserialize)]
struct HelloV1 {
    version: u16,
    stream_id: u128,
    last_seq: u64,
    max_frame: u32,
}

/// [`Hello`] as version 3 encodes it.
#[derive(Serialize, Deserialize)]
struct HelloV3<'a> {
    version: u16,
    stream_id: u128,
    last_seq: u64,
    max_frame: u32,
    replica: &'a str,
}

impl Hello {
    fn encode(&self, out: &mut Vec<u8>) -> postcard::Result<()> {
        if self.version >= REPLICA_VERSION {
            postcard::to_io(
                &HelloV3 {
                    version: self.version,
                    stream_id: self.stream_id,
                    last_seq: self.last_seq,
                    max_frame: self.max_frame,
                    replica: &self.replica,
                },
                out,
            )
            .map(|_| ())
        } else {
            postcard::to_io(
                &HelloV1 {
                    version: self.version,
                    stream_id: self.stream_id,
                    last_seq: self.last_seq,
                    max_frame: self.max_frame,
                },
                out,
            )
            .map(|_| ())
        }
    }

    fn decode(version: u16, body: &[u8]) -> Result<Self, MessageError> {
        let kind = MessageType::Hello;
        Ok(if version >= REPLICA_VERSION {
            let h: HelloV3<'_> = whole(kind, body)?;
            Hello {
                version: h.version,
                stream_id: h.stream_id,
                last_seq: h.last_seq,
                max_frame: h.max_frame,
                replica: h.replica.to_owned(),
            }
        } else {
            let h: HelloV1 = whole(kind, body)?;
            Hello {
                version: h.version,
                stream_id: h.stream_id,
                last_seq: h.last_seq,
                max_frame: h.max_frame,
                replica: String::new(),
            }
        })
    }
}

/// Positive answer to a [`Hello`], receiver → sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both sides will speak.
    pub version: u16,
    /// Highest sequence the receiver has applied (and persisted) for this
    /// sender's stream; the sender resumes at `applied_seq + 1`.
    pub applied_seq: u64,
    /// Largest frame body the receiver accepts.
    pub max_frame: u32,
    /// Most interned series the receiver keeps for this connection.
    pub max_series: u32,
}

/// Negative answer to a [`Hello`]; the connection closes right after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable explanation, at most [`MAX_REASON_LEN`] bytes.
    pub reason: String,
    /// Oldest version the refusing side speaks.
    pub min_version: u16,
    /// Newest version the refusing side speaks.
    pub max_version: u16,
}

/// A run of `count` consecutive records starting at `first_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch<'a> {
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// Number of records in `body`.
    pub count: u32,
    /// The records, encoded by [`crate::proto::batch`].
    #[serde(borrow)]
    pub body: &'a [u8],
}

/// Sequence numbers `from..=to` will never be sent on this stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    /// First skipped sequence.
    pub from: u64,
    /// Last skipped sequence.
    pub to: u64,
    /// How many of them the sender dropped without any receiver having
    /// acknowledged them (spool full or corrupt): the receiver counts these
    /// as lost. The others were acknowledged by another receiver.
    pub lost: u64,
}

/// Everything up to and including `applied_seq` is applied and persisted.
/// Since version 3, "applied" means settled: applied, or refused (reported
/// in a [`Refused`] before the ack).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Highest applied sequence.
    pub applied_seq: u64,
}

/// Records the receiver refused (version 3): settled without being applied,
/// never to be sent again. Sent right before the [`Ack`] that covers
/// `through_seq`; it counts the refusals among the sequences after the
/// previous ack, up to `through_seq`. Not to be confused with [`Refusal`],
/// which refuses a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Highest sequence the report covers (the next ack's position).
    pub through_seq: u64,
    /// How many records were refused, per reason (at most
    /// [`super::refused::MAX_REFUSED_PAIRS`] pairs on the wire).
    pub counts: RefusedCounts,
}

/// One part of a present state: the sender's current view, sent on its own
/// unidirectional stream ahead of (or beside) its backlog. Parts of one
/// present share `id`, are numbered from 0 and the last has `last` set;
/// `body` holds `count` records, each a varint length and an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Present<'a> {
    /// Identifies the present (increases with every new present).
    pub id: u64,
    /// The sender's last sequence number when it took the present: every
    /// record up to it is older than the present.
    pub covers_seq: u64,
    /// Part number, from 0.
    pub part: u32,
    /// This is the last part.
    pub last: bool,
    /// Records in `body`.
    pub count: u32,
    /// The records.
    #[serde(borrow)]
    pub body: &'a [u8],
}

/// A decoded message borrowing from the frame it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Refusal`].
    Refuse(Refusal),
    /// See [`Batch`].
    Batch(Batch<'a>),
    /// See [`Skip`].
    Skip(Skip),
    /// See [`Ack`].
    Ack(Ack),
    /// The sender is done with this connection.
    Bye,
    /// See [`Present`].
    Present(Present<'a>),
    /// See [`Refused`].
    Refused(Refused),
}

/// Why a frame body is not a valid message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// Zero-length frame.
    #[error("empty frame")]
    Empty,
    /// Unknown type byte.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The body does not decode as the announced type.
    #[error("malformed {kind:?} message: {detail}")]
    Malformed {
        /// The type byte's meaning.
        kind: MessageType,
        /// Decoder's explanation.
        detail: String,
    },
    /// Bytes left after the message.
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
    /// A hello with a version we do not speak.
    #[error("unsupported protocol version {0} (this side speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    /// A refusal reason longer than [`MAX_REASON_LEN`].
    #[error("refusal reason longer than {MAX_REASON_LEN} bytes")]
    ReasonTooLong,
}

impl Message<'_> {
    /// The type tag of this message.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::Welcome(_) => MessageType::Welcome,
            Message::Refuse(_) => MessageType::Refuse,
            Message::Batch(_) => MessageType::Batch,
            Message::Skip(_) => MessageType::Skip,
            Message::Ack(_) => MessageType::Ack,
            Message::Bye => MessageType::Bye,
            Message::Present(_) => MessageType::Present,
            Message::Refused(_) => MessageType::Refused,
        }
    }

    /// Appends the message (type byte + postcard body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.message_type() as u8);
        let res = match self {
            Message::Hello(m) => m.encode(out),
            Message::Welcome(m) => postcard::to_io(m, &mut *out).map(|_| ()),
            Message::Refuse(m) => postcard::to_io(m, &mut *out).map(|_| ()),
            Message::Batch(m) => postcard::to_io(m, &mut *out).map(|_| ()),
            Message::Skip(m) => postcard::to_io(m, &mut *out).map(|_| ()),
            Message::Ack(m) => postcard::to_io(m, &mut *out).map(|_| ()),
            Message::Bye => Ok(()),
            Message::Present(m) => postcard::to_io(m, &mut *out).map(|_| ()),
            Message::Refused(m) => postcard::to_io(m, &mut *out).map(|_| ()),
        };
        // Writing into a Vec cannot fail, and every field type is serializable.
        debug_assert!(res.is_ok());
    }

    /// Encodes into a fresh vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Encodes the message as one frame (length prefix + body) into `out`,
    /// which is cleared first; fails if the body exceeds `max_frame`.
    pub fn encode_frame(&self, max_frame: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
        out.clear();
        out.extend_from_slice(&[0; HEADER_LEN]);
        self.encode(out);
        let len = out.len() - HEADER_LEN;
        if len > max_frame {
            return Err(FrameError::TooLarge {
                announced: len as u64,
                max: max_frame,
            });
        }
        out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }

    /// Decodes one frame body.
    pub fn decode(frame: &[u8]) -> Result<Message<'_>, MessageError> {
        let (&tag, body) = frame.split_first().ok_or(MessageError::Empty)?;
        let kind = MessageType::from_u8(tag).ok_or(MessageError::UnknownType(tag))?;
        Ok(match kind {
            MessageType::Hello => {
                let (version, _) =
                    postcard::take_from_bytes::<u16>(body).map_err(|e| malformed(kind, e))?;
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
                    return Err(MessageError::UnsupportedVersion(version));
                }
                Message::Hello(Hello::decode(version, body)?)
            }
            MessageType::Welcome => Message::Welcome(whole(kind, body)?),
            MessageType::Refuse => {
                let r: Refusal = whole(kind, body)?;
                if r.reason.len() > MAX_REASON_LEN {
                    return Err(MessageError::ReasonTooLong);
                }
                Message::Refuse(r)
            }
            MessageType::Batch => Message::Batch(whole(kind, body)?),
            MessageType::Skip => Message::Skip(whole(kind, body)?),
            MessageType::Ack => Message::Ack(whole(kind, body)?),
            MessageType::Bye => {
                if !body.is_empty() {
                    return Err(MessageError::Trailing(body.len()));
                }
                Message::Bye
            }
            MessageType::Present => Message::Present(whole(kind, body)?),
            MessageType::Refused => Message::Refused(whole(kind, body)?),
        })
    }
}

impl Refusal {
    /// A refusal with `reason` cut to [`MAX_REASON_LEN`] bytes.
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON_LEN {
            let mut cut = MAX_REASON_LEN;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Self {
            code,
            reason,
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
        }
    }
}

fn malformed(kind: MessageType, e: postcard::Error) -> MessageError {
    MessageError::Malformed {
        kind,
        detail: e.to_string(),
    }
}

fn whole<'a, T: Deserialize<'a>>(kind: MessageType, body: &'a [u8]) -> Result<T, MessageError> {
    let (v, rest) = postcard::take_from_bytes(body).map_err(|e| malformed(kind, e))?;
    if !rest.is_empty() {
        return Err(MessageError::Trailing(rest.len()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
