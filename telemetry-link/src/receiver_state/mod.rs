//! The receiver's durable per-stream state: for each sender identity and
//! replica ([`StreamKey`]), the stream it is on and the highest sequence
//! applied, kept in an append-only journal with a snapshot beside it.
//!
//! * `format` — the record, journal and snapshot formats and the
//!   recovery fold, without IO.
//! * `journal` — the files: recovery at open, the writer's group commit
//!   (one write and one fdatasync per cycle, for every stream at once),
//!   compaction, the migration of the older per-stream files.
//! * `legacy` — the per-stream files of the older layout, read once.
//! * `crash` — named crash points for the crash tests (test builds only).
//!
//! [`StateStore`] is what sessions see: the durable position of every
//! stream, held in memory (one entry per stream) and updated by the writer
//! only once a position is on disk. Damage is an error, not a reset:
//! treating a damaged file as "nothing applied" would hand every record a
//! sender still holds to the handler a second time. The operator decides
//! (moves the file aside).

pub(crate) mod crash;
pub mod format;
pub(crate) mod journal;
pub(crate) mod legacy;

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use thiserror::Error;

pub use format::StateDamage;

use crate::{
    proto::replica::validate_replica, session::dedup::StreamCursor, tls::validate_identity,
};

/// One sender stream: a certificate identity and a replica name (empty:
/// the default replica).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// The sender's certificate identity.
    pub sender: Arc<str>,
    /// The replica (empty: the default one).
    pub replica: Arc<str>,
}

impl StreamKey {
    /// The stream of `replica` of `sender`.
    pub fn new(sender: &str, replica: &str) -> Self {
        Self {
            sender: Arc::from(sender),
            replica: Arc::from(replica),
        }
    }

    /// Whether the identity and the replica name follow their rules (the
    /// receiver only has such streams).
    pub fn is_valid(&self) -> bool {
        validate_identity(&self.sender).is_ok() && validate_replica(&self.replica).is_ok()
    }
}

impl std::fmt::Display for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.replica.is_empty() {
            f.write_str(&self.sender)
        } else {
            write!(f, "{}@{}", self.sender, self.replica)
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
    #[error("state file {} is damaged: {damage}; move it aside to go on (records the senders it covers still hold may then be applied twice)", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        damage: StateDamage,
    },
    /// An identity or replica name that cannot name a stream.
    #[error("invalid sender identity or replica {0:?}")]
    Identity(String),
}

/// The durable positions of every stream, as sessions see them.
#[derive(Debug, Clone)]
pub(crate) struct StateStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// Every stream's durable position.
    positions: Mutex<HashMap<StreamKey, StreamCursor>>,
    /// Streams whose file of the older layout is damaged, and that file.
    damaged: Mutex<HashMap<StreamKey, PathBuf>>,
}

impl StateStore {
    fn new(
        dir: &Path,
        positions: HashMap<StreamKey, StreamCursor>,
        damaged: Vec<(StreamKey, PathBuf)>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                positions: Mutex::new(positions),
                damaged: Mutex::new(damaged.into_iter().collect()),
            }),
        }
    }

    /// The state directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Writes and removes a probe file (used by readiness checks).
    pub(crate) fn check_writable(&self) -> Result<(), StateError> {
        let probe = self.inner.dir.join(".write-probe");
        let io = |source| StateError::Io {
            path: probe.clone(),
            source,
        };
        journal::create_private_file(&probe)
            .and_then(|mut f| io::Write::write_all(&mut f, b"ok"))
            .map_err(io)?;
        fs::remove_file(&probe).map_err(io)
    }

    /// The durable position of `key`, if it has one. A stream whose file
    /// of the older layout is damaged is refused until that file is moved
    /// aside.
    pub(crate) fn load(&self, key: &StreamKey) -> Result<Option<StreamCursor>, StateError> {
        if !key.is_valid() {
            return Err(StateError::Identity(key.to_string()));
        }
        {
            let mut damaged = lock(&self.inner.damaged);
            if let Some(path) = damaged.get(key) {
                if path.exists() {
                    return Err(StateError::Corrupt {
                        path: path.clone(),
                        damage: StateDamage::StreamFile,
                    });
                }
                damaged.remove(key);
            }
        }
        Ok(lock(&self.inner.positions).get(key).copied())
    }

    /// Every stream's durable position, sorted.
    pub(crate) fn positions(&self) -> Vec<(StreamKey, StreamCursor)> {
        let mut all: Vec<_> = lock(&self.inner.positions)
            .iter()
            .map(|(k, c)| (k.clone(), *c))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Records positions the writer made durable.
    fn record_durable(&self, entries: &[(StreamKey, StreamCursor)]) {
        let mut positions = lock(&self.inner.positions);
        for (key, cursor) in entries {
            match positions.get_mut(key) {
                Some(held) => *held = *cursor,
                None => {
                    positions.insert(key.clone(), *cursor);
                }
            }
        }
    }

    /// Appends a snapshot of every durable position.
    fn encode_snapshot(&self, generation: u64, out: &mut Vec<u8>) {
        format::encode_snapshot(generation, lock(&self.inner.positions).iter(), out);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
