//! The body of a [`Batch`](super::message::Batch): records encoded for one
//! connection, with series interning for samples.
//!
//! Application records pass through as `varint length + postcard bytes`.
//! Samples are where the bytes go in metric workloads, so they are packed:
//!
//! * **Series interning.** The first time a connection carries a series, the
//!   entry defines it (canonical label bytes) and implicitly gives it the next
//!   id; afterwards the entry carries only the id (1–3 bytes), or nothing when
//!   it is the previous sample's id + 1 — series produced in a stable order
//!   (a scrape, a round of a collector) cost no id bytes at all. Tables are per
//!   connection and reset on reconnect, so nothing depends on state older than
//!   the connection. Past the receiver's `max_series` the sender falls back to
//!   inline (non-interned) entries instead of failing.
//! * **Timestamps** are zigzag varint deltas from the previous sample on the
//!   connection; an unchanged timestamp costs a flag bit.
//! * **Values** that are exact integers (|v| ≤ 2^53) are deltas from the
//!   series' previous value; a delta equal to the previous delta costs a flag
//!   (so counters and steadily increasing series cost nothing); anything else
//!   is 8 raw bytes.
//!
//! Every entry starts with a control byte:
//!
//! ```text
//!   bit 7-6  kind: 00 app, 01 sample (interned id), 10 sample + define, 11 sample inline
//!   bit 5    timestamp equals the previous one (no timestamp field)
//!   bit 4-3  value: 00 repeat previous delta, 01 integer delta, 10 raw f64, 11 reserved
//!   bit 2    kind 01 only: the id is the previous interned sample's id + 1 (no id field)
//!   bit 1-0  reserved, zero
//! ```
//!
//! Both sides update their tables for every entry of every batch, in stream
//! order, including batches the receiver then drops as duplicates.

use std::{collections::HashMap, sync::Arc};

use thiserror::Error;

use super::{
    record::{RecordError, RecordView},
    varint,
};
use crate::sample::{SeriesError, SeriesKey};

const KIND_APP: u8 = 0b00 << 6;
const KIND_SAMPLE: u8 = 0b01 << 6;
const KIND_DEFINE: u8 = 0b10 << 6;
const KIND_INLINE: u8 = 0b11 << 6;
const KIND_MASK: u8 = 0b11 << 6;
const TS_SAME: u8 = 1 << 5;
const VAL_REPEAT: u8 = 0b00 << 3;
const VAL_DELTA: u8 = 0b01 << 3;
const VAL_RAW: u8 = 0b10 << 3;
const VAL_MASK: u8 = 0b11 << 3;
const ID_NEXT: u8 = 1 << 2;
const RESERVED_MASK: u8 = 0b011;

/// Upper bound on the encoded size of one entry beyond its envelope bytes;
/// used to keep a batch under the frame limit before encoding it.
pub const ENTRY_OVERHEAD: usize = 1 + 10 + 10 + 8;

/// Default cap on interned series per connection.
pub const DEFAULT_MAX_SERIES: u32 = 1 << 20;

/// Hard cap on the total bytes of interned series definitions per connection.
pub const MAX_SERIES_BYTES: usize = 256 * 1024 * 1024;

/// Why a batch body is invalid.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The body ended inside an entry.
    #[error("batch body truncated")]
    Truncated,
    /// The body has bytes after the announced number of entries.
    #[error("{0} bytes after the last entry")]
    Trailing(usize),
    /// A control byte with reserved bits set or a reserved value mode.
    #[error("bad control byte {0:#04x}")]
    BadControl(u8),
    /// A sample refers to an id that was never defined.
    #[error("unknown series id {0}")]
    UnknownSeries(u64),
    /// More series defined than the receiver allows.
    #[error("more than {0} interned series")]
    TooManySeries(u32),
    /// A series definition that does not decode.
    #[error("bad series definition: {0}")]
    BadSeries(#[from] SeriesError),
    /// A repeat/delta value where the series has no integer history, or an
    /// integer overflow.
    #[error("value delta without integer history")]
    BadValue,
}

impl From<varint::VarintError> for BatchError {
    fn from(_: varint::VarintError) -> Self {
        BatchError::Truncated
    }
}

/// Per-series value history, identical on both sides.
#[derive(Debug, Clone, Copy)]
struct ValueState {
    last: f64,
    delta: Option<i64>,
}

impl ValueState {
    const FRESH: ValueState = ValueState {
        last: 0.0,
        delta: None,
    };
}

const EXACT_LIMIT: i64 = 1 << 53;

fn exact_int(v: f64) -> Option<i64> {
    if v.is_finite()
        && v.fract() == 0.0
        && v.abs() <= EXACT_LIMIT as f64
        && v.to_bits() != (-0.0f64).to_bits()
    {
        Some(v as i64)
    } else {
        None
    }
}

fn encode_value(st: &mut ValueState, v: f64, control: &mut u8, payload: &mut Vec<u8>) {
    match (exact_int(st.last), exact_int(v)) {
        (Some(prev), Some(cur)) => {
            let d = cur - prev; // both within ±2^53: no overflow
            if st.delta == Some(d) {
                *control |= VAL_REPEAT;
            } else {
                *control |= VAL_DELTA;
                varint::put_i64(payload, d);
                st.delta = Some(d);
            }
        }
        _ => {
            *control |= VAL_RAW;
            payload.extend_from_slice(&v.to_le_bytes());
            st.delta = None;
        }
    }
    st.last = v;
}

fn decode_value(st: &mut ValueState, control: u8, buf: &mut &[u8]) -> Result<f64, BatchError> {
    let v = match control & VAL_MASK {
        VAL_RAW => {
            if buf.len() < 8 {
                return Err(BatchError::Truncated);
            }
            let (raw, rest) = buf.split_at(8);
            *buf = rest;
            let mut b = [0u8; 8];
            b.copy_from_slice(raw);
            st.delta = None;
            f64::from_le_bytes(b)
        }
        mode @ (VAL_REPEAT | VAL_DELTA) => {
            let prev = exact_int(st.last).ok_or(BatchError::BadValue)?;
            let d = if mode == VAL_REPEAT {
                st.delta.ok_or(BatchError::BadValue)?
            } else {
                varint::get_i64(buf)?
            };
            let cur = prev.checked_add(d).ok_or(BatchError::BadValue)?;
            // unsigned_abs: i64::MIN has no positive counterpart (fuzzing, F8).
            if cur.unsigned_abs() > EXACT_LIMIT as u64 {
                return Err(BatchError::BadValue);
            }
            st.delta = Some(d);
            cur as f64
        }
        _ => return Err(BatchError::BadControl(control)),
    };
    st.last = v;
    Ok(v)
}

/// Sender side: turns spooled record envelopes into a batch body.
#[derive(Debug)]
pub struct BatchEncoder {
    ids: HashMap<Box<[u8]>, u32>,
    states: Vec<ValueState>,
    last_ts: i64,
    /// The previous interned sample's id + 1.
    next_id: u64,
    max_series: u32,
}

impl BatchEncoder {
    /// A fresh encoder (new connection) for a receiver that keeps at most
    /// `max_series` interned series.
    pub fn new(max_series: u32) -> Self {
        Self {
            ids: HashMap::new(),
            states: Vec::new(),
            last_ts: 0,
            next_id: 0,
            max_series,
        }
    }

    /// Number of series interned so far on this connection.
    pub fn interned(&self) -> usize {
        self.states.len()
    }

    /// Appends the entry for one spooled record envelope to `out`.
    pub fn push_record(&mut self, envelope: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        match RecordView::parse(envelope)? {
            RecordView::App(bytes) => {
                out.push(KIND_APP);
                varint::put_u64(out, bytes.len() as u64);
                out.extend_from_slice(bytes);
            }
            RecordView::Sample {
                timestamp_ms,
                value,
                series,
            } => {
                let control_at = out.len();
                out.push(0);
                let mut control;
                let mut inline_state = ValueState::FRESH;
                let state = if let Some(&id) = self.ids.get(series) {
                    control = KIND_SAMPLE;
                    if u64::from(id) == self.next_id {
                        control |= ID_NEXT;
                    } else {
                        varint::put_u64(out, u64::from(id));
                    }
                    self.next_id = u64::from(id) + 1;
                    &mut self.states[id as usize]
                } else if (self.states.len() as u64) < u64::from(self.max_series) {
                    control = KIND_DEFINE;
                    varint::put_u64(out, series.len() as u64);
                    out.extend_from_slice(series);
                    let id = self.states.len() as u32;
                    self.ids.insert(series.into(), id);
                    self.states.push(ValueState::FRESH);
                    self.next_id = u64::from(id) + 1;
                    &mut self.states[id as usize]
                } else {
                    control = KIND_INLINE;
                    varint::put_u64(out, series.len() as u64);
                    out.extend_from_slice(series);
                    &mut inline_state
                };
                if timestamp_ms == self.last_ts {
                    control |= TS_SAME;
                } else {
                    varint::put_i64(out, timestamp_ms.wrapping_sub(self.last_ts));
                    self.last_ts = timestamp_ms;
                }
                encode_value(state, value, &mut control, out);
                out[control_at] = control;
            }
        }
        Ok(())
    }
}

/// One decoded entry of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry<'a> {
    /// Application postcard bytes, borrowed from the batch body.
    App(&'a [u8]),
    /// A sample; the series is shared with the connection's table.
    Sample {
        /// The series.
        series: Arc<SeriesKey>,
        /// Milliseconds since the epoch.
        timestamp_ms: i64,
        /// The value.
        value: f64,
    },
}

/// Receiver side: decodes batch bodies, keeping the connection's tables.
#[derive(Debug)]
pub struct BatchDecoder {
    series: Vec<(Arc<SeriesKey>, ValueState)>,
    series_bytes: usize,
    last_ts: i64,
    next_id: u64,
    max_series: u32,
}

impl BatchDecoder {
    /// A fresh decoder (new connection) that refuses more than `max_series`
    /// definitions.
    pub fn new(max_series: u32) -> Self {
        Self {
            series: Vec::new(),
            series_bytes: 0,
            last_ts: 0,
            next_id: 0,
            max_series,
        }
    }

    /// Number of series defined on this connection.
    pub fn interned(&self) -> usize {
        self.series.len()
    }

    /// Decodes exactly `count` entries from `body` into `out` (cleared first).
    ///
    /// On error the decoder's tables are unspecified; the caller must close
    /// the connection.
    pub fn decode<'a>(
        &mut self,
        body: &'a [u8],
        count: u32,
        out: &mut Vec<Entry<'a>>,
    ) -> Result<(), BatchError> {
        out.clear();
        // Every entry takes at least one byte: never reserve more than that.
        out.reserve((count as usize).min(body.len()));
        let mut buf = body;
        for _ in 0..count {
            let (&control, rest) = buf.split_first().ok_or(BatchError::Truncated)?;
            buf = rest;
            if control & RESERVED_MASK != 0 {
                return Err(BatchError::BadControl(control));
            }
            let kind = control & KIND_MASK;
            if kind == KIND_APP {
                if control != KIND_APP {
                    return Err(BatchError::BadControl(control));
                }
                let bytes = take_bytes(&mut buf)?;
                out.push(Entry::App(bytes));
                continue;
            }
            if control & ID_NEXT != 0 && kind != KIND_SAMPLE {
                return Err(BatchError::BadControl(control));
            }
            let mut inline_state = ValueState::FRESH;
            let (series, state) = match kind {
                KIND_SAMPLE => {
                    let id = if control & ID_NEXT != 0 {
                        self.next_id
                    } else {
                        varint::get_u64(&mut buf)?
                    };
                    self.next_id = id.saturating_add(1);
                    let (k, st) = self
                        .series
                        .get_mut(usize::try_from(id).unwrap_or(usize::MAX))
                        .ok_or(BatchError::UnknownSeries(id))?;
                    (Arc::clone(k), st)
                }
                KIND_DEFINE => {
                    let bytes = take_bytes(&mut buf)?;
                    if self.series.len() as u64 >= u64::from(self.max_series)
                        || self.series_bytes + bytes.len() > MAX_SERIES_BYTES
                    {
                        return Err(BatchError::TooManySeries(self.max_series));
                    }
                    let key = Arc::new(SeriesKey::decode(bytes)?);
                    self.series_bytes += bytes.len();
                    self.series.push((Arc::clone(&key), ValueState::FRESH));
                    let last = self.series.len() - 1;
                    self.next_id = last as u64 + 1;
                    (key, &mut self.series[last].1)
                }
                _ => {
                    let bytes = take_bytes(&mut buf)?;
                    (Arc::new(SeriesKey::decode(bytes)?), &mut inline_state)
                }
            };
            let timestamp_ms = if control & TS_SAME != 0 {
                self.last_ts
            } else {
                let ts = self.last_ts.wrapping_add(varint::get_i64(&mut buf)?);
                self.last_ts = ts;
                ts
            };
            let value = decode_value(state, control, &mut buf)?;
            out.push(Entry::Sample {
                series,
                timestamp_ms,
                value,
            });
        }
        if !buf.is_empty() {
            return Err(BatchError::Trailing(buf.len()));
        }
        Ok(())
    }
}

fn take_bytes<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], BatchError> {
    let len = varint::get_u64(buf)?;
    let len = usize::try_from(len).map_err(|_| BatchError::Truncated)?;
    if buf.len() < len {
        return Err(BatchError::Truncated);
    }
    let (bytes, rest) = buf.split_at(len);
    *buf = rest;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::record::{encode_app_bytes, encode_sample_parts};
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
        // too many definitions
        let mut enc = BatchEncoder::new(10);
        let mut body = Vec::new();
        for i in 0..3 {
            enc.push_record(&sample_env(&key(i), 0, 0.0), &mut body)
                .unwrap();
        }
        assert_eq!(
            dec.decode(&body, 3, &mut out),
            Err(BatchError::TooManySeries(2))
        );
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
}
