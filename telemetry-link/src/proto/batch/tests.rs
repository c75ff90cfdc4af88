//! Batch bodies round-trip bit for bit, cost what the module promises,
//! and bad bodies are errors.

use super::*;
use crate::proto::{
    record::{encode_app_bytes, encode_sample_parts},
    refused::RefusedReason,
};
use proptest::prelude::*;

fn key(i: usize) -> SeriesKey {
    SeriesKey::new(
        "telemetry_synthetic_value",
        [("cluster", "c1".to_string()), ("series", i.to_string())],
    )
    .unwrap()
}

fn sample_env(k: &SeriesKey, ts: i64, v: f64) -> Vec<u8> {
    let mut e = Vec::new();
    encode_sample_parts(ts, v, k.encoded(), &mut e);
    e
}

fn roundtrip(envs: &[Vec<u8>], max_series: u32, batch: usize) -> Vec<Vec<u8>> {
    let mut enc = BatchEncoder::new(max_series);
    let mut dec = BatchDecoder::new(max_series);
    let mut back = Vec::new();
    for chunk in envs.chunks(batch.max(1)) {
        let mut body = Vec::new();
        for e in chunk {
            enc.push_record(e, &mut body).unwrap();
        }
        let mut out = Vec::new();
        dec.decode(&body, chunk.len() as u32, &mut out).unwrap();
        for entry in out {
            let mut e = Vec::new();
            match entry {
                Entry::App(b) => encode_app_bytes(b, &mut e),
                Entry::Sample {
                    series,
                    timestamp_ms,
                    value,
                } => encode_sample_parts(timestamp_ms, value, series.encoded(), &mut e),
                Entry::Refused(reason) => panic!("refused within the budget: {reason}"),
            }
            back.push(e);
        }
    }
    back
}

/// Bytes per sample in steady state for `n_series` series visited in
/// `order` (value = a per-series counter, 1 ms clock).
fn steady_bytes_per_sample(n_series: usize, order: impl Fn(u64) -> usize) -> f64 {
    let keys: Vec<_> = (0..n_series).map(key).collect();
    let mut enc = BatchEncoder::new(DEFAULT_MAX_SERIES);
    let mut counters = vec![0u64; n_series];
    let mut ts = 1_700_000_000_000i64;
    let mut body = Vec::new();
    let total = 20 * n_series as u64;
    let warm = 2 * n_series as u64;
    let mut steady_bytes = 0;
    for seq in 0..total {
        if seq.is_multiple_of(100) {
            ts += 1;
        }
        let s = order(seq);
        counters[s] += n_series as u64;
        body.clear();
        enc.push_record(&sample_env(&keys[s], ts, counters[s] as f64), &mut body)
            .unwrap();
        if seq >= warm {
            steady_bytes += body.len();
        }
    }
    steady_bytes as f64 / (total - warm) as f64
}

#[test]
fn steady_state_bytes_per_sample() {
    // Stable order (a scrape, a collector round): no id bytes.
    let ordered = steady_bytes_per_sample(1000, |seq| (seq % 1000) as usize);
    assert!(ordered <= 1.1, "{ordered} bytes per sample in scrape order");
    // Shuffled order: the id costs 2 bytes for ids >= 128.
    let mut perm: Vec<usize> = (0..1000).collect();
    let mut x = 12345u64;
    for i in (1..perm.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        perm.swap(i, (x >> 33) as usize % (i + 1));
    }
    let shuffled = steady_bytes_per_sample(1000, |seq| perm[((seq * 7919) % 1000) as usize]);
    assert!(
        shuffled <= 3.1,
        "{shuffled} bytes per sample in shuffled order"
    );
}

#[test]
fn special_values_survive_bit_exact() {
    let k = key(0);
    let vals = [
        0.0,
        -0.0,
        1.0,
        f64::NAN,
        f64::INFINITY,
        -1e300,
        9007199254740992.0,
        -9007199254740992.0,
        0.1,
        5.0,
        5.0,
        5.0,
        4.0,
        f64::MIN_POSITIVE,
    ];
    let envs: Vec<_> = vals
        .iter()
        .enumerate()
        .map(|(i, &v)| sample_env(&k, i as i64 * 1000 - 5000, v))
        .collect();
    assert_eq!(roundtrip(&envs, 10, 3), envs);
}

#[test]
fn series_beyond_the_cap_go_inline() {
    let envs: Vec<_> = (0..20)
        .map(|i| sample_env(&key(i % 7), 5, i as f64))
        .collect();
    assert_eq!(roundtrip(&envs, 3, 4), envs);
}

#[test]
fn decoder_refuses_bad_bodies() {
    let mut dec = BatchDecoder::new(2);
    let mut out = Vec::new();
    assert_eq!(dec.decode(&[], 1, &mut out), Err(BatchError::Truncated));
    assert_eq!(
        dec.decode(&[0, 0, 9], 1, &mut out),
        Err(BatchError::Trailing(1))
    );
    assert_eq!(
        dec.decode(&[0x01], 1, &mut out),
        Err(BatchError::BadControl(1))
    );
    assert_eq!(
        dec.decode(&[KIND_SAMPLE | TS_SAME, 5], 1, &mut out),
        Err(BatchError::UnknownSeries(5))
    );
    // value mode 11 is reserved
    let k = key(1);
    let mut body = vec![KIND_DEFINE | TS_SAME | VAL_MASK];
    varint::put_u64(&mut body, k.encoded().len() as u64);
    body.extend_from_slice(k.encoded());
    assert_eq!(
        dec.decode(&body, 1, &mut out),
        Err(BatchError::BadControl(KIND_DEFINE | TS_SAME | VAL_MASK))
    );
    // repeat without history
    let mut dec = BatchDecoder::new(2);
    let mut body = vec![KIND_DEFINE | TS_SAME | VAL_REPEAT];
    varint::put_u64(&mut body, k.encoded().len() as u64);
    body.extend_from_slice(k.encoded());
    assert_eq!(dec.decode(&body, 1, &mut out), Err(BatchError::BadValue));
    // a huge count over a tiny body reserves nothing big and fails
    let mut dec = BatchDecoder::new(2);
    assert_eq!(
        dec.decode(&[0, 0], u32::MAX, &mut out),
        Err(BatchError::Truncated)
    );
    assert!(out.capacity() < 16);
}

/// Decodes `envs` in batches of `batch` with an encoder that believes the
/// receiver interns `sender_max` series and a decoder within `limits`;
/// returns each record as the decoder gave it back (a refusal, or the
/// record's envelope).
fn decode_within(
    envs: &[Vec<u8>],
    sender_max: u32,
    limits: InternLimits,
    batch: usize,
) -> Vec<Result<Vec<u8>, RefusedReason>> {
    let mut enc = BatchEncoder::new(sender_max);
    let mut dec = BatchDecoder::with_limits(limits);
    let mut back = Vec::new();
    for chunk in envs.chunks(batch) {
        let mut body = Vec::new();
        for e in chunk {
            enc.push_record(e, &mut body).unwrap();
        }
        let mut out = Vec::new();
        dec.decode(&body, chunk.len() as u32, &mut out).unwrap();
        assert_eq!(out.len(), chunk.len());
        for entry in out {
            back.push(match entry {
                Entry::Refused(reason) => Err(reason),
                Entry::App(b) => {
                    let mut e = Vec::new();
                    encode_app_bytes(b, &mut e);
                    Ok(e)
                }
                Entry::Sample {
                    series,
                    timestamp_ms,
                    value,
                } => {
                    let mut e = Vec::new();
                    encode_sample_parts(timestamp_ms, value, series.encoded(), &mut e);
                    Ok(e)
                }
            });
        }
    }
    assert!(dec.interned() as u64 <= u64::from(limits.max_series));
    back
}

/// Records of series `0..n` (each `rounds` times, counters, 1 s apart)
/// with an application record between rounds.
fn rounds(n: usize, rounds: usize) -> (Vec<Vec<u8>>, Vec<Option<usize>>) {
    let mut envs = Vec::new();
    let mut series = Vec::new();
    for r in 0..rounds {
        for i in 0..n {
            envs.push(sample_env(&key(i), r as i64 * 1000, (r * 10 + i) as f64));
            series.push(Some(i));
        }
        let mut e = Vec::new();
        encode_app_bytes(&[r as u8], &mut e);
        envs.push(e);
        series.push(None);
    }
    (envs, series)
}

#[test]
fn definitions_beyond_max_series_are_refused_and_the_decoder_stays_in_step() {
    let (envs, series) = rounds(6, 4);
    // The sender believes it may intern 10; the receiver interns 2.
    let back = decode_within(&envs, 10, InternLimits::new(2), 5);
    for ((got, want), s) in back.iter().zip(&envs).zip(&series) {
        match s {
            Some(i) if *i >= 2 => assert_eq!(got, &Err(RefusedReason::SeriesLimit)),
            _ => assert_eq!(got.as_ref(), Ok(want), "series {s:?}"),
        }
    }
    // No slot for ids at or above max_series, however many are defined.
    let mut dec = BatchDecoder::new(0);
    let mut enc = BatchEncoder::new(u32::MAX);
    let mut body = Vec::new();
    for i in 0..100 {
        enc.push_record(&sample_env(&key(i), 0, 1.0), &mut body)
            .unwrap();
    }
    let mut out = Vec::new();
    dec.decode(&body, 100, &mut out).unwrap();
    assert_eq!((dec.interned(), dec.defined(), dec.ids.len()), (0, 100, 0));
    // An id never defined is still an error.
    assert_eq!(
        dec.decode(&[KIND_SAMPLE | TS_SAME, 100], 1, &mut out),
        Err(BatchError::UnknownSeries(100))
    );
}

#[test]
fn the_definition_byte_budget_refuses_what_does_not_fit() {
    let (envs, series) = rounds(5, 3);
    let one = definition_cost(&key(0));
    assert_eq!(one, key(0).encoded().len() + 2 * LABEL_COST);
    let limits = InternLimits {
        max_definition_bytes: 3 * one,
        ..InternLimits::new(1000)
    };
    let back = decode_within(&envs, 1000, limits, 4);
    for ((got, want), s) in back.iter().zip(&envs).zip(&series) {
        match s {
            Some(i) if *i >= 3 => assert_eq!(got, &Err(RefusedReason::SeriesLimit)),
            _ => assert_eq!(got.as_ref(), Ok(want), "series {s:?}"),
        }
    }
}

#[test]
fn series_over_the_label_limits_are_refused_interned_or_inline() {
    let wide = SeriesKey::new("wide", (0..5).map(|i| (format!("l{i}"), "v".to_string()))).unwrap();
    let long = SeriesKey::new("long", [("l", "x".repeat(100))]).unwrap();
    let fine = key(1);
    let mut envs = Vec::new();
    for round in 0..3 {
        for k in [&wide, &long, &fine] {
            envs.push(sample_env(k, round, round as f64));
        }
    }
    let limits = InternLimits {
        max_labels_per_series: 4,
        max_label_bytes: 50,
        ..InternLimits::new(1000)
    };
    let expect = |back: &[Result<Vec<u8>, RefusedReason>]| {
        for (i, (got, want)) in back.iter().zip(&envs).enumerate() {
            if i % 3 == 2 {
                assert_eq!(got.as_ref(), Ok(want));
            } else {
                assert_eq!(got, &Err(RefusedReason::LabelLimit), "entry {i}");
            }
        }
    };
    // Interned definitions...
    expect(&decode_within(&envs, 1000, limits, 2));
    // ...and inline series (the sender's table is full from the start).
    expect(&decode_within(&envs, 0, limits, 2));
}

#[test]
fn refused_entries_still_check_their_framing() {
    let mut dec = BatchDecoder::new(0);
    let k = key(1);
    let mut body = vec![KIND_DEFINE | VAL_RAW];
    varint::put_u64(&mut body, k.encoded().len() as u64);
    body.extend_from_slice(k.encoded());
    body.push(2); // timestamp delta
    body.extend_from_slice(&[0; 7]); // one byte short of the value
    assert_eq!(
        dec.decode(&body, 1, &mut Vec::new()),
        Err(BatchError::Truncated)
    );
    let mut dec = BatchDecoder::new(0);
    body[0] = KIND_DEFINE | VAL_MASK;
    let mut out = Vec::new();
    assert_eq!(
        dec.decode(&body, 1, &mut out),
        Err(BatchError::BadControl(KIND_DEFINE | VAL_MASK))
    );
    // A definition that does not decode is an error even beyond the budget.
    let mut dec = BatchDecoder::new(0);
    let body = [KIND_DEFINE | TS_SAME | VAL_REPEAT, 1, 0xff];
    assert!(matches!(
        dec.decode(&body, 1, &mut out),
        Err(BatchError::BadSeries(_))
    ));
}

fn arb_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-1000i64..1000).prop_map(|v| v as f64),
        any::<f64>(),
        Just(f64::NAN),
        Just(-0.0),
    ]
}

proptest! {
    #[test]
    fn any_record_sequence_roundtrips(
        recs in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| { let mut e = Vec::new(); encode_app_bytes(&b, &mut e); e }),
                (0usize..12, any::<i64>(), arb_value()).prop_map(|(s, ts, v)| sample_env(&key(s), ts, v)),
                (0usize..12, 0i64..3, arb_value()).prop_map(|(s, ts, v)| sample_env(&key(s), ts, v)),
            ],
            0..200),
        max_series in 0u32..16,
        batch in 1usize..50,
    ) {
        let back = roundtrip(&recs, max_series, batch);
        prop_assert_eq!(back.len(), recs.len());
        for (a, b) in back.iter().zip(&recs) {
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300), count in 0u32..1000) {
        let mut dec = BatchDecoder::new(8);
        let mut out = Vec::new();
        let _ = dec.decode(&body, count, &mut out);
        prop_assert!(out.len() <= body.len());
    }
}
