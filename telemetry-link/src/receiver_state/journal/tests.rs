use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::receiver_state::{legacy, StateDamage};

fn options(compact_bytes: u64) -> (JournalOptions, IntCounter) {
    let syncs = IntCounter::new("syncs", "syncs").unwrap();
    (
        JournalOptions {
            compact_bytes,
            syncs: syncs.clone(),
        },
        syncs,
    )
}

fn reopen(dir: &Path) -> (StateStore, Journal, Recovery) {
    open(dir, options(DEFAULT_COMPACT_BYTES).0).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_commit_is_one_write_and_one_sync_for_every_stream() {
    let d = tempfile::tempdir().unwrap();
    let (opts, syncs) = options(DEFAULT_COMPACT_BYTES);
    let (store, mut j, rep) = open(d.path(), opts).unwrap();
    assert_eq!(rep, Recovery::default());
    let before = syncs.get();
    let entries: Vec<_> = (0..500)
        .map(|i| {
            (
                StreamKey::new(&format!("s{i}"), ""),
                StreamCursor::new(i, 7),
            )
        })
        .collect();
    j.commit(&entries).unwrap();
    assert_eq!(syncs.get() - before, 1);
    assert_eq!(store.load(&entries[42].0).unwrap(), Some(entries[42].1));
    drop((store, j));
    let (store, _, rep) = reopen(d.path());
    assert_eq!(
        (rep.streams, rep.journal_records, rep.torn_bytes),
        (500, 500, 0)
    );
    assert_eq!(store.positions().len(), 500);
    assert_eq!(names(d.path()), [JOURNAL_FILE, SNAPSHOT_FILE]);
}

#[test]
fn files_are_private_from_their_creation() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("a/b");
    let (store, mut j, _) = reopen(&dir);
    j.commit(&[(StreamKey::new("x", ""), StreamCursor::new(1, 1))])
        .unwrap();
    store.check_writable().unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.path().join("a")), 0o700);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(JOURNAL_FILE)), 0o600);
    assert_eq!(mode(&dir.join(SNAPSHOT_FILE)), 0o600);
}

#[test]
fn compaction_keeps_every_position_and_bounds_the_journal() {
    let d = tempfile::tempdir().unwrap();
    let (opts, _) = options(2048);
    let (_, mut j, _) = open(d.path(), opts).unwrap();
    let keys: Vec<_> = (0..10)
        .map(|i| StreamKey::new("c", &format!("r{i}")))
        .collect();
    for seq in 1..=300u64 {
        let k = &keys[(seq % 10) as usize];
        j.commit(&[(k.clone(), StreamCursor::new(5, seq))]).unwrap();
        j.compact_if_due().unwrap();
        let len = fs::metadata(d.path().join(JOURNAL_FILE)).unwrap().len();
        assert!(len <= 2048 + 64, "journal of {len} bytes");
    }
    assert!(j.generation > 3, "compacted {} times", j.generation);
    drop(j);
    let (store, _, _) = reopen(d.path());
    for (i, k) in keys.iter().enumerate() {
        let want = 300 - ((10 - i as u64) % 10);
        assert_eq!(
            store.load(k).unwrap(),
            Some(StreamCursor::new(5, want)),
            "{k}"
        );
    }
}

/// The states a crash at each compaction step leaves are rebuilt here
/// from the files of before and after, and recover every position.
#[test]
fn a_compaction_interrupted_at_any_step_recovers_everything() {
    let d = tempfile::tempdir().unwrap();
    let (_, mut j, _) = reopen(d.path());
    let a = StreamKey::new("a", "");
    j.commit(&[(a.clone(), StreamCursor::new(1, 10))]).unwrap();
    let old_snapshot = fs::read(d.path().join(SNAPSHOT_FILE)).unwrap();
    let old_journal = fs::read(d.path().join(JOURNAL_FILE)).unwrap();
    j.compact().unwrap();
    j.commit(&[(a.clone(), StreamCursor::new(1, 11))]).unwrap();
    let new_snapshot = fs::read(d.path().join(SNAPSHOT_FILE)).unwrap();
    let new_journal = fs::read(d.path().join(JOURNAL_FILE)).unwrap();
    drop(j);
    type Step<'a> = (
        &'a str,
        &'a [u8],
        &'a [u8],
        Option<(&'a str, &'a [u8])>,
        u64,
    );
    let steps: [Step; 4] = [
        (
            "snapshot written",
            &old_snapshot,
            &old_journal,
            Some(("positions.snapshot.tmp", &new_snapshot)),
            10,
        ),
        ("snapshot renamed", &new_snapshot, &old_journal, None, 10),
        (
            "journal written",
            &new_snapshot,
            &old_journal,
            Some(("positions.journal.tmp", &new_journal)),
            10,
        ),
        ("journal renamed", &new_snapshot, &new_journal, None, 11),
    ];
    for (what, snapshot, journal, tmp, want) in steps {
        let e = tempfile::tempdir().unwrap();
        fs::write(e.path().join(SNAPSHOT_FILE), snapshot).unwrap();
        fs::write(e.path().join(JOURNAL_FILE), journal).unwrap();
        if let Some((name, bytes)) = tmp {
            fs::write(e.path().join(name), bytes).unwrap();
        }
        let (store, _, _) = reopen(e.path());
        assert_eq!(
            store.load(&a).unwrap(),
            Some(StreamCursor::new(1, want)),
            "{what}"
        );
        assert_eq!(names(e.path()), [JOURNAL_FILE, SNAPSHOT_FILE], "{what}");
    }
}

#[test]
fn a_torn_append_is_dropped_and_the_journal_starts_clean() {
    let d = tempfile::tempdir().unwrap();
    let (_, mut j, _) = reopen(d.path());
    let a = StreamKey::new("a", "");
    j.commit(&[(a.clone(), StreamCursor::new(1, 10))]).unwrap();
    drop(j);
    let mut torn = Vec::new();
    format::encode_record(&a, &StreamCursor::new(1, 11), &mut torn);
    let path = d.path().join(JOURNAL_FILE);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&torn[..torn.len() - 1]).unwrap();
    drop(f);
    let (store, mut j, rep) = reopen(d.path());
    assert_eq!(rep.torn_bytes, torn.len() as u64 - 1);
    assert_eq!(store.load(&a).unwrap(), Some(StreamCursor::new(1, 10)));
    j.commit(&[(a.clone(), StreamCursor::new(1, 12))]).unwrap();
    drop(j);
    let (store, _, rep) = reopen(d.path());
    assert_eq!((rep.torn_bytes, rep.journal_records), (0, 1));
    assert_eq!(store.load(&a).unwrap(), Some(StreamCursor::new(1, 12)));
}

#[test]
fn older_per_stream_files_are_folded_in_once_and_damaged_ones_refused() {
    let d = tempfile::tempdir().unwrap();
    let a = StreamKey::new("a", "");
    let r1 = StreamKey::new("a", "r1");
    let c = StreamKey::new("c", "");
    legacy::tests::write(d.path(), &a, StreamCursor::new(1, 40));
    legacy::tests::write(d.path(), &r1, StreamCursor::new(2, 20));
    let damaged = legacy::tests::write(d.path(), &c, StreamCursor::new(3, 30));
    let mut bytes = fs::read(&damaged).unwrap();
    bytes[2] ^= 1;
    fs::write(&damaged, bytes).unwrap();
    fs::write(d.path().join("reset.key"), [0u8; 32]).unwrap();

    let (store, mut j, rep) = reopen(d.path());
    assert_eq!((rep.migrated, rep.damaged, rep.streams), (2, 1, 2));
    assert_eq!(store.load(&a).unwrap(), Some(StreamCursor::new(1, 40)));
    assert_eq!(store.load(&r1).unwrap(), Some(StreamCursor::new(2, 20)));
    assert!(matches!(
        store.load(&c),
        Err(StateError::Corrupt {
            damage: StateDamage::StreamFile,
            ..
        })
    ));
    assert_eq!(
        names(d.path()),
        [JOURNAL_FILE, SNAPSHOT_FILE, "reset.key", "sender-c.state"]
    );
    j.commit(&[(a.clone(), StreamCursor::new(1, 41))]).unwrap();
    drop(j);
    // Once moved aside, the damaged stream starts afresh.
    fs::rename(&damaged, d.path().join("moved-aside")).unwrap();
    assert_eq!(store.load(&c).unwrap(), None);
    let (store, _, rep) = reopen(d.path());
    assert_eq!((rep.migrated, rep.damaged), (0, 0));
    assert_eq!(store.load(&a).unwrap(), Some(StreamCursor::new(1, 41)));
    assert_eq!(store.load(&r1).unwrap(), Some(StreamCursor::new(2, 20)));
}

#[test]
fn a_damaged_snapshot_or_a_missing_one_stops_the_open() {
    let d = tempfile::tempdir().unwrap();
    let (_, mut j, _) = reopen(d.path());
    j.commit(&[(StreamKey::new("a", ""), StreamCursor::new(1, 1))])
        .unwrap();
    j.compact().unwrap();
    drop(j);
    let snapshot = d.path().join(SNAPSHOT_FILE);
    let good = fs::read(&snapshot).unwrap();
    let mut bad = good.clone();
    bad[25] ^= 1;
    fs::write(&snapshot, &bad).unwrap();
    let err = open(d.path(), options(DEFAULT_COMPACT_BYTES).0).unwrap_err();
    assert!(
        matches!(&err, StateError::Corrupt { path, damage: StateDamage::Snapshot } if *path == snapshot),
        "{err}"
    );
    fs::remove_file(&snapshot).unwrap();
    let err = open(d.path(), options(DEFAULT_COMPACT_BYTES).0).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Corrupt {
                damage: StateDamage::MissingSnapshot { .. },
                ..
            }
        ),
        "{err}"
    );
    fs::write(&snapshot, &good).unwrap();
    let (store, _, _) = reopen(d.path());
    for bad in [StreamKey::new("../etc", ""), StreamKey::new("a", "../b")] {
        assert!(matches!(store.load(&bad), Err(StateError::Identity(_))));
    }
}
