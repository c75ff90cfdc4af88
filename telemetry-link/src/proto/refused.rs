//! Refused records: why a receiver settled a record without applying it,
//! and how many it refused for each reason (protocol version 3).
//!
//! A refusal is a verdict, not an error: the record was processed, will
//! never be applied and is never sent again; the stream goes on. The
//! reasons are a small closed set with stable lowercase names (metric
//! labels); on the wire each is one byte, and a code this side does not know
//! (from a newer peer) reads as [`RefusedReason::Other`].
//!
//! [`RefusedCounts`] is a fixed array, one count per reason: copying it
//! allocates nothing, and decoding a list of `(reason, count)` pairs off the
//! wire allocates nothing either (the list is bounded by
//! [`MAX_REFUSED_PAIRS`]).

use serde::{
    de::{Error as _, SeqAccess, Visitor},
    ser::SerializeSeq,
    Deserialize, Deserializer, Serialize, Serializer,
};

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RefusedReason {
    /// Anything else, including reasons of a newer peer this side does not
    /// know.
    Other = 0,
    /// The record does not decode as the receiver's payload type.
    Undecodable = 1,
    /// The record's series could not be interned: the connection's interning
    /// budget (series count or definition bytes) is spent.
    SeriesLimit = 2,
    /// The record's series has more labels, or more label bytes, than the
    /// receiver accepts.
    LabelLimit = 3,
    /// An application budget (series, objects, ...) is spent.
    Budget = 4,
    /// The application found the record invalid (e.g. a bad metric name).
    Invalid = 5,
    /// The record carries state from an older leadership epoch.
    Fenced = 6,
}

impl RefusedReason {
    /// Every reason, in code order.
    pub const ALL: [RefusedReason; 7] = [
        RefusedReason::Other,
        RefusedReason::Undecodable,
        RefusedReason::SeriesLimit,
        RefusedReason::LabelLimit,
        RefusedReason::Budget,
        RefusedReason::Invalid,
        RefusedReason::Fenced,
    ];

    /// The reason's wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The reason for a wire code; unknown codes are [`RefusedReason::Other`].
    pub fn from_code(code: u8) -> Self {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(RefusedReason::Other)
    }

    /// A stable lowercase name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusedReason::Other => "other",
            RefusedReason::Undecodable => "undecodable",
            RefusedReason::SeriesLimit => "series_limit",
            RefusedReason::LabelLimit => "label_limit",
            RefusedReason::Budget => "budget",
            RefusedReason::Invalid => "invalid",
            RefusedReason::Fenced => "fenced",
        }
    }
}

impl std::fmt::Display for RefusedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Most `(reason, count)` pairs a refusal report may carry. A sender lists
/// each reason at most once; the bound leaves room for a newer peer's
/// reasons.
pub const MAX_REFUSED_PAIRS: usize = 32;

/// How many records were refused, per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefusedCounts([u64; RefusedReason::ALL.len()]);

impl RefusedCounts {
    /// No refusals.
    pub const NONE: RefusedCounts = RefusedCounts([0; RefusedReason::ALL.len()]);

    /// `n` refusals for `reason`.
    pub fn of(reason: RefusedReason, n: u64) -> Self {
        let mut c = Self::NONE;
        c.add(reason, n);
        c
    }

    /// Adds `n` refusals for `reason` (saturating).
    pub fn add(&mut self, reason: RefusedReason, n: u64) {
        let slot = &mut self.0[usize::from(reason.code())];
        *slot = slot.saturating_add(n);
    }

    /// Adds every count of `other` (saturating).
    pub fn merge(&mut self, other: &RefusedCounts) {
        for (reason, n) in other.iter() {
            self.add(reason, n);
        }
    }

    /// The count for `reason`.
    pub fn get(&self, reason: RefusedReason) -> u64 {
        self.0[usize::from(reason.code())]
    }

    /// All refusals together (saturating).
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |a, &n| a.saturating_add(n))
    }

    /// Whether nothing was refused.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&n| n == 0)
    }

    /// The reasons with a count above zero, in code order.
    pub fn iter(&self) -> impl Iterator<Item = (RefusedReason, u64)> + '_ {
        RefusedReason::ALL
            .iter()
            .zip(self.0.iter())
            .filter(|(_, &n)| n > 0)
            .map(|(&r, &n)| (r, n))
    }

    /// The same counts with their total cut to at most `max`, taking the
    /// excess off the highest reason codes first.
    pub fn capped(mut self, max: u64) -> Self {
        let mut excess = self.total().saturating_sub(max);
        for slot in self.0.iter_mut().rev() {
            let cut = excess.min(*slot);
            *slot -= cut;
            excess -= cut;
        }
        self
    }
}

/// On the wire: a list of `(reason code, count)` pairs with counts above
/// zero.
impl Serialize for RefusedCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.iter().count()))?;
        for (reason, n) in self.iter() {
            seq.serialize_element(&(reason.code(), n))?;
        }
        seq.end()
    }
}

/// Reads at most [`MAX_REFUSED_PAIRS`] pairs, summing repeated reasons and
/// reading unknown codes as [`RefusedReason::Other`].
impl<'de> Deserialize<'de> for RefusedCounts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = RefusedCounts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "at most {MAX_REFUSED_PAIRS} (reason, count) pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RefusedCounts, A::Error> {
                let mut counts = RefusedCounts::NONE;
                let mut pairs = 0;
                while let Some((code, n)) = seq.next_element::<(u8, u64)>()? {
                    pairs += 1;
                    if pairs > MAX_REFUSED_PAIRS {
                        return Err(A::Error::custom("too many refusal reasons"));
                    }
                    counts.add(RefusedReason::from_code(code), n);
                }
                Ok(counts)
            }
        }
        d.deserialize_seq(Pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_are_stable() {
        let names: Vec<_> = RefusedReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "other",
                "undecodable",
                "series_limit",
                "label_limit",
                "budget",
                "invalid",
                "fenced"
            ]
        );
        for r in RefusedReason::ALL {
            assert_eq!(RefusedReason::from_code(r.code()), r);
        }
        assert_eq!(RefusedReason::from_code(7), RefusedReason::Other);
        assert_eq!(RefusedReason::from_code(255), RefusedReason::Other);
    }

    #[test]
    fn counts_roundtrip_and_unknown_codes_read_as_other() {
        let mut c = RefusedCounts::of(RefusedReason::Budget, 3);
        c.add(RefusedReason::Undecodable, 2);
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(bytes, [2, 1, 2, 4, 3]);
        assert_eq!(postcard::from_bytes::<RefusedCounts>(&bytes).unwrap(), c);

        // A newer peer's reason 9, and a reason listed twice.
        let bytes = [3, 9, 5, 1, 1, 1, 1];
        let c: RefusedCounts = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(c.get(RefusedReason::Other), 5);
        assert_eq!(c.get(RefusedReason::Undecodable), 2);
        assert_eq!(c.total(), 7);
    }

    #[test]
    fn the_pair_list_is_bounded() {
        let mut bytes = vec![(MAX_REFUSED_PAIRS + 1) as u8];
        for _ in 0..=MAX_REFUSED_PAIRS {
            bytes.extend_from_slice(&[1, 1]);
        }
        assert!(postcard::from_bytes::<RefusedCounts>(&bytes).is_err());
        bytes[0] = MAX_REFUSED_PAIRS as u8;
        bytes.truncate(1 + 2 * MAX_REFUSED_PAIRS);
        assert!(postcard::from_bytes::<RefusedCounts>(&bytes).is_ok());
        // A huge announced length over a short body fails without
        // allocating anything for it.
        assert!(postcard::from_bytes::<RefusedCounts>(&[0xff, 0xff, 0xff, 0x0f, 1, 1]).is_err());
    }

    #[test]
    fn counts_are_capped_from_the_highest_reason() {
        let mut c = RefusedCounts::of(RefusedReason::Undecodable, 2);
        c.add(RefusedReason::Fenced, 5);
        let capped = c.capped(4);
        assert_eq!(capped.total(), 4);
        assert_eq!(capped.get(RefusedReason::Fenced), 2);
        assert_eq!(capped.get(RefusedReason::Undecodable), 2);
        assert_eq!(c.capped(100), c);
        assert_eq!(c.capped(0), RefusedCounts::NONE);
        assert_eq!(
            RefusedCounts::of(RefusedReason::Other, u64::MAX)
                .iter()
                .collect::<Vec<_>>(),
            vec![(RefusedReason::Other, u64::MAX)]
        );
    }
}
