//! Group commit: many submitters, few fsyncs, and nobody told "durable"
//! before an fsync covered their records.

use std::sync::{mpsc, Arc};

use super::super::{tests::test_cfg, ReadBuf, ReadOutcome};
use super::*;

/// What happened, in order, as seen by the hook and the callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A round finished: the spool's last sequence, and whether anything
    /// appended was still unsynced.
    Round { last_seq: u64, unsynced: bool },
    /// A submitter was told its batch ends at `last_seq`.
    Done { last_seq: u64 },
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn shared(fsync: FsyncPolicy) -> (tempfile::TempDir, SharedSpool) {
    let d = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(d.path(), test_cfg(fsync)).unwrap();
    (d, SharedSpool::new(spool))
}

/// A batch of `n` records `"<tag>-<i>"`, logging its outcome.
fn submission(tag: &str, n: usize, log: &Log) -> Submission {
    let mut data = Vec::new();
    let mut ends = Vec::new();
    for i in 0..n {
        data.extend_from_slice(format!("{tag}-{i}").as_bytes());
        ends.push(data.len());
    }
    let log = log.clone();
    Submission::new(
        data,
        ends,
        Box::new(move |r| {
            let a = r.unwrap();
            log.lock().unwrap().push(Seen::Done {
                last_seq: a.last_seq,
            });
        }),
    )
}

fn commit_logging(s: &SharedSpool, log: &Log) {
    s.commit(|spool, _| {
        log.lock().unwrap().push(Seen::Round {
            last_seq: spool.last_seq(),
            unsynced: spool.needs_sync(),
        });
    });
}

/// Every callback came after a round that had synced its records.
fn assert_told_only_when_durable(log: &[Seen]) {
    let mut durable_upto = 0;
    for e in log {
        match *e {
            Seen::Round { last_seq, unsynced } => {
                assert!(!unsynced, "a round ended with unsynced records: {log:?}");
                durable_upto = last_seq;
            }
            Seen::Done { last_seq } => {
                assert!(last_seq <= durable_upto, "told before durable: {log:?}")
            }
        }
    }
}

fn read_back(s: &SharedSpool) -> Vec<Vec<u8>> {
    let mut spool = s.lock();
    let mut cur = spool.cursor(1);
    let mut buf = ReadBuf::new();
    let mut out = Vec::new();
    while let ReadOutcome::Records { .. } = spool.read(&mut cur, 1000, 1 << 20, &mut buf).unwrap() {
        out.extend(buf.iter().map(<[u8]>::to_vec));
    }
    out
}

#[test]
fn batches_queued_together_share_one_fsync_and_keep_their_order() {
    let (_d, s) = shared(FsyncPolicy::EveryBatch);
    let log = Log::default();
    let before = s.lock().stats().syncs;
    assert!(
        s.submit(submission("a", 2, &log)),
        "the first submitter commits"
    );
    for tag in ["b", "c", "d", "e", "f", "g", "h"] {
        assert!(!s.submit(submission(tag, 1, &log)), "a committer is due");
    }
    commit_logging(&s, &log);
    assert_eq!(
        s.lock().stats().syncs,
        before + 1,
        "eight batches, one fsync"
    );
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 9);
    assert_told_only_when_durable(&log);
    let back = read_back(&s);
    let expected: Vec<&[u8]> = vec![
        b"a-0", b"a-1", b"b-0", b"c-0", b"d-0", b"e-0", b"f-0", b"g-0", b"h-0",
    ];
    assert_eq!(back, expected);
    assert!(
        s.submit(submission("i", 1, &Log::default())),
        "the committer finished"
    );
}

#[test]
fn concurrent_submitters_are_told_only_after_an_fsync_covering_them() {
    let (_d, s) = shared(FsyncPolicy::EveryBatch);
    let s = Arc::new(s);
    let log = Log::default();
    let before = s.lock().stats().syncs;
    let (threads, per_thread) = (8, 50);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (s, log) = (s.clone(), log.clone());
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    // Each thread waits for its batch like `send` does.
                    let (tx, rx) = mpsc::channel();
                    let log2 = log.clone();
                    let data = format!("{t}-{i}").into_bytes();
                    let ends = vec![data.len()];
                    let sub = Submission::new(
                        data,
                        ends,
                        Box::new(move |r| {
                            let a = r.unwrap();
                            log2.lock().unwrap().push(Seen::Done {
                                last_seq: a.last_seq,
                            });
                            tx.send(a.last_seq).unwrap();
                        }),
                    );
                    if s.submit(sub) {
                        let (s, log) = (s.clone(), log.clone());
                        std::thread::spawn(move || commit_logging(&s, &log));
                    }
                    rx.recv().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let total = threads * per_thread;
    let syncs = s.lock().stats().syncs - before;
    assert!((1..=total as u64).contains(&syncs), "{syncs} fsyncs");
    assert_told_only_when_durable(&log.lock().unwrap());
    let mut back = read_back(&s);
    assert_eq!(back.len(), total);
    // Each thread's records are in its own order.
    back.retain(|r| r.starts_with(b"3-"));
    let want: Vec<Vec<u8>> = (0..per_thread)
        .map(|i| format!("3-{i}").into_bytes())
        .collect();
    assert_eq!(back, want);
}

#[test]
fn without_every_batch_a_round_writes_and_does_not_sync() {
    let (_d, s) = shared(FsyncPolicy::Never);
    let log = Log::default();
    let before = s.lock().stats().syncs;
    assert!(s.submit(submission("a", 3, &log)));
    let mut rounds = Vec::new();
    s.commit(|spool, round| rounds.push((round, spool.needs_sync())));
    assert_eq!(
        rounds,
        [(
            Round {
                batches: 1,
                records: 3
            },
            true
        )]
    );
    assert_eq!(s.lock().stats().syncs, before);
    assert_eq!(*log.lock().unwrap(), [Seen::Done { last_seq: 3 }]);
}

#[test]
fn a_refused_batch_fails_alone() {
    let (_d, s) = shared(FsyncPolicy::EveryBatch);
    let (tx, rx) = mpsc::channel();
    let too_big = vec![0u8; 5000];
    let ends = vec![too_big.len()];
    let tx2 = tx.clone();
    assert!(s.submit(Submission::new(
        too_big,
        ends,
        Box::new(move |r| tx2.send(r.map(|a| a.last_seq)).unwrap())
    )));
    assert!(!s.submit(Submission::new(
        b"ok".to_vec(),
        vec![2],
        Box::new(move |r| tx.send(r.map(|a| a.last_seq)).unwrap())
    )));
    s.commit(|_, _| {});
    assert!(matches!(
        rx.recv().unwrap(),
        Err(SpoolError::RecordTooLarge { size: 5000, .. })
    ));
    assert_eq!(rx.recv().unwrap().unwrap(), 1);
}

#[test]
fn an_abandoned_queue_fails_its_batches_and_frees_the_next_committer() {
    let (_d, s) = shared(FsyncPolicy::EveryBatch);
    let (tx, rx) = mpsc::channel();
    assert!(s.submit(Submission::new(
        b"x".to_vec(),
        vec![1],
        Box::new(move |r| tx.send(r.is_err()).unwrap())
    )));
    s.abandon();
    assert!(rx.recv().unwrap(), "told it failed");
    assert_eq!(s.lock().last_seq(), 0, "nothing written");
    assert!(s.submit(submission("y", 1, &Log::default())));
}

#[test]
fn a_panicking_hook_does_not_strand_the_queue() {
    let (_d, s) = shared(FsyncPolicy::Never);
    let s = Arc::new(s);
    assert!(s.submit(submission("a", 1, &Log::default())));
    let (tx, rx) = mpsc::channel();
    let s2 = s.clone();
    let committer = std::thread::spawn(move || {
        s2.commit(|_, _| {
            // A batch queued while the round runs, then the hook fails.
            let tx = tx.clone();
            let _ = s2.submit(Submission::new(
                b"b".to_vec(),
                vec![1],
                Box::new(move |r| tx.send(r.is_err()).unwrap()),
            ));
            panic!("hook failed");
        })
    });
    assert!(committer.join().is_err());
    assert!(
        rx.recv().unwrap(),
        "the queued batch was failed, not stranded"
    );
    assert!(s.submit(submission("c", 1, &Log::default())));
}
