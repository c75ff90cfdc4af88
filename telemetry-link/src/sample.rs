//! Metric-style records: a series (metric name + labels) and a timestamped value.
//!
//! Samples can travel over the link like any application record, but the
//! link recognises them (through [`crate::Payload::as_sample`]) and encodes
//! them compactly: each series' labels cross the wire once per connection,
//! then only a small id, a timestamp delta and a value delta follow (see
//! `PROTOCOL.md`, "Batch body").

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest metric name or label name/value accepted, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Most labels one series may carry.
pub const MAX_LABELS: usize = 64;

/// Why a series key is not acceptable.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SeriesError {
    /// Empty metric name.
    #[error("empty metric name")]
    EmptyName,
    /// A name or value above [`MAX_NAME_LEN`].
    #[error("name or label longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    /// More than [`MAX_LABELS`] labels.
    #[error("more than {MAX_LABELS} labels")]
    TooManyLabels,
    /// The same label name twice.
    #[error("duplicate label {0:?}")]
    DuplicateLabel(String),
    /// The encoded form does not decode.
    #[error("malformed series encoding")]
    Malformed,
}

/// A metric name and its labels, sorted by label name.
///
/// The canonical encoding is computed once at construction, so spooling and
/// interning a sample never re-serialises its labels.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    name: String,
    labels: Vec<(String, String)>,
    encoded: Box<[u8]>,
}

impl std::fmt::Debug for SeriesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{{", self.name)?;
        for (i, (k, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        f.write_str("}")
    }
}

impl SeriesKey {
    /// Builds a key; labels are sorted by name and must be unique.
    pub fn new<N, I, K, V>(name: N, labels: I) -> Result<Self, SeriesError>
    where
        N: Into<String>,
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let name = name.into();
        let mut labels: Vec<(String, String)> = labels
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        Self::validate(&name, &labels)?;
        let encoded = postcard::to_allocvec(&(&name, &labels))
            .map_err(|_| SeriesError::Malformed)?
            .into_boxed_slice();
        Ok(Self {
            name,
            labels,
            encoded,
        })
    }

    fn validate(name: &str, labels: &[(String, String)]) -> Result<(), SeriesError> {
        if name.is_empty() {
            return Err(SeriesError::EmptyName);
        }
        if labels.len() > MAX_LABELS {
            return Err(SeriesError::TooManyLabels);
        }
        if name.len() > MAX_NAME_LEN
            || labels
                .iter()
                .any(|(k, v)| k.len() > MAX_NAME_LEN || v.len() > MAX_NAME_LEN)
        {
            return Err(SeriesError::TooLong);
        }
        for pair in labels.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(SeriesError::DuplicateLabel(pair[0].0.clone()));
            }
        }
        Ok(())
    }

    /// Decodes the canonical encoding produced by [`SeriesKey::encoded`].
    pub fn decode(bytes: &[u8]) -> Result<Self, SeriesError> {
        let (name, labels): (String, Vec<(String, String)>) =
            postcard::from_bytes(bytes).map_err(|_| SeriesError::Malformed)?;
        if !labels.windows(2).all(|p| p[0].0 < p[1].0) {
            // Not canonical (unsorted or duplicated): refuse rather than
            // create two spellings of one series.
            return Err(SeriesError::Malformed);
        }
        Self::validate(&name, &labels)?;
        // Exactly one spelling per series: no trailing bytes, no over-long
        // varints (otherwise one series could have several keys).
        let canonical =
            postcard::to_allocvec(&(&name, &labels)).map_err(|_| SeriesError::Malformed)?;
        if canonical != bytes {
            return Err(SeriesError::Malformed);
        }
        Ok(Self {
            name,
            labels,
            encoded: bytes.into(),
        })
    }

    /// The metric name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The labels, sorted by name.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    /// The value of one label, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.labels[i].1.as_str())
    }

    /// The canonical byte encoding (what interning keys on).
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }
}

impl Serialize for SeriesKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.name, &self.labels).serialize(s)
    }
}

impl<'de> Deserialize<'de> for SeriesKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (name, labels): (String, Vec<(String, String)>) = Deserialize::deserialize(d)?;
        SeriesKey::new(name, labels).map_err(serde::de::Error::custom)
    }
}

/// One observation of a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Which series; shared so that producing a sample allocates nothing.
    pub series: Arc<SeriesKey>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// A sample of `series` at `timestamp_ms`.
    pub fn new(series: Arc<SeriesKey>, timestamp_ms: i64, value: f64) -> Self {
        Self {
            series,
            timestamp_ms,
            value,
        }
    }
}

/// Milliseconds since the Unix epoch, now; saturating (0 for a clock set
/// before the epoch, `i64::MAX` beyond the range of an `i64`).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_and_encoding_is_canonical() {
        let a = SeriesKey::new("m", [("b", "2"), ("a", "1")]).unwrap();
        let b = SeriesKey::new("m", [("a", "1"), ("b", "2")]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.encoded(), b.encoded());
        assert_eq!(a.label("b"), Some("2"));
        assert_eq!(a.label("c"), None);
        assert_eq!(SeriesKey::decode(a.encoded()).unwrap(), a);
    }

    fn a_key() -> SeriesKey {
        SeriesKey::new("m", [("a", "1")]).unwrap()
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(
            SeriesKey::new("", Vec::<(String, String)>::new()),
            Err(SeriesError::EmptyName)
        );
        assert!(matches!(
            SeriesKey::new("m", [("a", "1"), ("a", "2")]),
            Err(SeriesError::DuplicateLabel(_))
        ));
        assert_eq!(
            SeriesKey::new("m", [("a", "x".repeat(MAX_NAME_LEN + 1))]),
            Err(SeriesError::TooLong)
        );
        // unsorted wire encoding is not canonical
        let unsorted = postcard::to_allocvec(&("m", vec![("b", "1"), ("a", "2")])).unwrap();
        assert_eq!(SeriesKey::decode(&unsorted), Err(SeriesError::Malformed));
        assert_eq!(SeriesKey::decode(&[0xff]), Err(SeriesError::Malformed));
        // trailing bytes and over-long varints are not canonical (fuzzing, F6)
        let mut trailing = a_key().encoded().to_vec();
        trailing.push(0);
        assert_eq!(SeriesKey::decode(&trailing), Err(SeriesError::Malformed));
        let mut overlong = vec![0x81, 0x00]; // name length 1 spelled in two bytes
        overlong.extend_from_slice(b"m\x00");
        assert_eq!(SeriesKey::decode(&overlong), Err(SeriesError::Malformed));
    }
}
