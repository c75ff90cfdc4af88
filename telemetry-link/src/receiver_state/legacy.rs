//! The per-stream state files of the older layout, read once to migrate
//! them into the journal: `sender-<identity>.state` for the default replica,
//! `sender-<identity>@<replica>.state` for a named one, each
//! `postcard((version, identity, [replica,] stream_id, applied))` followed
//! by its CRC32C. Identities and replica names are restricted to
//! `[A-Za-z0-9._-]`, so neither contains `@` or a path separator and a name
//! splits back unambiguously.
//!
//! [`parse`] is the format, without IO; [`scan`] reads a directory. A file
//! that fails its checksum or names another stream than its file name is
//! reported as damaged, not skipped: treating it as "nothing applied" would
//! hand every record that sender still holds to the handler a second time.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::StreamKey;
use crate::session::dedup::StreamCursor;

/// Layout of a default replica's file.
const VERSION: u32 = 1;
/// Layout of a named replica's file (it names its replica too).
const REPLICA_VERSION: u32 = 2;
const PREFIX: &str = "sender-";
const SUFFIX: &str = ".state";
const SEPARATOR: char = '@';
/// Larger files are not state files of this layout (they hold at most two
/// names and two numbers).
const MAX_FILE_LEN: u64 = 1024;

/// A default replica's file.
#[derive(Debug, Deserialize)]
struct Stored {
    version: u32,
    identity: String,
    stream_id: u128,
    applied: u64,
}

/// A named replica's file.
#[derive(Debug, Deserialize)]
struct StoredReplica {
    version: u32,
    identity: String,
    replica: String,
    stream_id: u128,
    applied: u64,
}

/// The stream a file name belongs to, if it is a state file's name.
pub(crate) fn key_of(file_name: &str) -> Option<StreamKey> {
    let stem = file_name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    match stem.split_once(SEPARATOR) {
        Some((_, "")) => None,
        Some((id, replica)) => Some(StreamKey::new(id, replica)),
        None => Some(StreamKey::new(stem, "")),
    }
}

/// The cursor in a state file's bytes, if they are a valid file for `key`.
pub(crate) fn parse(key: &StreamKey, bytes: &[u8]) -> Option<StreamCursor> {
    if bytes.len() as u64 > MAX_FILE_LEN {
        return None;
    }
    let split = bytes.len().checked_sub(4)?;
    let (body, crc) = bytes.split_at(split);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let (version, _) = postcard::take_from_bytes::<u32>(body).ok()?;
    let (identity, replica, stream_id, applied) = match version {
        VERSION => {
            let s: Stored = postcard::from_bytes(body).ok()?;
            debug_assert_eq!(s.version, VERSION);
            (s.identity, String::new(), s.stream_id, s.applied)
        }
        REPLICA_VERSION => {
            let s: StoredReplica = postcard::from_bytes(body).ok()?;
            debug_assert_eq!(s.version, REPLICA_VERSION);
            (s.identity, s.replica, s.stream_id, s.applied)
        }
        _ => return None,
    };
    if *identity != *key.sender || *replica != *key.replica {
        return None;
    }
    Some(StreamCursor::new(stream_id, applied))
}

/// The state files found in a directory.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// Valid files: their stream, cursor and path.
    pub(crate) valid: Vec<(StreamKey, StreamCursor, PathBuf)>,
    /// Damaged files: their stream and path.
    pub(crate) damaged: Vec<(StreamKey, PathBuf)>,
}

/// Reads every state file of the older layout in `dir`. Names that are not
/// a valid identity and replica are skipped with a warning.
pub(crate) fn scan(dir: &Path) -> io::Result<Found> {
    let mut found = Found::default();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(key) = name.to_str().and_then(key_of) else {
            continue;
        };
        if !key.is_valid() {
            tracing::warn!(file = ?name, "skipping a state file whose name is not a sender stream");
            continue;
        }
        let path = entry.path();
        match read_bounded(&path)?.and_then(|bytes| parse(&key, &bytes)) {
            Some(cursor) => found.valid.push((key, cursor, path)),
            None => found.damaged.push((key, path)),
        }
    }
    Ok(found)
}

/// A file's bytes; `None` when it is larger than any state file.
fn read_bounded(path: &Path) -> io::Result<Option<Vec<u8>>> {
    if fs::metadata(path)?.len() > MAX_FILE_LEN {
        return Ok(None);
    }
    fs::read(path).map(Some)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A state file of the older layout, as that receiver wrote it.
    pub(crate) fn encode(key: &StreamKey, cursor: StreamCursor) -> Vec<u8> {
        let mut bytes = if key.replica.is_empty() {
            postcard::to_allocvec(&(VERSION, &*key.sender, cursor.stream_id(), cursor.applied()))
        } else {
            postcard::to_allocvec(&(
                REPLICA_VERSION,
                &*key.sender,
                &*key.replica,
                cursor.stream_id(),
                cursor.applied(),
            ))
        }
        .unwrap();
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Writes `key`'s file of the older layout into `dir`.
    pub(crate) fn write(dir: &Path, key: &StreamKey, cursor: StreamCursor) -> PathBuf {
        let path = dir.join(format!("{PREFIX}{key}{SUFFIX}"));
        fs::write(&path, encode(key, cursor)).unwrap();
        path
    }

    #[test]
    fn names_split_back_into_streams() {
        assert_eq!(key_of("sender-a.state"), Some(StreamKey::new("a", "")));
        assert_eq!(
            key_of("sender-c1@r.2-x_y.state"),
            Some(StreamKey::new("c1", "r.2-x_y"))
        );
        assert_eq!(key_of("sender-a@.state"), None);
        assert_eq!(key_of("sender-a.state.tmp"), None);
        assert_eq!(key_of("reset.key"), None);
    }

    /// The default replica's file has the layout of the version-1 state
    /// file, byte for byte.
    #[test]
    fn reads_both_layouts_and_refuses_damage_or_another_streams_file() {
        let default = StreamKey::new("edge", "");
        let mut want = postcard::to_allocvec(&(1u32, "edge", 0xabcu128, 77u64)).unwrap();
        let crc = crc32c::crc32c(&want);
        want.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(encode(&default, StreamCursor::new(0xabc, 77)), want);
        assert_eq!(parse(&default, &want), Some(StreamCursor::new(0xabc, 77)));

        let r1 = StreamKey::new("edge", "r1");
        let named = encode(&r1, StreamCursor::new(2, 20));
        assert_eq!(parse(&r1, &named), Some(StreamCursor::new(2, 20)));
        // A file renamed to another stream is not taken for that stream.
        assert_eq!(parse(&StreamKey::new("edge", "r3"), &named), None);
        assert_eq!(parse(&StreamKey::new("edge", "r4"), &want), None);
        let mut bad = want.clone();
        bad[3] ^= 1;
        assert_eq!(parse(&default, &bad), None);
        assert_eq!(parse(&default, &[]), None);
    }

    #[test]
    fn scan_sorts_valid_damaged_and_foreign_files() {
        let d = tempfile::tempdir().unwrap();
        let a = StreamKey::new("a", "");
        let b = StreamKey::new("b", "r1");
        write(d.path(), &a, StreamCursor::new(1, 10));
        let pb = write(d.path(), &b, StreamCursor::new(2, 20));
        fs::write(d.path().join("sender-c.state"), b"garbage").unwrap();
        fs::write(d.path().join("sender-bad name.state"), b"x").unwrap();
        fs::write(d.path().join("positions.journal"), b"x").unwrap();
        let mut found = scan(d.path()).unwrap();
        found.valid.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            found.valid,
            vec![
                (a, StreamCursor::new(1, 10), d.path().join("sender-a.state")),
                (b, StreamCursor::new(2, 20), pb)
            ]
        );
        assert_eq!(
            found.damaged,
            vec![(StreamKey::new("c", ""), d.path().join("sender-c.state"))]
        );
    }
}
