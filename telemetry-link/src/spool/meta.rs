//! The metadata file (`spool.meta`): the stream id, the acknowledged
//! position, the floor of the next sequence and the loss accounting,
//! postcard-encoded with a CRC32C, replaced atomically (temp file, fsync,
//! rename, directory fsync).
//!
//! A metadata file that is damaged or from another version is not used:
//! recovery rebuilds what it can from the segments and says so
//! ([`RecoveryReport::meta_rebuilt`]).

use std::{fs, io, path::Path};

use serde::{Deserialize, Serialize};

use super::{error::io_err, sync::WRITE_ATOMIC_SYNCS, RecoveryReport, Spool, SpoolError, MAX_SEQ};
use crate::fsutil::write_atomic;

/// Name of the metadata file in the spool directory.
pub(super) const META_FILE: &str = "spool.meta";
const META_VERSION: u32 = 2;

/// The metadata file's contents.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Meta {
    version: u32,
    pub(super) stream_id: u128,
    pub(super) acked: u64,
    pub(super) next_seq_floor: u64,
    pub(super) dropped_total: u64,
    pub(super) dropped: Vec<(u64, u64)>,
    pub(super) uncertain: Vec<(u64, u64)>,
}

fn encode_meta(meta: &Meta) -> Vec<u8> {
    let mut v = postcard::to_allocvec(meta).unwrap_or_default();
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

fn decode_meta(bytes: &[u8]) -> Option<Meta> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let m: Meta = postcard::from_bytes(body).ok()?;
    (m.version == META_VERSION && m.next_seq_floor <= MAX_SEQ + 1 && m.acked <= MAX_SEQ)
        .then_some(m)
}

/// Recovery step: reads the metadata file. `None` when there is none or
/// it cannot be used (then `report.meta_rebuilt` is set).
pub(super) fn read_meta(
    dir: &Path,
    report: &mut RecoveryReport,
) -> Result<Option<Meta>, SpoolError> {
    let meta_path = dir.join(META_FILE);
    match fs::read(&meta_path) {
        Ok(bytes) => {
            let m = decode_meta(&bytes);
            report.meta_rebuilt = m.is_none();
            Ok(m)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&meta_path)(e)),
    }
}

impl Spool {
    /// Writes the metadata file from the spool's state.
    pub(super) fn write_meta(&mut self) -> Result<(), SpoolError> {
        let meta = Meta {
            version: META_VERSION,
            stream_id: self.stream_id,
            acked: self.acked,
            next_seq_floor: self.next_seq,
            dropped_total: self.dropped_total,
            dropped: self.dropped.ranges().to_vec(),
            uncertain: self.uncertain.ranges().to_vec(),
        };
        let path = self.dir.join(META_FILE);
        self.count_syncs(WRITE_ATOMIC_SYNCS);
        write_atomic(&path, &encode_meta(&meta)).map_err(io_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(acked: u64, next_seq_floor: u64) -> Meta {
        Meta {
            version: META_VERSION,
            stream_id: 7,
            acked,
            next_seq_floor,
            dropped_total: 3,
            dropped: vec![(2, 4)],
            uncertain: vec![],
        }
    }

    #[test]
    fn roundtrip_and_damage() {
        let bytes = encode_meta(&meta(5, 9));
        let m = decode_meta(&bytes).unwrap();
        assert_eq!((m.stream_id, m.acked, m.next_seq_floor), (7, 5, 9));
        assert_eq!(m.dropped, vec![(2, 4)]);
        let mut bad = bytes.clone();
        bad[1] ^= 1;
        assert!(decode_meta(&bad).is_none(), "checksum");
        assert!(decode_meta(&bytes[..3]).is_none(), "too short");
        assert!(decode_meta(&encode_meta(&meta(MAX_SEQ + 1, 9))).is_none());
        assert!(decode_meta(&encode_meta(&meta(1, MAX_SEQ + 2))).is_none());
        let mut other = meta(1, 2);
        other.version = 1;
        assert!(decode_meta(&encode_meta(&other)).is_none(), "version");
    }

    #[test]
    fn reading_a_missing_or_damaged_file() {
        let d = tempfile::tempdir().unwrap();
        let mut report = RecoveryReport::default();
        assert!(read_meta(d.path(), &mut report).unwrap().is_none());
        assert!(!report.meta_rebuilt, "no file: nothing to rebuild");
        fs::write(d.path().join(META_FILE), b"garbage").unwrap();
        assert!(read_meta(d.path(), &mut report).unwrap().is_none());
        assert!(report.meta_rebuilt);
        fs::write(d.path().join(META_FILE), encode_meta(&meta(1, 2))).unwrap();
        let mut report = RecoveryReport::default();
        assert_eq!(read_meta(d.path(), &mut report).unwrap().unwrap().acked, 1);
        assert!(!report.meta_rebuilt);
    }
}
