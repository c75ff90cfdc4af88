//! The receiving session driven in memory with a simulated clock: every
//! input is an event, every output an action, no sockets and no sleeping.
//! Replicas, refusals and their reports: `tests/v3.rs`.

mod v3;

use std::sync::Arc;

use super::*;
use crate::{
    proto::{
        batch::{BatchEncoder, InternLimits},
        frame::{FrameError, MAX_FRAME_LIMIT},
        message::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION},
        record::encode_record,
    },
    receiver_state::StateError,
    sample::{Sample, SeriesKey},
    session::dedup::SeqError,
};

const STREAM: u128 = 7;

fn config() -> Config {
    Config {
        max_frame: 1 << 20,
        intern: InternLimits::new(1000),
        hello_timeout: Duration::from_secs(5),
        max_frames_per_commit: 64,
        max_protocol_version: PROTOCOL_VERSION,
    }
}

/// A session under test: the machine, its simulated clock and the
/// connection's batch encoder (the sender's half of the interning tables).
struct Harness {
    m: ReceiverSession<u64>,
    now: Instant,
    encoder: BatchEncoder,
}

impl Harness {
    fn new(config: Config) -> Self {
        Self {
            m: ReceiverSession::new(Arc::from("s"), config, Instant::now()),
            now: Instant::now(),
            encoder: BatchEncoder::new(config.intern.max_series),
        }
    }

    /// Through the hello and the state load to an established session.
    fn established(config: Config, stored: Option<StreamCursor>) -> (Self, Accepted) {
        let mut h = Self::new(config);
        h.feed(Event::StreamOpened);
        h.frame(&hello(PROTOCOL_VERSION, STREAM));
        assert_eq!(h.m.wants(), Wants::State);
        h.feed(Event::StateLoaded(stored));
        let accepted = match h.actions().as_slice() {
            [Action::Welcome(a)] => a.clone(),
            other => panic!("expected a welcome, got {other:?}"),
        };
        h.feed(Event::Sent);
        assert!(h.m.is_welcomed());
        assert_eq!(h.m.wants(), Wants::Frame);
        (h, accepted)
    }

    fn feed(&mut self, event: Event<'_>) {
        self.m.handle(event, self.now);
    }

    fn frame(&mut self, msg: &Message<'_>) {
        let bytes = msg.to_vec();
        self.feed(Event::Frame(&bytes));
    }

    fn batch(&mut self, first_seq: u64, values: &[u64]) {
        let mut body = Vec::new();
        let mut envelope = Vec::new();
        for v in values {
            envelope.clear();
            encode_record(v, &mut envelope).unwrap();
            self.encoder.push_record(&envelope, &mut body).unwrap();
        }
        self.frame(&Message::Batch(Batch {
            first_seq,
            count: values.len() as u32,
            body: &body,
        }));
    }

    fn actions(&mut self) -> Vec<Action<u64>> {
        std::iter::from_fn(|| self.m.poll_action()).collect()
    }

    /// Answers a delivery with `result` (everything applied, or an
    /// error); returns the delivered records.
    fn handled(&mut self, result: Result<(), HandlerError>) -> (u64, Vec<u64>) {
        self.handled_with(result.map(|()| RefusedCounts::NONE))
    }

    /// Answers a delivery with the handler's refusals or error; returns
    /// the delivered records.
    fn handled_with(&mut self, result: Result<RefusedCounts, HandlerError>) -> (u64, Vec<u64>) {
        let delivered = match self.actions().pop() {
            Some(Action::Deliver(d)) => (d.first_seq, d.records),
            other => panic!("expected a delivery, got {other:?}"),
        };
        assert_eq!(self.m.wants(), Wants::Handled);
        self.feed(Event::Handled(result));
        delivered
    }
}

fn hello(version: u16, stream_id: u128) -> Message<'static> {
    Message::Hello(Hello {
        version,
        stream_id,
        last_seq: 42,
        max_frame: 1 << 20,
        replica: String::new(),
    })
}

fn counts(actions: &[Action<u64>]) -> Vec<Count> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Count(c) => Some(*c),
            _ => None,
        })
        .collect()
}

fn acks(actions: &[Action<u64>]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Ack(a) => Some(a.applied_seq),
            _ => None,
        })
        .collect()
}

fn persisted(actions: &[Action<u64>]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Persist(c) => Some(c.applied()),
            _ => None,
        })
        .collect()
}

fn close_of(actions: &[Action<u64>]) -> Option<(ErrorCode, String)> {
    actions.iter().find_map(|a| match a {
        Action::Close { code, reason } => Some((*code, reason.clone())),
        _ => None,
    })
}

/// Answers a wait for durability of `seq` and the ack it produces;
/// returns every action up to the ack.
fn durable_and_acked(h: &mut Harness, seq: u64) -> Vec<Action<u64>> {
    assert_eq!(h.m.wants(), Wants::Durable(seq));
    h.feed(Event::Durable(seq));
    let actions = h.actions();
    assert_eq!(acks(&actions), vec![seq]);
    assert_eq!(h.m.wants(), Wants::Sent);
    h.feed(Event::Sent);
    actions
}

#[test]
fn version_negotiation_welcomes_the_lower_version_and_refuses_unknown_ones() {
    // A version-1 sender at a version-2 receiver: welcomed at 1.
    let mut h = Harness::new(config());
    h.feed(Event::StreamOpened);
    h.frame(&hello(1, STREAM));
    h.feed(Event::StateLoaded(None));
    match h.actions().as_slice() {
        [Action::Welcome(a)] => assert_eq!(a.welcome.version, 1),
        other => panic!("{other:?}"),
    }

    // A receiver pinned to version 1 refuses a version-2 hello, announcing
    // 1..=1, then closes.
    let mut h = Harness::new(Config {
        max_protocol_version: 1,
        ..config()
    });
    h.feed(Event::StreamOpened);
    h.frame(&hello(2, STREAM));
    let actions = h.actions();
    assert_eq!(
        counts(&actions),
        vec![Count::HandshakeFailure("unsupported_version")]
    );
    match &actions[1] {
        Action::Refuse(r) => {
            assert_eq!(r.code, ErrorCode::UnsupportedVersion);
            assert_eq!((r.min_version, r.max_version), (MIN_PROTOCOL_VERSION, 1));
            assert!(r.reason.contains("version 2"), "{}", r.reason);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(actions[2], Action::Finish { grace } if grace == REFUSE_GRACE));
    let (code, reason) = close_of(&actions).unwrap();
    assert_eq!(code, ErrorCode::UnsupportedVersion);
    assert_eq!(
        reason,
        "protocol version 2 is not supported; this receiver speaks 1..=1"
    );
    assert_eq!(h.m.wants(), Wants::Nothing);

    // A version nobody speaks: refused with this receiver's full range.
    let mut h = Harness::new(config());
    h.feed(Event::StreamOpened);
    h.frame(&hello(99, STREAM));
    let actions = h.actions();
    assert!(actions.iter().any(
        |a| matches!(a, Action::Refuse(r) if r.max_version == PROTOCOL_VERSION && r.reason.contains("99"))
    ));
    assert!(matches!(
        h.m.end(),
        Some(End::Refused(HelloError::UnsupportedVersion {
            version: 99,
            ..
        }))
    ));
}

#[test]
fn the_first_message_must_be_a_well_formed_hello_within_the_frame_limit() {
    let cases: Vec<(Event<'static>, ErrorCode, &str)> = vec![
        (
            Event::Frame(&[7]),
            ErrorCode::ProtocolViolation,
            "bad_hello",
        ), // a bye
        (
            Event::Frame(&[200, 1]),
            ErrorCode::ProtocolViolation,
            "bad_hello",
        ),
        (
            Event::BadFraming(FrameError::TooLarge {
                announced: 1 << 30,
                max: 1 << 20,
            }),
            ErrorCode::FrameTooLarge,
            "frame_too_large",
        ),
        (
            Event::BadFraming(FrameError::Truncated { buffered: 3 }),
            ErrorCode::ProtocolViolation,
            "bad_hello",
        ),
    ];
    for (event, code, label) in cases {
        let mut h = Harness::new(config());
        h.feed(Event::StreamOpened);
        h.feed(event);
        let actions = h.actions();
        assert_eq!(counts(&actions), vec![Count::HandshakeFailure(label)]);
        assert_eq!(close_of(&actions).map(|c| c.0), Some(code));
    }
    let mut h = Harness::new(config());
    h.feed(Event::StreamOpened);
    h.frame(&Message::Bye);
    assert_eq!(
        close_of(&h.actions()).unwrap().1,
        "first message must be a hello"
    );

    // A stream that ends before any frame: counted, nothing to close.
    let mut h = Harness::new(config());
    h.feed(Event::StreamOpened);
    h.feed(Event::StreamFinished);
    let actions = h.actions();
    assert_eq!(counts(&actions), vec![Count::HandshakeFailure("no_hello")]);
    assert_eq!(close_of(&actions), None);
}

#[test]
fn the_reply_frame_limit_is_the_senders_within_protocol_bounds() {
    for (announced, expected) in [
        (10u32, 1024usize),
        (1 << 20, 1 << 20),
        (u32::MAX, MAX_FRAME_LIMIT),
    ] {
        let mut h = Harness::new(config());
        h.feed(Event::StreamOpened);
        h.frame(&Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            stream_id: STREAM,
            last_seq: 0,
            max_frame: announced,
            replica: String::new(),
        }));
        h.feed(Event::StateLoaded(None));
        match h.actions().as_slice() {
            [Action::Welcome(a)] => {
                assert_eq!(a.reply_max_frame, expected);
                assert_eq!(a.welcome.max_frame, 1 << 20);
                assert_eq!(a.welcome.max_series, 1000);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn hello_timeout_runs_from_the_connection_and_again_from_the_stream() {
    let t0 = Instant::now();
    let mut m = ReceiverSession::<u64>::new(Arc::from("s"), config(), t0);
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    // Early timer: nothing happens.
    m.handle(Event::Timeout, t0 + Duration::from_secs(4));
    assert_eq!(m.wants(), Wants::Stream);
    // The stream opens late: the hello gets a deadline of its own.
    m.handle(Event::StreamOpened, t0 + Duration::from_secs(3));
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(8)));
    m.handle(Event::Timeout, t0 + Duration::from_secs(7));
    assert_eq!(m.wants(), Wants::Frame);
    m.handle(Event::Timeout, t0 + Duration::from_secs(8));
    let actions: Vec<_> = std::iter::from_fn(|| m.poll_action()).collect();
    assert_eq!(
        counts(&actions),
        vec![Count::HandshakeFailure("hello_timeout")]
    );
    assert_eq!(
        close_of(&actions),
        Some((
            ErrorCode::HelloTimeout,
            "no hello within the time limit".into()
        ))
    );
    assert_eq!(m.poll_timeout(), None);

    // No stream at all.
    let mut m = ReceiverSession::<u64>::new(Arc::from("s"), config(), t0);
    m.handle(Event::Timeout, t0 + Duration::from_secs(5));
    assert!(matches!(m.end(), Some(End::Refused(HelloError::Timeout))));
}

#[test]
fn resumes_at_the_stored_position_after_a_restart_and_resets_on_a_new_stream() {
    let (mut h, accepted) = Harness::established(config(), Some(StreamCursor::new(STREAM, 100)));
    assert_eq!(accepted.welcome.applied_seq, 100);
    assert_eq!(accepted.sender_last_seq, 42);
    assert_eq!(accepted.stream_id, STREAM);
    h.batch(101, &[101, 102]);
    assert_eq!(h.handled(Ok(())), (101, vec![101, 102]));

    // The stored position belongs to an older stream: start at 0, counted.
    let mut h = Harness::new(config());
    h.feed(Event::StreamOpened);
    h.frame(&hello(PROTOCOL_VERSION, STREAM + 1));
    h.feed(Event::StateLoaded(Some(StreamCursor::new(STREAM, 100))));
    let actions = h.actions();
    assert_eq!(counts(&actions), vec![Count::StreamReset]);
    assert!(matches!(&actions[1], Action::Welcome(a) if a.welcome.applied_seq == 0));

    // Unreadable state: refused with a state error, not counted as a
    // handshake failure.
    let mut h = Harness::new(config());
    h.feed(Event::StreamOpened);
    h.frame(&hello(PROTOCOL_VERSION, STREAM));
    h.feed(Event::StateUnreadable);
    let actions = h.actions();
    assert_eq!(counts(&actions), vec![]);
    assert_eq!(close_of(&actions).map(|c| c.0), Some(ErrorCode::StateError));
}

#[test]
fn duplicates_are_counted_and_only_fresh_records_are_delivered() {
    let (mut h, _) = Harness::established(config(), Some(StreamCursor::new(STREAM, 10)));
    // 8..=12: three already applied.
    h.batch(8, &[8, 9, 10, 11, 12]);
    let actions = h.actions();
    assert_eq!(counts(&actions), vec![Count::Duplicates(3)]);
    match actions.last() {
        Some(Action::Deliver(d)) => {
            assert_eq!((d.stream_id, d.first_seq), (STREAM, 11));
            assert_eq!(d.records, vec![11, 12]);
        }
        other => panic!("{other:?}"),
    }
    h.feed(Event::Handled(Ok(RefusedCounts::NONE)));
    let actions = h.actions();
    assert_eq!(counts(&actions), vec![Count::Received(2)]);
    assert_eq!(persisted(&actions), vec![12]);

    // A batch entirely applied already: counted, nothing delivered or
    // persisted, the group goes on.
    h.batch(1, &[1, 2, 3]);
    let actions = h.actions();
    assert_eq!(counts(&actions), vec![Count::Duplicates(3)]);
    assert!(persisted(&actions).is_empty());
    assert_eq!(h.m.wants(), Wants::FrameIfReady);
    h.feed(Event::NoFrameWaiting);
    durable_and_acked(&mut h, 12);
}

#[test]
fn a_gap_commits_what_was_applied_then_closes_with_sequence_gap() {
    let (mut h, _) = Harness::established(config(), None);
    h.batch(1, &[1, 2]);
    h.handled(Ok(()));
    h.actions();
    h.batch(5, &[5]);
    assert!(h.actions().is_empty(), "nothing before the commit");
    durable_and_acked(&mut h, 2);
    let actions = h.actions();
    assert_eq!(
        counts(&actions),
        vec![Count::ProtocolError(ErrorCode::SequenceGap)]
    );
    assert_eq!(
        close_of(&actions),
        Some((
            ErrorCode::SequenceGap,
            "sequence gap: expected 3, got 5".into()
        ))
    );
    assert!(matches!(
        h.m.end(),
        Some(End::Closed(SessionError::Sequence(SeqError::Gap {
            expected: 3,
            got: 5
        })))
    ));
}

#[test]
fn a_skip_moves_the_position_and_counts_the_lost_records() {
    let (mut h, _) = Harness::established(config(), Some(StreamCursor::new(STREAM, 10)));
    h.frame(&Message::Skip(Skip {
        from: 11,
        to: 20,
        lost: 4,
    }));
    let actions = h.actions();
    assert_eq!(persisted(&actions), vec![20]);
    assert_eq!(counts(&actions), vec![Count::Lost(4)]);
    h.feed(Event::NoFrameWaiting);
    let actions = durable_and_acked(&mut h, 20);
    assert_eq!(counts(&actions), vec![Count::AppliedSeq(20)]);
    h.batch(21, &[21]);
    assert_eq!(h.handled(Ok(())), (21, vec![21]));

    // A skip with more lost than skipped is a protocol violation.
    let (mut h, _) = Harness::established(config(), None);
    h.frame(&Message::Skip(Skip {
        from: 1,
        to: 2,
        lost: 3,
    }));
    assert_eq!(
        close_of(&h.actions()).map(|c| c.0),
        Some(ErrorCode::ProtocolViolation)
    );
}

#[test]
fn group_commit_applies_waiting_frames_up_to_the_bound_then_acks_once() {
    let (mut h, _) = Harness::established(
        Config {
            max_frames_per_commit: 3,
            ..config()
        },
        None,
    );
    for i in 0..3u64 {
        h.batch(i * 2 + 1, &[i * 2 + 1, i * 2 + 2]);
        h.handled(Ok(()));
        let actions = h.actions();
        assert_eq!(
            persisted(&actions),
            vec![i * 2 + 2],
            "persist with each step"
        );
        assert!(acks(&actions).is_empty());
        if i < 2 {
            assert_eq!(h.m.wants(), Wants::FrameIfReady);
        }
    }
    // The bound is reached: no further frame is taken before the commit.
    let actions = durable_and_acked(&mut h, 6);
    assert_eq!(acks(&actions), vec![6]);
    assert_eq!(h.m.wants(), Wants::Frame);

    // Fewer frames waiting than the bound: committed when none is left.
    h.batch(7, &[7]);
    h.handled(Ok(()));
    h.actions();
    assert_eq!(h.m.wants(), Wants::FrameIfReady);
    h.feed(Event::NoFrameWaiting);
    durable_and_acked(&mut h, 7);
}

#[test]
fn no_ack_goes_out_before_the_position_is_durable() {
    let (mut h, _) = Harness::established(config(), None);
    h.batch(1, &[1, 2, 3]);
    h.handled(Ok(()));
    h.feed(Event::NoFrameWaiting);
    h.actions();
    assert_eq!(h.m.wants(), Wants::Durable(3));
    h.feed(Event::Durable(2));
    assert!(h.actions().is_empty());
    // Frames and timers do not move it on either.
    h.feed(Event::Timeout);
    assert!(h.actions().is_empty());
    assert_eq!(h.m.wants(), Wants::Durable(3));
    durable_and_acked(&mut h, 3);

    // Persisting fails: closed with a state error, never acknowledged.
    h.batch(4, &[4]);
    h.handled(Ok(()));
    h.feed(Event::NoFrameWaiting);
    h.actions();
    h.feed(Event::PersistFailed(Arc::new(StateError::Identity(
        "x".into(),
    ))));
    let actions = h.actions();
    assert!(acks(&actions).is_empty());
    assert_eq!(counts(&actions), vec![], "not a protocol error");
    assert_eq!(close_of(&actions).map(|c| c.0), Some(ErrorCode::StateError));
}

#[test]
fn a_handler_error_closes_without_acknowledging_its_batch() {
    let (mut h, _) = Harness::established(config(), None);
    h.batch(1, &[1, 2]);
    h.handled(Ok(()));
    h.actions();
    h.batch(3, &[3]);
    h.handled(Err("disk full".into()));
    let actions = h.actions();
    assert!(
        persisted(&actions).is_empty(),
        "the failed batch is not persisted"
    );
    // The batch before it is committed first.
    let actions = durable_and_acked(&mut h, 2);
    assert_eq!(acks(&actions), vec![2]);
    let actions = h.actions();
    assert_eq!(counts(&actions), vec![], "not a protocol error");
    assert_eq!(
        close_of(&actions),
        Some((ErrorCode::HandlerFailed, "handler failed: disk full".into()))
    );
    assert_eq!(h.m.wants(), Wants::Nothing);
}

#[test]
fn records_that_do_not_decode_are_skipped_and_counted() {
    let (mut h, _) = Harness::established(config(), None);
    // A sample for a payload type without samples, between two numbers.
    let key = Arc::new(SeriesKey::new("up", [("job", "x")]).unwrap());
    let mut body = Vec::new();
    for envelope in [
        {
            let mut e = Vec::new();
            encode_record(&1u64, &mut e).unwrap();
            e
        },
        {
            let mut e = Vec::new();
            encode_record(&Sample::new(key, 5, 1.0), &mut e).unwrap();
            e
        },
    ] {
        h.encoder.push_record(&envelope, &mut body).unwrap();
    }
    h.frame(&Message::Batch(Batch {
        first_seq: 1,
        count: 2,
        body: &body,
    }));
    let actions = h.actions();
    assert!(matches!(actions.last(), Some(Action::Deliver(d)) if d.records == vec![1]));
    // Counted when settled, with the handler's outcome.
    h.feed(Event::Handled(Ok(RefusedCounts::NONE)));
    let actions = h.actions();
    assert_eq!(
        counts(&actions),
        vec![
            Count::Received(1),
            Count::Refused(RefusedCounts::of(RefusedReason::Undecodable, 1))
        ]
    );
    assert_eq!(persisted(&actions), vec![2]);
}

#[test]
fn bye_acknowledges_everything_then_closes_cleanly() {
    let (mut h, _) = Harness::established(config(), None);
    h.batch(1, &[1]);
    h.handled(Ok(()));
    h.actions();
    h.frame(&Message::Bye);
    durable_and_acked(&mut h, 1);
    let actions = h.actions();
    assert!(matches!(actions[0], Action::Finish { grace } if grace == BYE_GRACE));
    assert_eq!(close_of(&actions), Some((ErrorCode::NoError, "bye".into())));
    assert!(matches!(h.m.end(), Some(End::Bye)));
}

#[test]
fn shutdown_between_groups_stops_at_once_and_within_a_group_commits_first() {
    let (mut h, _) = Harness::established(config(), None);
    h.feed(Event::Shutdown);
    let actions = h.actions();
    assert!(matches!(actions[0], Action::Finish { grace } if grace == SHUTDOWN_GRACE));
    assert_eq!(
        close_of(&actions).map(|c| c.0),
        Some(ErrorCode::ShuttingDown)
    );

    let (mut h, _) = Harness::established(config(), None);
    h.batch(1, &[1]);
    h.handled(Ok(()));
    h.actions();
    h.feed(Event::Shutdown);
    durable_and_acked(&mut h, 1);
    assert_eq!(
        close_of(&h.actions()).map(|c| c.0),
        Some(ErrorCode::ShuttingDown)
    );
    assert!(matches!(h.m.end(), Some(End::Shutdown)));
}

#[test]
fn a_lost_stream_commits_what_was_applied_and_keeps_its_cause() {
    let (mut h, _) = Harness::established(config(), None);
    h.batch(1, &[1]);
    h.handled(Ok(()));
    h.actions();
    h.feed(Event::StreamFailed);
    assert_eq!(h.m.wants(), Wants::Durable(1));
    h.feed(Event::Durable(1));
    h.actions();
    // The ack cannot be written either: the first cause stays.
    h.feed(Event::SendFailed);
    assert!(h.actions().is_empty(), "a lost connection is not closed");
    assert!(matches!(h.m.end(), Some(End::Lost(Lost::StreamFailed))));

    // An ack that cannot be written loses an otherwise healthy session.
    let (mut h, _) = Harness::established(config(), None);
    h.batch(1, &[1]);
    h.handled(Ok(()));
    h.feed(Event::NoFrameWaiting);
    h.feed(Event::Durable(1));
    h.feed(Event::SendFailed);
    assert!(matches!(h.m.end(), Some(End::Lost(Lost::AckNotSent))));

    let (mut h, _) = Harness::established(config(), None);
    h.feed(Event::StreamFinished);
    assert!(matches!(h.m.end(), Some(End::Lost(Lost::StreamFinished))));
}

#[test]
fn framing_errors_and_unexpected_messages_close_the_session() {
    let cases: Vec<(Event<'static>, ErrorCode, &str)> = vec![
        (
            Event::BadFraming(FrameError::TooLarge {
                announced: 2 << 20,
                max: 1 << 20,
            }),
            ErrorCode::FrameTooLarge,
            "frame of 2097152 bytes exceeds the maximum of 1048576",
        ),
        (
            Event::BadFraming(FrameError::Truncated { buffered: 3 }),
            ErrorCode::ProtocolViolation,
            "stream ended inside a frame (3 bytes)",
        ),
        (
            Event::Frame(&[6, 0]),
            ErrorCode::ProtocolViolation,
            "unexpected Ack message",
        ),
    ];
    for (event, code, reason) in cases {
        let (mut h, _) = Harness::established(config(), None);
        h.feed(event);
        let actions = h.actions();
        assert_eq!(counts(&actions), vec![Count::ProtocolError(code)]);
        assert_eq!(close_of(&actions), Some((code, reason.into())));
    }
}
