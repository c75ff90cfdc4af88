//! Queue tests: crash recovery by reopening, the cap and its drop counts,
//! idempotent producers across reopening and acknowledgement, and a
//! model-based property test against an in-memory queue.

use std::collections::{HashMap, VecDeque};

use proptest::prelude::*;

use super::*;
use crate::{FsyncPolicy, SpoolConfig};

fn cfg(max_bytes: u64, segment: u64) -> SpoolConfig {
    SpoolConfig {
        max_bytes,
        segment_bytes: Some(segment),
        fsync: FsyncPolicy::Never,
        max_record_bytes: 4096,
    }
}

fn entry(i: u64) -> Entry<Vec<u8>> {
    Entry::weighted(format!("entry-{i:05}").into_bytes(), i % 7)
}

/// Reads every unread entry: (position, weight, bytes).
fn drain(q: &mut ByteQueue) -> Vec<(u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(e) = q.peek().unwrap() {
        out.push((e.position, e.weight, e.bytes.to_vec()));
        q.advance();
    }
    out
}

fn from(key: &str, stream_id: u128, last_seq: u64) -> Producer<'_> {
    Producer {
        key,
        stream_id,
        last_seq,
    }
}

#[test]
fn entries_survive_reopening_until_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, rec) = ByteQueue::open(d.path(), cfg(1 << 20, 300)).unwrap();
    assert!(rec.spool.created && rec.is_clean() && rec.entries == 0);
    let entries: Vec<_> = (1..=20).map(entry).collect();
    let pushed = q.push(&entries).unwrap();
    assert_eq!(
        pushed,
        Pushed::Queued {
            first: 1,
            last: 20,
            dropped: Dropped::default()
        }
    );
    let weight: u64 = entries.iter().map(|e| e.weight).sum();
    assert_eq!((q.stats().entries, q.stats().weight), (20, weight));
    let read = drain(&mut q);
    assert_eq!(read.len(), 20);
    assert!(read
        .iter()
        .all(|(pos, w, b)| *b == entry(*pos).bytes && *w == entry(*pos).weight));
    // Reading removed nothing; acknowledging does.
    assert_eq!(q.ack(8).unwrap(), 8);
    assert_eq!(q.ack(5).unwrap(), 0, "acknowledgements never go back");
    q.checkpoint().unwrap();
    drop(q);

    let (mut q, rec) = ByteQueue::open(d.path(), cfg(1 << 20, 300)).unwrap();
    assert!(rec.is_clean(), "{rec:?}");
    assert_eq!(rec.entries, 12);
    let st = q.stats();
    assert_eq!(
        (st.entries, st.acked_position, st.last_position),
        (12, 8, 20)
    );
    assert_eq!(st.weight, (9..=20).map(|i| i % 7).sum::<u64>());
    let read = drain(&mut q);
    assert_eq!(read.first().map(|r| r.0), Some(9));
    assert_eq!(read.len(), 12);
    let pushed = q.push(&[entry(21)]).unwrap();
    assert!(matches!(
        pushed,
        Pushed::Queued {
            first: 21,
            last: 21,
            ..
        }
    ));
}

#[test]
fn rewind_reads_the_unacknowledged_entries_again() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = ByteQueue::open(d.path(), cfg(1 << 20, 300)).unwrap();
    q.push(&(1..=10).map(entry).collect::<Vec<_>>()).unwrap();
    let first = drain(&mut q);
    assert!(q.peek().unwrap().is_none());
    q.ack(4).unwrap();
    q.rewind();
    assert_eq!(q.read_position(), 5);
    assert_eq!(drain(&mut q), first[4..].to_vec());
    // Acknowledging past the read position moves it along.
    q.rewind();
    q.ack(7).unwrap();
    assert_eq!(q.peek().unwrap().map(|e| e.position), Some(8));
    // Without `advance`, peek keeps returning the same entry.
    assert_eq!(q.peek().unwrap().map(|e| e.position), Some(8));
}

#[test]
fn acknowledgements_and_reads_across_a_crash() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = ByteQueue::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    q.push(&(1..=5).map(entry).collect::<Vec<_>>()).unwrap();
    assert_eq!(drain(&mut q).len(), 5);
    q.ack(3).unwrap();
    drop(q); // no checkpoint
    let (mut q, rec) = ByteQueue::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    assert_eq!(rec.entries, 2, "the acknowledgement is durable");
    // Read but not acknowledged: read again.
    let read = drain(&mut q);
    assert_eq!(read.iter().map(|r| r.0).collect::<Vec<_>>(), vec![4, 5]);
}

#[test]
fn a_torn_push_is_cut_at_reopen_and_the_rest_kept() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = ByteQueue::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    q.push(&(1..=5).map(entry).collect::<Vec<_>>()).unwrap();
    drop(q);
    let seg = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 3).unwrap(); // an interrupted write of entry 5
    drop(f);
    let (mut q, rec) = ByteQueue::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    assert!(rec.spool.torn_tail_bytes > 0);
    assert_eq!(rec.entries, 4);
    assert_eq!(drain(&mut q).len(), 4);
    let pushed = q.push(&[entry(5)]).unwrap();
    assert!(matches!(pushed, Pushed::Queued { first: 5, .. }));
}

#[test]
fn the_cap_drops_the_oldest_entries_and_counts_them() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = ByteQueue::open(d.path(), cfg(8 * 1024, 1024)).unwrap();
    let mut dropped = Dropped::default();
    for i in 1..=400 {
        let d = q.push(&[entry(i)]).unwrap().dropped();
        dropped.entries += d.entries;
        dropped.weight += d.weight;
    }
    let st = q.stats();
    assert!(dropped.entries > 0 && st.bytes <= 8 * 1024, "{st:?}");
    assert_eq!(st.dropped, dropped);
    assert_eq!(st.entries + dropped.entries, 400);
    let total: u64 = (1..=400).map(|i| i % 7).sum();
    assert_eq!(st.weight + dropped.weight, total);
    // What is left is the newest entries, in order, with no gap.
    let read = drain(&mut q);
    assert_eq!(read.len() as u64, st.entries);
    assert_eq!(read[0].0, dropped.entries + 1);
    assert_eq!(read.last().unwrap().0, 400);
    assert!(read.windows(2).all(|w| w[0].0 + 1 == w[1].0));
}

#[test]
fn a_drop_moves_the_read_position_past_dropped_entries() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = ByteQueue::open(d.path(), cfg(8 * 1024, 1024)).unwrap();
    q.push(&[entry(1)]).unwrap();
    assert_eq!(q.peek().unwrap().map(|e| e.position), Some(1));
    let mut i = 2;
    while q.stats().dropped.entries == 0 {
        q.push(&[entry(i)]).unwrap();
        i += 1;
    }
    let first_kept = q.stats().dropped.entries + 1;
    assert_eq!(q.peek().unwrap().map(|e| e.position), Some(first_kept));
}

#[test]
fn a_producer_queues_a_push_once_across_reopen_and_ack() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = ByteQueue::open(d.path(), cfg(1 << 20, 300)).unwrap();
    let batch = [entry(1), entry(2)];
    assert!(matches!(
        q.push_from(from("a", 1, 10), &batch).unwrap(),
        Pushed::Queued {
            first: 1,
            last: 2,
            ..
        }
    ));
    assert_eq!(
        q.push_from(from("a", 1, 10), &batch).unwrap(),
        Pushed::AlreadyQueued
    );
    assert_eq!(
        q.push_from(from("a", 1, 9), &batch).unwrap(),
        Pushed::AlreadyQueued
    );
    assert_eq!(q.already_queued("a", 1, 6), 5);
    assert_eq!(
        q.mark("a"),
        Some(ProducerMark {
            stream_id: 1,
            seq: 10
        })
    );
    // Another producer, or a new stream of the same one, is not affected.
    assert!(matches!(
        q.push_from(from("b", 1, 10), &batch).unwrap(),
        Pushed::Queued { .. }
    ));
    drop(q);

    // Still queued: the entries carry the marks.
    let (mut q, rec) = ByteQueue::open(d.path(), cfg(1 << 20, 300)).unwrap();
    assert!(rec.is_clean());
    assert_eq!(
        q.push_from(from("a", 1, 10), &batch).unwrap(),
        Pushed::AlreadyQueued
    );
    assert_eq!(q.already_queued("b", 1, 1), 10);
    // Acknowledged and forgotten: the marks file keeps them.
    q.ack(4).unwrap();
    assert_eq!(q.stats().entries, 0);
    drop(q);
    let (mut q, _) = ByteQueue::open(d.path(), cfg(1 << 20, 300)).unwrap();
    assert_eq!(
        q.push_from(from("a", 1, 10), &batch).unwrap(),
        Pushed::AlreadyQueued
    );
    assert_eq!(q.already_queued("b", 1, 1), 10);
    assert!(matches!(
        q.push_from(from("a", 2, 1), &batch).unwrap(),
        Pushed::Queued { first: 5, .. }
    ));
    assert_eq!(
        q.mark("a"),
        Some(ProducerMark {
            stream_id: 2,
            seq: 1
        })
    );
}

/// Only the last entry of a push carries its mark: a crash that tears the
/// push leaves no mark, so the producer's redelivery is queued (a
/// duplicate of the surviving entries, never a loss).
#[test]
fn a_torn_push_leaves_no_mark() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = ByteQueue::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    let batch: Vec<_> = (1..=3).map(entry).collect();
    q.push_from(from("a", 1, 30), &batch).unwrap();
    drop(q);
    let seg = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 1).unwrap(); // the last entry's write was interrupted
    drop(f);
    let (mut q, rec) = ByteQueue::open(d.path(), cfg(1 << 20, 1 << 16)).unwrap();
    assert_eq!(rec.entries, 2);
    assert_eq!(q.already_queued("a", 1, 1), 0);
    assert!(matches!(
        q.push_from(from("a", 1, 30), &batch).unwrap(),
        Pushed::Queued {
            first: 3,
            last: 5,
            ..
        }
    ));
}

#[test]
fn a_push_without_entries_records_the_mark_durably() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = ByteQueue::open(d.path(), cfg(1 << 20, 300)).unwrap();
    let none: [Entry<&[u8]>; 0] = [];
    let pushed = q.push_from(from("a", 3, 7), &none).unwrap();
    assert_eq!(
        pushed,
        Pushed::Queued {
            first: 1,
            last: 0,
            dropped: Dropped::default()
        }
    );
    drop(q);
    let (q, _) = ByteQueue::open(d.path(), cfg(1 << 20, 300)).unwrap();
    assert_eq!(q.already_queued("a", 3, 1), 7);
    assert_eq!(q.stats().entries, 0);
}

#[test]
fn dropped_entries_keep_their_marks_across_reopen() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = ByteQueue::open(d.path(), cfg(8 * 1024, 1024)).unwrap();
    q.push_from(from("a", 1, 1), &[entry(1)]).unwrap();
    let mut i = 2;
    while q.stats().dropped.entries == 0 {
        q.push(&[entry(i)]).unwrap();
        i += 1;
    }
    drop(q);
    let (q, _) = ByteQueue::open(d.path(), cfg(8 * 1024, 1024)).unwrap();
    assert_eq!(q.already_queued("a", 1, 1), 1);
}

#[test]
fn a_damaged_marks_file_falls_back_to_the_queued_entries() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = ByteQueue::open(d.path(), cfg(1 << 20, 300)).unwrap();
    q.push_from(from("a", 1, 5), &[entry(1)]).unwrap();
    q.push_from(from("b", 1, 5), &[entry(2)]).unwrap();
    q.ack(1).unwrap();
    drop(q);
    std::fs::write(d.path().join("producers.marks"), b"damaged").unwrap();
    let (q, rec) = ByteQueue::open(d.path(), cfg(1 << 20, 300)).unwrap();
    assert!(rec.marks_rebuilt && !rec.is_clean());
    assert_eq!(q.already_queued("a", 1, 1), 0, "its entry is gone");
    assert_eq!(q.already_queued("b", 1, 1), 5, "its entry is queued");
}

#[test]
fn limits_are_typed_errors() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = ByteQueue::open(d.path(), cfg(1 << 20, 300)).unwrap();
    let key = "k".repeat(256);
    assert!(matches!(
        q.push_from(from(&key, 1, 1), &[entry(1)]),
        Err(QueueError::ProducerKey { len: 256, max: 255 })
    ));
    assert!(matches!(
        q.push(&[Entry::new(vec![0u8; 4097])]),
        Err(QueueError::Spool(SpoolError::RecordTooLarge { .. }))
    ));
    // The largest entry fits with the largest envelope.
    let key = "k".repeat(255);
    q.push_from(
        from(&key, u128::MAX, u64::MAX),
        &[Entry::new(vec![0u8; 4096])],
    )
    .unwrap();
    assert!(matches!(
        ByteQueue::open(d.path(), cfg(1 << 20, 300)),
        Err(QueueError::Spool(SpoolError::Locked(_)))
    ));
}

#[test]
fn the_typed_queue_reads_values_back_and_reports_undecodable_ones() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut q, _) = ByteQueue::open(d.path(), cfg(1 << 20, 300)).unwrap();
        q.push(&[Entry::new(&[0xff_u8][..])]).unwrap(); // not a String
    }
    let (mut q, _) = DurableQueue::<String>::open(d.path(), cfg(1 << 20, 300)).unwrap();
    q.push(&["one".to_string(), "two".to_string()]).unwrap();
    assert!(matches!(
        q.read_next(),
        Err(QueueError::Decode { position: 1, .. })
    ));
    assert_eq!(q.read_next().unwrap(), Some((2, "one".to_string())));
    assert_eq!(q.read_next().unwrap(), Some((3, "two".to_string())));
    assert_eq!(q.read_next().unwrap(), None);
    assert_eq!(q.stats().entries, 3);
}

/// One step of the model-based test.
#[derive(Debug, Clone)]
enum Op {
    /// Push `n` entries, tagged with producer `p` (of 2) at `seq` if set.
    Push {
        n: u8,
        tag: Option<(u8, u8)>,
    },
    Read(u8),
    Ack(u8),
    Rewind,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..5, proptest::option::of((0u8..2, 0u8..30)))
            .prop_map(|(n, tag)| Op::Push { n, tag }),
        3 => (1u8..8).prop_map(Op::Read),
        2 => (0u8..6).prop_map(Op::Ack),
        1 => Just(Op::Rewind),
        1 => Just(Op::Reopen),
    ]
}

/// The in-memory queue the real one must behave like.
#[derive(Debug, Default)]
struct Model {
    /// (position, weight, bytes), oldest first.
    entries: VecDeque<(u64, u64, Vec<u8>)>,
    next_position: u64,
    acked: u64,
    /// Next position to read.
    read: u64,
    marks: HashMap<String, u64>,
}

impl Model {
    fn push(&mut self, n: u64, dropped: u64) {
        for _ in 0..dropped {
            let (pos, ..) = self
                .entries
                .pop_front()
                .expect("model holds what was dropped");
            self.read = self.read.max(pos + 1);
        }
        for _ in 0..n {
            let e = entry(self.next_position);
            self.entries
                .push_back((self.next_position, e.weight, e.bytes));
            self.next_position += 1;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// The queue against the model: reads return exactly the model's
    /// entries in order, the cap drops only the oldest (as reported),
    /// acknowledgement removes a prefix, producer pushes are ignored
    /// exactly when the model's mark covers them, and reopening (after a
    /// checkpoint) changes nothing.
    #[test]
    fn behaves_like_the_model(ops in proptest::collection::vec(op(), 1..50)) {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(6 * 1024, 1024);
        let (mut q, _) = ByteQueue::open(d.path(), c.clone()).unwrap();
        let mut m = Model { next_position: 1, read: 1, ..Model::default() };
        for op in ops {
            match op {
                Op::Push { n, tag } => {
                    let entries: Vec<_> = (0..u64::from(n)).map(|i| entry(m.next_position + i)).collect();
                    let pushed = match tag {
                        None => q.push(&entries).unwrap(),
                        Some((p, seq)) => {
                            let key = format!("p{p}");
                            let pushed = q.push_from(from(&key, 1, u64::from(seq)), &entries).unwrap();
                            let covered = m.marks.get(&key).is_some_and(|&s| s >= u64::from(seq));
                            prop_assert_eq!(pushed == Pushed::AlreadyQueued, covered);
                            if !covered {
                                m.marks.insert(key, u64::from(seq));
                            }
                            pushed
                        }
                    };
                    match pushed {
                        Pushed::Queued { first, last, dropped } => {
                            prop_assert_eq!(first, m.next_position);
                            prop_assert_eq!(last + 1 - first, u64::from(n));
                            let expected_weight: u64 = m.entries.iter().take(dropped.entries as usize).map(|e| e.1).sum();
                            prop_assert_eq!(dropped.weight, expected_weight);
                            m.push(u64::from(n), dropped.entries);
                        }
                        Pushed::AlreadyQueued => {}
                    }
                }
                Op::Read(k) => {
                    for _ in 0..k {
                        let got = q.peek().unwrap().map(|e| (e.position, e.weight, e.bytes.to_vec()));
                        let want = m.entries.iter().find(|e| e.0 >= m.read).cloned();
                        prop_assert_eq!(&got, &want);
                        if let Some((pos, ..)) = got {
                            q.advance();
                            m.read = pos + 1;
                        }
                    }
                }
                Op::Ack(k) => {
                    let to = (m.acked + u64::from(k)).min(m.next_position - 1);
                    q.ack(to).unwrap();
                    m.acked = m.acked.max(to);
                    m.entries.retain(|e| e.0 > m.acked);
                    m.read = m.read.max(m.acked + 1);
                }
                Op::Rewind => {
                    q.rewind();
                    m.read = m.acked + 1;
                }
                Op::Reopen => {
                    q.checkpoint().unwrap();
                    drop(q);
                    let (q2, rec) = ByteQueue::open(d.path(), c.clone()).unwrap();
                    prop_assert!(rec.is_clean(), "{:?}", rec);
                    q = q2;
                    m.read = m.acked + 1;
                }
            }
            let st = q.stats();
            prop_assert_eq!(st.entries, m.entries.len() as u64);
            prop_assert_eq!(st.weight, m.entries.iter().map(|e| e.1).sum::<u64>());
            prop_assert!(st.bytes <= c.max_bytes);
            for (key, &seq) in &m.marks {
                prop_assert_eq!(q.mark(key), Some(ProducerMark { stream_id: 1, seq }));
            }
        }
    }
}
