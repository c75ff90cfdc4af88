//! Producer marks: for each producer key, the stream it is on and the
//! highest source sequence whose push is queued; and the marks file that
//! keeps them once the entries carrying them are gone.
//!
//! While an entry is queued, its envelope carries its push's mark, so a
//! queue rebuilds the marks at open by reading its entries. Before entries
//! are forgotten (acknowledged, or dropped by the cap) the marks are written
//! to `producers.marks` in the queue directory: postcard, a CRC32C, and an
//! atomic replace (temp file, fsync, rename, directory fsync). A damaged
//! marks file is not an error: the queue warns and keeps the marks its
//! entries carry (a producer may then queue a redelivered push again — a
//! duplicate, never a loss).

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::QueueError;
use crate::fsutil::write_atomic;

/// Name of the marks file in the queue directory.
const MARKS_FILE: &str = "producers.marks";
const MARKS_VERSION: u32 = 1;
/// A marks file larger than this is not read (treated as damaged).
const MAX_MARKS_FILE_BYTES: u64 = 16 << 20;

/// How far a producer has queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerMark {
    /// The producer's stream (a new stream starts its marks afresh).
    pub stream_id: u128,
    /// Highest source sequence of that stream whose push is queued.
    pub seq: u64,
}

/// The marks of every producer seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Marks {
    by_key: HashMap<String, ProducerMark>,
}

#[derive(Debug, Serialize, Deserialize)]
struct MarksFile {
    version: u32,
    marks: Vec<(String, u128, u64)>,
}

impl Marks {
    /// The mark of `key`.
    pub(super) fn get(&self, key: &str) -> Option<ProducerMark> {
        self.by_key.get(key).copied()
    }

    /// Records that `key` queued `stream_id` up to `seq`: raises the mark
    /// on the same stream, replaces it on another. Returns whether it
    /// changed.
    pub(super) fn raise(&mut self, key: &str, stream_id: u128, seq: u64) -> bool {
        match self.by_key.get_mut(key) {
            Some(mark) if mark.stream_id == stream_id => {
                let changed = seq > mark.seq;
                mark.seq = mark.seq.max(seq);
                changed
            }
            Some(mark) => {
                *mark = ProducerMark { stream_id, seq };
                true
            }
            None => {
                self.by_key
                    .insert(key.to_owned(), ProducerMark { stream_id, seq });
                true
            }
        }
    }

    /// How many source sequences from `first_seq` on `key` has queued on
    /// `stream_id`.
    pub(super) fn already_queued(&self, key: &str, stream_id: u128, first_seq: u64) -> u64 {
        match self.get(key) {
            Some(m) if m.stream_id == stream_id && m.seq >= first_seq => m.seq - first_seq + 1,
            _ => 0,
        }
    }

    fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut marks: Vec<(String, u128, u64)> = self
            .by_key
            .iter()
            .map(|(k, m)| (k.clone(), m.stream_id, m.seq))
            .collect();
        marks.sort();
        let mut bytes = postcard::to_allocvec(&MarksFile {
            version: MARKS_VERSION,
            marks,
        })?;
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        Ok(bytes)
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return None;
        }
        let file: MarksFile = postcard::from_bytes(body).ok()?;
        if file.version != MARKS_VERSION {
            return None;
        }
        let mut marks = Marks::default();
        for (key, stream_id, seq) in file.marks {
            marks.by_key.insert(key, ProducerMark { stream_id, seq });
        }
        Some(marks)
    }
}

fn marks_path(dir: &Path) -> PathBuf {
    dir.join(MARKS_FILE)
}

fn marks_err(path: PathBuf) -> impl FnOnce(io::Error) -> QueueError {
    move |source| QueueError::Marks { path, source }
}

/// Reads the marks file of the queue in `dir`. Returns the marks (empty if
/// there is no file) and whether a file was there but could not be used.
pub(super) fn read_marks(dir: &Path) -> Result<(Marks, bool), QueueError> {
    let path = marks_path(dir);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Marks::default(), false)),
        Err(e) => return Err(marks_err(path)(e)),
    };
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_MARKS_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(marks_err(path.clone()))?;
    let marks = (bytes.len() as u64 <= MAX_MARKS_FILE_BYTES)
        .then(|| Marks::decode(&bytes))
        .flatten();
    match marks {
        Some(m) => Ok((m, false)),
        None => {
            tracing::warn!(file = %path.display(), "queue marks file damaged; keeping the marks of queued entries");
            Ok((Marks::default(), true))
        }
    }
}

/// Replaces the marks file of the queue in `dir` with `marks`.
pub(super) fn write_marks(dir: &Path, marks: &Marks) -> Result<(), QueueError> {
    let bytes = marks.encode().map_err(QueueError::Encode)?;
    let path = marks_path(dir);
    write_atomic(&path, &bytes).map_err(marks_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_rise_within_a_stream_and_restart_on_a_new_one() {
        let mut m = Marks::default();
        assert!(m.raise("a", 1, 10));
        assert!(!m.raise("a", 1, 5), "never lowered");
        assert_eq!(
            m.get("a"),
            Some(ProducerMark {
                stream_id: 1,
                seq: 10
            })
        );
        assert_eq!(m.already_queued("a", 1, 8), 3);
        assert_eq!(m.already_queued("a", 1, 11), 0);
        assert_eq!(m.already_queued("a", 2, 1), 0);
        assert_eq!(m.already_queued("b", 1, 1), 0);
        assert!(m.raise("a", 2, 3), "a new stream starts over");
        assert_eq!(
            m.get("a"),
            Some(ProducerMark {
                stream_id: 2,
                seq: 3
            })
        );
    }

    #[test]
    fn the_file_roundtrips_and_damage_is_reported() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_marks(d.path()).unwrap(), (Marks::default(), false));
        let mut m = Marks::default();
        m.raise("a", 1, 10);
        m.raise("b", u128::MAX, u64::MAX);
        write_marks(d.path(), &m).unwrap();
        assert_eq!(read_marks(d.path()).unwrap(), (m, false));
        let p = marks_path(d.path());
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[2] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(read_marks(d.path()).unwrap(), (Marks::default(), true));
        std::fs::write(&p, b"").unwrap();
        assert_eq!(read_marks(d.path()).unwrap(), (Marks::default(), true));
    }
}
