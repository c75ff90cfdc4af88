//! Recovery's byte-level scan of one segment file: split it into runs of
//! valid records ("pieces"), cutting out torn tails and corrupt regions.
//!
//! No IO: the caller reads the file and decides what to keep. A piece is a
//! run of records with consecutive sequences; a corrupt region ends one
//! piece and, if a valid record with a later sequence follows it, starts
//! the next one there ([`format::resync`](super::format::resync)).

use super::{
    format::{parse_record, resync, Parsed, SEGMENT_HEADER_LEN},
    RecoveryReport, MAX_SEQ,
};

/// A run of consecutive valid records inside a segment file's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Piece {
    /// Sequence of its first record.
    pub(super) base: u64,
    /// How many records.
    pub(super) records: u64,
    /// Byte offset of its first record.
    pub(super) start: usize,
    /// Byte offset just past its last record.
    pub(super) end: usize,
}

impl Piece {
    fn empty_at(base: u64, offset: usize) -> Self {
        Piece {
            base,
            records: 0,
            start: offset,
            end: offset,
        }
    }
}

/// Splits a segment's bytes (header included, starting at sequence `base`)
/// into runs of valid records, cutting out torn tails and corrupt regions
/// (counted in `report`). The first piece starts right after the header and
/// may be empty; later pieces hold at least one record.
pub(super) fn scan_segment(
    bytes: &[u8],
    base: u64,
    max_record: usize,
    report: &mut RecoveryReport,
) -> Vec<Piece> {
    let mut pieces = vec![Piece::empty_at(base, SEGMENT_HEADER_LEN)];
    let mut off = SEGMENT_HEADER_LEN;
    let mut expected = base;
    while off < bytes.len() {
        if expected > MAX_SEQ {
            // No spool writes sequences beyond MAX_SEQ: the rest is not ours.
            report.corrupt_bytes += (bytes.len() - off) as u64;
            break;
        }
        match parse_record(&bytes[off..], max_record, expected) {
            Parsed::Record { size, .. } => {
                off += size;
                expected += 1;
                if let Some(p) = pieces.last_mut() {
                    p.records += 1;
                    p.end = off;
                }
            }
            Parsed::Incomplete { .. } => {
                report.torn_tail_bytes += (bytes.len() - off) as u64;
                break;
            }
            Parsed::Corrupt(why) => match resync(&bytes[off..], max_record, expected - 1) {
                Some((skip, seq)) => {
                    tracing::error!(offset = off, bytes = skip, error = %why, "corrupt region in spool segment cut out");
                    report.corrupt_bytes += skip as u64;
                    off += skip;
                    expected = seq;
                    pieces.push(Piece::empty_at(seq, off));
                }
                None => {
                    tracing::error!(offset = off, bytes = bytes.len() - off, error = %why, "corrupt spool segment tail truncated");
                    report.corrupt_bytes += (bytes.len() - off) as u64;
                    break;
                }
            },
        }
    }
    pieces
}

/// Sequences between consecutive pieces: what the cut regions held.
pub(super) fn gaps_between(pieces: &[Piece]) -> Vec<(u64, u64)> {
    pieces
        .windows(2)
        .filter_map(|w| {
            let (from, to) = (w[0].base + w[0].records, w[1].base - 1);
            (to >= from).then_some((from, to))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::format::{encode_record, SegmentHeader, RECORD_HEADER_LEN};
    use super::*;

    fn segment(base: u64, n: u64) -> Vec<u8> {
        let mut b = SegmentHeader {
            stream_id: 1,
            base_seq: base,
        }
        .encode()
        .to_vec();
        for seq in base..base + n {
            encode_record(seq, b"payload!", &mut b);
        }
        b
    }

    const REC: usize = RECORD_HEADER_LEN + 8;

    #[test]
    fn a_clean_segment_is_one_piece() {
        let b = segment(5, 3);
        let mut r = RecoveryReport::default();
        let p = scan_segment(&b, 5, 100, &mut r);
        assert_eq!(
            p,
            vec![Piece {
                base: 5,
                records: 3,
                start: 36,
                end: b.len()
            }]
        );
        assert!(r.is_clean());
        let header_only = segment(9, 0);
        let p = scan_segment(&header_only, 9, 100, &mut r);
        assert_eq!(p, vec![Piece::empty_at(9, SEGMENT_HEADER_LEN)]);
        assert!(gaps_between(&p).is_empty());
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let mut b = segment(1, 3);
        b.truncate(b.len() - 2);
        let mut r = RecoveryReport::default();
        let p = scan_segment(&b, 1, 100, &mut r);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].records, p[0].end), (2, SEGMENT_HEADER_LEN + 2 * REC));
        assert_eq!(r.torn_tail_bytes, (REC - 2) as u64);
        assert_eq!(r.corrupt_bytes, 0);
    }

    #[test]
    fn a_corrupt_middle_splits_the_segment() {
        let mut b = segment(10, 5);
        b[SEGMENT_HEADER_LEN + REC + RECORD_HEADER_LEN] ^= 1; // record 11's payload
        let mut r = RecoveryReport::default();
        let p = scan_segment(&b, 10, 100, &mut r);
        assert_eq!(
            p,
            vec![
                Piece {
                    base: 10,
                    records: 1,
                    start: 36,
                    end: 36 + REC
                },
                Piece {
                    base: 12,
                    records: 3,
                    start: 36 + 2 * REC,
                    end: b.len()
                },
            ]
        );
        assert_eq!(r.corrupt_bytes, REC as u64);
        assert_eq!(gaps_between(&p), vec![(11, 11)]);
    }

    #[test]
    fn garbage_after_the_records_is_corrupt_not_torn() {
        let mut b = segment(1, 2);
        b.extend_from_slice(&[0xff; 40]);
        let mut r = RecoveryReport::default();
        let p = scan_segment(&b, 1, 100, &mut r);
        assert_eq!((p.len(), p[0].records), (1, 2));
        assert_eq!((r.corrupt_bytes, r.torn_tail_bytes), (40, 0));
    }

    #[test]
    fn nothing_beyond_the_sequence_space_is_kept() {
        let b = segment(MAX_SEQ, 3);
        let mut r = RecoveryReport::default();
        let p = scan_segment(&b, MAX_SEQ, 100, &mut r);
        assert_eq!(p[0].records, 1);
        assert_eq!(r.corrupt_bytes, 2 * REC as u64);
    }
}
