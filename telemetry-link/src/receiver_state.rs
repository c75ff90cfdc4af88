//! The receiver's durable per-stream state: for each sender identity and
//! replica ([`StreamKey`]), the stream it is on and the highest sequence
//! applied. One small file per stream, replaced atomically (temp file,
//! fsync, rename, directory fsync) after every applied batch, with a
//! checksum: `sender-<identity>.state` for the default replica (the name
//! and layout every version has used), `sender-<identity>@<replica>.state`
//! for a named one. Identities and replica names are restricted to
//! `[A-Za-z0-9._-]`, so neither contains `@` or a path separator and the
//! name splits back unambiguously.
//!
//! A state file that fails its checksum is an error, not a reset: treating it
//! as "nothing applied" would hand every record the sender still holds to
//! the handler a second time. The operator decides (move the file aside).

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    fsutil::write_atomic, proto::replica::validate_replica, session::dedup::StreamCursor,
    tls::validate_identity,
};

/// Layout of a default replica's file.
const VERSION: u32 = 1;
/// Layout of a named replica's file (it names its replica too).
const REPLICA_VERSION: u32 = 2;
const PREFIX: &str = "sender-";
const SUFFIX: &str = ".state";
const SEPARATOR: char = '@';

/// One sender stream: a certificate identity and a replica name (empty:
/// the default replica).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct StreamKey {
    /// The sender's certificate identity.
    pub(crate) sender: Arc<str>,
    /// The replica (empty: the default one).
    pub(crate) replica: Arc<str>,
}

impl StreamKey {
    /// The stream of `replica` of `sender`.
    pub(crate) fn new(sender: &str, replica: &str) -> Self {
        Self {
            sender: Arc::from(sender),
            replica: Arc::from(replica),
        }
    }
}

impl std::fmt::Display for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.replica.is_empty() {
            f.write_str(&self.sender)
        } else {
            write!(f, "{}{SEPARATOR}{}", self.sender, self.replica)
        }
    }
}

/// A state directory problem.
#[derive(Debug, Error)]
pub enum StateError {
    /// File system error.
    #[error("state {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A state file is damaged.
    #[error("state file {} is corrupt; move it aside to accept this sender again (records it still holds may then be applied twice)", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
    },
    /// An identity or replica name that cannot name a file.
    #[error("invalid sender identity or replica {0:?}")]
    Identity(String),
}

/// A default replica's file.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    version: u32,
    identity: String,
    stream_id: u128,
    applied: u64,
}

/// A named replica's file.
#[derive(Debug, Serialize, Deserialize)]
struct StoredReplica {
    version: u32,
    identity: String,
    replica: String,
    stream_id: u128,
    applied: u64,
}

/// The state directory.
#[derive(Debug, Clone)]
pub(crate) struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Opens (creating) `dir` and checks that it is writable.
    pub(crate) fn open(dir: impl AsRef<Path>) -> Result<Self, StateError> {
        let dir = dir.as_ref().to_path_buf();
        let io = |source| StateError::Io {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        let store = Self { dir };
        store.check_writable()?;
        Ok(store)
    }

    /// Writes and removes a probe file (used by readiness checks).
    pub(crate) fn check_writable(&self) -> Result<(), StateError> {
        let probe = self.dir.join(".write-probe");
        let io = |source| StateError::Io {
            path: probe.clone(),
            source,
        };
        fs::write(&probe, b"ok").map_err(io)?;
        fs::remove_file(&probe).map_err(io)
    }

    fn path_for(&self, key: &StreamKey) -> Result<PathBuf, StateError> {
        let bad = || StateError::Identity(key.to_string());
        validate_identity(&key.sender).map_err(|_| bad())?;
        validate_replica(&key.replica).map_err(|_| bad())?;
        Ok(self.dir.join(format!("{PREFIX}{key}{SUFFIX}")))
    }

    /// The stored cursor of `key`, if any.
    pub(crate) fn load(&self, key: &StreamKey) -> Result<Option<StreamCursor>, StateError> {
        let path = self.path_for(key)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let corrupt = || StateError::Corrupt { path: path.clone() };
        let split = bytes.len().checked_sub(4).ok_or_else(corrupt)?;
        let (body, crc) = bytes.split_at(split);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(corrupt());
        }
        let (version, _) = postcard::take_from_bytes::<u32>(body).map_err(|_| corrupt())?;
        let (identity, replica, stream_id, applied) = match version {
            VERSION => {
                let s: Stored = postcard::from_bytes(body).map_err(|_| corrupt())?;
                (s.identity, String::new(), s.stream_id, s.applied)
            }
            REPLICA_VERSION => {
                let s: StoredReplica = postcard::from_bytes(body).map_err(|_| corrupt())?;
                (s.identity, s.replica, s.stream_id, s.applied)
            }
            _ => return Err(corrupt()),
        };
        if *identity != *key.sender || *replica != *key.replica {
            return Err(corrupt());
        }
        Ok(Some(StreamCursor::new(stream_id, applied)))
    }

    /// Persists `cursor` for `key` (atomic replace, fsynced).
    pub(crate) fn save(&self, key: &StreamKey, cursor: &StreamCursor) -> Result<(), StateError> {
        let path = self.path_for(key)?;
        let encoded = if key.replica.is_empty() {
            postcard::to_allocvec(&Stored {
                version: VERSION,
                identity: key.sender.to_string(),
                stream_id: cursor.stream_id(),
                applied: cursor.applied(),
            })
        } else {
            postcard::to_allocvec(&StoredReplica {
                version: REPLICA_VERSION,
                identity: key.sender.to_string(),
                replica: key.replica.to_string(),
                stream_id: cursor.stream_id(),
                applied: cursor.applied(),
            })
        };
        let mut bytes = encoded.map_err(|e| StateError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        write_atomic(&path, &bytes).map_err(|source| StateError::Io { path, source })
    }

    /// Every stored stream and its cursor, sorted (unreadable files are
    /// skipped with a warning).
    pub(crate) fn list(&self) -> Vec<(StreamKey, StreamCursor)> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(stem) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|n| n.strip_suffix(SUFFIX))
            else {
                continue;
            };
            let key = match stem.split_once(SEPARATOR) {
                Some((_, "")) => continue,
                Some((id, replica)) => StreamKey::new(id, replica),
                None => StreamKey::new(stem, ""),
            };
            match self.load(&key) {
                Ok(Some(c)) => out.push((key, c)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "skipping state file"),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_and_corruption() {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::open(d.path()).unwrap();
        let a = StreamKey::new("a", "");
        assert_eq!(s.load(&a).unwrap(), None);
        s.save(&a, &StreamCursor::new(9, 42)).unwrap();
        assert_eq!(s.load(&a).unwrap(), Some(StreamCursor::new(9, 42)));
        s.save(&a, &StreamCursor::new(9, 43)).unwrap();
        assert_eq!(s.list(), vec![(a.clone(), StreamCursor::new(9, 43))]);
        let p = d.path().join("sender-a.state");
        let mut b = fs::read(&p).unwrap();
        b[3] ^= 1;
        fs::write(&p, b).unwrap();
        assert!(matches!(s.load(&a), Err(StateError::Corrupt { .. })));
        for bad in [StreamKey::new("../etc", ""), StreamKey::new("a", "../b")] {
            assert!(matches!(s.load(&bad), Err(StateError::Identity(_))));
        }
    }

    #[test]
    fn each_replica_has_its_own_file_and_the_default_keeps_the_old_one() {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::open(d.path()).unwrap();
        let default = StreamKey::new("c1", "");
        let r1 = StreamKey::new("c1", "r1");
        let r2 = StreamKey::new("c1", "r.2-x_y");
        s.save(&default, &StreamCursor::new(1, 10)).unwrap();
        s.save(&r1, &StreamCursor::new(2, 20)).unwrap();
        s.save(&r2, &StreamCursor::new(3, 30)).unwrap();
        let mut names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "sender-c1.state",
                "sender-c1@r.2-x_y.state",
                "sender-c1@r1.state"
            ]
        );
        assert_eq!(
            s.list(),
            vec![
                (default.clone(), StreamCursor::new(1, 10)),
                (r2.clone(), StreamCursor::new(3, 30)),
                (r1.clone(), StreamCursor::new(2, 20)),
            ]
        );
        assert_eq!(s.load(&r1).unwrap(), Some(StreamCursor::new(2, 20)));

        // A file renamed to another stream is not taken for that stream.
        fs::copy(
            d.path().join("sender-c1@r1.state"),
            d.path().join("sender-c1@r3.state"),
        )
        .unwrap();
        assert!(matches!(
            s.load(&StreamKey::new("c1", "r3")),
            Err(StateError::Corrupt { .. })
        ));
        fs::copy(
            d.path().join("sender-c1.state"),
            d.path().join("sender-c1@r4.state"),
        )
        .unwrap();
        assert!(matches!(
            s.load(&StreamKey::new("c1", "r4")),
            Err(StateError::Corrupt { .. })
        ));
    }

    /// A default replica's file has the layout of the version-1 state
    /// file, byte for byte, so existing state directories keep working in
    /// both directions.
    #[test]
    fn the_default_replica_file_has_the_original_layout() {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::open(d.path()).unwrap();
        s.save(&StreamKey::new("edge", ""), &StreamCursor::new(0xabc, 77))
            .unwrap();
        let mut want = postcard::to_allocvec(&(1u32, "edge", 0xabcu128, 77u64)).unwrap();
        let crc = crc32c::crc32c(&want);
        want.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(fs::read(d.path().join("sender-edge.state")).unwrap(), want);
    }
}
