//! Unit tests of the recovery steps, each on a directory built by hand.

use super::super::format::encode_record;
use super::*;

fn segment_bytes(stream_id: u128, base: u64, n: u64) -> Vec<u8> {
    let mut b = SegmentHeader {
        stream_id,
        base_seq: base,
    }
    .encode()
    .to_vec();
    for seq in base..base + n {
        encode_record(seq, format!("r{seq}").as_bytes(), &mut b);
    }
    b
}

fn seg(base: u64, last: u64) -> Segment {
    Segment {
        base,
        last,
        bytes: 0,
        path: PathBuf::new(),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn the_directory_is_locked_for_one_process() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("new");
    let lock = lock_dir(&dir).unwrap();
    assert!(dir.join(LOCK_FILE).exists(), "the directory is created");
    assert!(matches!(lock_dir(&dir), Err(SpoolError::Locked(p)) if p == dir));
    drop(lock);
    lock_dir(&dir).unwrap();
}

#[test]
fn listing_finds_segments_by_name_and_removes_temp_files() {
    let d = tempfile::tempdir().unwrap();
    for name in [
        "00000000000000000020.seg",
        "7.seg",
        "00000000000000000001.seg.tmp",
        "spool.meta.tmp",
        "00000000000000000003.seg.corrupt",
        "junk.seg",
        "spool.meta",
    ] {
        fs::write(d.path().join(name), b"x").unwrap();
    }
    let found: Vec<u64> = list_segments(d.path())
        .unwrap()
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    assert_eq!(found, vec![7, 20]);
    assert_eq!(
        names(d.path()),
        vec![
            "00000000000000000003.seg.corrupt",
            "00000000000000000020.seg",
            "7.seg",
            "junk.seg",
            "spool.meta"
        ]
    );
}

#[test]
fn headers_order_segments_and_unusable_ones_are_quarantined() {
    let d = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let p = d.path().join(name);
        fs::write(&p, bytes).unwrap();
        p
    };
    // Named out of order; the headers decide.
    let a = file("00000000000000000001.seg", &segment_bytes(9, 30, 1));
    let b = file("00000000000000000002.seg", &segment_bytes(9, 10, 1));
    let foreign = file("00000000000000000003.seg", &segment_bytes(8, 40, 1));
    let short = file("00000000000000000004.seg", b"TLSPOOL1");
    let zero = file("00000000000000000005.seg", &segment_bytes(9, 0, 0));
    let files = list_segments(d.path()).unwrap();
    let mut stream = None;
    let mut report = RecoveryReport::default();
    let (ordered, quarantined) = order_by_header(files, &mut stream, &mut report).unwrap();
    assert_eq!(stream, Some(9), "the first valid header names the stream");
    assert_eq!(ordered, vec![(10, b), (30, a)]);
    assert_eq!(
        quarantined,
        vec![
            Quarantined::Unreadable { name_base: 3 },
            Quarantined::Unreadable { name_base: 4 },
            Quarantined::Unreadable { name_base: 5 },
        ]
    );
    assert_eq!(report.quarantined.len(), 3);
    for p in [foreign, short, zero] {
        assert!(!p.exists());
        let mut moved = p.into_os_string();
        moved.push(".corrupt");
        assert!(PathBuf::from(moved).exists());
    }
}

#[test]
fn the_loader_renames_misnamed_files_and_splits_corrupt_ones() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // 1..=3 under a wrong name; 4..=8 with record 6 damaged.
    fs::write(dir.join("00000000000000000099.seg"), segment_bytes(1, 1, 3)).unwrap();
    let mut middle = segment_bytes(1, 4, 5);
    let record_len = (middle.len() - SEGMENT_HEADER_LEN) / 5;
    middle[SEGMENT_HEADER_LEN + 2 * record_len + 16] ^= 1; // record 6's payload
    fs::write(dir.join("00000000000000000004.seg"), &middle).unwrap();

    let mut report = RecoveryReport::default();
    let mut quarantined = Vec::new();
    let mut loader = SegmentLoader::new(dir, 100);
    for (base, name) in [
        (1, "00000000000000000099.seg"),
        (4, "00000000000000000004.seg"),
    ] {
        loader
            .load(base, dir.join(name), &mut report, &mut quarantined)
            .unwrap();
    }
    let index: Vec<(u64, u64)> = loader.segments.iter().map(|s| (s.base, s.last)).collect();
    assert_eq!(index, vec![(1, 3), (4, 5), (7, 8)]);
    assert_eq!(report.lost_ranges, vec![(6, 6)]);
    assert_eq!(report.corrupt_bytes, record_len as u64);
    assert!(quarantined.is_empty() && report.quarantined.is_empty());
    assert_eq!(
        names(dir),
        vec![
            "00000000000000000001.seg",
            "00000000000000000004.seg",
            "00000000000000000007.seg"
        ]
    );
    for s in &loader.segments {
        assert_eq!(fs::metadata(&s.path).unwrap().len(), s.bytes);
    }
    // The piece written during this recovery is in the index already.
    loader
        .load(
            7,
            dir.join("00000000000000000007.seg"),
            &mut report,
            &mut quarantined,
        )
        .unwrap();
    assert_eq!(loader.segments.len(), 3);
}

#[test]
fn overlapping_records_are_set_aside_with_what_they_held() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    fs::write(dir.join("00000000000000000001.seg"), segment_bytes(1, 1, 5)).unwrap();
    fs::write(dir.join("00000000000000000003.seg"), segment_bytes(1, 3, 4)).unwrap();
    let mut report = RecoveryReport::default();
    let mut quarantined = Vec::new();
    let mut loader = SegmentLoader::new(dir, 100);
    for (base, name) in [
        (1, "00000000000000000001.seg"),
        (3, "00000000000000000003.seg"),
    ] {
        loader
            .load(base, dir.join(name), &mut report, &mut quarantined)
            .unwrap();
    }
    assert_eq!(loader.segments.len(), 1);
    assert_eq!(quarantined, vec![Quarantined::Records(vec![(3, 6)])]);
    assert_eq!(report.quarantined.len(), 1);
    assert!(report.lost_ranges.is_empty());
}

#[test]
fn the_next_sequence_never_reuses_a_carried_one() {
    let segs: VecDeque<Segment> = [seg(1, 10), seg(11, 15)].into();
    assert_eq!(next_sequence(&segs, None, &[]), 16);
    assert_eq!(next_sequence(&VecDeque::new(), None, &[]), 1);
    let empty_last: VecDeque<Segment> = [seg(1, 10), seg(20, 19)].into();
    assert_eq!(next_sequence(&empty_last, None, &[]), 20);
    let q = [
        Quarantined::Records(vec![(30, 31), (40, 44)]),
        Quarantined::Unreadable { name_base: 99 },
    ];
    assert_eq!(next_sequence(&segs, None, &q), 45);
}

#[test]
fn quarantined_sequences_missing_from_the_index_are_lost() {
    let segs: VecDeque<Segment> = [seg(1, 10), seg(21, 30)].into();
    let none = RangeSet::new();
    let known = Known {
        next_seq: 31,
        acked: 0,
        meta_dropped: &none,
    };
    let mut report = RecoveryReport::default();
    account_quarantined(
        vec![
            // Unreadable, named 11: up to the next segment.
            Quarantined::Unreadable { name_base: 11 },
            // Records partly present in the index.
            Quarantined::Records(vec![(8, 12)]),
            // A name outside the sequence space says nothing.
            Quarantined::Unreadable { name_base: 0 },
        ],
        &segs,
        &known,
        &mut report,
    );
    assert_eq!(report.lost_ranges, vec![(11, 20), (11, 12)]);

    // Acknowledged, or recorded as dropped already: not lost again.
    let dropped = RangeSet::from_ranges([(11, 15)]);
    let known = Known {
        next_seq: 31,
        acked: 15,
        meta_dropped: &dropped,
    };
    let mut report = RecoveryReport::default();
    account_quarantined(
        vec![
            Quarantined::Unreadable { name_base: 11 },
            Quarantined::Records(vec![(31, 33)]),
        ],
        &segs,
        &known,
        &mut report,
    );
    assert_eq!(report.lost_ranges, vec![(16, 20), (31, 33)]);
    let known = Known {
        next_seq: 31,
        acked: 0,
        meta_dropped: &dropped,
    };
    let mut report = RecoveryReport::default();
    account_quarantined(
        vec![Quarantined::Records(vec![(11, 15)])],
        &segs,
        &known,
        &mut report,
    );
    assert!(report.lost_ranges.is_empty());
}

#[test]
fn missing_ranges_subtracts_present_ones() {
    assert_eq!(missing_ranges(1, 10, &[]), vec![(1, 10)]);
    assert_eq!(
        missing_ranges(1, 10, &[(3, 4), (8, 20)]),
        vec![(1, 2), (5, 7)]
    );
    assert_eq!(missing_ranges(5, 6, &[(1, 10)]), vec![]);
    assert_eq!(missing_ranges(5, 12, &[(1, 6)]), vec![(7, 12)]);
}

#[test]
fn acknowledged_closed_segments_are_removed_but_never_the_last() {
    let d = tempfile::tempdir().unwrap();
    let mut segs = VecDeque::new();
    for (base, last) in [(1, 5), (6, 5), (6, 9), (10, 12)] {
        let path = d.path().join(format!("{base}-{last}"));
        fs::write(&path, b"").unwrap();
        segs.push_back(Segment {
            base,
            last,
            bytes: 0,
            path,
        });
    }
    remove_acked_segments(&mut segs, 9).unwrap();
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].base, 10);
    remove_acked_segments(&mut segs, 100).unwrap();
    assert_eq!(segs.len(), 1, "the last segment stays");
    assert_eq!(names(d.path()), vec!["10-12"]);
}

#[test]
fn the_active_segment_is_reused_or_created() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let p1 = segment_path(dir, 1);
    fs::write(&p1, segment_bytes(5, 1, 3)).unwrap();
    let mut segs: VecDeque<Segment> = [Segment {
        path: p1.clone(),
        ..seg(1, 3)
    }]
    .into();
    // Appends continue right after the last record: reused.
    open_active_segment(dir, &mut segs, 4, 5, FsyncPolicy::Never).unwrap();
    assert_eq!(segs.len(), 1);
    // A sequence jump: a new segment at the next sequence.
    open_active_segment(dir, &mut segs, 10, 5, FsyncPolicy::Never).unwrap();
    assert_eq!(segs.len(), 2);
    assert_eq!(
        (segs[1].base, segs[1].bytes),
        (10, SEGMENT_HEADER_LEN as u64)
    );
    assert_eq!(
        SegmentHeader::decode(&fs::read(&segs[1].path).unwrap()),
        Ok(SegmentHeader {
            stream_id: 5,
            base_seq: 10
        })
    );
    // An empty last segment at another base is replaced.
    open_active_segment(dir, &mut segs, 12, 5, FsyncPolicy::Never).unwrap();
    assert_eq!(segs.iter().map(|s| s.base).collect::<Vec<_>>(), vec![1, 12]);
    assert!(!segment_path(dir, 10).exists());
}
