//! Refusal reports in the sender session (protocol version 3): counted
//! once the ack that covers them arrives, checked against what was sent.

use super::*;
use crate::{
    proto::{
        message::{MessageType, Refused},
        refused::{RefusedCounts, RefusedReason},
    },
    session::refusals::ReportError,
};

fn report(rig: &mut Rig, through_seq: u64, counts: RefusedCounts) {
    let frame = Message::Refused(Refused {
        through_seq,
        counts,
    })
    .to_vec();
    rig.handle_at(0, Input::Frame(&frame));
}

/// A rig whose receiver welcomed it in `version`.
fn rig_in(version: u16) -> Rig {
    let mut spool = FakeSpool::with(10);
    let t0 = Instant::now();
    let welcome = Welcome {
        version,
        ..welcome(0)
    };
    let session = SenderSession::new(t0, &welcome, &config(), false, &mut spool);
    Rig {
        session,
        spool,
        out: Vec::new(),
        t0,
    }
}

#[test]
fn refused_records_are_counted_when_their_ack_arrives_and_leave_the_spool() {
    let mut rig = rig_in(PROTOCOL_VERSION);
    rig.events();
    assert_eq!(rig.batch(), (1, 3));
    assert_eq!(rig.batch(), (4, 3));
    let counts = RefusedCounts::of(RefusedReason::Budget, 2);
    report(&mut rig, 3, counts);
    assert_eq!(rig.poll(), FULL);
    assert_eq!(rig.events(), [], "not settled before its ack");
    rig.ack(3);
    rig.poll();
    assert_eq!(
        rig.events(),
        [Event::Acked { records: 3 }, Event::Refused(counts)]
    );
    assert_eq!(rig.spool.acked, 3);
    assert_eq!(rig.spool.unacked(), 7, "refused records are gone too");
    // An ack that covers no report counts no refusal.
    rig.ack(6);
    rig.poll();
    assert_eq!(rig.events(), [Event::Acked { records: 3 }]);
}

#[test]
fn a_report_waits_for_the_ack_that_reaches_it() {
    let mut rig = rig_in(PROTOCOL_VERSION);
    rig.events();
    rig.batch();
    rig.batch();
    let counts = RefusedCounts::of(RefusedReason::SeriesLimit, 4);
    report(&mut rig, 6, counts);
    rig.ack(3);
    rig.poll();
    assert_eq!(rig.events(), [Event::Acked { records: 3 }]);
    rig.ack(6);
    rig.poll();
    assert_eq!(
        rig.events(),
        [Event::Acked { records: 3 }, Event::Refused(counts)]
    );
}

#[test]
fn an_impossible_report_ends_the_session() {
    let mut rig = rig_in(PROTOCOL_VERSION);
    rig.events();
    rig.batch();
    report(&mut rig, 5, RefusedCounts::of(RefusedReason::Other, 1));
    assert_eq!(
        failed(rig.poll()).to_string(),
        "receiver sent a bad refusal report: refusal report through 5 beyond last sent 3"
    );

    let mut rig = rig_in(PROTOCOL_VERSION);
    rig.events();
    rig.batch();
    report(&mut rig, 2, RefusedCounts::of(RefusedReason::Other, 3));
    assert!(matches!(
        failed(rig.poll()),
        SessionError::BadReport(ReportError::TooMany { .. })
    ));
}

#[test]
fn older_receivers_do_not_send_reports() {
    let mut rig = rig_in(2);
    rig.events();
    rig.batch();
    report(&mut rig, 3, RefusedCounts::of(RefusedReason::Other, 1));
    assert_eq!(
        failed(rig.poll()),
        SessionError::Unexpected(MessageType::Refused)
    );
}

/// Reports and acks of several commits read before the session is polled
/// again: each report is checked against the ack before it.
#[test]
fn reports_and_acks_of_several_commits_read_at_once_all_count() {
    let mut rig = rig_in(PROTOCOL_VERSION);
    rig.events();
    rig.batch();
    rig.batch();
    let budget = RefusedCounts::of(RefusedReason::Budget, 3);
    let labels = RefusedCounts::of(RefusedReason::LabelLimit, 3);
    report(&mut rig, 3, budget);
    rig.ack(3);
    report(&mut rig, 6, labels);
    rig.ack(6);
    rig.poll();
    let mut both = budget;
    both.merge(&labels);
    assert_eq!(
        rig.events(),
        [Event::Acked { records: 6 }, Event::Refused(both)]
    );
}
