//! The receiving session before its welcome: the backlog stream opens, the
//! hello arrives in time and speaks a version and a replica name this
//! receiver accepts, the (identity, replica)'s stored position loads, and
//! the welcome says where to resume.

use std::{sync::Arc, time::Instant};

use tracing::warn;

use super::{Accepted, Action, Count, Event, HelloError, ReceiverSession, State};
use crate::{
    proto::{
        frame::{FrameError, MAX_FRAME_LIMIT},
        message::{Hello, Message, MessageError, Welcome, PROTOCOL_VERSION},
        record::Payload,
        replica::validate_replica,
    },
    session::dedup::StreamCursor,
};

impl<T: Payload> ReceiverSession<T> {
    pub(super) fn on_awaiting_stream(
        &mut self,
        deadline: Instant,
        event: Event<'_>,
        now: Instant,
    ) -> State {
        match event {
            Event::StreamOpened => State::AwaitingHello {
                deadline: now + self.config.hello_timeout,
            },
            Event::StreamFailed | Event::StreamFinished => self.refuse(HelloError::NoHello),
            Event::Timeout if now >= deadline => self.refuse(HelloError::Timeout),
            _ => State::AwaitingStream { deadline },
        }
    }

    pub(super) fn on_awaiting_hello(
        &mut self,
        deadline: Instant,
        event: Event<'_>,
        now: Instant,
    ) -> State {
        match event {
            Event::Frame(bytes) => self.on_hello(bytes),
            Event::StreamFinished => self.refuse(HelloError::NoHello),
            Event::BadFraming(FrameError::TooLarge { .. }) => self.refuse(HelloError::TooLarge),
            Event::BadFraming(FrameError::Truncated { .. }) | Event::StreamFailed => {
                self.refuse(HelloError::Unreadable)
            }
            Event::Timeout if now >= deadline => self.refuse(HelloError::Timeout),
            _ => State::AwaitingHello { deadline },
        }
    }

    fn on_hello(&mut self, bytes: &[u8]) -> State {
        let max = self.config.max_protocol_version.min(PROTOCOL_VERSION);
        match Message::decode(bytes) {
            Ok(Message::Hello(h)) if h.version > self.config.max_protocol_version => {
                self.refuse(HelloError::UnsupportedVersion {
                    version: h.version,
                    max,
                })
            }
            Ok(Message::Hello(h)) => match validate_replica(&h.replica) {
                Ok(()) => {
                    self.replica = Arc::from(h.replica.as_str());
                    State::Loading(h)
                }
                Err(e) => self.refuse(HelloError::BadReplica(e)),
            },
            Ok(_) => self.refuse(HelloError::NotHello),
            Err(MessageError::UnsupportedVersion(version)) => {
                self.refuse(HelloError::UnsupportedVersion { version, max })
            }
            Err(e) => self.refuse(HelloError::Malformed(e)),
        }
    }

    pub(super) fn on_state(&mut self, hello: Hello, event: Event<'_>) -> State {
        let stored = match event {
            Event::StateLoaded(stored) => stored,
            Event::StateUnreadable => return self.refuse(HelloError::StateUnreadable),
            _ => return State::Loading(hello),
        };
        let (cursor, reset) = StreamCursor::for_hello(stored, hello.stream_id);
        if reset {
            self.count(Count::StreamReset);
            warn!(sender = %self.sender, replica = %self.replica, "sender started a new stream (its spool was recreated); sequence restarts at 1");
        }
        self.cursor = cursor;
        self.acked = cursor.applied();
        self.version = hello.version.min(self.config.max_protocol_version);
        let welcome = Welcome {
            version: self.version,
            applied_seq: cursor.applied(),
            max_frame: u32::try_from(self.config.max_frame).unwrap_or(u32::MAX),
            max_series: self.config.intern.max_series,
        };
        self.actions.push_back(Action::Welcome(Accepted {
            welcome,
            reply_max_frame: (hello.max_frame as usize).clamp(1024, MAX_FRAME_LIMIT),
            sender_last_seq: hello.last_seq,
            stream_id: cursor.stream_id(),
            replica: self.replica.clone(),
        }));
        State::Welcoming
    }
}
