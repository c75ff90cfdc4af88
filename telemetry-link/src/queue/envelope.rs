//! The envelope the queue puts around each entry in the spool: the entry's
//! weight and, on the last entry of a producer's push, the producer's mark.
//! No IO.
//!
//! ```text
//! record   = version u8 (1) | header | payload
//! header   = postcard { weight: u64, mark: Option<{ key: str, stream_id: u128, seq: u64 }> }
//! ```
//!
//! Keeping the weight and the mark in front of the payload lets the queue
//! rebuild its index and its producers' marks at open without decoding
//! entries, whatever their type.

use serde::{Deserialize, Serialize};

/// Version byte of the envelope.
const VERSION: u8 = 1;

/// Longest producer key, in bytes.
pub(super) const MAX_KEY_BYTES: usize = 255;

/// Upper bound of an envelope's size: version, weight, the mark with the
/// longest key, all as postcard varints.
pub(super) const MAX_ENVELOPE_BYTES: usize = 1 + 10 + 1 + 2 + MAX_KEY_BYTES + 19 + 10;

/// A producer's mark as stored on an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MarkRef<'a> {
    /// The producer key.
    pub(super) key: &'a str,
    /// The producer's stream.
    pub(super) stream_id: u128,
    /// Highest source sequence the push completes.
    pub(super) seq: u64,
}

/// What the queue stores in front of an entry's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Header<'a> {
    /// The entry's weight.
    pub(super) weight: u64,
    /// Set on the last entry of a producer's push.
    #[serde(borrow)]
    pub(super) mark: Option<MarkRef<'a>>,
}

/// Appends the envelope and `payload` to `out`.
pub(super) fn encode(
    header: &Header<'_>,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), postcard::Error> {
    out.push(VERSION);
    *out = postcard::to_extend(header, std::mem::take(out))?;
    out.extend_from_slice(payload);
    Ok(())
}

/// Splits a stored record into its header and payload; `None` if it is not
/// an envelope of this version.
pub(super) fn decode(record: &[u8]) -> Option<(Header<'_>, &[u8])> {
    let (&version, rest) = record.split_first()?;
    if version != VERSION {
        return None;
    }
    postcard::take_from_bytes::<Header<'_>>(rest).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_and_without_a_mark() {
        let plain = Header {
            weight: 3,
            mark: None,
        };
        let mut out = Vec::new();
        encode(&plain, b"payload", &mut out).unwrap();
        assert_eq!(decode(&out), Some((plain, &b"payload"[..])));

        let key = "k".repeat(MAX_KEY_BYTES);
        let marked = Header {
            weight: u64::MAX,
            mark: Some(MarkRef {
                key: &key,
                stream_id: u128::MAX,
                seq: u64::MAX,
            }),
        };
        let mut out = Vec::new();
        encode(&marked, b"", &mut out).unwrap();
        assert_eq!(out.len(), MAX_ENVELOPE_BYTES, "the bound is tight");
        assert_eq!(decode(&out), Some((marked, &b""[..])));
    }

    #[test]
    fn foreign_bytes_are_not_an_envelope() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[2, 0, 0]), None, "another version");
        assert_eq!(decode(&[VERSION, 0xff]), None, "truncated header");
    }
}
