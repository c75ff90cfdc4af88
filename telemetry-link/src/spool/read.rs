//! Reading records back: cursors, batches bounded by count and bytes, gaps
//! for sequences the spool no longer holds, and records found corrupt
//! after they were written.
//!
//! Reads go through one cached file handle and one scratch buffer; the
//! cursor remembers the byte offset of its next record, so consecutive
//! reads do not re-walk a segment. A record that was valid when written but
//! fails its checks now (the disk changed it) is cut off with everything
//! after it in its segment and accounted as dropped: a reader sees a gap,
//! never damaged bytes.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
};

use super::{
    error::io_err,
    format::{parse_record, Corruption, Parsed, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN},
    segment::Segment,
    Spool, SpoolError,
};

/// What a read produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// `count` consecutive records from `first_seq` are in the buffer.
    Records {
        /// First record's sequence.
        first_seq: u64,
        /// How many.
        count: usize,
    },
    /// Sequences `from..=to` are not in the spool; `lost` of them were
    /// dropped unacknowledged (the rest were acknowledged earlier).
    Gap {
        /// First missing sequence.
        from: u64,
        /// Last missing sequence.
        to: u64,
        /// How many were dropped without acknowledgement.
        lost: u64,
    },
    /// Nothing to read yet.
    Empty,
}

/// Records read back from the spool: envelopes stored end to end.
#[derive(Debug, Default)]
pub struct ReadBuf {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl ReadBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the buffer (keeping its allocation).
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    fn push(&mut self, payload: &[u8]) {
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len());
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Total payload bytes.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The `i`th record's payload.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.data.get(start..end)
    }

    /// The records' payloads in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let s = &self.data[start..end];
            start = end;
            s
        })
    }
}

/// Where a reader is: the next sequence to hand out and, when known, the
/// byte offset of that record in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    next_seq: u64,
    seg_base: u64,
    offset: u64,
}

impl Cursor {
    /// The next sequence this cursor will read.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// The limits of one read.
#[derive(Debug, Clone, Copy)]
struct Limits {
    records: usize,
    bytes: usize,
}

/// The part of a segment in the scratch buffer: `want` bytes of the
/// `avail` from the cursor to the segment's end.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    avail: usize,
    want: usize,
}

/// How parsing the scratch buffer ended.
enum Pass {
    /// `pos` bytes were records; `full`: the next record would exceed the
    /// byte budget (it starts the next batch).
    Parsed { pos: usize, full: bool },
    /// The record `pos` bytes in is corrupt.
    Corrupt { pos: usize, why: Corruption },
}

fn records_or_empty(first_seq: u64, count: usize) -> ReadOutcome {
    if count > 0 {
        ReadOutcome::Records { first_seq, count }
    } else {
        ReadOutcome::Empty
    }
}

impl Spool {
    /// A cursor that will read from `seq` on.
    pub fn cursor(&self, seq: u64) -> Cursor {
        Cursor {
            next_seq: seq.max(1),
            seg_base: 0,
            offset: 0,
        }
    }

    /// Payload bytes of the records from the cursor on: exact when the
    /// cursor has read in its segment, otherwise counted from the start of
    /// that segment (an overestimate).
    pub fn unsent_bytes(&self, cur: &Cursor) -> u64 {
        self.segments
            .iter()
            .filter(|s| !s.is_empty() && s.last >= cur.next_seq)
            .map(|s| {
                let records = s.count_in(cur.next_seq, u64::MAX);
                let positioned = s.base == cur.seg_base
                    && (SEGMENT_HEADER_LEN as u64..=s.bytes).contains(&cur.offset);
                let from = if positioned {
                    cur.offset
                } else {
                    SEGMENT_HEADER_LEN as u64
                };
                (s.bytes - from).saturating_sub(records * RECORD_HEADER_LEN as u64)
            })
            .sum()
    }

    /// Reads up to `max_records` consecutive records (and about `max_bytes`
    /// of payload; a single larger record is still returned alone) at the
    /// cursor, or reports the gap in front of it.
    pub fn read(
        &mut self,
        cur: &mut Cursor,
        max_records: usize,
        max_bytes: usize,
        out: &mut ReadBuf,
    ) -> Result<ReadOutcome, SpoolError> {
        out.clear();
        if cur.next_seq >= self.next_seq || max_records == 0 {
            return Ok(ReadOutcome::Empty);
        }
        let Some(idx) = self
            .segments
            .iter()
            .position(|s| !s.is_empty() && s.last >= cur.next_seq)
        else {
            return Ok(self.gap(cur, self.next_seq - 1));
        };
        let seg = self.segments[idx].clone();
        if seg.base > cur.next_seq {
            return Ok(self.gap(cur, seg.base - 1));
        }
        if cur.seg_base != seg.base
            || cur.offset < SEGMENT_HEADER_LEN as u64
            || cur.offset >= seg.bytes
        {
            cur.offset = self.seek(&seg, cur.next_seq)?;
            cur.seg_base = seg.base;
        }
        let limits = Limits {
            records: max_records,
            bytes: max_bytes,
        };
        self.read_in_segment(idx, &seg, cur, limits, out)
    }

    /// Reads records of segment `idx` (`seg`) from the cursor, which is
    /// positioned in it.
    fn read_in_segment(
        &mut self,
        idx: usize,
        seg: &Segment,
        cur: &mut Cursor,
        limits: Limits,
        out: &mut ReadBuf,
    ) -> Result<ReadOutcome, SpoolError> {
        let first_seq = cur.next_seq;
        // Set when the next record would exceed the byte budget: the batch
        // is complete (the record starts the next one).
        let mut full = false;
        while !full && out.len() < limits.records && cur.next_seq <= seg.last {
            if !out.is_empty() && out.bytes() >= limits.bytes {
                break;
            }
            let avail = seg.bytes.saturating_sub(cur.offset) as usize;
            let budget_left = limits.bytes.saturating_sub(out.bytes());
            let want = avail.min(
                budget_left
                    .max(RECORD_HEADER_LEN)
                    .saturating_add(RECORD_HEADER_LEN),
            );
            self.fill_scratch(seg, cur.offset, want)?;
            match self.parse_scratch(seg, cur, Chunk { avail, want }, limits, out)? {
                Pass::Parsed { pos, full: f } => {
                    cur.offset += pos as u64;
                    full = f;
                }
                Pass::Corrupt { pos, why } => {
                    cur.offset += pos as u64;
                    self.cut_corrupt(idx, cur.offset, cur.next_seq, why)?;
                    return Ok(records_or_empty(first_seq, out.len()));
                }
            }
        }
        Ok(records_or_empty(first_seq, out.len()))
    }

    /// Moves the records in the scratch buffer into `out`, within the
    /// limits; fetches a single record larger than the buffer whole.
    fn parse_scratch(
        &mut self,
        seg: &Segment,
        cur: &mut Cursor,
        chunk: Chunk,
        limits: Limits,
        out: &mut ReadBuf,
    ) -> Result<Pass, SpoolError> {
        let mut pos = 0;
        let mut progressed = false;
        while out.len() < limits.records {
            match parse_record(
                &self.read_scratch[pos..],
                self.cfg.max_record_bytes,
                cur.next_seq,
            ) {
                Parsed::Record { payload, size, .. } => {
                    if !out.is_empty() && out.bytes().saturating_add(payload.len()) > limits.bytes {
                        return Ok(Pass::Parsed { pos, full: true });
                    }
                    out.push(payload);
                    pos += size;
                    cur.next_seq += 1;
                    progressed = true;
                    if cur.next_seq > seg.last {
                        break;
                    }
                }
                Parsed::Incomplete { needed: Some(n) }
                    if !progressed && n <= chunk.avail && n > chunk.want =>
                {
                    // One record larger than the read: fetch it whole.
                    self.fill_scratch(seg, cur.offset, n)?;
                }
                // The rest of the chunk is a partial record: read on.
                Parsed::Incomplete { .. } if progressed => break,
                // The segment claims this record is complete but it runs
                // past the written end: the file changed under us.
                Parsed::Incomplete { .. } => {
                    return Ok(Pass::Corrupt {
                        pos,
                        why: Corruption::PastEnd,
                    })
                }
                Parsed::Corrupt(why) => return Ok(Pass::Corrupt { pos, why }),
            }
        }
        Ok(Pass::Parsed { pos, full: false })
    }

    /// Moves the cursor over the missing sequences up to `to`.
    fn gap(&self, cur: &mut Cursor, to: u64) -> ReadOutcome {
        let from = cur.next_seq;
        cur.next_seq = to + 1;
        cur.offset = 0;
        ReadOutcome::Gap {
            from,
            to,
            lost: self.dropped.count_in(from, to),
        }
    }

    /// Closes the cached read handle if it is that of the segment at `base`.
    pub(super) fn forget_reader_of(&mut self, base: u64) {
        if self.reader.as_ref().is_some_and(|(b, _)| *b == base) {
            self.reader = None;
        }
    }

    fn read_handle(&mut self, seg: &Segment) -> Result<&File, SpoolError> {
        if self.reader.as_ref().map(|(b, _)| *b) != Some(seg.base) {
            let f = File::open(&seg.path).map_err(io_err(&seg.path))?;
            self.reader = Some((seg.base, f));
        }
        match &self.reader {
            Some((_, f)) => Ok(f),
            None => unreachable!("reader was just set"),
        }
    }

    fn fill_scratch(&mut self, seg: &Segment, offset: u64, len: usize) -> Result<(), SpoolError> {
        let mut scratch = std::mem::take(&mut self.read_scratch);
        scratch.resize(len, 0);
        let res = self.read_handle(seg).and_then(|f| {
            f.read_exact_at(&mut scratch, offset)
                .map_err(io_err(&seg.path))
        });
        self.read_scratch = scratch;
        res
    }

    /// Byte offset of record `seq` in `seg`, walking record headers.
    fn seek(&mut self, seg: &Segment, seq: u64) -> Result<u64, SpoolError> {
        let mut off = SEGMENT_HEADER_LEN as u64;
        let mut at = seg.base;
        let mut hdr = [0u8; RECORD_HEADER_LEN];
        while at < seq && off < seg.bytes {
            let f = self.read_handle(seg)?;
            f.read_exact_at(&mut hdr, off).map_err(io_err(&seg.path))?;
            let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as u64;
            off += RECORD_HEADER_LEN as u64 + len;
            at += 1;
        }
        Ok(off)
    }

    /// A record that was valid when written is now corrupt (the disk changed
    /// it): drop it and everything after it in the segment, loudly.
    fn cut_corrupt(
        &mut self,
        idx: usize,
        offset: u64,
        seq: u64,
        why: Corruption,
    ) -> Result<(), SpoolError> {
        let seg = self.segments[idx].clone();
        tracing::error!(
            segment = %seg.path.display(), offset, seq, last = seg.last, error = %why,
            "spool record corrupted on disk; dropping the rest of the segment"
        );
        let lost_from = seq.max(self.acked + 1);
        if seg.last >= lost_from {
            self.mark_dropped(lost_from, seg.last);
        }
        let f = OpenOptions::new()
            .write(true)
            .open(&seg.path)
            .map_err(io_err(&seg.path))?;
        f.set_len(offset).map_err(io_err(&seg.path))?;
        self.total_bytes -= seg.bytes - offset;
        let s = &mut self.segments[idx];
        s.bytes = offset;
        s.last = seq - 1;
        self.reader = None;
        if idx == self.segments.len() - 1 {
            // Keep sequences consecutive inside a segment.
            self.roll()?;
        }
        self.write_meta()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buf_holds_records_end_to_end() {
        let mut b = ReadBuf::new();
        assert!(b.is_empty() && b.get(0).is_none());
        b.push(b"ab");
        b.push(b"");
        b.push(b"cde");
        assert_eq!((b.len(), b.bytes()), (3, 5));
        assert_eq!(b.get(0), Some(&b"ab"[..]));
        assert_eq!(b.get(1), Some(&b""[..]));
        assert_eq!(b.get(2), Some(&b"cde"[..]));
        assert_eq!(b.get(3), None);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![&b"ab"[..], b"", b"cde"]);
        b.clear();
        assert!(b.is_empty() && b.bytes() == 0);
    }

    #[test]
    fn unsent_bytes_count_the_payloads_after_the_cursor() {
        let d = tempfile::tempdir().unwrap();
        let cfg = super::super::tests::test_cfg(super::super::FsyncPolicy::Never);
        let (mut s, _) = Spool::open(d.path(), cfg).unwrap();
        s.append(&[[1u8; 10], [2; 10], [3; 10]]).unwrap();
        let mut cur = s.cursor(1);
        assert_eq!(s.unsent_bytes(&cur), 30);
        let mut buf = ReadBuf::new();
        s.read(&mut cur, 2, 1 << 20, &mut buf).unwrap();
        assert_eq!(s.unsent_bytes(&cur), 10, "positioned: exact");
        s.append(&[[4u8; 5]]).unwrap();
        assert_eq!(s.unsent_bytes(&cur), 15);
        assert!(
            s.unsent_bytes(&s.cursor(2)) >= 25,
            "an unpositioned cursor never undercounts"
        );
        s.read(&mut cur, 10, 1 << 20, &mut buf).unwrap();
        assert_eq!(s.unsent_bytes(&cur), 0);
    }
}
