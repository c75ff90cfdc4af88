//! Replica names (protocol version 3).
//!
//! Several sender processes may share one certificate identity, each with
//! its own spool and sequence space: each names itself with a replica name,
//! and the receiver keeps one stream per (identity, replica). The empty
//! name is the default replica — the only one a sender older than version 3
//! can be. Both ends check names with [`validate_replica`]; the rules keep
//! a name safe inside a file name and a metric label.

use thiserror::Error;

/// Longest replica name, in bytes.
pub const MAX_REPLICA_LEN: usize = 64;

/// Why a replica name is not acceptable.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReplicaError {
    /// Longer than [`MAX_REPLICA_LEN`].
    #[error("replica name of {0} bytes is longer than {MAX_REPLICA_LEN}")]
    TooLong(usize),
    /// A character outside `[A-Za-z0-9._-]`.
    #[error("replica name {0:?} has a character outside [A-Za-z0-9._-]")]
    BadCharacter(String),
}

/// Checks a replica name: 0–64 characters of `[A-Za-z0-9._-]` (empty: the
/// default replica).
pub fn validate_replica(name: &str) -> Result<(), ReplicaError> {
    if name.len() > MAX_REPLICA_LEN {
        return Err(ReplicaError::TooLong(name.len()));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        let shown = name.chars().take(MAX_REPLICA_LEN + 1).collect();
        return Err(ReplicaError::BadCharacter(shown));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_within_the_rules_pass() {
        for ok in ["", "a", "replica-0", "r_1.2", &"x".repeat(MAX_REPLICA_LEN)] {
            assert_eq!(validate_replica(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(
            validate_replica(&"x".repeat(MAX_REPLICA_LEN + 1)),
            Err(ReplicaError::TooLong(MAX_REPLICA_LEN + 1))
        );
        for bad in ["a/b", "a b", "a@b", "é", "a\n"] {
            assert!(
                matches!(validate_replica(bad), Err(ReplicaError::BadCharacter(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            validate_replica("a\nb").unwrap_err().to_string(),
            "replica name \"a\\nb\" has a character outside [A-Za-z0-9._-]"
        );
    }
}
