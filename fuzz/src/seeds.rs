//! Seed inputs built from valid encodings: real messages, real batch bodies
//! from `BatchEncoder`, real spool directories written by `Spool`.
//! `examples/gen_seeds.rs` writes them to `fuzz/seeds/<target>/`; the
//! property tests also run them directly.

use std::{fs, path::Path, sync::Arc};

use telemetry_link::{
    internals::Spool,
    proto::{
        batch::BatchEncoder,
        frame::encode_frame,
        message::{
            Ack, Batch, ErrorCode, Hello, Message, Refusal, Refused, Skip, Welcome,
            PROTOCOL_VERSION,
        },
        record::{encode_app_bytes, encode_record, encode_sample_parts},
    },
    FsyncPolicy, RefusedCounts, RefusedReason, Sample, SeriesKey, SpoolConfig,
};

use crate::{
    frame::{Chunking, Config},
    spool::{kind, section},
};

fn key(i: usize) -> SeriesKey {
    SeriesKey::new(
        "telemetry_synthetic_value",
        [("cluster", "c1".to_string()), ("series", i.to_string())],
    )
    .expect("valid key")
}

/// Record envelopes of every kind: application values, integer and float
/// samples, repeats, special values.
pub fn envelopes() -> Vec<Vec<u8>> {
    let mut envs = Vec::new();
    for (i, s) in ["hello", "", "a longer application record"]
        .iter()
        .enumerate()
    {
        let mut e = Vec::new();
        encode_record(&s.to_string(), &mut e).expect("encodes");
        envs.push(e);
        let mut e = Vec::new();
        encode_record(&(i as u64 * 1000), &mut e).expect("encodes");
        envs.push(e);
    }
    let specials = [
        0.0,
        -0.0,
        f64::NAN,
        f64::INFINITY,
        0.5,
        9_007_199_254_740_992.0,
    ];
    for n in 0..24u64 {
        let k = key((n % 5) as usize);
        let ts = 1_700_000_000_000 + (n / 5) as i64 * 1000;
        let v = if n % 7 == 6 {
            specials[(n / 7) as usize % specials.len()]
        } else {
            n as f64
        };
        let mut e = Vec::new();
        encode_sample_parts(ts, v, k.encoded(), &mut e);
        envs.push(e);
    }
    let mut e = Vec::new();
    encode_record(&Sample::new(Arc::new(key(9)), -5, 1.25), &mut e).expect("encodes");
    envs.push(e);
    let mut e = Vec::new();
    encode_app_bytes(&[0xff, 0x01], &mut e);
    envs.push(e);
    envs
}

/// Batch bodies of one connection: (count, body).
pub fn batch_bodies(max_series: u32, per_batch: usize) -> Vec<(u32, Vec<u8>)> {
    let envs = envelopes();
    let mut enc = BatchEncoder::new(max_series);
    envs.chunks(per_batch.max(1))
        .map(|c| {
            let mut body = Vec::new();
            for e in c {
                enc.push_record(e, &mut body).expect("valid envelope");
            }
            (c.len() as u32, body)
        })
        .collect()
}

fn frame(m: &Message<'_>, out: &mut Vec<u8>) {
    encode_frame(&m.to_vec(), usize::MAX, out).expect("fits");
}

/// A whole session, sender and receiver messages interleaved.
pub fn session_stream(max_series: u32, per_batch: usize) -> Vec<u8> {
    session_stream_for(max_series, max_series, per_batch)
}

/// A whole session of a sender that interns up to `sender_max` series with
/// a receiver that welcomes `max_series` (below it, the receiver refuses
/// the samples of the series beyond, and reports them before its acks).
pub fn session_stream_for(sender_max: u32, max_series: u32, per_batch: usize) -> Vec<u8> {
    let mut w = Vec::new();
    frame(
        &Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            stream_id: 0x1234_5678_9abc_def0_1122_3344_5566_7788,
            last_seq: 40,
            max_frame: 1 << 20,
            replica: "replica-1".into(),
        }),
        &mut w,
    );
    frame(
        &Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            applied_seq: 3,
            max_frame: 1 << 20,
            max_series,
        }),
        &mut w,
    );
    frame(
        &Message::Skip(Skip {
            from: 4,
            to: 6,
            lost: 2,
        }),
        &mut w,
    );
    let mut seq = 7;
    for (count, body) in batch_bodies(sender_max, per_batch) {
        frame(
            &Message::Batch(Batch {
                first_seq: seq,
                count,
                body: &body,
            }),
            &mut w,
        );
        seq += u64::from(count);
        if sender_max > max_series {
            let mut counts = RefusedCounts::of(RefusedReason::SeriesLimit, 1);
            counts.add(RefusedReason::Undecodable, 1);
            frame(
                &Message::Refused(Refused {
                    through_seq: seq - 1,
                    counts,
                }),
                &mut w,
            );
        }
        frame(
            &Message::Ack(Ack {
                applied_seq: seq - 1,
            }),
            &mut w,
        );
    }
    let present: Vec<String> = (0..20).map(|i| format!("present-{i}")).collect();
    let (body, _) = telemetry_link::proto::present::encode_body(&present).expect("encodes");
    let parts = telemetry_link::proto::present::split_parts(&body, 64);
    let n = parts.len();
    for (i, (count, range)) in parts.into_iter().enumerate() {
        frame(
            &Message::Present(telemetry_link::proto::message::Present {
                id: 1,
                covers_seq: seq - 1,
                part: i as u32,
                last: i + 1 == n,
                count,
                body: &body[range],
            }),
            &mut w,
        );
    }
    frame(&Message::Bye, &mut w);
    w
}

/// Seeds for `frame_decoder`: (name, bytes).
pub fn frame_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let modes = [
        Chunking::Fixed,
        Chunking::Random,
        Chunking::Bytes,
        Chunking::Whole,
        Chunking::Wanted,
        Chunking::WantedPlus,
        Chunking::Alternate,
        Chunking::Seeded,
    ];
    for (i, (max_series, per_batch)) in [(31u8, 4usize), (3, 7), (0, 5), (8, 40)]
        .into_iter()
        .enumerate()
    {
        let stream = session_stream(u32::from(max_series), per_batch);
        let mode = modes[i * 2 % modes.len()];
        let mut s = Config::bytes(13, max_series, mode, 5 + i as u8, 17).to_vec(); // max 4096
        s.extend_from_slice(&stream);
        out.push((format!("session-{i}"), s));
        let mut s =
            Config::bytes(12, max_series, modes[(i * 2 + 1) % modes.len()], 200, 3).to_vec(); // max 1024
        s.extend_from_slice(&stream);
        out.push((format!("session-{i}-1k"), s));
    }
    // A sender interning more than the receiver allows: refused samples.
    for (i, receiver_max) in [0u8, 2].into_iter().enumerate() {
        let mut s = Config::bytes(13, receiver_max, modes[i + 3], 9, 5).to_vec();
        s.extend_from_slice(&session_stream_for(31, u32::from(receiver_max), 3));
        out.push((format!("over-budget-{i}"), s));
    }
    // Small frames only: the batches are refused as too large.
    let mut s = Config::bytes(7, 4, Chunking::Wanted, 255, 0).to_vec();
    s.extend_from_slice(&session_stream(4, 2));
    out.push(("small-max".into(), s));
    // Refusal, empty frames, unknown type, truncated tail.
    let mut w = Vec::new();
    frame(
        &Message::Refuse(Refusal::new(
            ErrorCode::UnsupportedVersion,
            "version 9 unknown",
        )),
        &mut w,
    );
    encode_frame(&[], 10, &mut w).expect("fits");
    encode_frame(&[200, 1, 2], 10, &mut w).expect("fits");
    w.extend_from_slice(&[0, 0, 0, 9, 4, 1]);
    let mut s = Config::bytes(9, 2, Chunking::Random, 9, 77).to_vec();
    s.extend_from_slice(&w);
    out.push(("refuse-empty-unknown-truncated".into(), s));
    // An oversized header after a good frame.
    let mut w = Vec::new();
    frame(&Message::Bye, &mut w);
    w.extend_from_slice(&u32::MAX.to_be_bytes());
    w.extend_from_slice(&[1; 20]);
    let mut s = Config::bytes(0xff, 2, Chunking::Bytes, 0, 0).to_vec();
    s.extend_from_slice(&w);
    out.push(("oversized".into(), s));
    out
}

/// A spool directory written by the real `Spool`, as a `spool_reader`
/// input.
fn spool_input(
    cfg_byte: u8,
    read_byte: u8,
    ack: u8,
    seg_kind: u8,
    build: impl FnOnce(&mut Spool),
    appends: &[&[u8]],
    keep_meta: bool,
) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!(
        "tl-fuzz-seed-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = fs::remove_dir_all(&dir);
    let cfg = SpoolConfig {
        max_record_bytes: crate::spool::MAX_RECORD[usize::from(cfg_byte & 7)],
        segment_bytes: crate::spool::SEGMENT_BYTES[usize::from((cfg_byte >> 3) & 3)],
        max_bytes: crate::spool::MAX_BYTES[usize::from((cfg_byte >> 5) & 3)],
        fsync: FsyncPolicy::Never,
    };
    {
        let (mut s, _) = Spool::open(&dir, cfg).expect("seed spool opens");
        build(&mut s);
        s.checkpoint().expect("checkpoint");
    }
    let mut out = vec![cfg_byte, read_byte, ack, 0];
    let mut names: Vec<_> = fs::read_dir(&dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        let bytes = fs::read(dir.join(&n)).expect("read");
        if n.ends_with(".seg") {
            section(seg_kind, &bytes, &mut out);
        } else if n == "spool.meta" && keep_meta {
            section(kind::META_FIX, &bytes[..bytes.len() - 4], &mut out);
        }
    }
    for a in appends {
        section(kind::APPEND, a, &mut out);
    }
    let _ = fs::remove_dir_all(&dir);
    out
}

fn payloads(n: usize, from: usize) -> Vec<Vec<u8>> {
    let envs = envelopes();
    (from..from + n)
        .map(|i| envs[i % envs.len()].clone())
        .collect()
}

/// Seeds for `spool_reader`: (name, bytes).
pub fn spool_seeds() -> Vec<(String, Vec<u8>)> {
    // cfg byte: max_record 4096 (6), segment 300 (2 << 3), max_bytes 1 MiB (2 << 5)
    let small = 6 | (2 << 3) | (2 << 5);
    // max_record 256 KiB (7), segment default (0), max_bytes 16 KiB (1 << 5)
    let capped = 7 | (1 << 5);
    // max_record 64 (4), segment 64 (1 << 3), max_bytes 2048 (0)
    let tiny = 4 | (1 << 3);
    let fix_all = kind::SEG | kind::FIX_HEADER | kind::RENUMBER | kind::FIX_CRC;
    let mut out = Vec::new();
    out.push((
        "one-segment".into(),
        spool_input(
            6 | (3 << 3) | (2 << 5),
            0x37,
            3,
            kind::SEG,
            |s| {
                s.append(&payloads(12, 0)).expect("append");
            },
            &[b"appended"],
            true,
        ),
    ));
    out.push((
        "many-segments-acked".into(),
        spool_input(
            small,
            0x24,
            9,
            fix_all,
            |s| {
                for i in 0..6 {
                    s.append(&payloads(7, i * 7)).expect("append");
                }
                s.ack(15).expect("ack");
            },
            &[b"x", b"yy"],
            true,
        ),
    ));
    out.push((
        "many-segments-no-meta".into(),
        spool_input(
            small,
            0xc1,
            0,
            kind::SEG | kind::FIX_CRC,
            |s| {
                for i in 0..4 {
                    s.append(&payloads(9, i * 9)).expect("append");
                }
            },
            &[],
            false,
        ),
    ));
    out.push((
        "advanced-gap".into(),
        spool_input(
            small,
            0x52,
            2,
            fix_all,
            |s| {
                s.append(&payloads(5, 0)).expect("append");
                s.advance_next_seq(20).expect("advance");
                s.append(&payloads(5, 5)).expect("append");
            },
            &[b"after-gap"],
            true,
        ),
    ));
    out.push((
        "cap-dropped".into(),
        spool_input(
            capped,
            0xe9,
            1,
            fix_all,
            |s| {
                let big = vec![0x5a; 1500];
                for _ in 0..12 {
                    s.append(&[big.as_slice(), b"small"]).expect("append");
                }
            },
            &[b"z"],
            true,
        ),
    ));
    out.push((
        "tiny-segments".into(),
        spool_input(
            tiny,
            0x10,
            200,
            fix_all,
            |s| {
                for i in 0..10 {
                    s.append(&payloads(2, i * 2)).expect("append");
                }
                s.ack(3).expect("ack");
            },
            &[b"a", b"b", b"c"],
            true,
        ),
    ));
    out.push(("empty".into(), vec![small, 0, 0, 0]));
    out
}

/// Seeds for `batch_roundtrip`: raw bytes that `arbitrary` turns into small
/// structured inputs.
pub fn batch_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for i in 0..8 {
        let mut v = Vec::with_capacity(512);
        for _ in 0..(64 << (i % 4)) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.push((x >> 24) as u8);
        }
        out.push((format!("random-{i}"), v));
    }
    out
}

/// Writes every seed set under `root/<target>/`.
pub fn write_all(root: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for (target, seeds) in [
        ("frame_decoder", frame_seeds()),
        ("spool_reader", spool_seeds()),
        ("batch_roundtrip", batch_seeds()),
        ("state_journal", state_seeds()),
    ] {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            fs::write(dir.join(name), bytes)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Receiver state directories: snapshots and journals written with the
/// library's encoders (current, stale and torn journals, several streams,
/// a stream reset), and per-stream files of the older layout.
pub fn state_seeds() -> Vec<(String, Vec<u8>)> {
    use telemetry_link::internals::{
        state_format::{encode_header, encode_record, encode_snapshot, JOURNAL_MAGIC},
        StreamCursor, StreamKey,
    };

    use crate::state::kind;

    let keys = [
        StreamKey::new("l0", ""),
        StreamKey::new("l1", "r"),
        StreamKey::new("cluster-a", "replica.1"),
    ];
    let snapshot = |generation: u64, applied: u64| {
        let cursors: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k, StreamCursor::new(i as u128 + 1, applied + i as u64)))
            .collect();
        let mut out = Vec::new();
        encode_snapshot(generation, cursors.iter().map(|(k, c)| (*k, c)), &mut out);
        out
    };
    let journal = |generation: u64, from: u64, n: u64| {
        let mut out = Vec::new();
        encode_header(JOURNAL_MAGIC, generation, &mut out);
        for i in 0..n {
            let k = &keys[(i % 3) as usize];
            let stream = if i == n / 2 && k.replica.is_empty() {
                99
            } else {
                (i % 3) as u128 + 1
            };
            encode_record(k, &StreamCursor::new(stream, from + i), &mut out);
        }
        out
    };
    let legacy = |pick: u8, stream_id: u128, applied: u64| {
        let mut body = if pick & 4 == 0 {
            postcard::to_allocvec(&(1u32, format!("l{}", pick % 4), stream_id, applied))
        } else {
            postcard::to_allocvec(&(2u32, format!("l{}", pick % 4), "r", stream_id, applied))
        }
        .expect("encode");
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let mut out = vec![pick];
        out.extend_from_slice(&body);
        out
    };
    let mut seeds = Vec::new();
    let mut add = |name: &str, parts: &[(u8, Vec<u8>)]| {
        let mut out = Vec::new();
        for (k, data) in parts {
            crate::state::section(*k, data, &mut out);
        }
        seeds.push((name.to_owned(), out));
    };
    add("empty", &[]);
    add("journal-only", &[(kind::JOURNAL, journal(0, 1, 12))]);
    add(
        "snapshot-and-journal",
        &[
            (kind::SNAPSHOT, snapshot(3, 40)),
            (kind::JOURNAL, journal(3, 50, 9)),
        ],
    );
    add(
        "stale-journal",
        &[
            (kind::SNAPSHOT, snapshot(4, 40)),
            (kind::JOURNAL, journal(3, 50, 9)),
        ],
    );
    add(
        "journal-ahead",
        &[
            (kind::SNAPSHOT, snapshot(2, 40)),
            (kind::JOURNAL, journal(3, 50, 4)),
        ],
    );
    let mut torn = journal(1, 7, 10);
    torn.truncate(torn.len() - 5);
    add(
        "torn-journal",
        &[(kind::SNAPSHOT, snapshot(1, 1)), (kind::JOURNAL, torn)],
    );
    add(
        "older-layout",
        &[
            (kind::LEGACY, legacy(0, 1, 30)),
            (kind::LEGACY, legacy(5, 2, 31)),
            (kind::STRAY, vec![0, 1, 2]),
            (kind::STRAY, vec![2]),
        ],
    );
    add(
        "older-layout-and-journal",
        &[
            (kind::LEGACY, legacy(0, 7, 300)),
            (kind::SNAPSHOT, snapshot(1, 40)),
            (kind::JOURNAL, journal(1, 50, 6)),
        ],
    );
    seeds
}
