//! `batch_roundtrip` harness: structured records (built with `arbitrary`)
//! go through the sender's path — envelope, `BatchEncoder`, `Message::Batch`,
//! `encode_frame` — and back through the receiver's — `FrameDecoder` under a
//! fuzzed chunking, `Message::decode`, `BatchDecoder` — over several batches
//! of one connection. Every record must come back bit for bit (NaN payloads
//! and −0.0 included), the interning tables must agree, and the steady-state
//! cost stays within the documented bounds. A second receiver with a tight
//! interning budget and label limits decodes the same wire: it stays in
//! step, giving every entry either the same record or a refusal
//! (`series_limit`, `label_limit`), never an error.

use arbitrary::{Arbitrary, Unstructured};
use telemetry_link::{
    proto::{
        batch::{BatchDecoder, BatchEncoder, Entry, InternLimits, ENTRY_OVERHEAD},
        frame::{encode_frame, FrameDecoder},
        message::{Batch, Message},
        record::{encode_app_bytes, encode_sample_parts},
    },
    RefusedReason, SeriesKey,
};

use crate::frame::same_entry;

/// A series as the fuzzer describes it (may be invalid: then it is skipped).
#[derive(Debug, Arbitrary)]
pub struct SeriesSpec {
    /// Metric name.
    pub name: String,
    /// Labels, any order.
    pub labels: Vec<(String, String)>,
}

/// A timestamp relative to the previous sample.
#[derive(Debug, Arbitrary, Clone, Copy)]
pub enum TsSpec {
    /// Same as the previous sample's.
    Same,
    /// A small step.
    Step(i16),
    /// Any value.
    Abs(i64),
}

/// A value.
#[derive(Debug, Arbitrary, Clone, Copy)]
pub enum ValSpec {
    /// An integer (made an exact f64; may sit just past ±2^53).
    Int(i64),
    /// Previous value of the series plus a small step.
    Step(i8),
    /// Any bit pattern (NaN payloads included).
    Bits(u64),
    /// One of the special values.
    Special(u8),
}

/// One record.
#[derive(Debug, Arbitrary)]
pub enum RecSpec {
    /// Application bytes (opaque to the link).
    App(Vec<u8>),
    /// A sample of series `series % n`.
    Sample {
        /// Series index.
        series: u8,
        /// Timestamp.
        ts: TsSpec,
        /// Value.
        value: ValSpec,
    },
}

/// The whole input.
#[derive(Debug, Arbitrary)]
pub struct BatchInput {
    /// Interning cap, both sides.
    pub max_series: u8,
    /// The series pool.
    pub series: Vec<SeriesSpec>,
    /// The records, in order.
    pub records: Vec<RecSpec>,
    /// Batch sizes (cycled; 0 means 1).
    pub batch_sizes: Vec<u8>,
    /// Chunk sizes for the frame decoder (cycled; 0 means 1).
    pub chunks: Vec<u8>,
}

const SPECIALS: [f64; 10] = [
    0.0,
    -0.0,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    9_007_199_254_740_992.0,
    -9_007_199_254_740_992.0,
    9_007_199_254_740_994.0,
    f64::MIN_POSITIVE,
    f64::MAX,
];

/// Runs the harness on raw fuzzer bytes.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    if let Ok(input) = BatchInput::arbitrary(&mut u) {
        run_input(&input);
    }
}

/// Runs the harness on a structured input.
pub fn run_input(input: &BatchInput) {
    let keys: Vec<SeriesKey> = input
        .series
        .iter()
        .take(64)
        .filter_map(|s| {
            let k = SeriesKey::new(s.name.clone(), s.labels.clone()).ok()?;
            // A key we built is canonical and decodes to itself.
            let back = SeriesKey::decode(k.encoded()).expect("a constructed key decodes");
            assert_eq!(back, k);
            Some(k)
        })
        .collect();

    // Envelopes, as the spool would hold them.
    let mut envs: Vec<Vec<u8>> = Vec::new();
    let mut last_ts = 0i64;
    let mut last_val: Vec<f64> = vec![0.0; keys.len()];
    for r in input.records.iter().take(2000) {
        let mut e = Vec::new();
        match r {
            RecSpec::App(b) => encode_app_bytes(b, &mut e),
            RecSpec::Sample { series, ts, value } => {
                if keys.is_empty() {
                    continue;
                }
                let i = usize::from(*series) % keys.len();
                let ts = match ts {
                    TsSpec::Same => last_ts,
                    TsSpec::Step(d) => last_ts.wrapping_add(i64::from(*d)),
                    TsSpec::Abs(t) => *t,
                };
                last_ts = ts;
                let v = match value {
                    ValSpec::Int(n) => (n % ((1 << 53) + 4)) as f64,
                    ValSpec::Step(d) => last_val[i] + f64::from(*d),
                    ValSpec::Bits(b) => f64::from_bits(*b),
                    ValSpec::Special(s) => SPECIALS[usize::from(*s) % SPECIALS.len()],
                };
                last_val[i] = v;
                encode_sample_parts(ts, v, keys[i].encoded(), &mut e);
            }
        }
        envs.push(e);
    }

    // Sender: batches of one connection, framed onto one wire.
    let max_series = u32::from(input.max_series);
    let max_frame = 1 << 20;
    let mut enc = BatchEncoder::new(max_series);
    let mut wire = Vec::new();
    let mut batches = Vec::new(); // (first index, count)
    let mut i = 0;
    let mut n = 0;
    while i < envs.len() {
        let size = input
            .batch_sizes
            .get(n % input.batch_sizes.len().max(1))
            .copied()
            .unwrap_or(7)
            .max(1);
        n += 1;
        let end = (i + usize::from(size)).min(envs.len());
        let mut body = Vec::new();
        for e in &envs[i..end] {
            let before = body.len();
            enc.push_record(e, &mut body).expect("valid envelope");
            // Documented bound used to size batches under the frame limit.
            assert!(
                body.len() - before <= e.len() + ENTRY_OVERHEAD,
                "entry of {} bytes for a {}-byte envelope",
                body.len() - before,
                e.len()
            );
        }
        assert!(enc.interned() as u64 <= u64::from(max_series));
        let msg = Message::Batch(Batch {
            first_seq: i as u64 + 1,
            count: (end - i) as u32,
            body: &body,
        });
        encode_frame(&msg.to_vec(), max_frame, &mut wire).expect("batch fits the frame");
        batches.push((i, end - i));
        i = end;
    }

    // Receiver: one that interns all the sender may define, and one with a
    // tight budget.
    let mut fd = FrameDecoder::new(max_frame);
    let mut dec = BatchDecoder::with_limits(InternLimits {
        max_label_bytes: usize::MAX,
        ..InternLimits::new(max_series)
    });
    let tight_limits = InternLimits {
        max_series: max_series / 2,
        max_definition_bytes: 256,
        max_labels_per_series: 2,
        max_label_bytes: 32,
    };
    let mut tight = BatchDecoder::with_limits(tight_limits);
    let mut next_batch = 0;
    let mut pos = 0;
    let mut c = 0;
    loop {
        while let Some(frame) = fd.next_frame().expect("frames within the limit") {
            let Ok(Message::Batch(b)) = Message::decode(frame) else {
                panic!("a batch frame does not decode as a batch");
            };
            let (first, count) = batches[next_batch];
            next_batch += 1;
            assert_eq!(b.first_seq, first as u64 + 1);
            assert_eq!(b.count as usize, count);
            let mut out = Vec::new();
            dec.decode(b.body, b.count, &mut out)
                .unwrap_or_else(|e| panic!("encoded batch {next_batch} does not decode: {e}"));
            assert_eq!(out.len(), count);
            for (k, entry) in out.iter().enumerate() {
                let mut back = Vec::new();
                match entry {
                    Entry::App(b) => encode_app_bytes(b, &mut back),
                    Entry::Sample {
                        series,
                        timestamp_ms,
                        value,
                    } => encode_sample_parts(*timestamp_ms, *value, series.encoded(), &mut back),
                    Entry::Refused(reason) => {
                        panic!("record {} refused ({reason}) within the limits", first + k)
                    }
                }
                assert!(
                    back == envs[first + k],
                    "record {} differs after the round trip",
                    first + k
                );
            }
            let mut limited = Vec::new();
            tight
                .decode(b.body, b.count, &mut limited)
                .unwrap_or_else(|e| panic!("a tight budget made batch {next_batch} an error: {e}"));
            assert_eq!(limited.len(), count);
            for (k, (full, got)) in out.iter().zip(&limited).enumerate() {
                match got {
                    Entry::Refused(RefusedReason::SeriesLimit | RefusedReason::LabelLimit) => {
                        assert!(
                            matches!(full, Entry::Sample { .. }),
                            "record {} refused but not a sample",
                            first + k
                        );
                    }
                    Entry::Refused(other) => panic!("refused as {other}"),
                    _ => assert!(
                        same_entry(full, got),
                        "record {} differs under a tight budget",
                        first + k
                    ),
                }
            }
            assert!(tight.interned() as u64 <= u64::from(tight_limits.max_series));
            assert_eq!(
                dec.interned(),
                enc_interned_at(&enc, next_batch == batches.len()).unwrap_or(dec.interned())
            );
        }
        if pos == wire.len() {
            break;
        }
        let step = input
            .chunks
            .get(c % input.chunks.len().max(1))
            .copied()
            .unwrap_or(255)
            .max(1);
        c += 1;
        let end = (pos + usize::from(step)).min(wire.len());
        fd.push(&wire[pos..end]).expect("frames within the limit");
        pos = end;
    }
    fd.finish().expect("stream ends between frames");
    assert_eq!(next_batch, batches.len());
    assert_eq!(dec.interned(), enc.interned(), "interning tables disagree");
}

/// The encoder's table size is only comparable once every batch is decoded.
fn enc_interned_at(enc: &BatchEncoder, last: bool) -> Option<usize> {
    last.then(|| enc.interned())
}
