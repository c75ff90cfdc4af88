//! The byte formats of the receiver's position files and the recovery
//! fold, without IO: what a journal record, a journal, a snapshot look
//! like, and how their bytes (plus any per-stream files of the older
//! layout) fold into one position per stream. The file handling around it
//! is in `journal`.
//!
//! ```text
//! header   = magic[8] | generation:u64-le | crc32c(magic ‖ generation):u32-le
//! record   = len:u16-le | crc32c(body):u32-le | body[len]
//! body     = identity_len:u8 | identity | replica_len:u8 | replica
//!            | stream_id:u128-le | applied:u64-le
//! journal  = header("TLJRNL01") | record*
//! snapshot = header("TLSNAP01") | record* | crc32c(everything before):u32-le
//! ```
//!
//! Guarantees:
//! * **Bounded.** A record body is at most [`MAX_BODY_LEN`] bytes; a
//!   length above it is damage, never an allocation. Parsing allocates
//!   only the names of records it accepts (each at most 192 bytes), one
//!   entry per stream.
//! * **Only complete records count.** A journal is read up to its first
//!   record that is cut short, fails its checksum, or does not hold a valid
//!   identity and replica name; that record and everything after it are
//!   dropped and counted ([`Recovered::torn_bytes`]), as a write a crash
//!   interrupted leaves them. A snapshot is written whole before it is
//!   renamed into place, so any damage in it is an error, never a partial
//!   read.
//! * **The fold** ([`Fold`]): inputs are applied oldest first — the files
//!   of the older layout, then the snapshot, then the journal in order. A
//!   stream's later record on the same stream id keeps the higher
//!   position; a later record with another stream id replaces it (the
//!   sender recreated its spool), as [`StreamCursor::for_hello`] does.
//! * **Generations.** A snapshot of generation `g` holds everything the
//!   journals before it held; the journal written after it has generation
//!   `g` too. A journal of an older generation than the snapshot is left
//!   over from a compaction that stopped before it replaced the journal:
//!   the snapshot already holds it, and it is ignored. A journal newer than
//!   the snapshot (or one after generation 0 with no snapshot) means the
//!   snapshot it follows is gone: an error, not a silent reset.

use std::collections::HashMap;

use thiserror::Error;

use super::StreamKey;
use crate::{
    proto::replica::{validate_replica, MAX_REPLICA_LEN},
    session::dedup::StreamCursor,
    tls::{validate_identity, MAX_IDENTITY_LEN},
};

/// Magic of a journal file.
pub const JOURNAL_MAGIC: [u8; 8] = *b"TLJRNL01";
/// Magic of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"TLSNAP01";
/// Bytes of a file header.
pub const HEADER_LEN: usize = 20;
/// Bytes in front of a record body (length and checksum).
pub const RECORD_HEADER_LEN: usize = 6;
/// The largest record body: the longest identity and replica name.
pub const MAX_BODY_LEN: usize = 2 + MAX_IDENTITY_LEN + MAX_REPLICA_LEN + 16 + 8;
/// The smallest record body: a one-character identity, the default replica.
const MIN_BODY_LEN: usize = 2 + 1 + 16 + 8;
/// Bytes of a snapshot's closing checksum.
const SNAPSHOT_CRC_LEN: usize = 4;

/// Damage that makes a position file unusable (a journal's torn tail is
/// not damage: it is dropped and counted).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum StateDamage {
    /// A per-stream state file of the older layout fails its checksum or
    /// names another stream.
    #[error("its checksum or its stream name is wrong")]
    StreamFile,
    /// The file does not start with a valid header of its kind.
    #[error("its header is damaged")]
    Header,
    /// The snapshot fails its checksum or holds a malformed record.
    #[error("the snapshot is damaged")]
    Snapshot,
    /// The journal follows a snapshot that is not there.
    #[error("the journal (generation {journal}) follows a snapshot that is missing (found {snapshot:?})")]
    MissingSnapshot {
        /// The journal's generation.
        journal: u64,
        /// The snapshot's generation, if there is one.
        snapshot: Option<u64>,
    },
}

/// Which file a [`StateDamage`] was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamagedFile {
    /// The snapshot.
    Snapshot,
    /// The journal.
    Journal,
}

/// Appends a file header.
pub fn encode_header(magic: [u8; 8], generation: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&magic);
    out.extend_from_slice(&generation.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The generation in a file header of kind `magic`.
pub fn parse_header(bytes: &[u8], magic: [u8; 8]) -> Result<u64, StateDamage> {
    let header = bytes.get(..HEADER_LEN).ok_or(StateDamage::Header)?;
    let (body, crc) = header.split_at(16);
    if body[..8] != magic || crc32c::crc32c(body).to_le_bytes() != crc {
        return Err(StateDamage::Header);
    }
    let mut generation = [0u8; 8];
    generation.copy_from_slice(&body[8..16]);
    Ok(u64::from_le_bytes(generation))
}

/// Appends one record: `key` is at `cursor`. `key` must hold a valid
/// identity and replica name (the receiver only has such keys).
pub fn encode_record(key: &StreamKey, cursor: &StreamCursor, out: &mut Vec<u8>) {
    let (id, replica) = (key.sender.as_bytes(), key.replica.as_bytes());
    let id = &id[..id.len().min(MAX_IDENTITY_LEN)];
    let replica = &replica[..replica.len().min(MAX_REPLICA_LEN)];
    let len = 2 + id.len() + replica.len() + 24;
    let start = out.len();
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let body = out.len();
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.push(replica.len() as u8);
    out.extend_from_slice(replica);
    out.extend_from_slice(&cursor.stream_id().to_le_bytes());
    out.extend_from_slice(&cursor.applied().to_le_bytes());
    let crc = crc32c::crc32c(&out[body..]);
    out[start + 2..body].copy_from_slice(&crc.to_le_bytes());
}

/// One record read from the front of some bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete, valid record of `len` bytes.
    Record {
        /// The stream.
        key: StreamKey,
        /// Its position.
        cursor: StreamCursor,
        /// Bytes the record takes, header included.
        len: usize,
    },
    /// No complete valid record here.
    Torn,
}

/// Reads the record at the front of `bytes`.
pub fn parse_record(bytes: &[u8]) -> Parsed {
    let Some(header) = bytes.get(..RECORD_HEADER_LEN) else {
        return Parsed::Torn;
    };
    let len = usize::from(u16::from_le_bytes([header[0], header[1]]));
    if !(MIN_BODY_LEN..=MAX_BODY_LEN).contains(&len) {
        return Parsed::Torn;
    }
    let Some(body) = bytes.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) else {
        return Parsed::Torn;
    };
    if crc32c::crc32c(body).to_le_bytes() != header[2..6] {
        return Parsed::Torn;
    }
    match parse_body(body) {
        Some((key, cursor)) => Parsed::Record {
            key,
            cursor,
            len: RECORD_HEADER_LEN + len,
        },
        None => Parsed::Torn,
    }
}

fn parse_body(body: &[u8]) -> Option<(StreamKey, StreamCursor)> {
    let (&id_len, rest) = body.split_first()?;
    let (id, rest) = rest.split_at_checked(usize::from(id_len))?;
    let (&replica_len, rest) = rest.split_first()?;
    let (replica, rest) = rest.split_at_checked(usize::from(replica_len))?;
    let (stream_id, applied) = rest.split_at_checked(16)?;
    let id = std::str::from_utf8(id).ok()?;
    let replica = std::str::from_utf8(replica).ok()?;
    validate_identity(id).ok()?;
    validate_replica(replica).ok()?;
    let stream_id = u128::from_le_bytes(stream_id.try_into().ok()?);
    let applied = u64::from_le_bytes(applied.try_into().ok()?);
    Some((
        StreamKey::new(id, replica),
        StreamCursor::new(stream_id, applied),
    ))
}

/// Appends a whole snapshot of `positions` at `generation`.
pub fn encode_snapshot<'a>(
    generation: u64,
    positions: impl IntoIterator<Item = (&'a StreamKey, &'a StreamCursor)>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    encode_header(SNAPSHOT_MAGIC, generation, out);
    for (key, cursor) in positions {
        encode_record(key, cursor, out);
    }
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Positions folded from records, oldest first (see the module docs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fold {
    positions: HashMap<StreamKey, StreamCursor>,
}

impl Fold {
    /// An empty fold.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a record newer than every one applied before.
    pub fn apply(&mut self, key: StreamKey, cursor: StreamCursor) {
        match self.positions.get_mut(&key) {
            Some(held) if held.stream_id() == cursor.stream_id() => {
                if cursor.applied() > held.applied() {
                    *held = cursor;
                }
            }
            Some(held) => *held = cursor,
            None => {
                self.positions.insert(key, cursor);
            }
        }
    }

    /// The position of every stream.
    pub fn into_positions(self) -> HashMap<StreamKey, StreamCursor> {
        self.positions
    }
}

/// Folds a whole snapshot; returns its generation.
pub fn fold_snapshot(bytes: &[u8], fold: &mut Fold) -> Result<u64, StateDamage> {
    let generation = parse_header(bytes, SNAPSHOT_MAGIC)?;
    let end = bytes
        .len()
        .checked_sub(SNAPSHOT_CRC_LEN)
        .filter(|&e| e >= HEADER_LEN)
        .ok_or(StateDamage::Snapshot)?;
    if crc32c::crc32c(&bytes[..end]).to_le_bytes() != bytes[end..] {
        return Err(StateDamage::Snapshot);
    }
    let mut at = HEADER_LEN;
    while at < end {
        match parse_record(&bytes[at..end]) {
            Parsed::Record { key, cursor, len } => {
                fold.apply(key, cursor);
                at += len;
            }
            Parsed::Torn => return Err(StateDamage::Snapshot),
        }
    }
    Ok(generation)
}

/// What reading a journal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalScan {
    /// The journal's generation.
    pub generation: u64,
    /// Complete records read.
    pub records: u64,
    /// Bytes from the first torn or damaged record to the end (dropped).
    pub torn_bytes: u64,
}

/// Reads a journal's header, then folds its records up to the first torn
/// one. Records are folded only when `apply` is set (a stale journal is
/// read for the report alone).
pub fn fold_journal(bytes: &[u8], apply: Option<&mut Fold>) -> Result<JournalScan, StateDamage> {
    let generation = parse_header(bytes, JOURNAL_MAGIC)?;
    let mut scan = JournalScan {
        generation,
        records: 0,
        torn_bytes: 0,
    };
    let mut fold = apply;
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        match parse_record(&bytes[at..]) {
            Parsed::Record { key, cursor, len } => {
                if let Some(f) = fold.as_deref_mut() {
                    f.apply(key, cursor);
                }
                scan.records += 1;
                at += len;
            }
            Parsed::Torn => {
                scan.torn_bytes = (bytes.len() - at) as u64;
                break;
            }
        }
    }
    Ok(scan)
}

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The position of every stream.
    pub positions: HashMap<StreamKey, StreamCursor>,
    /// The newest generation found (the next compaction writes one more).
    pub generation: u64,
    /// Records read from the journal.
    pub journal_records: u64,
    /// Bytes dropped from the journal's tail (a write a crash cut short,
    /// or damage).
    pub torn_bytes: u64,
    /// Whether the journal was older than the snapshot and ignored.
    pub stale_journal: bool,
}

/// Folds, oldest first, `legacy` positions (files of the older layout),
/// then the snapshot, then the journal, by the generation rules of the
/// module docs.
pub fn recover(
    legacy: impl IntoIterator<Item = (StreamKey, StreamCursor)>,
    snapshot: Option<&[u8]>,
    journal: Option<&[u8]>,
) -> Result<Recovered, (DamagedFile, StateDamage)> {
    let mut fold = Fold::new();
    for (key, cursor) in legacy {
        fold.apply(key, cursor);
    }
    let snapshot_gen = match snapshot {
        Some(bytes) => {
            Some(fold_snapshot(bytes, &mut fold).map_err(|d| (DamagedFile::Snapshot, d))?)
        }
        None => None,
    };
    let mut recovered = Recovered {
        positions: HashMap::new(),
        generation: snapshot_gen.unwrap_or(0),
        journal_records: 0,
        torn_bytes: 0,
        stale_journal: false,
    };
    if let Some(bytes) = journal {
        let journal_gen =
            parse_header(bytes, JOURNAL_MAGIC).map_err(|d| (DamagedFile::Journal, d))?;
        let expected = snapshot_gen.unwrap_or(0);
        if journal_gen > expected {
            let missing = StateDamage::MissingSnapshot {
                journal: journal_gen,
                snapshot: snapshot_gen,
            };
            return Err((DamagedFile::Journal, missing));
        }
        let stale = journal_gen < expected;
        let scan = fold_journal(bytes, (!stale).then_some(&mut fold))
            .map_err(|d| (DamagedFile::Journal, d))?;
        recovered.journal_records = scan.records;
        recovered.torn_bytes = scan.torn_bytes;
        recovered.stale_journal = stale;
    }
    recovered.positions = fold.into_positions();
    Ok(recovered)
}

#[cfg(test)]
mod tests;
