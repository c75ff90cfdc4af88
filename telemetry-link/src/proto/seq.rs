//! Sequence-number limits shared by the spool and the protocol.

/// Highest sequence number a spool assigns (2^62): far beyond any real
/// stream, and far enough from `u64::MAX` that sequence arithmetic anywhere
/// cannot overflow. Headers or metadata beyond it are treated as corrupt.
pub const MAX_SEQ: u64 = 1 << 62;
