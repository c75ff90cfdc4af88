//! The envelope of one record as it is stored in the spool.
//!
//! A record is either an application value (postcard bytes, opaque to the
//! link) or a [`Sample`], which the link understands so it can intern its
//! series on the wire. The envelope is one tag byte followed by:
//!
//! | tag | layout |
//! |-----|--------|
//! | `0` | postcard encoding of the application value |
//! | `1` | timestamp (i64 LE), value (f64 LE), canonical series encoding |
//!
//! Fixed offsets let the sender's wire encoder read samples straight out of
//! the spool buffer without decoding or allocating.

use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

use super::{batch::Entry, refused::RefusedReason};
use crate::sample::{Sample, SeriesError, SeriesKey};

const TAG_APP: u8 = 0;
const TAG_SAMPLE: u8 = 1;
const SAMPLE_FIXED: usize = 1 + 8 + 8;

/// An application payload the link can carry.
///
/// Any serde type works; implement [`Payload::as_sample`] and
/// [`Payload::from_sample`] for the variants that are metric samples to get
/// the compact interned encoding for them.
pub trait Payload: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// This record viewed as a metric sample, if it is one.
    fn as_sample(&self) -> Option<&Sample> {
        None
    }

    /// Builds a record from a received sample. Returning `None` makes a
    /// received sample a protocol error (the sending side must never produce
    /// samples for a type that cannot hold them).
    fn from_sample(sample: Sample) -> Option<Self> {
        let _ = sample;
        None
    }
}

impl Payload for Sample {
    fn as_sample(&self) -> Option<&Sample> {
        Some(self)
    }
    fn from_sample(sample: Sample) -> Option<Self> {
        Some(sample)
    }
}

impl Payload for String {}
impl Payload for Vec<u8> {}
impl Payload for u64 {}

/// Why stored or received record bytes cannot be turned back into a record.
#[derive(Debug, Error)]
pub enum RecordError {
    /// Empty envelope.
    #[error("empty record")]
    Empty,
    /// Unknown tag byte.
    #[error("unknown record tag {0}")]
    UnknownTag(u8),
    /// A sample envelope shorter than its fixed part.
    #[error("truncated sample record")]
    TruncatedSample,
    /// The series encoding is invalid.
    #[error("bad series: {0}")]
    Series(#[from] SeriesError),
    /// The application bytes do not decode as the payload type.
    #[error("payload does not decode: {0}")]
    Decode(#[from] postcard::Error),
    /// A sample arrived for a payload type that has no sample variant.
    #[error("received a sample but the payload type cannot hold samples")]
    SampleNotSupported,
    /// The batch decoder refused the record's series (see
    /// [`super::batch::InternLimits`]).
    #[error("record refused: {0}")]
    Refused(RefusedReason),
}

/// Appends the envelope of `record` to `out`.
pub fn encode_record<T: Payload>(record: &T, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    match record.as_sample() {
        Some(s) => {
            encode_sample_parts(s.timestamp_ms, s.value, s.series.encoded(), out);
            Ok(())
        }
        None => {
            out.push(TAG_APP);
            postcard::to_io(record, &mut *out).map(|_| ())
        }
    }
}

/// Appends a sample envelope from its parts.
pub fn encode_sample_parts(timestamp_ms: i64, value: f64, series: &[u8], out: &mut Vec<u8>) {
    out.reserve(SAMPLE_FIXED + series.len());
    out.push(TAG_SAMPLE);
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&value.to_le_bytes());
    out.extend_from_slice(series);
}

/// Appends an application envelope around already-encoded postcard bytes.
pub fn encode_app_bytes(postcard_bytes: &[u8], out: &mut Vec<u8>) {
    out.push(TAG_APP);
    out.extend_from_slice(postcard_bytes);
}

/// A zero-copy view of one envelope.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RecordView<'a> {
    /// Application postcard bytes.
    App(&'a [u8]),
    /// A sample with its canonical series bytes.
    Sample {
        /// Milliseconds since the epoch.
        timestamp_ms: i64,
        /// The value.
        value: f64,
        /// Canonical series encoding.
        series: &'a [u8],
    },
}

impl<'a> RecordView<'a> {
    /// Parses an envelope without copying.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RecordError> {
        match bytes.first() {
            None => Err(RecordError::Empty),
            Some(&TAG_APP) => Ok(RecordView::App(&bytes[1..])),
            Some(&TAG_SAMPLE) => {
                if bytes.len() < SAMPLE_FIXED {
                    return Err(RecordError::TruncatedSample);
                }
                let mut ts = [0u8; 8];
                ts.copy_from_slice(&bytes[1..9]);
                let mut v = [0u8; 8];
                v.copy_from_slice(&bytes[9..17]);
                Ok(RecordView::Sample {
                    timestamp_ms: i64::from_le_bytes(ts),
                    value: f64::from_le_bytes(v),
                    series: &bytes[SAMPLE_FIXED..],
                })
            }
            Some(&t) => Err(RecordError::UnknownTag(t)),
        }
    }
}

impl<'a> RecordView<'a> {
    /// The received-record form of this envelope (its series decoded), as
    /// a batch entry carries it.
    pub fn into_entry(self) -> Result<Entry<'a>, RecordError> {
        Ok(match self {
            RecordView::App(bytes) => Entry::App(bytes),
            RecordView::Sample {
                timestamp_ms,
                value,
                series,
            } => Entry::Sample {
                series: Arc::new(SeriesKey::decode(series)?),
                timestamp_ms,
                value,
            },
        })
    }
}

impl Entry<'_> {
    /// Decodes the record into the application's type. This is the one
    /// decoding path for received records: batch entries come here
    /// directly, present records through [`decode_record`].
    pub fn into_record<T: Payload>(self) -> Result<T, RecordError> {
        match self {
            Entry::App(bytes) => Ok(postcard::from_bytes(bytes)?),
            Entry::Sample {
                series,
                timestamp_ms,
                value,
            } => T::from_sample(Sample::new(series, timestamp_ms, value))
                .ok_or(RecordError::SampleNotSupported),
            Entry::Refused(reason) => Err(RecordError::Refused(reason)),
        }
    }
}

/// Decodes an envelope into the application's type.
pub fn decode_record<T: Payload>(bytes: &[u8]) -> Result<T, RecordError> {
    RecordView::parse(bytes)?.into_entry()?.into_record()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Mixed {
        Text(String),
        Metric(Sample),
    }
    impl Payload for Mixed {
        fn as_sample(&self) -> Option<&Sample> {
            match self {
                Mixed::Metric(s) => Some(s),
                _ => None,
            }
        }
        fn from_sample(s: Sample) -> Option<Self> {
            Some(Mixed::Metric(s))
        }
    }

    #[test]
    fn app_and_sample_roundtrip() {
        let key = Arc::new(SeriesKey::new("up", [("job", "x")]).unwrap());
        for r in [
            Mixed::Text("hi".into()),
            Mixed::Metric(Sample::new(key, 1_700_000_000_000, 0.5)),
        ] {
            let mut buf = Vec::new();
            encode_record(&r, &mut buf).unwrap();
            assert_eq!(decode_record::<Mixed>(&buf).unwrap(), r);
        }
    }

    #[test]
    fn sample_into_type_without_samples_is_an_error() {
        let key = Arc::new(SeriesKey::new("up", Vec::<(String, String)>::new()).unwrap());
        let mut buf = Vec::new();
        encode_record(&Sample::new(key, 1, 1.0), &mut buf).unwrap();
        assert!(matches!(
            decode_record::<String>(&buf),
            Err(RecordError::SampleNotSupported)
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(RecordView::parse(&[]), Err(RecordError::Empty)));
        assert!(matches!(
            RecordView::parse(&[9]),
            Err(RecordError::UnknownTag(9))
        ));
        assert!(matches!(
            RecordView::parse(&[1, 2, 3]),
            Err(RecordError::TruncatedSample)
        ));
        assert!(decode_record::<String>(&[0, 200]).is_err());
    }
}
