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
//! * **Interning budget** (receiver side, [`InternLimits`]). A definition
//!   beyond `max_series`, beyond the connection's definition bytes, or of a
//!   series with more labels or label bytes than allowed still takes its id —
//!   the decoder stays in step with the sender — but is not interned: every
//!   sample of it (and every inline sample over the label limits) decodes as
//!   [`Entry::Refused`], to be refused as a record, and costs no memory
//!   beyond a slot of 8 bytes per id below `max_series`.
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
    refused::RefusedReason,
    varint,
};
use crate::sample::{SeriesError, SeriesKey, MAX_LABELS};

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

/// Default cap on defined series per connection.
pub const DEFAULT_MAX_SERIES: u32 = 1 << 20;

/// Default cap on the bytes of interned series definitions per connection.
pub const DEFAULT_MAX_DEFINITION_BYTES: usize = 128 * 1024 * 1024;

/// Default cap on the label bytes (names and values) of one series.
pub const DEFAULT_MAX_LABEL_BYTES: usize = 16 * 1024;

/// What a label costs an interned definition beyond its bytes: about what
/// its two strings and their place in the label list take in memory.
pub const LABEL_COST: usize = 64;

/// What interning `key` charges against
/// [`InternLimits::max_definition_bytes`]: its canonical bytes plus
/// [`LABEL_COST`] per label.
pub fn definition_cost(key: &SeriesKey) -> usize {
    key.encoded().len() + LABEL_COST * key.labels().len()
}

/// What one connection may intern (receiver side).
///
/// Memory: an interned series holds its canonical bytes twice (encoded, and
/// decoded into strings), about 80 bytes per label (the tuple and two
/// allocations; [`LABEL_COST`] of them are charged to the byte budget) and
/// about 200 bytes of fixed overhead (the shared key, its allocations, its
/// table entry with room to grow, and its 8-byte id slot). One connection's
/// tables therefore stay below about
/// `2 × max_definition_bytes + 200 B × max_series`: with the defaults
/// (1 Mi series, 128 MiB) about 460 MiB for a connection that spends the
/// whole budget. Typical series (a name and a handful of labels, ~500
/// bytes charged) reach the byte budget first, at ~250 k series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternLimits {
    /// Most series defined per connection (the welcome's `max_series`);
    /// later definitions are refused (`series_limit`).
    pub max_series: u32,
    /// Most bytes of interned definitions per connection, each charged its
    /// [`definition_cost`]; a definition that would exceed it is refused
    /// (`series_limit`).
    pub max_definition_bytes: usize,
    /// Most labels one series may have (refused as `label_limit` beyond;
    /// a series key never has more than [`MAX_LABELS`]).
    pub max_labels_per_series: usize,
    /// Most bytes of label names and values one series may have (refused
    /// as `label_limit` beyond).
    pub max_label_bytes: usize,
}

impl InternLimits {
    /// `max_series` with the default byte and label limits.
    pub fn new(max_series: u32) -> Self {
        Self {
            max_series,
            max_definition_bytes: DEFAULT_MAX_DEFINITION_BYTES,
            max_labels_per_series: MAX_LABELS,
            max_label_bytes: DEFAULT_MAX_LABEL_BYTES,
        }
    }

    /// Whether `key` is within the per-series label limits.
    fn labels_fit(&self, key: &SeriesKey) -> bool {
        let bytes: usize = key.labels().iter().map(|(k, v)| k.len() + v.len()).sum();
        key.labels().len() <= self.max_labels_per_series && bytes <= self.max_label_bytes
    }
}

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
    /// A sample of a series the decoder did not intern (see
    /// [`InternLimits`]): the record is to be refused for this reason.
    Refused(RefusedReason),
}

/// What a defined series id stands for on the receiving side.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Interned, at this index of the series table.
    Interned(u32),
    /// Not interned: its samples are refused for this reason.
    Refused(RefusedReason),
}

/// Receiver side: decodes batch bodies, keeping the connection's tables.
#[derive(Debug)]
pub struct BatchDecoder {
    /// The interned series.
    series: Vec<(Arc<SeriesKey>, ValueState)>,
    /// What each id below `max_series` stands for.
    ids: Vec<Slot>,
    /// Ids defined so far (those at or above `max_series` are refused and
    /// have no slot).
    defined: u64,
    series_bytes: usize,
    last_ts: i64,
    next_id: u64,
    limits: InternLimits,
}

impl BatchDecoder {
    /// A fresh decoder (new connection) that interns at most `max_series`
    /// series, with the default byte and label limits.
    pub fn new(max_series: u32) -> Self {
        Self::with_limits(InternLimits::new(max_series))
    }

    /// A fresh decoder (new connection) within `limits`.
    pub fn with_limits(limits: InternLimits) -> Self {
        Self {
            series: Vec::new(),
            ids: Vec::new(),
            defined: 0,
            series_bytes: 0,
            last_ts: 0,
            next_id: 0,
            limits,
        }
    }

    /// Number of series interned on this connection.
    pub fn interned(&self) -> usize {
        self.series.len()
    }

    /// Number of series ids defined on this connection, interned or not.
    pub fn defined(&self) -> u64 {
        self.defined
    }

    /// The slot of a defined id.
    fn slot(&self, id: u64) -> Result<Slot, BatchError> {
        if id >= self.defined {
            return Err(BatchError::UnknownSeries(id));
        }
        Ok(usize::try_from(id)
            .ok()
            .and_then(|i| self.ids.get(i).copied())
            .unwrap_or(Slot::Refused(RefusedReason::SeriesLimit)))
    }

    /// Defines the next id from a definition's bytes: interned if the
    /// budget and the label limits allow it, else refused. A definition
    /// that does not decode is an error.
    fn define(&mut self, bytes: &[u8]) -> Result<Slot, BatchError> {
        let key = SeriesKey::decode(bytes)?;
        let id = self.defined;
        self.defined += 1;
        if id >= u64::from(self.limits.max_series) {
            // No slot: every id from here on is refused.
            return Ok(Slot::Refused(RefusedReason::SeriesLimit));
        }
        let slot = if !self.limits.labels_fit(&key) {
            Slot::Refused(RefusedReason::LabelLimit)
        } else if self.series_bytes + definition_cost(&key) > self.limits.max_definition_bytes {
            Slot::Refused(RefusedReason::SeriesLimit)
        } else {
            self.series_bytes += definition_cost(&key);
            // At most max_series (a u32) entries.
            let index = self.series.len() as u32;
            self.series.push((Arc::new(key), ValueState::FRESH));
            Slot::Interned(index)
        };
        self.ids.push(slot);
        Ok(slot)
    }

    /// Decodes exactly `count` entries from `body` into `out` (cleared first).
    /// Samples of series beyond the [`InternLimits`] are
    /// [`Entry::Refused`]; they are no error.
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
            let slot = match kind {
                KIND_SAMPLE => {
                    let id = if control & ID_NEXT != 0 {
                        self.next_id
                    } else {
                        varint::get_u64(&mut buf)?
                    };
                    self.next_id = id.saturating_add(1);
                    self.slot(id)?
                }
                KIND_DEFINE => {
                    let bytes = take_bytes(&mut buf)?;
                    let slot = self.define(bytes)?;
                    self.next_id = self.defined;
                    slot
                }
                _ => {
                    let key = SeriesKey::decode(take_bytes(&mut buf)?)?;
                    if self.limits.labels_fit(&key) {
                        out.push(self.sample(control, Arc::new(key), None, &mut buf)?);
                    } else {
                        out.push(self.refused(control, RefusedReason::LabelLimit, &mut buf)?);
                    }
                    continue;
                }
            };
            let entry = match slot {
                Slot::Interned(index) => {
                    let key = Arc::clone(&self.series[index as usize].0);
                    self.sample(control, key, Some(index as usize), &mut buf)?
                }
                Slot::Refused(reason) => self.refused(control, reason, &mut buf)?,
            };
            out.push(entry);
        }
        if !buf.is_empty() {
            return Err(BatchError::Trailing(buf.len()));
        }
        Ok(())
    }
}

impl BatchDecoder {
    /// The timestamp of a sample entry (advancing the connection's).
    fn timestamp(&mut self, control: u8, buf: &mut &[u8]) -> Result<i64, BatchError> {
        if control & TS_SAME != 0 {
            return Ok(self.last_ts);
        }
        self.last_ts = self.last_ts.wrapping_add(varint::get_i64(buf)?);
        Ok(self.last_ts)
    }

    /// The rest of a sample entry of `series`, whose value history is the
    /// interned series at `index` (`None`: an inline series, no history).
    fn sample<'a>(
        &mut self,
        control: u8,
        series: Arc<SeriesKey>,
        index: Option<usize>,
        buf: &mut &[u8],
    ) -> Result<Entry<'a>, BatchError> {
        let timestamp_ms = self.timestamp(control, buf)?;
        let mut inline_state = ValueState::FRESH;
        let state = match index {
            Some(i) => &mut self.series[i].1,
            None => &mut inline_state,
        };
        let value = decode_value(state, control, buf)?;
        Ok(Entry::Sample {
            series,
            timestamp_ms,
            value,
        })
    }

    /// The rest of a sample entry of a series that was not interned: its
    /// fields are read past (the connection's timestamp still advances; the
    /// value needs no history to be skipped).
    fn refused<'a>(
        &mut self,
        control: u8,
        reason: RefusedReason,
        buf: &mut &[u8],
    ) -> Result<Entry<'a>, BatchError> {
        self.timestamp(control, buf)?;
        match control & VAL_MASK {
            VAL_REPEAT => {}
            VAL_DELTA => {
                varint::get_i64(buf)?;
            }
            VAL_RAW => {
                *buf = buf.get(8..).ok_or(BatchError::Truncated)?;
            }
            _ => return Err(BatchError::BadControl(control)),
        }
        Ok(Entry::Refused(reason))
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
mod tests;
