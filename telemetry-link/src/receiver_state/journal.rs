//! The files behind the receiver's positions, and their one writer.
//!
//! `positions.journal` is append-only: each write cycle appends the newest
//! position of every stream submitted since the last cycle in one `write`,
//! then makes it durable with one `fdatasync` ([`Journal::commit`]); only
//! then do those positions count as durable (and may be acknowledged).
//! `positions.snapshot` holds the position of every stream as of the
//! journal's start.
//!
//! **Compaction** ([`Journal::compact`]), when the journal outgrows
//! [`JournalOptions::compact_bytes`] or twice the last snapshot (so its
//! cost per record stays constant however many streams there are), after a
//! failed write, and once at every open:
//! 1. the snapshot of generation `g + 1` (every durable position) is
//!    written under a temporary name and synced;
//! 2. renamed over `positions.snapshot`, and the directory synced;
//! 3. a new, empty journal of generation `g + 1` is written under a
//!    temporary name, synced, renamed over `positions.journal`, and the
//!    directory synced.
//!
//! A crash anywhere leaves either the old snapshot with its journal (before
//! 2), or the new snapshot with the old journal — ignored, being older than
//! the snapshot, which holds all of it — (between 2 and 3), or the new pair:
//! recovery finds every durable position in each case, and nothing else
//! (temporary files are removed at open). A crash inside an append leaves a
//! torn record at the journal's end; recovery drops it (those positions
//! were never durable, so never acknowledged), and the compaction at open
//! starts a clean journal.
//!
//! Directories are created 0700 and files 0600. Every sync is counted in
//! `telemetry_link_state_syncs_total`.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use prometheus::IntCounter;
use tracing::{info, warn};

use super::{
    crash,
    format::{self, DamagedFile, JOURNAL_MAGIC},
    legacy, StateError, StateStore, StreamKey,
};
use crate::session::dedup::StreamCursor;

/// The journal's file name.
pub(crate) const JOURNAL_FILE: &str = "positions.journal";
/// The snapshot's file name.
pub(crate) const SNAPSHOT_FILE: &str = "positions.snapshot";
/// Suffix of a file being written, before its rename.
const TMP_SUFFIX: &str = ".tmp";
/// Default journal size that triggers a compaction.
pub(crate) const DEFAULT_COMPACT_BYTES: u64 = 4 << 20;

/// How the journal is kept.
#[derive(Debug, Clone)]
pub(crate) struct JournalOptions {
    /// Compact once the journal is larger than this (and than twice the
    /// last snapshot).
    pub(crate) compact_bytes: u64,
    /// Counts every fsync and fdatasync.
    pub(crate) syncs: IntCounter,
}

impl JournalOptions {
    /// Default options counting syncs in `syncs`.
    pub(crate) fn new(syncs: IntCounter) -> Self {
        Self {
            compact_bytes: crash::compact_bytes().unwrap_or(DEFAULT_COMPACT_BYTES),
            syncs,
        }
    }
}

/// What opening the state directory found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Streams with a position.
    pub(crate) streams: usize,
    /// Per-stream files of the older layout folded in (and removed).
    pub(crate) migrated: usize,
    /// Per-stream files of the older layout that are damaged (kept; their
    /// streams are refused until the file is moved aside).
    pub(crate) damaged: usize,
    /// Journal records read.
    pub(crate) journal_records: u64,
    /// Bytes dropped from the journal's end (a torn write).
    pub(crate) torn_bytes: u64,
}

/// The single writer of the position files.
#[derive(Debug)]
pub(crate) struct Journal {
    store: StateStore,
    /// The journal, open for appending; `None` after a failed write, until
    /// a compaction starts a new one.
    file: Option<File>,
    generation: u64,
    /// Bytes in the journal.
    bytes: u64,
    /// Bytes of the last snapshot.
    snapshot_bytes: u64,
    options: JournalOptions,
    buf: Vec<u8>,
}

/// Opens (creating) the state directory: recovers every position from the
/// snapshot, the journal and any files of the older layout, then compacts
/// (which also drops a torn tail and removes the migrated files).
pub(crate) fn open(
    dir: &Path,
    options: JournalOptions,
) -> Result<(StateStore, Journal, Recovery), StateError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Io { path, source }
    };
    create_private_dir(dir).map_err(io_err(dir))?;
    for name in [SNAPSHOT_FILE, JOURNAL_FILE] {
        let tmp = tmp_path(&dir.join(name));
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&tmp)(e)),
            _ => {}
        }
    }
    let found = legacy::scan(dir).map_err(io_err(dir))?;
    let (snapshot_path, journal_path) = (dir.join(SNAPSHOT_FILE), dir.join(JOURNAL_FILE));
    let snapshot = read_optional(&snapshot_path).map_err(io_err(&snapshot_path))?;
    let journal = read_optional(&journal_path).map_err(io_err(&journal_path))?;
    let legacy_positions = found.valid.iter().map(|(k, c, _)| (k.clone(), *c));
    let recovered = format::recover(legacy_positions, snapshot.as_deref(), journal.as_deref())
        .map_err(|(file, damage)| StateError::Corrupt {
            path: match file {
                DamagedFile::Snapshot => snapshot_path.clone(),
                DamagedFile::Journal => journal_path.clone(),
            },
            damage,
        })?;
    let report = Recovery {
        streams: recovered.positions.len(),
        migrated: found.valid.len(),
        damaged: found.damaged.len(),
        journal_records: recovered.journal_records,
        torn_bytes: recovered.torn_bytes,
    };
    if recovered.torn_bytes > 0 {
        warn!(
            bytes = recovered.torn_bytes,
            records = recovered.journal_records,
            "dropped a torn write at the end of the state journal (positions never acknowledged)"
        );
    }
    for (key, path) in &found.damaged {
        warn!(sender = %key.sender, replica = %key.replica, file = %path.display(), "state file is damaged; the sender is refused until it is moved aside (records it still holds may then be applied twice)");
    }
    let store = StateStore::new(dir, recovered.positions, found.damaged);
    let mut journal = Journal {
        store: store.clone(),
        file: None,
        generation: recovered.generation,
        bytes: 0,
        snapshot_bytes: snapshot.map_or(0, |s| s.len() as u64),
        options,
        buf: Vec::new(),
    };
    journal.compact()?;
    if !found.valid.is_empty() {
        for (_, _, path) in &found.valid {
            fs::remove_file(path).map_err(io_err(path))?;
        }
        journal.sync_dir()?;
        info!(
            files = found.valid.len(),
            "migrated per-stream state files into the state journal"
        );
    }
    Ok((store, journal, report))
}

impl Journal {
    /// Appends `entries` and makes them durable with one write and one
    /// fdatasync; then they count as durable in the store. After a failure
    /// none of them does, and the next call starts with a compaction.
    pub(crate) fn commit(
        &mut self,
        entries: &[(StreamKey, StreamCursor)],
    ) -> Result<(), StateError> {
        if self.file.is_none() {
            self.compact()?;
        }
        self.buf.clear();
        for (key, cursor) in entries {
            format::encode_record(key, cursor, &mut self.buf);
        }
        let path = self.store.dir().join(JOURNAL_FILE);
        let Some(file) = self.file.as_mut() else {
            return Err(StateError::Io {
                path,
                source: io::Error::other("no journal open"),
            });
        };
        crash::point("journal-before-write");
        let written = file.write_all(&self.buf).and_then(|()| {
            crash::point("journal-after-write");
            self.options.syncs.inc();
            file.sync_data()
        });
        if let Err(source) = written {
            self.file = None;
            return Err(StateError::Io { path, source });
        }
        crash::point("journal-after-sync");
        self.bytes += self.buf.len() as u64;
        self.store.record_durable(entries);
        Ok(())
    }

    /// Compacts when the journal has outgrown its threshold.
    pub(crate) fn compact_if_due(&mut self) -> Result<(), StateError> {
        let threshold = self
            .options
            .compact_bytes
            .max(self.snapshot_bytes.saturating_mul(2));
        if self.bytes > threshold || self.file.is_none() {
            self.compact()?;
        }
        Ok(())
    }

    /// Writes a snapshot of every durable position and starts a new
    /// journal (the steps and their crash safety are in the module docs).
    pub(crate) fn compact(&mut self) -> Result<(), StateError> {
        self.file = None;
        let generation = self.generation + 1;
        let dir = self.store.dir().to_path_buf();
        self.buf.clear();
        self.store.encode_snapshot(generation, &mut self.buf);
        let snapshot = dir.join(SNAPSHOT_FILE);
        self.write_synced(&tmp_path(&snapshot))?;
        crash::point("compact-after-snapshot-write");
        rename(&tmp_path(&snapshot), &snapshot)?;
        crash::point("compact-after-snapshot-rename");
        self.sync_dir()?;
        crash::point("compact-before-journal-reset");
        self.snapshot_bytes = self.buf.len() as u64;
        self.buf.clear();
        format::encode_header(JOURNAL_MAGIC, generation, &mut self.buf);
        let journal = dir.join(JOURNAL_FILE);
        let file = self.write_synced(&tmp_path(&journal))?;
        crash::point("compact-after-journal-write");
        rename(&tmp_path(&journal), &journal)?;
        self.sync_dir()?;
        self.file = Some(file);
        self.generation = generation;
        self.bytes = self.buf.len() as u64;
        Ok(())
    }

    /// Creates `path` (0600) holding the buffer, synced; returns it open.
    fn write_synced(&mut self, path: &Path) -> Result<File, StateError> {
        let io_err = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = create_private_file(path).map_err(io_err)?;
        file.write_all(&self.buf).map_err(io_err)?;
        self.options.syncs.inc();
        file.sync_all().map_err(io_err)?;
        Ok(file)
    }

    fn sync_dir(&mut self) -> Result<(), StateError> {
        let dir = self.store.dir();
        self.options.syncs.inc();
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::Io {
                path: dir.to_path_buf(),
                source,
            })
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

fn rename(from: &Path, to: &Path) -> Result<(), StateError> {
    fs::rename(from, to).map_err(|source| StateError::Io {
        path: to.to_path_buf(),
        source,
    })
}

fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates `dir` and its missing parents, each 0700.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates (or truncates) `path` for writing, 0600 from its creation.
pub(crate) fn create_private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests;
