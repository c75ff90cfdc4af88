//! Version 3 in the receiving session: the hello's replica names the
//! stream, records the link or the handler refuses are settled, counted
//! and reported before the ack that covers them.

use super::*;

fn hello_as(version: u16, replica: &str) -> Message<'static> {
    Message::Hello(Hello {
        version,
        stream_id: STREAM,
        last_seq: 0,
        max_frame: 1 << 20,
        replica: replica.into(),
    })
}

/// Through a hello of `version` for `replica` to an established session.
fn established_as(config: Config, version: u16, replica: &str) -> (Harness, Accepted) {
    let mut h = Harness::new(config);
    h.feed(Event::StreamOpened);
    h.frame(&hello_as(version, replica));
    assert_eq!(h.m.wants(), Wants::State);
    assert_eq!(&**h.m.replica(), replica, "known before the state loads");
    h.feed(Event::StateLoaded(None));
    let accepted = match h.actions().as_slice() {
        [Action::Welcome(a)] => a.clone(),
        other => panic!("expected a welcome, got {other:?}"),
    };
    h.feed(Event::Sent);
    (h, accepted)
}

fn reports(actions: &[Action<u64>]) -> Vec<Refused> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Report(r) => Some(*r),
            _ => None,
        })
        .collect()
}

fn refused_counts(actions: &[Action<u64>]) -> RefusedCounts {
    let mut total = RefusedCounts::NONE;
    for c in counts(actions) {
        if let Count::Refused(c) = c {
            total.merge(&c);
        }
    }
    total
}

/// A batch of samples of series `names` (value 1 each), as the sender's
/// encoder of the harness writes it.
fn sample_batch(h: &mut Harness, first_seq: u64, names: &[&str]) {
    let mut body = Vec::new();
    for name in names {
        let key = Arc::new(SeriesKey::new(*name, Vec::<(String, String)>::new()).unwrap());
        let mut e = Vec::new();
        encode_record(&Sample::new(key, 1, 1.0), &mut e).unwrap();
        h.encoder.push_record(&e, &mut body).unwrap();
    }
    h.frame(&Message::Batch(Batch {
        first_seq,
        count: names.len() as u32,
        body: &body,
    }));
}

#[test]
fn the_hello_names_the_replica_and_older_hellos_are_the_default_one() {
    let (h, accepted) = established_as(config(), PROTOCOL_VERSION, "r-1");
    assert_eq!(&*accepted.replica, "r-1");
    assert_eq!(accepted.welcome.version, PROTOCOL_VERSION);
    assert_eq!(&**h.m.replica(), "r-1");
    for version in [1, 2] {
        let (_, accepted) = established_as(config(), version, "");
        assert_eq!(&*accepted.replica, "");
        assert_eq!(accepted.welcome.version, version);
    }
    // A version-3 hello at a receiver pinned to version 2 is refused as
    // unsupported before any replica is considered.
    let mut h = Harness::new(Config {
        max_protocol_version: 2,
        ..config()
    });
    h.feed(Event::StreamOpened);
    h.frame(&hello_as(PROTOCOL_VERSION, "r-1"));
    let actions = h.actions();
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Refuse(r) if r.max_version == 2)));
    assert_eq!(
        close_of(&actions).map(|c| c.0),
        Some(ErrorCode::UnsupportedVersion)
    );
}

#[test]
fn a_bad_replica_name_is_refused_naming_it() {
    for (name, why) in [
        ("a/b", "has a character outside [A-Za-z0-9._-]"),
        (&*"x".repeat(65), "longer than 64"),
    ] {
        let mut h = Harness::new(config());
        h.feed(Event::StreamOpened);
        h.frame(&hello_as(PROTOCOL_VERSION, name));
        let actions = h.actions();
        assert_eq!(
            counts(&actions),
            vec![Count::HandshakeFailure("bad_replica")]
        );
        let (code, reason) = close_of(&actions).unwrap();
        assert_eq!(code, ErrorCode::ProtocolViolation);
        assert!(reason.starts_with("bad hello: replica name"), "{reason}");
        assert!(reason.contains(why), "{reason}");
        assert_eq!(h.m.wants(), Wants::Nothing);
    }
}

#[test]
fn each_replica_resumes_at_its_own_position_and_resets_alone() {
    // The async layer loads the state of the replica the machine names;
    // the machine resumes at whatever that replica's stored cursor says.
    let mut h = Harness::new(config());
    h.feed(Event::StreamOpened);
    h.frame(&hello_as(PROTOCOL_VERSION, "r2"));
    h.feed(Event::StateLoaded(Some(StreamCursor::new(STREAM, 40))));
    let actions = h.actions();
    assert_eq!(counts(&actions), vec![]);
    assert!(
        matches!(&actions[0], Action::Welcome(a) if a.welcome.applied_seq == 40 && &*a.replica == "r2")
    );

    // That replica's spool was recreated: only its stream restarts.
    let mut h = Harness::new(config());
    h.feed(Event::StreamOpened);
    h.frame(&hello_as(PROTOCOL_VERSION, "r2"));
    h.feed(Event::StateLoaded(Some(StreamCursor::new(STREAM + 1, 40))));
    let actions = h.actions();
    assert_eq!(counts(&actions), vec![Count::StreamReset]);
    assert!(matches!(&actions[1], Action::Welcome(a) if a.welcome.applied_seq == 0));
}

#[test]
fn series_beyond_the_budget_are_refused_and_reported_before_their_ack() {
    let (mut h, _) = established_as(
        Config {
            intern: InternLimits::new(1),
            ..config()
        },
        PROTOCOL_VERSION,
        "",
    );
    // The sender side believes the receiver allows more.
    h.encoder = BatchEncoder::new(10);
    sample_batch(&mut h, 1, &["a", "b", "a", "b"]);
    // `u64` records cannot hold samples: "a" is undecodable, "b" beyond
    // the budget. Nothing to deliver; the position moves on at once.
    let actions = h.actions();
    let mut want = RefusedCounts::of(RefusedReason::Undecodable, 2);
    want.add(RefusedReason::SeriesLimit, 2);
    assert_eq!(refused_counts(&actions), want);
    assert_eq!(persisted(&actions), vec![4]);
    assert!(close_of(&actions).is_none(), "the connection stays up");
    h.feed(Event::NoFrameWaiting);
    assert_eq!(h.m.wants(), Wants::Durable(4));
    h.feed(Event::Durable(4));
    let actions = h.actions();
    assert_eq!(
        reports(&actions),
        vec![Refused {
            through_seq: 4,
            counts: want
        }]
    );
    let report_at = actions
        .iter()
        .position(|a| matches!(a, Action::Report(_)))
        .unwrap();
    let ack_at = actions
        .iter()
        .position(|a| matches!(a, Action::Ack(_)))
        .unwrap();
    assert!(report_at < ack_at, "the report precedes its ack");
    h.feed(Event::Sent);
    // The stream goes on, and an ack without refusals has no report.
    h.batch(5, &[5]);
    h.handled(Ok(()));
    h.feed(Event::NoFrameWaiting);
    let actions = durable_and_acked(&mut h, 5);
    assert!(reports(&actions).is_empty());
}

#[test]
fn handler_refusals_are_settled_counted_and_reported_with_the_links() {
    let (mut h, _) = established_as(
        Config {
            max_frames_per_commit: 8,
            ..config()
        },
        PROTOCOL_VERSION,
        "r1",
    );
    h.batch(1, &[1, 2, 3]);
    let (_, records) = h.handled_with(Ok(RefusedCounts::of(RefusedReason::Budget, 1)));
    assert_eq!(records, vec![1, 2, 3]);
    let actions = h.actions();
    assert_eq!(
        counts(&actions),
        vec![
            Count::Received(2),
            Count::Refused(RefusedCounts::of(RefusedReason::Budget, 1))
        ]
    );
    assert_eq!(persisted(&actions), vec![3]);
    // A second batch in the same group: one report for both.
    h.batch(4, &[4, 5]);
    h.handled_with(Ok(RefusedCounts::of(RefusedReason::Invalid, 2)));
    let actions = h.actions();
    assert_eq!(
        counts(&actions),
        vec![Count::Refused(RefusedCounts::of(RefusedReason::Invalid, 2))]
    );
    h.feed(Event::NoFrameWaiting);
    let actions = durable_and_acked(&mut h, 5);
    let mut want = RefusedCounts::of(RefusedReason::Budget, 1);
    want.add(RefusedReason::Invalid, 2);
    assert_eq!(
        reports(&actions),
        vec![Refused {
            through_seq: 5,
            counts: want
        }]
    );

    // Refused records are settled: sent again, they are duplicates.
    h.batch(4, &[4, 5, 6]);
    let actions = h.actions();
    assert_eq!(counts(&actions), vec![Count::Duplicates(2)]);
    assert!(matches!(actions.last(), Some(Action::Deliver(d)) if d.first_seq == 6));
}

#[test]
fn a_handler_refusing_more_than_it_was_given_is_capped() {
    let (mut h, _) = established_as(config(), PROTOCOL_VERSION, "");
    h.batch(1, &[1, 2]);
    h.handled_with(Ok(RefusedCounts::of(RefusedReason::Other, 5)));
    let actions = h.actions();
    assert_eq!(
        counts(&actions),
        vec![Count::Refused(RefusedCounts::of(RefusedReason::Other, 2))]
    );
    h.feed(Event::NoFrameWaiting);
    let actions = durable_and_acked(&mut h, 2);
    assert_eq!(reports(&actions)[0].counts.total(), 2);
}

#[test]
fn older_sessions_count_refusals_but_get_no_report() {
    for version in [1, 2] {
        let (mut h, _) = established_as(config(), version, "");
        h.batch(1, &[1, 2]);
        h.handled_with(Ok(RefusedCounts::of(RefusedReason::Budget, 1)));
        let actions = h.actions();
        assert_eq!(
            refused_counts(&actions),
            RefusedCounts::of(RefusedReason::Budget, 1)
        );
        h.feed(Event::NoFrameWaiting);
        let actions = durable_and_acked(&mut h, 2);
        assert!(reports(&actions).is_empty(), "version {version}");
    }
}

#[test]
fn refusals_are_reported_with_the_last_ack_when_the_session_ends() {
    let (mut h, _) = established_as(config(), PROTOCOL_VERSION, "");
    h.batch(1, &[1]);
    h.handled_with(Ok(RefusedCounts::of(RefusedReason::Fenced, 1)));
    h.actions();
    h.frame(&Message::Bye);
    let actions = durable_and_acked(&mut h, 1);
    assert_eq!(
        reports(&actions),
        vec![Refused {
            through_seq: 1,
            counts: RefusedCounts::of(RefusedReason::Fenced, 1)
        }]
    );
    assert!(matches!(h.m.end(), Some(End::Bye)));
}
