use proptest::prelude::*;

use super::*;

fn key(id: &str, replica: &str) -> StreamKey {
    StreamKey::new(id, replica)
}

fn journal(generation: u64, records: &[(StreamKey, StreamCursor)]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_header(JOURNAL_MAGIC, generation, &mut out);
    for (k, c) in records {
        encode_record(k, c, &mut out);
    }
    out
}

fn snapshot(generation: u64, records: &[(StreamKey, StreamCursor)]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_snapshot(generation, records.iter().map(|(k, c)| (k, c)), &mut out);
    out
}

#[test]
fn records_round_trip_at_every_name_length() {
    let long_id = "i".repeat(MAX_IDENTITY_LEN);
    let long_replica = "r".repeat(MAX_REPLICA_LEN);
    for (id, replica) in [
        ("a", ""),
        ("edge-1", "r.2-x_y"),
        (&*long_id, &*long_replica),
    ] {
        let k = key(id, replica);
        let c = StreamCursor::new(u128::MAX - 3, u64::MAX - 1);
        let mut out = Vec::new();
        encode_record(&k, &c, &mut out);
        assert!(out.len() <= RECORD_HEADER_LEN + MAX_BODY_LEN);
        assert_eq!(
            parse_record(&out),
            Parsed::Record {
                key: k,
                cursor: c,
                len: out.len()
            }
        );
        // Every cut and every flipped bit is torn, never another record.
        for cut in 0..out.len() {
            assert_eq!(parse_record(&out[..cut]), Parsed::Torn);
        }
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            assert_eq!(parse_record(&bad), Parsed::Torn, "flip at {i}");
        }
    }
}

#[test]
fn a_record_with_a_valid_checksum_but_an_invalid_name_is_torn() {
    let mut body = vec![3, b'a', b'/', b'b', 0];
    body.extend_from_slice(&[0; 24]);
    let mut out = (body.len() as u16).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    assert_eq!(parse_record(&out), Parsed::Torn);
}

#[test]
fn the_fold_keeps_the_highest_position_and_follows_a_new_stream_id() {
    let mut f = Fold::new();
    let a = key("a", "");
    f.apply(a.clone(), StreamCursor::new(1, 10));
    f.apply(a.clone(), StreamCursor::new(1, 7));
    assert_eq!(f.clone().into_positions()[&a], StreamCursor::new(1, 10));
    // A new stream id replaces the position, even a lower one.
    f.apply(a.clone(), StreamCursor::new(2, 3));
    assert_eq!(f.into_positions()[&a], StreamCursor::new(2, 3));
}

#[test]
fn a_torn_journal_tail_is_dropped_and_counted() {
    let a = key("a", "");
    let b = key("b", "r1");
    let mut bytes = journal(
        4,
        &[
            (a.clone(), StreamCursor::new(1, 1)),
            (b.clone(), StreamCursor::new(2, 5)),
            (a.clone(), StreamCursor::new(1, 2)),
        ],
    );
    let whole = bytes.len();
    encode_record(&a, &StreamCursor::new(1, 99), &mut bytes);
    let torn = 7;
    bytes.truncate(whole + torn);
    let mut f = Fold::new();
    let scan = fold_journal(&bytes, Some(&mut f)).unwrap();
    assert_eq!(
        scan,
        JournalScan {
            generation: 4,
            records: 3,
            torn_bytes: torn as u64
        }
    );
    let p = f.into_positions();
    assert_eq!(
        (p[&a], p[&b]),
        (StreamCursor::new(1, 2), StreamCursor::new(2, 5))
    );
}

#[test]
fn generations_decide_what_the_journal_counts_for() {
    let a = key("a", "");
    let snap = snapshot(3, &[(a.clone(), StreamCursor::new(1, 50))]);
    let newer = journal(3, &[(a.clone(), StreamCursor::new(1, 60))]);
    let stale = journal(2, &[(a.clone(), StreamCursor::new(9, 1))]);
    let ahead = journal(4, &[(a.clone(), StreamCursor::new(1, 70))]);

    let r = recover([], Some(&snap), Some(&newer)).unwrap();
    assert_eq!(
        (r.positions[&a].applied(), r.generation, r.stale_journal),
        (60, 3, false)
    );
    // Left over from a compaction that stopped before the journal reset.
    let r = recover([], Some(&snap), Some(&stale)).unwrap();
    assert_eq!(
        (r.positions[&a], r.stale_journal),
        (StreamCursor::new(1, 50), true)
    );
    assert_eq!(
        recover([], Some(&snap), Some(&ahead)),
        Err((
            DamagedFile::Journal,
            StateDamage::MissingSnapshot {
                journal: 4,
                snapshot: Some(3)
            }
        ))
    );
    assert_eq!(
        recover([], None, Some(&ahead)).map(|r| r.generation),
        Err((
            DamagedFile::Journal,
            StateDamage::MissingSnapshot {
                journal: 4,
                snapshot: None
            }
        ))
    );
    let first = journal(0, &[(a.clone(), StreamCursor::new(1, 5))]);
    assert_eq!(
        recover([], None, Some(&first)).unwrap().positions[&a].applied(),
        5
    );
    assert!(recover([], None, None).unwrap().positions.is_empty());
}

#[test]
fn older_layout_positions_come_first() {
    let a = key("a", "");
    let snap = snapshot(1, &[(a.clone(), StreamCursor::new(2, 4))]);
    // The file of the older layout is older than the snapshot: the
    // snapshot's new stream wins although its position is lower.
    let r = recover([(a.clone(), StreamCursor::new(1, 100))], Some(&snap), None).unwrap();
    assert_eq!(r.positions[&a], StreamCursor::new(2, 4));
    let r = recover([(a.clone(), StreamCursor::new(2, 100))], Some(&snap), None).unwrap();
    assert_eq!(r.positions[&a], StreamCursor::new(2, 100));
}

#[test]
fn any_damage_in_a_snapshot_is_an_error() {
    let snap = snapshot(
        1,
        &[
            (key("a", ""), StreamCursor::new(1, 1)),
            (key("b", ""), StreamCursor::new(1, 2)),
        ],
    );
    assert!(recover([], Some(&snap), None).is_ok());
    for cut in 0..snap.len() {
        assert!(
            recover([], Some(&snap[..cut]), None).is_err(),
            "cut at {cut}"
        );
    }
    for i in 0..snap.len() {
        let mut bad = snap.clone();
        bad[i] ^= 1;
        assert!(recover([], Some(&bad), None).is_err(), "flip at {i}");
    }
    let mut j = journal(1, &[]);
    j[0] ^= 1;
    assert_eq!(
        recover([], Some(&snap), Some(&j)),
        Err((DamagedFile::Journal, StateDamage::Header))
    );
}

fn name() -> impl Strategy<Value = String> {
    "[a-c]{1,3}"
}

proptest! {
    /// A journal cut anywhere recovers, per stream, exactly the fold of
    /// the complete records before the cut.
    #[test]
    fn a_journal_cut_anywhere_recovers_the_complete_prefix(
        records in proptest::collection::vec((name(), 0u8..2, 0u128..3, 0u64..1000), 0..30),
        cut_frac in 0.0f64..=1.0,
    ) {
        let records: Vec<_> = records
            .into_iter()
            .map(|(id, r, s, a)| (key(&id, if r == 0 { "" } else { "x" }), StreamCursor::new(s, a)))
            .collect();
        let bytes = journal(0, &records);
        let cut = HEADER_LEN + ((bytes.len() - HEADER_LEN) as f64 * cut_frac) as usize;
        let got = recover([], None, Some(&bytes[..cut])).unwrap();
        let mut offsets = vec![HEADER_LEN];
        let mut scratch = Vec::new();
        for (k, c) in &records {
            scratch.clear();
            encode_record(k, c, &mut scratch);
            offsets.push(offsets[offsets.len() - 1] + scratch.len());
        }
        let complete = offsets.iter().skip(1).take_while(|&&o| o <= cut).count();
        let mut want = Fold::new();
        for (k, c) in records.iter().take(complete) {
            want.apply(k.clone(), *c);
        }
        prop_assert_eq!(got.journal_records, complete as u64);
        prop_assert_eq!(got.torn_bytes, (cut - offsets[complete]) as u64);
        prop_assert_eq!(got.positions, want.into_positions());
    }
}
