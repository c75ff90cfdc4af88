//! Spool unit tests: round trips, recovery from torn and corrupt data, the
//! size cap, and a model-based test against a plain in-memory queue.

use super::{
    format::{self, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN},
    *,
};
use proptest::prelude::*;
use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io::Write,
};

fn cfg(max_bytes: u64, segment: u64) -> SpoolConfig {
    SpoolConfig {
        max_bytes,
        segment_bytes: Some(segment),
        fsync: FsyncPolicy::Never,
        max_record_bytes: 4096,
    }
}

/// A small spool with the given fsync policy, for other modules' tests.
pub(super) fn test_cfg(fsync: FsyncPolicy) -> SpoolConfig {
    SpoolConfig {
        fsync,
        ..cfg(1 << 20, 64 << 10)
    }
}

fn payload(seq: u64) -> Vec<u8> {
    format!("record-{seq:06}").into_bytes()
}

fn append_n(s: &mut Spool, n: u64) -> Appended {
    let first = s.last_seq() + 1;
    let recs: Vec<_> = (first..first + n).map(payload).collect();
    s.append(&recs).unwrap()
}

/// Records read back, with their sequence numbers.
type Records = Vec<(u64, Vec<u8>)>;
/// Gaps reported: (from, to, lost).
type Gaps = Vec<(u64, u64, u64)>;

/// Reads everything from `from`, returning records and gaps.
fn read_all(s: &mut Spool, from: u64) -> (Records, Gaps) {
    let mut cur = s.cursor(from);
    let mut buf = ReadBuf::new();
    let mut recs = Vec::new();
    let mut gaps = Vec::new();
    loop {
        match s.read(&mut cur, 7, 100, &mut buf).unwrap() {
            ReadOutcome::Records { first_seq, count } => {
                assert_eq!(count, buf.len());
                for (i, p) in buf.iter().enumerate() {
                    recs.push((first_seq + i as u64, p.to_vec()));
                }
            }
            ReadOutcome::Gap { from, to, lost } => gaps.push((from, to, lost)),
            ReadOutcome::Empty => break,
        }
    }
    (recs, gaps)
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn append_read_reopen_roundtrip() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, rep) = Spool::open(d.path(), cfg(1 << 20, 300)).unwrap();
    assert!(rep.created && rep.is_clean());
    let a = append_n(&mut s, 50);
    assert_eq!((a.first_seq, a.last_seq, a.dropped), (1, 50, 0));
    assert!(seg_files(d.path()).len() > 3, "small segments roll");
    let (recs, gaps) = read_all(&mut s, 1);
    assert!(gaps.is_empty());
    assert_eq!(recs.len(), 50);
    assert!(recs.iter().all(|(seq, p)| *p == payload(*seq)));
    let id = s.stream_id();
    drop(s);

    let (mut s, rep) = Spool::open(d.path(), cfg(1 << 20, 300)).unwrap();
    assert!(!rep.created && rep.is_clean(), "{rep:?}");
    assert_eq!(rep.records, 50);
    assert_eq!(s.stream_id(), id);
    assert_eq!(append_n(&mut s, 1).first_seq, 51);
    let (recs, _) = read_all(&mut s, 20);
    assert_eq!(recs.first().unwrap().0, 20);
    assert_eq!(recs.last().unwrap().0, 51);
}

#[test]
fn ack_deletes_segments_and_survives_reopen() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 300)).unwrap();
    append_n(&mut s, 40);
    let before = seg_files(d.path()).len();
    assert_eq!(s.ack(25).unwrap(), 25);
    assert_eq!(s.ack(20).unwrap(), 0, "acks never go backwards");
    assert!(seg_files(d.path()).len() < before);
    assert_eq!(s.stats().records, 15);
    s.checkpoint().unwrap();
    drop(s);
    let (s, rep) = Spool::open(d.path(), cfg(1 << 20, 300)).unwrap();
    assert_eq!((rep.records, s.acked_seq(), s.last_seq()), (15, 25, 40));
    // ack everything: the spool is empty but remembers its sequence
    let mut s = s;
    s.ack(40).unwrap();
    assert_eq!(s.stats().records, 0);
    drop(s);
    let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 300)).unwrap();
    assert_eq!(append_n(&mut s, 1).first_seq, 41);
}

#[test]
fn torn_tail_is_truncated_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    append_n(&mut s, 10);
    drop(s);
    let seg = seg_files(d.path()).pop().unwrap();
    // An interrupted write: half a record header plus some bytes.
    let mut partial = Vec::new();
    format::encode_record(11, &payload(11), &mut partial);
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&partial[..partial.len() - 3]).unwrap();
    drop(f);

    let (mut s, rep) = Spool::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    assert_eq!(rep.torn_tail_bytes, partial.len() as u64 - 3);
    assert_eq!(rep.records, 10);
    assert!(rep.lost_ranges.is_empty());
    assert_eq!(
        append_n(&mut s, 2).first_seq,
        11,
        "the torn record's number is reused"
    );
    let (recs, gaps) = read_all(&mut s, 1);
    assert!(gaps.is_empty());
    assert_eq!(
        recs.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    assert!(recs.iter().all(|(seq, p)| *p == payload(*seq)));
}

#[test]
fn corrupt_record_in_the_middle_is_cut_out_and_its_loss_reported() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    append_n(&mut s, 20);
    drop(s);
    let seg = seg_files(d.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let rec_len = RECORD_HEADER_LEN + payload(1).len();
    // flip a byte inside record 8's payload
    let off = SEGMENT_HEADER_LEN + 7 * rec_len + RECORD_HEADER_LEN + 2;
    bytes[off] ^= 0x55;
    fs::write(&seg, &bytes).unwrap();

    let (mut s, rep) = Spool::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    assert_eq!(rep.lost_ranges, vec![(8, 8)]);
    assert_eq!(rep.corrupt_bytes, rec_len as u64);
    assert_eq!(rep.records, 19);
    // It may have been sent before the crash: settled by the next session.
    assert_eq!((s.stats().dropped_total, s.stats().uncertain), (0, 1));
    let (recs, gaps) = read_all(&mut s, 1);
    assert_eq!(gaps, vec![(8, 8, 1)]);
    assert_eq!(recs.len(), 19);
    assert!(recs.iter().all(|(seq, p)| *p == payload(*seq)));
    assert_eq!(append_n(&mut s, 1).first_seq, 21);
    drop(s);
    // The repair is stable: reopening finds nothing more to fix.
    let (_, rep) = Spool::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    assert_eq!(
        (rep.corrupt_bytes, rep.torn_tail_bytes, rep.records),
        (0, 0, 20)
    );
}

#[test]
fn damaged_header_segment_is_quarantined() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 300)).unwrap();
    append_n(&mut s, 30);
    drop(s);
    let first = seg_files(d.path()).remove(0);
    let mut bytes = fs::read(&first).unwrap();
    bytes[3] ^= 1;
    fs::write(&first, &bytes).unwrap();
    let (mut s, rep) = Spool::open(d.path(), cfg(1 << 20, 300)).unwrap();
    assert_eq!(rep.quarantined.len(), 1);
    assert!(rep.quarantined[0].to_string_lossy().ends_with(".corrupt"));
    let (recs, gaps) = read_all(&mut s, 1);
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0].0, 1);
    assert_eq!(recs.last().unwrap().0, 30);
}

#[test]
fn cap_drops_oldest_and_reports_the_gap() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(4000, 500)).unwrap();
    let mut dropped = 0;
    for _ in 0..40 {
        dropped += append_n(&mut s, 5).dropped;
    }
    let st = s.stats();
    assert!(st.bytes <= 4000, "{st:?}");
    assert!(dropped > 0);
    assert_eq!(st.dropped_total, dropped);
    assert_eq!(st.last_seq, 200);
    let (recs, gaps) = read_all(&mut s, 1);
    assert_eq!(gaps.len(), 1);
    let (from, to, lost) = gaps[0];
    assert_eq!((from, lost), (1, dropped));
    assert_eq!(to - from + 1, dropped);
    assert_eq!(recs.len() as u64 + dropped, 200);
    assert_eq!(recs[0].0, to + 1);
    // acknowledged records are not counted as lost when dropped
    let d2 = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d2.path(), cfg(4000, 500)).unwrap();
    append_n(&mut s, 30);
    s.ack(30).unwrap();
    for _ in 0..40 {
        append_n(&mut s, 5);
    }
    let (_, gaps) = read_all(&mut s, 1);
    assert_eq!(gaps[0].0, 1);
    assert_eq!(gaps[0].2, gaps[0].1 - 30, "only unacked drops are lost");
}

#[test]
fn oversized_inputs_are_refused_without_writing() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(4000, 500)).unwrap();
    assert!(matches!(
        s.append(&[vec![0u8; 5000]]),
        Err(SpoolError::RecordTooLarge { .. })
    ));
    let big: Vec<Vec<u8>> = (0..100).map(|_| vec![1u8; 100]).collect();
    assert!(matches!(
        s.append(&big),
        Err(SpoolError::BatchTooLarge { .. })
    ));
    assert_eq!(s.last_seq(), 0);
}

#[test]
fn second_open_is_refused_while_locked() {
    let d = tempfile::tempdir().unwrap();
    let (_s, _) = Spool::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    assert!(matches!(
        Spool::open(d.path(), cfg(1 << 20, 1 << 16)),
        Err(SpoolError::Locked(_))
    ));
}

#[test]
fn advancing_the_sequence_leaves_a_gap_that_is_not_lost() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    append_n(&mut s, 5);
    s.advance_next_seq(11).unwrap();
    assert_eq!(append_n(&mut s, 1).first_seq, 11);
    let (recs, gaps) = read_all(&mut s, 1);
    assert_eq!(gaps, vec![(6, 10, 0)]);
    assert_eq!(recs.len(), 6);
    drop(s);
    let (s, rep) = Spool::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(s.last_seq(), 11);
}

#[test]
fn record_larger_than_read_budget_is_still_read() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    s.append(&[vec![7u8; 3000], vec![8u8; 10]]).unwrap();
    let mut cur = s.cursor(1);
    let mut buf = ReadBuf::new();
    assert_eq!(
        s.read(&mut cur, 10, 100, &mut buf).unwrap(),
        ReadOutcome::Records {
            first_seq: 1,
            count: 1
        }
    );
    assert_eq!(buf.bytes(), 3000);
    assert_eq!(
        s.read(&mut cur, 10, 100, &mut buf).unwrap(),
        ReadOutcome::Records {
            first_seq: 2,
            count: 1
        }
    );
}

#[test]
fn bit_rot_after_write_is_caught_on_read() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    append_n(&mut s, 10);
    let seg = seg_files(d.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let rec_len = RECORD_HEADER_LEN + payload(1).len();
    bytes[SEGMENT_HEADER_LEN + 4 * rec_len + RECORD_HEADER_LEN] ^= 1;
    fs::write(&seg, &bytes).unwrap();
    let (recs, gaps) = read_all(&mut s, 1);
    assert_eq!(recs.len(), 4);
    assert_eq!(gaps, vec![(5, 10, 6)]);
    assert_eq!(s.stats().dropped_total, 6, "never sent: lost for sure");
    assert_eq!(append_n(&mut s, 1).first_seq, 11);
    let (recs, _) = read_all(&mut s, 11);
    assert_eq!(recs, vec![(11, payload(11))]);
}

#[test]
fn random_bytes_as_segments_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for round in 0..40 {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 400)).unwrap();
        append_n(&mut s, 30);
        drop(s);
        for seg in seg_files(d.path()) {
            let mut bytes = fs::read(&seg).unwrap();
            for _ in 0..rng.random_range(0..4) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            if round % 3 == 0 {
                let cut = rng.random_range(0..bytes.len());
                bytes.truncate(cut);
            }
            fs::write(&seg, &bytes).unwrap();
        }
        let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 400)).unwrap();
        let (recs, _) = read_all(&mut s, 1);
        for (seq, p) in &recs {
            assert_eq!(*p, payload(*seq), "round {round}");
        }
        assert!(recs.windows(2).all(|w| w[0].0 < w[1].0));
        let next = append_n(&mut s, 1).first_seq;
        assert!(recs.last().is_none_or(|r| r.0 < next));
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Ack(u8),
    Read,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..12).prop_map(Op::Append),
        2 => (0u8..20).prop_map(Op::Ack),
        2 => Just(Op::Read),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// The spool against a model (a map of live records plus a set of lost
    /// sequences): every record read is exactly what was appended under that
    /// sequence, every unread sequence is reported as a gap, and lost counts
    /// match what the cap dropped.
    #[test]
    fn behaves_like_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(3000, 400);
        let (mut s, _) = Spool::open(d.path(), c.clone()).unwrap();
        let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut acked = 0u64;
        let mut dropped_total = 0u64;
        for op in ops {
            match op {
                Op::Append(n) => {
                    let a = append_n(&mut s, u64::from(n));
                    for seq in a.first_seq..=a.last_seq { model.insert(seq, payload(seq)); }
                    dropped_total += a.dropped;
                }
                Op::Ack(k) => {
                    let target = acked + u64::from(k);
                    s.ack(target).unwrap();
                    acked = target.min(s.last_seq()).max(acked);
                    model.retain(|&seq, _| seq > acked);
                }
                Op::Read => {
                    let (recs, gaps) = read_all(&mut s, acked + 1);
                    for (seq, p) in &recs {
                        prop_assert_eq!(Some(p), model.get(seq));
                    }
                    let read: std::collections::BTreeSet<u64> = recs.iter().map(|r| r.0).collect();
                    let lost_in_gaps: u64 = gaps.iter().map(|g| g.2).sum();
                    let gap_len: u64 = gaps.iter().map(|g| g.1 - g.0 + 1).sum();
                    prop_assert_eq!(read.len() as u64 + gap_len, s.last_seq() - acked);
                    prop_assert!(lost_in_gaps <= dropped_total + s.stats().uncertain);
                    // drop the model's entries the spool dropped
                    model.retain(|seq, _| read.contains(seq));
                }
                Op::Reopen => {
                    s.checkpoint().unwrap();
                    drop(s);
                    let (s2, rep) = Spool::open(d.path(), c.clone()).unwrap();
                    prop_assert!(rep.is_clean(), "{:?}", rep);
                    s = s2;
                }
            }
            prop_assert!(s.stats().bytes <= c.max_bytes);
            prop_assert_eq!(s.stats().dropped_total, dropped_total);
        }
    }
}

/// Records dropped after being sent are settled by the receiver's position:
/// what it applied was delivered, the rest is lost (and counted once).
#[test]
fn dropped_records_that_were_sent_are_settled_by_the_receiver() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(4000, 500)).unwrap();
    append_n(&mut s, 20);
    s.mark_sent(20); // all 20 went out; no ack came back (outage)
    let mut dropped_now = 0;
    for _ in 0..40 {
        dropped_now += append_n(&mut s, 5).dropped;
    }
    let st = s.stats();
    assert!(st.uncertain > 0 && st.uncertain <= 20, "{st:?}");
    assert_eq!(
        st.dropped_total, dropped_now,
        "only never-sent drops count at once"
    );
    // The receiver had applied 1..=12 before the outage.
    let lost = s.settle_uncertain(12).unwrap();
    assert_eq!(lost, st.uncertain.saturating_sub(12));
    let st2 = s.stats();
    assert_eq!(st2.uncertain, 0);
    assert_eq!(st2.dropped_total, dropped_now + lost);
    // The gap the next session sees counts exactly what was lost after 12.
    let (_, gaps) = read_all(&mut s, 13);
    assert_eq!(gaps[0].0, 13);
    assert_eq!(
        gaps[0].2, st2.dropped_total,
        "receiver's lost = sender's dropped"
    );
    // An ack during a session settles delivered ones without counting.
    let d2 = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d2.path(), cfg(4000, 500)).unwrap();
    append_n(&mut s, 20);
    s.mark_sent(20);
    for _ in 0..40 {
        append_n(&mut s, 5);
    }
    let unc = s.stats().uncertain;
    s.settle_delivered(20).unwrap();
    assert_eq!(s.stats().uncertain, 0);
    assert_eq!(s.lost_in(1, 20), 0, "delivered, not lost");
    assert!(unc > 0);
}

/// Regression (fuzzing, F1): a record that does not fit the rest of the
/// byte budget ends the batch; it used to make `read` spin forever.
#[test]
fn a_record_that_does_not_fit_the_budget_ends_the_batch() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    s.append(&[vec![1u8; 10], vec![2u8; 10], vec![3u8; 10]])
        .unwrap();
    let mut cur = s.cursor(1);
    let mut buf = ReadBuf::new();
    assert_eq!(
        s.read(&mut cur, 8, 16, &mut buf).unwrap(),
        ReadOutcome::Records {
            first_seq: 1,
            count: 1
        }
    );
    assert_eq!(
        s.read(&mut cur, 8, 16, &mut buf).unwrap(),
        ReadOutcome::Records {
            first_seq: 2,
            count: 1
        }
    );
    // budgets near usize::MAX do not overflow (F2)
    assert_eq!(
        s.read(&mut cur, 8, usize::MAX, &mut buf).unwrap(),
        ReadOutcome::Records {
            first_seq: 3,
            count: 1
        }
    );
}

/// Mixed record sizes under a realistic budget: every record is read once,
/// in order, in batches that respect the budget.
#[test]
fn varied_record_sizes_read_back_in_budgeted_batches() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(1 << 24, 1 << 20)).unwrap();
    let recs: Vec<Vec<u8>> = (0..2000u32)
        .map(|i| vec![(i % 251) as u8; 1 + (i as usize * 37) % 900])
        .collect();
    s.append(&recs).unwrap();
    let mut cur = s.cursor(1);
    let mut buf = ReadBuf::new();
    let mut got = Vec::new();
    loop {
        match s.read(&mut cur, 64, 5000, &mut buf).unwrap() {
            ReadOutcome::Records { count, .. } => {
                assert!(
                    count == 1 || buf.bytes() <= 5000,
                    "batch of {} bytes",
                    buf.bytes()
                );
                got.extend(buf.iter().map(<[u8]>::to_vec));
            }
            ReadOutcome::Empty => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, recs);
}

/// A segment renamed by hand (or by a bad restore) is ordered by its
/// header and gets its proper name back; nothing is lost (fuzzing, F5).
#[test]
fn misnamed_segments_are_renamed_not_lost() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 100)).unwrap();
    append_n(&mut s, 6);
    drop(s);
    let first = seg_files(d.path()).remove(0);
    let wrong = d.path().join("00000000000000000099.seg");
    fs::rename(&first, &wrong).unwrap();
    let (mut s, rep) = Spool::open(d.path(), cfg(1 << 20, 100)).unwrap();
    assert!(
        rep.lost_ranges.is_empty() && rep.quarantined.is_empty(),
        "{rep:?}"
    );
    assert!(first.exists() && !wrong.exists());
    let (recs, gaps) = read_all(&mut s, 1);
    assert!(gaps.is_empty());
    assert_eq!(recs.len(), 6);
}

/// A damaged segment between two good ones: its records are counted as
/// lost, not skipped silently (fuzzing, F7).
#[test]
fn a_quarantined_middle_segment_counts_as_lost() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 100)).unwrap();
    append_n(&mut s, 12);
    drop(s);
    let files = seg_files(d.path());
    assert!(files.len() >= 3);
    let mut bytes = fs::read(&files[1]).unwrap();
    bytes[2] ^= 1; // header magic
    fs::write(&files[1], &bytes).unwrap();
    let (mut s, rep) = Spool::open(d.path(), cfg(1 << 20, 100)).unwrap();
    assert_eq!(rep.quarantined.len(), 1);
    let lost: u64 = rep.lost_ranges.iter().map(|(a, b)| b - a + 1).sum();
    assert!(lost > 0);
    assert_eq!(s.stats().dropped_total + s.stats().uncertain, lost);
    let (recs, gaps) = read_all(&mut s, 1);
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0].2, lost, "the gap is reported as lost");
    assert_eq!(recs.len() as u64 + lost, 12);
}

#[test]
fn the_sequence_space_ends_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    assert!(matches!(
        s.advance_next_seq(u64::MAX),
        Err(SpoolError::SequenceExhausted)
    ));
    s.advance_next_seq(MAX_SEQ).unwrap();
    assert!(matches!(
        s.append(&[b"x"]),
        Err(SpoolError::SequenceExhausted)
    ));
}
