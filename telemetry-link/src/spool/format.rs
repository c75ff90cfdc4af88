//! Byte layout of spool segment files, without IO.
//!
//! ```text
//! segment  = header record*
//! header   = magic "TLSPOOL1" | stream_id u128 LE | base_seq u64 LE | crc32c(previous 32 bytes) u32 LE
//! record   = len u32 LE | crc32c(seq ‖ payload) u32 LE | seq u64 LE | payload[len]
//! ```
//!
//! Records in one segment have consecutive sequence numbers starting at
//! `base_seq`. A record is valid only if its length is within the configured
//! maximum, its checksum matches and its sequence is the expected one, so a
//! torn write or random bytes are recognised rather than misread.

use thiserror::Error;

/// Magic bytes at the start of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TLSPOOL1";
/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 8 + 16 + 8 + 4;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 4 + 4 + 8;

/// The fixed header of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The spool's stream id.
    pub stream_id: u128,
    /// Sequence of the first record this segment holds.
    pub base_seq: u64,
}

/// A segment header that cannot be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than a header.
    #[error("segment shorter than its header")]
    Short,
    /// Wrong magic bytes.
    #[error("not a spool segment (bad magic)")]
    Magic,
    /// Checksum mismatch.
    #[error("segment header checksum mismatch")]
    Checksum,
}

impl SegmentHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        h[..8].copy_from_slice(&SEGMENT_MAGIC);
        h[8..24].copy_from_slice(&self.stream_id.to_le_bytes());
        h[24..32].copy_from_slice(&self.base_seq.to_le_bytes());
        let crc = crc32c::crc32c(&h[..32]);
        h[32..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks a header from the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        let h = bytes.get(..SEGMENT_HEADER_LEN).ok_or(HeaderError::Short)?;
        if h[..8] != SEGMENT_MAGIC {
            return Err(HeaderError::Magic);
        }
        if crc32c::crc32c(&h[..32]) != le_u32(&h[32..36]) {
            return Err(HeaderError::Checksum);
        }
        Ok(Self {
            stream_id: u128::from_le_bytes(h[8..24].try_into().unwrap_or([0; 16])),
            base_seq: le_u64(&h[24..32]),
        })
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Checksum of a record: covers the sequence number and the payload.
pub fn record_crc(seq: u64, payload: &[u8]) -> u32 {
    let c = crc32c::crc32c(&seq.to_le_bytes());
    crc32c::crc32c_append(c, payload)
}

/// Appends one record to `out`.
pub fn encode_record(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&record_crc(seq, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Result of looking at the bytes where a record should start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A valid record.
    Record {
        /// Its sequence number.
        seq: u64,
        /// Its payload.
        payload: &'a [u8],
        /// Bytes it occupies (header + payload).
        size: usize,
    },
    /// The bytes end before the record does: a torn write, or more to read.
    Incomplete {
        /// Total size the record claims, if the header is complete.
        needed: Option<usize>,
    },
    /// Not a valid record here.
    Corrupt(Corruption),
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Corruption {
    /// Length above the maximum.
    #[error("record length {0} above the maximum")]
    Length(u32),
    /// Checksum mismatch.
    #[error("record checksum mismatch")]
    Checksum,
    /// The record runs past the end of the written data.
    #[error("record runs past the end of the segment")]
    PastEnd,
    /// Valid record, but not the sequence expected at this position.
    #[error("unexpected sequence {got} (expected {expected})")]
    Sequence {
        /// Expected.
        expected: u64,
        /// Found.
        got: u64,
    },
}

/// Parses the record at the start of `buf`, expecting sequence `expected`.
pub fn parse_record(buf: &[u8], max_record: usize, expected: u64) -> Parsed<'_> {
    if buf.len() < RECORD_HEADER_LEN {
        return Parsed::Incomplete { needed: None };
    }
    let len = le_u32(&buf[0..4]);
    if len as usize > max_record {
        return Parsed::Corrupt(Corruption::Length(len));
    }
    let size = RECORD_HEADER_LEN + len as usize;
    if buf.len() < size {
        return Parsed::Incomplete { needed: Some(size) };
    }
    let crc = le_u32(&buf[4..8]);
    let seq = le_u64(&buf[8..16]);
    let payload = &buf[RECORD_HEADER_LEN..size];
    if record_crc(seq, payload) != crc {
        return Parsed::Corrupt(Corruption::Checksum);
    }
    if seq != expected {
        return Parsed::Corrupt(Corruption::Sequence { expected, got: seq });
    }
    Parsed::Record { seq, payload, size }
}

/// After corruption at the start of `buf`, finds the next offset where a
/// valid record with a sequence above `after_seq` starts. Returns the offset
/// and that record's sequence.
///
/// A candidate's sequence must be plausible (no further ahead than the bytes
/// left could hold) before its checksum is computed, which keeps the scan
/// cheap on garbage.
pub fn resync(buf: &[u8], max_record: usize, after_seq: u64) -> Option<(usize, u64)> {
    let mut off = 1;
    while off + RECORD_HEADER_LEN <= buf.len() {
        let b = &buf[off..];
        let len = le_u32(&b[0..4]) as usize;
        let seq = le_u64(&b[8..16]);
        let max_ahead = (buf.len() / RECORD_HEADER_LEN) as u64 + 1;
        if len <= max_record
            && RECORD_HEADER_LEN + len <= b.len()
            && seq > after_seq
            && seq - after_seq <= max_ahead
            && record_crc(seq, &b[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len]) == le_u32(&b[4..8])
        {
            return Some((off, seq));
        }
        off += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_damage() {
        let h = SegmentHeader {
            stream_id: 99,
            base_seq: 1234,
        };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        assert_eq!(SegmentHeader::decode(&b[..10]), Err(HeaderError::Short));
        b[30] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::Checksum));
        b[0] = b'X';
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::Magic));
    }

    #[test]
    fn records_parse_and_detect_damage() {
        let mut b = Vec::new();
        encode_record(7, b"hello", &mut b);
        match parse_record(&b, 100, 7) {
            Parsed::Record { seq, payload, size } => {
                assert_eq!((seq, payload, size), (7, &b"hello"[..], b.len()))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_record(&b, 100, 8),
            Parsed::Corrupt(Corruption::Sequence {
                expected: 8,
                got: 7
            })
        );
        assert_eq!(
            parse_record(&b[..b.len() - 1], 100, 7),
            Parsed::Incomplete {
                needed: Some(b.len())
            }
        );
        assert_eq!(
            parse_record(&b[..3], 100, 7),
            Parsed::Incomplete { needed: None }
        );
        assert_eq!(
            parse_record(&b, 4, 7),
            Parsed::Corrupt(Corruption::Length(5))
        );
        let mut bad = b.clone();
        bad[RECORD_HEADER_LEN] ^= 0x40;
        assert_eq!(
            parse_record(&bad, 100, 7),
            Parsed::Corrupt(Corruption::Checksum)
        );
    }

    #[test]
    fn resync_finds_the_next_good_record() {
        let mut b = Vec::new();
        encode_record(1, b"aaaa", &mut b);
        let second = b.len();
        encode_record(2, b"bbbb", &mut b);
        let third = b.len();
        encode_record(3, b"cccc", &mut b);
        // damage record 2's payload
        b[second + RECORD_HEADER_LEN] ^= 0xff;
        assert_eq!(
            parse_record(&b[second..], 100, 2),
            Parsed::Corrupt(Corruption::Checksum)
        );
        assert_eq!(resync(&b[second..], 100, 1), Some((third - second, 3)));
        // nothing valid after: None
        assert_eq!(resync(&[0u8; 64], 100, 1), None);
    }
}
