//! One receiving session as a state machine: from the connection's first
//! stream to its close, without sockets, tasks, clocks or files. The async
//! layer (`net::receiver::session`) feeds it [`Event`]s with the current
//! time, performs the [`Action`]s it hands out in order, and waits for what
//! [`ReceiverSession::wants`] names next.
//!
//! What it guarantees:
//! * **Hello.** The first message must be a hello, within `hello_timeout`
//!   of the connection and again of the stream opening. A version this
//!   receiver does not speak, or above its pinned maximum, gets a `Refuse`
//!   carrying `min_version..=max_version` before the close; a replica name
//!   that breaks the naming rules closes the connection naming it. The
//!   session belongs to the hello's (identity, replica) stream (a hello
//!   below version 3 is the default replica's). The welcome speaks the
//!   lower of both versions and resumes at that replica's stored position
//!   ([`StreamCursor::for_hello`]; a new stream id starts at 0 and is
//!   counted as a reset).
//! * **Order, no duplicates, no silent gaps.** Records are handed out by
//!   [`Action::Deliver`] only at `applied + 1`, in order; records already
//!   applied are counted and dropped; a batch that starts beyond
//!   `applied + 1` closes the session with `SequenceGap`; a skip moves the
//!   position and counts what it says was lost.
//! * **Refused is settled.** A record the link refuses (it does not decode,
//!   or its series is beyond the interning budget or the label limits) or
//!   the handler refuses is settled like an applied one: the position moves
//!   over it and it is never handed out again. Every fresh record is
//!   counted exactly once, as received or as refused by reason; from
//!   version 3 on, the refusals are reported to the sender
//!   ([`Action::Report`]) right before the ack that covers them.
//! * **Persist with the step.** Every step that moves the position (the
//!   handler's success, a skip, a batch whose records were all refused)
//!   emits [`Action::Persist`] at once, before the machine takes any other
//!   input, so "applied" and "queued for persisting" cannot be separated.
//! * **Ack only when durable.** An [`Action::Ack`] for a position follows
//!   [`Event::Durable`] for it and never goes backwards. Frames already
//!   waiting are applied together, at most `max_frames_per_commit`, then
//!   the machine waits once for durability and acknowledges once (group
//!   commit).
//! * **Errors commit first.** A session that ends (error, lost stream,
//!   bye, shutdown) first waits for and acknowledges what it had applied;
//!   a failed handler's batch is neither persisted nor acknowledged.
//!
//! Events that do not fit the current state are ignored.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{debug, warn};

use super::dedup::StreamCursor;
use crate::proto::{
    batch::{BatchDecoder, Entry},
    message::{Ack, Batch, ErrorCode, Hello, Message, Refusal, Refused, Skip, REPLICA_VERSION},
    record::Payload,
    refused::{RefusedCounts, RefusedReason},
};

mod ends;
mod hello;
mod interface;
#[cfg(test)]
mod tests;

pub(crate) use ends::{End, HelloError, Lost, SessionError};
pub(crate) use interface::{Accepted, Action, Config, Count, Deliver, Event, HandlerError, Wants};

/// How long a version refusal may take to reach the sender before the close.
const REFUSE_GRACE: Duration = Duration::from_millis(500);
/// How long the last ack may take to reach a sender that said bye.
const BYE_GRACE: Duration = Duration::from_secs(2);
/// How long the last ack may take to reach the sender on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// What follows a commit.
#[derive(Debug)]
enum After {
    /// Read on.
    Continue,
    /// The sender said bye.
    Bye,
    /// End the session (an ending that already has its cause).
    End(End),
}

#[derive(Debug)]
enum State {
    AwaitingStream {
        deadline: Instant,
    },
    AwaitingHello {
        deadline: Instant,
    },
    Loading(Hello),
    Welcoming,
    Reading,
    ReadingMore,
    Handling {
        last_seq: u64,
        delivered: u64,
        /// What the link refused in the batch (beside the delivery).
        refused: RefusedCounts,
    },
    Persisting {
        target: u64,
        then: After,
    },
    Acking {
        then: After,
    },
    Done(End),
}

/// One receiving session.
#[derive(Debug)]
pub(crate) struct ReceiverSession<T> {
    sender: Arc<str>,
    /// The hello's replica (empty until then, and for the default one).
    replica: Arc<str>,
    /// The version the welcome speaks (0 before it).
    version: u16,
    config: Config,
    state: State,
    /// The stream's position; meaningful once the state is loaded.
    cursor: StreamCursor,
    /// Highest position acknowledged to the sender.
    acked: u64,
    /// Frames applied since the last commit.
    frames: usize,
    /// Refusals settled since the last report (version 3 and later).
    unreported: RefusedCounts,
    decoder: BatchDecoder,
    shutdown: bool,
    welcomed: bool,
    actions: VecDeque<Action<T>>,
}

impl<T: Payload> ReceiverSession<T> {
    /// A session for `sender` (its certificate identity) whose connection
    /// was established at `now`.
    pub(crate) fn new(sender: Arc<str>, config: Config, now: Instant) -> Self {
        Self {
            sender,
            replica: Arc::from(""),
            version: 0,
            config,
            state: State::AwaitingStream {
                deadline: now + config.hello_timeout,
            },
            cursor: StreamCursor::new(0, 0),
            acked: 0,
            frames: 0,
            unreported: RefusedCounts::NONE,
            decoder: BatchDecoder::with_limits(config.intern),
            shutdown: false,
            welcomed: false,
            actions: VecDeque::new(),
        }
    }

    /// The next action to perform, in order.
    pub(crate) fn poll_action(&mut self) -> Option<Action<T>> {
        self.actions.pop_front()
    }

    /// When to report [`Event::Timeout`], if the machine waits against a
    /// deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingStream { deadline } | State::AwaitingHello { deadline } => {
                Some(deadline)
            }
            _ => None,
        }
    }

    /// What to wait for next, once every action is performed.
    pub(crate) fn wants(&self) -> Wants {
        match self.state {
            State::AwaitingStream { .. } => Wants::Stream,
            State::AwaitingHello { .. } | State::Reading => Wants::Frame,
            State::ReadingMore => Wants::FrameIfReady,
            State::Loading(_) => Wants::State,
            State::Handling { .. } => Wants::Handled,
            State::Welcoming | State::Acking { .. } => Wants::Sent,
            State::Persisting { target, .. } => Wants::Durable(target),
            State::Done(_) => Wants::Nothing,
        }
    }

    /// The replica the hello named (empty: the default one, and before the
    /// hello); the session's state is that (identity, replica)'s.
    pub(crate) fn replica(&self) -> &Arc<str> {
        &self.replica
    }

    /// Whether the welcome went out (the session is established).
    pub(crate) fn is_welcomed(&self) -> bool {
        self.welcomed
    }

    /// How the session ended, once it has.
    pub(crate) fn end(&self) -> Option<&End> {
        match &self.state {
            State::Done(end) => Some(end),
            _ => None,
        }
    }

    /// Takes one event that happened at `now`.
    pub(crate) fn handle(&mut self, event: Event<'_>, now: Instant) {
        if matches!(event, Event::Shutdown) {
            self.shutdown = true;
        }
        let state = std::mem::replace(&mut self.state, State::Reading);
        self.state = match state {
            State::AwaitingStream { deadline } => self.on_awaiting_stream(deadline, event, now),
            State::AwaitingHello { deadline } => self.on_awaiting_hello(deadline, event, now),
            State::Loading(hello) => self.on_state(hello, event),
            State::Welcoming => self.on_welcome_sent(event),
            State::Reading => self.on_read(false, event),
            State::ReadingMore => self.on_read(true, event),
            State::Handling {
                last_seq,
                delivered,
                refused,
            } => self.on_handled(last_seq, delivered, refused, event),
            State::Persisting { target, then } => self.on_durable(target, then, event),
            State::Acking { then } => self.on_ack_sent(then, event),
            done @ State::Done(_) => done,
        };
    }

    fn on_welcome_sent(&mut self, event: Event<'_>) -> State {
        match event {
            Event::Sent => {
                self.welcomed = true;
                self.read_next()
            }
            Event::SendFailed => State::Done(End::Lost(Lost::WelcomeNotSent)),
            _ => State::Welcoming,
        }
    }

    fn on_read(&mut self, more: bool, event: Event<'_>) -> State {
        match event {
            Event::Frame(bytes) => self.apply_frame(bytes),
            Event::NoFrameWaiting => self.commit(After::Continue),
            Event::StreamFinished => self.commit(After::End(End::Lost(Lost::StreamFinished))),
            Event::StreamFailed => self.commit(After::End(End::Lost(Lost::StreamFailed))),
            Event::BadFraming(e) => self.fail(SessionError::from_framing(e)),
            // Between groups everything applied is acknowledged: stop now.
            Event::Shutdown if !more => self.finish(End::Shutdown),
            Event::Shutdown => self.commit(After::Continue),
            _ if more => State::ReadingMore,
            _ => State::Reading,
        }
    }

    fn apply_frame(&mut self, bytes: &[u8]) -> State {
        match Message::decode(bytes) {
            Ok(Message::Batch(b)) => self.apply_batch(&b),
            Ok(Message::Skip(s)) => self.apply_skip(&s),
            Ok(Message::Bye) => self.commit(After::Bye),
            Ok(other) => self.fail(SessionError::Unexpected(other.message_type())),
            Err(e) => self.fail(SessionError::Malformed(e)),
        }
    }

    /// Decodes a batch (the decoder's tables advance even for duplicates),
    /// drops and counts what is already applied, and hands the rest out.
    fn apply_batch(&mut self, b: &Batch<'_>) -> State {
        let mut entries = Vec::new();
        if let Err(source) = self.decoder.decode(b.body, b.count, &mut entries) {
            return self.fail(SessionError::BadBatch {
                first_seq: b.first_seq,
                source,
            });
        }
        let plan = match self.cursor.plan_batch(b.first_seq, b.count) {
            Ok(plan) => plan,
            Err(e) => return self.fail(e.into()),
        };
        if plan.duplicates > 0 {
            self.count(Count::Duplicates(u64::from(plan.duplicates)));
        }
        if plan.fresh == 0 {
            return self.frame_done();
        }
        let mut records = Vec::with_capacity(plan.fresh as usize);
        let mut refused = RefusedCounts::NONE;
        for entry in entries.drain(plan.duplicates as usize..) {
            if let Entry::Refused(reason) = entry {
                refused.add(reason, 1);
                continue;
            }
            match entry.into_record::<T>() {
                Ok(r) => records.push(r),
                Err(e) => {
                    debug!(sender = %self.sender, replica = %self.replica, error = %e, "refusing a record that does not decode");
                    refused.add(RefusedReason::Undecodable, 1);
                }
            }
        }
        if records.is_empty() {
            return self.settled(plan.last_seq, 0, refused);
        }
        let delivered = records.len() as u64;
        self.actions.push_back(Action::Deliver(Deliver {
            stream_id: self.cursor.stream_id(),
            first_seq: b.first_seq + u64::from(plan.duplicates),
            records,
        }));
        State::Handling {
            last_seq: plan.last_seq,
            delivered,
            refused,
        }
    }

    fn apply_skip(&mut self, skip: &Skip) -> State {
        let outcome = match self.cursor.apply_skip(skip) {
            Ok(o) => o,
            Err(e) => return self.fail(e.into()),
        };
        if outcome.skipped > 0 {
            self.actions.push_back(Action::Persist(self.cursor));
            if outcome.lost > 0 {
                self.count(Count::Lost(outcome.lost));
            }
            warn!(sender = %self.sender, from = skip.from, to = skip.to, lost = outcome.lost, "sender skipped sequences it no longer has");
        }
        self.frame_done()
    }

    fn on_handled(
        &mut self,
        last_seq: u64,
        delivered: u64,
        mut refused: RefusedCounts,
        event: Event<'_>,
    ) -> State {
        match event {
            Event::Handled(Ok(by_handler)) => {
                if by_handler.total() > delivered {
                    warn!(sender = %self.sender, delivered, refused = by_handler.total(), "the handler refused more records than it was given; counting {delivered}");
                }
                let by_handler = by_handler.capped(delivered);
                refused.merge(&by_handler);
                self.settled(last_seq, delivered - by_handler.total(), refused)
            }
            Event::Handled(Err(e)) => self.fail(SessionError::Handler(e)),
            _ => State::Handling {
                last_seq,
                delivered,
                refused,
            },
        }
    }

    /// Counts a batch's fresh records as received or refused, keeps the
    /// refusals for the next report, and moves the position over them.
    fn settled(&mut self, last_seq: u64, received: u64, refused: RefusedCounts) -> State {
        if received > 0 {
            self.count(Count::Received(received));
        }
        if !refused.is_empty() {
            self.count(Count::Refused(refused));
            if self.version >= REPLICA_VERSION {
                self.unreported.merge(&refused);
            }
        }
        self.applied_through(last_seq)
    }

    /// Records `last_seq` as applied and queues it for persisting in the
    /// same step.
    fn applied_through(&mut self, last_seq: u64) -> State {
        self.cursor.commit(last_seq);
        self.actions.push_back(Action::Persist(self.cursor));
        self.frame_done()
    }

    fn frame_done(&mut self) -> State {
        self.frames += 1;
        if self.frames >= self.config.max_frames_per_commit || self.shutdown {
            self.commit(After::Continue)
        } else {
            State::ReadingMore
        }
    }

    fn fail(&mut self, e: SessionError) -> State {
        self.commit(After::End(End::Closed(e)))
    }

    /// Waits for the applied position to be durable, then acknowledges it;
    /// nothing to wait for when it already is acknowledged.
    fn commit(&mut self, then: After) -> State {
        self.frames = 0;
        let target = self.cursor.applied();
        if target == self.acked {
            return self.after_commit(then);
        }
        State::Persisting { target, then }
    }

    fn on_durable(&mut self, target: u64, then: After, event: Event<'_>) -> State {
        match event {
            Event::Durable(n) if n >= target => {
                self.acked = target;
                self.count(Count::AppliedSeq(target));
                if !self.unreported.is_empty() {
                    let counts = std::mem::take(&mut self.unreported);
                    self.actions.push_back(Action::Report(Refused {
                        through_seq: target,
                        counts,
                    }));
                }
                self.actions.push_back(Action::Ack(Ack {
                    applied_seq: target,
                }));
                State::Acking { then }
            }
            Event::PersistFailed(e) => {
                self.commit_failed(then, End::Closed(SessionError::Persist(e)))
            }
            Event::PersisterStopped => {
                self.commit_failed(then, End::Closed(SessionError::PersisterStopped))
            }
            _ => State::Persisting { target, then },
        }
    }

    fn on_ack_sent(&mut self, then: After, event: Event<'_>) -> State {
        match event {
            Event::Sent => self.after_commit(then),
            Event::SendFailed => self.commit_failed(then, End::Lost(Lost::AckNotSent)),
            _ => State::Acking { then },
        }
    }

    fn after_commit(&mut self, then: After) -> State {
        match then {
            After::Continue => self.read_next(),
            After::Bye => self.finish(End::Bye),
            After::End(end) => self.finish(end),
        }
    }

    /// A commit failed: an ending that already has its cause keeps it,
    /// anything else ends for the commit's failure.
    fn commit_failed(&mut self, then: After, failure: End) -> State {
        match then {
            After::End(end) => self.finish(end),
            After::Continue | After::Bye => self.finish(failure),
        }
    }

    fn read_next(&mut self) -> State {
        if self.shutdown {
            self.finish(End::Shutdown)
        } else {
            State::Reading
        }
    }

    fn refuse(&mut self, e: HelloError) -> State {
        self.finish(End::Refused(e))
    }

    /// Emits what closing for `end` takes.
    fn finish(&mut self, end: End) -> State {
        match &end {
            End::Refused(e) => {
                if let Some(label) = e.label() {
                    self.count(Count::HandshakeFailure(label));
                }
                if let HelloError::UnsupportedVersion { max, .. } = e {
                    let mut refusal = Refusal::new(ErrorCode::UnsupportedVersion, e.to_string());
                    refusal.max_version = *max;
                    self.actions.push_back(Action::Refuse(refusal));
                    self.actions.push_back(Action::Finish {
                        grace: REFUSE_GRACE,
                    });
                }
                if let Some(code) = e.code() {
                    self.close(code, e.to_string());
                }
            }
            End::Bye => {
                self.actions.push_back(Action::Finish { grace: BYE_GRACE });
                self.close(ErrorCode::NoError, "bye".into());
            }
            End::Shutdown => {
                self.actions.push_back(Action::Finish {
                    grace: SHUTDOWN_GRACE,
                });
                self.close(ErrorCode::ShuttingDown, "receiver shutting down".into());
            }
            End::Closed(e) => {
                let code = e.code();
                if !matches!(code, ErrorCode::HandlerFailed | ErrorCode::StateError) {
                    self.count(Count::ProtocolError(code));
                }
                self.close(code, e.to_string());
            }
            End::Lost(_) => {}
        }
        State::Done(end)
    }

    fn close(&mut self, code: ErrorCode, reason: String) {
        self.actions.push_back(Action::Close { code, reason });
    }

    fn count(&mut self, c: Count) {
        self.actions.push_back(Action::Count(c));
    }
}
