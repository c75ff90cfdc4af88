//! Regression inputs for bugs the fuzzers found, replayed with every check
//! on (including those for open bugs). Each input under
//! `fuzz/regressions/<target>/` fails (panic, or a hang reported after a
//! timeout) until its bug is fixed in telemetry-link; `fuzz/README.md`
//! ("Findings") describes each one. The `minimal_*` tests are the same bugs
//! reduced to a few direct API calls.
//!
//! ```sh
//! cargo test --manifest-path fuzz/Cargo.toml --test regressions
//! ```

use std::{path::Path, sync::mpsc, thread, time::Duration};

use telemetry_link::{
    internals::{ReadBuf, ReadOutcome, Spool},
    FsyncPolicy, SpoolConfig,
};
use telemetry_link_fuzz::{batch, frame, spool};

/// Runs `f` on a thread; fails if it panics or runs longer than `limit`
/// (a hang: the spinning thread is abandoned, the test process ends it).
fn within(limit: Duration, what: &str, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r.map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        }));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(msg)) => Err(format!("{what}: panicked: {msg}")),
        Err(_) => Err(format!("{what}: still running after {limit:?} (hang)")),
    }
}

fn replay(target: &str, run: fn(&[u8], bool)) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut failures = Vec::new();
    let mut paths: Vec<_> = entries.map(|e| e.expect("entry").path()).collect();
    paths.sort();
    for p in paths {
        if p.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let data = std::fs::read(&p).expect("read regression input");
        let name = format!(
            "{target}/{}",
            p.file_name().unwrap_or_default().to_string_lossy()
        );
        if let Err(e) = within(Duration::from_secs(20), &name, move || run(&data, true)) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} regression input(s) fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn frame_decoder_regressions() {
    replay("frame_decoder", frame::run_with);
}

#[test]
fn spool_reader_regressions() {
    replay("spool_reader", spool::run_with);
}

#[test]
fn batch_roundtrip_regressions() {
    replay("batch_roundtrip", |d, _| batch::run(d));
}

fn spool_cfg() -> SpoolConfig {
    SpoolConfig {
        max_bytes: 1 << 20,
        segment_bytes: None,
        fsync: FsyncPolicy::Never,
        max_record_bytes: 4096,
    }
}

/// `Spool::read` spins forever once a record does not fit the rest of the
/// byte budget while fewer than `max_records` were read.
#[test]
fn minimal_read_byte_budget_hang() {
    let r = within(Duration::from_secs(10), "Spool::read", || {
        let dir = std::env::temp_dir().join(format!("tl-fuzz-regress-hang-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut s, _) = Spool::open(&dir, spool_cfg()).expect("open");
        s.append(&[b"record-000", b"record-001", b"record-002"])
            .expect("append");
        let mut cur = s.cursor(1);
        let mut buf = ReadBuf::new();
        // 10-byte records, a 16-byte budget, up to 8 records: the first
        // record is read, the second does not fit, and read() never returns.
        let got = s.read(&mut cur, 8, 16, &mut buf).expect("read");
        assert_eq!(
            got,
            ReadOutcome::Records {
                first_seq: 1,
                count: 1
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// `Spool::read` with a byte budget near `usize::MAX` overflows computing
/// its read size (a panic with overflow checks; in release the size wraps
/// to 15 bytes) and then cuts the valid record there as corrupt.
#[test]
fn minimal_read_unbounded_budget_cuts_valid_record() {
    let r = within(Duration::from_secs(10), "Spool::read", || {
        let dir = std::env::temp_dir().join(format!("tl-fuzz-regress-max-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut s, _) = Spool::open(&dir, spool_cfg()).expect("open");
        s.append(&[b"abc"]).expect("append");
        let mut cur = s.cursor(1);
        let mut buf = ReadBuf::new();
        let got = s.read(&mut cur, 8, usize::MAX, &mut buf).expect("read");
        let dropped = s.stats().dropped_total;
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            got,
            ReadOutcome::Records {
                first_seq: 1,
                count: 1
            }
        );
        assert_eq!(dropped, 0, "a valid record was cut as corrupt");
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// `Spool::open`: a few bytes of garbage in front of a segment's first record, followed by
/// that record intact. The scan cuts the garbage out and resynchronises on
/// the record with the segment's own base sequence, so the second piece gets
/// the segment's own file name: it replaces the original file, and then the
/// first (empty) piece's "cut down to its valid end" truncates that same
/// file to its header. The records are gone from disk while the spool still
/// counts them.
#[test]
fn minimal_open_resync_on_base_sequence_truncates_recovered_records() {
    let r = within(Duration::from_secs(10), "Spool::open", || {
        let dir =
            std::env::temp_dir().join(format!("tl-fuzz-regress-resync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let (mut s, _) = Spool::open(&dir, spool_cfg()).expect("open");
            s.append(&[b"record-1", b"record-2", b"record-3"])
                .expect("append");
        }
        let seg = dir.join("00000000000000000001.seg");
        let mut bytes = std::fs::read(&seg).expect("read segment");
        // Four stray bytes between the header and record 1: read as a record
        // length they exceed max_record_bytes, so the scan resynchronises.
        bytes.splice(36..36, [0xff; 4]);
        std::fs::write(&seg, &bytes).expect("write segment");

        let (mut s, rep) = Spool::open(&dir, spool_cfg()).expect("reopen");
        let on_disk = std::fs::metadata(&seg).expect("segment").len();
        let stats = s.stats();
        let mut cur = s.cursor(1);
        let mut buf = ReadBuf::new();
        let got = s.read(&mut cur, 8, 1 << 20, &mut buf);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(rep.records, 3, "{rep:?}");
        assert_eq!(
            on_disk, stats.bytes,
            "segment file holds {on_disk} bytes, the spool counts {}",
            stats.bytes
        );
        assert_eq!(
            got.expect("read"),
            ReadOutcome::Records {
                first_seq: 1,
                count: 3
            }
        );
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// `SeriesKey::decode` accepts non-canonical encodings (trailing bytes,
/// over-long varints) and keeps them as the key's `encoded()` bytes, so one
/// series gets several keys that compare unequal. A sender can define the
/// same series twice in one connection; the receiver's store (keyed by
/// `encoded()`) then holds it twice.
#[test]
fn minimal_series_key_decode_accepts_non_canonical_spellings() {
    use telemetry_link::SeriesKey;
    let canonical = SeriesKey::decode(&[1, b'm', 0]).expect("canonical");
    for spelling in [&[1, b'm', 0, 0xff][..], &[0x81, 0x00, b'm', 0x00][..]] {
        if let Ok(k) = SeriesKey::decode(spelling) {
            assert_eq!(
                k, canonical,
                "{spelling:?} decodes to {k:?} but differs from the canonical key (encoded {:?} vs {:?})",
                k.encoded(),
                canonical.encoded()
            );
        }
    }
}

/// `Spool::append` when the next sequence is `u64::MAX` (a CRC-valid segment
/// header or meta floor says so, or `advance_next_seq(u64::MAX)`): `seq += 1`
/// overflows (a panic with overflow checks); in release the sequence wraps
/// and the following append is numbered from 0.
#[test]
fn minimal_append_at_the_end_of_the_sequence_space() {
    let r = within(Duration::from_secs(10), "Spool::append", || {
        let dir =
            std::env::temp_dir().join(format!("tl-fuzz-regress-seqmax-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut s, _) = Spool::open(&dir, spool_cfg()).expect("open");
        // Refusing to go there at all is a correct answer too.
        if s.advance_next_seq(u64::MAX).is_ok() {
            let a = s.append(&[b"x"]);
            let b = s.append(&[b"y"]);
            if let Ok(a) = a {
                assert_eq!(a.first_seq, u64::MAX);
            }
            assert!(b.is_err(), "an append past u64::MAX succeeded: {b:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// `Spool::open` orders segments by file name but drops a segment whose
/// header base is at or below the previous segment's last sequence as a
/// "leftover copy". A segment file named after another sequence than its
/// header's base is therefore deleted — by this recovery or, when this
/// recovery first cut a piece out of it and wrote that piece under the
/// piece's own lower name, by the next one — and its unacknowledged records
/// vanish without a lost range or any mention in the report.
#[test]
fn minimal_misnamed_segment_records_vanish_silently() {
    let r = within(Duration::from_secs(10), "Spool::open", || {
        let dir =
            std::env::temp_dir().join(format!("tl-fuzz-regress-misnamed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = SpoolConfig {
            segment_bytes: Some(64),
            ..spool_cfg()
        };
        {
            let (mut s, _) = Spool::open(&dir, cfg.clone()).expect("open");
            s.append(&[b"one"]).expect("append");
            s.append(&[b"two"]).expect("append"); // rolls: segment 2
        }
        std::fs::rename(
            dir.join("00000000000000000001.seg"),
            dir.join("00000000000000000009.seg"),
        )
        .expect("rename");
        let (s, rep) = Spool::open(&dir, cfg).expect("recovery");
        let records = s.stats().records;
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            records == 2 || rep.lost_ranges.contains(&(1, 1)),
            "record 1 vanished silently: {records} records, {rep:?}"
        );
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// A segment between two others whose header is damaged is quarantined by
/// `Spool::open`, but its unacknowledged records are not recorded as
/// dropped: `read` reports the hole as `Gap { lost: 0 }`, `dropped_total`
/// stays 0 and `lost_ranges` is empty, so the sender's `Skip.lost` tells the
/// receiver they were acknowledged elsewhere rather than lost to corruption
/// (PROTOCOL.md: `lost` counts records dropped "spool full or corrupt").
/// Found by reading recovery while writing the harness, confirmed here.
#[test]
fn minimal_quarantined_segment_records_are_not_counted_lost() {
    let r = within(Duration::from_secs(10), "Spool::open", || {
        let dir =
            std::env::temp_dir().join(format!("tl-fuzz-regress-quarantine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = SpoolConfig {
            segment_bytes: Some(64),
            ..spool_cfg()
        };
        {
            let (mut s, _) = Spool::open(&dir, cfg.clone()).expect("open");
            for p in [b"one", b"two", b"thr"] {
                s.append(&[p]).expect("append"); // one record per segment
            }
        }
        let seg = dir.join("00000000000000000002.seg");
        let mut bytes = std::fs::read(&seg).expect("read");
        bytes[3] ^= 1; // damage the magic
        std::fs::write(&seg, &bytes).expect("write");
        let (mut s, rep) = Spool::open(&dir, cfg).expect("recovery");
        let mut cur = s.cursor(2);
        let mut buf = ReadBuf::new();
        let got = s.read(&mut cur, 10, 1000, &mut buf).expect("read");
        let dropped = s.stats().dropped_total;
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(rep.quarantined.len(), 1);
        assert_eq!(
            got,
            ReadOutcome::Gap {
                from: 2,
                to: 2,
                lost: 1
            },
            "{rep:?}, dropped_total {dropped}"
        );
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// `BatchDecoder`: an integer delta that lands exactly on `i64::MIN`
/// (previous value −2^53, delta `i64::MIN + 2^53`) passes `checked_add`,
/// then `cur.abs()` overflows: a panic with overflow checks (a peer can kill
/// the receiver's connection task); in release `abs` wraps to `i64::MIN`,
/// the `> EXACT_LIMIT` test passes, and −2^63 is accepted through the
/// integer-delta path that PROTOCOL.md limits to |v| ≤ 2^53.
#[test]
fn minimal_batch_delta_to_i64_min() {
    use telemetry_link::proto::batch::BatchDecoder;
    let r = within(Duration::from_secs(10), "BatchDecoder::decode", || {
        let mut body = vec![0xb0, 3, 1, b'm', 0];
        body.extend_from_slice(&(-9_007_199_254_740_992.0f64).to_le_bytes());
        let d: i64 = i64::MIN + (1 << 53);
        let mut z = ((d << 1) ^ (d >> 63)) as u64;
        body.extend_from_slice(&[0x68, 0]); // sample of id 0, same timestamp, integer delta
        while z >= 0x80 {
            body.push((z as u8) | 0x80);
            z >>= 7;
        }
        body.push(z as u8);
        let mut out = Vec::new();
        let res = BatchDecoder::new(4).decode(&body, 2, &mut out);
        assert!(res.is_err(), "accepted {out:?}");
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}
