//! The sender session driven in memory: a fake spool, frames as bytes, and
//! a simulated clock (`t(s)` is `s` seconds after the start).

mod refused;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use super::*;
use crate::{
    proto::{
        message::{Ack, MessageType, PROTOCOL_VERSION},
        record::encode_record,
    },
    session::window::{AckError, WindowLimits},
    spool::SpoolError,
};

/// An in-memory spool with the real one's numbering, ack, drop and settle
/// rules.
#[derive(Debug)]
struct FakeSpool {
    /// Held records (acknowledged ones may linger, as in the active segment).
    records: BTreeMap<u64, Vec<u8>>,
    next_seq: u64,
    acked: u64,
    /// Dropped without acknowledgement (`uncertain` included).
    dropped: BTreeSet<u64>,
    /// Dropped after being sent: their fate is settled by a welcome.
    uncertain: BTreeSet<u64>,
    dropped_total: u64,
    sent_hwm: u64,
    fail_acks: bool,
    appended_bytes: u64,
}

impl FakeSpool {
    fn with(records: u64) -> Self {
        let mut s = Self {
            records: BTreeMap::new(),
            next_seq: 1,
            acked: 0,
            dropped: BTreeSet::new(),
            uncertain: BTreeSet::new(),
            dropped_total: 0,
            sent_hwm: 0,
            fail_acks: false,
            appended_bytes: 0,
        };
        s.append(records);
        s
    }

    fn append(&mut self, n: u64) {
        for _ in 0..n {
            let mut envelope = Vec::new();
            encode_record(&format!("record {}", self.next_seq), &mut envelope).unwrap();
            self.appended_bytes += envelope.len() as u64;
            self.records.insert(self.next_seq, envelope);
            self.next_seq += 1;
        }
    }

    /// The size cap drops the `n` oldest unacknowledged records.
    fn drop_oldest(&mut self, n: usize) {
        let victims: Vec<u64> = self
            .records
            .range(self.acked + 1..)
            .map(|(&s, _)| s)
            .take(n)
            .collect();
        for seq in victims {
            self.records.remove(&seq);
            self.dropped.insert(seq);
            if seq <= self.sent_hwm {
                self.uncertain.insert(seq);
            } else {
                self.dropped_total += 1;
            }
        }
    }
}

impl SessionSpool for FakeSpool {
    type Cursor = u64;
    type Records = Vec<Vec<u8>>;

    fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    fn acked_seq(&self) -> u64 {
        self.acked
    }

    fn unacked(&self) -> u64 {
        self.records.range(self.acked + 1..).count() as u64
    }

    fn lost_in(&self, from: u64, to: u64) -> u64 {
        self.dropped.range(from..=to).count() as u64
    }

    fn advance_next_seq(&mut self, seq: u64) -> Result<(), SpoolError> {
        self.next_seq = self.next_seq.max(seq);
        Ok(())
    }

    fn ack(&mut self, seq: u64) -> Result<u64, SpoolError> {
        if self.fail_acks {
            return Err(SpoolError::Locked(PathBuf::from("/fake")));
        }
        let seq = seq.min(self.last_seq());
        if seq <= self.acked {
            return Ok(0);
        }
        let newly = self.records.range(self.acked + 1..=seq).count() as u64;
        self.records.retain(|&s, _| s > seq);
        self.acked = seq;
        Ok(newly)
    }

    fn settle_uncertain(&mut self, applied: u64) -> Result<u64, SpoolError> {
        let mut lost = 0;
        for seq in std::mem::take(&mut self.uncertain) {
            if seq <= applied {
                self.dropped.remove(&seq);
            } else {
                lost += 1;
            }
        }
        self.dropped_total += lost;
        Ok(lost)
    }

    fn settle_delivered(&mut self, acked: u64) -> Result<(), SpoolError> {
        let delivered: Vec<u64> = self.uncertain.range(..=acked).copied().collect();
        for seq in delivered {
            self.uncertain.remove(&seq);
            self.dropped.remove(&seq);
        }
        Ok(())
    }

    fn cursor(&self, seq: u64) -> u64 {
        seq.max(1)
    }

    fn read(
        &mut self,
        cursor: &mut u64,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<ReadOutcome, SpoolError> {
        out.clear();
        if *cursor >= self.next_seq {
            return Ok(ReadOutcome::Empty);
        }
        let held = self.records.range(*cursor..).next().map(|(&s, _)| s);
        if held != Some(*cursor) {
            let (from, to) = (*cursor, held.map_or(self.last_seq(), |s| s - 1));
            *cursor = to + 1;
            let lost = self.lost_in(from, to);
            return Ok(ReadOutcome::Gap { from, to, lost });
        }
        let first_seq = *cursor;
        let mut bytes = 0;
        while let Some(r) = self.records.get(cursor) {
            if out.len() == max_records || (!out.is_empty() && bytes + r.len() > max_bytes) {
                break;
            }
            bytes += r.len();
            out.push(r.clone());
            *cursor += 1;
        }
        Ok(ReadOutcome::Records {
            first_seq,
            count: out.len(),
        })
    }

    fn records(out: &Vec<Vec<u8>>) -> impl Iterator<Item = &[u8]> {
        out.iter().map(Vec::as_slice)
    }

    fn mark_sent(&mut self, seq: u64) {
        self.sent_hwm = self.sent_hwm.max(seq);
    }

    fn unsent_bytes(&self, cursor: &u64) -> u64 {
        self.records
            .range(*cursor..)
            .map(|(_, r)| r.len() as u64)
            .sum()
    }

    fn appended_bytes(&self) -> u64 {
        self.appended_bytes
    }
}

/// A session, its spool, its frame buffer and the clock's origin.
struct Rig {
    session: SenderSession<FakeSpool>,
    spool: FakeSpool,
    out: Vec<u8>,
    t0: Instant,
}

impl Rig {
    fn new(spool: FakeSpool, applied: u64, config: SessionConfig, failed_over: bool) -> Self {
        let mut spool = spool;
        let t0 = Instant::now();
        let session = SenderSession::new(t0, &welcome(applied), &config, failed_over, &mut spool);
        Self {
            session,
            spool,
            out: Vec::new(),
            t0,
        }
    }

    fn t(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    fn poll_at(&mut self, secs: u64) -> Step {
        let now = self.t(secs);
        self.session.poll(now, &mut self.spool, &mut self.out)
    }

    fn poll(&mut self) -> Step {
        self.poll_at(0)
    }

    fn handle_at(&mut self, secs: u64, input: Input<'_>) {
        let now = self.t(secs);
        self.session.handle(now, input);
    }

    fn ack(&mut self, applied_seq: u64) {
        let frame = Message::Ack(Ack { applied_seq }).to_vec();
        self.handle_at(0, Input::Frame(&frame));
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.session.poll_event()).collect()
    }

    /// Polls, expects a batch, checks its frame; returns `(first_seq, count)`.
    fn batch(&mut self) -> (u64, u32) {
        self.batch_at(0)
    }

    /// [`Rig::batch`] at `secs`.
    fn batch_at(&mut self, secs: u64) -> (u64, u32) {
        let step = self.poll_at(secs);
        let Step::Transmit(t) = step else {
            panic!("expected a batch, got {step:?}");
        };
        match self.message() {
            Message::Batch(b) => {
                assert_eq!(
                    t.carries,
                    Carries::Batch {
                        first_seq: b.first_seq,
                        count: b.count as usize
                    }
                );
                assert_eq!(t.last_seq, b.first_seq + u64::from(b.count) - 1);
                (b.first_seq, b.count)
            }
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    /// Polls, expects a skip; returns it.
    fn skip(&mut self) -> Skip {
        let step = self.poll();
        let Step::Transmit(t) = step else {
            panic!("expected a skip, got {step:?}");
        };
        match self.message() {
            Message::Skip(s) => {
                assert_eq!(t.carries, Carries::Skip(s));
                assert_eq!(t.last_seq, s.to);
                s
            }
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    /// The frame in the buffer, decoded; checks its length prefix.
    fn message(&self) -> Message<'_> {
        let (len, body) = self.out.split_at(4);
        assert_eq!(
            u32::from_be_bytes(len.try_into().unwrap()) as usize,
            body.len()
        );
        Message::decode(body).unwrap()
    }
}

fn welcome(applied_seq: u64) -> Welcome {
    Welcome {
        version: PROTOCOL_VERSION,
        applied_seq,
        max_frame: 1 << 20,
        max_series: 1000,
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        max_frame: 1 << 20,
        batch_max_records: 3,
        window: WindowLimits {
            max_batches: 2,
            max_bytes: 1 << 20,
        },
        failback_after: Some(Duration::from_secs(10)),
        linger: Duration::ZERO,
    }
}

fn failed(step: Step) -> SessionError {
    match step {
        Step::End(End::Failed(e)) => e,
        other => panic!("expected a failed session, got {other:?}"),
    }
}

const WAIT: Step = Step::Wait {
    wants_records: true,
};
const FULL: Step = Step::Wait {
    wants_records: false,
};

#[test]
fn resumes_right_after_the_receivers_applied_position() {
    let mut rig = Rig::new(FakeSpool::with(10), 4, config(), false);
    assert_eq!(rig.events(), [Event::Acked { records: 4 }]);
    assert_eq!(rig.spool.acked, 4);
    assert_eq!(rig.batch(), (5, 3));
    assert_eq!(rig.batch(), (8, 3));
}

#[test]
fn a_receiver_ahead_of_the_spool_moves_the_numbering_past_it() {
    let mut rig = Rig::new(FakeSpool::with(3), 10, config(), false);
    assert_eq!(
        rig.events(),
        [
            Event::ReceiverAhead {
                applied: 10,
                last_seq: 3
            },
            Event::Acked { records: 3 }
        ]
    );
    assert_eq!(rig.spool.last_seq(), 10);
    assert_eq!(rig.poll(), WAIT, "nothing to send, new records wanted");
    rig.spool.append(2);
    assert_eq!(rig.batch(), (11, 2), "new records are numbered after 10");
}

#[test]
fn records_another_receiver_acknowledged_are_skipped_not_lost() {
    let mut spool = FakeSpool::with(10);
    spool.acked = 6;
    let mut rig = Rig::new(spool, 2, config(), true);
    assert_eq!(
        rig.skip(),
        Skip {
            from: 3,
            to: 6,
            lost: 0
        }
    );
    assert_eq!(rig.batch(), (7, 3));
}

#[test]
fn records_dropped_unsent_go_out_as_a_skip_with_their_lost_count() {
    let mut spool = FakeSpool::with(10);
    spool.drop_oldest(4);
    let mut rig = Rig::new(spool, 0, config(), false);
    assert_eq!(
        rig.skip(),
        Skip {
            from: 1,
            to: 4,
            lost: 4
        }
    );
    assert_eq!(rig.batch(), (5, 3));
    assert_eq!(rig.spool.dropped_total, 4);
}

#[test]
fn records_dropped_after_sending_are_settled_by_the_next_welcome() {
    let mut rig = Rig::new(FakeSpool::with(10), 0, config(), false);
    assert_eq!(rig.batch(), (1, 3));
    // The session is lost; the cap then drops 1..=5, of which 1..=3 were
    // sent (their fate is open) and 4..=5 were not (lost at once).
    let mut spool = rig.spool;
    spool.drop_oldest(5);
    assert_eq!(spool.dropped_total, 2);
    // The next receiver applied up to 2: records 1 and 2 were delivered, 3
    // is lost too.
    let mut rig = Rig::new(spool, 2, config(), false);
    assert_eq!(rig.spool.dropped_total, 3);
    assert_eq!(
        rig.skip(),
        Skip {
            from: 3,
            to: 5,
            lost: 3
        }
    );
    assert_eq!(rig.batch(), (6, 3));
}

#[test]
fn the_window_bounds_what_is_in_flight_and_acks_reopen_it() {
    let mut rig = Rig::new(FakeSpool::with(10), 0, config(), false);
    rig.events();
    assert_eq!(rig.batch(), (1, 3));
    assert_eq!(rig.batch(), (4, 3));
    assert_eq!(rig.poll(), FULL, "two batches in flight fill the window");
    rig.ack(2);
    assert_eq!(rig.poll(), FULL, "a partly acknowledged batch is in flight");
    assert_eq!(rig.events(), [Event::Acked { records: 2 }]);
    assert_eq!(rig.spool.unacked(), 8);
    rig.ack(3);
    rig.ack(5);
    assert_eq!(rig.batch(), (7, 3));
    assert_eq!(
        rig.events(),
        [Event::Acked { records: 3 }],
        "acks between polls reach the spool once"
    );
    assert_eq!(rig.poll(), FULL);
    rig.ack(5);
    assert_eq!(rig.poll(), FULL, "a repeated ack is harmless");
    assert_eq!(rig.events(), []);
    rig.ack(6);
    assert_eq!(rig.batch(), (10, 1));
    assert_eq!(rig.poll(), FULL);
    rig.ack(10);
    assert_eq!(rig.poll(), WAIT);
    assert_eq!(rig.spool.unacked(), 0);
}

#[test]
fn batches_fit_the_negotiated_frame() {
    let mut spool = FakeSpool::with(0);
    for seq in 1..=4 {
        let mut envelope = Vec::new();
        encode_record(&vec![seq as u8; 600], &mut envelope).unwrap();
        spool.records.insert(seq, envelope);
    }
    spool.next_seq = 5;
    let mut cfg = config();
    cfg.batch_max_records = 10;
    cfg.window.max_batches = 10;
    let mut w = welcome(0);
    w.max_frame = 1024;
    let mut rig = Rig {
        session: SenderSession::new(Instant::now(), &w, &cfg, false, &mut spool),
        spool,
        out: Vec::new(),
        t0: Instant::now(),
    };
    assert_eq!(rig.session.max_frame(), 1024);
    for seq in 1..=4 {
        assert_eq!(rig.batch(), (seq, 1));
        assert!(rig.out.len() <= 1024 + 4);
    }
}

#[test]
fn bad_acks_end_the_session() {
    let mut rig = Rig::new(FakeSpool::with(10), 0, config(), false);
    assert_eq!(rig.batch(), (1, 3));
    rig.ack(5);
    let err = failed(rig.poll());
    assert_eq!(
        err,
        SessionError::BadAck(AckError::Unsent { sent: 3, got: 5 })
    );
    assert_eq!(
        err.to_string(),
        "receiver sent a bad ack: ack 5 beyond last sent 3"
    );

    let mut rig = Rig::new(FakeSpool::with(10), 0, config(), false);
    assert_eq!(rig.batch(), (1, 3));
    rig.ack(3);
    rig.ack(2);
    assert_eq!(
        failed(rig.poll()),
        SessionError::BadAck(AckError::Backwards { acked: 3, got: 2 })
    );
    assert_eq!(
        rig.spool.acked, 0,
        "nothing after a bad ack reaches the spool"
    );
}

#[test]
fn other_messages_from_the_receiver_end_the_session() {
    let mut rig = Rig::new(FakeSpool::with(1), 0, config(), false);
    let frame = Message::Welcome(welcome(0)).to_vec();
    rig.handle_at(0, Input::Frame(&frame));
    assert_eq!(
        failed(rig.poll()),
        SessionError::Unexpected(MessageType::Welcome)
    );

    let mut rig = Rig::new(FakeSpool::with(1), 0, config(), false);
    rig.handle_at(0, Input::Frame(&[0xee]));
    assert!(matches!(failed(rig.poll()), SessionError::Malformed(_)));
}

#[test]
fn spool_failures_end_the_session_with_the_spools_error() {
    let mut rig = Rig::new(FakeSpool::with(5), 0, config(), false);
    assert_eq!(rig.batch(), (1, 3));
    rig.spool.fail_acks = true;
    rig.ack(3);
    let err = failed(rig.poll());
    assert!(matches!(err, SessionError::Spool(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "spool: spool directory /fake is in use by another process"
    );

    let mut spool = FakeSpool::with(5);
    spool.fail_acks = true;
    let mut rig = Rig::new(spool, 2, config(), false);
    assert!(matches!(failed(rig.poll()), SessionError::Spool(_)));
}

#[test]
fn an_impossible_applied_position_ends_the_session() {
    let mut rig = Rig::new(FakeSpool::with(5), MAX_SEQ + 1, config(), false);
    assert_eq!(
        failed(rig.poll()),
        SessionError::ImpossibleApplied(MAX_SEQ + 1)
    );
    assert_eq!(rig.spool.acked, 0);
}

#[test]
fn a_stop_drains_until_everything_is_acknowledged() {
    let mut rig = Rig::new(FakeSpool::with(3), 0, config(), false);
    let deadline = rig.t(5);
    rig.handle_at(0, Input::Stop { deadline });
    assert_eq!(rig.batch(), (1, 3));
    assert_eq!(rig.poll(), WAIT);
    assert_eq!(rig.session.poll_timeout(), Some(deadline));
    rig.ack(3);
    assert_eq!(rig.poll_at(1), Step::End(End::Stopped));
}

#[test]
fn a_stop_gives_up_at_its_deadline() {
    let mut rig = Rig::new(FakeSpool::with(3), 0, config(), false);
    assert_eq!(rig.batch(), (1, 3));
    let deadline = rig.t(5);
    rig.handle_at(1, Input::Stop { deadline });
    assert_eq!(rig.poll_at(4), WAIT);
    assert_eq!(rig.poll_at(5), Step::End(End::Stopped));
    assert_eq!(
        rig.spool.unacked(),
        3,
        "unacknowledged records stay spooled"
    );
}

#[test]
fn a_stop_with_nothing_spooled_ends_at_once() {
    let mut rig = Rig::new(FakeSpool::with(0), 0, config(), false);
    let deadline = rig.t(5);
    rig.handle_at(0, Input::Stop { deadline });
    assert_eq!(rig.poll(), Step::End(End::Stopped));
}

#[test]
fn failback_probes_every_interval_and_switches_once_in_flight_is_acked() {
    let mut rig = Rig::new(FakeSpool::with(6), 0, config(), true);
    assert_eq!(rig.batch(), (1, 3));
    assert_eq!(rig.batch(), (4, 3));
    assert_eq!(rig.poll(), FULL);
    assert_eq!(rig.session.poll_timeout(), Some(rig.t(10)));
    assert_eq!(rig.poll_at(9), FULL);
    assert_eq!(rig.poll_at(10), Step::Probe);
    assert_eq!(rig.session.poll_timeout(), None, "no timer while probing");
    rig.handle_at(12, Input::ProbeFailed);
    assert_eq!(rig.session.poll_timeout(), Some(rig.t(22)));
    assert_eq!(rig.poll_at(21), FULL);
    assert_eq!(rig.poll_at(22), Step::Probe);
    rig.handle_at(23, Input::ProbeSucceeded);
    rig.spool.append(5);
    rig.ack(3);
    assert_eq!(
        rig.poll_at(23),
        FULL,
        "nothing new goes out while switching, however much room"
    );
    rig.ack(6);
    assert_eq!(rig.poll_at(24), Step::End(End::FailBack));
    assert_eq!(
        rig.spool.unacked(),
        5,
        "the new records wait for the next session"
    );
}

#[test]
fn only_a_failed_over_session_with_failback_on_probes() {
    let rig = Rig::new(FakeSpool::with(0), 0, config(), false);
    assert_eq!(rig.session.poll_timeout(), None);
    let mut cfg = config();
    cfg.failback_after = None;
    let mut rig = Rig::new(FakeSpool::with(0), 0, cfg, true);
    assert_eq!(rig.session.poll_timeout(), None);
    assert_eq!(rig.poll_at(1000), WAIT);
}

#[test]
fn a_stop_beats_a_pending_failback() {
    let mut rig = Rig::new(FakeSpool::with(3), 0, config(), true);
    assert_eq!(rig.batch(), (1, 3));
    assert_eq!(rig.poll_at(10), Step::Probe);
    rig.handle_at(11, Input::ProbeSucceeded);
    let deadline = rig.t(12);
    rig.handle_at(11, Input::Stop { deadline });
    assert_eq!(rig.poll_at(11), FULL);
    assert_eq!(rig.poll_at(12), Step::End(End::Stopped));
}

#[test]
fn drained_or_due_needs_an_empty_spool_and_an_idle_window_or_the_deadline() {
    let t0 = Instant::now();
    let later = t0 + Duration::from_secs(1);
    assert!(drained_or_due(t0, later, 0, true));
    assert!(!drained_or_due(t0, later, 0, false));
    assert!(!drained_or_due(t0, later, 1, true));
    assert!(drained_or_due(later, later, 1, false));
}

/// A configuration whose batches linger `secs` seconds.
fn lingering(secs: u64) -> SessionConfig {
    SessionConfig {
        linger: Duration::from_secs(secs),
        failback_after: None,
        ..config()
    }
}

#[test]
fn a_batch_that_is_not_full_lingers_from_its_first_record() {
    let mut rig = Rig::new(FakeSpool::with(0), 0, lingering(2), false);
    assert_eq!(rig.poll(), WAIT);
    assert_eq!(rig.session.poll_timeout(), None, "idle: no timer");
    assert_eq!(
        rig.session.wake_on(),
        WakeOn {
            last_seq: 1,
            appended_bytes: u64::MAX
        },
        "the first record wakes the caller"
    );
    rig.spool.append(1);
    assert_eq!(rig.poll_at(1), WAIT, "one record: it lingers");
    assert_eq!(rig.session.poll_timeout(), Some(rig.t(3)));
    assert_eq!(
        rig.session.wake_on().last_seq,
        3,
        "the next wake is for a full batch"
    );
    rig.spool.append(1);
    assert_eq!(rig.poll_at(2), WAIT);
    assert_eq!(rig.session.poll_timeout(), Some(rig.t(3)), "from the first");
    assert_eq!(rig.batch_at(3), (1, 2));
    assert_eq!(rig.poll_at(3), WAIT);
    assert_eq!(rig.session.poll_timeout(), None, "all sent: no timer");
}

#[test]
fn a_full_batch_leaves_without_lingering() {
    let mut rig = Rig::new(FakeSpool::with(0), 0, lingering(2), false);
    assert_eq!(rig.poll(), WAIT);
    rig.spool.append(2);
    assert_eq!(rig.poll(), WAIT);
    let wake = rig.session.wake_on();
    assert!(!wake.is_met(rig.spool.last_seq(), rig.spool.appended_bytes));
    rig.spool.append(1);
    assert!(
        wake.is_met(rig.spool.last_seq(), rig.spool.appended_bytes),
        "the third record fills the batch and wakes the caller"
    );
    assert_eq!(rig.batch(), (1, 3));
}

#[test]
fn a_batch_full_by_bytes_leaves_without_lingering() {
    let mut cfg = lingering(2);
    cfg.batch_max_records = 1000;
    let mut w = welcome(0);
    w.max_frame = 1024;
    let mut spool = FakeSpool::with(0);
    let mut session = SenderSession::new(Instant::now(), &w, &cfg, false, &mut spool);
    let mut out = Vec::new();
    let now = Instant::now();
    let mut polls = 0;
    while !matches!(session.poll(now, &mut spool, &mut out), Step::Transmit(_)) {
        let wake = session.wake_on();
        spool.append(1);
        if wake.is_met(spool.last_seq(), spool.appended_bytes) {
            assert!(
                matches!(session.poll(now, &mut spool, &mut out), Step::Transmit(_)),
                "woken for a full frame: it leaves"
            );
            break;
        }
        polls += 1;
        assert!(polls < 200, "never full");
    }
    assert!(
        spool.last_seq() < 1000,
        "full by bytes long before by records"
    );
}

#[test]
fn a_flush_sends_what_it_covers_at_once() {
    let mut rig = Rig::new(FakeSpool::with(0), 0, lingering(2), false);
    rig.spool.append(2);
    assert_eq!(rig.poll(), WAIT);
    rig.handle_at(0, Input::Flush { upto: 2 });
    assert_eq!(rig.batch(), (1, 2));
    rig.spool.append(1);
    assert_eq!(rig.poll(), WAIT, "records after the flush linger");
}

#[test]
fn the_backlog_at_the_start_and_a_stop_do_not_linger() {
    let mut rig = Rig::new(FakeSpool::with(2), 0, lingering(10), false);
    assert_eq!(rig.batch(), (1, 2), "spooled before the session: at once");
    rig.spool.append(1);
    assert_eq!(rig.poll(), WAIT);
    let deadline = rig.t(5);
    rig.handle_at(0, Input::Stop { deadline });
    assert_eq!(rig.batch(), (3, 1), "stopping: at once");
}

#[test]
fn a_full_window_sets_no_linger_timer_and_wants_no_appends() {
    let mut rig = Rig::new(FakeSpool::with(6), 0, lingering(2), false);
    assert_eq!(rig.batch(), (1, 3));
    assert_eq!(rig.batch(), (4, 3));
    rig.spool.append(1);
    assert_eq!(rig.poll_at(5), FULL);
    assert_eq!(rig.session.wake_on(), WakeOn::NEVER);
    assert_eq!(rig.session.poll_timeout(), None);
    rig.ack(3);
    assert_eq!(
        rig.poll_at(6),
        WAIT,
        "room again: the record starts lingering"
    );
    assert_eq!(rig.session.poll_timeout(), Some(rig.t(8)));
    assert_eq!(rig.batch_at(8), (7, 1));
}
