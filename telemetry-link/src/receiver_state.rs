//! The receiver's durable per-sender state: for each sender identity, the
//! stream it is on and the highest sequence applied. One small file per
//! sender (`sender-<identity>.state`), replaced atomically (temp file, fsync,
//! rename, directory fsync) after every applied batch, with a checksum.
//!
//! A state file that fails its checksum is an error, not a reset: treating it
//! as "nothing applied" would hand every record the sender still holds to
//! the handler a second time. The operator decides (move the file aside).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{fsutil::write_atomic, session::dedup::StreamCursor, tls::validate_identity};

const VERSION: u32 = 1;
const PREFIX: &str = "sender-";
const SUFFIX: &str = ".state";

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
    /// An identity that cannot name a file.
    #[error("invalid sender identity {0:?}")]
    Identity(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    version: u32,
    identity: String,
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

    fn path_for(&self, identity: &str) -> Result<PathBuf, StateError> {
        validate_identity(identity).map_err(|_| StateError::Identity(identity.to_owned()))?;
        Ok(self.dir.join(format!("{PREFIX}{identity}{SUFFIX}")))
    }

    /// The stored cursor of `identity`, if any.
    pub(crate) fn load(&self, identity: &str) -> Result<Option<StreamCursor>, StateError> {
        let path = self.path_for(identity)?;
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
        let s: Stored = postcard::from_bytes(body).map_err(|_| corrupt())?;
        if s.version != VERSION || s.identity != identity {
            return Err(corrupt());
        }
        Ok(Some(StreamCursor::new(s.stream_id, s.applied)))
    }

    /// Persists `cursor` for `identity` (atomic replace, fsynced).
    pub(crate) fn save(&self, identity: &str, cursor: &StreamCursor) -> Result<(), StateError> {
        let path = self.path_for(identity)?;
        let mut bytes = postcard::to_allocvec(&Stored {
            version: VERSION,
            identity: identity.to_owned(),
            stream_id: cursor.stream_id(),
            applied: cursor.applied(),
        })
        .map_err(|e| StateError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        write_atomic(&path, &bytes).map_err(|source| StateError::Io { path, source })
    }

    /// Every stored sender and its cursor (unreadable files are skipped
    /// with a warning).
    pub(crate) fn list(&self) -> Vec<(String, StreamCursor)> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|n| n.strip_suffix(SUFFIX))
            else {
                continue;
            };
            match self.load(id) {
                Ok(Some(c)) => out.push((id.to_owned(), c)),
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
        assert_eq!(s.load("a").unwrap(), None);
        s.save("a", &StreamCursor::new(9, 42)).unwrap();
        assert_eq!(s.load("a").unwrap(), Some(StreamCursor::new(9, 42)));
        s.save("a", &StreamCursor::new(9, 43)).unwrap();
        assert_eq!(s.list(), vec![("a".to_string(), StreamCursor::new(9, 43))]);
        let p = d.path().join("sender-a.state");
        let mut b = fs::read(&p).unwrap();
        b[3] ^= 1;
        fs::write(&p, b).unwrap();
        assert!(matches!(s.load("a"), Err(StateError::Corrupt { .. })));
        assert!(matches!(s.load("../etc"), Err(StateError::Identity(_))));
    }
}
