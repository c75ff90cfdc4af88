//! Sequence-number constants shared by the side that assigns sequence
//! numbers (the spool) and the side that checks them (the receiver's
//! session), so both agree on the same bounds.

/// Highest sequence number a spool assigns (2^62): far beyond any real
/// stream, and far enough from `u64::MAX` that sequence arithmetic anywhere
/// cannot overflow. Headers or metadata beyond it are treated as corrupt.
pub const MAX_SEQ: u64 = 1 << 62;
