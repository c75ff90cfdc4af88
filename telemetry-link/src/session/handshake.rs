//! The sender's side of the hello exchange, without IO: the [`Hello`] to
//! send and what the receiver's answer means.
//!
//! A connection attempt speaks the newest protocol version first. A
//! receiver that refuses it as unsupported but speaks an older version this
//! sender also speaks gets one more attempt in that version (a version-2
//! sender keeps working with version-1 receivers, without the present
//! lane). A sender with a replica name cannot fall back below version 3:
//! an older receiver would merge its stream with the other replicas', so
//! that is an error naming both. A [`Welcome`] is accepted only if the
//! receiver's frame limit can carry this sender's largest record; anything
//! else ends the attempt with a [`HandshakeError`].

use thiserror::Error;

use crate::proto::{
    batch::ENTRY_OVERHEAD,
    message::{
        ErrorCode, Hello, Message, MessageError, MessageType, Welcome, MIN_PROTOCOL_VERSION,
        PROTOCOL_VERSION, REPLICA_VERSION,
    },
};

/// Room for a batch's header fields inside a frame, besides its entries.
pub(crate) const BATCH_HEADER_ROOM: usize = 64;

/// An error code from the receiver: one this side knows, or a bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerCode {
    /// A code of the protocol.
    Known(ErrorCode),
    /// A number outside the protocol's codes.
    Unknown(u64),
}

impl PeerCode {
    /// Interprets a code as it travels in a QUIC application close.
    pub(crate) fn from_wire(code: u64) -> Self {
        u32::try_from(code)
            .ok()
            .and_then(ErrorCode::from_u32)
            .map_or(Self::Unknown(code), Self::Known)
    }
}

impl std::fmt::Display for PeerCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Known(c) => c.fmt(f),
            Self::Unknown(n) => n.fmt(f),
        }
    }
}

/// Why the receiver's answer to a hello ends the attempt.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum HandshakeError {
    /// The receiver refused the hello (or closed the connection).
    #[error("refused by the receiver ({code}): {reason}")]
    Refused {
        /// The receiver's error code.
        code: PeerCode,
        /// The receiver's explanation.
        reason: String,
    },
    /// The receiver speaks no version this sender can fall back to.
    #[error("the receiver speaks protocol versions {min}..={max} only")]
    OlderReceiver {
        /// Oldest version the receiver speaks.
        min: u16,
        /// Newest version the receiver speaks.
        max: u16,
    },
    /// This sender has a replica name, and the receiver speaks only
    /// versions without replicas (it would merge the replicas' streams).
    #[error(
        "the receiver speaks protocol version {version} at most, which has no replicas, \
         but this sender is replica {replica:?}; upgrade the receiver to version \
         {REPLICA_VERSION} or run the sender as the default replica"
    )]
    ReplicaUnsupported {
        /// Newest version the receiver speaks.
        version: u16,
        /// This sender's replica name.
        replica: String,
    },
    /// The receiver's frames are too small for this sender's records.
    #[error(
        "protocol error: the receiver accepts frames of at most {receiver_max_frame} bytes, \
         but this sender's records may be up to {max_record_bytes} bytes; raise the \
         receiver's frame limit or lower the sender's record limit"
    )]
    FrameLimit {
        /// The receiver's largest frame.
        receiver_max_frame: u32,
        /// This sender's largest record.
        max_record_bytes: usize,
    },
    /// The answer is neither a welcome nor a refusal.
    #[error("protocol error: expected welcome, got {0:?}")]
    Unexpected(MessageType),
    /// The answer does not decode.
    #[error("protocol error: {0}")]
    Malformed(MessageError),
}

impl HandshakeError {
    /// The `reason` label of `telemetry_sender_connect_failures_total`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Refused { .. } | Self::OlderReceiver { .. } | Self::ReplicaUnsupported { .. } => {
                "refused"
            }
            Self::FrameLimit { .. } | Self::Unexpected(_) | Self::Malformed(_) => "protocol",
        }
    }
}

/// What the receiver's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The session is established.
    Accepted(Welcome),
    /// Connect again, speaking `version` (an older one the receiver speaks).
    Retry {
        /// The version to speak.
        version: u16,
    },
    /// The attempt failed.
    Failed(HandshakeError),
}

/// One connection attempt's hello exchange, including the fallback to an
/// older protocol version.
#[derive(Debug, Clone)]
pub(crate) struct Handshake {
    version: u16,
    fell_back: bool,
    max_frame: usize,
    max_record_bytes: usize,
    replica: String,
}

impl Handshake {
    /// An exchange for replica `replica` (empty: the default one) of a
    /// sender accepting frames up to `max_frame` bytes and spooling records
    /// up to `max_record_bytes`.
    pub(crate) fn new(max_frame: usize, max_record_bytes: usize, replica: &str) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            fell_back: false,
            max_frame,
            max_record_bytes,
            replica: replica.to_owned(),
        }
    }

    /// The hello for a spool with `stream_id` that has assigned up to
    /// `last_seq`.
    pub(crate) fn hello(&self, stream_id: u128, last_seq: u64) -> Hello {
        Hello {
            version: self.version,
            stream_id,
            last_seq,
            max_frame: self.max_frame as u32,
            replica: self.replica.clone(),
        }
    }

    /// The error for a receiver speaking at most `version` when this
    /// sender needs replicas, if it does.
    fn replica_unsupported(&self, version: u16) -> Option<HandshakeError> {
        (version < REPLICA_VERSION && !self.replica.is_empty()).then(|| {
            HandshakeError::ReplicaUnsupported {
                version,
                replica: self.replica.clone(),
            }
        })
    }

    /// Interprets the receiver's first frame.
    pub(crate) fn on_answer(&mut self, frame: &[u8]) -> Answer {
        let msg = match Message::decode(frame) {
            Ok(m) => m,
            Err(e) => return Answer::Failed(HandshakeError::Malformed(e)),
        };
        match msg {
            Message::Welcome(w)
                if (w.max_frame as usize)
                    < self.max_record_bytes + BATCH_HEADER_ROOM + ENTRY_OVERHEAD =>
            {
                Answer::Failed(HandshakeError::FrameLimit {
                    receiver_max_frame: w.max_frame,
                    max_record_bytes: self.max_record_bytes,
                })
            }
            Message::Welcome(w) => match self.replica_unsupported(w.version) {
                Some(e) => Answer::Failed(e),
                None => Answer::Accepted(w),
            },
            Message::Refuse(r) if r.code == ErrorCode::UnsupportedVersion => {
                self.on_unsupported(r.min_version, r.max_version)
            }
            Message::Refuse(r) => Answer::Failed(HandshakeError::Refused {
                code: PeerCode::Known(r.code),
                reason: r.reason,
            }),
            other => Answer::Failed(HandshakeError::Unexpected(other.message_type())),
        }
    }

    fn on_unsupported(&mut self, min: u16, max: u16) -> Answer {
        let speakable = (MIN_PROTOCOL_VERSION..PROTOCOL_VERSION).contains(&max) && min <= max;
        if speakable {
            if let Some(e) = self.replica_unsupported(max) {
                return Answer::Failed(e);
            }
        }
        if speakable && !self.fell_back {
            self.fell_back = true;
            self.version = max;
            return Answer::Retry { version: max };
        }
        Answer::Failed(HandshakeError::OlderReceiver { min, max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::Refusal;

    fn answer(h: &mut Handshake, msg: &Message<'_>) -> Answer {
        h.on_answer(&msg.to_vec())
    }

    fn welcome(max_frame: u32) -> Message<'static> {
        Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            applied_seq: 7,
            max_frame,
            max_series: 100,
        })
    }

    fn unsupported(min: u16, max: u16) -> Message<'static> {
        Message::Refuse(Refusal {
            min_version: min,
            max_version: max,
            ..Refusal::new(ErrorCode::UnsupportedVersion, "no")
        })
    }

    #[test]
    fn the_hello_speaks_the_newest_version_and_carries_the_spool_position() {
        let h = Handshake::new(1 << 20, 1000, "");
        assert_eq!(
            h.hello(42, 9),
            Hello {
                version: PROTOCOL_VERSION,
                stream_id: 42,
                last_seq: 9,
                max_frame: 1 << 20,
                replica: String::new(),
            }
        );
        let named = Handshake::new(1 << 20, 1000, "r2");
        assert_eq!(named.hello(42, 9).replica, "r2");
    }

    #[test]
    fn a_named_replica_does_not_fall_back_below_version_3() {
        // The default replica falls back to version 2 and then 1 as before.
        let mut h = Handshake::new(1 << 20, 1000, "");
        assert_eq!(
            answer(&mut h, &unsupported(1, 2)),
            Answer::Retry { version: 2 }
        );
        assert_eq!(h.hello(1, 0).version, 2);

        // A named replica: a clear error instead of a merged stream.
        for max in [1, 2] {
            let mut h = Handshake::new(1 << 20, 1000, "r2");
            let Answer::Failed(err) = answer(&mut h, &unsupported(1, max)) else {
                panic!("a named replica fell back to version {max}");
            };
            assert_eq!(
                err,
                HandshakeError::ReplicaUnsupported {
                    version: max,
                    replica: "r2".into()
                }
            );
            assert_eq!(err.label(), "refused");
            assert!(
                err.to_string().contains(&format!(
                    "speaks protocol version {max} at most, which has no replicas, but this sender is replica \"r2\""
                )),
                "{err}"
            );
        }

        // A welcome in an older version, whatever the reason, is refused too.
        let mut h = Handshake::new(1 << 20, 1000, "r2");
        let old_welcome = Message::Welcome(Welcome {
            version: 2,
            applied_seq: 0,
            max_frame: 1 << 20,
            max_series: 10,
        });
        assert!(matches!(
            answer(&mut h, &old_welcome),
            Answer::Failed(HandshakeError::ReplicaUnsupported { version: 2, .. })
        ));
        assert!(matches!(
            answer(&mut Handshake::new(1 << 20, 1000, ""), &old_welcome),
            Answer::Accepted(_)
        ));
    }

    #[test]
    fn a_welcome_is_accepted() {
        let mut h = Handshake::new(1 << 20, 1000, "");
        match answer(&mut h, &welcome(1 << 20)) {
            Answer::Accepted(w) => assert_eq!(w.applied_seq, 7),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_older_receiver_gets_one_attempt_in_its_version() {
        let mut h = Handshake::new(1 << 20, 1000, "");
        assert_eq!(
            answer(&mut h, &unsupported(1, 1)),
            Answer::Retry { version: 1 }
        );
        assert_eq!(h.hello(1, 0).version, 1);
        assert_eq!(
            answer(&mut h, &unsupported(1, 1)),
            Answer::Failed(HandshakeError::OlderReceiver { min: 1, max: 1 }),
            "falls back once only"
        );
    }

    #[test]
    fn a_receiver_without_a_common_version_is_an_error() {
        for (min, max) in [(0, 0), (3, 4), (2, 1), (PROTOCOL_VERSION, PROTOCOL_VERSION)] {
            let mut h = Handshake::new(1 << 20, 1000, "");
            let err = match answer(&mut h, &unsupported(min, max)) {
                Answer::Failed(e) => e,
                other => panic!("{min}..={max}: {other:?}"),
            };
            assert_eq!(err, HandshakeError::OlderReceiver { min, max });
            assert_eq!(err.label(), "refused");
            assert_eq!(
                err.to_string(),
                format!("the receiver speaks protocol versions {min}..={max} only")
            );
        }
    }

    #[test]
    fn a_frame_limit_too_small_for_our_records_is_refused() {
        let mut h = Handshake::new(1 << 20, 10_000, "");
        let limit = (10_000 + BATCH_HEADER_ROOM + ENTRY_OVERHEAD) as u32;
        let Answer::Failed(err) = answer(&mut h, &welcome(limit - 1)) else {
            panic!("accepted a receiver that cannot carry our records");
        };
        assert_eq!(err.label(), "protocol");
        assert!(err.to_string().contains("at most 10092 bytes"), "{err}");
        assert!(matches!(
            answer(&mut h, &welcome(limit)),
            Answer::Accepted(_)
        ));
    }

    #[test]
    fn refusals_and_other_answers_are_typed_errors() {
        let mut h = Handshake::new(1 << 20, 1000, "");
        let refusal = Message::Refuse(Refusal::new(ErrorCode::NotAllowed, "stranger"));
        let err = match answer(&mut h, &refusal) {
            Answer::Failed(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            err.to_string(),
            "refused by the receiver (not_allowed): stranger"
        );
        assert_eq!(
            answer(&mut h, &Message::Bye),
            Answer::Failed(HandshakeError::Unexpected(MessageType::Bye))
        );
        assert!(matches!(
            h.on_answer(&[0xff]),
            Answer::Failed(HandshakeError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_close_codes_show_as_numbers() {
        assert_eq!(PeerCode::from_wire(4).to_string(), "not_allowed");
        assert_eq!(PeerCode::from_wire(99).to_string(), "99");
        assert_eq!(
            PeerCode::from_wire(u64::from(u32::MAX) + 5),
            PeerCode::Unknown(u64::from(u32::MAX) + 5)
        );
    }
}
